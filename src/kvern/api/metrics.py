"""Prometheus metrics at `/api/metrics`.

Instance-wide figures (jobs by status, per-task timing histograms, pools, queues, scaling decisions) are what the
controller publishes into the job store (kvern/observe/), so every web head answers the same whichever one nginx
picks, and a scrape reads that small table, never the jobs table. Request counters and latencies are the
answering head's own (labelled `head`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from kvern.errors import StoreUnavailable
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.metric_samples import MetricSamples, Sample
from kvern.observe.families import ALL, COUNTER, GAUGE, STALE_AFTER_S, Family

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class JobCountCollector(Collector):
    """Jobs by status straight from the store: for a store that has no published samples (the memory store)."""

    def __init__(self, store: JobStoreProtocol) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("kvern_job_store_up", "1 when the job store answered this scrape")
        jobs = GaugeMetricFamily("kvern_jobs", "Jobs in the store by status", labels=["status"])
        try:
            counts = self.store.counts_by_status()
        except StoreUnavailable:
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for status, count in sorted(counts.items()):
                jobs.add_metric([status], count)
        yield up
        yield jobs


class PublishedCollector(Collector):
    """The controller's published samples, as Prometheus families."""

    def __init__(self, samples: MetricSamples) -> None:
        self.samples = samples

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("kvern_job_store_up", "1 when the job store answered this scrape")
        try:
            published = self.samples.all()
        except StoreUnavailable:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        fresh_after = time.time() - STALE_AFTER_S
        for family in ALL:
            yield render_family(family, published, fresh_after)


def render_family(family: Family, samples: Iterable[Sample], fresh_after: float) -> Metric:
    """One family from its samples; a gauge not refreshed since `fresh_after` is left out (its publisher is gone:
    better no figure than a stale one). Counters and histograms are cumulative and always shown."""
    if family.kind == GAUGE:
        gauge = GaugeMetricFamily(family.name, family.help)
        for sample in samples:
            if sample.name == family.name and sample.updated_at >= fresh_after:
                gauge.add_sample(family.name, sample.label_dict, sample.value)
        return gauge
    if family.kind == COUNTER:
        counter = CounterMetricFamily(family.name, family.help)
        for sample in samples:
            if sample.name == f"{family.name}_total":
                counter.add_sample(sample.name, sample.label_dict, sample.value)
        return counter
    histogram = HistogramMetricFamily(family.name, family.help)
    for sample in samples:
        if sample.name in (f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"):
            histogram.add_sample(sample.name, sample.label_dict, sample.value)
    return histogram


class ApiMetrics:
    def __init__(self, store: JobStoreProtocol, samples: MetricSamples | None = None) -> None:
        self.head = str(os.getpid())
        self.registry = CollectorRegistry()
        self.registry.register(PublishedCollector(samples) if samples is not None else JobCountCollector(store))
        self.submissions = Counter(
            "kvern_submissions",
            "POST /api/v1/jobs answers by status code",
            ["head", "code"],
            registry=self.registry,
        )
        self.submit_seconds = Histogram(
            "kvern_submit_seconds",
            "Time to record, publish with confirm and answer a submission",
            ["head"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )

    def observe_submission(self, code: int, seconds: float) -> None:
        self.submissions.labels(self.head, str(code)).inc()
        self.submit_seconds.labels(self.head).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
