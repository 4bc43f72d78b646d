"""Worker logs never show a job's args, kwargs or result: they may hold personal data, and logs are kept, copied
and read more widely than the job store.

Celery logs each task's receipt, success ("succeeded in 0.1s: <result>"), retry and failure with a context
that carries `args`, `kwargs` and `return_value`; its success format prints the result. The filter blanks those
values in every record of the loggers that make them, whatever format string a user or a later Celery version
uses; the success format drops the result as well, so the line reads cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from celery.app import trace

HIDDEN = "…"
PAYLOAD_KEYS = ("args", "kwargs", "return_value")
# The loggers whose records carry a task's payload in their context (trace: success and failure; strategy:
# receipt; request: retries and errors of a request).
PAYLOAD_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.worker.request")
SUCCESS_FORMAT = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"


class HidePayloads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping) and any(key in record.args for key in PAYLOAD_KEYS):
            record.args = _hidden(record.args)
        data = getattr(record, "data", None)
        if isinstance(data, Mapping):
            record.data = _hidden(data)
        return True


def _hidden(context: Mapping[str, object]) -> dict[str, object]:
    return {key: HIDDEN if key in PAYLOAD_KEYS else value for key, value in context.items()}


def hide_payloads_in_logs() -> None:
    """Install the filter and the success format (before the worker starts its processes, which inherit it)."""
    trace.LOG_SUCCESS = SUCCESS_FORMAT
    for name in PAYLOAD_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, HidePayloads) for existing in logger.filters):
            logger.addFilter(HidePayloads())
