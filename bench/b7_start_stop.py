"""B7, start and stop: `kvern up -d` and `kvern down` of the reports example, idle workers, median of 5 runs.

Each run uses a fresh project folder and state dir, as a fresh clone would: `up -d` (first start: the private
broker creates its database), `down`, `up -d` again (a restart: the state dir exists), `down`. Every command is
the real CLI in its own process (Python's start-up and kvern's imports included), timed from spawn to exit;
each line it prints is time-stamped, so the progress lines show where the time of a start goes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Table, log, median, reports_spec_text, write_results
from bench.procs import temp_dir, write_project
from kvern.runtime.instance import owned_pids

RUNS = 5
COMMAND_TIMEOUT_S = 240.0
TARGET_UP_S = 8.0
TARGET_DOWN_S = 4.0
SPEC = reports_spec_text()
# A progress line: "<part> ready|up, ...|healthy ...|stopped (<seconds>s)", one per part as it is reached.
PROGRESS = re.compile(r"^\s*(?P<part>.+?) (?:ready|up,|healthy|stopped) .*\((?P<at>\d+\.\d+)s\)\s*$")
PART_STEPS = ("up (fresh)", "up (restart)", "down")


@dataclass
class Timed:
    seconds: float
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since spawn, line)

    def parts(self) -> dict[str, float]:
        """Each progress line's part and the time kvern printed on it."""
        found = {}
        for _at, line in self.lines:
            match = PROGRESS.match(line)
            if match:
                found[match["part"]] = float(match["at"])
        return found


def run_cli(spec: Path, *args: str) -> Timed:
    command = [sys.executable, "-m", "kvern.cli", "-f", str(spec), *args]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = [(time.monotonic() - started, line.rstrip()) for line in process.stdout]
    code = process.wait(timeout=COMMAND_TIMEOUT_S)
    elapsed = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"kvern {' '.join(args)} exited {code}: {[line for _, line in lines]}")
    return Timed(elapsed, lines)


def one_run(index: int) -> dict[str, Timed]:
    with temp_dir(f"b7-{index}") as folder:
        spec = write_project(folder / "app", SPEC, reports=True)
        state = spec.parent / ".kvern"
        try:
            first = run_cli(spec, "up", "-d")
            first_down = run_cli(spec, "down")
            again = run_cli(spec, "up", "-d")
            again_down = run_cli(spec, "down")
        finally:
            _backstop(spec, state)
    return {"up (fresh)": first, "down": first_down, "up (restart)": again, "down (after restart)": again_down}


def _backstop(spec: Path, state: Path) -> None:
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, "-m", "kvern.cli", "-f", str(spec), "down"], capture_output=True, timeout=120, check=False
        )
    leftovers = owned_pids(state.resolve())
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if leftovers:
        log(f"WARNING: killed {len(leftovers)} processes kvern down left behind: {leftovers}")


def main() -> dict[str, Any]:
    runs = []
    for index in range(RUNS):
        run = one_run(index)
        log(f"run {index + 1}/{RUNS}: " + ", ".join(f"{name} {timed.seconds:.1f}s" for name, timed in run.items()))
        runs.append(run)
    steps = list(runs[0])
    medians = {step: median(run[step].seconds for run in runs) for step in steps}
    targets = {step: TARGET_DOWN_S if step.startswith("down") else TARGET_UP_S for step in steps}
    rows = [
        [
            step,
            medians[step],
            min(run[step].seconds for run in runs),
            max(run[step].seconds for run in runs),
            targets[step],
            "met" if medians[step] <= targets[step] else "missed",
        ]
        for step in steps
    ]
    # In the order they were printed (up's parts, then down's), as first seen in any run.
    parts = list(dict.fromkeys(part for step in PART_STEPS for run in runs for part in run[step].parts()))
    part_rows = [
        [
            part,
            *(median(run[step].parts().get(part, float("nan")) for run in runs) for step in PART_STEPS),
        ]
        for part in parts
    ]
    tables = [
        Table(
            f"B7: kvern up -d / down, reports example, idle workers, {RUNS} runs (s)",
            ["command", "median", "min", "max", "target", ""],
            rows,
        ),
    ]
    if part_rows:  # a kvern that prints no progress lines has no breakdown
        title = "B7: when each part was ready (up) or stopped (down), seconds from the command's start (median)"
        tables.append(Table(title, ["part", *PART_STEPS], part_rows))
    figures = {
        "medians_s": medians,
        "runs": [{step: {"seconds": t.seconds, "lines": t.lines} for step, t in run.items()} for run in runs],
    }
    write_results("B7", figures, tables)
    return figures
