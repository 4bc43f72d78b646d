"""Shared helpers: statistics, tables, result files, the machine's description."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPORTS_EXAMPLE = REPO / "examples" / "reports"
# The static site the benchmarks serve (the tests' own: a page that calls the job API).
REPORTS_STATIC = REPO / "tests" / "static_site"
MIB = 1024 * 1024


def reports_spec_text() -> str:
    """The reports example's spec as B1 and B7 measure it: the job API and the static page, without the example's
    Django site (`[web] app`), so their figures stay comparable with the runs before the site existed."""
    text = (REPORTS_EXAMPLE / "kvern.toml").read_text()
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("app = "))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    items = [v for v in values if not math.isnan(v)]
    return statistics.median(items) if items else math.nan


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def ms(seconds: float) -> float:
    return seconds * 1000


@dataclass(frozen=True)
class Table:
    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]

    def render(self) -> str:
        cells = [[_cell(v) for v in row] for row in self.rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(self.headers)]
        line = "| " + " | ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True)) + " |"
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        body = [
            "| " + " | ".join(_justify(i, c, w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"
            for r in cells
        ]
        return "\n".join([f"**{self.title}**", "", line, rule, *body])


def _justify(index: int, text: str, width: int) -> str:
    return text.ljust(width) if index == 0 else text.rjust(width)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def write_results(
    scenario: str, figures: dict[str, Any], tables: Sequence[Table], top_level: Sequence[str] = ()
) -> Path:
    """Print the tables and write figures (and the tables as markdown) to bench/results/<scenario>.json;
    the figures named in `top_level` are also written at the file's top level (what a target's check reads)."""
    for table in tables:
        print()
        print(table.render())
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{scenario}.json"
    payload = {
        "scenario": scenario,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine_load": os.getloadavg(),
        **{name: figures[name] for name in top_level},
        "figures": figures,
        "tables": [table.render() for table in tables],
    }
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    print(f"\nfigures written to {path.relative_to(REPO)}")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the machine ------------------------------------------------------------------------------------------


def _first_line(command: Sequence[str]) -> str:
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        return "not installed"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_revision() -> str:
    head = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def machine() -> dict[str, Any]:
    packages = ("celery", "kombu", "aio-pika", "fastapi", "uvicorn", "uvloop", "sqlalchemy")
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_mib": _mem_total_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _first_line(["nginx", "-v"]),
        "rabbitmq": _first_line(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"]),
        "erlang": _first_line(["dpkg-query", "-W", "-f", "${Version}", "erlang-base"]),
        "wrk": _first_line(["wrk", "-v"]),
        "kvern": _git_revision(),
        **{name: _package_version(name) for name in packages},
    }
