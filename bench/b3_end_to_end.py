"""B3, end-to-end throughput: no-op jobs/s from the first submit to the last recorded outcome.

- kvern: N jobs POSTed through nginx (64 keep-alive connections); the outcome is the job store's record
  (`finished_at`). One worker process, concurrency 4, kvern's at-least-once settings (acks late, prefetch 1,
  confirms, fenced attempts in the store).
- bare Celery, same broker node (kvern's private one, its own vhost), same task, one worker process of
  concurrency 4: `default` (Celery's defaults: early ack, prefetch 4 per slot, no confirms) and `late`
  (acks_late + prefetch 1). Jobs are sent with `apply_async` from one Python process; bare Celery records no
  outcome, so each task's finish time is appended to a file by a `task_postrun` handler (bench.workloads).

Rounds alternate kvern / default / late; medians and ratios of medians.
"""

from __future__ import annotations

import asyncio
import functools
import os
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kombu.entity import Queue

from bench.bare_worker import QUORUM_VARIANTS
from bench.common import REPO, Table, log, median, ratio, write_results
from bench.cpu import CpuWindow, classifier, cpu_table, median_cores
from bench.httpclient import port_of
from bench.jobs import job_body, outcome_summary, submit_many
from bench.procs import ProcessGroup, RunningInstance, kvern_instance, process_group, spawn, temp_dir, write_project
from bench.specs import NOOP_CONCURRENCY, NOOP_TASK, noop_spec
from bench.workloads import DONE_FILE_ENV
from bench.workloads import app as bench_app
from bench.workloads import noop as noop_task
from kvern.broker.topology import work_queue
from kvern.constants import ROLE_WORKER
from kvern.jobs.store import JobStore

JOBS = 2000
ROUNDS = 3
CONNECTIONS = 64
DRAIN_TIMEOUT_S = 120.0
POLL_S = 0.02
BARE_VARIANTS = {"default": "bare-default", "late": "bare-late", "late-quorum": "bare-late-quorum"}
TIMESTAMP = struct.Struct("d")


@dataclass(frozen=True)
class RoundResult:
    jobs: int
    submit_s: float  # first submit to last submit answered
    total_s: float  # first submit to last outcome

    @property
    def per_s(self) -> float:
        return self.jobs / self.total_s

    @property
    def submit_per_s(self) -> float:
        return self.jobs / self.submit_s


# -- kvern --------------------------------------------------------------------------------------------------


def kvern_round(running: RunningInstance, store: JobStore) -> RoundResult:
    started = time.time()
    results = asyncio.run(submit_many(port_of(running.url), job_body(NOOP_TASK), JOBS, CONNECTIONS, 30))
    submitted = time.time()
    accepted = sum(1 for r in results if r.status == 202)
    if accepted < JOBS:
        log(f"kvern accepted {accepted} of {JOBS} submissions")
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        done, last = outcome_summary(store, started - 0.001)
        if done >= accepted and last is not None:
            return RoundResult(accepted, submitted - started, last - started)
        if time.monotonic() > deadline:
            raise RuntimeError(f"kvern recorded {done} of {accepted} outcomes in {DRAIN_TIMEOUT_S:g}s")
        time.sleep(POLL_S)


# -- bare Celery --------------------------------------------------------------------------------------------


def start_bare_workers(group: ProcessGroup, broker_url: str, folder: Path) -> tuple[dict[str, Path], dict[int, str]]:
    """The bare workers (one per variant); returns their finish-time files and their pids (for bench.cpu)."""
    done_files, pids = {}, {}
    for variant, queue in BARE_VARIANTS.items():
        done_file = folder / f"{variant}.done"
        done_file.touch()
        env = {**os.environ, "BENCH_BROKER_URL": broker_url, DONE_FILE_ENV: str(done_file)}
        command = [sys.executable, "-m", "bench.bare_worker", variant, queue, str(NOOP_CONCURRENCY)]
        worker = group.add(spawn(f"bare celery {variant}", command, folder / f"{variant}.log", env=env, cwd=REPO))
        done_files[variant] = done_file
        pids[worker.pid] = "bare Celery workers"
    return done_files, pids


def _finish_times(done_file: Path) -> list[float]:
    data = done_file.read_bytes()
    usable = len(data) - len(data) % TIMESTAMP.size
    return [value for (value,) in TIMESTAMP.iter_unpack(data[:usable])]


def bare_queue(variant: str) -> str | Queue:
    """The queue to send to: a quorum queue must be named with its arguments, or the send redeclares it."""
    name = BARE_VARIANTS[variant]
    return work_queue(name) if variant in QUORUM_VARIANTS else name


def bare_round(variant: str, done_file: Path) -> RoundResult:
    done_file.write_bytes(b"")
    queue = bare_queue(variant)
    started = time.time()
    with bench_app.producer_or_acquire() as producer:
        for _ in range(JOBS):
            noop_task.apply_async(queue=queue, producer=producer)
    submitted = time.time()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while len(finished := _finish_times(done_file)) < JOBS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"bare Celery ({variant}) ran {len(finished)} of {JOBS} tasks")
        time.sleep(POLL_S)
    return RoundResult(JOBS, submitted - started, max(finished) - started)


def wait_consuming(broker_url: str, done_files: dict[str, Path]) -> None:
    """One warm-up job per bare variant: the workers are up and consuming before anything is timed."""
    bench_app.conf.broker_url = broker_url
    for variant, done_file in done_files.items():
        noop_task.apply_async(queue=bare_queue(variant))
        deadline = time.monotonic() + 60
        while not _finish_times(done_file):
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare Celery worker ({variant}) did not start consuming")
            time.sleep(0.1)


# -- the scenario -------------------------------------------------------------------------------------------


def _figures(rounds: list[RoundResult]) -> dict[str, Any]:
    return {
        "jobs_per_s": median(r.per_s for r in rounds),
        "submit_per_s": median(r.submit_per_s for r in rounds),
        "rounds": [vars(r) | {"per_s": r.per_s} for r in rounds],
    }


def measure(running: RunningInstance, done_files: dict[str, Path], bare_pids: dict[int, str]) -> dict[str, Any]:
    store = JobStore(running.config.store_url)
    results: dict[str, list[RoundResult]] = {"kvern": [], **{variant: [] for variant in BARE_VARIANTS}}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in results}
    try:
        warmup = asyncio.run(submit_many(port_of(running.url), job_body(NOOP_TASK), 50, 8, 30))
        log(f"warm-up: kvern accepted {sum(r.status == 202 for r in warmup)} of 50")
        time.sleep(2)
        classify = classifier([running.state_dir], bare_pids)
        for index in range(ROUNDS):
            rounds: list[tuple[str, Callable[[], RoundResult]]] = [("kvern", lambda: kvern_round(running, store))]
            rounds += [(v, functools.partial(bare_round, v, f)) for v, f in done_files.items()]
            for name, one_round in rounds:
                with CpuWindow() as window:
                    results[name].append(one_round())
                cpu[name].append(window.cores(classify))
            log(f"round {index + 1}/{ROUNDS}: " + ", ".join(f"{k} {v[-1].per_s:,.0f}/s" for k, v in results.items()))
    finally:
        store.close()
    return {name: _figures(rounds) | {"cpu_cores": median_cores(cpu[name])} for name, rounds in results.items()}


def tables(f: dict[str, Any]) -> list[Table]:
    k, d, late, lq = f["kvern"], f["bare_default"], f["bare_late"], f["bare_late_quorum"]
    rows = [
        ["kvern (HTTP submit, record, confirm, acks late, prefetch 1)", k["jobs_per_s"], k["submit_per_s"]],
        ["bare Celery, defaults (early ack, prefetch 4x)", d["jobs_per_s"], d["submit_per_s"]],
        ["bare Celery, acks_late + prefetch 1", late["jobs_per_s"], late["submit_per_s"]],
        ["diagnostic: bare Celery, acks_late + prefetch 1, kvern's quorum queue", lq["jobs_per_s"], lq["submit_per_s"]],
    ]
    main = Table(
        f"B3 end-to-end: {JOBS} no-op jobs, first submit to last outcome (median of {ROUNDS} alternating rounds; "
        f"1 worker process x {NOOP_CONCURRENCY})",
        ["system", "jobs/s end to end", "submitted/s"],
        rows,
    )
    ratios = Table(
        "B3 ratios",
        ["ratio", "value"],
        [[name, value] for name, value in f["ratios"].items()],
    )
    cpu = cpu_table(
        "B3 where the CPU went during the rounds (median cores)",
        {"kvern": k["cpu_cores"], "bare defaults": d["cpu_cores"], "bare acks_late+prefetch1": late["cpu_cores"]},
    )
    return [main, ratios, cpu]


def run(work: Path) -> dict[str, Any]:
    spec = write_project(work / "kvern", noop_spec(), reports=False)
    with kvern_instance(spec, work / "kvern" / ".kvern") as running, process_group() as group:
        broker_url = running.config.broker_urls[ROLE_WORKER]
        done_files, bare_pids = start_bare_workers(group, broker_url, work)
        wait_consuming(broker_url, done_files)
        measured = measure(running, done_files, bare_pids)
    k = measured["kvern"]["jobs_per_s"]
    figures: dict[str, Any] = {
        "jobs": JOBS,
        "worker_concurrency": NOOP_CONCURRENCY,
        "kvern": measured["kvern"],
        "bare_default": measured["default"],
        "bare_late": measured["late"],
        "bare_late_quorum": measured["late-quorum"],
    }
    figures["ratios"] = {
        "kvern / bare Celery defaults": ratio(k, measured["default"]["jobs_per_s"]),
        "kvern / bare Celery acks_late+prefetch1": ratio(k, measured["late"]["jobs_per_s"]),
        "kvern / bare Celery acks_late+prefetch1 on a quorum queue": ratio(k, measured["late-quorum"]["jobs_per_s"]),
        "bare Celery: quorum / classic queue (acks_late+prefetch1)": ratio(
            measured["late-quorum"]["jobs_per_s"], measured["late"]["jobs_per_s"]
        ),
    }
    figures["targets"] = {
        "kvern >= 1.0x bare Celery defaults": figures["ratios"]["kvern / bare Celery defaults"] >= 1.0,
        "kvern well above acks_late+prefetch1 (>= 1.5x)": figures["ratios"]["kvern / bare Celery acks_late+prefetch1"]
        >= 1.5,
    }
    write_results("B3", figures, tables(figures))
    return figures


def main() -> dict[str, Any]:
    with temp_dir("b3") as work:
        return run(work)
