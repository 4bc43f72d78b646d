"""Per-task histograms and counters of finished jobs, kept cumulative: loaded from what was published before,
then advanced with each job that finished since (the controller's cursor)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from kvern.jobs.metric_samples import FinishedJob, Sample
from kvern.observe.families import FINISHED, JOB_HISTOGRAMS, QUEUE_WAIT, RUN, SUBMIT, Family


def le_text(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[float] = field(default_factory=list)  # per bucket, not cumulative; the last is +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0.0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> Iterator[tuple[str, float]]:
        running = 0.0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            yield le_text(bound), running


class JobTimings:
    def __init__(self) -> None:
        self.histograms: dict[tuple[str, str], Histogram] = {}  # (family name, task)
        self.finished: dict[tuple[str, str], float] = {}  # (task, status)

    def _histogram(self, family: Family, task: str) -> Histogram:
        return self.histograms.setdefault((family.name, task), Histogram(family.buckets))

    def observe(self, job: FinishedJob) -> None:
        key = (job.task, job.status)
        self.finished[key] = self.finished.get(key, 0.0) + 1
        if job.published_at is not None:
            self._histogram(SUBMIT, job.task).observe(max(0.0, job.published_at - job.created_at))
        if job.started_at is not None:  # a job cancelled while queued never started
            queued = job.queued_at if job.queued_at is not None else job.created_at
            self._histogram(QUEUE_WAIT, job.task).observe(max(0.0, job.started_at - queued))
            self._histogram(RUN, job.task).observe(max(0.0, job.finished_at - job.started_at))

    def samples(self) -> Iterator[Sample]:
        for (task, status), value in sorted(self.finished.items()):
            yield Sample(f"{FINISHED.name}_total", (("status", status), ("task", task)), value)
        for (name, task), histogram in sorted(self.histograms.items()):
            for le, count in histogram.cumulative():
                yield Sample(f"{name}_bucket", (("le", le), ("task", task)), count)
            yield Sample(f"{name}_sum", (("task", task),), histogram.total)
            yield Sample(f"{name}_count", (("task", task),), sum(histogram.counts))

    def load(self, samples: Iterable[Sample]) -> None:
        """Start from the published values (a restarted controller goes on counting)."""
        buckets: dict[tuple[str, str], dict[str, float]] = {}
        for sample in samples:
            labels = sample.label_dict
            if sample.name == f"{FINISHED.name}_total":
                self.finished[(labels["task"], labels["status"])] = sample.value
            for family in JOB_HISTOGRAMS:
                if sample.name == f"{family.name}_bucket":
                    buckets.setdefault((family.name, labels["task"]), {})[labels["le"]] = sample.value
                elif sample.name == f"{family.name}_sum":
                    self._histogram(family, labels["task"]).total = sample.value
        for (name, task), cumulative in buckets.items():
            family = next(f for f in JOB_HISTOGRAMS if f.name == name)
            histogram = self._histogram(family, task)
            previous = 0.0
            for i, bound in enumerate((*family.buckets, math.inf)):
                value = cumulative.get(le_text(bound), previous)
                histogram.counts[i], previous = value - previous, value
