"""A blocking publisher for one job at a time, shared by the threads of a process (a gunicorn gthread worker).

Each call returns once the broker confirmed its message. The messages that threads hand in while one batch is
waiting for its confirms go out together in the next (grouping.py): published back to back on one channel in
confirm mode, then one wait for all their confirms (RabbitMQ acks several at once), instead of one publish and
one round trip per thread. Connections are kept open and lent to one thread at a time (the AMQP client is not
thread-safe). A connection that fails is dropped; the next publish opens a new one, so a broker restart costs
the publishes in flight, not the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from amqp.exceptions import AMQPError, ChannelError, MessageNacked
from kombu.connection import Connection
from kombu.exceptions import KombuError
from kombu.messaging import Producer

from kvern.broker.grouping import GroupCall
from kvern.broker.message import TaskMessage, job_message
from kvern.constants import PUBLISH_CONFIRM_TIMEOUT_S
from kvern.errors import BacklogFull, PublishError
from kvern.jobs.records import Job

log = logging.getLogger("kvern.broker")

CONNECT_TIMEOUT_S = 2.0
MAX_IDLE_S = 30.0  # a kept connection idle longer is replaced (the broker may have closed it; no heartbeats)
MAX_CONNECTIONS = 4  # enough for a handful of threads publishing at once; more wait for one to be free
MAX_BATCH = 256  # messages published before one wait for their confirms
BROKER_ERRORS = (AMQPError, KombuError, OSError)  # OSError: refused, reset, and the confirm's socket timeout


def publish_confirmed(producer: Producer, message: TaskMessage, confirm_timeout: float | None = None) -> None:
    """Publish through the default exchange on a confirming channel; return once the broker confirmed."""
    producer.publish(
        message.body,
        routing_key=message.queue,
        exchange="",
        headers=message.headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        correlation_id=message.correlation_id,
        delivery_mode=message.delivery_mode,
        priority=message.priority,
        mandatory=True,
        serializer=None,
        confirm_timeout=confirm_timeout,
    )


@dataclass
class _Link:
    """A connection and its channel in confirm mode; what the broker said of the messages published on it."""

    connection: Connection
    channel: Any  # kombu's py-amqp channel
    reused: bool = False
    last_used: float = 0.0
    published: int = 0  # delivery tags given out on the channel so far
    waiting: set[int] = field(default_factory=set)  # tags not yet acked or nacked
    nacked: set[int] = field(default_factory=set)
    returned: dict[str, str] = field(default_factory=dict)  # correlation id: why the broker could not route it

    def settle(self, tag: int, multiple: bool, nacked: bool) -> None:
        done = {t for t in self.waiting if t <= tag} if multiple else {tag}
        self.waiting -= done
        if nacked:
            self.nacked |= done

    def on_return(self, exc: Any, _exchange: str, _routing_key: str, message: Any) -> None:
        self.returned[message.properties.get("correlation_id", "")] = str(exc)


class _StaleConnection(PublishError):
    """A kept connection failed: the broker restarted, or closed it while it was idle."""


class ConfirmingPublisher:
    """Publish one job, blocking until the broker confirms it; safe to call from many threads."""

    def __init__(self, broker_url: str, max_connections: int = MAX_CONNECTIONS) -> None:
        self.broker_url = broker_url
        self._idle: list[_Link] = []
        self._free = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._group: GroupCall[TaskMessage, None] = GroupCall(self._publish_reusing, MAX_BATCH)

    def publish(self, job: Job) -> None:
        """Return once the broker confirmed the job's message; raise PublishError, or BacklogFull when the
        queue refused it. A kept connection found dead is replaced once before giving up."""
        message = job_message(job)
        self._forget_parent_state()
        try:
            self._group.call(message)
        except _StaleConnection as exc:
            log.info("broker connection lost (%s); publishing on a new one", exc)
            _raise_first(self._publish_batch([message], reuse=False))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for link in idle:
            with contextlib.suppress(Exception):
                link.connection.release()

    def _publish_reusing(self, messages: list[TaskMessage]) -> list[BaseException | None]:
        return self._publish_batch(messages, reuse=True)

    def _publish_batch(self, messages: list[TaskMessage], reuse: bool) -> list[BaseException | None]:
        """Each message's outcome: None once confirmed, else the error its caller gets."""
        if not self._free.acquire(timeout=PUBLISH_CONFIRM_TIMEOUT_S):
            raise PublishError("every broker connection of this process stayed busy")
        try:
            link = self._kept_link() if reuse else None
            link = link or self._connect()
            try:
                outcomes = publish_all_confirmed(link, messages, PUBLISH_CONFIRM_TIMEOUT_S)
            except BaseException as exc:  # whatever broke, the connection's state is unknown: never lend it again
                _drop(link.connection)
                error = _publish_error(exc, messages[0], link.reused)
                if error is exc:
                    raise
                raise error from exc
            self._keep(link)
            return outcomes
        finally:
            self._free.release()

    def _forget_parent_state(self) -> None:
        """In a forked child: the parent's sockets are not ours to use or close, its batch not ours to wait for."""
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._pid = [], os.getpid()
                self._group = GroupCall(self._publish_reusing, MAX_BATCH)

    def _kept_link(self) -> _Link | None:
        with self._lock:
            while self._idle:
                link = self._idle.pop()
                if time.monotonic() - link.last_used < MAX_IDLE_S:
                    return link
                _drop(link.connection)  # idle so long that the broker may have closed it
        return None

    def _keep(self, link: _Link) -> None:
        link.reused, link.last_used = True, time.monotonic()
        with self._lock:
            self._idle.append(link)

    def _connect(self) -> _Link:
        connection = Connection(self.broker_url, connect_timeout=CONNECT_TIMEOUT_S)
        try:
            connection.ensure_connection(max_retries=0)  # fail at once: the caller answers 503, it does not wait
            channel = connection.channel()
            channel.confirm_select()
        except BROKER_ERRORS as exc:
            _drop(connection)
            raise PublishError(f"broker unavailable: {exc}") from exc
        link = _Link(connection, channel)
        channel.events["basic_ack"].add(lambda tag, multiple: link.settle(tag, multiple, nacked=False))
        channel.events["basic_nack"].add(lambda tag, multiple: link.settle(tag, multiple, nacked=True))
        channel.events["basic_return"].add(link.on_return)
        return link


def publish_all_confirmed(link: _Link, messages: list[TaskMessage], timeout: float) -> list[BaseException | None]:
    """Publish every message back to back, then wait once until the broker settled them all."""
    link.nacked.clear()
    link.returned.clear()
    tags = []
    for message in messages:
        link.channel.basic_publish(
            _amqp_message(link.channel, message), exchange="", routing_key=message.queue, mandatory=True
        )
        link.published += 1
        link.waiting.add(link.published)
        tags.append(link.published)
    deadline = time.monotonic() + timeout
    while link.waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no confirm in time")
        link.connection.drain_events(timeout=remaining)
    return [_outcome(link, tag, message) for tag, message in zip(tags, messages, strict=True)]


def _amqp_message(channel: Any, message: TaskMessage) -> Any:
    return channel.prepare_message(
        message.body,
        priority=message.priority,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=message.headers,
        properties={"delivery_mode": message.delivery_mode, "correlation_id": message.correlation_id},
    )


def _outcome(link: _Link, tag: int, message: TaskMessage) -> BaseException | None:
    if tag in link.nacked:
        return BacklogFull(f"queue {message.queue!r} refused the job (full)")
    if message.correlation_id in link.returned:  # a returned message is still acked: it reached no queue
        return PublishError(f"broker unavailable: {link.returned[message.correlation_id]}")
    return None


def _raise_first(outcomes: list[BaseException | None]) -> None:
    for outcome in outcomes:
        if outcome is not None:
            raise outcome


def _drop(connection: Connection) -> None:
    with contextlib.suppress(Exception):  # a dead connection: release its socket without a goodbye
        connection.collect()


def _publish_error(exc: BaseException, message: TaskMessage, reused: bool) -> BaseException:
    if isinstance(exc, MessageNacked):
        return BacklogFull(f"queue {message.queue!r} refused the job (full)")
    if isinstance(exc, TimeoutError):
        return PublishError("the broker did not confirm the job in time")
    if isinstance(exc, BROKER_ERRORS):
        # A channel error (a message the broker returned as unroutable) says nothing about the connection.
        stale = reused and not isinstance(exc, ChannelError)
        return (_StaleConnection if stale else PublishError)(f"broker unavailable: {exc}")
    return exc
