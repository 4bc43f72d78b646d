"""What the controller publishes for `/api/metrics`, a round every few seconds (kvern_metric_samples).

Two parts, because an instance split with `kvern up --only` runs one controller per tier: the web tier's counts
the jobs (by status, and per task the finished jobs and their timing histograms, read incrementally after a
cursor) and the scaling decisions; each controller that runs pools reports those pools and their queues.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kvern.autoscale.loop import read_desired
from kvern.broker.admin import queue_depths
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.metric_samples import Cursor, CursorMove, MetricSamples, Sample
from kvern.jobs.states import JobStatus
from kvern.observe.families import (
    JOBS,
    POOL_DESIRED,
    POOL_MAX,
    POOL_MIN,
    POOL_PROCESSES,
    PUBLISHED,
    QUEUE_CONSUMERS,
    QUEUE_READY,
    SCALING,
)
from kvern.observe.timings import JobTimings
from kvern.processes import ACTIVE_STATES, ProcessRunner, pool_group
from kvern.spec import PoolSpec

INTERVAL_S = 5.0
JOB_CURSOR = "job_timings"
# A job is counted once it finished this long ago: a worker's commit still in flight (its finished_at a little
# in the past) is not stepped over by the cursor.
LAG_S = 10.0
BATCH = 5000


@dataclass
class JobMetrics:
    """Counts the jobs finished since its cursor. The counts and the cursor move together, and only from where
    this publisher found them: web tiers on several machines sharing one store never count a job twice."""

    samples: MetricSamples
    store: JobStoreProtocol
    clock: Callable[[], float] = time.time
    timings: JobTimings | None = None
    found: Cursor | None = None  # the cursor as stored when this publisher last read or wrote it

    def tick(self) -> None:
        now = self.clock()
        if self.timings is None:
            self._resume()
        assert self.timings is not None
        start = self.found or Cursor(now - LAG_S, "")  # a new store is counted from now on, not its history
        cursor = start
        while True:
            batch = self.samples.finished_since(cursor, now - LAG_S, BATCH)
            for job in batch:
                self.timings.observe(job)
            if batch:
                cursor = Cursor(batch[-1].finished_at, batch[-1].id)
            if len(batch) < BATCH:
                break
        try:
            samples = [*self.timings.samples(), *self._gauges(now)]
            self.samples.publish(samples, now, CursorMove(JOB_CURSOR, self.found, cursor))
        except Exception:
            self.timings = None  # what was counted here is not stored: start again from what is
            raise
        self.found = cursor

    def _resume(self) -> None:
        """The counts so far and where they stopped, as stored."""
        timings = JobTimings()
        timings.load(self.samples.all())
        self.found = self.samples.cursor(JOB_CURSOR)
        self.timings = timings

    def _gauges(self, now: float) -> Iterator[Sample]:
        counts = self.store.counts_by_status()
        for status in JobStatus:
            yield Sample(JOBS.name, (("status", status.value),), counts.get(status.value, 0))
        for (pool, direction), count in sorted(self.samples.scaling_decisions().items()):
            yield Sample(f"{SCALING.name}_total", (("direction", direction), ("pool", pool)), count)
        yield Sample(PUBLISHED.name, (("part", "jobs"),), now)


@dataclass
class PoolMetrics:
    samples: MetricSamples
    pools: tuple[PoolSpec, ...]
    runner: ProcessRunner
    broker_url: str
    state_dir: Path
    clock: Callable[[], float] = time.time
    queues: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.queues = tuple(dict.fromkeys(q for pool in self.pools for q in pool.queues))

    def tick(self) -> None:
        now = self.clock()
        self.samples.publish([*self._pools(), *self._queues(), Sample(PUBLISHED.name, (("part", "pools"),), now)], now)

    def _pools(self) -> Iterator[Sample]:
        processes = self.runner.processes()
        desired = read_desired(self.state_dir)
        for pool in self.pools:
            label = (("pool", pool.name),)
            running = sum(1 for p in processes if p.group == pool_group(pool.name) and p.state in ACTIVE_STATES)
            yield Sample(POOL_PROCESSES.name, label, running)
            wanted = desired.get(pool.name, {}).get("desired")
            if wanted is not None:
                yield Sample(POOL_DESIRED.name, label, wanted)
            yield Sample(POOL_MIN.name, label, pool.min)
            yield Sample(POOL_MAX.name, label, pool.max)

    def _queues(self) -> Iterator[Sample]:
        for queue, depth in queue_depths(self.broker_url, self.queues).items():
            if depth is not None:
                yield Sample(QUEUE_READY.name, (("queue", queue),), depth["ready"])
                yield Sample(QUEUE_CONSUMERS.name, (("queue", queue),), depth["consumers"])
