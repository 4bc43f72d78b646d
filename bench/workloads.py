"""The bench's own tasks, a plain Celery project (copied as `tasks.py` into each bench project).

Run by kvern's pools and, for B3, by bare Celery workers. When `BENCH_DONE_FILE` is set (bare Celery only:
it has no job store), every finished task appends its finish time (8-byte float) to that file with one
O_APPEND write, so the harness learns when the last one finished without a result backend.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from celery import Celery
from celery.signals import task_postrun

app = Celery("bench")

DONE_FILE_ENV = "BENCH_DONE_FILE"
_done_fd: int | None = None


# Celery ships no type information, so mypy sees untyped decorators here.
@app.task(name="bench.noop", shared=False)  # type: ignore[untyped-decorator, unused-ignore]
def noop() -> None:
    """Does nothing: what is measured is everything around it."""


@app.task(name="bench.sleep", shared=False)  # type: ignore[untyped-decorator, unused-ignore]
def sleep(seconds: float) -> float:
    """A long-ish job that holds its slot without using the CPU."""
    time.sleep(float(seconds))
    return float(seconds)


def _record_done(**_: Any) -> None:
    global _done_fd  # noqa: PLW0603 - one descriptor per (forked) process, opened on first use
    if _done_fd is None:
        _done_fd = os.open(os.environ[DONE_FILE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(_done_fd, struct.pack("d", time.time()))


if os.environ.get(DONE_FILE_ENV):
    task_postrun.connect(_record_done, weak=False)
