"""Progress of `up` and `down`: one line per part as it becomes ready (or stops), with the time since the start."""

from __future__ import annotations

import time
from collections.abc import Callable

# Progress lines for a person (`kvern up` prints them); tests pass their own.
Reporter = Callable[[str], None]


def silent(_line: str) -> None:
    pass


class Progress:
    """Reports each part once, as "<part> ready (<seconds>s)" (or another verb), timed from construction."""

    def __init__(self, report: Reporter) -> None:
        self.report = report
        self.started = time.monotonic()
        self.done: set[str] = set()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def mark(self, part: str, verb: str = "ready") -> None:
        if part not in self.done:
            self.done.add(part)
            self.report(f"{part} {verb} ({self.elapsed():.1f}s)")
