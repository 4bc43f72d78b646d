"""Validate a submission — task, args, kwargs, subject — before anything is recorded or published.

The job API (from a JSON body, api/submission.py) and `kvern.submit` / `.delay()` (from Python values) both end
here, so a request is refused the same way, with the same status and code, whichever way it came in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from celery import Task

from kvern.catalog import BindingError, TaskCatalog, check_binding
from kvern.constants import MAX_SUBJECT_CHARS, SUBJECT_PATTERN
from kvern.errors import SpecError, SubmitError
from kvern.spec import WEBHOOK, LimitsSpec, NotifySpec, check_targets_configured, parse_target, parse_targets

SUBJECT = re.compile(SUBJECT_PATTERN)


@dataclass(frozen=True)
class Submission:
    task: str  # the task's full name
    args: list[Any]
    kwargs: dict[str, Any]
    request_hash: str  # what an idempotency key is checked against
    subject: str | None = None
    notify: tuple[str, ...] = ()  # the submission's own notification targets (README "Notifications")


def validate(
    task_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    subject: str | None,
    catalog: TaskCatalog,
    limits: LimitsSpec,
) -> Submission:
    """The submission, or SubmitError: subject, [limits], the task's name, then its signature."""
    if subject is not None:
        subject = parse_subject(subject)
    check_limits(args, kwargs, limits)
    task = catalog.resolve(task_name)
    if task is None:
        known = ", ".join(catalog.names())
        raise SubmitError(404, "unknown_task", f"no task named {task_name!r} (known: {known})")
    problem = binding_problem(task, len(args), tuple(kwargs))
    if problem is not None:
        raise SubmitError(422, "bad_arguments", problem)
    return Submission(task.name, args, kwargs, request_hash(task.name, args, kwargs, subject), subject)


@functools.lru_cache(maxsize=4096)
def binding_problem(task: Task, positional: int, keywords: tuple[str, ...]) -> str | None:
    """Why `task(*args, **kwargs)` would fail on its signature alone, or None. Binding looks at how many
    positional arguments there are and at the keywords' names, never at the values: one check per shape, not per
    job (a bulk submit of 500 alike jobs binds once)."""
    try:
        check_binding(task, [None] * positional, dict.fromkeys(keywords))
    except BindingError as exc:
        return str(exc)
    return None


def validate_call(
    task: Task | str,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    subject: str | None,
    catalog: TaskCatalog,
    limits: LimitsSpec,
) -> Submission:
    """As `validate`, from a Python call: the values become what a worker will decode (JSON), or are refused."""
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(name, str) or not name:
        raise SubmitError(400, "invalid_request", f"task must be a task of the app or its name, not {task!r}")
    if not isinstance(task, str) and catalog.tasks.get(name) is None:
        raise SubmitError(404, "unknown_task", f"task {name!r} is not a task of the instance's app")
    json_args, json_kwargs = as_json(list(args), kwargs)
    return validate(name, json_args, json_kwargs, subject, catalog, limits)


def as_json(args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The arguments as the worker will see them after the JSON message (tuples as lists, ...)."""
    try:
        text = json.dumps([args, kwargs], allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SubmitError(400, "invalid_request", f"args/kwargs must be plain JSON values: {exc}") from None
    decoded: list[Any] = json.loads(text)
    return decoded[0], decoded[1]


def request_hash(task: str, args: list[Any], kwargs: dict[str, Any], subject: str | None) -> str:
    hashed: dict[str, Any] = {"task": task, "args": args, "kwargs": kwargs}
    if subject is not None:  # only when given: a request without one keeps the hash it always had
        hashed["subject"] = subject
    canonical = json.dumps(hashed, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_subject(subject: Any) -> str:
    if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_SUBJECT_CHARS or not SUBJECT.match(subject):
        raise SubmitError(
            400,
            "invalid_subject",
            f"field 'subject' must be 1 to {MAX_SUBJECT_CHARS} characters without control characters",
        )
    return subject


def check_limits(args: list[Any], kwargs: dict[str, Any], limits: LimitsSpec) -> None:
    """Depth and element count first, walking without recursion; the size only once it is safe to encode."""
    pending: list[tuple[Any, int]] = [(args, 1), (kwargs, 1)]
    items = 0
    while pending:
        value, depth = pending.pop()
        children = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limits.args_depth:
            raise SubmitError(
                400, "args_too_deep", f"args/kwargs nest deeper than {limits.args_depth} (limits.args_depth)"
            )
        items += len(children)
        if items > limits.args_items:
            raise SubmitError(
                400, "args_too_many_items", f"args/kwargs hold over {limits.args_items} elements (limits.args_items)"
            )
        pending.extend((child, depth + 1) for child in children)
    try:
        size = len(json.dumps([args, kwargs], separators=(",", ":"), ensure_ascii=False).encode())
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON but no text a task or store can hold
        raise SubmitError(400, "malformed_json", "args/kwargs hold a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    if size > limits.args_bytes:
        raise SubmitError(
            400,
            "args_too_large",
            f"args/kwargs are {size} bytes as JSON; at most {limits.args_bytes} (limits.args_bytes)",
        )


# -- notification targets of one submission (README "Notifications") ------------------------------------------


def parse_notify(value: Any, notify: NotifySpec) -> tuple[str, ...]:
    """A submission's `notify` list: targets the spec can send to; webhooks only if the spec lets submissions
    name their own (the controller would POST to any URL a key holder gives)."""
    try:
        targets = parse_targets(value, "notify")
        check_targets_configured(notify, targets, "notify")
    except SpecError as exc:
        raise SubmitError(400, "invalid_notify", str(exc)) from None
    if not notify.submission_webhooks and any(parse_target(t, "notify").kind == WEBHOOK for t in targets):
        raise SubmitError(
            400, "invalid_notify", "notify: webhooks are set per task in the spec (notify.submission_webhooks is off)"
        )
    return targets
