"""Turn a raw `POST /api/v1/jobs` body into a validated submission, or a precise client error.

The body's shape (JSON, its fields) is checked here; what a submission may hold is checked by
enqueue/validation.py, shared with `kvern.submit`. Validation happens before anything is recorded or
published: a rejected request leaves no trace.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

from kvern.catalog import TaskCatalog
from kvern.enqueue.validation import Submission, parse_notify, parse_subject, validate
from kvern.errors import SubmitError
from kvern.spec import LimitsSpec, NotifySpec

__all__ = ["Submission", "SubmissionError", "parse_submission"]

SubmissionError = SubmitError  # the name the API's code and tests have always used


def parse_submission(
    body: bytes, catalog: TaskCatalog, limits: LimitsSpec | None = None, notify: NotifySpec | None = None
) -> Submission:
    payload = _parse_json(body)
    task_name = payload.get("task")
    if not isinstance(task_name, str) or not task_name:
        raise SubmitError(400, "invalid_request", "field 'task' must be a non-empty string")
    args = payload.get("args", [])
    kwargs = payload.get("kwargs", {})
    if not isinstance(args, list):
        raise SubmitError(400, "invalid_request", "field 'args' must be a JSON array")
    if not isinstance(kwargs, dict):
        raise SubmitError(400, "invalid_request", "field 'kwargs' must be a JSON object")
    subject = parse_subject(payload["subject"]) if "subject" in payload else None
    unknown = set(payload) - {"task", "args", "kwargs", "subject", "notify"}
    if unknown:
        raise SubmitError(400, "invalid_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    submission = validate(task_name, args, kwargs, subject, catalog, limits or LimitsSpec())
    if "notify" in payload:  # README "Notifications"
        submission = replace(submission, notify=parse_notify(payload["notify"], notify or NotifySpec()))
    return submission


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise SubmitError(400, "malformed_json", "request body is nested too deep to parse") from None
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: also an integer past Python's digit limit
        raise SubmitError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise SubmitError(400, "invalid_request", "request body must be a JSON object")
    return payload


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); Python accepts them, and the task would get a NaN.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value
