"""Retention: erase finished jobs once they are older than the spec keeps them, a batch per transaction.

The controller runs it every minute; `kvern jobs purge --older-than` runs it on demand.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.states import JobStatus
from kvern.spec import RetentionSpec

PURGE_BATCH = 500  # jobs erased per transaction: short transactions, so submissions never wait long
# The statuses each retention setting covers: whatever did not succeed is kept as long as a failure.
SUCCEEDED = (JobStatus.SUCCEEDED,)
NOT_SUCCEEDED = (JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED)
FINISHED = SUCCEEDED + NOT_SUCCEEDED


def purge(
    store: JobStoreProtocol,
    statuses: Sequence[JobStatus],
    finished_before: float,
    batch: int = PURGE_BATCH,
    max_batches: int | None = None,
) -> int:
    """Erase finished jobs of `statuses` older than `finished_before`, batch by batch; returns how many.
    `max_batches` bounds one call (the rest waits for the next); None: until none is left."""
    erased = batches = 0
    while max_batches is None or batches < max_batches:
        done = store.purge_finished(statuses, finished_before, batch)
        erased, batches = erased + done, batches + 1
        if done < batch:
            break
    return erased


def rules(retention: RetentionSpec) -> list[tuple[Sequence[JobStatus], float]]:
    """(statuses, seconds to keep them) for each setting that does not keep jobs forever."""
    kept = [(SUCCEEDED, retention.keep_succeeded_s), (NOT_SUCCEEDED, retention.keep_failed_s)]
    return [(statuses, seconds) for statuses, seconds in kept if seconds is not None]


def enforce(
    store: JobStoreProtocol, retention: RetentionSpec, now: float, batch: int = PURGE_BATCH, max_batches: int = 20
) -> int:
    """One round of the retention policy at time `now`; returns how many jobs were erased."""
    return sum(purge(store, statuses, now - keep_s, batch, max_batches) for statuses, keep_s in rules(retention))
