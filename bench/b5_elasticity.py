"""B5, elasticity: how fast a pool grows when work arrives.

(a) spike -> first new worker taking a job: pool `elastic` (1..4 processes, 1 slot each, target_backlog 1)
    gets a burst of BURST sleep jobs; measured from the moment the burst is sent to the `started_at` of the
    first job whose first attempt ran on a worker process other than the one that took the burst's first job
    (the attempts history names the worker node). The autoscaler's scale-out decision time (its scaling
    event) splits that into "decide" and "start a process".
(b) job at zero -> started: pool `cold` (0..1 process) has scaled to zero processes; one no-op job is
    submitted; measured from its `created_at` to its `started_at`.

Each is repeated REPEATS times, waiting for the pool to scale back in (idle_after) between repeats; medians.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Table, log, median, write_results
from bench.httpclient import fetch_once, port_of
from bench.jobs import first_attempt_workers, job_body, job_times
from bench.procs import RunningInstance, kvern_instance, temp_dir, write_project
from bench.specs import NOOP_TASK, SLEEP_TASK, elastic_spec
from kvern.broker.admin import queue_depths
from kvern.constants import ROLE_ADMIN
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.jobs.store import JobStore
from kvern.processes import pool_group

REPEATS = 5
BURST = 4
JOB_SECONDS = 3.0
IDLE_AFTER_S = 2.0
WAIT_TIMEOUT_S = 90.0
TARGET_S = 3.0
LIVE = frozenset({"STARTING", "RUNNING", "BACKOFF", "STOPPING"})


@dataclass(frozen=True)
class SpikeSample:
    to_new_worker_s: float
    to_decision_s: float | None


def live_processes(running: RunningInstance, pool: str) -> int:
    """Processes of the pool that exist at all (a stopping one still finishes its job)."""
    group = pool_group(pool)
    return sum(1 for p in running.instance.supervisor.processes() if p.group == group and p.state in LIVE)


def consumers(running: RunningInstance, queue: str) -> int:
    depth = queue_depths(running.config.broker_urls[ROLE_ADMIN], (queue,))[queue]
    return depth["consumers"] if depth else 0


def wait_for_processes(running: RunningInstance, pool: str, count: int) -> None:
    """Until the pool has exactly `count` live processes and its queue as many consumers."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while live_processes(running, pool) != count or consumers(running, pool) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pool {pool} did not settle at {count} processes in {WAIT_TIMEOUT_S:g}s")
        time.sleep(0.2)


async def _submit(url: str, raws: list[bytes]) -> list[str]:
    results = await asyncio.gather(*(fetch_once(port_of(url), raw, 30) for raw in raws))
    if any(r.status != 202 for r in results):
        raise RuntimeError(f"submissions refused: {[r.status for r in results]}")
    return [str(r.json()["id"]) for r in results]


def wait_started(store: JobStore, ids: list[str]) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while any(t.started_at is None for t in job_times(store, ids)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs {ids} did not all start in {WAIT_TIMEOUT_S:g}s")
        time.sleep(0.1)


def _decision_after(store: JobStore, pool: str, moment: float) -> float | None:
    outs = [
        e.at
        for e in ScalingEventLog(store.engine).latest(pool, limit=10)
        if e.at >= moment and e.to_processes > e.from_processes
    ]
    return min(outs) - moment if outs else None


def spike_sample(running: RunningInstance, store: JobStore) -> SpikeSample:
    wait_for_processes(running, "elastic", 1)
    raws = [job_body(SLEEP_TASK, [JOB_SECONDS], headers=running.auth_headers) for _ in range(BURST)]
    sent = time.time()
    ids = asyncio.run(_submit(running.url, raws))
    wait_started(store, ids)
    attempts = sorted(first_attempt_workers(store, ids).values(), key=lambda item: item[1])
    initial = attempts[0][0]
    first_new = min(started for worker, started in attempts if worker != initial)
    return SpikeSample(first_new - sent, _decision_after(store, "elastic", sent))


def cold_sample(running: RunningInstance, store: JobStore) -> float:
    wait_for_processes(running, "cold", 0)
    ids = asyncio.run(_submit(running.url, [job_body(NOOP_TASK, headers=running.auth_headers)]))
    wait_started(store, ids)
    (times,) = job_times(store, ids)
    assert times.started_at is not None
    return times.started_at - times.created_at


def measure(running: RunningInstance) -> dict[str, Any]:
    store = JobStore(running.config.store_url)
    spikes: list[SpikeSample] = []
    colds: list[float] = []
    try:
        for index in range(REPEATS):
            spikes.append(spike_sample(running, store))
            log(f"spike {index + 1}/{REPEATS}: first new worker took a job after {spikes[-1].to_new_worker_s:.2f}s")
        for index in range(REPEATS):
            colds.append(cold_sample(running, store))
            log(f"cold {index + 1}/{REPEATS}: job at zero started after {colds[-1]:.2f}s")
    finally:
        store.close()
    decisions = [s.to_decision_s for s in spikes if s.to_decision_s is not None]
    return {
        "spike_to_new_worker_s": median(s.to_new_worker_s for s in spikes),
        "spike_to_decision_s": median(decisions),
        "zero_to_started_s": median(colds),
        "spike_samples": [vars(s) for s in spikes],
        "cold_samples": colds,
    }


def tables(f: dict[str, Any]) -> list[Table]:
    spike = f["spike_samples"]
    return [
        Table(
            f"B5 elasticity (median of {REPEATS}; target <= {TARGET_S:g}s)",
            ["measure", "median (s)", "samples (s)"],
            [
                [
                    f"(a) burst of {BURST} -> first job on a new worker",
                    f["spike_to_new_worker_s"],
                    ", ".join(f"{s['to_new_worker_s']:.2f}" for s in spike),
                ],
                [
                    "    of which: burst -> scale-out decision",
                    f["spike_to_decision_s"],
                    ", ".join(f"{s['to_decision_s']:.2f}" if s["to_decision_s"] is not None else "n/a" for s in spike),
                ],
                [
                    "(b) job at zero processes -> started",
                    f["zero_to_started_s"],
                    ", ".join(f"{v:.2f}" for v in f["cold_samples"]),
                ],
            ],
        )
    ]


def run(work: Path) -> dict[str, Any]:
    spec = write_project(work / "kvern", elastic_spec(IDLE_AFTER_S), reports=False)
    with kvern_instance(spec, work / "kvern" / ".kvern") as running:
        figures = measure(running)
    figures["targets"] = {
        f"spike -> new worker <= {TARGET_S:g}s": figures["spike_to_new_worker_s"] <= TARGET_S,
        f"zero -> started <= {TARGET_S:g}s": figures["zero_to_started_s"] <= TARGET_S,
    }
    write_results("B5", figures, tables(figures))
    return figures


def main() -> dict[str, Any]:
    with temp_dir("b5") as work:
        return run(work)
