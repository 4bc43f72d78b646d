"""The web heads' side of the submission core (enqueue/core.py): the group-committed insert, the aio-pika
publisher awaited per message, and the published marks written in batches off the request path."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from kvern.api.batching import JobInserter
from kvern.api.published import PublishedMarker
from kvern.broker.message import JobPublisherProtocol
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import Job, NewJob


@dataclass(frozen=True)
class HeadPorts:
    """An AsyncPorts over one web head's store, publisher, inserter and marker."""

    store: JobStoreProtocol
    publisher: JobPublisherProtocol
    inserter: JobInserter
    marker: PublishedMarker

    async def record(self, new: NewJob) -> tuple[Job, bool]:
        if new.idempotency_key is None:
            return await self.inserter.create(new), True  # group commit with the submissions arriving meanwhile
        return await run_in_threadpool(self.store.create_job, new)

    async def publish(self, job: Job) -> None:
        await self.publisher.publish(job)

    async def withdraw(self, job_id: str) -> bool:
        return await run_in_threadpool(self.store.withdraw, job_id)

    async def mark_published(self, job_id: str) -> None:
        self.marker.add(job_id)
