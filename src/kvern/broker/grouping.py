"""Group calls of many threads into one: the items that threads hand in while one batch is being run share the
next run.

A lone call runs its own item at once; under load (a gunicorn gthread worker's threads), one run serves every
item that arrived during the previous one, instead of each thread paying a round trip of its own. Whoever ran a
batch hands the next one to the oldest thread still waiting, so no thread works for others longer than one
batch. `run` answers each item with its result or the exception that item's caller gets.

Used for the threads' publishes (confirming.py: one wait for many confirms) and their inserts
(enqueue/submitter.py: one transaction, one fsync, for many jobs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Waiter(Generic[T, R]):
    item: T
    wake: threading.Event = field(default_factory=threading.Event)
    leads: bool = False  # this thread runs the next batch
    finished: bool = False
    result: R | None = None
    error: BaseException | None = None


class GroupCall(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Sequence[R | BaseException]], max_batch: int) -> None:
        self.run = run
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Waiter[T, R]] = []
        self._running = False

    def call(self, item: T) -> R:
        """`item`'s answer from the run of the batch it went into; raises the exception the run gave it."""
        waiter: _Waiter[T, R] = _Waiter(item)
        with self._lock:
            self._pending.append(waiter)
            if not self._running:
                self._running = waiter.leads = True
        if not waiter.leads:
            waiter.wake.wait()  # until its batch has run, or it is handed the next one
        if not waiter.finished:
            self._run_next_batch()  # it is at the head of the queue: its own item is in this batch
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]  # R itself may be None

    def _run_next_batch(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        try:
            answers = self.run([waiter.item for waiter in batch])
            for waiter, answer in zip(batch, answers, strict=True):
                if isinstance(answer, BaseException):
                    waiter.error = answer
                else:
                    waiter.result = answer
        except BaseException as exc:  # every call of the batch gets the run's own failure
            for waiter in batch:
                waiter.error = exc
        finally:
            for waiter in batch:
                waiter.finished = True
            self._hand_over(batch)

    def _hand_over(self, done: list[_Waiter[T, R]]) -> None:
        with self._lock:
            if self._pending:
                self._pending[0].leads = True
                self._pending[0].wake.set()
            else:
                self._running = False
        for waiter in done:
            waiter.wake.set()
