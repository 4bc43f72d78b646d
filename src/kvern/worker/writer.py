"""The node's store writer: one per worker process group, in the worker's main process.

Task processes (prefork children) do no job-store I/O: they send each claim, progress report and outcome over a
unix socket (0600) to the writer, and wait for its answer. The writer gathers what the children sent into one
batch (up to `flush_items` ops; it waits at most `flush_ms` for more, and not at all once every connected
child is waiting) and commits it in one transaction on its one persistent connection (`write_batch`), then
answers each child. A child returns from its task only after its outcome's batch committed, and Celery acks the
message (acks_late) only after the child returned: a crash of the node before the commit means the message is
delivered again, and the fence makes the outcome recorded exactly once.

A pool with `prefetch` above 1 defers instead (worker/deferred_ack.py): a child sends its outcome marked `defer`,
is answered as soon as the writer holds it, and returns; the message's ack waits (`after_commit`) until every op
the writer held when the child returned has committed. A crash before that commit still means redelivery.

A child also sends, without reading any answer (`forget`), that it began the attempt it was handed: committed
with the next batch, the mark makes the attempt count against the job's budget (jobs/store.py `claim_attempt`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvern.errors import StoreUnavailable
from kvern.jobs.base import ArtifactsTooLarge, JobStoreProtocol
from kvern.jobs.batch import SaveSpooledArtifact, WorkerOp, answer_to_wire, op_from_wire

log = logging.getLogger("kvern.worker.writer")

FRAME = struct.Struct(">I")  # each message: its length, then that much JSON
MAX_FRAME = 64 * 1024 * 1024  # a traceback or result is bounded well below this
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux
ERROR_UNAVAILABLE = "unavailable"  # the store could not be reached: the child waits and asks again
ERROR_FAILED = "failed"  # the op itself failed: the child raises
ERROR_TOO_LARGE = "artifacts_too_large"  # an artifact over the attempt's cap: the child raises ArtifactsTooLarge
DEFER_KEY = "defer"  # a request field: answer once held, commit later (the ack waits for the commit instead)
FORGET_KEY = "forget"  # a request field: never answer (its sender does not read one), commit with the next batch
RETRY_FIRST_S = 0.1  # a held outcome whose store is away is committed again after this long, then longer
RETRY_MAX_S = 5.0


def send_frame(conn: socket.socket, message: Any) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    conn.sendall(FRAME.pack(len(data)) + data)


def recv_frame(conn: socket.socket) -> Any | None:
    """The next message; None when the other end closed the connection between messages."""
    header = _recv_exactly(conn, FRAME.size, allow_eof=True)
    if header is None:
        return None
    (size,) = FRAME.unpack(header)
    if size > MAX_FRAME:
        raise ConnectionError(f"writer frame of {size} bytes")
    body = _recv_exactly(conn, size, allow_eof=False)
    return json.loads(body or b"")


def _recv_exactly(conn: socket.socket, size: int, *, allow_eof: bool) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            if allow_eof and left == size:
                return None
            raise ConnectionError("writer connection closed mid-message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def socket_path_for(state_dir: Path, name: str) -> Path:
    """Where a node's writer listens: in the state dir, or in a private temporary dir when that path is too
    long for a unix socket."""
    path = state_dir / f"writer-{name}.sock"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    return Path(tempfile.mkdtemp(prefix="kvern-writer-")) / "w.sock"  # mkdtemp: mode 0700


@dataclass(frozen=True)
class Pending:
    op: WorkerOp
    reply: Callable[[Any], None]
    seq: int = 0  # the order the writer received it in: batches commit in this order
    deferred: bool = False  # its sender was answered on receipt; nothing waits for its answer


class NodeWriter:
    """Commits the ops a node's children send, many per transaction; `start` before the children fork."""

    def __init__(self, store: JobStoreProtocol, path: Path, flush_ms: float, flush_items: int) -> None:
        self.store = store
        self.path = path
        self.spool = path.with_name(path.name + ".spool")  # artifacts the children wrote, for the store
        self.flush_s = flush_ms / 1000
        self.flush_items = flush_items
        self._pending: queue.Queue[Pending] = queue.Queue()
        self._clients = 0
        self._clients_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._owner = os.getpid()  # a forked child inherits the atexit hook: only the node closes the socket
        self._received = 0  # seq of the last op received, and of the last one whose batch ended (committed, or
        self._committed = 0  # answered with its error); deferred outcomes end only when committed
        self._received_lock = threading.Lock()
        self._acks_lock = threading.Lock()
        self._after_commit: list[tuple[int, Callable[[], None]]] = []  # (seq to reach, callback), seq ascending
        self.batches = 0  # committed batches, and the ops in them: what a test or a benchmark reads
        self.ops = 0

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a node that was killed
        self.spool.mkdir(mode=0o700, exist_ok=True)
        for left in self.spool.iterdir():  # spooled by children of a node that was killed
            left.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is made 0600: only the instance's user may write jobs' outcomes
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        listener.listen(256)
        self._listener, self._owner = listener, os.getpid()
        threading.Thread(target=self._accept, name="kvern-writer-accept", daemon=True).start()
        threading.Thread(target=self._flush_forever, name="kvern-writer", daemon=True).start()

    def close(self) -> None:
        if os.getpid() != self._owner:
            return
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # -- the children's connections -----------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), name="kvern-writer-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """One child's requests, one at a time (it waits for each answer)."""
        lock = threading.Lock()

        def reply(message: Any) -> None:
            with lock, contextlib.suppress(OSError):  # the child may have died meanwhile
                send_frame(conn, message)

        with self._clients_lock:
            self._clients += 1
        try:
            with conn:
                self._read_requests(conn, reply)
        finally:
            with self._clients_lock:
                self._clients -= 1

    def _read_requests(self, conn: socket.socket, reply: Callable[[Any], None]) -> None:
        while True:
            try:
                message = recv_frame(conn)
            except (OSError, ValueError):
                return
            if message is None:
                return
            forget = bool(message.get(FORGET_KEY))
            refuse = _logged if forget else reply  # a sender that reads no answer must not get one
            try:
                op = op_from_wire(message)
            except (ValueError, TypeError, KeyError) as exc:
                refuse({"error": ERROR_FAILED, "message": f"bad writer request: {exc}"})
                continue
            if isinstance(op, SaveSpooledArtifact) and Path(op.path).parent != self.spool:
                refuse({"error": ERROR_FAILED, "message": "an artifact's spool file must be in the writer's spool"})
                continue
            deferred = forget or bool(message.get(DEFER_KEY))
            self._hold(op, _ignore if deferred else reply, deferred)
            if deferred and not forget:
                reply({"held": True})  # after _hold: the child's return now implies its outcome is received

    def submit(self, op: WorkerOp, reply: Callable[[Any], None]) -> None:
        """An op from the node's own process (a claim at dispatch): `reply` gets its answer, as a child would,
        in the writer's thread once the batch holding it committed (or failed)."""
        self._hold(op, reply, deferred=False)

    def _hold(self, op: WorkerOp, reply: Callable[[Any], None], deferred: bool) -> None:
        with self._received_lock:  # seq order is queue order
            self._received += 1
            self._pending.put(Pending(op, reply, self._received, deferred))

    # -- deferred acks ------------------------------------------------------------------------------------

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every op received so far has committed: at once (in this thread) if it has,
        else in the writer's thread. What a deferred ack waits for: its child's outcome was received before the
        child returned."""
        with self._acks_lock:
            through = self._received
            if self._committed < through:
                self._after_commit.append((through, callback))
                return
        callback()

    def _ended_through(self, seq: int) -> None:
        with self._acks_lock:
            self._committed = max(self._committed, seq)
            due = [cb for through, cb in self._after_commit if through <= self._committed]
            self._after_commit = [(t, cb) for t, cb in self._after_commit if t > self._committed]
        for callback in due:
            try:
                callback()
            except Exception:  # one ack's failure must not keep the others waiting
                log.exception("job-store writer: an after-commit callback failed")

    # -- batching -----------------------------------------------------------------------------------------

    def _flush_forever(self) -> None:
        while True:
            batch = self._gather(self._pending.get())
            try:
                self._commit_patiently(batch)
            except Exception:  # the writer must outlive any one batch; its children were answered or will ask again
                log.exception("job-store writer: a batch of %d failed", len(batch))
            for item in batch:
                if isinstance(item.op, SaveSpooledArtifact):
                    Path(item.op.path).unlink(missing_ok=True)
            self._ended_through(batch[-1].seq)

    def _commit_patiently(self, batch: list[Pending]) -> None:
        """Commit the batch; deferred outcomes whose store is away are committed again until it is back (their
        acks wait meanwhile: a node that dies first leaves their messages to be delivered again)."""
        delay = RETRY_FIRST_S
        held = self._commit(batch)
        while held:
            log.warning("job-store writer: %d held outcomes wait for the job store", len(held))
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            held = self._commit(held)

    def _gather(self, first: Pending) -> list[Pending]:
        """What is waiting now, then more until the batch is full, flush_ms passed, or every child waits."""
        batch = [first]
        waiting = 0 if first.deferred else 1  # children blocked on an answer; a deferred sender runs on
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.flush_items:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or waiting >= self._clients:
                    break
                try:
                    item = self._pending.get(timeout=remaining)
                except queue.Empty:
                    break
            batch.append(item)
            waiting += 0 if item.deferred else 1
        return batch

    def _commit(self, batch: list[Pending]) -> list[Pending]:
        """Commit and answer; what it returns are the deferred ops not committed because the store is away."""
        try:
            answers = self.store.write_batch([item.op for item in batch])
        except StoreUnavailable as exc:
            for item in batch:
                item.reply({"error": ERROR_UNAVAILABLE, "message": str(exc)})
            return [item for item in batch if item.deferred]
        except Exception as exc:
            if len(batch) > 1:  # one op's error rolled back the batch: commit the others without it
                return [held for item in batch for held in self._commit([item])]
            if isinstance(exc, ArtifactsTooLarge):
                batch[0].reply({"error": ERROR_TOO_LARGE, "message": str(exc)})
                return []
            log.warning("job-store writer: %s failed: %r", type(batch[0].op).__name__, exc)
            batch[0].reply({"error": ERROR_FAILED, "message": repr(exc)})
            return []
        self.batches += 1
        self.ops += len(batch)
        for item, answer in zip(batch, answers, strict=True):
            if item.deferred and answer is False:
                log.warning("job %s: its outcome was not recorded, another attempt owns the job", item.op.job_id)
            item.reply({"answer": answer_to_wire(answer)})
        return []


def _logged(message: Any) -> None:
    """A refusal of a request whose sender reads no answer."""
    log.warning("job-store writer: %s", message.get("message"))


def _ignore(_message: Any) -> None:
    """The reply to a deferred op after its commit: its sender was answered on receipt."""
