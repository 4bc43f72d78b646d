"""A stop request from SIGTERM or Ctrl-C, for the long-running loops (`kvern up`, the controller)."""

from __future__ import annotations

import signal
import threading
from typing import Any


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM: loops finish their step and stop cleanly instead of dying mid-way."""
    stop = threading.Event()

    def request_stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop
