"""What a running task can ask of kvern: report progress, save artifacts, know its job id and attempt, and
whether its job was cancelled.

Outside a kvern worker (a plain unit test of the task, `task.apply()`), these calls do nothing, so a task stays
an ordinary function.
"""

from __future__ import annotations

import mimetypes
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from kvern.jobs.base import JobStoreProtocol

PROGRESS_MIN_INTERVAL_S = 0.2
CANCEL_CHECK_INTERVAL_S = 0.5  # a task polling `cancelled()` in a tight loop asks the store this often at most


@dataclass(frozen=True)
class JobInfo:
    """Identity of the running attempt: use it to make external side effects idempotent."""

    job_id: str
    attempt: int


@dataclass
class JobContext:
    store: JobStoreProtocol
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
    """Keep a file the job produced; it is served once this attempt's outcome is recorded."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"artifact name {name!r} must be a plain file name")
    content_type = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    context = _current.get()
    if context is not None:
        context.store.save_artifact(context.info.job_id, context.info.attempt, name, content_type, data)
    return name
