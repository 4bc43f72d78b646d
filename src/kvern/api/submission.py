"""Turn a raw `POST /api/v1/jobs` body into a validated submission, or a precise client error.

Validation happens before anything is recorded or published: a rejected request leaves no trace.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from kvern.catalog import BindingError, TaskCatalog, check_binding
from kvern.constants import MAX_SUBJECT_CHARS, SUBJECT_PATTERN
from kvern.spec import LimitsSpec

SUBJECT = re.compile(SUBJECT_PATTERN)


@dataclass(frozen=True)
class Submission:
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    request_hash: str
    subject: str | None = None


class SubmissionError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def parse_submission(body: bytes, catalog: TaskCatalog, limits: LimitsSpec | None = None) -> Submission:
    payload = _parse_json(body)
    task_name = payload.get("task")
    if not isinstance(task_name, str) or not task_name:
        raise SubmissionError(400, "invalid_request", "field 'task' must be a non-empty string")
    args = payload.get("args", [])
    kwargs = payload.get("kwargs", {})
    if not isinstance(args, list):
        raise SubmissionError(400, "invalid_request", "field 'args' must be a JSON array")
    if not isinstance(kwargs, dict):
        raise SubmissionError(400, "invalid_request", "field 'kwargs' must be a JSON object")
    subject = _parse_subject(payload["subject"]) if "subject" in payload else None
    unknown = set(payload) - {"task", "args", "kwargs", "subject"}
    if unknown:
        raise SubmissionError(400, "invalid_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    _check_limits(args, kwargs, limits or LimitsSpec())
    task = catalog.resolve(task_name)
    if task is None:
        known = ", ".join(catalog.names())
        raise SubmissionError(404, "unknown_task", f"no task named {task_name!r} (known: {known})")
    try:
        check_binding(task, args, kwargs)
    except BindingError as exc:
        raise SubmissionError(422, "bad_arguments", str(exc)) from None
    hashed = {"task": task.name, "args": args, "kwargs": kwargs}
    if subject is not None:  # only when given: a request without one keeps the hash it always had
        hashed["subject"] = subject
    canonical = json.dumps(hashed, sort_keys=True)
    return Submission(task.name, args, kwargs, hashlib.sha256(canonical.encode()).hexdigest(), subject)


def _parse_subject(subject: Any) -> str:
    if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_SUBJECT_CHARS or not SUBJECT.match(subject):
        raise SubmissionError(
            400,
            "invalid_subject",
            f"field 'subject' must be 1 to {MAX_SUBJECT_CHARS} characters without control characters",
        )
    return subject


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise SubmissionError(400, "malformed_json", "request body is nested too deep to parse") from None
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: also an integer past Python's digit limit
        raise SubmissionError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise SubmissionError(400, "invalid_request", "request body must be a JSON object")
    return payload


def _check_limits(args: list[Any], kwargs: dict[str, Any], limits: LimitsSpec) -> None:
    """Depth and element count first, walking without recursion; the size only once it is safe to encode."""
    pending: list[tuple[Any, int]] = [(args, 1), (kwargs, 1)]
    items = 0
    while pending:
        value, depth = pending.pop()
        children = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limits.args_depth:
            raise SubmissionError(
                400, "args_too_deep", f"args/kwargs nest deeper than {limits.args_depth} (limits.args_depth)"
            )
        items += len(children)
        if items > limits.args_items:
            raise SubmissionError(
                400, "args_too_many_items", f"args/kwargs hold over {limits.args_items} elements (limits.args_items)"
            )
        pending.extend((child, depth + 1) for child in children)
    try:
        size = len(json.dumps([args, kwargs], separators=(",", ":"), ensure_ascii=False).encode())
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON but no text a task or store can hold
        raise SubmissionError(
            400, "malformed_json", "args/kwargs hold a lone UTF-16 surrogate (\\ud800-\\udfff)"
        ) from None
    if size > limits.args_bytes:
        raise SubmissionError(
            400,
            "args_too_large",
            f"args/kwargs are {size} bytes as JSON; at most {limits.args_bytes} (limits.args_bytes)",
        )


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); Python accepts them, and the task would get a NaN.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value
