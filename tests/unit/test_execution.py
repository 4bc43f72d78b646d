"""Worker execution: what follows a failed attempt, the backoff, and `guard_task` around a real (eager) Celery task."""

from __future__ import annotations

import dataclasses
import logging
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery, Task
from celery.exceptions import Ignore, Retry

import kvern
from kvern.catalog import original_run
from kvern.errors import PermanentError, StoreUnavailable
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.records import Claim, NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.spec import TaskPolicy
from kvern.worker.dispatch import CLAIM_FIELD, DispatchClaims
from kvern.worker.execution import (
    STORE_RETRY_S,
    TRACEBACK_FRAMES,
    TRACEBACK_MAX_CHARS,
    Outcome,
    backoff_delay,
    decide_after_failure,
    guard_task,
)

WORKER = "worker-1@host"


class _EdgeRng(random.Random):
    """A `random` stand-in that always draws the low or the high end of the range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


# -- decide_after_failure / backoff_delay ---------------------------------------------------------------------


def test_permanent_error_fails_at_once_even_with_retries_left() -> None:
    outcome = decide_after_failure(PermanentError("bad input"), TaskPolicy(retries=5), attempt=1)

    assert outcome == Outcome(JobStatus.FAILED)


def test_no_retries_declared_fails_on_the_first_error() -> None:
    outcome = decide_after_failure(RuntimeError("boom"), TaskPolicy(retries=0), attempt=1)

    assert outcome == Outcome(JobStatus.FAILED)


@pytest.mark.parametrize("attempt", [4, 5, 50])
def test_attempt_beyond_retries_is_dead(attempt: int) -> None:
    # given 3 retries after the first attempt: attempts 1..4 may run, a failure of the 4th ends the job
    outcome = decide_after_failure(RuntimeError("boom"), TaskPolicy(retries=3), attempt=attempt)

    assert outcome == Outcome(JobStatus.DEAD)


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_attempt_within_retries_is_retried_after_a_bounded_delay(attempt: int) -> None:
    policy = TaskPolicy(retries=3, backoff=0.5, backoff_max=1.5)
    ceiling = min(policy.backoff_max, policy.backoff * 2 ** (attempt - 1))

    for _ in range(50):
        outcome = decide_after_failure(ConnectionError("flaky"), policy, attempt=attempt)
        assert outcome.status is None
        assert 0 <= outcome.delay_s <= ceiling


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (30, 60.0)],
)
def test_backoff_ceiling_doubles_per_attempt_up_to_the_cap(attempt: int, ceiling: float) -> None:
    policy = TaskPolicy(backoff=1.0, backoff_max=60.0)

    assert backoff_delay(policy, attempt, _EdgeRng(high=True)) == ceiling
    assert backoff_delay(policy, attempt, _EdgeRng(high=False)) == 0.0


def test_backoff_is_fully_jittered_within_its_bounds() -> None:
    # given a seeded generator and the 3rd attempt (ceiling 4 s)
    rng = random.Random(1234)
    policy = TaskPolicy(backoff=1.0, backoff_max=60.0)

    # when many delays are drawn
    delays = [backoff_delay(policy, 3, rng) for _ in range(500)]

    # then they stay within [0, 4] and spread over the range (full jitter, not a fixed delay)
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert min(delays) < 0.5
    assert max(delays) > 3.5


def test_zero_backoff_retries_at_once() -> None:
    assert backoff_delay(TaskPolicy(backoff=0.0, backoff_max=0.0), 5) == 0.0


# -- guard_task with a real Celery app in eager mode ----------------------------------------------------------


@pytest.fixture
def celery_app() -> Iterator[Celery]:
    app = Celery("kvern-test", set_as_current=False)
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = False
    yield app
    app.close()


@pytest.fixture
def store() -> JobStoreProtocol:
    return MemoryJobStore()  # execution only needs the store contract (test_job_store runs it over every store)


def submit(store: JobStoreProtocol, task: Task, *args: Any, max_attempts: int = 4) -> str:
    job_id = str(uuid.uuid4())
    store.create_job(
        NewJob(id=job_id, task=task.name, queue="default", args=list(args), kwargs={}, max_attempts=max_attempts)
    )
    return job_id


def make_task(app: Celery, body: Callable[..., Any], name: str = "tasks.work") -> Task:
    return app.task(name=name)(body)


def test_successful_task_records_result_progress_and_artifact(celery_app: Celery, store: JobStoreProtocol) -> None:
    # given a task that reports progress and saves an artifact, guarded against the store
    seen: dict[str, Any] = {}

    def generate(user_id: int) -> dict[str, Any]:
        info = kvern.current_job()
        assert info is not None
        seen["job"] = info
        kvern.progress(40, "halfway")
        mid = store.get(info.job_id)
        assert mid is not None
        seen["progress"] = (mid.status, mid.progress, mid.progress_message)
        kvern.save_artifact("report.txt", f"report for {user_id}".encode())
        return {"user": user_id, "pages": 3}

    task = make_task(celery_app, generate)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER)
    job_id = submit(store, task, 7)

    # when the job is delivered
    outcome = task.apply(args=(7,), task_id=job_id)

    # then the task ran as attempt 1 of the job, with its progress visible while it ran
    assert outcome.successful()
    assert outcome.get() == {"user": 7, "pages": 3}
    assert seen["job"] == kvern.JobInfo(job_id, 1)
    assert seen["progress"] == (JobStatus.RUNNING, 40, "halfway")
    # and the job records the success, its result and the artifact of that attempt
    job = store.get(job_id)
    assert job is not None
    assert job.status is JobStatus.SUCCEEDED
    assert job.result == {"user": 7, "pages": 3}
    assert job.attempts == 1
    assert [(a.name, a.content_type, a.size) for a in job.artifacts] == [
        ("report.txt", "text/plain", len(b"report for 7"))
    ]
    assert store.artifact(job_id, "report.txt") == ("text/plain", b"report for 7")
    assert [(a.attempt, a.worker, a.outcome) for a in store.history(job_id)] == [(1, WORKER, "succeeded")]
    # and the job context does not leak out of the task
    assert kvern.current_job() is None


def test_second_delivery_of_a_finished_job_is_skipped(celery_app: Celery, store: JobStoreProtocol) -> None:
    # given a job whose task already ran to success once
    calls: list[int] = []

    def work(n: int) -> int:
        calls.append(n)
        return n * 2

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER)
    job_id = submit(store, task, 21)
    assert task.apply(args=(21,), task_id=job_id).get() == 42

    # when the same job is delivered again
    again = task.apply(args=(21,), task_id=job_id)

    # then the body does not run again (the delivery is ignored, not reported as a success) and the recorded
    # outcome is unchanged
    assert calls == [21]
    assert again.state == "IGNORED"
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.attempts) == (JobStatus.SUCCEEDED, 42, 1)
    assert len(store.history(job_id)) == 1


def test_permanent_error_fails_the_job_without_retrying(celery_app: Celery, store: JobStoreProtocol) -> None:
    # given a task that rejects its input, with retries declared
    calls: list[int] = []

    def work(n: int) -> None:
        calls.append(n)
        raise PermanentError(f"user {n} does not exist")

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default", retries=3, backoff=0.0, backoff_max=0.0), WORKER)
    job_id = submit(store, task, 9)

    # when it runs
    task.apply(args=(9,), task_id=job_id)

    # then it ran once and the job failed with the error
    assert calls == [9]
    job = store.get(job_id)
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert "PermanentError" in job.error
    assert "user 9 does not exist" in job.error
    assert [a.outcome for a in store.history(job_id)] == ["failed"]


def test_transient_error_is_retried_as_the_next_attempt_of_the_same_job(
    celery_app: Celery, store: JobStoreProtocol
) -> None:
    # given a task that fails once, then succeeds
    calls: list[int] = []

    def work(n: int) -> str:
        calls.append(n)
        if len(calls) == 1:
            raise ConnectionError("flaky network")
        return "done"

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default", retries=2, backoff=0.0, backoff_max=0.0), WORKER)
    job_id = submit(store, task, 1)

    # when it runs (eager mode runs the retry at once, under the same task id)
    task.apply(args=(1,), task_id=job_id)

    # then the second attempt's success is the job's outcome and the first is kept as a retry
    assert calls == [1, 1]
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.attempts) == (JobStatus.SUCCEEDED, "done", 2)
    assert [(a.attempt, a.outcome) for a in store.history(job_id)] == [(1, "retry"), (2, "succeeded")]
    assert "flaky network" in (store.history(job_id)[0].error or "")


def test_exhausted_retries_make_the_job_dead(celery_app: Celery, store: JobStoreProtocol) -> None:
    # given a task that always fails, with one retry
    calls: list[int] = []

    def work(n: int) -> None:
        calls.append(n)
        raise ConnectionError("still down")

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default", retries=1, backoff=0.0, backoff_max=0.0), WORKER)
    job_id = submit(store, task, 1, max_attempts=2)  # retries + 1, as a web head records it

    # when it runs
    task.apply(args=(1,), task_id=job_id)

    # then it ran twice and the job is dead
    assert calls == [1, 1]
    job = store.get(job_id)
    assert job is not None
    assert job.status is JobStatus.DEAD
    assert "still down" in (job.error or "")
    assert [(a.attempt, a.outcome) for a in store.history(job_id)] == [(1, "retry"), (2, "dead")]


def test_untracked_delivery_runs_without_recording(celery_app: Celery, store: JobStoreProtocol) -> None:
    # given a guarded task called with an id the store never recorded (a plain `.delay()` from user code)
    seen: list[object] = []

    def work(n: int) -> int:
        seen.append(kvern.current_job())
        kvern.progress(50)
        return n + 1

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER)
    task_id = str(uuid.uuid4())

    # when it runs
    result = task.apply(args=(1,), task_id=task_id)

    # then it runs normally and nothing is written to the store
    assert result.get() == 2
    assert seen == [kvern.JobInfo(task_id, 1)]
    assert store.get(task_id) is None
    assert store.history(task_id) == []


def test_withdrawn_job_sent_by_a_web_head_is_skipped(celery_app: Celery, store: JobStoreProtocol) -> None:
    # given a delivery marked as sent by a web head, whose job record is gone (withdrawn after a 503)
    calls: list[int] = []

    def work(n: int) -> int:
        calls.append(n)
        return n

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER)
    task.push_request(id=str(uuid.uuid4()), kvern_job=True)

    # when the worker runs it
    try:
        with pytest.raises(Ignore):  # acked without being logged as a success
            task.run(3)
    finally:
        task.pop_request()

    # then the body never runs
    assert calls == []


def test_guard_task_applies_time_limits_and_wraps_only_once(celery_app: Celery, store: JobStoreProtocol) -> None:
    # given a task guarded twice
    calls: list[int] = []

    def work(n: int) -> int:
        calls.append(n)
        return n

    task = make_task(celery_app, work)
    policy = TaskPolicy(queue="default", soft_time_limit=10.0, time_limit=20.0)
    guard_task(task, store, policy, WORKER)
    guard_task(task, store, TaskPolicy(queue="default", time_limit=99.0), WORKER)

    # then the first policy's limits apply and the user's function is still reachable
    assert (task.soft_time_limit, task.time_limit) == (10.0, 20.0)
    assert original_run(task) is work
    # and one delivery runs the body once, recorded once
    job_id = submit(store, task, 5)
    task.apply(args=(5,), task_id=job_id)
    assert calls == [5]
    assert [a.attempt for a in store.history(job_id)] == [1]


# -- the task-side API outside a job ---------------------------------------------------------------------------


def test_progress_and_save_artifact_do_nothing_outside_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # given no job is running, and any store write would be an error
    def forbidden(*_: Any, **__: Any) -> None:
        raise AssertionError("the store must not be called outside a job")

    monkeypatch.setattr(JobStore, "record_progress", forbidden)
    monkeypatch.setattr(JobStore, "save_artifact", forbidden)

    # when a task's helpers are called directly
    kvern.progress(50, "half")
    name = kvern.save_artifact("out.csv", b"a,b\n")

    # then nothing is recorded and the call behaves like a plain function
    assert name == "out.csv"
    assert kvern.current_job() is None


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_save_artifact_rejects_non_plain_names_even_outside_a_job(name: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        kvern.save_artifact(name, b"x")


def test_unguarded_task_using_the_helpers_runs_as_a_plain_function(celery_app: Celery, store: JobStoreProtocol) -> None:
    # given a task body that uses the helpers, run without a job (as in a user's own unit test)
    def work(n: int) -> int:
        kvern.progress(10)
        kvern.save_artifact("x.txt", b"x")
        return n * 3

    task = make_task(celery_app, work)

    # when the unguarded task is applied eagerly
    result = task.apply(args=(4,))

    # then it just returns, and nothing reaches the store
    assert result.get() == 12
    assert store.counts_by_status() == {status.value: 0 for status in JobStatus}


# -- retry budgets beyond Celery's own default (3) -------------------------------------------------------------


class _ResentMessages:
    """Stands in for the broker when a worker re-sends a retry: records each message's countdown."""

    def __init__(self) -> None:
        self.countdowns: list[float | None] = []

    def __call__(self, request: Any, args: Any, kwargs: Any, countdown: float | None = None, **_: Any) -> Any:
        self.countdowns.append(countdown)
        return self

    def apply_async(self) -> None:
        return None


def deliver_like_a_worker(task: Task, job_id: str, retries: int, *args: Any) -> BaseException | None:
    """Run one delivery as a worker does (not eager), carrying the retry count of its message."""
    task.push_request(id=job_id, retries=retries, is_eager=False, called_directly=False, args=args, kwargs={})
    try:
        task.run(*args)
    except BaseException as exc:  # what escapes is what the test looks at
        return exc
    finally:
        task.pop_request()
    return None


@pytest.mark.parametrize("retries", [1, 3, 4, 10])
def test_a_retry_budget_of_n_gives_n_plus_1_attempts_then_dead(
    celery_app: Celery, store: JobStoreProtocol, monkeypatch: pytest.MonkeyPatch, retries: int
) -> None:
    # given a task that always fails, with N retries and no backoff
    def work(n: int) -> None:
        raise ConnectionError(f"down on {n}")

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default", retries=retries, backoff=0.0, backoff_max=0.0), WORKER)
    resent = _ResentMessages()
    monkeypatch.setattr(task, "signature_from_request", resent)
    job_id = submit(store, task, 1, max_attempts=retries + 1)

    # when each delivery runs as a worker runs it, the message's retry count growing as Celery's does
    escaped = [deliver_like_a_worker(task, job_id, delivery, 1) for delivery in range(retries + 1)]

    # then every failure but the last is re-sent at once (not after Celery's default delay) ...
    assert [type(exc).__name__ for exc in escaped[:-1]] == ["Retry"] * retries
    assert resent.countdowns == [0] * retries
    # ... and the job ends dead after exactly N+1 attempts
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.attempts) == (JobStatus.DEAD, retries + 1)
    assert [a.outcome for a in store.history(job_id)] == ["retry"] * retries + ["dead"]


def test_a_replayed_job_gets_a_fresh_budget_each_time(
    celery_app: Celery, store: JobStoreProtocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a dead job of a task with 4 retries
    def work(n: int) -> None:
        raise ConnectionError("down")

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default", retries=4, backoff=0.0, backoff_max=0.0), WORKER)
    monkeypatch.setattr(task, "signature_from_request", _ResentMessages())
    job_id = submit(store, task, 1, max_attempts=5)
    for delivery in range(5):
        deliver_like_a_worker(task, job_id, delivery, 1)

    for replay in (1, 2):
        # when it is replayed (a new message: its retry count starts again) and fails every time
        assert store.replay(job_id) is not None
        for delivery in range(5):
            deliver_like_a_worker(task, job_id, delivery, 1)
        # then it is dead again after 5 more attempts
        job = store.get(job_id)
        assert job is not None
        assert (job.status, job.attempts) == (JobStatus.DEAD, 5 * (replay + 1))


# -- what a failure leaves behind: its traceback, and a log that says it failed ------------------------------------


def test_a_failed_attempt_keeps_its_traceback_and_is_logged_as_a_failure(
    celery_app: Celery, store: JobStoreProtocol, caplog: pytest.LogCaptureFixture
) -> None:
    # given a task that divides by zero, with no retries
    def divide(n: int) -> float:
        return n / 0

    task = make_task(celery_app, divide)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER)
    job_id = submit(store, task, 1, max_attempts=1)

    # when it runs
    with caplog.at_level(logging.INFO):
        outcome = task.apply(args=(1,), task_id=job_id)

    # then the attempt history keeps where it raised, not only the message
    [attempt] = store.history(job_id)
    assert attempt.error == "ZeroDivisionError: division by zero"
    assert attempt.traceback is not None
    assert "in divide" in attempt.traceback and "return n / 0" in attempt.traceback
    # and Celery reports the delivery as failed, never as a success
    assert outcome.failed()
    assert "raised unexpected: ZeroDivisionError" in caplog.text
    assert "succeeded" not in caplog.text


def test_a_permanent_error_is_logged_as_an_expected_failure(
    celery_app: Celery, store: JobStoreProtocol, caplog: pytest.LogCaptureFixture
) -> None:
    def reject(n: int) -> None:
        raise PermanentError(f"no user {n}")

    task = make_task(celery_app, reject)
    guard_task(task, store, TaskPolicy(queue="default", retries=3), WORKER)
    job_id = submit(store, task, 4)

    with caplog.at_level(logging.INFO):
        outcome = task.apply(args=(4,), task_id=job_id)

    assert outcome.failed()
    assert "raised expected: PermanentError" in caplog.text
    assert "succeeded" not in caplog.text
    assert [a.outcome for a in store.history(job_id)] == ["failed"]


def test_a_deep_traceback_keeps_only_its_last_frames_within_a_bounded_size(
    celery_app: Celery, store: JobStoreProtocol
) -> None:
    # given a task that fails 300 calls deep, with a long message
    def dive(depth: int) -> None:
        if depth == 0:
            raise ValueError("bottom " + "x" * 20_000)
        dive(depth - 1)

    task = make_task(celery_app, dive)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER)
    job_id = submit(store, task, 300, max_attempts=1)

    # when it runs
    task.apply(args=(300,), task_id=job_id)

    # then its traceback is bounded: the last frames only, and at most the size limit
    trace = store.history(job_id)[0].traceback
    assert trace is not None
    assert 'raise ValueError("bottom "' in trace  # the frame that raised is kept ...
    assert "in __call__" not in trace  # ... the outermost ones are not
    assert trace.count('File "') <= TRACEBACK_FRAMES
    assert len(trace) <= TRACEBACK_MAX_CHARS + len("(earlier lines cut)\n")
    assert "bottom xxx" in trace


# -- the job store away while a delivery runs ------------------------------------------------------------------


def test_a_delivery_that_finds_the_store_away_is_sent_round_again_without_running(
    celery_app: Celery, store: JobStoreProtocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the store cannot be reached when a delivery claims its attempt
    calls: list[int] = []

    def work(n: int) -> int:
        calls.append(n)
        return n

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER)
    job_id = submit(store, task, 1)
    resent = _ResentMessages()
    monkeypatch.setattr(task, "signature_from_request", resent)

    def away(*_: Any) -> Claim:
        raise StoreUnavailable("job store unavailable: connection refused")

    monkeypatch.setattr(store, "claim_attempt", away)

    # when it is delivered
    escaped = deliver_like_a_worker(task, job_id, 0, 1)

    # then the body did not run and the message is re-sent for later (not acked and lost)
    assert calls == []
    assert isinstance(escaped, Retry)
    assert resent.countdowns == [STORE_RETRY_S]


def test_an_outcome_write_waits_out_a_short_store_outage(
    celery_app: Celery, store: JobStoreProtocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the store is away for the first two attempts to record a success
    def double(n: int) -> int:
        return n * 2

    task = make_task(celery_app, double)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER)
    job_id = submit(store, task, 4)
    record_success = store.record_success
    failures = iter([True, True])

    def flaky_record(*args: Any) -> bool:
        if next(failures, False):
            raise StoreUnavailable("job store unavailable: connection refused")
        return record_success(*args)

    monkeypatch.setattr(store, "record_success", flaky_record)
    monkeypatch.setattr("kvern.worker.execution.time.sleep", lambda _s: None)

    # when it runs
    assert deliver_like_a_worker(task, job_id, 0, 4) is None

    # then the outcome is recorded once the store answers
    job = store.get(job_id)
    assert job is not None and (job.status, job.result) == (JobStatus.SUCCEEDED, 8)


# -- attempts claimed at dispatch by the worker's main process (worker/dispatch.py) ---------------------------


class _NoWriter:
    def submit(self, op: Any, reply: Callable[[Any], None]) -> None:
        raise AssertionError("the task process must not be the one to ask the writer")


def _claimed_at_dispatch(store: JobStoreProtocol, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The store's own claims are counted: a delivery that carries its claim must not make one."""
    claims: list[str] = []
    own_claim = store.claim_attempt

    def counted(job_id: str, worker: str) -> Claim:
        claims.append(job_id)
        return own_claim(job_id, worker)

    monkeypatch.setattr(store, "claim_attempt", counted)
    return claims


def test_a_delivery_claimed_at_dispatch_runs_the_attempt_it_was_handed(
    celery_app: Celery, store: JobStoreProtocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a job whose attempt 1 the main process claimed (through the writer) when it dispatched the delivery
    seen: list[kvern.JobInfo | None] = []

    def work(n: int) -> int:
        seen.append(kvern.current_job())
        return n

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER, claims=DispatchClaims(_NoWriter(), WORKER, 4))
    job_id = submit(store, task, 5)
    handed = {"answer": dataclasses.asdict(store.claim_attempt(job_id, WORKER))}
    claims = _claimed_at_dispatch(store, monkeypatch)

    # when the task process runs it
    task.push_request(id=job_id, retries=0, is_eager=False, called_directly=False, args=(5,), kwargs={})
    task.request.update({CLAIM_FIELD: handed})
    try:
        task.run(5)
    finally:
        task.pop_request()

    # then it ran as that attempt, without claiming another, and its outcome is recorded under it
    assert claims == []
    assert seen == [kvern.JobInfo(job_id, 1)]
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.attempts) == (JobStatus.SUCCEEDED, 5, 1)


def test_a_claim_handed_over_from_an_older_attempt_cannot_record_an_outcome(
    celery_app: Celery, store: JobStoreProtocol
) -> None:
    # given a delivery handed attempt 1, while a later delivery of the same job claimed attempt 2 meanwhile
    def work(n: int) -> int:
        return n

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER, claims=DispatchClaims(_NoWriter(), WORKER, 4))
    job_id = submit(store, task, 5)
    stale = {"answer": dataclasses.asdict(store.claim_attempt(job_id, WORKER))}
    store.claim_attempt(job_id, "other@host")

    # when the superseded delivery runs
    task.push_request(id=job_id, retries=0, is_eager=False, called_directly=False, args=(5,), kwargs={})
    task.request.update({CLAIM_FIELD: stale})
    try:
        task.run(5)
    finally:
        task.pop_request()

    # then its outcome is fenced out: the job still runs as attempt 2
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.result) == (JobStatus.RUNNING, 2, None)


def test_a_claim_the_store_could_not_commit_sends_the_delivery_round_again(
    celery_app: Celery, store: JobStoreProtocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a delivery whose claim at dispatch found the store away (the writer's error answer)
    calls: list[int] = []

    def work(n: int) -> None:
        calls.append(n)

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER, claims=DispatchClaims(_NoWriter(), WORKER, 4))
    job_id = submit(store, task, 1)
    resent = _ResentMessages()
    monkeypatch.setattr(task, "signature_from_request", resent)

    # when the task process gets it
    task.push_request(id=job_id, retries=0, is_eager=False, called_directly=False, args=(1,), kwargs={})
    task.request.update({CLAIM_FIELD: {"error": "unavailable", "message": "job store unavailable"}})
    try:
        escaped: BaseException | None = None
        task.run(1)
    except BaseException as exc:
        escaped = exc
    finally:
        task.pop_request()

    # then the body did not run and the message is re-sent for later
    assert calls == []
    assert isinstance(escaped, Retry)
    assert resent.countdowns == [STORE_RETRY_S]


def _run_handed(task: Task, job_id: str, handed: dict[str, Any], *args: Any) -> None:
    task.push_request(id=job_id, retries=0, is_eager=False, called_directly=False, args=args, kwargs={})
    task.request.update({CLAIM_FIELD: handed})
    try:
        task.run(*args)
    finally:
        task.pop_request()


def test_a_handed_attempt_is_marked_began_before_the_task_body_runs(
    celery_app: Celery, store: JobStoreProtocol
) -> None:
    # given a job with no retries whose attempt 1 was claimed at dispatch
    seen: list[Claim] = []

    def work(n: int) -> int:
        # (what a redelivery would meet if the node died now: the attempt began, so it counts and is not rerun)
        seen.append(store.claim_attempt(job_id, "other@host"))
        return n

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER, claims=DispatchClaims(_NoWriter(), WORKER, 4))
    job_id = submit(store, task, 5, max_attempts=1)
    handed = {"answer": dataclasses.asdict(store.claim_attempt(job_id, WORKER))}

    # when the task process runs it
    _run_handed(task, job_id, handed, 5)

    # then the store knew it began before the body ran: another claim then buries it rather than giving it back
    assert seen == [Claim(False, 1, True)]
    job = store.get(job_id)
    assert job is not None and (job.status, job.max_attempts) == (JobStatus.DEAD, 1)


def test_an_attempt_whose_began_mark_cannot_be_sent_still_runs(
    celery_app: Celery, store: JobStoreProtocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a handed attempt whose began mark finds the writer away
    def away(job_id: str, attempt: int, at: float) -> None:
        raise StoreUnavailable("job-store writer unavailable: gone for the test")

    def work(n: int) -> int:
        return n * 3

    task = make_task(celery_app, work)
    guard_task(task, store, TaskPolicy(queue="default"), WORKER, claims=DispatchClaims(_NoWriter(), WORKER, 4))
    job_id = submit(store, task, 2)
    handed = {"answer": dataclasses.asdict(store.claim_attempt(job_id, WORKER))}
    monkeypatch.setattr(store, "mark_began", away)

    # when it runs, then it runs and records its outcome (without the mark, a later claim would only give back
    # an attempt that had in fact run: one more run at worst)
    _run_handed(task, job_id, handed, 2)
    job = store.get(job_id)
    assert job is not None and (job.status, job.result) == (JobStatus.SUCCEEDED, 6)


def test_a_task_called_inline_from_another_runs_as_a_plain_call_within_the_outer_job(
    celery_app: Celery, store: JobStoreProtocol
) -> None:
    # given two guarded tasks, the outer one calling the inner one as a function (Celery's direct call)
    def render(n: int) -> bytes:
        kvern.save_artifact("part.txt", f"part {n}".encode())
        return f"part {n}".encode()

    inner = make_task(celery_app, render, name="tasks.render")
    guard_task(inner, store, TaskPolicy(queue="default"), WORKER)

    def build(n: int) -> int:
        return len(inner(n))

    outer = make_task(celery_app, build, name="tasks.build")
    guard_task(outer, store, TaskPolicy(queue="default"), WORKER)
    job_id = submit(store, outer, 3)

    # when the outer job is delivered
    outcome = outer.apply(args=(3,), task_id=job_id)

    # then the inline call ran as part of the outer job's one attempt: no attempt of its own, its artifact
    # belongs to the outer job
    assert outcome.successful(), outcome.traceback
    assert outcome.get() == len(b"part 3")
    job = store.get(job_id)
    assert job is not None and job.status is JobStatus.SUCCEEDED and job.attempts == 1
    assert store.artifact(job_id, "part.txt") == ("text/plain", b"part 3")

    # and outside any job, a direct call of a guarded task is a plain function call that records nothing
    def twice(n: int) -> int:
        return n * 2

    double = make_task(celery_app, twice, name="tasks.double")
    guard_task(double, store, TaskPolicy(queue="default"), WORKER)
    assert double(4) == 8
    assert [job.id for job in store.list_jobs(None, 10)] == [job_id]
