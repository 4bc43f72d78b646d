"""Plain, typed records the job store hands out."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from kvern.jobs.states import JobStatus


@dataclass(frozen=True)
class NewJob:
    id: str
    task: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    max_attempts: int
    idempotency_key: str | None = None
    request_hash: str | None = None
    subject: str | None = None  # whom the job is about ("user:42")
    owner: str | None = None  # the id of the API key that submitted it; None: the team's own code or the CLI
    notify: tuple[str, ...] = ()  # targets told when it finishes (the task's and the submission's)


@dataclass(frozen=True)
class ArtifactInfo:
    name: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Job:
    id: str
    task: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    status: JobStatus
    progress: int
    progress_message: str | None
    attempts: int
    max_attempts: int
    result: Any
    error: str | None
    created_at: float
    published_at: float | None
    started_at: float | None
    finished_at: float | None
    idempotency_key: str | None
    request_hash: str | None
    artifacts: tuple[ArtifactInfo, ...] = ()
    retry_at: float | None = None  # a running job waiting out a retry's backoff: when the retry is due
    cancel_requested: float | None = None  # a running job asked to stop: when the cancel was asked
    subject: str | None = None  # whom the job is about ("user:42")
    owner: str | None = None  # the id of the API key that submitted it

    @classmethod
    def from_row(cls, row: Any, artifacts: tuple[ArtifactInfo, ...] = ()) -> Job:
        return cls(
            id=row.id,
            task=row.task,
            queue=row.queue,
            args=json.loads(row.args),
            kwargs=json.loads(row.kwargs),
            status=JobStatus(row.status),
            progress=row.progress,
            progress_message=row.progress_message,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            result=json.loads(row.result) if row.result is not None else None,
            error=row.error,
            created_at=row.created_at,
            published_at=row.published_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            idempotency_key=row.idempotency_key,
            request_hash=row.request_hash,
            artifacts=artifacts,
            retry_at=getattr(row, "retry_at", None),
            cancel_requested=getattr(row, "cancel_requested", None),
            subject=getattr(row, "subject", None),
            owner=getattr(row, "owner", None),
        )


@dataclass(frozen=True)
class Attempt:
    attempt: int
    worker: str | None
    started_at: float
    finished_at: float | None
    outcome: str | None
    error: str | None
    traceback: str | None = None  # where a failed attempt raised: its last frames, bounded in size


@dataclass(frozen=True)
class StuckSuspect:
    """A running job that may have no live attempt: its current attempt is old, or its retry is overdue."""

    id: str
    task: str
    queue: str
    attempt: int  # the job's current attempt number (the fence a recovery must match)
    started_at: float  # when that attempt started
    retry_at: float | None  # when its retry was due, if it was waiting for one


@dataclass(frozen=True)
class ScalingEvent:
    at: float
    pool: str
    from_processes: int
    to_processes: int
    reason: str


@dataclass(frozen=True)
class Claim:
    """What a worker may do with a delivery: run it as `attempt`, or skip it."""

    run: bool
    attempt: int
    tracked: bool  # False: no record (a plain `.delay()` from user code); run without recording
    max_attempts: int | None = field(default=None, compare=False)  # the job's attempt budget (a replay extends it)


def new_job_row(new: NewJob) -> dict[str, Any]:
    """Every column of a job just recorded: what a store inserts, and what it answers without reading back."""
    now = time.time()
    return {
        "id": new.id,
        "task": new.task,
        "queue": new.queue,
        "args": json.dumps(new.args),
        "kwargs": json.dumps(new.kwargs),
        "status": JobStatus.QUEUED.value,
        "progress": 0,
        "progress_message": None,
        "attempts": 0,
        "max_attempts": new.max_attempts,
        "round_attempts": new.max_attempts,
        "retry_at": None,
        "cancel_requested": None,
        "queued_at": now,
        "outcome_attempt": None,
        "result": None,
        "error": None,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash,
        "subject": new.subject,
        "owner": new.owner,
        "created_at": now,
        "published_at": None,
        "started_at": None,
        "finished_at": None,
        "notify": json.dumps(list(new.notify)) if new.notify else None,
        "notify_due": now if new.notify else None,
    }


@dataclass(frozen=True)
class PoolDecision:
    """What the host leading a pool decided: the processes the pool runs across all its live hosts, and why."""

    pool: str
    processes: int
    reason: str
    leader: str  # the host that decided
    decided_at: float


@dataclass(frozen=True)
class PoolHost:
    """One host's heartbeat for a pool: it serves the pool and runs `processes` of it until `expires_at`."""

    pool: str
    host: str
    processes: int
    expires_at: float
