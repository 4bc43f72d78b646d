"""Route `task.delay()` and `task.apply_async()` of the user's tasks through kvern's durable submission.

After `route_tasks_through_kvern(catalog, submitter)`, for every task of the catalog:

- `task.delay(*args, **kwargs)` submits the job as `kvern.submit(task, *args, **kwargs)` does and returns its
  `JobHandle` (`.id` is the kvern job id; `.get(timeout=...)` waits for the result, as Celery's does).
- `task.apply_async(args=..., kwargs=..., **options)` does the same. Two options of kvern's own are honoured:
  `idempotency_key=` and `subject=`. Options that do not change what happens are accepted and ignored:
  `retry`, `retry_policy` (kvern waits for the broker's confirm instead of retrying the publish),
  `ignore_result`, `add_to_parent`, `serializer="json"`, and `queue`/`routing_key` naming the queue the spec
  already routes the task to. Every other option (`countdown`, `eta`, `expires`, `priority`, another queue,
  `task_id`, `link`, chains, time limits, `headers`, ...) is REFUSED with `SubmitError` (code
  `unsupported_option`) before anything is recorded: kvern would silently not honour it. Time limits and
  routing come from the spec's `[tasks."NAME"]`.

Unknown tasks and arguments that do not bind raise `SubmitError` before anything is recorded; a store or broker
that is away raises `Unavailable`. Only the client side changes: how workers run tasks is untouched, and
`task(...)`, `task.apply()` (run here, now) keep Celery's behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from celery import Task

from kvern.catalog import TaskCatalog
from kvern.enqueue.handle import JobHandle
from kvern.errors import SubmitError

IGNORED_OPTIONS = frozenset({"retry", "retry_policy", "ignore_result", "add_to_parent"})
ROUTING_OPTIONS = ("queue", "routing_key")
ROUTED_MARK = "_kvern_routed"


class Submits(Protocol):
    def submit(
        self,
        task: Task | str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        subject: str | None = None,
    ) -> JobHandle: ...


class QueueOf(Protocol):
    def __call__(self, task_name: str) -> str: ...


def route_tasks_through_kvern(catalog: TaskCatalog, submitter: Submits, queue_of: QueueOf) -> None:
    """Make `.delay()` and `.apply_async()` of every task of the catalog submit through `submitter`.

    `queue_of` names the queue kvern sends a task to (`Spec.queue_for`): `apply_async(queue=...)` may repeat it.
    Calling this again replaces the routing (the same tasks, another submitter)."""
    for task in catalog.tasks.values():
        _route(task, submitter, queue_of(task.name))


def unroute(catalog: TaskCatalog) -> None:
    """Give the tasks back their Celery `.delay()` and `.apply_async()`."""
    for task in catalog.tasks.values():
        if getattr(task, ROUTED_MARK, False):
            for name in ("delay", "apply_async", ROUTED_MARK):
                task.__dict__.pop(name, None)


def _route(task: Task, submitter: Submits, queue: str) -> None:
    def delay(*args: Any, **kwargs: Any) -> JobHandle:
        return submitter.submit(task, args, kwargs)

    def apply_async(
        args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> JobHandle:
        idempotency_key = options.pop("idempotency_key", None)
        subject = options.pop("subject", None)
        refuse_unsupported(task.name, queue, options)
        return submitter.submit(task, args or (), kwargs or {}, idempotency_key=idempotency_key, subject=subject)

    delay.__doc__ = f"Submit {task.name} through kvern (durable record, broker confirm); returns its JobHandle."
    apply_async.__doc__ = delay.__doc__
    # Instance attributes: they shadow the class's methods for this task only, and `unroute` removes them.
    task.__dict__.update({"delay": delay, "apply_async": apply_async, ROUTED_MARK: True})


def refuse_unsupported(task_name: str, queue: str, options: dict[str, Any]) -> None:
    """SubmitError naming the options kvern would not honour (a None value counts as not given)."""
    refused = sorted(name for name, value in options.items() if value is not None and not _harmless(name, value, queue))
    if refused:
        raise SubmitError(
            400,
            "unsupported_option",
            f"{task_name}.apply_async: kvern does not honour {', '.join(refused)} "
            "(routing and time limits come from the spec; no delayed or prioritised jobs)",
        )


def _harmless(name: str, value: Any, queue: str) -> bool:
    if name in IGNORED_OPTIONS:
        return True
    if name in ROUTING_OPTIONS:
        return bool(value == queue)
    return name == "serializer" and value == "json"
