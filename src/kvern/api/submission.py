"""Turn a raw `POST /api/v1/jobs` body into a validated submission, or a precise client error.

The body's shape (JSON, its fields) is checked here; what a submission may hold is checked by
enqueue/validation.py, shared with `kvern.submit`. Validation happens before anything is recorded or
published: a rejected request leaves no trace.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from kvern.catalog import TaskCatalog
from kvern.enqueue.submitter import check_idempotency_key
from kvern.enqueue.validation import Submission, parse_notify, parse_subject, validate
from kvern.errors import SubmitError
from kvern.spec import LimitsSpec, NotifySpec

__all__ = ["BatchItem", "Submission", "SubmissionError", "parse_batch", "parse_submission"]

SubmissionError = SubmitError  # the name the API's code and tests have always used


FIELDS = frozenset({"task", "args", "kwargs", "subject", "notify"})
BATCH_ITEM_FIELDS = FIELDS | {"idempotency_key"}


@dataclass(frozen=True)
class BatchItem:
    """One job of a bulk submit: its validated submission and idempotency key, or why it was refused."""

    submission: Submission | None
    idempotency_key: str | None = None
    error: SubmitError | None = None


def parse_submission(
    body: bytes, catalog: TaskCatalog, limits: LimitsSpec | None = None, notify: NotifySpec | None = None
) -> Submission:
    return _submission(_parse_json(body), catalog, limits or LimitsSpec(), FIELDS, notify or NotifySpec())


def parse_batch(
    body: bytes, catalog: TaskCatalog, limits: LimitsSpec, notify: NotifySpec | None = None
) -> list[BatchItem]:
    """A bulk submit's body, `{"jobs": [...]}`: each job as a single submit's body, plus an optional
    `idempotency_key`. A body that is not such an object, empty, or over `limits.batch_jobs` jobs is refused as a
    whole (SubmitError); a job that is not valid is refused alone (its BatchItem's error), the others go on. A
    key used twice in one batch is refused from its second use on (one request, one job per key)."""
    payload = _parse_json(body)
    jobs = payload.get("jobs")
    if set(payload) != {"jobs"} or not isinstance(jobs, list):
        raise SubmitError(400, "invalid_request", "request body must be an object with one field, 'jobs' (an array)")
    if not 1 <= len(jobs) <= limits.batch_jobs:
        raise SubmitError(
            400,
            "invalid_batch_size",
            f"a batch holds 1 to {limits.batch_jobs} jobs (limits.batch_jobs), not {len(jobs)}",
        )
    seen: set[str] = set()
    items = []
    for job in jobs:
        item = _batch_item(job, catalog, limits, notify or NotifySpec())
        if item.idempotency_key is not None and item.error is None:
            if item.idempotency_key in seen:
                item = BatchItem(None, error=SubmitError(400, "duplicate_idempotency_key", DUPLICATE_KEY))
            seen.add(item.idempotency_key or "")
        items.append(item)
    return items


DUPLICATE_KEY = "this idempotency_key is used by an earlier job of the same batch"


def _batch_item(job: Any, catalog: TaskCatalog, limits: LimitsSpec, notify: NotifySpec) -> BatchItem:
    try:
        if not isinstance(job, dict):
            raise SubmitError(400, "invalid_request", "each job must be a JSON object")
        key = job.get("idempotency_key")
        if key is not None:
            check_idempotency_key(key)
        return BatchItem(_submission(job, catalog, limits, BATCH_ITEM_FIELDS, notify), key)
    except SubmitError as exc:
        return BatchItem(None, error=exc)


def _submission(
    payload: dict[str, Any], catalog: TaskCatalog, limits: LimitsSpec, known: frozenset[str], notify: NotifySpec
) -> Submission:
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
    unknown = set(payload) - known
    if unknown:
        raise SubmitError(400, "invalid_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    submission = validate(task_name, args, kwargs, subject, catalog, limits)
    if "notify" in payload:  # README "Notifications"
        submission = replace(submission, notify=parse_notify(payload["notify"], notify))
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
