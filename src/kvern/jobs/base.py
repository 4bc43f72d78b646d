"""`JobStoreProtocol`: what the rest of kvern may ask of a job store, whatever keeps the records.

Implementations: `JobStore` (jobs/store.py, SQLAlchemy Core over SQLite or PostgreSQL: the one kvern runs) and
`MemoryJobStore` (jobs/memory.py, for tests and tools that need no database). tests/unit/test_job_store.py is
the contract; it runs over all three backends.

Fencing, which every implementation keeps: a write a worker makes names its attempt and only lands while that
attempt is the job's current one and the job is running, so a late duplicate never overwrites an outcome and
a state never moves backwards (jobs/states.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from kvern.jobs.batch import Answer, WorkerOp
from kvern.jobs.records import ArtifactInfo, Attempt, Claim, Job, NewJob, PoolDecision, PoolHost, StuckSuspect
from kvern.jobs.states import JobStatus

NOT_BEGUN = "lost before it began: not counted"  # the note on an attempt a later claim gave back


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request."""

    def __init__(self, existing: Job) -> None:
        super().__init__(f"idempotency key already used for job {existing.id} with a different request")
        self.existing = existing


class ArtifactsTooLarge(ValueError):
    """Saving the artifact would take the attempt's artifacts past their size cap (`[limits] artifact_bytes`)."""


class JobStoreProtocol(Protocol):
    # -- lifecycle --------------------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Make the store ready for use; safe to call again on a store that is ready (adds what is missing)."""
        ...

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...

    def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable when it cannot be reached."""
        ...

    # -- submission --------------------------------------------------------------------------------------

    def create_jobs(self, news: Sequence[NewJob]) -> list[Job]:
        """Record queued jobs without idempotency keys at once (ValueError if one has a key)."""
        ...

    def create_job(self, new: NewJob) -> tuple[Job, bool]:
        """Record a queued job; returns (job, created). A known idempotency key returns the job made before,
        or raises IdempotencyConflict when the request hash differs; a duplicate id raises IntegrityError."""
        ...

    def find_by_idempotency_key(self, key: str) -> Job | None:
        """The job recorded with this idempotency key, if any."""
        ...

    def mark_published(self, job_ids: Sequence[str]) -> None:
        """The broker confirmed these jobs' messages; a job's first publish time is kept."""
        ...

    def withdraw(self, job_id: str) -> bool:
        """Forget a queued job never claimed (its message was refused); False if it was claimed or is gone."""
        ...

    def unpublished(self, older_than_s: float, limit: int = 500) -> list[Job]:
        """Queued jobs older than `older_than_s` whose message was never confirmed, oldest first."""
        ...

    # -- execution (worker side) ------------------------------------------------------------------------

    def claim_attempt(self, job_id: str, worker: str) -> Claim:
        """Start the next attempt of an active job (an open earlier attempt becomes lost); skip a finished job,
        bury a job whose attempt budget is spent; an unknown job runs untracked. A running job's open attempt
        that never began (no `mark_began`) is given back: lost, noted `NOT_BEGUN`, and the job's `max_attempts`
        grows by one, so it does not count against the budget (the new attempt's number is still the next)."""
        ...

    def mark_began(self, job_id: str, attempt: int, at: float) -> None:
        """A task process began running `attempt` at `at` (once: a later mark keeps the first)."""
        ...

    def record_progress(self, job_id: str, attempt: int, pct: int, message: str | None = None) -> bool:
        """Fenced; progress never moves backwards. False when refused."""
        ...

    def save_artifact(
        self, job_id: str, attempt: int, name: str, content_type: str, data: bytes, max_total: int | None = None
    ) -> None:
        """Keep a file of `attempt` (the same name again replaces it); served only if that attempt wins. With
        `max_total`, raise ArtifactsTooLarge (keeping what was there) when the attempt's files would then hold
        more than `max_total` bytes together."""
        ...

    def record_success(self, job_id: str, attempt: int, result: Any) -> bool:
        """Fenced: the job succeeds with `result` (JSON-able), or ends cancelled when a cancel was asked meanwhile;
        False when another attempt owns it or it ended."""
        ...

    def record_failure(
        self, job_id: str, attempt: int, error: str, status: JobStatus, traceback: str | None = None
    ) -> bool:
        """Fenced: the job ends with a terminal `status` and `error` (cancelled when a cancel was asked); False
        when refused."""
        ...

    def record_retry(
        self, job_id: str, attempt: int, error: str, traceback: str | None = None, delay_s: float = 0.0
    ) -> bool:
        """Fenced: the attempt failed and another follows after `delay_s`; the job stays running. False when
        refused, or when a cancel was asked meanwhile: the job is then cancelled and no retry follows."""
        ...

    def write_batch(self, ops: Sequence[WorkerOp]) -> list[Answer]:
        """Apply a node's worker writes in order in one transaction (one commit), each answering as its own
        method would (jobs/batch.py); every write keeps its fence. StoreUnavailable: none of them landed."""
        ...

    def mark_dead(self, job_id: str, error: str) -> bool:
        """The broker dead-lettered the job's message: an active job becomes dead, whatever attempt ran."""
        ...

    def stuck_suspects(self, started_before: float, retry_due_before: float, limit: int = 500) -> list[StuckSuspect]:
        """Running jobs whose current attempt started before `started_before` (waiting for no retry), or whose
        retry was due before `retry_due_before`, oldest attempt first."""
        ...

    def recover_stuck(self, job_id: str, attempt: int, reason: str, *, requeue: bool = True) -> JobStatus | None:
        """Fenced on `attempt`: queue a stuck job again while attempts remain and `requeue` (QUEUED), else bury it
        (DEAD); None when the job moved on since it was found."""
        ...

    def replay(self, job_id: str) -> Job | None:
        """A failed or dead job is queued again with a fresh round of attempts and its history; else None."""
        ...

    def cancel(self, job_id: str) -> Job | None:
        """A queued job, or a running one waiting out a retry's backoff, becomes cancelled at once (its pending
        delivery is skipped). A running attempt is asked to stop (`cancel_requested`); whatever it then ends
        with is recorded as cancelled. None for a finished or unknown job."""
        ...

    def is_cancelled(self, job_id: str) -> bool:
        """True when the job was cancelled, a cancel of it was asked, or it is gone (erased)."""
        ...

    # -- erasure ----------------------------------------------------------------------------------------

    def erase(self, job_id: str) -> bool:
        """Forget the job, its attempt history and its artifacts in one transaction, whatever its state; False
        when there is no such job. A running attempt finds its job gone: `kvern.cancelled()` answers True and
        its writes are refused."""
        ...

    def erase_subject(self, subject: str) -> int:
        """Erase (as `erase`) every job tagged with `subject`, in one transaction; returns how many."""
        ...

    def purge_finished(self, statuses: Sequence[JobStatus], finished_before: float, limit: int = 500) -> int:
        """Erase (as `erase`) up to `limit` jobs in one of the finished `statuses` that finished before
        `finished_before`, oldest first, in one transaction; returns how many. ValueError for an active status."""
        ...

    # -- reading ----------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job with the artifacts of the attempt whose outcome was recorded."""
        ...

    def artifact(self, job_id: str, name: str) -> tuple[str, bytes] | None:
        """(content type, data) of an artifact of the winning attempt; a losing attempt's files stay hidden."""
        ...

    def artifact_info(self, job_id: str, name: str) -> ArtifactInfo | None:
        """Name, content type and size of an artifact of the winning attempt (as `artifact`), without its data."""
        ...

    def artifact_chunk(self, job_id: str, name: str, offset: int, size: int) -> bytes | None:
        """Up to `size` bytes of that artifact from `offset` (empty past its end), so that a download never
        holds the whole file; None when the job no longer serves the artifact."""
        ...

    def list_jobs(
        self, status: JobStatus | None, limit: int, before: float | None = None, owner: str | None = None
    ) -> list[Job]:
        """Newest first (created_at, then id); `before` (a created_at) pages through older jobs; `owner` (an API
        key's id): only the jobs that key submitted."""
        ...

    def job_ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Ids that begin with `prefix` (case-sensitive), in order."""
        ...

    def history(self, job_id: str) -> list[Attempt]:
        """Every attempt of the job, in order."""
        ...

    def counts_by_status(self) -> dict[str, int]:
        """The number of jobs per status value, every status listed (0 when none)."""
        ...

    def count_status(self, status: JobStatus, queues: Sequence[str]) -> int:
        """Jobs in `status` on any of `queues`."""
        ...

    def count_working(self, queues: Sequence[str]) -> int:
        """Running jobs of `queues` not waiting out a retry's backoff (those need a process)."""
        ...

    def oldest_queued_at(self, queues: Sequence[str]) -> float | None:
        """When the longest-waiting queued job of `queues` became queued (created, replayed or requeued)."""
        ...

    # -- coordination of several hosts (jobs/coordination.py) ---------------------------------------------

    def hold_lease(self, name: str, holder: str, now: float, ttl_s: float) -> bool:
        """Take the lease `name` for `holder` until `now + ttl_s` when nobody holds it, it expired, or `holder`
        already holds it (a renewal); True when `holder` holds it afterwards. Of two hosts asking at once for a
        free lease, one gets it."""
        ...

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (a clean stop), so another holder need not wait for it to expire; a no-op when
        `holder` does not hold it."""
        ...

    def lease_holder(self, name: str, now: float) -> str | None:
        """Who holds the lease at `now`; None when nobody does or it expired."""
        ...

    def record_pool_decision(self, decision: PoolDecision, lease: str, now: float) -> bool:
        """Fenced on `lease`: the pool's decision replaces the one before only while `decision.leader` holds the
        lease at `now`; False (nothing written) otherwise."""
        ...

    def pool_decision(self, pool: str) -> PoolDecision | None:
        """The pool's latest decision, whoever made it."""
        ...

    def beat_pool_host(self, pool: str, host: str, processes: int, now: float, ttl_s: float) -> None:
        """`host` serves `pool` with `processes` running, until `now + ttl_s` unless it beats again."""
        ...

    def leave_pool(self, pool: str, host: str) -> None:
        """`host` stops serving `pool` (a clean stop): its heartbeat goes at once."""
        ...

    def live_pool_hosts(self, pool: str, now: float) -> list[PoolHost]:
        """The hosts whose heartbeat for `pool` has not expired at `now`, by host name."""
        ...
