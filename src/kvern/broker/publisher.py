"""Publish jobs as Celery messages, and only call them sent once the broker has confirmed them.

The web heads are asynchronous, so they use aio-pika (a robust connection that reconnects by itself, and
publisher confirms awaited per message) rather than Celery's blocking producer; the message itself is built by
broker/message.py, as for the blocking publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError, DeliveryError
from aio_pika.exceptions import PublishError as AioPublishError
from pamqp.commands import Basic

from kvern.broker.message import TaskMessage, job_message
from kvern.constants import PUBLISH_CONFIRM_TIMEOUT_S
from kvern.errors import BacklogFull, PublishError
from kvern.jobs.records import Job

CONNECT_TIMEOUT_S = 2.0
BROKER_ERRORS = (AMQPError, AioPublishError, OSError, ConnectionError, RuntimeError)


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


async def _send(channel: aio_pika.abc.AbstractChannel, message: TaskMessage) -> None:
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
    """The web heads' publisher (a JobPublisherProtocol) over one robust aio-pika connection.

    `broker_url` may list several nodes of one cluster, `;`-separated as kombu takes them. aio-pika's robust
    connection only ever reconnects to its own URL (a publish on it waits for a dead node until it times out),
    so with a list the connection is a plain one: when a publish fails or times out, it is dropped and the
    next one goes to the next node of the list (a node that refuses is skipped within one publish).
    """

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._urls = [url for url in broker_url.split(";") if url]
        self._next = 0  # which node of the list the next connection tries first
        self._connection: AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    async def _ready_channel(self) -> aio_pika.abc.AbstractChannel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        async with self._lock:
            if self._connection is None:
                self._connection = await self._connect()
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            return self._channel

    async def publish(self, job: Job) -> None:
        """Return once the broker confirmed the message; raise `PublishError` / `BacklogFull` otherwise."""
        message = job_message(job)
        used = self._connection
        channel = None
        try:
            async with asyncio.timeout(PUBLISH_CONFIRM_TIMEOUT_S):
                channel = await self._ready_channel()
                used = self._connection  # the one this publish goes through, made by it or before
                await _send(channel, message)
        except BacklogFull:
            self._refresh_channel(channel)
            raise
        except TimeoutError as exc:
            await self._fail_over(used)
            raise PublishError("the broker did not confirm the job in time") from exc
        except PublishError:
            await self._fail_over(used)
            raise
        except BROKER_ERRORS as exc:  # from connecting
            await self._fail_over(used)
            raise PublishError(f"broker unavailable: {exc}") from exc

    async def publish_many(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        """Publish every job's message at once on the channel and wait for their confirms together, under one
        deadline; each job's outcome: None once confirmed, else the PublishError / BacklogFull it gets."""
        if not jobs:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_CONFIRM_TIMEOUT_S
        used = self._connection
        try:
            async with asyncio.timeout_at(deadline):
                channel = await self._ready_channel()
                used = self._connection
        except TimeoutError:
            await self._fail_over(used)
            return [PublishError("the broker did not confirm the job in time")] * len(jobs)
        except BROKER_ERRORS as exc:
            await self._fail_over(used)
            return [PublishError(f"broker unavailable: {exc}")] * len(jobs)
        sends = [asyncio.ensure_future(_send(channel, job_message(job))) for job in jobs]
        try:
            await asyncio.wait(sends, timeout=max(0.0, deadline - loop.time()))
        except asyncio.CancelledError:  # the request went away: its publishes end with it
            for send in sends:
                send.cancel()
            raise
        outcomes = [_outcome(send) for send in sends]
        if any(isinstance(outcome, BacklogFull) for outcome in outcomes):
            self._refresh_channel(channel)
        if any(isinstance(outcome, PublishError) and not isinstance(outcome, BacklogFull) for outcome in outcomes):
            await self._fail_over(used)
        return outcomes

    def _refresh_channel(self, channel: aio_pika.abc.AbstractChannel | None) -> None:
        """A quorum queue also refuses while its leader moves, and a channel that saw it may go on refusing: the
        next publish takes a fresh channel (cheap; a full queue refuses it again)."""
        if channel is not None and self._channel is channel:
            self._channel = None
            self._retire(channel)

    def _retire(self, closable: aio_pika.abc.AbstractChannel | AbstractConnection) -> None:
        """Close a channel or connection no publish takes any more, once the publishes still on it have had
        their time (a dead node may never answer the close: bounded too)."""

        async def close_later() -> None:
            await asyncio.sleep(PUBLISH_CONFIRM_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closable.close(), CONNECT_TIMEOUT_S)

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)  # held until done: the loop keeps only a weak reference to a task
        task.add_done_callback(self._retiring.discard)

    async def _connect(self) -> AbstractConnection:
        """One node: a robust connection. Several: the first node of the list, from `_next` on, that accepts."""
        if len(self._urls) == 1:
            return await aio_pika.connect_robust(self._urls[0], timeout=CONNECT_TIMEOUT_S)
        error: BaseException | None = None
        for attempt in range(len(self._urls)):
            url = self._urls[(self._next + attempt) % len(self._urls)]
            try:
                connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT_S)
            except (AMQPError, OSError, ConnectionError, TimeoutError) as exc:
                error = exc
                continue
            self._next = (self._next + attempt) % len(self._urls)
            return connection
        assert error is not None
        raise error

    async def _fail_over(self, used: AbstractConnection | None) -> None:
        """With several nodes: forget the connection `used` (unless another publish replaced it already), so the
        next publish starts at the next node."""
        if len(self._urls) < 2 or self._connection is None or self._connection is not used:
            return
        connection, self._connection, self._channel = self._connection, None, None
        self._next = (self._next + 1) % len(self._urls)
        self._retire(connection)  # not at once: closing it would cancel the publishes still waiting on it

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._ready_channel()
        except Exception:
            return False
        return True

    async def close(self) -> None:
        for task in list(self._retiring):  # the connection's close closes their channels
            task.cancel()
        if self._connection is not None:
            await self._connection.close()
