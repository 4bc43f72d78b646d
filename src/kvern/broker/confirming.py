"""A blocking publisher for one job at a time, shared by the threads of a process (a gunicorn gthread worker).

Each message waits for the broker's confirm. Connections are kept open and lent to one thread at a time (the
AMQP client is not thread-safe); a few are made when threads publish at once. A connection that fails is
dropped; the next publish opens a new one, so a broker restart costs the publishes in flight, not the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass

from amqp.exceptions import AMQPError, ChannelError, MessageNacked
from kombu.connection import Connection
from kombu.exceptions import KombuError
from kombu.messaging import Producer

from kvern.broker.message import TaskMessage, job_message
from kvern.constants import PUBLISH_CONFIRM_TIMEOUT_S
from kvern.errors import BacklogFull, PublishError
from kvern.jobs.records import Job

log = logging.getLogger("kvern.broker")

CONNECT_TIMEOUT_S = 2.0
MAX_IDLE_S = 30.0  # a kept connection idle longer is replaced (the broker may have closed it; no heartbeats)
MAX_CONNECTIONS = 4  # enough for a handful of threads publishing at once; more wait for one to be free
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
    connection: Connection
    producer: Producer
    reused: bool = False
    last_used: float = 0.0


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

    def publish(self, job: Job) -> None:
        """Return once the broker confirmed the job's message; raise PublishError, or BacklogFull when the
        queue refused it. A kept connection found dead is replaced once before giving up."""
        message = job_message(job)
        try:
            self._publish_once(message, reuse=True)
        except _StaleConnection as exc:
            log.info("broker connection lost (%s); publishing on a new one", exc)
            self._publish_once(message, reuse=False)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for link in idle:
            with contextlib.suppress(Exception):
                link.connection.release()

    def _publish_once(self, message: TaskMessage, reuse: bool) -> None:
        if not self._free.acquire(timeout=PUBLISH_CONFIRM_TIMEOUT_S):
            raise PublishError("every broker connection of this process stayed busy")
        try:
            link = self._kept_link() if reuse else None
            link = link or self._connect()
            try:
                publish_confirmed(link.producer, message, PUBLISH_CONFIRM_TIMEOUT_S)
            except BaseException as exc:  # whatever broke, the connection's state is unknown: never lend it again
                _drop(link.connection)
                error = _publish_error(exc, message, link.reused)
                if error is exc:
                    raise
                raise error from exc
            self._keep(link)
        finally:
            self._free.release()

    def _kept_link(self) -> _Link | None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours to use or close
                self._idle, self._pid = [], os.getpid()
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
        connection = Connection(
            self.broker_url, connect_timeout=CONNECT_TIMEOUT_S, transport_options={"confirm_publish": True}
        )
        try:
            connection.ensure_connection(max_retries=0)  # fail at once: the caller answers 503, it does not wait
            return _Link(connection, Producer(connection.channel()))
        except BROKER_ERRORS as exc:
            _drop(connection)
            raise PublishError(f"broker unavailable: {exc}") from exc


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
