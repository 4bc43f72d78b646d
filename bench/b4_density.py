"""B4, density: how many concurrent report slots fit in 512 MB.

One worker process of a pool with CONCURRENCY slots (Celery prefork: a main process and CONCURRENCY children)
runs the reports example's task; after it has built REPORTS reports (so every child has imported and used
reportlab), the proportional set size (PSS, /proc/PID/smaps_rollup: shared pages split among the processes
sharing them) of the main process and every child is summed. slots = 512 MiB / (PSS total / CONCURRENCY).
RSS is shown too: it counts shared pages once per process, so it overstates.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Table, log, write_results
from bench.httpclient import port_of
from bench.jobs import job_body, outcome_summary, submit_many
from bench.procs import RunningInstance, kvern_instance, temp_dir, write_project
from bench.specs import density_spec
from kvern.jobs.store import JobStore
from kvern.processes import pool_group

CONCURRENCY = 8
REPORTS = 32
REPORT_SECONDS = 0.5
BUDGET_MIB = 512
TASK = "tasks.generate_heavy_report"


@dataclass(frozen=True)
class Memory:
    pid: int
    role: str
    pss_kib: int
    rss_kib: int
    uss_kib: int


def _rollup(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            values[name.strip()] = int(parts[0])
    return values


def memory_of(pid: int, role: str) -> Memory:
    r = _rollup(pid)
    uss = r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
    return Memory(pid, role, r["Pss"], r["Rss"], uss)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def pool_main_pid(running: RunningInstance, pool: str) -> int:
    group = pool_group(pool)
    pids = [p.pid for p in running.instance.supervisor.processes() if p.group == group and p.pid]
    if len(pids) != 1:
        raise RuntimeError(f"expected one running process in pool {pool}, found {pids}")
    return int(pids[0])


def run_reports(running: RunningInstance) -> None:
    store = JobStore(running.config.store_url)
    started = time.time()
    try:
        raw = job_body(TASK, [4242], {"seconds": REPORT_SECONDS}, running.auth_headers)
        results = asyncio.run(submit_many(port_of(running.url), raw, REPORTS, 8, 30))
        accepted = sum(r.status == 202 for r in results)
        deadline = time.monotonic() + 120
        while outcome_summary(store, started - 0.001)[0] < accepted:
            if time.monotonic() > deadline:
                raise RuntimeError("reports did not finish in 120s")
            time.sleep(0.2)
    finally:
        store.close()
    log(f"{accepted} reports built")


def measure(running: RunningInstance) -> dict[str, Any]:
    run_reports(running)
    time.sleep(1)
    main_pid = pool_main_pid(running, "dense")
    processes = [memory_of(main_pid, "main")] + [memory_of(pid, "child") for pid in children_of(main_pid)]
    children = [p for p in processes if p.role == "child"]
    pss_total = sum(p.pss_kib for p in processes) / 1024
    per_slot = pss_total / CONCURRENCY
    child_mean = sum(p.pss_kib for p in children) / len(children) / 1024 if children else float("nan")
    main_pss = processes[0].pss_kib / 1024
    return {
        "concurrency": CONCURRENCY,
        "child_processes": len(children),
        "pss_total_mib": pss_total,
        "rss_total_mib": sum(p.rss_kib for p in processes) / 1024,
        "pss_per_slot_mib": per_slot,
        "slots_in_512_mib": BUDGET_MIB / per_slot,
        "slots_per_512mb": BUDGET_MIB / per_slot,  # the name issue 12's targets read
        "child_uss_mean_mib": sum(p.uss_kib for p in children) / len(children) / 1024 if children else float("nan"),
        "main_pss_mib": main_pss,
        "child_pss_mean_mib": child_mean,
        "slots_in_512_mib_one_main": 1 + (BUDGET_MIB - main_pss - child_mean) / child_mean,
        "processes": [vars(p) for p in processes],
    }


def tables(f: dict[str, Any]) -> list[Table]:
    processes = Table(
        f"B4 memory of one worker process with {CONCURRENCY} report slots, after {REPORTS} reports",
        ["process", "pid", "PSS (MiB)", "USS (MiB)", "RSS (MiB)"],
        [[p["role"], p["pid"], p["pss_kib"] / 1024, p["uss_kib"] / 1024, p["rss_kib"] / 1024] for p in f["processes"]],
    )
    summary = Table(
        "B4 density",
        ["figure", "value"],
        [
            ["PSS total (MiB)", f["pss_total_mib"]],
            ["RSS total (MiB), for comparison", f["rss_total_mib"]],
            ["PSS per slot (MiB)", f["pss_per_slot_mib"]],
            [f"slots in {BUDGET_MIB} MiB = {BUDGET_MIB} / PSS per slot", f["slots_in_512_mib"]],
            [f"slots in {BUDGET_MIB} MiB with one main process, more children", f["slots_in_512_mib_one_main"]],
        ],
    )
    return [processes, summary]


def run(work: Path) -> dict[str, Any]:
    spec = write_project(work / "kvern", density_spec(CONCURRENCY), reports=True)
    with kvern_instance(spec, work / "kvern" / ".kvern") as running:
        figures = measure(running)
    figures["targets"] = {"slots in 512 MB >= 24": figures["slots_in_512_mib"] >= 24}
    write_results("B4", figures, tables(figures), top_level=("slots_per_512mb", "child_uss_mean_mib"))
    return figures


def main() -> dict[str, Any]:
    with temp_dir("b4") as work:
        return run(work)
