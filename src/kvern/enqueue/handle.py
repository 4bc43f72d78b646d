"""`JobHandle`: what `kvern.submit` and an intercepted `.delay()` return — the job's id and status URL, and
reads of its state, result and artifacts from the job store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kvern.errors import JobFailed, JobNotFound
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import Job
from kvern.jobs.states import TERMINAL, JobStatus
from kvern.jobs.views import job_body, job_url

FIRST_POLL_S = 0.05
MAX_POLL_S = 0.5  # `result()` asks the store this often at most while it waits


class JobHandle:
    """One accepted job. `id` is the kvern job id (as in the job API); reads go to the job store each time."""

    def __init__(self, job_id: str, store: JobStoreProtocol) -> None:
        self.id = job_id
        self.url = job_url(job_id)  # the status URL the job API answers under (GET it, or poll it from a page)
        self._store = store

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def job(self) -> Job:
        job = self._store.get(self.id)
        if job is None:
            raise JobNotFound(f"job {self.id} is gone (erased, or purged after it finished)")
        return job

    def view(self) -> dict[str, Any]:
        """The job as `GET /api/v1/jobs/{id}` answers it."""
        return job_body(self.job())

    refresh = view

    def status(self) -> str:
        """queued, running, succeeded, failed, dead or cancelled."""
        return self.job().status.value

    def ready(self) -> bool:
        """True once the job has ended (any terminal state)."""
        return self.job().status in TERMINAL

    @property
    def progress(self) -> int:
        """Percent done, as the task last reported it."""
        return self.job().progress

    def result(self, timeout: float | None = None) -> Any:
        """Wait until the job ends and return its result. Raises JobFailed when it ended failed, dead or
        cancelled, TimeoutError when it has not ended after `timeout` seconds (None: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FIRST_POLL_S
        while (job := self.job()).status not in TERMINAL:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"job {self.id} is still {job.status.value} after {timeout}s")
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, MAX_POLL_S)
        if job.status is not JobStatus.SUCCEEDED:
            raise JobFailed(job.id, job.status.value, job.error)
        return job.result

    async def aresult(self, timeout: float | None = None) -> Any:
        """As `result`, for async code: the waiting happens in a thread, the event loop goes on."""
        return await asyncio.to_thread(self.result, timeout)

    get = result  # as Celery's AsyncResult.get, so code written for `.delay().get()` keeps working

    def artifacts(self) -> list[str]:
        """The names of the files the job saved (those of the attempt whose outcome was recorded)."""
        return [artifact.name for artifact in self.job().artifacts]

    def artifact(self, name: str) -> tuple[str, bytes]:
        """(content type, data) of one artifact; KeyError when the job has none of that name."""
        found = self._store.artifact(self.id, name)
        if found is None:
            raise KeyError(f"job {self.id} has no artifact {name!r}")
        return found

    def artifact_url(self, name: str) -> str:
        """The job API's URL path of one artifact (as `view()["artifacts"]` lists it)."""
        for artifact in self.view()["artifacts"]:
            if artifact["name"] == name:
                url: str = artifact["url"]
                return url
        raise KeyError(f"job {self.id} has no artifact {name!r}")
