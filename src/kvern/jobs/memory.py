"""`MemoryJobStore`: the job store contract kept in a process's memory, for tests and tools with no database.

Rows are kept in the shape of the SQL tables (jobs/schema.py) and turned into records by the same `from_row`,
so a job reads back exactly as from `JobStore`. Every write is fenced exactly like the SQL one (see
jobs/base.py) and runs under one lock, so threads see each change whole, as with a transaction.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy.exc import IntegrityError

from kvern.jobs.base import NOT_BEGUN, ArtifactsTooLarge, IdempotencyConflict
from kvern.jobs.batch import Answer, AttemptBegan, WorkerOp
from kvern.jobs.memory_coordination import CoordinationInMemory
from kvern.jobs.records import ArtifactInfo, Attempt, Claim, Job, NewJob, StuckSuspect, new_job_row
from kvern.jobs.states import ACTIVE, REPLAYABLE, TERMINAL, JobStatus, finished_values

Row = dict[str, Any]


def _duplicate(what: str) -> IntegrityError:
    # The SQL store's error for a broken unique or foreign key: callers handle one exception type.
    return IntegrityError(f"memory job store: {what}", None, ValueError(what))


class MemoryJobStore(CoordinationInMemory):
    """Implements JobStoreProtocol in memory; nothing survives the process."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self.jobs: dict[str, Row] = {}  # by id; public so that a test can backdate a row as it would in SQL
        self.attempts: dict[str, list[Row]] = {}  # by job id, in attempt order
        self._artifacts: dict[tuple[str, int, str], Row] = {}  # by (job id, attempt, name)

    def create_schema(self) -> None:
        """Nothing to create."""

    def close(self) -> None:
        """Nothing to release."""

    def ping(self) -> None:
        """Always reachable."""

    # -- submission ---------------------------------------------------------------------------------------

    def create_jobs(self, news: Sequence[NewJob]) -> list[Job]:
        if any(new.idempotency_key is not None for new in news):
            raise ValueError("create_jobs takes jobs without an idempotency key; use create_job")
        rows = [new_job_row(new) for new in news]
        with self._lock:
            ids = [row["id"] for row in rows]
            if len(set(ids)) != len(ids) or any(job_id in self.jobs for job_id in ids):
                raise _duplicate("duplicate job id")
            self.jobs.update((row["id"], row) for row in rows)
            return [_job(row) for row in rows]

    def create_job(self, new: NewJob) -> tuple[Job, bool]:
        row = new_job_row(new)
        with self._lock:
            existing = self.find_by_idempotency_key(new.idempotency_key) if new.idempotency_key else None
            if existing is not None:
                if existing.request_hash != new.request_hash:
                    raise IdempotencyConflict(existing)
                return existing, False
            if new.id in self.jobs:
                raise _duplicate(f"duplicate job id {new.id}")
            self.jobs[new.id] = row
            return _job(row), True

    def find_by_idempotency_key(self, key: str) -> Job | None:
        with self._lock:
            found = [row for row in self.jobs.values() if row["idempotency_key"] == key]
            return _job(found[0]) if found else None

    def mark_published(self, job_ids: Sequence[str]) -> None:
        now = time.time()
        with self._lock:
            for job_id in job_ids:
                row = self.jobs.get(job_id)
                if row is not None and row["published_at"] is None:
                    row["published_at"] = now

    def withdraw(self, job_id: str) -> bool:
        with self._lock:
            row = self.jobs.get(job_id)
            if row is None or row["status"] != JobStatus.QUEUED.value or row["attempts"] != 0:
                return False
            del self.jobs[job_id]
            return True

    def unpublished(self, older_than_s: float, limit: int = 500) -> list[Job]:
        cutoff = time.time() - older_than_s
        with self._lock:
            rows = [
                row
                for row in self.jobs.values()
                if row["published_at"] is None
                and row["status"] == JobStatus.QUEUED.value
                and row["created_at"] < cutoff
            ]
            return [_job(row) for row in sorted(rows, key=lambda row: row["created_at"])[:limit]]

    # -- execution (worker side) ------------------------------------------------------------------------

    def claim_attempt(self, job_id: str, worker: str) -> Claim:
        now = time.time()
        with self._lock:
            row = self.jobs.get(job_id)
            if row is None:
                return Claim(run=True, attempt=1, tracked=False)
            if JobStatus(row["status"]) not in ACTIVE or self._cancel_asked(row, now):
                return Claim(run=False, attempt=row["attempts"], tracked=True)
            # The open attempt was claimed (ahead, at dispatch) but never began: its node died first. Not counted.
            given_back = int(row["status"] == JobStatus.RUNNING.value and self._never_began(job_id, row["attempts"]))
            row["max_attempts"] += given_back
            if row["attempts"] >= row["max_attempts"]:
                self._bury(row, "attempt budget spent: the last attempt was lost with its worker process", now)
                return Claim(run=False, attempt=row["attempts"], tracked=True)
            attempt = row["attempts"] + 1
            row.update(status=JobStatus.RUNNING.value, attempts=attempt, retry_at=None)
            row["started_at"] = row["started_at"] if row["started_at"] is not None else now
            row["published_at"] = row["published_at"] if row["published_at"] is not None else now
            self._close_open_attempts(job_id, now, "lost", NOT_BEGUN if given_back else None)
            self.attempts.setdefault(job_id, []).append(
                {"attempt": attempt, "worker": worker, "started_at": now, "began_at": None, "finished_at": None}
                | {"outcome": None, "error": None, "traceback": None}
            )
            return Claim(run=True, attempt=attempt, tracked=True, max_attempts=row["max_attempts"])

    def _never_began(self, job_id: str, attempt: int) -> bool:
        return any(
            a["attempt"] == attempt and a["finished_at"] is None and a["began_at"] is None
            for a in self.attempts.get(job_id, [])
        )

    def mark_began(self, job_id: str, attempt: int, at: float) -> None:
        with self._lock:
            for row in self.attempts.get(job_id, []):
                if row["attempt"] == attempt and row["began_at"] is None:
                    row["began_at"] = at

    def _close_open_attempts(self, job_id: str, now: float, outcome: str, error: str | None) -> None:
        for attempt in self.attempts.get(job_id, []):
            if attempt["finished_at"] is None:
                attempt.update(finished_at=now, outcome=outcome, error=error)

    def _cancel_asked(self, row: Row, now: float) -> bool:
        """A job whose cancel was asked ends cancelled now, its open attempt with it; False if none was asked."""
        if row["cancel_requested"] is None:
            return False
        row.update(status=JobStatus.CANCELLED.value, finished_at=now, retry_at=None)
        self._close_open_attempts(row["id"], now, JobStatus.CANCELLED.value, None)
        return True

    def _bury(self, row: Row, error: str, now: float) -> bool:
        """Make an active job dead; the attempt still open is closed with it."""
        if JobStatus(row["status"]) not in ACTIVE:
            return False
        row.update(status=JobStatus.DEAD.value, error=error, finished_at=now)
        self._close_open_attempts(row["id"], now, JobStatus.DEAD.value, error)
        return True

    def _fenced(self, job_id: str, attempt: int) -> Row | None:
        """The job's row while `attempt` is its current one and it is running, else None."""
        row = self.jobs.get(job_id)
        if row is None or row["attempts"] != attempt or row["status"] != JobStatus.RUNNING.value:
            return None
        return row

    def record_progress(self, job_id: str, attempt: int, pct: int, message: str | None = None) -> bool:
        with self._lock:
            row = self._fenced(job_id, attempt)
            if row is None or row["progress"] > pct:
                return False
            row.update(progress=pct, progress_message=message)
            return True

    def save_artifact(
        self, job_id: str, attempt: int, name: str, content_type: str, data: bytes, max_total: int | None = None
    ) -> None:
        with self._lock:
            if job_id not in self.jobs:
                raise _duplicate(f"artifact of unknown job {job_id}")  # the SQL foreign key refuses it too
            total = len(data) + sum(
                len(a["data"])
                for (j, at, n), a in self._artifacts.items()
                if (j, at) == (job_id, attempt) and n != name
            )
            if max_total is not None and total > max_total:
                raise ArtifactsTooLarge(f"the artifacts of job {job_id} would hold {total} bytes, over {max_total}")
            self._artifacts[(job_id, attempt, name)] = {
                "content_type": content_type,
                "data": bytes(data),
                "created_at": time.time(),
            }

    def record_success(self, job_id: str, attempt: int, result: Any) -> bool:
        values = {"status": JobStatus.SUCCEEDED.value, "progress": 100, "result": json.dumps(result), "error": None}
        return self._record_outcome(job_id, attempt, values, JobStatus.SUCCEEDED, None)

    def record_failure(
        self, job_id: str, attempt: int, error: str, status: JobStatus, traceback: str | None = None
    ) -> bool:
        assert status in TERMINAL
        return self._record_outcome(job_id, attempt, {"status": status.value, "error": error}, status, error, traceback)

    def _record_outcome(
        self,
        job_id: str,
        attempt: int,
        values: Row,
        outcome: JobStatus,
        error: str | None,
        traceback: str | None = None,
    ) -> bool:
        now = time.time()
        with self._lock:
            row = self._fenced(job_id, attempt)
            if row is not None and row["cancel_requested"] is not None:  # asked to stop while it ran
                values = {"status": JobStatus.CANCELLED.value, "retry_at": None}
                outcome = JobStatus.CANCELLED
            if row is not None:
                row.update(values, outcome_attempt=attempt, finished_at=now)
            closed_as = outcome.value if row is not None else "superseded"
            self._close_attempt(job_id, attempt, closed_as, error, now, won=row is not None, traceback=traceback)
            return row is not None

    def record_retry(
        self, job_id: str, attempt: int, error: str, traceback: str | None = None, delay_s: float = 0.0
    ) -> bool:
        now = time.time()
        with self._lock:
            row = self._fenced(job_id, attempt)
            if row is not None and row["cancel_requested"] is not None:  # no retry follows a cancel
                self._record_outcome(job_id, attempt, {}, JobStatus.CANCELLED, error)
                return False
            if row is not None:
                row.update(error=error, retry_at=now + delay_s)
            self._close_attempt(job_id, attempt, "retry", error, now, won=row is not None, traceback=traceback)
            return row is not None

    def _close_attempt(
        self,
        job_id: str,
        attempt: int,
        outcome: str,
        error: str | None,
        now: float,
        *,
        won: bool,
        traceback: str | None,
    ) -> None:
        for row in self.attempts.get(job_id, []):
            # A write that lost the fence must not overwrite an outcome the attempt already has.
            if row["attempt"] == attempt and (won or row["outcome"] in (None, "lost")):
                row.update(finished_at=now, outcome=outcome, error=error, traceback=traceback)

    def write_batch(self, ops: Sequence[WorkerOp]) -> list[Answer]:
        with self._lock:  # one step for every other caller, as one transaction is
            # The began marks first, as the SQL store takes them: a mark only saves an attempt that did begin.
            began = {index: op.apply(self) for index, op in enumerate(ops) if isinstance(op, AttemptBegan)}
            return [began[index] if index in began else op.apply(self) for index, op in enumerate(ops)]

    def mark_dead(self, job_id: str, error: str) -> bool:
        with self._lock:
            row = self.jobs.get(job_id)
            return row is not None and self._bury(row, error, time.time())

    def stuck_suspects(self, started_before: float, retry_due_before: float, limit: int = 500) -> list[StuckSuspect]:
        with self._lock:
            found = []
            for row in self.jobs.values():
                if row["status"] != JobStatus.RUNNING.value:
                    continue
                started = self._attempt_started(row)
                retry_at = row["retry_at"]
                if (retry_at is None and started < started_before) or (
                    retry_at is not None and retry_at < retry_due_before
                ):
                    found.append(StuckSuspect(row["id"], row["task"], row["queue"], row["attempts"], started, retry_at))
        return sorted(found, key=lambda suspect: suspect.started_at)[:limit]

    def _attempt_started(self, row: Row) -> float:
        """When the job's current attempt started (else the job's start, else its creation), as in SQL."""
        current = [a for a in self.attempts.get(row["id"], []) if a["attempt"] == row["attempts"]]
        for value in (current[0]["started_at"] if current else None, row["started_at"], row["created_at"]):
            if value is not None:
                return float(value)
        raise AssertionError("created_at is never null")

    def recover_stuck(self, job_id: str, attempt: int, reason: str, *, requeue: bool = True) -> JobStatus | None:
        now = time.time()
        with self._lock:
            row = self._fenced(job_id, attempt)
            if row is None:
                return None
            if requeue and row["attempts"] < row["max_attempts"]:
                row.update(status=JobStatus.QUEUED.value, published_at=None, queued_at=now, retry_at=None, progress=0)
                self._close_open_attempts(job_id, now, "lost", reason)
                return JobStatus.QUEUED
            return JobStatus.DEAD if self._bury(row, reason, now) else None

    def replay(self, job_id: str) -> Job | None:
        return self._move(job_id, REPLAYABLE, self._replayed)

    @staticmethod
    def _replayed(row: Row) -> Row:
        # A fresh round of attempts, as many as the first one had (an older row: its budget).
        fresh = row["round_attempts"] if row["round_attempts"] is not None else row["max_attempts"]
        return {
            "status": JobStatus.QUEUED.value,
            "published_at": None,
            "finished_at": None,
            "outcome_attempt": None,
            "progress": 0,
            "retry_at": None,
            "cancel_requested": None,
            "queued_at": time.time(),
            "max_attempts": row["attempts"] + fresh,
        }

    def cancel(self, job_id: str) -> Job | None:
        return self._move(job_id, ACTIVE, self._cancelled)

    @staticmethod
    def _cancelled(row: Row) -> Row:
        now = time.time()
        if row["status"] == JobStatus.QUEUED.value or row["retry_at"] is not None:  # nothing runs: at once
            return {"status": JobStatus.CANCELLED.value, "finished_at": now, "retry_at": None}
        asked = row["cancel_requested"]
        return {"cancel_requested": asked if asked is not None else now}  # the running attempt is told

    def is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            row = self.jobs.get(job_id)
            return row is None or row["cancel_requested"] is not None or row["status"] == JobStatus.CANCELLED.value

    def _move(self, job_id: str, allowed: frozenset[JobStatus], values: Callable[[Row], Row]) -> Job | None:
        with self._lock:
            row = self.jobs.get(job_id)
            if row is None or JobStatus(row["status"]) not in allowed:
                return None
            row.update(values(row))
            return self.get(job_id)

    # -- erasure ----------------------------------------------------------------------------------------

    def erase(self, job_id: str) -> bool:
        with self._lock:
            return self._erase_ids([job_id]) == 1

    def erase_subject(self, subject: str) -> int:
        with self._lock:
            return self._erase_ids([job_id for job_id, row in self.jobs.items() if row["subject"] == subject])

    def purge_finished(self, statuses: Sequence[JobStatus], finished_before: float, limit: int = 500) -> int:
        values = finished_values(statuses)
        with self._lock:
            old = [
                row
                for row in self.jobs.values()
                if row["status"] in values and row["finished_at"] is not None and row["finished_at"] < finished_before
            ]
            old.sort(key=lambda row: (row["finished_at"], row["id"]))
            return self._erase_ids([row["id"] for row in old[:limit]])

    def _erase_ids(self, job_ids: Sequence[str]) -> int:
        erased = 0
        for job_id in job_ids:
            if self.jobs.pop(job_id, None) is not None:
                erased += 1
            self.attempts.pop(job_id, None)
            for key in [key for key in self._artifacts if key[0] == job_id]:
                del self._artifacts[key]
        return erased

    # -- reading ----------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self.jobs.get(job_id)
            return _job(row, self._artifact_infos(row)) if row is not None else None

    def _artifact_infos(self, row: Row) -> tuple[ArtifactInfo, ...]:
        attempt = row["outcome_attempt"]
        if attempt is None:
            return ()
        found = [
            ArtifactInfo(name, a["content_type"], len(a["data"]))
            for (job_id, at, name), a in self._artifacts.items()
            if job_id == row["id"] and at == attempt
        ]
        return tuple(sorted(found, key=lambda info: info.name))

    def artifact(self, job_id: str, name: str) -> tuple[str, bytes] | None:
        with self._lock:
            row = self.jobs.get(job_id)
            found = self._artifacts.get((job_id, row["outcome_attempt"], name)) if row is not None else None
            return (found["content_type"], found["data"]) if found is not None else None

    def artifact_info(self, job_id: str, name: str) -> ArtifactInfo | None:
        found = self.artifact(job_id, name)
        return ArtifactInfo(name, found[0], len(found[1])) if found is not None else None

    def artifact_chunk(self, job_id: str, name: str, offset: int, size: int) -> bytes | None:
        found = self.artifact(job_id, name)
        return found[1][offset : offset + size] if found is not None else None

    def list_jobs(
        self, status: JobStatus | None, limit: int, before: float | None = None, owner: str | None = None
    ) -> list[Job]:
        with self._lock:
            rows = [
                row
                for row in self.jobs.values()
                if (status is None or row["status"] == status.value)
                and (before is None or row["created_at"] < before)
                and (owner is None or row["owner"] == owner)
            ]
            rows.sort(key=lambda row: (row["created_at"], row["id"]), reverse=True)
            return [_job(row, self._artifact_infos(row)) for row in rows[:limit]]

    def job_ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        with self._lock:
            return sorted(job_id for job_id in self.jobs if job_id.startswith(prefix))[:limit]

    def history(self, job_id: str) -> list[Attempt]:
        with self._lock:
            return [
                Attempt(
                    a["attempt"],
                    a["worker"],
                    a["started_at"],
                    a["finished_at"],
                    a["outcome"],
                    a["error"],
                    a["traceback"],
                )
                for a in sorted(self.attempts.get(job_id, []), key=lambda a: a["attempt"])
            ]

    def counts_by_status(self) -> dict[str, int]:
        with self._lock:
            counts = {status.value: 0 for status in JobStatus}
            for row in self.jobs.values():
                counts[row["status"]] += 1
            return counts

    def count_status(self, status: JobStatus, queues: Sequence[str]) -> int:
        with self._lock:
            return sum(1 for row in self.jobs.values() if row["status"] == status.value and row["queue"] in queues)

    def count_working(self, queues: Sequence[str]) -> int:
        with self._lock:
            return sum(
                1
                for row in self.jobs.values()
                if row["status"] == JobStatus.RUNNING.value and row["retry_at"] is None and row["queue"] in queues
            )

    def oldest_queued_at(self, queues: Sequence[str]) -> float | None:
        with self._lock:
            waits = [
                row["queued_at"] if row["queued_at"] is not None else row["created_at"]
                for row in self.jobs.values()
                if row["status"] == JobStatus.QUEUED.value and row["queue"] in queues
            ]
        return float(min(waits)) if waits else None


def _job(row: Row, artifacts: tuple[ArtifactInfo, ...] = ()) -> Job:
    return Job.from_row(SimpleNamespace(**row), artifacts)
