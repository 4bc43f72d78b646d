"""`Submitter`: the blocking way in to the submission core, for the app's own code (`kvern.submit`, `.delay()`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from celery import Task

from kvern.broker.grouping import GroupCall
from kvern.broker.message import OneJobPublisherProtocol
from kvern.catalog import TaskCatalog
from kvern.enqueue.core import accept, run_blocking
from kvern.enqueue.handle import JobHandle
from kvern.enqueue.marker import BackgroundMarker
from kvern.enqueue.validation import parse_notify, validate_call
from kvern.errors import SubmitError
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import Job, NewJob
from kvern.spec import Spec

MAX_IDEMPOTENCY_KEY = 200  # characters, as the job API's Idempotency-Key header
MAX_INSERT_BATCH = 256  # jobs in one group commit of the threads' inserts


@dataclass(frozen=True)
class StorePorts:
    """A BlockingPorts: the job store (inserts in group commits, marks in the background), a confirming publisher."""

    store: JobStoreProtocol
    publisher: OneJobPublisherProtocol
    inserter: GroupCall[NewJob, Job]  # store.create_jobs for the jobs that threads record meanwhile
    marker: BackgroundMarker

    def record(self, new: NewJob) -> tuple[Job, bool]:
        if new.idempotency_key is None:
            # Group commit: one transaction (one fsync) for the jobs that threads hand in while one is written.
            return self.inserter.call(new), True
        return self.store.create_job(new)

    def publish(self, job: Job) -> None:
        self.publisher.publish(job)

    def withdraw(self, job_id: str) -> bool:
        return self.store.withdraw(job_id)

    def mark_published(self, job_id: str) -> None:
        self.marker.add(job_id)


@dataclass
class Submitter:
    spec: Spec
    catalog: TaskCatalog
    store: JobStoreProtocol
    publisher: OneJobPublisherProtocol
    inserter: GroupCall[NewJob, Job] = field(init=False)
    marker: BackgroundMarker = field(init=False)

    def __post_init__(self) -> None:
        self.inserter = GroupCall(self._create_jobs, MAX_INSERT_BATCH)
        self.marker = BackgroundMarker(self.store)

    def _create_jobs(self, news: list[NewJob]) -> list[Job]:
        return self.store.create_jobs(news)

    def submit(
        self,
        task: Task | str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        subject: str | None = None,
        notify: Sequence[str] = (),
    ) -> JobHandle:
        """Validate, record durably, publish with the broker's confirm; the job's handle, or SubmitError (refused,
        nothing recorded) or Unavailable (store or broker away: nothing kept)."""
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        submission = validate_call(task, list(args), kwargs or {}, subject, self.catalog, self.spec.limits)
        if notify:  # who is told when it finishes, besides the task's own targets
            submission = replace(submission, notify=parse_notify(list(notify), self.spec.notify))
        accepted = run_blocking(
            accept(self.spec, submission, idempotency_key),
            StorePorts(self.store, self.publisher, self.inserter, self.marker),
        )
        return JobHandle(accepted.job.id, self.store)

    async def asubmit(
        self,
        task: Task | str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        subject: str | None = None,
        notify: Sequence[str] = (),
    ) -> JobHandle:
        """As `submit`, in a thread: the event loop goes on while the store writes and the broker confirms."""
        return await asyncio.to_thread(
            self.submit, task, args, kwargs, idempotency_key=idempotency_key, subject=subject, notify=notify
        )

    def close(self) -> None:
        self.marker.flush()
        self.publisher.close()
        self.store.close()


def check_idempotency_key(key: str) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise SubmitError(
            400, "invalid_idempotency_key", f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )
