"""`python -m kvern.controller`: the instance's housekeeping loop (placeholder until the keeper lands)."""

from __future__ import annotations

import signal
import time


def main() -> None:
    stop = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    while not stop:
        time.sleep(0.5)


if __name__ == "__main__":
    main()
