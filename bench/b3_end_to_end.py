"""B3, end-to-end throughput: no-op jobs/s from the first submit to the last recorded outcome.

- kvern: N jobs POSTed through nginx (64 keep-alive connections); the outcome is the job store's record
  (`finished_at`). One worker process, concurrency 4, kvern's at-least-once settings (acks late, prefetch 1,
  confirms, fenced attempts in the store).
- kvern, PostgreSQL job store: the same spec with `[store] url` on the local PostgreSQL (127.0.0.1:5432, database
  `test`), in a schema created for the run (`kvern_bench_<hex>`, the URL's search_path) and dropped afterwards.
  Its own instance (and private broker node) is up during the whole run, idle while the others are measured.
- kvern, prefetch 8: the SQLite spec with the pool's `prefetch = 8`: a task process hands its outcome to the
  node's writer and returns, and the message is acked once that outcome committed (worker/deferred_ack.py).
  Its own instance too, idle while the others are measured.
- bare Celery, same broker node (kvern's private one, its own vhost), same task, one worker process of
  concurrency 4, logging at INFO as kvern's workers do: `default` (Celery's defaults: early ack, prefetch 4 per
  slot, no confirms), `late` (acks_late + prefetch 1) and `same` (kvern's guarantees: acks_late, reject on a
  lost worker process, prefetch 1, a quorum queue declared as kvern's, publisher confirms). Jobs are sent with
  `apply_async` from one Python process; bare Celery records no outcome, so each task's finish time is appended
  to a file by a `task_postrun` handler (bench.workloads).
- kvern, PostgreSQL job store, prefetch 8: the PostgreSQL spec with `prefetch = 8` (its own schema and instance).
- drain: the queue is filled in advance and only the workers are measured, from the first outcome to the last:
  kvern, prefetch 1 and prefetch 8 (the pool's worker and the controller stopped while the jobs are submitted,
  then the worker started) and bare Celery defaults (a worker started on a queue already holding the jobs).

Rounds alternate kvern / kvern on PostgreSQL / kvern prefetch 8 / kvern on PostgreSQL prefetch 8 / default / late /
same / kvern drain / kvern prefetch 8 drain / default drain; medians and ratios of medians.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import struct
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy
from kombu.connection import Connection
from kombu.entity import Queue

from bench.bare_worker import QUORUM_VARIANTS
from bench.common import REPO, Table, log, median, ratio, write_results
from bench.cpu import Classifier, CpuWindow, Process, classifier, cpu_table, median_cores
from bench.httpclient import port_of
from bench.jobs import job_body, outcome_summary, submit_many
from bench.procs import ProcessGroup, RunningInstance, kvern_instance, process_group, spawn, temp_dir, write_project
from bench.specs import NOOP_CONCURRENCY, NOOP_PREFETCH, NOOP_TASK, noop_spec
from bench.workloads import DONE_FILE_ENV
from bench.workloads import app as bench_app
from bench.workloads import noop as noop_task
from kvern.broker.topology import work_queue
from kvern.constants import PROGRAM_CONTROLLER, ROLE_ADMIN
from kvern.jobs import schema
from kvern.jobs.store import JobStore
from kvern.processes import pool_program_name
from kvern.runtime.instance import owned_pids
from kvern.runtime.supervisor import Supervisor

JOBS = 2000
ROUNDS = 3
CONNECTIONS = 64
DRAIN_TIMEOUT_S = 120.0
POLL_S = 0.02
BARE_VARIANTS = {"default": "bare-default", "late": "bare-late", "same": "bare-same"}
CONFIRMING_VARIANTS = frozenset({"same"})  # its sender waits for the broker's confirm of each publish
BARE_DRAIN_VARIANT, BARE_DRAIN_QUEUE = "default", "bare-drain"
NOOP_POOL = "noop"
TIMESTAMP = struct.Struct("d")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_GROUP = "PostgreSQL server (job store)"
IDLE_INSTANCE_GROUP = "the other kvern instance (idle)"
HEADLINE_FIGURES = (  # at the top level of bench/results/B3.json: what issue 12's targets read
    "kvern_jobs_per_s",
    "kvern_pg_jobs_per_s",
    "celery_default_jobs_per_s",
    "celery_same_guarantees_jobs_per_s",
    "kvern_drain_jobs_per_s",
    "celery_default_drain_jobs_per_s",
    "kvern_prefetch_jobs_per_s",
    "kvern_pg_prefetch_jobs_per_s",
    "kvern_prefetch_drain_jobs_per_s",
)


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
    accepted = kvern_submit(running)
    submitted = time.time()
    last = wait_outcomes(store, started, accepted)
    return RoundResult(accepted, submitted - started, last - started)


def kvern_submit(running: RunningInstance) -> int:
    """JOBS no-op jobs POSTed through the front door; how many were accepted."""
    results = asyncio.run(
        submit_many(port_of(running.url), job_body(NOOP_TASK, headers=running.auth_headers), JOBS, CONNECTIONS, 30)
    )
    accepted = sum(1 for r in results if r.status == 202)
    if accepted < JOBS:
        log(f"kvern accepted {accepted} of {JOBS} submissions")
    return accepted


def wait_outcomes(store: JobStore, started: float, accepted: int) -> float:
    """The last finished_at, once every job created since `started` has its outcome."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        done, last = outcome_summary(store, started - 0.001)
        if done >= accepted and last is not None:
            return last
        if time.monotonic() > deadline:
            raise RuntimeError(f"kvern recorded {done} of {accepted} outcomes in {DRAIN_TIMEOUT_S:g}s")
        time.sleep(POLL_S)


def first_outcome(store: JobStore, started: float) -> float:
    jobs = schema.jobs
    query = sqlalchemy.select(sqlalchemy.func.min(jobs.c.finished_at)).where(jobs.c.created_at >= started - 0.001)
    with store.engine.connect() as conn:
        return float(conn.execute(query).scalar_one())


def kvern_drain_round(running: RunningInstance, store: JobStore) -> RoundResult:
    """The pool's worker is stopped (and the controller, which would start it) while the jobs are submitted;
    then the worker alone drains the queue: measured from the first outcome to the last."""
    supervisor = Supervisor(running.state_dir)
    names = {p.name: p.full_name for p in supervisor.processes()}
    worker, controller = names[pool_program_name(NOOP_POOL, 0)], names[PROGRAM_CONTROLLER]
    supervisor.stop(controller)
    supervisor.stop(worker)
    try:
        started = time.time()
        accepted = kvern_submit(running)
        submitted = time.time()
        supervisor.start(worker)
        last = wait_outcomes(store, started, accepted)
    finally:
        supervisor.start(worker)
        supervisor.start(controller)
    return RoundResult(accepted, submitted - started, last - first_outcome(store, started))


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A store URL on the local PostgreSQL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"kvern_bench_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(POSTGRES_ADMIN_URL)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        log(f"PostgreSQL job store: schema {schema}")
        try:
            yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        finally:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            log(f"PostgreSQL job store: schema {schema} dropped")
    finally:
        engine.dispose()


def postgres_spec(store_url: str, prefetch: int = 1) -> str:
    return noop_spec(prefetch=prefetch) + f'\n[store]\nurl = "{store_url}"\n'


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
    started = time.time()
    publish_noops(variant, bare_queue(variant), JOBS)
    submitted = time.time()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while len(finished := _finish_times(done_file)) < JOBS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"bare Celery ({variant}) ran {len(finished)} of {JOBS} tasks")
        time.sleep(POLL_S)
    return RoundResult(JOBS, submitted - started, max(finished) - started)


def publish_noops(variant: str, queue: str | Queue, jobs: int) -> None:
    options = {"confirm_publish": True} if variant in CONFIRMING_VARIANTS else {}
    with (
        Connection(bench_app.conf.broker_url, transport_options=options) as connection,
        connection.Producer() as producer,
    ):
        for _ in range(jobs):
            noop_task.apply_async(queue=queue, producer=producer)


def bare_drain_round(group: ProcessGroup, broker_url: str, folder: Path) -> RoundResult:
    """A bare worker (defaults) started on a queue that already holds the jobs: first outcome to the last."""
    done_file = folder / "drain.done"
    done_file.write_bytes(b"")
    with Connection(broker_url) as connection:
        bench_app.amqp.queues[BARE_DRAIN_QUEUE].bind(connection.default_channel).declare()
    started = time.time()
    publish_noops(BARE_DRAIN_VARIANT, BARE_DRAIN_QUEUE, JOBS)
    submitted = time.time()
    env = {**os.environ, "BENCH_BROKER_URL": broker_url, DONE_FILE_ENV: str(done_file)}
    command = [sys.executable, "-m", "bench.bare_worker", BARE_DRAIN_VARIANT, BARE_DRAIN_QUEUE, str(NOOP_CONCURRENCY)]
    worker = group.add(spawn("bare celery drain", command, folder / "drain.log", env=env, cwd=REPO))
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while len(finished := _finish_times(done_file)) < JOBS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare Celery (drain) ran {len(finished)} of {JOBS} tasks")
            time.sleep(POLL_S)
    finally:
        worker.stop()
    return RoundResult(JOBS, submitted - started, max(finished) - min(finished))


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


def round_classifier(active: Path, idle: list[Path], bare_pids: dict[int, str]) -> Classifier:
    """bench.cpu's classifier for the `active` instance; the `idle` ones and the PostgreSQL server apart."""
    base = classifier([active], bare_pids)
    idle_pids = {pid for state_dir in idle for pid in owned_pids(state_dir)}

    def classify(process: Process) -> str:
        if process.pid in idle_pids or process.ppid in idle_pids:
            return IDLE_INSTANCE_GROUP
        if process.command.split(maxsplit=1)[0].rsplit("/", 1)[-1].startswith("postgres"):
            return POSTGRES_GROUP
        return base(process)

    return classify


def measure(
    instances: dict[str, RunningInstance],
    done_files: dict[str, Path],
    bare_pids: dict[int, str],
    bare_drain: Callable[[], RoundResult],
) -> dict[str, Any]:
    """`instances`: "kvern" (whose broker the bare workers use too), "kvern-pg", "kvern-prefetch" and
    "kvern-pg-prefetch"."""
    stores = {name: JobStore(running.config.store_url) for name, running in instances.items()}
    drains: dict[str, Callable[[], RoundResult]] = {
        "kvern-drain": functools.partial(kvern_drain_round, instances["kvern"], stores["kvern"]),
        "kvern-prefetch-drain": functools.partial(
            kvern_drain_round, instances["kvern-prefetch"], stores["kvern-prefetch"]
        ),
        "default-drain": bare_drain,
    }
    results: dict[str, list[RoundResult]] = {name: [] for name in (*instances, *BARE_VARIANTS, *drains)}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in results}
    dirs = {name: running.state_dir for name, running in instances.items()}

    def others(name: str) -> list[Path]:
        return [d for n, d in dirs.items() if n != name]

    try:
        for name, running in instances.items():
            warmup = asyncio.run(
                submit_many(port_of(running.url), job_body(NOOP_TASK, headers=running.auth_headers), 50, 8, 30)
            )
            log(f"warm-up: {name} accepted {sum(r.status == 202 for r in warmup)} of 50")
        time.sleep(2)
        classifiers = {
            **{name: round_classifier(dirs[name], others(name), bare_pids) for name in instances},
            **{name: round_classifier(dirs["kvern"], others("kvern"), bare_pids) for name in BARE_VARIANTS},
        }
        for index in range(ROUNDS):
            rounds: list[tuple[str, Callable[[], RoundResult]]] = [
                (name, functools.partial(kvern_round, running, stores[name])) for name, running in instances.items()
            ]
            rounds += [(v, functools.partial(bare_round, v, f)) for v, f in done_files.items()]
            for name, one_round in rounds:
                with CpuWindow() as window:
                    results[name].append(one_round())
                cpu[name].append(window.cores(classifiers[name]))
            for name, drain in drains.items():  # workers only: their CPU is in the rounds above
                results[name].append(drain())
                log(f"{name}: {results[name][-1].per_s:,.0f}/s")
            log(f"round {index + 1}/{ROUNDS}: " + ", ".join(f"{k} {v[-1].per_s:,.0f}/s" for k, v in results.items()))
    finally:
        for store in stores.values():
            store.close()
    return {
        name: _figures(rounds) | ({"cpu_cores": median_cores(cpu[name])} if cpu[name] else {})
        for name, rounds in results.items()
    }


def tables(f: dict[str, Any]) -> list[Table]:
    k, pg, d, late, same = f["kvern"], f["kvern_postgresql"], f["bare_default"], f["bare_late"], f["bare_same"]
    kd, dd, kp = f["kvern_drain"], f["bare_default_drain"], f["kvern_prefetch"]
    kpd, pgp = f["kvern_prefetch_drain"], f["kvern_postgresql_prefetch"]
    rows = [
        ["kvern (HTTP submit, record, confirm, acks late, prefetch 1)", k["jobs_per_s"], k["submit_per_s"]],
        [f"kvern, prefetch {NOOP_PREFETCH} (ack after the outcome's commit)", kp["jobs_per_s"], kp["submit_per_s"]],
        ["kvern, PostgreSQL job store", pg["jobs_per_s"], pg["submit_per_s"]],
        [f"kvern, PostgreSQL job store, prefetch {NOOP_PREFETCH}", pgp["jobs_per_s"], pgp["submit_per_s"]],
        ["bare Celery, defaults (early ack, prefetch 4x)", d["jobs_per_s"], d["submit_per_s"]],
        ["bare Celery, acks_late + prefetch 1", late["jobs_per_s"], late["submit_per_s"]],
        [
            "bare Celery, kvern's guarantees (acks_late, prefetch 1, quorum queue, confirms)",
            same["jobs_per_s"],
            same["submit_per_s"],
        ],
        ["drain: kvern (queue filled in advance, worker only)", kd["jobs_per_s"], kd["submit_per_s"]],
        [f"drain: kvern, prefetch {NOOP_PREFETCH}", kpd["jobs_per_s"], kpd["submit_per_s"]],
        ["drain: bare Celery defaults (queue filled in advance, worker only)", dd["jobs_per_s"], dd["submit_per_s"]],
    ]
    main = Table(
        f"B3 end-to-end: {JOBS} no-op jobs, first submit to last outcome; drain: first outcome to last (median of "
        f"{ROUNDS} alternating rounds; 1 worker process x {NOOP_CONCURRENCY}, both logging at INFO)",
        ["system", "jobs/s", "submitted/s"],
        rows,
    )
    ratios = Table(
        "B3 ratios",
        ["ratio", "value"],
        [[name, value] for name, value in f["ratios"].items()],
    )
    cpu = cpu_table(
        "B3 where the CPU went during the rounds (median cores)",
        {
            "kvern": k["cpu_cores"],
            "kvern, PostgreSQL": pg["cpu_cores"],
            f"kvern, prefetch {NOOP_PREFETCH}": kp["cpu_cores"],
            f"kvern, PostgreSQL, prefetch {NOOP_PREFETCH}": pgp["cpu_cores"],
            "bare defaults": d["cpu_cores"],
            "bare acks_late+prefetch1": late["cpu_cores"],
            "bare, kvern's guarantees": same["cpu_cores"],
        },
    )
    return [main, ratios, cpu]


def run(work: Path) -> dict[str, Any]:
    spec = write_project(work / "kvern", noop_spec(), reports=False)
    with contextlib.ExitStack() as stack:
        store_url = stack.enter_context(postgres_schema())
        pg_spec = write_project(work / "kvern-pg", postgres_spec(store_url), reports=False)
        running = stack.enter_context(kvern_instance(spec, work / "kvern" / ".kvern"))
        running_pg = stack.enter_context(kvern_instance(pg_spec, work / "kvern-pg" / ".kvern"))
        prefetch_spec = write_project(work / "kvern-prefetch", noop_spec(prefetch=NOOP_PREFETCH), reports=False)
        running_prefetch = stack.enter_context(kvern_instance(prefetch_spec, work / "kvern-prefetch" / ".kvern"))
        pg_prefetch_url = stack.enter_context(postgres_schema())
        pg_prefetch_spec = write_project(
            work / "kvern-pg-prefetch", postgres_spec(pg_prefetch_url, NOOP_PREFETCH), reports=False
        )
        running_pg_prefetch = stack.enter_context(
            kvern_instance(pg_prefetch_spec, work / "kvern-pg-prefetch" / ".kvern")
        )
        group = stack.enter_context(process_group())
        broker_url = running.config.broker_urls[ROLE_ADMIN]  # bare Celery declares its own queues: configure
        done_files, bare_pids = start_bare_workers(group, broker_url, work)
        wait_consuming(broker_url, done_files)
        bare_drain = functools.partial(bare_drain_round, group, broker_url, work)
        instances = {
            "kvern": running,
            "kvern-pg": running_pg,
            "kvern-prefetch": running_prefetch,
            "kvern-pg-prefetch": running_pg_prefetch,
        }
        measured = measure(instances, done_files, bare_pids, bare_drain)
    per_s = {name: figures["jobs_per_s"] for name, figures in measured.items()}
    k, pg, default, late, same = (per_s[n] for n in ("kvern", "kvern-pg", "default", "late", "same"))
    figures: dict[str, Any] = {
        "jobs": JOBS,
        "worker_concurrency": NOOP_CONCURRENCY,
        "kvern_jobs_per_s": k,
        "kvern_pg_jobs_per_s": pg,
        "kvern_prefetch_jobs_per_s": per_s["kvern-prefetch"],
        "kvern_prefetch": measured["kvern-prefetch"],
        "kvern_pg_prefetch_jobs_per_s": per_s["kvern-pg-prefetch"],
        "kvern_postgresql_prefetch": measured["kvern-pg-prefetch"],
        "kvern_prefetch_drain_jobs_per_s": per_s["kvern-prefetch-drain"],
        "kvern_prefetch_drain": measured["kvern-prefetch-drain"],
        "celery_default_jobs_per_s": default,
        "celery_same_guarantees_jobs_per_s": same,
        "kvern_drain_jobs_per_s": per_s["kvern-drain"],
        "celery_default_drain_jobs_per_s": per_s["default-drain"],
        "kvern": measured["kvern"],
        "kvern_postgresql": measured["kvern-pg"],
        "bare_default": measured["default"],
        "bare_late": measured["late"],
        "bare_same": measured["same"],
        "kvern_drain": measured["kvern-drain"],
        "bare_default_drain": measured["default-drain"],
    }
    figures["ratios"] = {
        "kvern / bare Celery with kvern's guarantees": ratio(k, same),
        "kvern / bare Celery defaults": ratio(k, default),
        "kvern / bare Celery acks_late+prefetch1": ratio(k, late),
        f"kvern, prefetch {NOOP_PREFETCH} / bare Celery with kvern's guarantees": ratio(per_s["kvern-prefetch"], same),
        f"kvern, prefetch {NOOP_PREFETCH} / bare Celery defaults": ratio(per_s["kvern-prefetch"], default),
        "kvern (PostgreSQL store) / bare Celery with kvern's guarantees": ratio(pg, same),
        "kvern (PostgreSQL store) / bare Celery defaults": ratio(pg, default),
        f"kvern (PostgreSQL store), prefetch {NOOP_PREFETCH} / bare Celery with kvern's guarantees": ratio(
            per_s["kvern-pg-prefetch"], same
        ),
        f"kvern (PostgreSQL store), prefetch {NOOP_PREFETCH} / bare Celery defaults": ratio(
            per_s["kvern-pg-prefetch"], default
        ),
        "drain: kvern / bare Celery defaults": ratio(per_s["kvern-drain"], per_s["default-drain"]),
        f"drain: kvern, prefetch {NOOP_PREFETCH} / bare Celery defaults": ratio(
            per_s["kvern-prefetch-drain"], per_s["default-drain"]
        ),
        "kvern: PostgreSQL / SQLite job store": ratio(pg, k),
    }
    figures["targets"] = {
        "kvern >= 1.0x bare Celery with the same guarantees": figures["ratios"][
            "kvern / bare Celery with kvern's guarantees"
        ]
        >= 1.0,
        "kvern >= 0.7x bare Celery defaults": figures["ratios"]["kvern / bare Celery defaults"] >= 0.7,
        "drain: kvern >= 0.8x bare Celery defaults' drain": figures["ratios"]["drain: kvern / bare Celery defaults"]
        >= 0.8,
    }
    write_results("B3", figures, tables(figures), top_level=HEADLINE_FIGURES)
    return figures


def main() -> dict[str, Any]:
    with temp_dir("b3") as work:
        return run(work)
