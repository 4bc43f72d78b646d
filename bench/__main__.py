"""`python -m bench [B1 B2 B3 B4 B5 B6 B7 B8]`: run the scenarios (all by default), print tables, write bench/results/.

Each scenario measures kvern and its comparison side by side in the same run; see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench.common import RESULTS_DIR, log, machine

SCENARIOS: dict[str, tuple[str, str]] = {
    "B1": ("bench.b1_sync_trap", "the synchronous trap: 500 users ask for a report at once"),
    "B2": ("bench.b2_front_door", "front door throughput at 64 connections, with its ceilings"),
    "B3": ("bench.b3_end_to_end", "end-to-end no-op throughput against bare Celery"),
    "B4": ("bench.b4_density", "report slots per 512 MB (PSS of a pool's processes)"),
    "B5": ("bench.b5_elasticity", "spike to a new worker; job at zero to started"),
    "B6": ("bench.b6_app_heads", "the team's app on the web heads: a page and a .delay() view vs bare gunicorn"),
    "B7": ("bench.b7_start_stop", "kvern up -d and kvern down, idle workers"),
    "B8": ("bench.b8_several_machines", "several machines (namespaces, root): cluster CPU per job, fault recovery"),
}


def _parse(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    help_text = "; ".join(f"{name}: {text}" for name, (_, text) in SCENARIOS.items())
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"default: all. {help_text}")
    names = [name.upper() for name in parser.parse_args(argv).scenarios] or list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})")
    return names


def _run_one(name: str) -> bool:
    module_name, text = SCENARIOS[name]
    log(f"=== {name}: {text}")
    started = time.monotonic()
    entry: Callable[[], dict[str, Any]] = importlib.import_module(module_name).main
    try:
        entry()
    except Exception:
        traceback.print_exc()
        log(f"=== {name} FAILED after {time.monotonic() - started:.0f}s")
        return False
    log(f"=== {name} done in {time.monotonic() - started:.0f}s")
    return True


def _interrupt(signum: int, _frame: object) -> None:
    # Make `kill PID` behave like Ctrl-C: every finally block runs, so every instance and process is stopped.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    names = _parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    info = machine()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "machine.json").write_text(json.dumps(info, indent=2) + "\n")
    log("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    started = time.monotonic()
    failed = [name for name in names if not _run_one(name)]
    log(f"all done in {time.monotonic() - started:.0f}s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
