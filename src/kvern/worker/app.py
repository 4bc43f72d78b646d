"""kvern's safe settings for the user's Celery app (the app itself is found by kvern.catalog).

Users write plain Celery (`app = Celery("reports")`, `@app.task`); kvern decides how it talks to the broker:
JSON only, publisher confirms, late acks, reject on a lost worker process, durable quorum queues.
"""

from __future__ import annotations

from typing import Any, ClassVar

from kombu.entity import Queue

from kvern.broker.topology import work_queue
from kvern.spec import Spec
from kvern.worker.execution import DeadLetteringConsumer

DELAYED_DELIVERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class UndeclaringConsumer(DeadLetteringConsumer):
    """The worker's consumer without the step that declares Celery's delayed delivery: `kvern up` declares it,
    so the worker role needs no configure permission (which would let a task delete queues)."""

    class Blueprint(DeadLetteringConsumer.Blueprint):  # type: ignore[name-defined,misc]
        default_steps: ClassVar[list[str]] = [
            step for step in DeadLetteringConsumer.Blueprint.default_steps if step != DELAYED_DELIVERY_STEP
        ]


def consumed_queue(name: str, max_backlog: int) -> Queue:
    """A work queue as the worker knows it: never declared by the worker (`kvern up` declared it)."""
    queue = work_queue(name, max_backlog)
    queue.no_declare = True  # type: ignore[attr-defined]
    return queue


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
        "task_queues": [consumed_queue(name, spec.max_backlog(name)) for name in queues],
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
