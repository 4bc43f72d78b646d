"""Job states and the only moves between them: a state never goes backwards."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # recorded and confirmed by the broker (or waiting for the outbox relay)
    RUNNING = "running"  # an attempt has started; retries stay here until an outcome
    SUCCEEDED = "succeeded"  # an attempt returned; its result and artifacts are the job's
    FAILED = "failed"  # the task raised a permanent error, or has no retries declared
    DEAD = "dead"  # retries exhausted, or the message hit the delivery limit; replayable
    CANCELLED = "cancelled"  # withdrawn before it ran


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
REPLAYABLE = frozenset({JobStatus.FAILED, JobStatus.DEAD})


def finished_values(statuses: Iterable[JobStatus]) -> list[str]:
    """The values of `statuses`, each of which must be terminal (ValueError otherwise)."""
    chosen = [JobStatus(status) for status in statuses]
    active = [status.value for status in chosen if status not in TERMINAL]
    if active:
        raise ValueError(f"only finished jobs are purged, not {', '.join(active)} ones")
    return [status.value for status in chosen]
