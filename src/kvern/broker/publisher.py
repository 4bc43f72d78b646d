"""Publish jobs as Celery messages, and only call them sent once the broker has confirmed them.

The web heads are asynchronous, so they use aio-pika (a robust connection that reconnects by itself, and
publisher confirms awaited per message) rather than Celery's blocking producer; the message itself is built by
broker/message.py, as for the blocking publisher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError, DeliveryError
from aio_pika.exceptions import PublishError as AioPublishError
from pamqp.commands import Basic

from kvern.broker.message import TaskMessage, job_message
from kvern.constants import PUBLISH_CONFIRM_TIMEOUT_S
from kvern.errors import BacklogFull, PublishError
from kvern.jobs.records import Job

CONNECT_TIMEOUT_S = 2.0


def aio_pika_message(message: TaskMessage) -> aio_pika.Message:
    return aio_pika.Message(
        message.body,
        headers=message.headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        correlation_id=message.correlation_id,
        delivery_mode=aio_pika.DeliveryMode(message.delivery_mode),
        priority=message.priority,
    )


BROKER_ERRORS = (AMQPError, AioPublishError, OSError, ConnectionError, RuntimeError)


async def _send(channel: aio_pika.abc.AbstractChannel, job: Job) -> None:
    message = job_message(job)
    try:
        confirmation = await channel.default_exchange.publish(
            aio_pika_message(message), routing_key=message.queue, mandatory=True
        )
    except DeliveryError as exc:
        raise BacklogFull(f"queue {message.queue!r} refused the job (full)") from exc
    except BROKER_ERRORS as exc:
        raise PublishError(f"broker unavailable: {exc}") from exc
    if not isinstance(confirmation, Basic.Ack):
        raise BacklogFull(f"queue {message.queue!r} refused the job")


def _outcome(send: asyncio.Future[None]) -> BaseException | None:
    if not send.done():  # no confirm within the deadline: never counted as sent
        send.cancel()
        return PublishError("the broker did not confirm the job in time")
    return send.exception()


class JobPublisher:
    """The web heads' publisher (a JobPublisherProtocol) over one robust aio-pika connection."""

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

    async def publish(self, job: Job) -> None:
        """Return once the broker confirmed the message; raise `PublishError` / `BacklogFull` otherwise."""
        try:
            async with asyncio.timeout(PUBLISH_CONFIRM_TIMEOUT_S):
                await _send(await self._ready_channel(), job)
        except TimeoutError as exc:
            raise PublishError("the broker did not confirm the job in time") from exc
        except BROKER_ERRORS as exc:  # from connecting; _send turns its own into PublishError / BacklogFull
            raise PublishError(f"broker unavailable: {exc}") from exc

    async def publish_many(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        """Publish every job's message at once on the channel and wait for their confirms together, under one
        deadline; each job's outcome: None once confirmed, else the PublishError / BacklogFull it gets."""
        if not jobs:
            return []
        deadline = asyncio.get_running_loop().time() + PUBLISH_CONFIRM_TIMEOUT_S
        try:
            async with asyncio.timeout_at(deadline):
                channel = await self._ready_channel()
        except TimeoutError:
            return [PublishError("the broker did not confirm the job in time")] * len(jobs)
        except BROKER_ERRORS as exc:
            return [PublishError(f"broker unavailable: {exc}")] * len(jobs)
        sends = [asyncio.ensure_future(_send(channel, job)) for job in jobs]
        try:
            await asyncio.wait(sends, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.CancelledError:  # the request went away: its publishes end with it
            for send in sends:
                send.cancel()
            raise
        return [_outcome(send) for send in sends]

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
