"""Enqueue from the app's own code, durably: `kvern.submit`, `kvern.asubmit`, and `.delay()` in a web head.

One submission core (core.py) serves the job API and the app: validated before anything is recorded, recorded
durably, published with the broker's confirm, withdrawn when the confirm never came. In a process that kvern
started (KVERN_STATE_DIR set), the runtime config is loaded on first use (process.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Task

from kvern.enqueue.handle import JobHandle
from kvern.enqueue.intercept import route_tasks_through_kvern
from kvern.enqueue.lookup import job
from kvern.enqueue.process import current_submitter, loaded
from kvern.enqueue.submitter import Submitter

__all__ = ["JobHandle", "Submitter", "asubmit", "current_submitter", "install_in_web_head", "job", "submit"]


class _ThisProcessSubmitter:
    """Submits through whatever submitter this process has now (a forked child makes its own)."""

    def submit(
        self,
        task: Task | str,
        args: Any = (),
        kwargs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        subject: str | None = None,
    ) -> JobHandle:
        return current_submitter().submit(task, args, kwargs, idempotency_key=idempotency_key, subject=subject)


def submit(
    task: Task | str,
    *args: Any,
    idempotency_key: str | None = None,
    subject: str | None = None,
    notify: Sequence[str] = (),
    **kwargs: Any,
) -> JobHandle:
    """Submit `task(*args, **kwargs)` as a kvern job and return its handle once it is recorded and the broker
    confirmed it. `task` is the task object or its name (full, or the function's name when unambiguous).

    Raises SubmitError (unknown task, arguments that do not bind or exceed the spec's [limits], an idempotency key
    used before with another request) before anything is recorded; Unavailable when the store or the broker is
    away (nothing is kept: retry later, or answer 503). The same idempotency key with the same request returns
    the job made before. `notify`: webhook URLs or `mailto:` addresses told when it finishes (README
    "Notifications")."""
    return current_submitter().submit(
        task, args, kwargs, idempotency_key=idempotency_key, subject=subject, notify=notify
    )


async def asubmit(
    task: Task | str,
    *args: Any,
    idempotency_key: str | None = None,
    subject: str | None = None,
    notify: Sequence[str] = (),
    **kwargs: Any,
) -> JobHandle:
    """As `submit`, for async code: the blocking work runs in a thread, the event loop goes on."""
    return await current_submitter().asubmit(
        task, args, kwargs, idempotency_key=idempotency_key, subject=subject, notify=notify
    )


def install_in_web_head() -> None:
    """At a web head's start: load the instance's runtime config (KVERN_STATE_DIR) and catalog, and route every
    task's `.delay()` / `.apply_async()` through kvern. Connections are made on first use, in each process."""
    state = loaded()
    route_tasks_through_kvern(state.catalog, _ThisProcessSubmitter(), state.spec.queue_for)
