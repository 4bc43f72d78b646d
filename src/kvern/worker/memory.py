"""Keep a pool's task processes sharing the memory of their parent.

Prefork children start as copy-on-write views of the worker's main process, but CPython's cyclic garbage
collector writes into the header of every object it examines: the first collection in a child copies, page by
page, most of the Python heap it inherited (tens of MB per child with Celery, SQLAlchemy and the user's
libraries loaded). Freezing the parent's objects right before each fork (`gc.freeze`, meant for exactly this)
keeps them out of every later collection, so those pages stay shared between all the children.
"""

from __future__ import annotations

import gc
from typing import Any

from celery.signals import worker_before_create_process


def _freeze_before_fork(**_: Any) -> None:
    gc.collect()
    gc.freeze()


def share_memory_with_children() -> None:
    """Freeze the main process's objects before Celery forks each task process (initial ones and replacements)."""
    worker_before_create_process.connect(_freeze_before_fork, weak=False)
