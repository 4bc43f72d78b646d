"""Processes of an instance that outlived their supervisord: find them by the state dir, stop them.

Every program of an instance runs with `KVERN_STATE_DIR=<state dir>` in its environment (children inherit it).
nginx writes its process title over its environment: its master is known by its config path on the command
line, its workers as descendants of a marked process. The
search never returns the calling process or its ancestors (a `kvern` command run from a task, say).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from kvern.constants import ENV_STATE_DIR
from kvern.runtime import nginx

POLL_S = 0.05
# Started by the broker on a machine without one, then shared by every Erlang node: never ours to stop.
SHARED_DAEMONS = frozenset({"epmd"})
BROKER_COMMANDS = frozenset({"beam.smp"})


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _stat_fields(pid: int) -> list[str]:
    text = _read(Path(f"/proc/{pid}/stat")).decode(errors="replace")
    return text.rsplit(")", 1)[-1].split() if text else []


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def command_name(pid: int) -> str:
    return _read(Path(f"/proc/{pid}/comm")).decode(errors="replace").strip()


def _ancestors_of_self() -> set[int]:
    found, pid = set(), os.getpid()
    while pid and pid not in found:
        found.add(pid)
        pid = parent_of(pid) or 0
    return found


def instance_pids(state_dir: Path) -> list[int]:
    """Live processes that belong to the instance of `state_dir` (marked ones and their descendants)."""
    marker = f"{ENV_STATE_DIR}={state_dir}".encode()
    named = str(nginx.config_path(state_dir)).encode()  # nginx overwrites its environment with its title
    parents: dict[int, int] = {}
    marked: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        parent = parent_of(pid)
        if parent is None or _is_zombie(pid):
            continue
        parents[pid] = parent
        if marker in _read(entry / "environ").split(b"\0") or named in _read(entry / "cmdline"):
            marked.add(pid)
    owned = set(marked)
    while new := {pid for pid, parent in parents.items() if parent in owned} - owned:
        owned |= new
    excluded = _ancestors_of_self() | {pid for pid in owned if command_name(pid) in SHARED_DAEMONS}
    return sorted(owned - excluded)


def _with_descendants(roots: set[int], pids: list[int]) -> set[int]:
    found = set(roots)
    while new := {pid for pid in pids if parent_of(pid) in found} - found:
        found |= new
    return found


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return not fields or fields[0] in ("Z", "X")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def stop_pids(members: list[int], timeout: float) -> list[int]:
    """SIGTERM the roots among `members`, wait up to `timeout` for all to exit, SIGKILL the rest.

    Only roots (whose parent is not a member) are signalled gracefully: a Celery worker or nginx master stops
    its own children in order. A child orphaned by its parent's exit becomes a root and gets its SIGTERM then.
    Returns the pids that had to be killed.
    """
    signalled: set[int] = set()
    deadline = time.monotonic() + timeout
    while (living := [pid for pid in members if alive(pid)]) and time.monotonic() < deadline:
        for pid in living:
            if pid not in signalled and parent_of(pid) not in living:
                signalled.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        time.sleep(POLL_S)
    killed = [pid for pid in members if alive(pid)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while any(alive(pid) for pid in killed) and time.monotonic() < deadline + 5:
        time.sleep(POLL_S)
    return killed


def stop_leftovers(state_dir: Path, timeout: float, say: Callable[[str], None] = lambda _: None) -> int:
    """Stop every process of the instance, the broker last so workers can still ack; returns how many."""
    pids = instance_pids(state_dir)
    if not pids:
        return 0
    say(f"found {len(pids)} process(es) of {state_dir} without their supervisor: stopping them")
    broker_side = _with_descendants({pid for pid in pids if command_name(pid) in BROKER_COMMANDS}, pids)
    killed = stop_pids([pid for pid in pids if pid not in broker_side], timeout)
    killed += stop_pids(pids, timeout)
    if killed:
        say(f"killed {len(killed)} that did not stop within {timeout:.0f}s: {killed}")
    # Whatever they started meanwhile goes too.
    stop_pids(instance_pids(state_dir), timeout=5)
    return len(pids)
