"""What the dashboard reads from the job store: the last hour's activity, and jobs found by status, task, time
and id prefix.

Not part of `JobStore` (like scaling_events.py): only the dashboard reads these. One query each, over the
store's indexed columns; the hour's activity reads five small columns of the jobs created or finished in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, or_, select

from kvern.jobs import schema
from kvern.jobs.records import Job
from kvern.jobs.states import JobStatus
from kvern.jobs.store import read


@dataclass(frozen=True)
class JobTimes:
    task: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None


def recent_job_times(engine: Engine, since: float) -> list[JobTimes]:
    """Every job created, started or finished at or after `since` (epoch seconds)."""
    jobs = schema.jobs
    query = select(jobs.c.task, jobs.c.status, jobs.c.created_at, jobs.c.started_at, jobs.c.finished_at).where(
        or_(jobs.c.created_at >= since, jobs.c.started_at >= since, jobs.c.finished_at >= since)
    )
    with read(engine) as conn:
        return [JobTimes(r.task, r.status, r.created_at, r.started_at, r.finished_at) for r in conn.execute(query)]


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    task: str | None = None
    id_prefix: str | None = None
    created_after: float | None = None
    created_before: float | None = None  # also the cursor of the next page: the last job's created_at


def find_jobs(engine: Engine, where: JobFilter, limit: int) -> list[Job]:
    """Newest first; artifacts are not read (a listing does not show them)."""
    jobs = schema.jobs
    query = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
    if where.status is not None:
        query = query.where(jobs.c.status == where.status.value)
    if where.task:
        query = query.where(jobs.c.task == where.task)
    if where.id_prefix:
        query = query.where(jobs.c.id.startswith(where.id_prefix, autoescape=True))
    if where.created_after is not None:
        query = query.where(jobs.c.created_at >= where.created_after)
    if where.created_before is not None:
        query = query.where(jobs.c.created_at < where.created_before)
    with read(engine) as conn:
        return [Job.from_row(row) for row in conn.execute(query)]
