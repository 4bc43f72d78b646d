"""Where the CPU went during a measurement: cores used per component, from /proc (utime + stime).

A snapshot before and one after a window; every process on the machine is counted and put in a group by a
classifier, so the figures show both kvern's parts and what else (the load generator, other users of this
shared machine) competed for the same cores. `idle` is from /proc/stat.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.common import Table
from kvern.runtime.instance import owned_pids

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
HARNESS = "load generator (bench harness, wrk)"
OTHER = "other processes on the machine"

Classifier = Callable[["Process"], str]


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    command: str
    ticks: int  # its own CPU time
    reaped_ticks: int  # CPU time of its children that exited and were waited for (e.g. wrk, for the harness)


@dataclass(frozen=True)
class Snapshot:
    at: float
    processes: dict[int, Process]
    idle_ticks: int


def _process(pid: int) -> Process | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    name = stat.split("(", 1)[1].rsplit(")", 1)[0]
    own, reaped = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
    return Process(pid, int(fields[1]), command.strip() or f"[{name}]", own, reaped)


def _idle_ticks() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return int(fields[3]) + int(fields[4])  # idle + iowait


def snapshot() -> Snapshot:
    processes = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _process(int(entry))) is not None:
            processes[found.pid] = found
    return Snapshot(time.monotonic(), processes, _idle_ticks())


def cores_by_group(before: Snapshot, after: Snapshot, classify: Classifier) -> dict[str, float]:
    seconds = after.at - before.at
    groups: dict[str, float] = {}
    harness = os.getpid()
    for pid, process in after.processes.items():
        earlier = before.processes.get(pid)
        ticks = process.ticks - (earlier.ticks if earlier else 0)
        if pid == harness and earlier:  # wrk runs and exits inside the window: count it where it is reaped
            ticks += process.reaped_ticks - earlier.reaped_ticks
        used = ticks / TICKS_PER_S / seconds
        if used > 0:
            group = classify(process)
            groups[group] = groups.get(group, 0.0) + used
    groups["idle"] = (after.idle_ticks - before.idle_ticks) / TICKS_PER_S / seconds
    return dict(sorted(groups.items(), key=lambda item: -item[1]))


def kvern_part(command: str) -> str:
    parts = {
        "kvern.runtime.app_head": "kvern app heads (gunicorn)",
        "kvern.runtime.web_head": "kvern web heads",
        "uvicorn": "kvern web heads",
        "kvern.worker": "kvern worker pools",
        "beam.smp": "kvern broker (RabbitMQ)",
        "erl_child_setup": "kvern broker (RabbitMQ)",
        "nginx": "nginx",
        "kvern.controller": "kvern controller",
        "supervisord": "supervisord",
    }
    return next((group for needle, group in parts.items() if needle in command), "kvern (other)")


def classifier(state_dirs: Iterable[Path], named: dict[int, str] | None = None) -> Classifier:
    """kvern's processes (by state dir); `named` pids and their children; the harness and wrk; the rest."""
    owned = {pid for state in state_dirs for pid in owned_pids(state)}
    harness = os.getpid()
    names = named or {}

    def classify(process: Process) -> str:
        if process.pid in names or process.ppid in names:
            return names.get(process.pid) or names[process.ppid]
        if process.pid in owned or process.ppid in owned:  # nginx rewrites its workers' command line
            return kvern_part(process.command)
        if process.pid == harness or process.command.startswith("wrk "):
            return HARNESS
        return OTHER

    return classify


class CpuWindow:
    """`with CpuWindow() as w: ...` then `w.cores(classify)`."""

    def __enter__(self) -> CpuWindow:
        self.before = snapshot()
        return self

    def __exit__(self, *_: object) -> None:
        self.after = snapshot()

    def cores(self, classify: Classifier) -> dict[str, float]:
        return cores_by_group(self.before, self.after, classify)


def median_cores(windows: list[dict[str, float]]) -> dict[str, float]:
    """Per group, the median over windows (a group absent from a window counts as 0)."""
    groups = dict.fromkeys(group for window in windows for group in window)
    result = {}
    for group in groups:
        values = sorted(window.get(group, 0.0) for window in windows)
        middle = len(values) // 2
        result[group] = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    return result


def cpu_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """Rows: component; one column of cores per measured system."""
    groups = list(dict.fromkeys(group for column in columns.values() for group in column if group != "idle"))
    rows: list[list[object]] = [[group, *(column.get(group, 0.0) for column in columns.values())] for group in groups]
    rows.append(["idle", *(column.get("idle", 0.0) for column in columns.values())])
    return Table(title, ["component (cores of " + str(os.cpu_count()) + ")", *columns], rows)
