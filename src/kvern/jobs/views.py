"""Jobs and attempts as JSON-ready data: what the job API answers and what `kvern dlq show` prints.

Plain functions over the job records, so the API (and its OpenAPI models) and the CLI share one rendering.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic_core import to_jsonable_python

from kvern.constants import API_PREFIX, SERVED_API_PREFIX
from kvern.jobs.records import Attempt, Job

log = logging.getLogger("kvern.api")

# Stored values a job shows as given, and what stands in for one that cannot be rendered.
STORED_VALUES: dict[str, Any] = {"args": [], "kwargs": {}, "result": None}


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


# The public prefix of the request being answered: the links the API hands out (a job's `url`, `Location`,
# the next page) are the paths a browser or client uses at the front door. Set per request by the API head.
public_api_prefix: ContextVar[str] = ContextVar("public_api_prefix", default=SERVED_API_PREFIX)


def public_path(path: str) -> str:
    """A path the API heads serve (under /api/), as the front door's clients reach it (under web.api_prefix)."""
    return public_api_prefix.get() + path.removeprefix(SERVED_API_PREFIX)


def job_url(job_id: str) -> str:
    return public_path(f"{API_PREFIX}/jobs/{job_id}")


def job_fields(job: Job) -> dict[str, Any]:
    """The job's fields in the API's shape (the order of the OpenAPI model `JobView`)."""
    return {
        "id": job.id,
        "task": job.task,
        "status": job.status.value,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": iso(job.created_at) or "",
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "error": job.error,
        "artifacts": [
            {
                "name": a.name,
                "url": f"{job_url(job.id)}/artifacts/{quote(a.name)}",
                "content_type": a.content_type,
                "size": a.size,
            }
            for a in job.artifacts
        ],
        "url": job_url(job.id),
        "render_error": None,
        "cancel_requested": iso(job.cancel_requested),
        "subject": job.subject,
        "args": job.args,
        "kwargs": job.kwargs,
        "result": job.result,
    }


def job_body(job: Job) -> dict[str, Any]:
    """The job as JSON-ready data. Never raises for what is stored: a value that cannot be rendered (nested too
    deep, NaN, ...) is shown empty with `render_error` set, and logged, so one bad row never fails a listing."""
    try:
        return _sendable(_jsonable(job_fields(job)))
    except Exception as exc:
        log.warning("job %s cannot be rendered as stored (%s: %s)", job.id, type(exc).__name__, exc)
    unrenderable = [name for name in STORED_VALUES if not _renderable(getattr(job, name))] or list(STORED_VALUES)
    shown = replace(job, **{name: STORED_VALUES[name] for name in unrenderable})
    body = job_fields(shown) | {"render_error": f"{', '.join(unrenderable)} could not be rendered"}
    return _sendable(_jsonable(body))


def job_summary(job: Job) -> dict[str, Any]:
    """The job as a listing shows it: without args, kwargs and result, which may be large or personal (the
    job's own GET has them). `render_error` still tells when those cannot be shown."""
    body = job_body(job)
    for name in STORED_VALUES:
        del body[name]
    return body


def _jsonable(body: dict[str, Any]) -> dict[str, Any]:
    # As the API's response models dumped it: a NaN or infinite float becomes null.
    jsonable: dict[str, Any] = to_jsonable_python(body, inf_nan_mode="null")
    return jsonable


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
