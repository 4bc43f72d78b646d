"""The node's store writer: one per worker process group, in the worker's main process.

Task processes (prefork children) do no job-store I/O: they send each claim, progress report and outcome over a
unix socket (0600) to the writer, and wait for its answer. The writer gathers what the children sent into one
batch (up to `flush_items` ops; it waits at most `flush_ms` for more, and not at all once every connected
child is waiting) and commits it in one transaction on its one persistent connection (`write_batch`), then
answers each child. A child returns from its task only after its outcome's batch committed, and Celery acks the
message (acks_late) only after the child returned: a crash of the node before the commit means the message is
delivered again, and the fence makes the outcome recorded exactly once.
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
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.batch import WorkerOp, answer_to_wire, op_from_wire

log = logging.getLogger("kvern.worker.writer")

FRAME = struct.Struct(">I")  # each message: its length, then that much JSON
MAX_FRAME = 64 * 1024 * 1024  # a traceback or result is bounded well below this
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux
ERROR_UNAVAILABLE = "unavailable"  # the store could not be reached: the child waits and asks again
ERROR_FAILED = "failed"  # the op itself failed: the child raises


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


class NodeWriter:
    """Commits the ops a node's children send, many per transaction; `start` before the children fork."""

    def __init__(self, store: JobStoreProtocol, path: Path, flush_ms: float, flush_items: int) -> None:
        self.store = store
        self.path = path
        self.flush_s = flush_ms / 1000
        self.flush_items = flush_items
        self._pending: queue.Queue[Pending] = queue.Queue()
        self._clients = 0
        self._clients_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._owner = os.getpid()  # a forked child inherits the atexit hook: only the node closes the socket
        self.batches = 0  # committed batches, and the ops in them: what a test or a benchmark reads
        self.ops = 0

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a node that was killed
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
            try:
                op = op_from_wire(message)
            except (ValueError, TypeError, KeyError) as exc:
                reply({"error": ERROR_FAILED, "message": f"bad writer request: {exc}"})
                continue
            self._pending.put(Pending(op, reply))

    # -- batching -----------------------------------------------------------------------------------------

    def _flush_forever(self) -> None:
        while True:
            batch = self._gather(self._pending.get())
            try:
                self._commit(batch)
            except Exception:  # the writer must outlive any one batch; its children were answered or will ask again
                log.exception("job-store writer: a batch of %d failed", len(batch))

    def _gather(self, first: Pending) -> list[Pending]:
        """What is waiting now, then more until the batch is full, flush_ms passed, or every child waits."""
        batch = [first]
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.flush_items:
            try:
                batch.append(self._pending.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(batch) >= self._clients:
                break
            try:
                batch.append(self._pending.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _commit(self, batch: list[Pending]) -> None:
        try:
            answers = self.store.write_batch([item.op for item in batch])
        except StoreUnavailable as exc:
            for item in batch:
                item.reply({"error": ERROR_UNAVAILABLE, "message": str(exc)})
            return
        except Exception as exc:
            if len(batch) > 1:  # one op's error rolled back the batch: commit the others without it
                for item in batch:
                    self._commit([item])
                return
            log.warning("job-store writer: %s failed: %r", type(batch[0].op).__name__, exc)
            batch[0].reply({"error": ERROR_FAILED, "message": repr(exc)})
            return
        self.batches += 1
        self.ops += len(batch)
        for item, answer in zip(batch, answers, strict=True):
            item.reply({"answer": answer_to_wire(answer)})
