"""Read what kvern recorded (read-only queries on the instance's job store) and submit jobs over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from bench.httpclient import Connection, Result, post_json
from kvern.jobs import schema
from kvern.jobs.store import JobStore

JOBS_PATH = "/api/v1/jobs"


@dataclass(frozen=True)
class JobTimes:
    id: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None


def job_body(
    task: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A job submission; `headers`: the instance's API key (`RunningInstance.auth_headers`)."""
    return post_json(JOBS_PATH, {"task": task, "args": list(args), "kwargs": kwargs or {}}, headers)


def count_succeeded(store: JobStore, since: float, until: float) -> int:
    """Jobs created at or after `since` whose success was recorded by `until`."""
    jobs = schema.jobs
    query = select(func.count()).where(
        jobs.c.status == "succeeded", jobs.c.created_at >= since, jobs.c.finished_at <= until
    )
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def outcome_summary(store: JobStore, since: float) -> tuple[int, float | None]:
    """(jobs created since `since` with a recorded outcome, the last finished_at among them)."""
    jobs = schema.jobs
    query = select(func.count(), func.max(jobs.c.finished_at)).where(
        jobs.c.created_at >= since, jobs.c.finished_at.is_not(None)
    )
    with store.engine.connect() as conn:
        count, last = conn.execute(query).one()
    return int(count or 0), (float(last) if last is not None else None)


def job_times(store: JobStore, ids: Sequence[str]) -> list[JobTimes]:
    jobs = schema.jobs
    query = select(jobs.c.id, jobs.c.status, jobs.c.created_at, jobs.c.started_at, jobs.c.finished_at).where(
        jobs.c.id.in_(list(ids))
    )
    with store.engine.connect() as conn:
        return [JobTimes(*row) for row in conn.execute(query)]


def first_attempt_workers(store: JobStore, ids: Sequence[str]) -> dict[str, tuple[str, float]]:
    """job id -> (worker node, started_at) of its first attempt (the attempts history)."""
    at = schema.attempts
    query = select(at.c.job_id, at.c.worker, at.c.started_at).where(at.c.job_id.in_(list(ids)), at.c.attempt == 1)
    with store.engine.connect() as conn:
        return {row.job_id: (row.worker, row.started_at) for row in conn.execute(query)}


async def submit_many(port: int, raw: bytes, count: int, connections: int, timeout: float) -> list[Result]:
    """Send `count` copies of one request over `connections` keep-alive connections, as fast as they answer."""
    results: list[Result] = []
    remaining = iter(range(count))

    async def worker() -> None:
        connection = Connection(port)
        try:
            for _ in remaining:
                results.append(await connection.request(raw, timeout))
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return results
