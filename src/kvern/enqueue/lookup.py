"""`kvern.job(job_id)`: the handle of a job accepted earlier, e.g. by the request whose redirect led to the page
that now follows it. Reads go to the instance's job store, as a handle from `kvern.submit` does."""

from __future__ import annotations

from kvern.enqueue.handle import JobHandle
from kvern.enqueue.process import current_submitter
from kvern.errors import JobNotFound
from kvern.jobs.base import JobStoreProtocol


def job(job_id: str) -> JobHandle:
    """The handle of job `job_id` of the instance that started this process. Raises JobNotFound when the store
    has no such job (never accepted, erased or purged), StoreUnavailable when the store cannot be reached."""
    return handle_in(current_submitter().store, job_id)


def handle_in(store: JobStoreProtocol, job_id: str) -> JobHandle:
    """The handle of a job that `store` holds; JobNotFound when it holds none of that id."""
    if store.get(job_id) is None:
        raise JobNotFound(f"no job {job_id!r}")
    return JobHandle(job_id, store)
