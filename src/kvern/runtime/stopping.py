"""Signals for the long-running loops (`kvern up`, the controller): a stop request from SIGTERM or Ctrl-C, and a
reload request from SIGHUP (the foreground `kvern up`)."""

from __future__ import annotations

import signal
import threading
from typing import Any


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM: loops finish their step and stop cleanly instead of dying mid-way."""
    return _event_on(signal.SIGINT, signal.SIGTERM)


def reload_on_hangup() -> threading.Event:
    """An event set by SIGHUP (whose default would end the process): the loop reloads when it sees it and clears
    it first, so a SIGHUP that arrives during a reload asks for one more after it, never for two at once."""
    return _event_on(signal.SIGHUP)


def _event_on(*signals: signal.Signals) -> threading.Event:
    event = threading.Event()

    def set_event(_signum: int, _frame: Any) -> None:
        event.set()

    for signum in signals:
        signal.signal(signum, set_event)
    return event
