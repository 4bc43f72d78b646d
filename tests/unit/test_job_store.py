"""The job store contract (`JobStoreProtocol`), run against SQLite, PostgreSQL and the in-memory store (the
`job_store` fixture is parametrized); what only a database has runs over the SQL backends (`sql_job_store`)."""

from __future__ import annotations

import itertools
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import MetaData, Table, update
from sqlalchemy import event as sa_event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError

import kvern.jobs.memory as memory_module
import kvern.jobs.store as store_module
from kvern.jobs import schema
from kvern.jobs.base import NOT_BEGUN, JobStoreProtocol
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.records import Claim, Job, NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import IdempotencyConflict, JobStore


def new_job(
    *,
    job_id: str | None = None,
    key: str | None = None,
    request_hash: str | None = None,
    queue: str = "reports",
    max_attempts: int = 4,
) -> NewJob:
    return NewJob(
        id=job_id or str(uuid.uuid4()),
        task="tasks.generate_heavy_report",
        queue=queue,
        args=[7, "a"],
        kwargs={"fmt": "pdf", "pages": [1, 2]},
        max_attempts=max_attempts,
        idempotency_key=key,
        request_hash=request_hash,
    )


def submitted(store: JobStoreProtocol, **kwargs: Any) -> Job:
    job, created = store.create_job(new_job(**kwargs))
    assert created
    return job


def get(store: JobStoreProtocol, job_id: str) -> Job:
    job = store.get(job_id)
    assert job is not None
    return job


# Columns added after the first release, by table: create_schema must add each to an older store.
ADDED_COLUMNS = {"kvern_jobs": ("round_attempts", "retry_at", "queued_at"), "kvern_attempts": ("traceback", "began_at")}
OLD_ROW = {
    "id": "old-1",
    "task": "tasks.t",
    "queue": "reports",
    "args": "[]",
    "kwargs": "{}",
    "status": "queued",
    "progress": 0,
    "attempts": 0,
    "max_attempts": 2,
    "created_at": 1_700_000_000.0,
}


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The store's `time.time()` advances one second per call: created_at values are distinct and ordered."""
    ticks = itertools.count(1_700_000_000)
    clock = types.SimpleNamespace(time=lambda: float(next(ticks)))
    monkeypatch.setattr(store_module, "time", clock)
    monkeypatch.setattr(memory_module, "time", clock)
    yield


# -- submission -----------------------------------------------------------------------------------------------


def test_create_job_then_get_returns_the_recorded_job(job_store: JobStoreProtocol) -> None:
    # given a new job
    new = new_job(key="k-1", request_hash="h-1", max_attempts=3)
    before = time.time()

    # when it is created
    job, created = job_store.create_job(new)

    # then it is recorded as queued, unpublished, with its arguments intact
    assert created is True
    assert job == get(job_store, new.id)
    assert job.id == new.id
    assert job.task == "tasks.generate_heavy_report"
    assert job.queue == "reports"
    assert job.args == [7, "a"]
    assert job.kwargs == {"fmt": "pdf", "pages": [1, 2]}
    assert job.status is JobStatus.QUEUED
    assert (job.progress, job.attempts, job.max_attempts) == (0, 0, 3)
    assert job.result is None
    assert job.error is None
    assert before <= job.created_at <= time.time()
    assert job.published_at is None
    assert job.started_at is None
    assert job.finished_at is None
    assert (job.idempotency_key, job.request_hash) == ("k-1", "h-1")
    assert job.artifacts == ()


def test_get_unknown_job_returns_none(job_store: JobStoreProtocol) -> None:
    assert job_store.get(str(uuid.uuid4())) is None


def test_same_idempotency_key_and_hash_returns_the_existing_job(job_store: JobStoreProtocol) -> None:
    # given a job created with an idempotency key
    first = submitted(job_store, key="order-42", request_hash="abc")

    # when the same request is submitted again under a new id
    again, created = job_store.create_job(new_job(key="order-42", request_hash="abc"))

    # then the first job is returned and nothing new is recorded
    assert created is False
    assert again.id == first.id
    assert sum(job_store.counts_by_status().values()) == 1


def test_same_idempotency_key_with_different_hash_is_a_conflict(job_store: JobStoreProtocol) -> None:
    # given a job created with an idempotency key
    first = submitted(job_store, key="order-42", request_hash="abc")

    # when a different request reuses the key
    with pytest.raises(IdempotencyConflict) as info:
        job_store.create_job(new_job(key="order-42", request_hash="xyz"))

    # then the conflict names the existing job, and no job was added
    assert info.value.existing.id == first.id
    assert sum(job_store.counts_by_status().values()) == 1


def test_duplicate_id_without_idempotency_key_is_an_error(job_store: JobStoreProtocol) -> None:
    # given a job
    job = submitted(job_store)

    # when the same id is created again without a key, the integrity error is not swallowed
    with pytest.raises(IntegrityError):
        job_store.create_job(new_job(job_id=job.id))


def test_concurrent_creates_with_one_idempotency_key_make_exactly_one_job(job_store: JobStoreProtocol) -> None:
    # given 50 threads ready to submit the same request at once
    threads = 50
    barrier = threading.Barrier(threads)

    def submit(_: int) -> tuple[str, bool]:
        barrier.wait(timeout=30)
        job, created = job_store.create_job(new_job(key="same-key", request_hash="same-hash"))
        return job.id, created

    # when they all submit
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(submit, range(threads)))

    # then exactly one job was created, and every caller got that job
    assert sum(created for _, created in results) == 1
    assert len({job_id for job_id, _ in results}) == 1
    assert job_store.counts_by_status()[JobStatus.QUEUED] == 1
    assert len(job_store.list_jobs(None, limit=100)) == 1


def test_withdraw_deletes_only_an_unclaimed_queued_job(job_store: JobStoreProtocol) -> None:
    # given an unclaimed job, a claimed job, and a replayed job (queued again, but with attempts)
    unclaimed = submitted(job_store)
    claimed = submitted(job_store)
    job_store.claim_attempt(claimed.id, "w1")
    replayed = submitted(job_store)
    job_store.claim_attempt(replayed.id, "w1")
    job_store.record_failure(replayed.id, 1, "boom", JobStatus.DEAD)
    assert job_store.replay(replayed.id) is not None

    # when each is withdrawn
    for job in (unclaimed, claimed, replayed):
        job_store.withdraw(job.id)

    # then only the unclaimed one is gone
    assert job_store.get(unclaimed.id) is None
    assert get(job_store, claimed.id).status is JobStatus.RUNNING
    assert get(job_store, replayed.id).status is JobStatus.QUEUED


def test_unpublished_lists_old_unconfirmed_queued_jobs_until_marked_published(job_store: JobStoreProtocol) -> None:
    # given three queued jobs, one claimed job (claiming marks it published) and one finished job
    waiting = [submitted(job_store) for _ in range(3)]
    claimed = submitted(job_store)
    job_store.claim_attempt(claimed.id, "w1")

    # when nothing is old enough yet, the outbox is empty
    assert job_store.unpublished(older_than_s=3600) == []

    # when every unconfirmed job is old enough
    outbox = job_store.unpublished(older_than_s=-1)

    # then the queued, unpublished jobs are listed oldest first, and the claimed one is not
    assert [j.id for j in outbox] == [j.id for j in waiting]
    assert job_store.unpublished(older_than_s=-1, limit=2) == outbox[:2]

    # when two are confirmed
    job_store.mark_published([waiting[0].id, waiting[1].id])
    job_store.mark_published([])

    # then only the third is left, and the others carry a publish time
    assert [j.id for j in job_store.unpublished(older_than_s=-1)] == [waiting[2].id]
    assert get(job_store, waiting[0].id).published_at is not None
    assert get(job_store, claimed.id).published_at is not None


def test_mark_published_keeps_the_first_publish_time(job_store: JobStoreProtocol) -> None:
    # given a published job
    job = submitted(job_store)
    job_store.mark_published([job.id])
    first = get(job_store, job.id).published_at

    # when it is marked published again
    time.sleep(0.01)
    job_store.mark_published([job.id])

    # then the first confirmation time stays
    assert get(job_store, job.id).published_at == first


# -- claiming attempts ----------------------------------------------------------------------------------------


def test_claim_numbers_attempts_and_marks_an_open_earlier_attempt_lost(job_store: JobStoreProtocol) -> None:
    # given a queued job
    job = submitted(job_store)

    # when it is claimed, then redelivered and claimed again (the first worker died)
    first = job_store.claim_attempt(job.id, "worker-a")
    second = job_store.claim_attempt(job.id, "worker-b")

    # then the attempts are numbered 1 and 2, and the job is running its second attempt
    assert first == Claim(run=True, attempt=1, tracked=True)
    assert second == Claim(run=True, attempt=2, tracked=True)
    running = get(job_store, job.id)
    assert running.status is JobStatus.RUNNING
    assert running.attempts == 2
    assert running.started_at is not None
    assert running.published_at is not None
    # and the first, still-open attempt is recorded as lost
    history = job_store.history(job.id)
    assert [(a.attempt, a.worker, a.outcome) for a in history] == [(1, "worker-a", "lost"), (2, "worker-b", None)]
    assert history[0].finished_at is not None
    assert history[1].finished_at is None


def test_started_at_is_the_first_attempt_start(job_store: JobStoreProtocol) -> None:
    # given a job claimed once
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")
    started = get(job_store, job.id).started_at

    # when it is claimed again
    time.sleep(0.01)
    job_store.claim_attempt(job.id, "w2")

    # then started_at still says when the job first started
    assert get(job_store, job.id).started_at == started


def test_a_delivery_past_the_attempt_budget_buries_the_job(job_store: JobStoreProtocol) -> None:
    # given a job allowed two attempts, both begun and lost with their worker processes
    job = submitted(job_store, max_attempts=2)
    for attempt, worker in ((1, "w1"), (2, "w2")):
        job_store.claim_attempt(job.id, worker)
        job_store.mark_began(job.id, attempt, time.time())

    # when the message is delivered once more
    claim = job_store.claim_attempt(job.id, "w3")

    # then it does not run again: the job is dead and its last attempt is closed
    assert claim.run is False
    dead = get(job_store, job.id)
    assert dead.status is JobStatus.DEAD and dead.attempts == 2
    assert "attempt budget spent" in (dead.error or "")
    assert [a.outcome for a in job_store.history(job.id)] == ["lost", "dead"]


def test_a_claimed_attempt_that_never_began_does_not_count(job_store: JobStoreProtocol) -> None:
    # given a job with no retries, claimed ahead by a node that was killed before a task process began it
    job = submitted(job_store, max_attempts=1)
    job_store.claim_attempt(job.id, "killed-node")

    # when its message is delivered again
    claim = job_store.claim_attempt(job.id, "w2")

    # then it runs (it is not buried): a new attempt, numbered on, with the unused one given back
    assert (claim.run, claim.attempt, claim.max_attempts) == (True, 2, 2)
    running = get(job_store, job.id)
    assert (running.status, running.attempts, running.max_attempts) == (JobStatus.RUNNING, 2, 2)
    assert [(a.outcome, a.error) for a in job_store.history(job.id)] == [("lost", NOT_BEGUN), (None, None)]
    # and the fence moved on: the unused attempt can write nothing
    assert not job_store.record_success(job.id, 1, "stale")
    assert job_store.record_success(job.id, 2, "ran")
    assert get(job_store, job.id).result == "ran"


def test_an_attempt_that_began_counts_once_lost(job_store: JobStoreProtocol) -> None:
    # given a job with no retries whose task process began it, then was lost with its node
    job = submitted(job_store, max_attempts=1)
    job_store.claim_attempt(job.id, "killed-node")
    job_store.mark_began(job.id, 1, time.time())
    job_store.mark_began(job.id, 1, time.time() + 5)  # a second mark keeps the first

    # when its message is delivered again, then its budget is spent: it is buried, not run again
    assert job_store.claim_attempt(job.id, "w2") == Claim(False, 1, True)
    dead = get(job_store, job.id)
    assert (dead.status, dead.max_attempts) == (JobStatus.DEAD, 1)


def test_a_retried_attempt_is_not_given_back(job_store: JobStoreProtocol) -> None:
    # given a job whose first attempt ran and asked for a retry (no began mark: an older worker's attempt)
    job = submitted(job_store, max_attempts=2)
    job_store.claim_attempt(job.id, "w1")
    assert job_store.record_retry(job.id, 1, "again")

    # when the retry is claimed, then the attempt counts: the budget stays as it was
    assert job_store.claim_attempt(job.id, "w2") == Claim(True, 2, True)
    assert get(job_store, job.id).max_attempts == 2
    assert [a.outcome for a in job_store.history(job.id)] == ["retry", None]


def test_claim_for_a_finished_job_does_not_run(job_store: JobStoreProtocol) -> None:
    # given a job that succeeded on its first attempt
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")
    assert job_store.record_success(job.id, 1, {"ok": True})

    # when a duplicate delivery claims it
    claim = job_store.claim_attempt(job.id, "w2")

    # then it must not run, and no attempt is added
    assert claim == Claim(run=False, attempt=1, tracked=True)
    assert len(job_store.history(job.id)) == 1
    assert get(job_store, job.id).status is JobStatus.SUCCEEDED


def test_claim_for_an_unknown_job_is_untracked(job_store: JobStoreProtocol) -> None:
    # when a delivery names a job the store never recorded
    claim = job_store.claim_attempt(str(uuid.uuid4()), "w1")

    # then it runs untracked
    assert claim == Claim(run=True, attempt=1, tracked=False)


# -- outcomes, fenced by attempt ------------------------------------------------------------------------------


def test_success_records_result_and_closes_the_attempt(job_store: JobStoreProtocol) -> None:
    # given a running job
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")

    # when its attempt succeeds
    assert job_store.record_success(job.id, 1, {"pages": 12, "ok": True}) is True

    # then the result is the job's, progress is complete, and the attempt is closed as succeeded
    done = get(job_store, job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"pages": 12, "ok": True}
    assert done.progress == 100
    assert done.finished_at is not None
    assert [(a.attempt, a.outcome) for a in job_store.history(job.id)] == [(1, "succeeded")]


def test_stale_attempt_cannot_record_after_a_newer_attempt_claimed(job_store: JobStoreProtocol) -> None:
    # given a job whose attempt 1 was superseded by attempt 2
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")
    job_store.claim_attempt(job.id, "w2")

    # when attempt 1 reports success late
    won = job_store.record_success(job.id, 1, "from attempt 1")

    # then it is refused and the job keeps running attempt 2
    assert won is False
    still = get(job_store, job.id)
    assert still.status is JobStatus.RUNNING
    assert still.result is None

    # and attempt 2 can still record its outcome
    assert job_store.record_success(job.id, 2, "from attempt 2") is True
    assert get(job_store, job.id).result == "from attempt 2"


def test_first_outcome_wins_and_a_late_duplicate_changes_nothing(job_store: JobStoreProtocol) -> None:
    # given a job whose attempt recorded success
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")
    assert job_store.record_success(job.id, 1, {"v": 1}) is True
    finished_at = get(job_store, job.id).finished_at

    # when the same attempt reports again, with another result and then a failure
    late_success = job_store.record_success(job.id, 1, {"v": 2})
    late_failure = job_store.record_failure(job.id, 1, "late", JobStatus.FAILED)

    # then both are refused and the recorded outcome is untouched
    assert (late_success, late_failure) == (False, False)
    done = get(job_store, job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"v": 1}
    assert done.error is None
    assert done.finished_at == finished_at
    # and the attempt history still says the attempt succeeded
    assert [(a.attempt, a.outcome, a.error) for a in job_store.history(job.id)] == [(1, "succeeded", None)]


def test_unclaimed_job_cannot_record_an_outcome(job_store: JobStoreProtocol) -> None:
    # given a queued job nobody claimed
    job = submitted(job_store)

    # when an outcome is recorded for an attempt that was never claimed
    # then it is refused
    assert job_store.record_success(job.id, 0, "x") is False
    assert job_store.record_success(job.id, 1, "x") is False
    assert get(job_store, job.id).status is JobStatus.QUEUED


def test_progress_never_moves_backwards_and_is_fenced(job_store: JobStoreProtocol) -> None:
    # given a running attempt 1
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")

    # when it reports 40%, then 20%
    assert job_store.record_progress(job.id, 1, 40, "rendering") is True
    assert job_store.record_progress(job.id, 1, 20, "back?") is False

    # then progress stays at 40% with its message
    job_now = get(job_store, job.id)
    assert (job_now.progress, job_now.progress_message) == (40, "rendering")

    # when attempt 2 takes over and attempt 1 reports again
    job_store.claim_attempt(job.id, "w2")
    assert job_store.record_progress(job.id, 1, 90, "stale") is False

    # then the stale report is ignored, and attempt 2 may move it forward
    assert get(job_store, job.id).progress == 40
    assert job_store.record_progress(job.id, 2, 60, "attempt 2") is True
    assert (get(job_store, job.id).progress, get(job_store, job.id).progress_message) == (60, "attempt 2")


def test_progress_after_the_outcome_is_refused(job_store: JobStoreProtocol) -> None:
    # given a finished job
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")
    job_store.record_failure(job.id, 1, "boom", JobStatus.FAILED)

    # when its attempt reports progress late
    # then it is refused
    assert job_store.record_progress(job.id, 1, 50) is False
    assert get(job_store, job.id).progress == 0


def test_only_the_winning_attempts_artifacts_are_served(job_store: JobStoreProtocol) -> None:
    # given attempt 1 saved two files and was then superseded by attempt 2
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")
    job_store.save_artifact(job.id, 1, "report.pdf", "application/pdf", b"attempt-1")
    job_store.save_artifact(job.id, 1, "stale.txt", "text/plain", b"only in attempt 1")
    job_store.claim_attempt(job.id, "w2")
    job_store.save_artifact(job.id, 2, "report.pdf", "application/pdf", b"attempt-2 draft")
    job_store.save_artifact(job.id, 2, "report.pdf", "application/pdf", b"attempt-2")

    # when nothing is recorded yet, no artifact is served
    assert job_store.artifact(job.id, "report.pdf") is None
    assert get(job_store, job.id).artifacts == ()

    # when attempt 2 succeeds (and attempt 1 writes once more, late)
    assert job_store.record_success(job.id, 2, "ok")
    job_store.save_artifact(job.id, 1, "late.txt", "text/plain", b"late")

    # then only attempt 2's files are served, and the latest save of a name wins
    assert job_store.artifact(job.id, "report.pdf") == ("application/pdf", b"attempt-2")
    assert job_store.artifact(job.id, "stale.txt") is None
    assert job_store.artifact(job.id, "late.txt") is None
    assert [(a.name, a.content_type, a.size) for a in get(job_store, job.id).artifacts] == [
        ("report.pdf", "application/pdf", len(b"attempt-2"))
    ]


def test_artifact_of_unknown_job_or_name_is_none(job_store: JobStoreProtocol) -> None:
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")
    job_store.save_artifact(job.id, 1, "a.bin", "application/octet-stream", b"\x00\x01")
    job_store.record_success(job.id, 1, None)

    assert job_store.artifact(job.id, "a.bin") == ("application/octet-stream", b"\x00\x01")
    assert job_store.artifact(job.id, "b.bin") is None
    assert job_store.artifact(str(uuid.uuid4()), "a.bin") is None


def test_retry_keeps_the_job_running_with_the_error(job_store: JobStoreProtocol) -> None:
    # given a running attempt 1
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")

    # when it fails with a retry to follow
    assert job_store.record_retry(job.id, 1, "ConnectionError: flaky") is True

    # then the job stays running with the error, and the attempt is closed as a retry
    still = get(job_store, job.id)
    assert still.status is JobStatus.RUNNING
    assert still.error == "ConnectionError: flaky"
    assert still.finished_at is None
    # and the next delivery runs attempt 2 without marking attempt 1 lost
    assert job_store.claim_attempt(job.id, "w2") == Claim(run=True, attempt=2, tracked=True)
    assert [(a.attempt, a.outcome, a.error) for a in job_store.history(job.id)] == [
        (1, "retry", "ConnectionError: flaky"),
        (2, None, None),
    ]


def test_retry_from_a_stale_attempt_is_refused(job_store: JobStoreProtocol) -> None:
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")
    job_store.claim_attempt(job.id, "w2")

    assert job_store.record_retry(job.id, 1, "late") is False
    assert get(job_store, job.id).error is None


@pytest.mark.parametrize("status", [JobStatus.DEAD, JobStatus.FAILED])
def test_failure_records_a_terminal_status(job_store: JobStoreProtocol, status: JobStatus) -> None:
    # given a running job
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")

    # when its attempt fails for good
    assert job_store.record_failure(job.id, 1, "ValueError: bad input", status) is True

    # then the job has that status and the error, and the attempt is closed with it
    failed = get(job_store, job.id)
    assert failed.status is status
    assert failed.error == "ValueError: bad input"
    assert failed.result is None
    assert failed.finished_at is not None
    assert [(a.outcome, a.error) for a in job_store.history(job.id)] == [(status.value, "ValueError: bad input")]
    # and a later delivery does not run it
    assert job_store.claim_attempt(job.id, "w2").run is False


def test_mark_dead_ends_an_active_job_once(job_store: JobStoreProtocol) -> None:
    # given a running job and a queued job
    running = submitted(job_store)
    job_store.claim_attempt(running.id, "w1")
    queued = submitted(job_store)

    # when the broker dead-letters both
    assert job_store.mark_dead(running.id, "delivery limit") is True
    assert job_store.mark_dead(queued.id, "delivery limit") is True

    # then both are dead, and marking again changes nothing
    for job_id in (running.id, queued.id):
        dead = get(job_store, job_id)
        assert dead.status is JobStatus.DEAD
        assert dead.error == "delivery limit"
        assert dead.finished_at is not None
    assert job_store.mark_dead(running.id, "again") is False
    assert get(job_store, running.id).error == "delivery limit"
    # and the attempt that was running can no longer record an outcome
    assert job_store.record_success(running.id, 1, "late") is False
    assert get(job_store, running.id).status is JobStatus.DEAD


def test_mark_dead_does_not_touch_a_finished_job(job_store: JobStoreProtocol) -> None:
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")
    job_store.record_success(job.id, 1, "done")

    assert job_store.mark_dead(job.id, "late dead-letter") is False
    assert get(job_store, job.id).status is JobStatus.SUCCEEDED


def test_a_job_waiting_out_a_retry_backoff_is_not_counted_as_working(job_store: JobStoreProtocol) -> None:
    # given two running jobs on one queue; the first fails and waits 60 s for its retry
    waiting, working = submitted(job_store), submitted(job_store)
    job_store.claim_attempt(waiting.id, "w1")
    job_store.claim_attempt(working.id, "w2")
    before = time.time()
    assert job_store.record_retry(waiting.id, 1, "flaky", delay_s=60)

    # then it stays running, with the retry's due time, and only the other job counts as working
    job = get(job_store, waiting.id)
    assert job.status is JobStatus.RUNNING
    assert job.retry_at is not None and before + 60 <= job.retry_at <= time.time() + 60
    assert job_store.count_working(["reports"]) == 1
    assert job_store.count_working(["other"]) == 0

    # when its retry is delivered, it is working again
    assert job_store.claim_attempt(waiting.id, "w1").attempt == 2
    assert get(job_store, waiting.id).retry_at is None
    assert job_store.count_working(["reports"]) == 2


def _started_ago(store: JobStoreProtocol, job_id: str, seconds: float) -> None:
    """Backdate the job's current attempt, as if it had started `seconds` ago."""
    if isinstance(store, MemoryJobStore):
        for attempt in store.attempts[job_id]:
            attempt["started_at"] = time.time() - seconds
        return
    assert isinstance(store, JobStore)
    with store.engine.begin() as conn:
        conn.execute(
            update(schema.attempts).where(schema.attempts.c.job_id == job_id).values(started_at=time.time() - seconds)
        )


def test_stuck_suspects_are_old_attempts_and_overdue_retries(job_store: JobStoreProtocol) -> None:
    old, fresh, overdue, backing_off, queued = (submitted(job_store) for _ in range(5))
    for job in (old, fresh, overdue, backing_off):
        job_store.claim_attempt(job.id, "w")
    # given an attempt that started 1000 s ago, a fresh one, a retry due 1000 s ago that never ran, and a retry
    # due in an hour whose failed attempt started long ago
    _started_ago(job_store, old.id, 1000)
    job_store.record_retry(overdue.id, 1, "flaky", delay_s=-1000)
    job_store.record_retry(backing_off.id, 1, "flaky", delay_s=3600)
    _started_ago(job_store, backing_off.id, 1000)

    # when suspects are looked for: attempts started over 500 s ago, retries due over 500 s ago
    now = time.time()
    suspects = {s.id: s for s in job_store.stuck_suspects(now - 500, now - 500)}

    # then the old attempt and the overdue retry are found, with what a recovery must fence on
    assert set(suspects) == {old.id, overdue.id}
    assert suspects[old.id].attempt == 1 and suspects[old.id].retry_at is None
    assert suspects[old.id].started_at < now - 900
    overdue_retry = suspects[overdue.id].retry_at
    assert overdue_retry is not None and overdue_retry < now - 900
    assert queued.id not in suspects


def test_a_stuck_job_is_requeued_while_attempts_remain_then_buried_and_replayable(job_store: JobStoreProtocol) -> None:
    # given a job with 2 attempts whose first attempt is stuck
    job = submitted(job_store, max_attempts=2)
    job_store.claim_attempt(job.id, "w1")
    job_store.mark_published([job.id])

    # when it is recovered
    assert job_store.recover_stuck(job.id, 1, "stuck: attempt 1 outlived its hard time limit") is JobStatus.QUEUED

    # then it is queued again, to be published, and the lost attempt says why
    requeued = get(job_store, job.id)
    assert (requeued.status, requeued.published_at, requeued.attempts) == (JobStatus.QUEUED, None, 1)
    assert [j.id for j in job_store.unpublished(older_than_s=-1)] == [job.id]
    [first] = job_store.history(job.id)
    assert (first.outcome, first.error) == ("lost", "stuck: attempt 1 outlived its hard time limit")
    # and a recovery fenced on an attempt it no longer is on changes nothing
    assert job_store.claim_attempt(job.id, "w2").attempt == 2
    assert job_store.recover_stuck(job.id, 1, "stale") is None
    assert get(job_store, job.id).status is JobStatus.RUNNING

    # when its last attempt is stuck too, it is buried with the reason, and can be replayed
    assert job_store.recover_stuck(job.id, 2, "stuck: attempt 2 too") is JobStatus.DEAD
    dead = get(job_store, job.id)
    assert (dead.status, dead.error) == (JobStatus.DEAD, "stuck: attempt 2 too")
    assert [a.outcome for a in job_store.history(job.id)] == ["lost", "dead"]
    assert job_store.replay(job.id) is not None


def test_replay_of_a_dead_job_queues_it_again_with_its_history(job_store: JobStoreProtocol) -> None:
    # given a job that died after two attempts, with an artifact from the last one
    job = submitted(job_store, max_attempts=2)
    job_store.claim_attempt(job.id, "w1")
    job_store.record_retry(job.id, 1, "flaky")
    job_store.claim_attempt(job.id, "w2")
    job_store.save_artifact(job.id, 2, "partial.txt", "text/plain", b"half")
    job_store.record_failure(job.id, 2, "flaky again", JobStatus.DEAD)
    job_store.mark_published([job.id])

    # when it is replayed
    replayed = job_store.replay(job.id)

    # then it is queued again under the same id, unpublished, with attempts and history kept
    assert replayed is not None
    assert replayed.id == job.id
    assert replayed.status is JobStatus.QUEUED
    assert replayed.attempts == 2
    assert replayed.max_attempts == 4
    assert replayed.progress == 0
    assert replayed.published_at is None
    assert replayed.finished_at is None
    assert replayed.artifacts == ()
    assert job_store.artifact(job.id, "partial.txt") is None
    assert [a.attempt for a in job_store.history(job.id)] == [1, 2]
    assert [j.id for j in job_store.unpublished(older_than_s=-1)] == [job.id]
    # and the next delivery is attempt 3
    assert job_store.claim_attempt(job.id, "w3") == Claim(run=True, attempt=3, tracked=True)


@pytest.mark.parametrize("end", ["succeeded", "queued", "running"])
def test_replay_only_applies_to_failed_or_dead_jobs(job_store: JobStoreProtocol, end: str) -> None:
    # given a job that is not failed or dead
    job = submitted(job_store)
    if end != "queued":
        job_store.claim_attempt(job.id, "w1")
    if end == "succeeded":
        job_store.record_success(job.id, 1, "ok")
    status_before = get(job_store, job.id).status

    # when / then replay refuses it and leaves it alone
    assert job_store.replay(job.id) is None
    assert get(job_store, job.id).status is status_before


def _run_to_death(store: JobStoreProtocol, job_id: str) -> None:
    """Every attempt the job has left fails; the last one ends it dead, as a worker records it."""
    while (claim := store.claim_attempt(job_id, "w")).run:
        job = get(store, job_id)
        if claim.attempt < job.max_attempts:
            store.record_retry(job_id, claim.attempt, "flaky")
        else:
            store.record_failure(job_id, claim.attempt, "flaky", JobStatus.DEAD)


def test_each_replay_grants_one_fresh_round_of_attempts(job_store: JobStoreProtocol) -> None:
    # given a job of a task with 4 retries (5 attempts a round) that died
    job = submitted(job_store, max_attempts=5)
    _run_to_death(job_store, job.id)
    assert get(job_store, job.id).attempts == 5

    for round_ in (2, 3):
        # when it is replayed and every attempt fails again
        replayed = job_store.replay(job.id)
        assert replayed is not None and replayed.max_attempts == 5 * round_
        _run_to_death(job_store, job.id)
        # then it is dead again after exactly 5 more attempts (not a budget that doubles each replay)
        dead = get(job_store, job.id)
        assert (dead.status, dead.attempts) == (JobStatus.DEAD, 5 * round_)


def test_replay_of_a_failed_job_is_allowed(job_store: JobStoreProtocol) -> None:
    job = submitted(job_store)
    job_store.claim_attempt(job.id, "w1")
    job_store.record_failure(job.id, 1, "PermanentError", JobStatus.FAILED)

    replayed = job_store.replay(job.id)

    assert replayed is not None
    assert replayed.status is JobStatus.QUEUED


# -- reading --------------------------------------------------------------------------------------------------


def test_counts_by_status_lists_every_status(job_store: JobStoreProtocol) -> None:
    # given an empty store, every status is counted as zero
    assert job_store.counts_by_status() == {status.value: 0 for status in JobStatus}

    # given two queued jobs, one running, one succeeded and one dead
    submitted(job_store)
    submitted(job_store)
    running = submitted(job_store)
    job_store.claim_attempt(running.id, "w")
    done = submitted(job_store)
    job_store.claim_attempt(done.id, "w")
    job_store.record_success(done.id, 1, None)
    dead = submitted(job_store)
    job_store.mark_dead(dead.id, "dlx")

    # when counted
    counts = job_store.counts_by_status()

    # then each status has its count
    assert counts == {"queued": 2, "running": 1, "succeeded": 1, "failed": 0, "dead": 1, "cancelled": 0}


@pytest.mark.usefixtures("fake_clock")
def test_list_jobs_is_newest_first_and_pages_with_before(job_store: JobStoreProtocol) -> None:
    # given five jobs created one after another
    jobs = [submitted(job_store) for _ in range(5)]
    newest_first = [j.id for j in reversed(jobs)]

    # when listing two at a time
    page1 = job_store.list_jobs(None, limit=2)
    page2 = job_store.list_jobs(None, limit=2, before=page1[-1].created_at)
    page3 = job_store.list_jobs(None, limit=2, before=page2[-1].created_at)

    # then the pages walk from newest to oldest without gaps or repeats
    assert [j.id for j in page1 + page2 + page3] == newest_first
    assert job_store.list_jobs(None, limit=2, before=page3[-1].created_at) == []


@pytest.mark.usefixtures("fake_clock")
def test_list_jobs_filters_by_status(job_store: JobStoreProtocol) -> None:
    # given queued and running jobs
    queued = [submitted(job_store) for _ in range(3)]
    job_store.claim_attempt(queued[1].id, "w")

    # when listing only queued jobs
    listed = job_store.list_jobs(JobStatus.QUEUED, limit=10)

    # then the running one is left out
    assert [j.id for j in listed] == [queued[2].id, queued[0].id]
    assert [j.id for j in job_store.list_jobs(JobStatus.RUNNING, limit=10)] == [queued[1].id]


def test_oldest_queued_at_looks_at_queued_jobs_of_the_given_queues(job_store: JobStoreProtocol) -> None:
    # given an empty store
    assert job_store.oldest_queued_at(["reports"]) is None

    # given queued jobs on two queues, the oldest of which is then claimed
    first = submitted(job_store, queue="reports")
    second = submitted(job_store, queue="reports")
    other = submitted(job_store, queue="mail")
    job_store.claim_attempt(first.id, "w")

    # then the oldest still-queued job of the named queues counts
    assert job_store.oldest_queued_at(["reports"]) == second.created_at
    assert job_store.oldest_queued_at(["mail"]) == other.created_at
    assert job_store.oldest_queued_at(["nothing"]) is None


def _created_ago(store: JobStoreProtocol, job_id: str, seconds: float) -> None:
    """Backdate the job's creation, as if it had been submitted `seconds` ago."""
    if isinstance(store, MemoryJobStore):
        store.jobs[job_id]["created_at"] = time.time() - seconds
        return
    assert isinstance(store, JobStore)
    with store.engine.begin() as conn:
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(created_at=time.time() - seconds))


def test_a_replayed_job_waits_from_its_replay_not_from_its_creation(job_store: JobStoreProtocol) -> None:
    # given a job created 157 s ago that died, and a job queued 5 s ago on another queue
    job = submitted(job_store, max_attempts=1)
    _created_ago(job_store, job.id, 157)
    job_store.claim_attempt(job.id, "w")
    job_store.record_failure(job.id, 1, "boom", JobStatus.DEAD)

    # when it is replayed
    before = time.time()
    assert job_store.replay(job.id) is not None

    # then its queue's oldest wait starts at the replay
    oldest = job_store.oldest_queued_at(["reports"])
    assert oldest is not None and before <= oldest <= time.time()
    assert get(job_store, job.id).created_at < before - 150  # its creation time is kept


def test_ping_and_create_schema_twice(job_store: JobStoreProtocol) -> None:
    # given a store with its schema and a job
    job = submitted(job_store)

    # when the schema is created again, nothing is lost
    job_store.create_schema()
    job_store.ping()
    assert get(job_store, job.id).id == job.id


# -- races that only PostgreSQL can interleave (SQLite serialises writers with BEGIN IMMEDIATE) ---------------


def _interleave_before_claim_update(store: JobStore, write: Callable[[], object]) -> list[object]:
    """Run `write` on another connection right between claim_attempt's SELECT and its UPDATE."""
    results: list[object] = []

    def before_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        is_claim_update = statement.lstrip().upper().startswith("UPDATE KVERN_JOBS") and "started_at" in statement
        if is_claim_update and not results:
            results.append(write())

    sa_event.listen(store.engine, "before_cursor_execute", before_execute)
    return results


@pytest.mark.parametrize("outcome", ["success", "dead"])
def test_claim_racing_with_an_outcome_does_not_reopen_the_job(postgres_store: JobStore, outcome: str) -> None:
    # given a job running attempt 1, and a redelivery whose claim reads the job just before attempt 1 finishes
    store = postgres_store
    job = submitted(store)
    store.claim_attempt(job.id, "w1")

    def finish() -> bool:
        if outcome == "success":
            return store.record_success(job.id, 1, "from attempt 1")
        return store.mark_dead(job.id, "delivery limit")

    interleaved = _interleave_before_claim_update(store, finish)

    # when the redelivery claims a new attempt
    claim = store.claim_attempt(job.id, "w2")

    # then the outcome committed in between stands: the redelivery does not run and the job stays finished
    assert interleaved == [True]
    assert claim.run is False
    finished = get(store, job.id)
    assert finished.status is (JobStatus.SUCCEEDED if outcome == "success" else JobStatus.DEAD)
    assert finished.attempts == 1
    assert [a.attempt for a in store.history(job.id)] == [1]


def test_create_schema_adds_the_columns_an_older_store_lacks(sql_job_store: JobStore) -> None:
    # (SQL only: the in-memory store has no tables to migrate and starts empty in every process)
    # given a store made by an earlier release: its tables lack the columns added since (all nullable)
    old = MetaData()
    for table in schema.metadata.sorted_tables:
        kept = [c.copy() for c in table.columns if c.name not in ADDED_COLUMNS.get(table.name, ())]
        Table(table.name, old, *kept)
    with sql_job_store.engine.begin() as conn:
        schema.metadata.drop_all(conn)
        old.create_all(conn)
        conn.execute(old.tables["kvern_jobs"].insert().values(**OLD_ROW))

    # when the schema is created by this release
    sql_job_store.create_schema()

    # then the new columns exist, the old row reads back, and the store works with it
    with sql_job_store.engine.connect() as conn:
        for table_name, columns in ADDED_COLUMNS.items():
            present = {c["name"] for c in sa_inspect(conn).get_columns(table_name)}
            assert set(columns) <= present, table_name
    assert get(sql_job_store, "old-1").status is JobStatus.QUEUED
    assert sql_job_store.claim_attempt("old-1", "w1") == Claim(run=True, attempt=1, tracked=True)
    assert [j.id for j in sql_job_store.list_jobs(None, 10)] == ["old-1"]
    # and running it again adds nothing more
    with sql_job_store.engine.begin() as conn:
        assert store_module.add_missing_columns(conn) == []


def test_hosts_starting_at_once_on_one_postgresql_store_all_make_or_find_the_schema(postgres_store_url: str) -> None:
    stores = [JobStore(postgres_store_url) for _ in range(6)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def create(store: JobStore) -> None:
        start.wait()
        try:
            store.create_schema()
        except BaseException as exc:  # each host's error is the finding
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert stores[0].counts_by_status() is not None  # the tables are there, made once
    finally:
        for store in stores:
            store.close()
