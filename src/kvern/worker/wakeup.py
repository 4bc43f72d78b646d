"""Wake a worker's event loop when a signal arrives, so a stop request is acted on at once.

Celery's SIGTERM handler (warm shutdown) only sets a flag that its event loop checks between polls, and an
idle worker's loop (kombu's hub) sleeps in poll() for up to 10 s: an idle worker took 3-6 s to even begin
stopping, which `kvern down` waited out. Python writes each signal's number to its wakeup fd; with the read
end registered in the hub, poll() returns at once and the loop sees the flag.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_process_init


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while os.read(fd, 512):
            pass


class WakeOnSignal(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker step: the wakeup fd's read end, watched by the worker's hub."""

    requires = ("celery.worker.components:Hub",)

    def start(self, worker: Any) -> None:
        if getattr(worker, "hub", None) is None:
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        worker.hub.add_reader(read_fd, _drain, read_fd)


def _children_forget_the_wakeup_fd(**_: Any) -> None:
    # A pool child shares the pipe: its own signals must not wake the parent's loop.
    signal.set_wakeup_fd(-1)


def wake_on_signals(app: Celery) -> None:
    app.steps["worker"].add(WakeOnSignal)
    worker_process_init.connect(_children_forget_the_wakeup_fd, weak=False)
