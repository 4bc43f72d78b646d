"""A task process's side of the node's store writer (worker/writer.py): the store its attempts write through.

Each call sends one op and waits for the answer, which comes once the batch holding it committed: a claim is
fenced before the task runs, and an outcome is durable before the task returns (so before the message is acked).
A writer that cannot be reached, or whose store is away, raises StoreUnavailable: the attempt runner waits and
asks again, then postpones the delivery, as it does for a store of its own.

With `defer_outcomes` (a pool with `prefetch` above 1) a success or failure is answered as soon as the writer
holds it: the task returns without waiting for the commit, and the message's ack waits for it instead
(worker/deferred_ack.py). A retry still waits: its answer decides whether the retry is sent. That an attempt
began is sent and not answered at all (`send`): the task runs on at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from kvern.errors import StoreUnavailable
from kvern.jobs.base import ArtifactsTooLarge
from kvern.jobs.batch import (
    Answer,
    AttemptBegan,
    CheckCancelled,
    ClaimAttempt,
    RecordFailure,
    RecordProgress,
    RecordRetry,
    RecordSuccess,
    SaveSpooledArtifact,
    WorkerOp,
    answer_from_wire,
    op_to_wire,
)
from kvern.jobs.records import Claim
from kvern.jobs.states import JobStatus
from kvern.worker.writer import DEFER_KEY, ERROR_TOO_LARGE, ERROR_UNAVAILABLE, FORGET_KEY, recv_frame, send_frame

ANSWER_TIMEOUT_S = 60.0  # past the store's own busy timeout: a writer this slow is treated as away


class WriterClient:
    """The attempt store of a task process: claims, outcomes and artifacts through the node's writer. An artifact
    is written to a file in the writer's `spool` and the writer reads it into the store: the task process needs
    no store connection of its own (no SQLAlchemy engine, connection or statement cache in each child), and no
    copy of the blob is framed into a message."""

    def __init__(self, path: Path, spool: Path, defer_outcomes: bool = False) -> None:
        self.path = path
        self.spool = spool
        self.defer_outcomes = defer_outcomes
        self._conn: socket.socket | None = None
        self._pid = 0

    def _connection(self) -> socket.socket:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(ANSWER_TIMEOUT_S)
        try:
            conn.connect(str(self.path))
        except OSError:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()  # a forked process opens its own
        return conn

    def _drop(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                self._conn.close()
        self._conn = None

    def call(self, op: WorkerOp) -> Answer:
        """The op's answer, once the batch holding it committed."""
        reply = self._exchange(op_to_wire(op))
        return answer_from_wire(op, reply["answer"])

    def hold(self, op: WorkerOp) -> None:
        """Hand an outcome to the writer, back as soon as it holds it (the commit comes later)."""
        self._exchange({**op_to_wire(op), DEFER_KEY: True})

    def send(self, op: WorkerOp) -> None:
        """Hand an op to the writer and go on: no answer comes (the writer commits it with its next batch)."""
        try:
            send_frame(self._connection(), {**op_to_wire(op), FORGET_KEY: True})
        except OSError as exc:
            self._drop()
            raise StoreUnavailable(f"job-store writer unavailable: {exc}") from exc
        except BaseException:
            self._drop()  # interrupted mid-frame: the next call must not follow half a message
            raise

    def _outcome(self, op: RecordSuccess | RecordFailure) -> bool:
        if not self.defer_outcomes:
            return bool(self.call(op))
        self.hold(op)
        return True  # not known yet: the writer logs an outcome that another attempt fenced out

    def _exchange(self, message: dict[str, Any]) -> Any:
        try:
            conn = self._connection()
            send_frame(conn, message)
            reply: Any = recv_frame(conn)
        except (OSError, ValueError) as exc:
            self._drop()
            raise StoreUnavailable(f"job-store writer unavailable: {exc}") from exc
        except BaseException:
            self._drop()  # interrupted mid-call (a soft time limit): the answer must not be read by the next call
            raise
        if reply is None:
            self._drop()
            raise StoreUnavailable("job-store writer unavailable: it closed the connection")
        if "error" in reply:
            if reply["error"] == ERROR_UNAVAILABLE:
                raise StoreUnavailable(reply.get("message", "job store unavailable"))
            if reply["error"] == ERROR_TOO_LARGE:
                raise ArtifactsTooLarge(reply.get("message", "artifacts too large"))
            raise RuntimeError(f"job-store writer: {reply.get('message')}")
        return reply

    # -- what an attempt asks (the store methods of the same names) --------------------------------------------

    def claim_attempt(self, job_id: str, worker: str) -> Claim:
        claim = self.call(ClaimAttempt(job_id, worker))
        assert isinstance(claim, Claim)
        return claim

    def mark_began(self, job_id: str, attempt: int, at: float) -> None:
        self.send(AttemptBegan(job_id, attempt, at))

    def record_success(self, job_id: str, attempt: int, result: Any) -> bool:
        return self._outcome(RecordSuccess(job_id, attempt, result))

    def record_failure(
        self, job_id: str, attempt: int, error: str, status: JobStatus, traceback: str | None = None
    ) -> bool:
        return self._outcome(RecordFailure(job_id, attempt, error, status, traceback))

    def record_retry(
        self, job_id: str, attempt: int, error: str, traceback: str | None = None, delay_s: float = 0.0
    ) -> bool:
        return bool(self.call(RecordRetry(job_id, attempt, error, traceback, delay_s)))

    def record_progress(self, job_id: str, attempt: int, pct: int, message: str | None = None) -> bool:
        return bool(self.call(RecordProgress(job_id, attempt, pct, message)))

    def is_cancelled(self, job_id: str) -> bool:
        return bool(self.call(CheckCancelled(job_id)))

    def save_artifact(
        self, job_id: str, attempt: int, name: str, content_type: str, data: bytes, max_total: int | None = None
    ) -> None:
        fd, spooled = tempfile.mkstemp(dir=self.spool, prefix="artifact-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            self.call(SaveSpooledArtifact(job_id, attempt, name, content_type, spooled, max_total))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(spooled)  # the writer removes it once committed; this covers a call that never reached it
