"""Publish jobs as Celery messages, and only call them sent once the broker has confirmed them.

The web heads are asynchronous, so they use aio-pika (a robust connection that reconnects by itself, and
publisher confirms awaited per message) rather than Celery's blocking producer; the message follows Celery's
task protocol 2, so the user's plain Celery workers consume it unchanged.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError, DeliveryError
from aio_pika.exceptions import PublishError as AioPublishError
from pamqp.commands import Basic

from kvern.constants import KVERN_JOB_HEADER, PUBLISH_CONFIRM_TIMEOUT_S
from kvern.errors import BacklogFull, PublishError

CONNECT_TIMEOUT_S = 2.0


def celery_task_message(job_id: str, task: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Body and headers of a task message in Celery's protocol 2, JSON-encoded."""
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": job_id,
        "root_id": job_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": repr(args)[:1024],
        "kwargsrepr": repr(kwargs)[:1024],
        "origin": f"kvern-web@{socket.gethostname()}",
        "ignore_result": True,
        KVERN_JOB_HEADER: True,
    }
    body = json.dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return body, headers


def celery_message(job_id: str, task: str, args: list[Any], kwargs: dict[str, Any]) -> aio_pika.Message:
    body, headers = celery_task_message(job_id, task, args, kwargs)
    return aio_pika.Message(
        body.encode(),
        headers=headers,
        content_type="application/json",
        content_encoding="utf-8",
        correlation_id=job_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=0,
    )


class JobPublisher:
    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._connection: AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def _ready_channel(self) -> aio_pika.abc.AbstractChannel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        async with self._lock:
            if self._connection is None:
                self._connection = await aio_pika.connect_robust(self.broker_url, timeout=CONNECT_TIMEOUT_S)
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            return self._channel

    async def publish(self, job_id: str, task: str, queue: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Return once the broker confirmed the message; raise `PublishError` / `BacklogFull` otherwise."""
        message = celery_message(job_id, task, args, kwargs)
        try:
            async with asyncio.timeout(PUBLISH_CONFIRM_TIMEOUT_S):
                channel = await self._ready_channel()
                confirmation = await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)
        except DeliveryError as exc:
            raise BacklogFull(f"queue {queue!r} refused the job (full)") from exc
        except TimeoutError as exc:
            raise PublishError("the broker did not confirm the job in time") from exc
        except (AMQPError, AioPublishError, OSError, ConnectionError, RuntimeError) as exc:
            raise PublishError(f"broker unavailable: {exc}") from exc
        if not isinstance(confirmation, Basic.Ack):
            raise BacklogFull(f"queue {queue!r} refused the job")

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._ready_channel()
        except Exception:
            return False
        return True

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
