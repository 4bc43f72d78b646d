"""Mark confirmed jobs as published in batches, in a thread of their own, off the app's request path.

As the web heads' PublishedMarker (api/published.py) does on their event loop: the mark only tells the outbox
relay "this job's message is in the broker"; until it lands the relay waits its grace period anyway, and a
worker's claim sets it too. So one write per batch, not one per `.delay()`.
"""

from __future__ import annotations

import logging
import threading
import time

from kvern.errors import StoreUnavailable
from kvern.jobs.base import JobStoreProtocol

log = logging.getLogger("kvern.enqueue")

FLUSH_INTERVAL_S = 0.05
MAX_BATCH = 500


class BackgroundMarker:
    """Thread-safe; its thread runs while marks are pending and ends when there are none."""

    def __init__(self, store: JobStoreProtocol, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.store = store
        self.interval_s = interval_s
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, job_id: str) -> None:
        with self._lock:
            self._pending.append(job_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kvern-published-marks", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Write every mark pending now (the caller waits)."""
        while batch := self._take():
            self._write(batch)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)  # let the marks of concurrent submissions gather
            with self._lock:
                if not self._pending:
                    self._thread = None  # the next add starts another
                    return
            self.flush()

    def _take(self) -> list[str]:
        with self._lock:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        return batch

    def _write(self, batch: list[str]) -> None:
        try:
            self.store.mark_published(batch)
        except StoreUnavailable as exc:  # the relay's grace period and the worker's claim cover it
            log.warning("could not mark %d jobs published: %s", len(batch), exc)
