"""kvern: a self-hosted No-Ops platform for Python background work.

Inside a task: `kvern.progress(pct)`, `kvern.save_artifact(name, data)`, `kvern.current_job()`,
`kvern.cancelled()` (stop soon when it is True); raise `kvern.PermanentError` to fail a job without retries.

From the app's own code (a web head, or any process kvern started): `kvern.submit(task, *args, **kwargs)` and
`await kvern.asubmit(...)` return a `JobHandle`; they raise `SubmitError` (refused, nothing recorded) or
`Unavailable` (store or broker away: answer 503); `JobHandle.result()` raises `JobFailed`. `kvern.job(job_id)` is
the handle of a job accepted earlier (e.g. for the page that follows it); `JobNotFound` when there is none.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kvern.errors import JobFailed, JobNotFound, KvernError, PermanentError, SubmitError, Unavailable
from kvern.worker.context import JobInfo, cancelled, current_job, progress, save_artifact

if TYPE_CHECKING:
    from kvern.enqueue import JobHandle, asubmit, job, submit

__all__ = [
    "JobFailed",
    "JobHandle",
    "JobInfo",
    "JobNotFound",
    "KvernError",
    "PermanentError",
    "SubmitError",
    "Unavailable",
    "asubmit",
    "cancelled",
    "current_job",
    "job",
    "progress",
    "save_artifact",
    "submit",
]
__version__ = "0.1.0"

# Loaded on first use: a task module's `import kvern` does not load the store and broker clients.
_FROM_ENQUEUE = frozenset({"JobHandle", "asubmit", "job", "submit"})


def __getattr__(name: str) -> Any:
    if name in _FROM_ENQUEUE:
        return getattr(importlib.import_module("kvern.enqueue"), name)
    raise AttributeError(f"module 'kvern' has no attribute {name!r}")
