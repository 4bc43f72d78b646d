"""Mark confirmed jobs as published in batches, off the request path.

The mark only tells the outbox relay "this job's message is in the broker"; until it lands the relay waits
its grace period anyway, and a worker's claim sets it too. So one write per batch, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.concurrency import run_in_threadpool

from kvern.errors import StoreUnavailable
from kvern.jobs.base import JobStoreProtocol

log = logging.getLogger("kvern.api")

FLUSH_INTERVAL_S = 0.05
MAX_BATCH = 500


class PublishedMarker:
    def __init__(self, store: JobStoreProtocol) -> None:
        self.store = store
        self.pending: list[str] = []
        self.task: asyncio.Task[None] | None = None

    def add(self, job_id: str) -> None:
        self.pending.append(job_id)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        await self.flush()

    async def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            try:
                await run_in_threadpool(self.store.mark_published, batch)
            except StoreUnavailable as exc:  # the relay's grace period and the worker's claim cover it
                log.warning("could not mark %d jobs published: %s", len(batch), exc)

    async def settled(self) -> None:
        """Return once every job added so far is marked (or its batch failed)."""
        while self.task is not None and not self.task.done():
            await asyncio.shield(self.task)
        await self.flush()

    async def close(self) -> None:
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.flush()
