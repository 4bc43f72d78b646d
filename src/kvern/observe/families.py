"""The metric families the controller publishes: names (Prometheus conventions: `kvern_` prefix, base units,
`_total` for counters, `_seconds` for durations), types and help. The renderer (api/metrics.py) and the
Grafana dashboard (docs/grafana/kvern.json) use these names."""

from __future__ import annotations

from dataclasses import dataclass

GAUGE, COUNTER, HISTOGRAM = "gauge", "counter", "histogram"

# Seconds: from a quick task's milliseconds to a report's minutes.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
SUBMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    help: str
    buckets: tuple[float, ...] = ()


JOBS = Family("kvern_jobs", GAUGE, "Jobs in the store by status")
FINISHED = Family("kvern_jobs_finished", COUNTER, "Jobs that finished, by task and status")
SUBMIT = Family(
    "kvern_job_submit_seconds",
    HISTOGRAM,
    "Per task, from a job's record to the broker's confirm of its message (the submission's own wait)",
    SUBMIT_BUCKETS,
)
QUEUE_WAIT = Family(
    "kvern_job_queue_wait_seconds", HISTOGRAM, "Per task, from queued to its last attempt's start", DURATION_BUCKETS
)
RUN = Family("kvern_job_run_seconds", HISTOGRAM, "Per task, the last attempt's run time", DURATION_BUCKETS)
POOL_PROCESSES = Family("kvern_pool_processes", GAUGE, "Worker processes running per pool")
POOL_DESIRED = Family("kvern_pool_desired_processes", GAUGE, "Worker processes the autoscaler wants per pool")
POOL_MIN = Family("kvern_pool_min_processes", GAUGE, "The pool's min from the spec")
POOL_MAX = Family("kvern_pool_max_processes", GAUGE, "The pool's max from the spec")
SCALING = Family("kvern_scaling_decisions", COUNTER, "Scaling decisions applied, by pool and direction (out, in)")
QUEUE_READY = Family("kvern_queue_messages_ready", GAUGE, "Messages ready in each broker queue")
QUEUE_CONSUMERS = Family("kvern_queue_consumers", GAUGE, "Consumers of each broker queue")
PUBLISHED = Family("kvern_metrics_published_timestamp_seconds", GAUGE, "When the controller last published, by part")

JOB_HISTOGRAMS = (SUBMIT, QUEUE_WAIT, RUN)
ALL: tuple[Family, ...] = (JOBS, FINISHED, *JOB_HISTOGRAMS, POOL_PROCESSES, POOL_DESIRED, POOL_MIN, POOL_MAX)
ALL += (SCALING, QUEUE_READY, QUEUE_CONSUMERS, PUBLISHED)
# Gauges say how things are now: one not refreshed for this long is left out (its publisher is gone).
STALE_AFTER_S = 60.0
