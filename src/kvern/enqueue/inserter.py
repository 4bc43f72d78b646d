"""Group commit for threads: the jobs that threads record while one insert is being written share the next one.

As the web heads' JobInserter (api/batching.py) does for coroutines. A lone call writes its own job at once;
under load (a gunicorn gthread worker), one transaction records every job that arrived during the previous
one, instead of each thread queueing for the store's write lock. Whoever writes a batch then hands the pen to
the oldest thread still waiting, so no thread writes for others for longer than one batch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import Job, NewJob

MAX_BATCH = 256


@dataclass
class _Waiter:
    new: NewJob
    wake: threading.Event = field(default_factory=threading.Event)
    leads: bool = False  # this thread writes the next batch
    job: Job | None = None
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.job is not None or self.error is not None


class GroupInserter:
    def __init__(self, store: JobStoreProtocol) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._pending: list[_Waiter] = []
        self._writing = False

    def create(self, new: NewJob) -> Job:
        """Record a job without an idempotency key; returns once its batch is committed."""
        waiter = _Waiter(new)
        with self._lock:
            self._pending.append(waiter)
            if not self._writing:
                self._writing = waiter.leads = True
        if not waiter.leads:
            waiter.wake.wait()  # until its batch is written, or it is handed the next one
        if not waiter.finished:
            self._write_next_batch()  # it is at the head of the queue: its own job is in this batch
        if waiter.error is not None:
            raise waiter.error
        assert waiter.job is not None
        return waiter.job

    def _write_next_batch(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        try:
            jobs = self.store.create_jobs([waiter.new for waiter in batch])
            for waiter, job in zip(batch, jobs, strict=True):
                waiter.job = job
        except BaseException as exc:  # every call of the batch gets the store's error (Unavailable)
            for waiter in batch:
                waiter.error = exc
        finally:
            self._hand_over(batch)

    def _hand_over(self, written: list[_Waiter]) -> None:
        with self._lock:
            if self._pending:
                self._pending[0].leads = True
                self._pending[0].wake.set()
            else:
                self._writing = False
        for waiter in written:
            waiter.wake.set()
