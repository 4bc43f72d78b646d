"""`python -m bench.report`: the latest results (bench/results/*.json) as markdown, for BENCHMARKS.md."""

from __future__ import annotations

import json
import sys

from bench.common import RESULTS_DIR


def machine_lines() -> list[str]:
    path = RESULTS_DIR / "machine.json"
    if not path.exists():
        return ["(no machine.json: run `python -m bench` first)"]
    info = json.loads(path.read_text())
    return [f"- {key}: {value}" for key, value in info.items()]


def scenario_lines(name: str) -> list[str]:
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return [f"({name}: no results yet)"]
    result = json.loads(path.read_text())
    load = ", ".join(f"{value:.2f}" for value in result["machine_load"])
    lines = [f"_{name}, finished {result['finished_at']}, load average at the end {load}_", ""]
    for table in result["tables"]:
        lines += [table, ""]
    targets = result["figures"].get("targets", {})
    lines += [f"- target {'met' if ok else 'MISSED'}: {what}" for what, ok in targets.items()]
    return lines


def main() -> int:
    lines = ["## Machine", "", *machine_lines(), ""]
    for name in ("B1", "B2", "B3", "B4", "B5"):
        lines += [f"## {name}", "", *scenario_lines(name), ""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
