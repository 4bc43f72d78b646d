"""`job_marks`: a compact mark of many jobs' visible state in one read, for the heads' shared event poller.

Not part of `JobStore` (like scaling_events.py): only the job API's event streams read it. One query per poll,
however many streams a head serves, and only the few columns that change what a stream shows.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from sqlalchemy import Engine, select

from kvern.jobs import schema
from kvern.jobs.records import Job
from kvern.jobs.store import read

MAX_IDS_PER_QUERY = 500  # bound the IN list (SQLite's variable limit, PostgreSQL's plan size)


def mark(status: str, progress: int, message: str | None, attempts: int) -> str:
    """What identifies what a follower has seen: it changes when status, progress, its message or the attempt do."""
    return f"{attempts}.{status}.{progress}.{zlib.crc32((message or '').encode()):08x}"


def job_mark(job: Job) -> str:
    return mark(job.status.value, job.progress, job.progress_message, job.attempts)


def job_marks(engine: Engine, job_ids: Sequence[str]) -> dict[str, str]:
    """The mark of each job that exists among `job_ids`; a missing (erased) job is left out."""
    jobs = schema.jobs
    columns = (jobs.c.id, jobs.c.status, jobs.c.progress, jobs.c.progress_message, jobs.c.attempts)
    marks: dict[str, str] = {}
    with read(engine) as conn:
        for start in range(0, len(job_ids), MAX_IDS_PER_QUERY):
            chunk = list(job_ids[start : start + MAX_IDS_PER_QUERY])
            for row in conn.execute(select(*columns).where(jobs.c.id.in_(chunk))):
                marks[row.id] = mark(row.status, row.progress, row.progress_message, row.attempts)
    return marks
