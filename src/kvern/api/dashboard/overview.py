"""The dashboard's live overview: the last hour's activity as rates, queue wait and run time per task, pools
with their scaling decisions, queues, web heads and broker, in one snapshot a head pushes to every open page.

One `OverviewFeed` per head takes a snapshot every `INTERVAL_S` while some page watches, whatever the number of
pages: the store and the broker are read once per interval per head, never per connection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kvern.autoscale.loop import read_desired
from kvern.broker.admin import queue_depths
from kvern.constants import ROLE_ADMIN
from kvern.errors import KvernError
from kvern.jobs.activity import JobTimes, recent_job_times
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import ScalingEvent
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.processes import RUNNING_STATES, ProcessInfo, pool_group, web_slot
from kvern.runtime.supervisor import Supervisor
from kvern.runtime.web_heads import load_live
from kvern.runtime_config import RuntimeConfig
from kvern.spec import Spec

log = logging.getLogger("kvern.api")

INTERVAL_S = 2.0
WINDOW_S = 3600  # the charts' span
BUCKET_S = 10  # one point per 10 s, as a rate per second
SERIES = ("submitted", "started", "succeeded", "failed", "dead")
FINISHED_SERIES = {status.value: status.value for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD)}
DECISIONS_SHOWN = 8
LATENCY_BUCKET_S = 60  # queue wait and run time percentiles per minute
TASKS_CHARTED = 6
RATE_WINDOW_S = 60  # a queue's in/out rates: over the last minute


def activity_series(times: Iterable[JobTimes], now: float) -> dict[str, Any]:
    """Per series, jobs per second in each `BUCKET_S` bucket of the hour ending at `now` (oldest first)."""
    buckets = WINDOW_S // BUCKET_S
    end = math.floor(now / BUCKET_S) * BUCKET_S + BUCKET_S
    counts = {name: [0] * buckets for name in SERIES}

    def count(name: str, at: float | None) -> None:
        index = buckets - 1 - int((end - at) // BUCKET_S) if at is not None else -1
        if 0 <= index < buckets:
            counts[name][index] += 1

    for job in times:
        count("submitted", job.created_at)
        count("started", job.started_at)
        if job.status in FINISHED_SERIES:
            count(FINISHED_SERIES[job.status], job.finished_at)
    rates = {name: [round(n / BUCKET_S, 2) for n in values] for name, values in counts.items()}
    return {"bucket_s": BUCKET_S, "end": end, "series": rates}


def queue_rates(times: Iterable[JobTimes], queue_of: Callable[[str], str], now: float) -> dict[str, dict[str, float]]:
    """Per queue, jobs per second that went in (submitted) and came out (started) over the last minute; a job's
    queue is its task's, as the spec routes it."""
    counted: dict[str, dict[str, int]] = {}
    since = now - RATE_WINDOW_S
    for job in times:
        rates = counted.setdefault(queue_of(job.task), {"in": 0, "out": 0})
        rates["in"] += job.created_at >= since
        rates["out"] += job.started_at is not None and job.started_at >= since
    return {queue: {k: round(n / RATE_WINDOW_S, 2) for k, n in rates.items()} for queue, rates in counted.items()}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted `values` (None when there are none)."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def task_latencies(times: Iterable[JobTimes], since: float) -> list[dict[str, Any]]:
    """Queue wait (created to started) and run time (started to finished) p50/p95 per task, over the jobs that
    started (for the wait) or finished (for the run time) since `since`."""
    waits: dict[str, list[float]] = {}
    runs: dict[str, list[float]] = {}
    for job in times:
        if job.started_at is not None and job.started_at >= since:
            waits.setdefault(job.task, []).append(job.started_at - job.created_at)
            if job.finished_at is not None and job.status in FINISHED_SERIES:
                runs.setdefault(job.task, []).append(job.finished_at - job.started_at)
    rows = []
    for task in sorted(set(waits) | set(runs)):
        wait, run = sorted(waits.get(task, [])), sorted(runs.get(task, []))
        rows.append(
            {
                "task": task,
                "started": len(wait),
                "wait_p50": percentile(wait, 0.5),
                "wait_p95": percentile(wait, 0.95),
                "run_p50": percentile(run, 0.5),
                "run_p95": percentile(run, 0.95),
            }
        )
    return rows


def latency_series(times: Iterable[JobTimes], now: float, max_tasks: int = TASKS_CHARTED) -> dict[str, Any]:
    """Per task (the busiest `max_tasks`), queue wait p50/p95 of the jobs that started in each minute of the hour
    and run time p50/p95 of those that finished in it (None for a minute without any)."""
    buckets = WINDOW_S // LATENCY_BUCKET_S
    end = math.floor(now / LATENCY_BUCKET_S) * LATENCY_BUCKET_S + LATENCY_BUCKET_S
    waits: dict[str, list[list[float]]] = {}
    runs: dict[str, list[list[float]]] = {}

    def add(into: dict[str, list[list[float]]], task: str, at: float, value: float) -> None:
        index = buckets - 1 - int((end - at) // LATENCY_BUCKET_S)
        if 0 <= index < buckets:
            into.setdefault(task, [[] for _ in range(buckets)])[index].append(value)

    for job in times:
        if job.started_at is not None:
            add(waits, job.task, job.started_at, job.started_at - job.created_at)
            if job.finished_at is not None and job.status in FINISHED_SERIES:
                add(runs, job.task, job.finished_at, job.finished_at - job.started_at)
    busiest = sorted(waits, key=lambda task: -sum(map(len, waits[task])))[:max_tasks]
    charted = {}
    for task in busiest:
        charted[task] = {
            f"{what}_{name}": [percentile(sorted(values), q) for values in per_minute.get(task, [[]] * buckets)]
            for what, per_minute in (("wait", waits), ("run", runs))
            for name, q in (("p50", 0.5), ("p95", 0.95))
        }
    return {"bucket_s": LATENCY_BUCKET_S, "end": end, "tasks": charted}


def decision_view(event: ScalingEvent) -> dict[str, Any]:
    return {"at": event.at, "from": event.from_processes, "to": event.to_processes, "reason": event.reason}


@dataclass
class InstanceProbe:
    """What a head can see of its instance besides the store: processes (Supervisor), the autoscaler's targets,
    queue depths (the broker's admin role), the live web heads. `config` None: not started by kvern (tests)."""

    spec: Spec
    store: JobStoreProtocol
    config: RuntimeConfig | None

    def processes(self) -> list[ProcessInfo] | None:
        if self.config is None:
            return None
        try:
            return Supervisor(self.config.state_path).processes()
        except (OSError, KvernError) as exc:
            log.debug("dashboard: supervisor unreachable: %s", exc)
            return None

    def pools(self, processes: list[ProcessInfo] | None) -> list[dict[str, Any]]:
        desired = read_desired(self.config.state_path) if self.config is not None else {}
        events = ScalingEventLog(self.store.engine) if isinstance(self.store, JobStore) else None
        pools = []
        for pool in self.spec.pools:
            running = None
            if processes is not None:
                running = sum(p.group == pool_group(pool.name) and p.state in RUNNING_STATES for p in processes)
            decisions = events.latest(pool.name, DECISIONS_SHOWN) if events is not None else []
            pools.append(
                {
                    "name": pool.name,
                    "queues": list(pool.queues),
                    "processes": running,
                    "desired": desired.get(pool.name, {}).get("desired"),
                    "min": pool.min,
                    "max": pool.max,
                    "concurrency": pool.concurrency,
                    "decisions": [decision_view(event) for event in decisions],
                }
            )
        return pools

    def queues(self, rates: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
        """Ready from the broker; unacked as the messages workers hold: the queue's running jobs (AMQP tells
        only ready messages and consumers, and the management plugin is off); in/out rates from the store."""
        depths: dict[str, Any] = {}
        if self.config is not None:
            try:
                depths = dict(queue_depths(self.config.broker_urls[ROLE_ADMIN], self.spec.all_queues))
            except Exception as exc:  # kombu raises its own, amqp's and socket errors: the page shows '?'
                log.debug("dashboard: queue depths unavailable: %s", exc)
        rows = []
        for name in self.spec.all_queues:
            depth = depths.get(name)
            rows.append(
                {
                    "name": name,
                    "ready": depth["ready"] if depth else None,
                    "consumers": depth["consumers"] if depth else None,
                    "unacked": self.store.count_working([name]),
                    "in_per_s": rates.get(name, {}).get("in", 0.0),
                    "out_per_s": rates.get(name, {}).get("out", 0.0),
                }
            )
        return rows

    def web_heads(self, processes: list[ProcessInfo] | None) -> dict[str, Any] | None:
        if self.config is None:
            return None
        try:
            live = load_live(self.config.state_path)
        except KvernError:
            return None
        running = {p.full_name for p in processes if p.state in RUNNING_STATES} if processes is not None else None
        return {
            "serving": live.count,
            "running": sum(web_slot(slot) in running for slot in live.slots) if running is not None else None,
        }


def snapshot(probe: InstanceProbe, now: float) -> dict[str, Any]:
    """Everything the overview shows but the broker's health (which is asked asynchronously)."""
    processes = probe.processes()
    since = now - WINDOW_S
    times = recent_job_times(probe.store.engine, since) if isinstance(probe.store, JobStore) else []
    rates = queue_rates(times, probe.spec.queue_for, now)
    queues = probe.queues(rates)  # the broker's answer is the slow part: the store's counts are read right after
    jobs = probe.store.counts_by_status()
    return {
        "at": now,
        "jobs": jobs,
        "activity": activity_series(times, now),
        "tasks": task_latencies(times, since),
        "latency": latency_series(times, now),
        "pools": probe.pools(processes),
        "queues": queues,
        "web_heads": probe.web_heads(processes),
    }


class OverviewFeed:
    """Takes a snapshot every `interval_s` while someone watches, and hands the newest to every watcher."""

    def __init__(self, take: Callable[[], Awaitable[dict[str, Any]]], interval_s: float = INTERVAL_S) -> None:
        self.take = take
        self.interval_s = interval_s
        self.latest: dict[str, Any] | None = None
        self.watchers: set[asyncio.Event] = set()
        self.task: asyncio.Task[None] | None = None

    async def updates(self, keepalive_s: float) -> AsyncGenerator[dict[str, Any] | None]:
        """The newest snapshot each time one is taken; None when none came for `keepalive_s`."""
        fresh = asyncio.Event()
        self.watchers.add(fresh)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        try:
            if self.latest is not None:
                yield self.latest
            while True:
                try:
                    await asyncio.wait_for(fresh.wait(), keepalive_s)
                except TimeoutError:
                    yield None
                    continue
                fresh.clear()
                if self.latest is not None:
                    yield self.latest
        finally:
            self.watchers.discard(fresh)

    async def _run(self) -> None:
        while self.watchers:
            started = time.monotonic()
            try:
                self.latest = await self.take()
            except Exception:  # a snapshot that failed is skipped: the feed goes on for the pages that watch
                log.exception("dashboard: the overview snapshot failed")
            else:
                for fresh in self.watchers:
                    fresh.set()
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))


def probe_config() -> RuntimeConfig | None:
    try:
        return RuntimeConfig.from_environment()
    except KvernError:
        return None
