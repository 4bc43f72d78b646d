"""kvern: a self-hosted No-Ops platform for Python background work.

Inside a task: `kvern.progress(pct)`, `kvern.save_artifact(name, data)`, `kvern.current_job()`,
`kvern.cancelled()` (stop soon when it is True); raise `kvern.PermanentError` to fail a job without retries.
"""

from kvern.errors import PermanentError
from kvern.worker.context import JobInfo, cancelled, current_job, progress, save_artifact

__all__ = ["JobInfo", "PermanentError", "cancelled", "current_job", "progress", "save_artifact"]
__version__ = "0.1.0"
