"""The site's view of a report: a kvern job of ``tasks.generate_heavy_report``, read through its JobHandle.

The pages, the JSON status and the PDF download all read a job through here, so they agree on what each
state means to a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks import ARTIFACT_NAME

import kvern
from kvern.api.watch_grants import events_url
from kvern.enqueue.process import loaded
from kvern.errors import JobNotFound, RuntimeStateError

#: What a person reads for each job state.
STATUS_TEXT = {
    "queued": "Waiting for a free worker…",
    "running": "Building the report…",
    "succeeded": "Your report is ready.",
    "failed": "The report could not be made.",
    "dead": "The report could not be made.",
    "cancelled": "The report was cancelled.",
}
UNSUCCESSFUL = frozenset({"failed", "dead", "cancelled"})


@dataclass(frozen=True)
class Report:
    job_id: str
    status: str
    progress: int
    message: str
    user_id: int | None
    has_pdf: bool

    @property
    def done(self) -> bool:
        return self.status == "succeeded" or self.failed

    @property
    def failed(self) -> bool:
        return self.status in UNSUCCESSFUL

    @property
    def ready(self) -> bool:
        return self.status == "succeeded" and self.has_pdf

    @property
    def status_text(self) -> str:
        return STATUS_TEXT.get(self.status, self.status)


def report_of(job: dict[str, Any]) -> Report:
    """The report of a job as kvern shows it (the job API's shape)."""
    args = job.get("args") or []
    status = str(job["status"])
    return Report(
        job_id=str(job["id"]),
        status=status,
        progress=100 if status == "succeeded" else int(job.get("progress") or 0),
        message=str(job.get("progress_message") or ""),
        user_id=args[0] if args and isinstance(args[0], int) else None,
        has_pdf=any(artifact.get("name") == ARTIFACT_NAME for artifact in job.get("artifacts") or []),
    )


def find_report(job_id: str) -> Report | None:
    """The report, or None when kvern knows no such job."""
    try:
        return report_of(kvern.job(job_id).view())
    except JobNotFound:
        return None


def read_pdf(job_id: str) -> bytes | None:
    """The PDF of a finished report, or None when there is none (yet)."""
    try:
        _, pdf = kvern.job(job_id).artifact(ARTIFACT_NAME)
    except (JobNotFound, KeyError):
        return None
    return pdf


def report_events_url(job_id: str) -> str | None:
    """Where the page follows the job as it changes (Server-Sent Events from kvern's job API, with a grant for
    this one job, so the page needs no API key); None outside a kvern instance: the page then polls."""
    try:
        instance = loaded()
    except RuntimeStateError:
        return None
    return events_url(job_id, instance.config, instance.spec.web.api_prefix)
