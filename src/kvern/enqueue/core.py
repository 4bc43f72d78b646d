"""The one submission core: record a validated job durably, publish it with the broker's confirm, withdraw the
record when the confirm never came, mark it published.

The rules are written once, as a generator of `Step`s (each one thing to do with the store or the broker);
a driver performs them, blocking (`run_blocking`: `kvern.submit`, `.delay()`) or awaiting (`run_async`: the
job API's web heads, with their group commit and aio-pika publisher). A port that raises has its error thrown
back into the rules at the step that asked for it, so the rules alone decide what a failure means.

`run_async_batch` drives the rules of many jobs in lockstep (a bulk submit): each round hands every step that
asks the same port to it at once, so a batch costs one record round trip and one wait for the confirms.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from kvern.enqueue.validation import Submission
from kvern.errors import PublishError, SubmitError
from kvern.jobs.base import IdempotencyConflict
from kvern.jobs.records import Job, NewJob
from kvern.jobs.views import job_body
from kvern.spec import Spec

log = logging.getLogger("kvern.enqueue")

Port = Literal["record", "publish", "withdraw", "mark_published"]


@dataclass(frozen=True)
class Step:
    port: Port
    argument: Any


@dataclass(frozen=True)
class Accepted:
    job: Job
    body: dict[str, Any]  # the job as the API answers it
    created: bool  # False: an idempotency key named a job made before


class BlockingPorts(Protocol):
    def record(self, new: NewJob) -> tuple[Job, bool]:
        """Record the job durably; (job, created) as JobStoreProtocol.create_job."""
        ...

    def publish(self, job: Job) -> None:
        """Return once the broker confirmed the job's message; raise PublishError otherwise."""
        ...

    def withdraw(self, job_id: str) -> bool:
        """As JobStoreProtocol.withdraw."""
        ...

    def mark_published(self, job_id: str) -> None:
        """Note the confirm (now or soon after)."""
        ...


class AsyncBatchPorts(Protocol):
    """As AsyncPorts, a list of arguments at a time: one answer per argument, an exception for one that failed."""

    def record(self, news: list[NewJob]) -> Awaitable[list[tuple[Job, bool] | BaseException]]: ...
    def publish(self, jobs: list[Job]) -> Awaitable[list[BaseException | None]]: ...
    def withdraw(self, job_ids: list[str]) -> Awaitable[list[bool | BaseException]]: ...
    def mark_published(self, job_ids: list[str]) -> Awaitable[list[BaseException | None]]: ...


class AsyncPorts(Protocol):
    def record(self, new: NewJob) -> Awaitable[tuple[Job, bool]]: ...
    def publish(self, job: Job) -> Awaitable[None]: ...
    def withdraw(self, job_id: str) -> Awaitable[bool]: ...
    def mark_published(self, job_id: str) -> Awaitable[None]: ...


Rules = Generator[Step, Any, Accepted]

JOB_IDS_PER_DRAW = 256  # job ids cut from one os.urandom call


class JobIds:
    """Random (version 4) UUIDs for new jobs, cut from one `os.urandom` draw per JOB_IDS_PER_DRAW ids.

    `uuid.uuid4()` draws 16 bytes per id, and os.urandom releases the GIL: on a web head's event loop each id then
    waited for the store's thread to hand the GIL back (85 us per id under B2's load, measured with cProfile).
    The same randomness, drawn in bulk. A forked child starts from a fresh draw, never from its parent's bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # `.delay()` cuts ids from several threads
        self._pool = b""
        self._used = 0
        os.register_at_fork(after_in_child=self._forget)

    def next(self) -> str:
        with self._lock:
            if self._used >= len(self._pool):
                self._pool, self._used = os.urandom(16 * JOB_IDS_PER_DRAW), 0
            start, self._used = self._used, self._used + 16
            return str(uuid.UUID(bytes=self._pool[start : start + 16], version=4))

    def _forget(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at the fork would stay held in the child
        self._pool, self._used = b"", 0


JOB_IDS = JobIds()


def new_job(spec: Spec, submission: Submission, idempotency_key: str | None, owner: str | None = None) -> NewJob:
    return NewJob(
        id=JOB_IDS.next(),
        task=submission.task,
        queue=spec.queue_for(submission.task),
        args=submission.args,
        kwargs=submission.kwargs,
        max_attempts=spec.policy(submission.task).retries + 1,
        idempotency_key=idempotency_key,
        request_hash=submission.request_hash,
        subject=submission.subject,
        owner=owner,
        notify=tuple(dict.fromkeys(spec.policy(submission.task).notify + submission.notify)),
    )


def accept(spec: Spec, submission: Submission, idempotency_key: str | None, owner: str | None = None) -> Rules:
    """The rules of accepting one validated submission for `owner` (an API key's id; None: the team's own code)."""
    try:
        job, created = yield Step("record", new_job(spec, submission, idempotency_key, owner))
    except IdempotencyConflict as exc:
        raise SubmitError(409, "idempotency_conflict", str(exc)) from None
    if not created:
        return Accepted(job, job_body(job), created=False)
    try:
        body = job_body(job)  # before publishing: once it is published, the job is accepted
    except Exception:
        yield Step("withdraw", job.id)
        raise
    try:
        yield Step("publish", job)
    except PublishError:
        # Never confirmed: withdraw the record so the refusal leaves nothing behind. If a worker claimed the job
        # meanwhile, the message did reach the broker after all: the job is accepted.
        if (yield Step("withdraw", job.id)):
            raise
        log.info("job %s: confirm lost but a worker already claimed it; accepted", job.id)
    yield Step("mark_published", job.id)
    return Accepted(job, body, created=True)


def _next_step(rules: Rules, answer: Any, failure: BaseException | None) -> Step | Accepted:
    """Hand the rules the last step's answer (or its failure); their next step, or what they accepted."""
    try:
        return rules.send(answer) if failure is None else rules.throw(failure)
    except StopIteration as done:
        accepted: Accepted = done.value
        return accepted


def run_blocking(rules: Rules, ports: BlockingPorts) -> Accepted:
    answer: Any = None
    failure: BaseException | None = None
    while not isinstance(step := _next_step(rules, answer, failure), Accepted):
        answer, failure = None, None
        try:
            answer = getattr(ports, step.port)(step.argument)
        except Exception as exc:
            failure = exc
    return step


async def run_async(rules: Rules, ports: AsyncPorts) -> Accepted:
    answer: Any = None
    failure: BaseException | None = None
    while not isinstance(step := _next_step(rules, answer, failure), Accepted):
        answer, failure = None, None
        try:
            answer = await getattr(ports, step.port)(step.argument)
        except Exception as exc:
            failure = exc
    return step


async def run_async_batch(many: list[Rules], ports: AsyncBatchPorts) -> list[Accepted | Exception]:
    """Drive each job's rules to its end; what each accepted, or the exception its rules raised."""
    outcomes: list[Accepted | Exception | None] = [None] * len(many)
    answers: list[tuple[Any, BaseException | None]] = [(None, None)] * len(many)
    live = list(range(len(many)))
    while live:
        asked: dict[Port, list[tuple[int, Any]]] = {}
        for index in live:
            try:
                step = _next_step(many[index], *answers[index])
            except Exception as exc:  # the rules refused this job (their own decision on a port's failure)
                outcomes[index] = exc
                continue
            if isinstance(step, Accepted):
                outcomes[index] = step
            else:
                asked.setdefault(step.port, []).append((index, step.argument))
        live = []
        for port, calls in asked.items():
            results = await getattr(ports, port)([argument for _, argument in calls])
            for (index, _), result in zip(calls, results, strict=True):
                answers[index] = (None, result) if isinstance(result, BaseException) else (result, None)
                live.append(index)
    done = [outcome for outcome in outcomes if outcome is not None]
    assert len(done) == len(many)  # every job's rules ran to their end
    return done
