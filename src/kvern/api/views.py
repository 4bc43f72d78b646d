"""JSON shapes of the job API: one function per resource, shared by every route and by the OpenAPI models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from kvern.constants import API_PREFIX
from kvern.jobs.records import Job


class ArtifactView(BaseModel):
    name: str
    url: str
    content_type: str
    size: int


class JobView(BaseModel):
    id: str
    task: str
    status: str
    progress: int
    progress_message: str | None
    attempts: int
    max_attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any
    error: str | None
    artifacts: list[ArtifactView]
    url: str


class JobPage(BaseModel):
    jobs: list[JobView]
    next: str | None


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorView(BaseModel):
    error: ErrorBody


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def job_url(job_id: str) -> str:
    return f"{API_PREFIX}/jobs/{job_id}"


def job_view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        task=job.task,
        status=job.status.value,
        progress=job.progress,
        progress_message=job.progress_message,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        created_at=iso(job.created_at) or "",
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
        args=job.args,
        kwargs=job.kwargs,
        result=job.result,
        error=job.error,
        artifacts=[
            ArtifactView(
                name=a.name,
                url=f"{job_url(job.id)}/artifacts/{quote(a.name)}",
                content_type=a.content_type,
                size=a.size,
            )
            for a in job.artifacts
        ],
        url=job_url(job.id),
    )


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
