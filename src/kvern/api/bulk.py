"""Bulk submit (`POST /api/v1/jobs:batch`): many jobs by the single submit's rules, with one record batch and one
wait for the broker's confirms.

Each job gets its own answer, in the order sent: `{"status": 202, "job": {...}}` (accepted), `{"status": 200,
"job": {...}}` (its idempotency key named a job made before), or `{"status": 4xx/503, "error": {...}}` with the
code the single submit would have answered. A refused job never costs the others theirs: the request itself is
refused only when its body is not a batch at all (not JSON, no `jobs` array, empty, over `limits.batch_jobs`).
"""

from __future__ import annotations

import logging
from typing import Any

from kvern.api.auth import scoped_idempotency_key
from kvern.api.submission import BatchItem
from kvern.api.views import error_body
from kvern.enqueue.core import Accepted, AsyncBatchPorts, Rules, accept, run_async_batch
from kvern.errors import BacklogFull, PublishError, StoreUnavailable, SubmitError
from kvern.spec import Spec

log = logging.getLogger("kvern.api")


async def submit_batch(
    spec: Spec, ports: AsyncBatchPorts, items: list[BatchItem], owner: str | None
) -> list[dict[str, Any]]:
    """Each item's answer, in order; only the valid items are recorded and published, together."""
    rules: list[Rules] = [
        accept(spec, item.submission, scoped_idempotency_key(owner, item.idempotency_key), owner)
        for item in items
        if item.submission is not None
    ]
    outcomes = iter(await run_async_batch(rules, ports))
    return [_answer(next(outcomes)) if item.error is None else _refused(item.error) for item in items]


def _answer(outcome: Accepted | Exception) -> dict[str, Any]:
    if isinstance(outcome, Accepted):
        return {"status": 202 if outcome.created else 200, "job": outcome.body}
    return _refused(outcome)


def _refused(exc: Exception) -> dict[str, Any]:
    status, code, message = item_error(exc)
    return {"status": status} | error_body(code, message)


def item_error(exc: Exception) -> tuple[int, str, str]:
    """What the single submit answers for this failure: status, code, message."""
    if isinstance(exc, SubmitError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, StoreUnavailable):
        return 503, "store_unavailable", "the job store is unavailable"
    if isinstance(exc, BacklogFull):
        return 503, "backlog_full", str(exc)
    if isinstance(exc, PublishError):
        return 503, "broker_unavailable", str(exc)
    log.error("a job of a bulk submit failed", exc_info=exc)
    return 500, "internal_error", "the web head failed to accept this job; the error is in its log"
