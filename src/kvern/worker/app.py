"""Find the user's Celery app in their tasks module and give it kvern's safe settings.

Users write plain Celery (`app = Celery("reports")`, `@app.task`); kvern decides how it talks to the broker:
JSON only, publisher confirms, late acks, reject on a lost worker process, durable quorum queues.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from celery import Celery, Task

from kvern.broker.topology import work_queue
from kvern.errors import SpecError
from kvern.spec import Spec

BUILTIN_TASK_PREFIX = "celery."


@dataclass(frozen=True)
class TaskCatalog:
    """The user's tasks by name; a short name (the function's) works too when it is unambiguous."""

    tasks: dict[str, Task]

    def resolve(self, name: str) -> Task | None:
        if name in self.tasks:
            return self.tasks[name]
        matches = [task for full, task in self.tasks.items() if full.rsplit(".", 1)[-1] == name]
        return matches[0] if len(matches) == 1 else None

    def names(self) -> list[str]:
        return sorted(self.tasks)


def import_tasks_module(spec: Spec) -> ModuleType:
    root = str(spec.root)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        return importlib.import_module(spec.tasks_module)
    except ImportError as exc:
        raise SpecError(f"app.tasks: cannot import {spec.tasks_module!r} from {spec.root}: {exc}") from exc


def find_celery_app(module: ModuleType) -> Celery:
    for attr in ("app", "celery"):
        candidate = getattr(module, attr, None)
        if isinstance(candidate, Celery):
            return candidate
    for candidate in vars(module).values():
        if isinstance(candidate, Celery):
            return candidate
    raise SpecError(f"app.tasks: module {module.__name__!r} defines no Celery app (app = Celery(...))")


def load_user_app(spec: Spec) -> tuple[Celery, TaskCatalog]:
    module = import_tasks_module(spec)
    app = find_celery_app(module)
    app.loader.import_default_modules()
    tasks = {name: task for name, task in app.tasks.items() if not name.startswith(BUILTIN_TASK_PREFIX)}
    if not tasks:
        raise SpecError(f"app.tasks: module {spec.tasks_module!r} declares no tasks")
    return app, TaskCatalog(tasks)


def safe_settings(spec: Spec, broker_url: str, queues: tuple[str, ...]) -> dict[str, Any]:
    """kvern's Celery settings; the user's own settings for these keys are overridden on purpose."""
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # reconnect forever when the broker comes back
        "broker_transport_options": {"confirm_publish": True},
        "broker_heartbeat": 30,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,  # outcomes go to the job store, fenced
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": [work_queue(name, spec.max_backlog(name)) for name in queues],
        "task_default_queue": spec.default_queue,
        "task_create_missing_queues": False,
        "task_routes": {name: {"queue": policy.queue} for name, policy in spec.tasks.items()},
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_deduplicate_successful_tasks": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }
