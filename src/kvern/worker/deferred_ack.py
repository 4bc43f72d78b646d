"""Acks after the commit: a pool with `prefetch` above 1 acks a message once the node's writer committed the
outcome its task process handed over, not when the process returned (worker/writer.py, `after_commit`).

Celery acks (acks_late) from the consumer's event loop in the worker's main process; the writer commits in its own
thread of the same process. The writer's callback therefore only schedules the ack on the loop: kombu's
`Hub.call_soon` is safe from another thread (it takes a lock and wakes the poller), and the loop runs it before it
polls again. A node that dies before the commit never acks: the broker delivers the message again, and the
fenced claim makes the outcome recorded exactly once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

import kombu
from celery.worker.request import Request

log = logging.getLogger("kvern.worker.deferred_ack")

THREAD_SAFE_CALL_SOON = (5, 7)  # the kombu release whose Hub.call_soon kvern's deferred acks were verified with


def call_soon_is_thread_safe() -> bool:
    """Whether this kombu's `Hub.call_soon` may be called from the writer's thread (it locks and wakes the
    poller); with an older one the ack could sit until the loop's next poll timeout, or race."""
    return (kombu.VERSION.major, kombu.VERSION.minor) >= THREAD_SAFE_CALL_SOON


class CommitWaiter(Protocol):
    """The node's writer, as the acks see it."""

    def after_commit(self, callback: Callable[[], None]) -> None: ...


class EventLoop(Protocol):
    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Any: ...


def deferred_ack_request(base: type[Any], commits: CommitWaiter, loop: EventLoop) -> type[Request]:
    """Celery's request class for a task (`base`: celery.worker.request.Request or a subclass), with an ack that
    waits until the writer committed every op it had received by then."""

    class DeferredAckRequest(base):  # type: ignore[misc]
        acknowledged: bool  # Celery's (an annotation only: the value stays Celery's)

        def acknowledge(self) -> None:
            if self.acknowledged:
                return
            self.acknowledged = True  # Celery's own checks (reject after ack) see it as acked from now on
            ack = functools.partial(self._on_ack, log, self._connection_errors)
            commits.after_commit(functools.partial(loop.call_soon, ack))

    return DeferredAckRequest
