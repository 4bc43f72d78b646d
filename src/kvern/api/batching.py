"""Group commit of submissions: the jobs that arrive while one insert is being written share the next one.

A lone request waits for nothing (its batch is itself); under load, one transaction (one fsync) records every
job that arrived during the previous one, instead of each request queueing for the store's write lock. A job
is still recorded, durably, before its message is published and before the client hears 202.

A bulk submit (`POST /api/v1/jobs:batch`) is a batch already: `BatchPorts` records it in one transaction and
waits for its confirms together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from kvern.api.published import PublishedMarker
from kvern.broker.message import JobPublisherProtocol
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import Job, NewJob

MAX_BATCH = 256


class JobInserter:
    def __init__(self, store: JobStoreProtocol) -> None:
        self.store = store
        self.pending: list[tuple[NewJob, asyncio.Future[Job]]] = []
        self.writer: asyncio.Task[None] | None = None

    async def create(self, new: NewJob) -> Job:
        """Record a job without an idempotency key; returns once its batch is committed."""
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self.pending.append((new, future))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self._write_all())
        return await future

    async def _write_all(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            try:
                jobs = await run_in_threadpool(self.store.create_jobs, [new for new, _ in batch])
            except Exception as exc:  # every request of the batch gets the store's error (503)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), job in zip(batch, jobs, strict=True):
                if not future.done():
                    future.set_result(job)


class BatchPorts:
    """An AsyncBatchPorts (enqueue/core.py) for a bulk submit: the jobs without an idempotency key in one
    transaction, those with one each in its own (one thread hand-off for all); the publishes in flight together on
    the head's channel, so the batch waits for its confirms once; the published marks with the head's marker."""

    def __init__(self, store: JobStoreProtocol, publisher: JobPublisherProtocol, marker: PublishedMarker) -> None:
        self.store = store
        self.publisher = publisher
        self.marker = marker

    async def record(self, news: list[NewJob]) -> list[tuple[Job, bool] | BaseException]:
        return await run_in_threadpool(self._record, news)

    def _record(self, news: list[NewJob]) -> list[tuple[Job, bool] | BaseException]:
        answers: list[tuple[Job, bool] | BaseException | None] = [None] * len(news)
        plain = [index for index, new in enumerate(news) if new.idempotency_key is None]
        try:
            jobs = self.store.create_jobs([news[i] for i in plain]) if plain else []
            for index, job in zip(plain, jobs, strict=True):
                answers[index] = (job, True)
        except Exception as exc:  # nothing of that transaction was recorded: each of its jobs gets the error
            for index in plain:
                answers[index] = exc
        for index, new in enumerate(news):
            if new.idempotency_key is not None:
                answers[index] = _or_error(partial(self.store.create_job, new))
        return [answer for answer in answers if answer is not None]

    async def publish(self, jobs: list[Job]) -> list[BaseException | None]:
        return await self.publisher.publish_many(jobs)

    async def withdraw(self, job_ids: list[str]) -> list[bool | BaseException]:
        return await run_in_threadpool(lambda: [_or_error(partial(self.store.withdraw, i)) for i in job_ids])

    async def mark_published(self, job_ids: list[str]) -> list[BaseException | None]:
        for job_id in job_ids:
            self.marker.add(job_id)
        return [None] * len(job_ids)


T = TypeVar("T")


def _or_error(call: Callable[[], T]) -> T | BaseException:
    try:
        return call()
    except Exception as exc:
        return exc
