"""JSON shapes of the job API: one function per resource, shared by every route and by the OpenAPI models."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from kvern.constants import API_PREFIX
from kvern.jobs.records import Attempt, Job

log = logging.getLogger("kvern.api")

# Stored values a job shows as given, and what stands in for one that cannot be rendered.
STORED_VALUES: dict[str, Any] = {"args": [], "kwargs": {}, "result": None}


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
    render_error: str | None = None  # set when a stored value could not be rendered and is shown empty


class JobPage(BaseModel):
    jobs: list[JobView]
    next: str | None


class DeadJobView(JobView):
    history: list[dict[str, Any]]  # one entry per attempt: every field of the attempt, times in ISO 8601


class HealthView(BaseModel):
    broker: bool
    store: bool


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


def job_body(job: Job) -> dict[str, Any]:
    """The job as JSON-ready data. Never raises for what is stored: a value that cannot be rendered (nested too
    deep, NaN, ...) is shown empty with `render_error` set, and logged, so one bad row never fails a listing."""
    try:
        return _sendable(job_view(job).model_dump(mode="json"))
    except Exception as exc:
        log.warning("job %s cannot be rendered as stored (%s: %s)", job.id, type(exc).__name__, exc)
    unrenderable = [name for name in STORED_VALUES if not _renderable(getattr(job, name))] or list(STORED_VALUES)
    shown = replace(job, **{name: STORED_VALUES[name] for name in unrenderable})
    view = job_view(shown).model_copy(update={"render_error": f"{', '.join(unrenderable)} could not be rendered"})
    return _sendable(view.model_dump(mode="json"))


def _sendable(body: dict[str, Any]) -> dict[str, Any]:
    # The responses are encoded with allow_nan=False: find out here, where a placeholder can still be shown.
    json.dumps(body, allow_nan=False)
    return body


def _renderable(value: Any) -> bool:
    try:
        json.dumps(to_jsonable_python(value), allow_nan=False)
    except Exception:
        return False
    return True


def attempt_view(attempt: Attempt) -> dict[str, Any]:
    """Every field of an attempt, its times (`*_at`) in ISO 8601 like a job's."""
    view: dict[str, Any] = {}
    for spec in fields(attempt):
        value = getattr(attempt, spec.name)
        is_time = spec.name.endswith("_at") and isinstance(value, int | float)
        view[spec.name] = iso(value) if is_time else value
    return view


def history_view(attempts: Iterable[Attempt]) -> list[dict[str, Any]]:
    return [attempt_view(attempt) for attempt in attempts]
