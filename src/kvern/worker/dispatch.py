"""Claims at dispatch: the worker's main process claims a job's attempt when it hands the delivery to the pool.

A task process used to claim its own attempt through the node's writer and wait for that commit before running
the task: one commit per job in series with it, and per-job socket traffic. Now the main process asks the writer
(in the same process, no socket) when Celery dispatches a delivery, and hands it to the pool once the claim
committed, with the claim in the request (`CLAIM_FIELD`): the task process runs at once, fenced by the attempt it
was handed, and the claims of many deliveries commit in one batch.

Prefetched deliveries are not all claimed on receipt: at most `window` claimed deliveries are in the pool (not
yet acked or rejected) at a time; the others wait here unclaimed, so a node that dies spends no attempt of theirs.
The window is a little more than the pool's concurrency, so the next jobs' claims commit while the current ones
run. A delivery's message is still acked only after its outcome committed (acks_late; worker/deferred_ack.py).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from celery.worker.request import Request

from kvern.constants import ORIGINAL_RUN_ATTR
from kvern.jobs.batch import ClaimAttempt, WorkerOp

log = logging.getLogger("kvern.worker.dispatch")

CLAIM_FIELD = "kvern_claim"  # the request field that carries the claim to the task process
CLAIMS_AHEAD_PER_SLOT = 1  # deliveries claimed beyond the running ones, per slot (prefetch > 1)


class ClaimWriter(Protocol):
    """The node's writer, as the dispatch sees it: an op, and a callback for its answer once committed."""

    def submit(self, op: WorkerOp, reply: Callable[[Any], None]) -> None: ...


class EventLoop(Protocol):
    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Any: ...


@dataclass(frozen=True)
class DispatchClaims:
    """What a worker's consumer needs to claim at dispatch: the node's writer, the worker's name, the window."""

    writer: ClaimWriter
    worker: str
    window: int

    def install(self, consumer: Any) -> None:
        """Wrap the consumer's dispatch, once (the strategies are built again at each consumer start)."""
        if not isinstance(consumer.on_task_request, ClaimingDispatch):
            consumer.on_task_request = ClaimingDispatch(
                consumer.on_task_request, self.writer, consumer.hub, self.worker, self.window
            )


def claim_window(concurrency: int, prefetch: int) -> int:
    """How many claimed deliveries may be in the pool at once: the running ones, plus some claimed ahead."""
    return concurrency * min(prefetch, 1 + CLAIMS_AHEAD_PER_SLOT)


class ClaimingDispatch:
    """Wraps the consumer's `on_task_request`: kvern's tasks are claimed first, then handed to the pool."""

    def __init__(
        self, dispatch: Callable[[Request], None], writer: ClaimWriter, loop: EventLoop, worker: str, window: int
    ) -> None:
        self.dispatch = dispatch
        self.writer = writer
        self.loop = loop
        self.worker = worker
        self.window = window
        self._waiting: collections.deque[Request] = collections.deque()
        self._in_pool = 0  # claimed (or being claimed) and not yet acked or rejected

    def __call__(self, request: Request) -> None:
        if not hasattr(request.task, ORIGINAL_RUN_ATTR):  # not a task of the user's catalog: Celery's own
            self.dispatch(request)
            return
        self._waiting.append(request)
        self._claim_more()

    def _claim_more(self) -> None:
        while self._waiting and self._in_pool < self.window:
            request = self._waiting.popleft()
            self._in_pool += 1
            request.kvern_dispatch = self  # what its ack or reject releases
            self.writer.submit(ClaimAttempt(request.id, self.worker), self._answer_to(request))

    def _answer_to(self, request: Request) -> Callable[[Any], None]:
        def on_answer(reply: Any) -> None:  # in the writer's thread: the rest runs on the event loop
            self.loop.call_soon(self._hand_over, request, reply)

        return on_answer

    def _hand_over(self, request: Request, reply: Any) -> None:
        # Set here whatever the message carried under the same name: only the main process's claim counts.
        request.request_dict[CLAIM_FIELD] = reply
        try:
            self.dispatch(request)
        except Exception:  # a revoked task (TaskRevokedError is handled by the dispatch itself), or a closed pool
            log.exception("job %s: its delivery could not be handed to the pool", request.id)
            self.release()

    def release(self) -> None:
        """A claimed delivery was acked or rejected: room for the next claim."""
        self._in_pool = max(0, self._in_pool - 1)
        self._claim_more()


def claiming_request(base: type[Any]) -> type[Request]:
    """Celery's request class for a task, whose ack or reject frees its place in the claim window."""

    class ClaimingRequest(base):  # type: ignore[misc]
        kvern_dispatch: ClaimingDispatch | None = None

        def _release_claim(self) -> None:
            dispatch, self.kvern_dispatch = self.kvern_dispatch, None
            if dispatch is not None:
                dispatch.release()

        def acknowledge(self) -> None:
            super().acknowledge()
            self._release_claim()

        def reject(self, requeue: bool = False) -> None:
            super().reject(requeue)
            self._release_claim()

    return ClaimingRequest
