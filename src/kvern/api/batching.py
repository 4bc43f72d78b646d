"""Group commit of submissions: the jobs that arrive while one insert is being written share the next one.

A lone request waits for nothing (its batch is itself); under load, one transaction (one fsync) records every
job that arrived during the previous one, instead of each request queueing for the store's write lock. A job
is still recorded, durably, before its message is published and before the client hears 202.
"""

from __future__ import annotations

import asyncio

from starlette.concurrency import run_in_threadpool

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
