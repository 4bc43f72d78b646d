"""Prometheus metrics of the job API, at `/api/metrics`.

Job counts come from the job store at scrape time, so every web head answers the same for them whichever one
nginx picks; request counters and latencies are the answering head's own (labelled `head`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kvern.errors import StoreUnavailable
from kvern.jobs.base import JobStoreProtocol

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class JobCountCollector(Collector):
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


class ApiMetrics:
    def __init__(self, store: JobStoreProtocol) -> None:
        self.head = str(os.getpid())
        self.registry = CollectorRegistry()
        self.registry.register(JobCountCollector(store))
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
