"""Instance-wide metrics: the controller publishes them into the store, every head renders the same figures, the
counts go on across a controller restart, and neither side scans the jobs table."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import event, update

from kvern.api.metrics import ApiMetrics
from kvern.jobs import schema
from kvern.jobs.deliveries import DeliveryLog
from kvern.jobs.metric_samples import Cursor, CursorMoved, MetricSamples
from kvern.jobs.records import NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.observe import publisher
from kvern.observe.families import ALL, COUNTER, GAUGE, HISTOGRAM
from kvern.observe.publisher import LAG_S, JobMetrics, PoolMetrics
from kvern.spec import PoolSpec
from tests.unit.doubles import StubRunner


@pytest.fixture(params=["sqlite_store", "postgres_store"])
def store(request: pytest.FixtureRequest) -> JobStore:
    """The real job store, on both engines."""
    found: JobStore = request.getfixturevalue(request.param)
    return found


def run_job(store: JobStore, task: str, queued_at: float, wait: float, run: float, ok: bool = True) -> str:
    """A job that waited `wait` seconds in the queue and ran for `run` seconds, finishing at queued_at+wait+run."""
    job_id = str(uuid.uuid4())
    store.create_job(NewJob(job_id, task, "main", [], {}, max_attempts=1))
    claim = store.claim_attempt(job_id, "w1")
    if ok:
        store.record_success(job_id, claim.attempt, None)
    else:
        store.record_failure(job_id, claim.attempt, "boom", JobStatus.FAILED)
    times = {
        "created_at": queued_at,
        "published_at": queued_at + 0.004,
        "queued_at": queued_at,
        "started_at": queued_at + wait,
        "finished_at": queued_at + wait + run,
    }
    with store.engine.begin() as conn:
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(**times))
    return job_id


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scrape(store: JobStore) -> str:
    """What a web head answers (a fresh one each time: any head, the same figures)."""
    return ApiMetrics(store, MetricSamples(store.engine)).render().decode()


def value(body: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", body, re.MULTILINE)
    assert match, f"{sample} not in\n{body}"
    return float(match.group(1))


def test_job_timings_are_published_per_task_and_every_head_renders_the_same(store: JobStore) -> None:
    start = time.time()
    clock = Clock(start)
    metrics = JobMetrics(MetricSamples(store.engine), store, clock)
    metrics.tick()  # the first round starts counting from now
    run_job(store, "tasks.report", start + 1, wait=0.3, run=4.0)
    run_job(store, "tasks.report", start + 1, wait=20.0, run=0.2, ok=False)
    run_job(store, "tasks.mail", start + 1, wait=0.02, run=0.07)
    store.create_job(NewJob(str(uuid.uuid4()), "tasks.mail", "main", [], {}, max_attempts=1))  # queued
    clock.now = start + 30 + LAG_S
    metrics.tick()

    first, second = scrape(store), scrape(store)
    instance_wide = [line for line in first.splitlines() if "head=" not in line]
    assert instance_wide == [line for line in second.splitlines() if "head=" not in line]
    assert value(first, 'kvern_jobs{status="queued"}') == 1
    assert value(first, 'kvern_jobs{status="succeeded"}') == 2
    assert value(first, 'kvern_jobs_finished_total{status="failed",task="tasks.report"}') == 1
    assert value(first, 'kvern_job_queue_wait_seconds_bucket{le="0.5",task="tasks.report"}') == 1
    assert value(first, 'kvern_job_queue_wait_seconds_bucket{le="30.0",task="tasks.report"}') == 2
    assert value(first, 'kvern_job_run_seconds_bucket{le="0.25",task="tasks.report"}') == 1
    assert value(first, 'kvern_job_run_seconds_bucket{le="+Inf",task="tasks.report"}') == 2
    assert value(first, 'kvern_job_run_seconds_sum{task="tasks.report"}') == pytest.approx(4.2)
    assert value(first, 'kvern_job_run_seconds_count{task="tasks.mail"}') == 1
    assert value(first, 'kvern_job_submit_seconds_bucket{le="0.005",task="tasks.mail"}') == 1
    assert "# TYPE kvern_job_run_seconds histogram" in first


def test_a_restarted_controller_goes_on_counting_without_counting_twice(store: JobStore) -> None:
    start = time.time()
    clock = Clock(start)
    samples = MetricSamples(store.engine)
    JobMetrics(samples, store, clock).tick()
    run_job(store, "tasks.report", start + 1, wait=1, run=1)
    clock.now = start + 5 + LAG_S
    JobMetrics(samples, store, clock).tick()
    run_job(store, "tasks.report", start + 6, wait=1, run=1)
    clock.now = start + 10 + LAG_S
    restarted = JobMetrics(samples, store, clock)  # a new process: state from the store only
    restarted.tick()
    restarted.tick()
    body = scrape(store)
    assert value(body, 'kvern_job_run_seconds_count{task="tasks.report"}') == 2
    assert value(body, 'kvern_jobs_finished_total{status="succeeded",task="tasks.report"}') == 2


def test_a_job_finishing_inside_the_lag_is_counted_in_a_later_round(store: JobStore) -> None:
    start = time.time()
    clock = Clock(start)
    metrics = JobMetrics(MetricSamples(store.engine), store, clock)
    metrics.tick()
    run_job(store, "tasks.report", start + 1, wait=1, run=1)
    clock.now = start + 3  # finished a second ago: a commit may still be in flight before it
    metrics.tick()
    assert 'kvern_job_run_seconds_count{task="tasks.report"}' not in scrape(store)
    clock.now = start + 3 + LAG_S
    metrics.tick()
    assert value(scrape(store), 'kvern_job_run_seconds_count{task="tasks.report"}') == 1


def test_pools_queues_and_scaling_decisions_are_published(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = PoolSpec("main", ("main",), min=1, max=4)
    runner = StubRunner()
    runner.add_pool(pool, running=3)
    monkeypatch.setattr(
        publisher, "queue_depths", lambda url, queues: {q: {"ready": 17, "consumers": 3} for q in queues}
    )
    samples = MetricSamples(store.engine)
    PoolMetrics(samples, (pool,), runner, "amqp://unused", tmp_path).tick()
    with store.engine.begin() as conn:
        conn.execute(
            schema.scaling_events.insert(),
            [
                {"at": 1.0, "pool": "main", "from_processes": 1, "to_processes": 3, "reason": "backlog"},
                {"at": 2.0, "pool": "main", "from_processes": 3, "to_processes": 1, "reason": "idle"},
                {"at": 3.0, "pool": "main", "from_processes": 1, "to_processes": 2, "reason": "backlog"},
            ],
        )
    JobMetrics(samples, store).tick()
    body = scrape(store)
    assert value(body, 'kvern_pool_processes{pool="main"}') == 3
    assert value(body, 'kvern_pool_max_processes{pool="main"}') == 4
    assert value(body, 'kvern_queue_messages_ready{queue="main"}') == 17
    assert value(body, 'kvern_scaling_decisions_total{direction="out",pool="main"}') == 2
    assert value(body, 'kvern_scaling_decisions_total{direction="in",pool="main"}') == 1


def test_a_gauge_its_publisher_stopped_refreshing_is_left_out(store: JobStore, tmp_path: Path) -> None:
    pool = PoolSpec("main", ("main",))
    samples = MetricSamples(store.engine)
    runner = StubRunner()
    runner.add_pool(pool, running=1)
    pools = PoolMetrics(samples, (pool,), runner, "amqp://unused", tmp_path)
    samples.publish(pools._pools(), time.time())
    assert value(scrape(store), 'kvern_pool_processes{pool="main"}') == 1
    samples.publish(pools._pools(), time.time() - 3600)  # the last round was an hour ago
    assert 'kvern_pool_processes{pool="main"}' not in scrape(store)


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("finished_since", "ix_kvern_jobs_status_finished"),
        ("owed", "ix_kvern_jobs_notify_due"),
    ],
)
def test_the_rounds_read_an_index_range_not_the_jobs_table(sqlite_store: JobStore, query: str, index: str) -> None:
    # SQLite's query plan (PostgreSQL's planner decides by the table's statistics, which a test store lacks)
    statements: list[str] = []
    event.listen(sqlite_store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    if query == "finished_since":
        MetricSamples(sqlite_store.engine).finished_since(Cursor(0.0, ""), time.time(), 10)
    else:
        DeliveryLog(sqlite_store.engine).owed(time.time())
    sql = next(s for s in statements if s.lstrip().upper().startswith("SELECT") and "kvern_jobs" in s)
    with sqlite_store.engine.connect() as conn:
        params = tuple([0.0] * sql.count("?"))
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
    assert index in plan
    assert not re.search(r"SCAN kvern_jobs\b(?! USING)", plan), plan


def test_the_grafana_dashboard_uses_only_metrics_kvern_exposes() -> None:
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana" / "kvern.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bkvern_[a-z_]+", expr)}
    suffixes = {COUNTER: ("_total",), HISTOGRAM: ("_bucket", "_sum", "_count"), GAUGE: ("",)}
    exposed = {family.name + suffix for family in ALL for suffix in suffixes[family.kind]}
    exposed |= {"kvern_job_store_up", "kvern_submissions_total", "kvern_submit_seconds_bucket"}  # the heads' own
    assert used and used <= exposed, used - exposed
    assert {"kvern_job_queue_wait_seconds_bucket", "kvern_pool_processes", "kvern_queue_messages_ready"} <= used


def test_two_controllers_on_one_store_count_each_job_once(store: JobStore) -> None:
    start = time.time()
    clock = Clock(start)
    samples = MetricSamples(store.engine)
    first, second = JobMetrics(samples, store, clock), JobMetrics(samples, store, clock)
    first.tick()
    second.tick()
    run_job(store, "tasks.report", start + 1, wait=1, run=1)
    clock.now = start + 5 + LAG_S
    first.tick()
    with pytest.raises(CursorMoved):
        second.tick()  # it read the cursor before the first moved it: nothing of its round is written
    second.tick()
    first.tick()
    assert value(scrape(store), 'kvern_job_run_seconds_count{task="tasks.report"}') == 1
