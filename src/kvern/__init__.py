"""kvern: a self-hosted No-Ops platform for Python background work.

Inside a task: `kvern.progress(pct)`, `kvern.save_artifact(name, data)`, `kvern.current_job()`; raise
`kvern.PermanentError` to fail a job without retries.
"""

from kvern.errors import PermanentError
from kvern.worker.context import JobInfo, current_job, progress, save_artifact

__all__ = ["JobInfo", "PermanentError", "current_job", "progress", "save_artifact"]
__version__ = "0.1.0"
