"""Group commit of submissions (kvern.api.batching) and the store's batch insert behind it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from kvern.api.batching import JobInserter
from kvern.errors import StoreUnavailable
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.records import Job, NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore


def new_job(key: str | None = None) -> NewJob:
    return NewJob(str(uuid.uuid4()), "tasks.add", "default", [1, 2], {"x": 1}, 3, idempotency_key=key)


class CountingStore(MemoryJobStore):
    """An in-memory job store that records the size of every batch written."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def create_jobs(self, news: Sequence[NewJob]) -> list[Job]:
        self.batches.append(len(news))
        return super().create_jobs(news)


def test_create_jobs_records_every_job_in_one_call(sqlite_store: JobStore) -> None:
    news = [new_job() for _ in range(5)]
    jobs = sqlite_store.create_jobs(news)
    assert [job.id for job in jobs] == [new.id for new in news]
    for job in jobs:
        stored = sqlite_store.get(job.id)
        assert stored is not None
        assert stored.status is JobStatus.QUEUED
        assert (stored.args, stored.kwargs, stored.max_attempts) == ([1, 2], {"x": 1}, 3)


def test_create_jobs_refuses_idempotency_keys(sqlite_store: JobStore) -> None:
    with pytest.raises(ValueError, match="idempotency"):
        sqlite_store.create_jobs([new_job(key="k1")])


def test_concurrent_submissions_share_commits() -> None:
    counting = CountingStore()
    inserter = JobInserter(counting)

    async def submit_all() -> list[Job]:
        return await asyncio.gather(*(inserter.create(new_job()) for _ in range(40)))

    jobs = asyncio.run(submit_all())
    assert len({job.id for job in jobs}) == 40
    assert sum(counting.batches) == 40
    assert len(counting.batches) < 40  # the ones that arrived during a write went together in the next
    assert all(counting.get(job.id) is not None for job in jobs)


def test_a_lone_submission_is_written_at_once() -> None:
    counting = CountingStore()
    inserter = JobInserter(counting)
    job = asyncio.run(inserter.create(new_job()))
    assert counting.batches == [1]
    assert counting.get(job.id) is not None


def test_a_store_failure_reaches_every_request_of_the_batch_and_the_next_batch_still_runs() -> None:
    calls = {"n": 0}

    class FlakyStore(CountingStore):
        def create_jobs(self, news: Sequence[NewJob]) -> list[Job]:
            calls["n"] += 1
            if calls["n"] == 1:
                raise StoreUnavailable("job store unavailable: disk I/O error")
            return super().create_jobs(news)

    flaky = FlakyStore()
    inserter = JobInserter(flaky)

    async def scenario() -> tuple[list[Job | BaseException], Job]:
        first = await asyncio.gather(*(inserter.create(new_job()) for _ in range(3)), return_exceptions=True)
        return first, await inserter.create(new_job())

    first, later = asyncio.run(scenario())
    assert any(isinstance(result, StoreUnavailable) for result in first)
    assert flaky.get(later.id) is not None
