"""Wrap each user task so that every delivery becomes a numbered, fenced attempt.

At-least-once delivery, exactly-once recording: a delivery first claims an attempt in the job store (a
delivery for a finished job is skipped), the task runs with its job context bound, and the outcome is recorded
only if that attempt still owns the job.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pickle
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from celery import Task
from celery.exceptions import Ignore, Retry, TimeLimitExceeded
from celery.signals import task_failure
from celery.worker.consumer import Consumer
from celery.worker.strategy import default as default_strategy
from kombu.message import Message
from kombu.utils.imports import symbol_by_name

from kvern.constants import KVERN_JOB_HEADER, ORIGINAL_RUN_ATTR
from kvern.errors import PermanentError, StoreUnavailable
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import Claim
from kvern.jobs.states import JobStatus
from kvern.spec import TaskPolicy
from kvern.worker.context import JobContext, JobInfo, TaskStore, _current
from kvern.worker.deferred_ack import CommitWaiter, call_soon_is_thread_safe, deferred_ack_request
from kvern.worker.dispatch import CLAIM_FIELD, DispatchClaims, claiming_request

log = logging.getLogger("kvern.worker")

STORE_PATIENCE_S = 20.0  # how long a finished attempt waits for the job store to record its outcome
STORE_RETRY_S = 5  # a delivery that found the job store away comes back after this long
TRACEBACK_FRAMES = 20  # the last frames of a failure kept in the attempt history
TRACEBACK_MAX_CHARS = 8 * 1024
TRACEBACK_PART_CHARS = 1024  # one frame, or the message


@dataclass(frozen=True)
class Outcome:
    """Where a failed attempt leads."""

    status: JobStatus | None  # None: retry
    delay_s: float = 0.0


def backoff_delay(policy: TaskPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(policy.backoff_max, policy.backoff * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0, ceiling)


def decide_after_failure(
    exc: BaseException, policy: TaskPolicy, attempt: int, max_attempts: int | None = None
) -> Outcome:
    """FAILED for a permanent error (or no retries declared), DEAD once the attempt budget is spent."""
    if isinstance(exc, PermanentError) or policy.retries == 0:
        return Outcome(JobStatus.FAILED)
    budget = max_attempts if max_attempts is not None else policy.retries + 1
    if attempt >= budget:
        return Outcome(JobStatus.DEAD)
    # A replayed job starts a new round of backoff rather than waiting the longest delay at once.
    round_attempt = attempt - (budget - policy.retries - 1)
    return Outcome(None, backoff_delay(policy, max(1, round_attempt)))


def format_traceback(exc: BaseException) -> str:
    """The failure's last frames, bounded: what a user needs to find the failing line, not the whole stack."""
    parts = traceback.TracebackException.from_exception(exc, limit=-TRACEBACK_FRAMES).format()
    # One huge message (or source line) must not crowd out the frames.
    text = "".join(p if len(p) <= TRACEBACK_PART_CHARS else p[:TRACEBACK_PART_CHARS] + " (cut)\n" for p in parts)
    if len(text) > TRACEBACK_MAX_CHARS:
        text = "(earlier lines cut)\n" + text[-TRACEBACK_MAX_CHARS:]
    return text


class AttemptStore(TaskStore, Protocol):
    """What an attempt's wrapper needs of the store: a JobStore, or the node's writer (worker/writer_client.py)."""

    def claim_attempt(self, job_id: str, worker: str) -> Claim: ...

    def mark_began(self, job_id: str, attempt: int, at: float) -> None: ...

    def record_success(self, job_id: str, attempt: int, result: Any) -> bool: ...

    def record_failure(
        self, job_id: str, attempt: int, error: str, status: JobStatus, traceback: str | None = None
    ) -> bool: ...

    def record_retry(
        self, job_id: str, attempt: int, error: str, traceback: str | None = None, delay_s: float = 0.0
    ) -> bool: ...


def guard_task(
    task: Task,
    store: AttemptStore,
    policy: TaskPolicy,
    worker_name: str,
    commits: CommitWaiter | None = None,
    claims: DispatchClaims | None = None,
) -> None:
    """Replace `task.run` by the fenced version (before the worker builds its tracers). With `commits` (the
    node's writer, when its task processes hand outcomes over without waiting), a message is acked only once
    the writer committed what its process handed over. With `claims`, the worker's main process claims each
    attempt when it dispatches the delivery (worker/dispatch.py) and the task process runs the claim it got."""
    if hasattr(task, ORIGINAL_RUN_ATTR):
        return
    user_run = task.run
    runner = _AttemptRunner(task, user_run, store, policy, worker_name, claimed_at_dispatch=claims is not None)

    @functools.wraps(user_run)
    def run(*args: Any, **kwargs: Any) -> Any:
        return runner(*args, **kwargs)

    setattr(task, ORIGINAL_RUN_ATTR, user_run)
    task.run = run
    if commits is None and claims is None:
        task.Strategy = checked_strategy
    else:
        base = symbol_by_name(task.Request)
        task.Strategy = functools.partial(checked_strategy, request_base=base, acks_after=commits, claims=claims)
    # The task was bound to its app (which copies these from the app's config) before kvern's settings were
    # applied: without this, messages are acked before the task runs, and a crash loses the job.
    task.acks_late = True
    task.reject_on_worker_lost = True
    task.acks_on_failure_or_timeout = True
    task.ignore_result = True
    # Celery logs a failure it expects at INFO without a traceback ("raised expected"), others as errors.
    task.throws = (*task.throws, PermanentError)
    # kvern counts attempts itself (the job's max_attempts, which a replay extends): Celery's own limit (3 by
    # default, which `retry(max_retries=None)` falls back to) would end a longer budget with the job running.
    task.max_retries = None
    task.default_retry_delay = 0  # a retry without a countdown is due at once, not in Celery's 3 minutes
    if policy.soft_time_limit is not None:
        task.soft_time_limit = policy.soft_time_limit
    task.time_limit = policy.time_limit


class _AttemptRunner:
    def __init__(
        self,
        task: Task,
        user_run: Callable[..., Any],
        store: AttemptStore,
        policy: TaskPolicy,
        worker: str,
        claimed_at_dispatch: bool = False,
    ) -> None:
        self.task = task
        self.user_run = user_run
        self.store = store
        self.policy = policy
        self.worker = worker
        self.claimed_at_dispatch = claimed_at_dispatch

    def _claim(self, job_id: str) -> Claim:
        """The attempt this delivery runs: the one the main process claimed when it dispatched the delivery (its
        writer's answer), or, without that (a delivery run outside the event loop), claimed here."""
        handed = self.task.request.get(CLAIM_FIELD) if self.claimed_at_dispatch else None
        if handed is None:
            return self.store.claim_attempt(job_id, self.worker)
        if "error" in handed:
            raise StoreUnavailable(handed.get("message", "job store unavailable"))
        return Claim(**handed["answer"])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        job_id: str | None = self.task.request.id
        if job_id is None:
            # `other_task(...)` inside a task (or anywhere): Celery's plain function call, no delivery of its own
            # (a delivery always has an id). It runs within the calling job, if any: its progress and artifacts
            # are that job's.
            return self.user_run(*args, **kwargs)
        try:
            claim = self._claim(job_id)
        except StoreUnavailable as exc:
            # Acking now would strand the job: send the message round again once the store may be back.
            raise self._postpone(job_id, exc) from None
        if not claim.tracked and self.task.request.get(KVERN_JOB_HEADER):
            # Sent by a web head whose record is gone: the publish was never confirmed and the client got 503.
            # Or erased since (DELETE /api/v1/jobs/{id}): its retry's message carries the same header.
            log.info("job %s has no record (withdrawn before it was accepted, or erased); skipped", job_id)
            raise Ignore()  # acked, and not logged as a success: nothing ran
        if not claim.run:
            log.info("job %s already has an outcome; duplicate delivery skipped", job_id)
            raise Ignore()
        if claim.tracked:
            self._began(job_id, claim.attempt)
        token = _current.set(JobContext(self.store, JobInfo(job_id, claim.attempt), tracked=claim.tracked))
        try:
            result = self.user_run(*args, **kwargs)
        except Retry:
            raise
        except Exception as exc:
            self._on_failure(job_id, claim, exc)
        finally:
            _current.reset(token)
        self._on_success(job_id, claim, result)
        return result

    def _began(self, job_id: str, attempt: int) -> None:
        """Tell the store the attempt began (through the writer, without waiting): from now on it counts against
        the job's budget. Without the mark, a later claim gives it back (one more run at worst), so a writer that
        cannot be reached does not stop the attempt."""
        try:
            self.store.mark_began(job_id, attempt, time.time())
        except StoreUnavailable as exc:
            log.warning("job %s attempt %d: its start could not be noted (%s)", job_id, attempt, exc)

    def _on_success(self, job_id: str, claim: Claim, result: Any) -> None:
        if not claim.tracked:
            return
        try:
            json.dumps(result)
        except (TypeError, ValueError):
            result = repr(result)
        if not self._patiently(job_id, self.store.record_success, job_id, claim.attempt, result):
            log.warning("job %s attempt %d finished but another attempt owns the job", job_id, claim.attempt)

    def _on_failure(self, job_id: str, claim: Claim, exc: Exception) -> NoReturn:
        """Record the failed attempt, then raise: a retry, or the error itself so Celery logs a failure.

        Celery acks a task that raised (acks_on_failure_or_timeout): the outcome is already in the store.
        """
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log.warning("job %s attempt %d failed: %s", job_id, claim.attempt, error)
        if not claim.tracked:
            raise exc
        outcome = decide_after_failure(exc, self.policy, claim.attempt, claim.max_attempts)
        trace = format_traceback(exc)
        if outcome.status is not None:
            self._patiently(job_id, self.store.record_failure, job_id, claim.attempt, error, outcome.status, trace)
            raise exc
        # RabbitMQ's delayed delivery counts whole seconds and refuses a countdown under 1 s (the retry would be
        # rejected and the job stranded): round up, and retry at once only for no delay at all.
        countdown = math.ceil(outcome.delay_s) if outcome.delay_s > 0 else 0
        if self._patiently(job_id, self.store.record_retry, job_id, claim.attempt, error, trace, countdown):
            # Same task id: the retry is the same job (guard_task lifted Celery's retry limit).
            raise self.task.retry(exc=exc, countdown=countdown)
        raise exc  # another attempt owns the job now: this one just failed

    def _patiently(self, job_id: str, write: Callable[..., bool], *args: Any) -> bool:
        """An outcome write, retried while the store is briefly away; past that, the delivery is postponed."""
        deadline = time.monotonic() + STORE_PATIENCE_S
        delay = 0.2
        while True:
            try:
                return write(*args)
            except StoreUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    # The attempt's outcome cannot be recorded: a later delivery runs the job again (fenced).
                    raise self._postpone(job_id, exc) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _postpone(self, job_id: str, exc: StoreUnavailable) -> Retry:
        log.warning("job %s: %s; delivery postponed by %ds", job_id, exc, STORE_RETRY_S)
        return self.task.retry(exc=exc, countdown=STORE_RETRY_S, throw=False)


def checked_strategy(
    task: Task,
    app: Any,
    consumer: Any,
    request_base: type | None = None,
    acks_after: CommitWaiter | None = None,
    claims: DispatchClaims | None = None,
    **options: Any,
) -> Callable[..., Any]:
    """Celery's own strategy, behind a check that the worker can hand the delivery to a pool process.

    Prefork pickles each request (its decoded arguments included) to a child in the worker's main process:
    arguments nested too deep raise RecursionError there, which kills the worker, and the redelivery the next
    one. Pickling the arguments first costs microseconds for an ordinary job; a delivery that fails it is
    rejected without requeueing, so its queue dead-letters it and the dead-letter watcher marks the job dead.

    `request_base` is the task's own request class. `acks_after` (the node's writer): its requests ack once the
    writer committed, on the consumer's event loop (built again with each consumer start, after a reconnection
    too). `claims`: the consumer's dispatch claims each delivery's attempt first (worker/dispatch.py).
    """
    if request_base is not None:
        task.Request = _request_class(task, consumer, request_base, acks_after, claims)
    handle = default_strategy(task, app, consumer, **options)

    def on_message(message: Message, *args: Any, **kwargs: Any) -> Any:
        payload = message.payload  # a body that cannot be decoded raises here, for on_decode_error
        if claims is not None and message.headers:
            message.headers.pop(CLAIM_FIELD, None)  # a claim is the main process's to hand over, never a sender's
        try:
            pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # RecursionError, or any object pickle refuses
            job_id = (message.headers or {}).get("id")
            log.error("job %s: its message cannot be handed to a worker process (%r); dead-lettered", job_id, exc)
            message.reject_log_error(log, consumer.connection_errors)  # requeue=False: to the dead-letter exchange
            return None
        return handle(message, *args, **kwargs)

    return on_message


def _request_class(
    task: Task, consumer: Any, base: type, commits: CommitWaiter | None, claims: DispatchClaims | None
) -> type:
    if consumer.hub is not None and claims is not None:
        claims.install(consumer)
        if not call_soon_is_thread_safe():
            raise RuntimeError("kvern: claims at dispatch need kombu >= 5.7 (a thread-safe Hub.call_soon)")
    elif claims is not None:  # no event loop (a solo pool): the task process claims its attempt itself
        log.info("task %s: claimed in its task process (no event loop to claim at dispatch)", task.name)
    if commits is not None:
        if consumer.hub is None:  # no event loop to ack on: a deferred ack could not be sent safely
            raise RuntimeError("kvern: a pool with prefetch above 1 needs Celery's event loop (prefork, AMQP)")
        if not call_soon_is_thread_safe():
            raise RuntimeError("kvern: a pool with prefetch above 1 needs kombu >= 5.7 (a thread-safe Hub.call_soon)")
        base = deferred_ack_request(base, commits, consumer.hub)
    return claiming_request(base) if claims is not None else base


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, except that a message it cannot decode is dead-lettered rather than acked and lost."""

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        job_id = (message.headers or {}).get("id")
        log.error("job %s: its message cannot be decoded (%r); dead-lettered", job_id, exc)
        message.reject_log_error(log, self.connection_errors)  # requeue=False: to the dead-letter exchange


def watch_hard_time_limits(store: JobStoreProtocol) -> None:
    """Record the outcome of a job whose process was killed at its hard time limit.

    The task's own wrapper dies with its process, so the worker's main process records it, through the
    `task_failure` signal Celery sends there. The job becomes dead (replayable), not retried in a loop.
    """

    def on_failure(sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any) -> None:
        if task_id and isinstance(exception, TimeLimitExceeded):
            store.mark_dead(task_id, f"hard time limit exceeded ({exception})")

    task_failure.connect(on_failure, weak=False)
