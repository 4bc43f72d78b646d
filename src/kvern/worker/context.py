"""What a running task can ask of kvern: report progress, save artifacts, know its job id and attempt, and
whether its job was cancelled.

Outside a kvern worker (a plain unit test of the task, `task.apply()`), these calls do nothing, so a task stays
an ordinary function.
"""

from __future__ import annotations

import mimetypes
import re
import time
import unicodedata
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from kvern.spec import LimitsSpec

PROGRESS_MIN_INTERVAL_S = 0.2
CANCEL_CHECK_INTERVAL_S = 0.5  # a task polling `cancelled()` in a tight loop asks the store this often at most
MAX_ARTIFACT_NAME = 200  # characters; the store's column
# type/subtype (RFC 6838 names), then optional `; name=value` parameters; the store keeps 100 characters.
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]{1,127}"
CONTENT_TYPE_PATTERN = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*")
MAX_CONTENT_TYPE = 100


@dataclass(frozen=True)
class JobInfo:
    """Identity of the running attempt: use it to make external side effects idempotent."""

    job_id: str
    attempt: int


@dataclass
class ArtifactLimits:
    max_bytes: int = LimitsSpec.artifact_bytes  # of one attempt's artifacts together


_artifact_limits = ArtifactLimits()


def limit_artifacts(max_bytes: int) -> None:
    """The worker process sets the spec's `[limits] artifact_bytes` once, before it runs tasks."""
    _artifact_limits.max_bytes = max_bytes


class TaskStore(Protocol):
    """What a running task's calls need of the store (a JobStore, or the node's writer: worker/writer_client.py)."""

    def record_progress(self, job_id: str, attempt: int, pct: int, message: str | None = None) -> bool: ...

    def is_cancelled(self, job_id: str) -> bool: ...

    def save_artifact(
        self, job_id: str, attempt: int, name: str, content_type: str, data: bytes, max_total: int | None = None
    ) -> None: ...


@dataclass
class JobContext:
    store: TaskStore
    info: JobInfo
    last_progress: int = -1
    last_progress_at: float = field(default=0.0)
    tracked: bool = True  # False: a plain `.delay()` from user code, with no job record to cancel
    cancel_seen: bool = False
    last_cancel_check_at: float = field(default=float("-inf"))


_current: ContextVar[JobContext | None] = ContextVar("kvern_job", default=None)


def current_job() -> JobInfo | None:
    context = _current.get()
    return context.info if context else None


def progress(pct: int, message: str | None = None) -> None:
    """Report progress (0-100) of the running job; throttled, and never moves backwards."""
    context = _current.get()
    if context is None:
        return
    pct = max(0, min(100, int(pct)))
    now = time.monotonic()
    if pct <= context.last_progress:
        return
    if pct < 100 and now - context.last_progress_at < PROGRESS_MIN_INTERVAL_S:
        return
    context.last_progress, context.last_progress_at = pct, now
    context.store.record_progress(context.info.job_id, context.info.attempt, pct, message)


def cancelled() -> bool:
    """True once the running job was cancelled (or erased): return or raise soon, and the attempt ends
    cancelled. Cheap to call in a loop: the store is asked at most every CANCEL_CHECK_INTERVAL_S."""
    context = _current.get()
    if context is None or not context.tracked:
        return False
    now = time.monotonic()
    if not context.cancel_seen and now - context.last_cancel_check_at >= CANCEL_CHECK_INTERVAL_S:
        context.last_cancel_check_at = now
        context.cancel_seen = context.store.is_cancelled(context.info.job_id)
    return context.cancel_seen


def save_artifact(name: str, data: bytes, content_type: str | None = None) -> str:
    """Keep a file the job produced; it is served once this attempt's outcome is recorded. ValueError for a name
    that is no plain file name, a content type that is no `type/subtype`, or files over `[limits]
    artifact_bytes` together (kvern.jobs.base.ArtifactsTooLarge)."""
    check_artifact_name(name)
    content_type = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    check_content_type(content_type)
    if len(data) > _artifact_limits.max_bytes:  # before the store is asked to take it
        raise ValueError(f"artifact {name!r} has {len(data)} bytes, over [limits] artifact_bytes")
    context = _current.get()
    if context is not None:
        job_id, attempt = context.info.job_id, context.info.attempt
        context.store.save_artifact(job_id, attempt, name, content_type, data, _artifact_limits.max_bytes)
    return name


def check_artifact_name(name: str) -> None:
    """A plain file name: no path, not hidden, no control or format characters, at most 200 characters."""
    plain = bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")
    if not plain or len(name) > MAX_ARTIFACT_NAME or name != name.strip():
        raise ValueError(f"artifact name {name!r} must be a plain file name of at most {MAX_ARTIFACT_NAME} characters")
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in name):
        raise ValueError(f"artifact name {name!r} must not contain control characters")


def check_content_type(content_type: str) -> None:
    if len(content_type) > MAX_CONTENT_TYPE or not CONTENT_TYPE_PATTERN.fullmatch(content_type):
        raise ValueError(f"artifact content type {content_type!r} must be a media type like 'text/csv'")
