"""Exec wrapper: make a program stop when the supervisord that started it dies, then exec the real command.

Usage: python -I -S parent_death.py SIGNAL -- COMMAND [ARGS...]

Supervisor starts every program of an instance through this. It asks the kernel (PR_SET_PDEATHSIG) to send
SIGNAL to this process when its parent dies, then execs COMMAND: the request survives execve for binaries that
are not setuid (RabbitMQ's start script execs erl -> erlexec -> beam.smp, so the broker keeps it). Without it,
a SIGKILLed supervisord leaves every program running as an orphan that nothing restarts, scales or stops.
The signal is the program's own stop signal, so the program stops as gracefully as under `kvern down`.

Kept free of kvern imports and run with -S: it sits in front of every program start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
EXIT_USAGE = 2
EXIT_PARENT_GONE = 3


def set_parent_death_signal(signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def parent_is_supervisord() -> bool:
    """False when the parent died before the signal was armed (we were re-parented): never run unguarded."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as handle:
            return b"supervisord" in handle.read()
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: parent_death.py SIGNAL -- COMMAND [ARGS...]\n")
        return EXIT_USAGE
    signum = int(signal.Signals[f"SIG{argv[0].removeprefix('SIG')}"])
    set_parent_death_signal(signum)
    if not parent_is_supervisord():
        sys.stderr.write("parent_death: supervisord is gone; not starting\n")
        return EXIT_PARENT_GONE
    os.execvp(argv[2], argv[2:])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
