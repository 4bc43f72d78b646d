"""Erasure, cancel of a running job, retention and subject tagging: the store contract (every backend), the
job API, the `kvern jobs` commands and the controller's retention loop."""

from __future__ import annotations

import json
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from click.testing import CliRunner, Result
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError

import kvern
from kvern import cli
from kvern import client as kvern_client
from kvern.constants import RET_FAILURE, RET_OK, RET_USAGE
from kvern.controller import RetentionLoop
from kvern.errors import SpecError
from kvern.jobs import schema
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.records import NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.spec import RetentionSpec, TaskPolicy, parse_spec
from kvern.worker import context
from kvern.worker.execution import guard_task
from tests.integration.conftest import start_instance, wait_for_outcome, write_project
from tests.unit import test_api

__all__ = ["start_instance"]  # the integration fixture, used by name below

project = test_api.project
web_head = test_api.web_head
api = test_api.api

JSON = {"Content-Type": "application/json"}


def new_job(store: JobStoreProtocol, **fields: Any) -> str:
    job_id = str(uuid.uuid4())
    store.create_job(NewJob(id=job_id, task="t.work", queue="main", args=[1], kwargs={}, max_attempts=3, **fields))
    return job_id


def finished_job_with_files(store: JobStoreProtocol, **fields: Any) -> str:
    """A succeeded job with two attempts in its history and an artifact."""
    job_id = new_job(store, **fields)
    store.claim_attempt(job_id, "w@host")
    store.record_retry(job_id, 1, "boom")
    store.claim_attempt(job_id, "w@host")
    store.save_artifact(job_id, 2, "report.pdf", "application/pdf", b"%PDF personal data")
    assert store.record_success(job_id, 2, {"name": "Kari Nordmann"})
    return job_id


def assert_erased(store: JobStoreProtocol, job_id: str) -> None:
    assert store.get(job_id) is None
    assert store.history(job_id) == []
    assert store.artifact(job_id, "report.pdf") is None
    assert job_id not in store.job_ids_starting_with(job_id[:8], 10)


# -- 1. erasure --------------------------------------------------------------------------------------------------


def test_erase_forgets_the_job_its_history_and_its_artifacts(job_store: JobStoreProtocol) -> None:
    erased, kept = finished_job_with_files(job_store), finished_job_with_files(job_store)
    assert job_store.erase(erased)
    assert_erased(job_store, erased)
    assert not job_store.erase(erased)  # already gone
    assert job_store.get(kept) is not None and len(job_store.history(kept)) == 2
    assert job_store.artifact(kept, "report.pdf") is not None


def test_erase_of_a_running_job_refuses_its_late_writes(job_store: JobStoreProtocol) -> None:
    job_id = new_job(job_store)
    assert job_store.claim_attempt(job_id, "w@host").run
    assert job_store.erase(job_id)
    assert not job_store.record_success(job_id, 1, "late")
    with pytest.raises(IntegrityError):  # a file the task saves afterwards is refused, not kept orphaned
        job_store.save_artifact(job_id, 1, "late.txt", "text/plain", b"personal data")
    assert job_store.get(job_id) is None and job_store.history(job_id) == []
    assert not job_store.claim_attempt(job_id, "w@host").tracked  # a redelivery finds no record


def test_sql_erase_leaves_no_row_in_any_table(sql_job_store: JobStore) -> None:
    job_id = finished_job_with_files(sql_job_store)
    sql_job_store.erase(job_id)
    with sql_job_store.engine.connect() as conn:
        for table in (schema.jobs, schema.attempts, schema.artifacts):
            column = table.c.id if table is schema.jobs else table.c.job_id
            assert conn.execute(select(func.count()).where(column == job_id)).scalar() == 0


async def test_delete_erases_a_job_and_answers_204_then_404(api: Any) -> None:
    client, _, store = api
    response = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1]})
    job_id = response.json()["id"]
    assert store.claim_attempt(job_id, "w@host").run
    store.save_artifact(job_id, 1, "report.pdf", "application/pdf", b"data")
    assert store.record_success(job_id, 1, 1)
    deleted = await client.delete(f"/api/v1/jobs/{job_id}", headers=JSON)
    assert deleted.status_code == 204 and deleted.content == b""
    assert_erased(store, job_id)
    assert (await client.get(f"/api/v1/jobs/{job_id}")).status_code == 404
    again = await client.delete(f"/api/v1/jobs/{job_id}", headers=JSON)
    assert again.status_code == 404 and again.json()["error"]["code"] == "unknown_job"


# -- the `kvern jobs` commands -------------------------------------------------------------------------------


SPEC = '[app]\ntasks = "cli_tasks"\n[[pools]]\nname = "main"\nqueues = ["main"]\n'


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "kvern.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def running_store(sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobStore]:
    """The `kvern jobs` commands see this store as a running instance's."""
    runtime = types.SimpleNamespace(store_url=sqlite_store.url, broker_urls={"admin": "amqp://unused"})
    monkeypatch.setattr(cli, "running_instance", lambda _ctx: types.SimpleNamespace(runtime=lambda: runtime))
    yield sqlite_store


def run_kvern(spec_path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli.main, ["-f", str(spec_path), *args])


def test_jobs_delete_takes_a_short_id_and_erases_the_job(spec_path: Path, running_store: JobStore) -> None:
    job_id, kept = finished_job_with_files(running_store), finished_job_with_files(running_store)
    result = run_kvern(spec_path, "jobs", "delete", job_id[:8])
    assert result.exit_code == RET_OK, result.output
    assert f"erased job {job_id}" in result.output
    assert_erased(running_store, job_id)
    assert running_store.get(kept) is not None
    missing = run_kvern(spec_path, "jobs", "delete", job_id)
    assert missing.exit_code == RET_FAILURE and "no job" in missing.output


# -- 2. cancel of a running job ------------------------------------------------------------------------------


def running_job(store: JobStoreProtocol) -> str:
    job_id = new_job(store)
    assert store.claim_attempt(job_id, "w@host").run
    return job_id


def outcome_of_attempt(store: JobStoreProtocol, job_id: str, attempt: int) -> str | None:
    return next(a.outcome for a in store.history(job_id) if a.attempt == attempt)


@pytest.mark.parametrize("ending", ["returns", "raises"])
def test_a_running_job_asked_to_cancel_ends_cancelled_however_its_attempt_ends(
    job_store: JobStoreProtocol, ending: str
) -> None:
    job_id = running_job(job_store)
    assert not job_store.is_cancelled(job_id)
    asked = job_store.cancel(job_id)
    assert asked is not None and asked.status is JobStatus.RUNNING and asked.cancel_requested is not None
    assert job_store.is_cancelled(job_id)
    assert job_store.cancel(job_id) == job_store.get(job_id)  # asking again changes nothing
    if ending == "returns":
        assert job_store.record_success(job_id, 1, "done anyway")
    else:
        assert job_store.record_failure(job_id, 1, "stopped", JobStatus.FAILED)
    job = job_store.get(job_id)
    assert job is not None and job.status is JobStatus.CANCELLED and job.finished_at is not None
    assert outcome_of_attempt(job_store, job_id, 1) == "cancelled"
    assert job_store.cancel(job_id) is None  # finished


def test_a_failing_attempt_asked_to_cancel_is_not_retried(job_store: JobStoreProtocol) -> None:
    job_id = running_job(job_store)
    job_store.cancel(job_id)
    assert not job_store.record_retry(job_id, 1, "boom", delay_s=5)  # no retry follows
    job = job_store.get(job_id)
    assert job is not None and job.status is JobStatus.CANCELLED and job.retry_at is None
    assert outcome_of_attempt(job_store, job_id, 1) == "cancelled"
    assert not job_store.claim_attempt(job_id, "w@host").run


def test_a_job_waiting_for_its_retry_is_cancelled_at_once_and_its_retry_skipped(job_store: JobStoreProtocol) -> None:
    job_id = running_job(job_store)
    assert job_store.record_retry(job_id, 1, "boom", delay_s=60)
    job = job_store.cancel(job_id)
    assert job is not None and job.status is JobStatus.CANCELLED and job.retry_at is None
    assert not job_store.claim_attempt(job_id, "w@host").run  # the retry's delivery
    assert [a.attempt for a in job_store.history(job_id)] == [1]


def test_a_job_whose_cancel_was_asked_is_not_run_again_after_its_attempt_is_lost(job_store: JobStoreProtocol) -> None:
    job_id = running_job(job_store)
    job_store.cancel(job_id)
    assert job_store.recover_stuck(job_id, 1, "worker lost") is JobStatus.QUEUED
    assert not job_store.claim_attempt(job_id, "w@host").run
    job = job_store.get(job_id)
    assert job is not None and job.status is JobStatus.CANCELLED


def test_is_cancelled_is_true_for_an_erased_job_and_false_for_one_running(job_store: JobStoreProtocol) -> None:
    job_id = running_job(job_store)
    assert not job_store.is_cancelled(job_id)
    job_store.erase(job_id)
    assert job_store.is_cancelled(job_id)


def test_cancelled_is_false_outside_a_job_and_throttled_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kvern.cancelled() is False
    store = MemoryJobStore()
    job_id = running_job(store)
    asked: list[str] = []
    real = store.is_cancelled

    def counted(job_id: str) -> bool:
        asked.append(job_id)
        return real(job_id)

    monkeypatch.setattr(store, "is_cancelled", counted)
    token = context._current.set(context.JobContext(store, kvern.JobInfo(job_id, 1)))
    try:
        assert [kvern.cancelled() for _ in range(100)] == [False] * 100
        assert len(asked) == 1  # throttled: one look at the store
        store.cancel(job_id)
        monkeypatch.setattr(context, "CANCEL_CHECK_INTERVAL_S", 0.0)
        assert kvern.cancelled() is True
    finally:
        context._current.reset(token)


def test_a_task_polling_cancelled_ends_cancelled_through_the_worker_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Celery("kvern-test", set_as_current=False)
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = False
    store = MemoryJobStore()
    job_id = new_job(store)
    monkeypatch.setattr(context, "CANCEL_CHECK_INTERVAL_S", 0.0)
    loops = []

    def work(_n: int) -> str:
        while not kvern.cancelled():
            loops.append(1)
            if len(loops) == 3:  # someone cancels it while it runs
                assert store.cancel(job_id) is not None
            time.sleep(0.01)
        return "stopped"

    task = app.task(name="tasks.work")(work)
    guard_task(task, store, TaskPolicy(queue="default"), "w@host")
    task.apply(args=(1,), task_id=job_id)
    job = store.get(job_id)
    assert job is not None and job.status is JobStatus.CANCELLED and len(loops) == 3
    app.close()


async def test_cancel_of_a_running_job_answers_202_and_it_ends_cancelled(api: Any) -> None:
    client, _, store = api
    job_id = (await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1]})).json()["id"]
    assert store.claim_attempt(job_id, "w@host").run
    response = await client.post(f"/api/v1/jobs/{job_id}/cancel", headers=JSON)
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"] is not None
    assert store.record_success(job_id, 1, 2)
    assert (await client.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "cancelled"
    finished = await client.post(f"/api/v1/jobs/{job_id}/cancel", headers=JSON)
    assert finished.status_code == 409 and finished.json()["error"]["code"] == "not_cancellable"


# -- 3. retention --------------------------------------------------------------------------------------------


def ended(store: JobStoreProtocol, status: JobStatus) -> str:
    """A job that finished just now with `status`, with history and (when it succeeded) an artifact."""
    if status is JobStatus.SUCCEEDED:
        return finished_job_with_files(store)
    job_id = new_job(store)
    if status is JobStatus.CANCELLED:
        assert store.cancel(job_id) is not None
        return job_id
    store.claim_attempt(job_id, "w@host")
    assert store.record_failure(job_id, 1, "boom", status)
    return job_id


def test_purge_finished_erases_old_jobs_of_the_statuses_in_batches(job_store: JobStoreProtocol) -> None:
    old = [ended(job_store, JobStatus.SUCCEEDED) for _ in range(5)]
    old_failed = ended(job_store, JobStatus.FAILED)
    time.sleep(0.01)
    cutoff = time.time()
    time.sleep(0.01)
    recent = ended(job_store, JobStatus.SUCCEEDED)
    working = running_job(job_store)
    assert [job_store.purge_finished([JobStatus.SUCCEEDED], cutoff, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    for job_id in old:
        assert_erased(job_store, job_id)
    for job_id in (old_failed, recent, working):
        assert job_store.get(job_id) is not None
    assert job_store.purge_finished([JobStatus.FAILED, JobStatus.DEAD], cutoff) == 1
    assert_erased(job_store, old_failed)
    with pytest.raises(ValueError, match="running"):
        job_store.purge_finished([JobStatus.RUNNING], time.time())


def test_the_controller_erases_by_the_spec_once_a_minute(job_store: JobStoreProtocol) -> None:
    # given jobs that finished now, in every finished status, and a clock the test moves
    succeeded = [ended(job_store, JobStatus.SUCCEEDED) for _ in range(3)]
    not_succeeded = [ended(job_store, status) for status in (JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED)]
    working = running_job(job_store)
    now = [time.time()]
    loop = RetentionLoop(job_store, RetentionSpec(keep_succeeded="7d", keep_failed="30d"), lambda: now[0], batch=2)
    day = 86400.0
    now[0] += day  # a day later nothing is old enough
    assert loop.tick() == 0
    now[0] += 7 * day  # 8 days later the succeeded ones are, erased in batches of 2 within one round
    assert loop.tick() == 3
    for job_id in succeeded:
        assert_erased(job_store, job_id)
    late = ended(job_store, JobStatus.SUCCEEDED)  # finished (by the store's clock) long before the test's now
    assert loop.tick() == 0  # the next round is a minute away
    now[0] += 61
    assert loop.tick() == 1
    assert_erased(job_store, late)
    now[0] += 23 * day  # 31 days: failed, dead and cancelled go too; a running job never does
    assert loop.tick() == 3
    for job_id in not_succeeded:
        assert_erased(job_store, job_id)
    assert job_store.get(working) is not None


def test_keep_forever_erases_nothing(memory_store: MemoryJobStore) -> None:
    job_id = ended(memory_store, JobStatus.SUCCEEDED)
    loop = RetentionLoop(memory_store, RetentionSpec(keep_succeeded="0", keep_failed="0"), lambda: time.time() + 1e9)
    assert loop.tick() == 0 and memory_store.get(job_id) is not None


def spec_with_store(store: dict[str, Any]) -> dict[str, Any]:
    return {"app": {"tasks": "t"}, "pools": [{"name": "main"}], "store": store}


def test_retention_settings_default_to_7_and_30_days_and_take_durations(tmp_path: Path) -> None:
    default = parse_spec({"app": {"tasks": "t"}, "pools": [{"name": "main"}]}, tmp_path / "kvern.toml").retention
    assert (default.keep_succeeded_s, default.keep_failed_s) == (7 * 86400, 30 * 86400)
    raw = spec_with_store({"url": "sqlite:///x.db", "keep_succeeded": "90s", "keep_failed": "0"})
    spec = parse_spec(raw, tmp_path / "kvern.toml")
    assert (spec.retention.keep_succeeded_s, spec.retention.keep_failed_s, spec.store_url) == (
        90,
        None,
        "sqlite:///x.db",
    )
    for value in ("12h", "15m"):
        parse_spec(spec_with_store({"keep_failed": value}), tmp_path / "kvern.toml")


@pytest.mark.parametrize("value", ["7", "7 d", "-1d", "1w", "d", 7])
def test_a_bad_retention_duration_is_refused_naming_the_field(tmp_path: Path, value: Any) -> None:
    with pytest.raises(SpecError, match=r"^store\.keep_failed: "):
        parse_spec(spec_with_store({"keep_failed": value}), tmp_path / "kvern.toml")


def test_an_older_store_gets_the_retention_index(sql_job_store: JobStore) -> None:
    with sql_job_store.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_kvern_jobs_status_finished")
    sql_job_store.create_schema()
    with sql_job_store.engine.connect() as conn:
        names = {index["name"] for index in inspect(conn).get_indexes(schema.jobs.name)}
    assert "ix_kvern_jobs_status_finished" in names


def test_jobs_purge_erases_what_finished_before_the_period(spec_path: Path, running_store: JobStore) -> None:
    failed, succeeded = ended(running_store, JobStatus.FAILED), ended(running_store, JobStatus.SUCCEEDED)
    working = running_job(running_store)
    assert run_kvern(spec_path, "jobs", "purge", "--older-than", "1d").output == "erased 0 job(s)\n"
    time.sleep(1.1)
    result = run_kvern(spec_path, "jobs", "purge", "--older-than", "1s", "--status", "failed")
    assert result.exit_code == RET_OK and result.output == "erased 1 job(s)\n"
    assert_erased(running_store, failed)
    assert running_store.get(succeeded) is not None
    assert run_kvern(spec_path, "jobs", "purge", "--older-than", "1s").output == "erased 1 job(s)\n"
    assert running_store.get(working) is not None
    assert run_kvern(spec_path, "jobs", "purge", "--older-than", "soon").exit_code == RET_USAGE
    assert run_kvern(spec_path, "jobs", "purge", "--older-than", "1s", "--status", "running").exit_code == RET_USAGE


# -- 4. subject tagging --------------------------------------------------------------------------------------


def test_erase_subject_erases_every_job_about_one_person_and_nothing_else(job_store: JobStoreProtocol) -> None:
    hers = [finished_job_with_files(job_store, subject="user:42"), new_job(job_store, subject="user:42")]
    hers.append(running_job_of(job_store, "user:42"))
    others = [finished_job_with_files(job_store, subject="user:420"), new_job(job_store)]
    job = job_store.get(hers[0])
    assert job is not None and job.subject == "user:42"
    assert job_store.erase_subject("user:42") == 3
    for job_id in hers:
        assert_erased(job_store, job_id)
    assert all(job_store.get(job_id) is not None for job_id in others)
    assert job_store.erase_subject("user:42") == 0


def running_job_of(store: JobStoreProtocol, subject: str) -> str:
    job_id = new_job(store, subject=subject)
    assert store.claim_attempt(job_id, "w@host").run
    return job_id


def test_the_subject_column_is_indexed(sql_job_store: JobStore) -> None:
    with sql_job_store.engine.connect() as conn:
        indexes = inspect(conn).get_indexes(schema.jobs.name)
    assert any(index["column_names"] == ["subject"] for index in indexes)


async def test_a_submission_carries_a_subject_shown_in_the_job_view(api: Any) -> None:
    client, _, store = api
    response = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1], "subject": "user:42"})
    assert response.status_code == 202 and response.json()["subject"] == "user:42"
    job_id = response.json()["id"]
    assert (await client.get(f"/api/v1/jobs/{job_id}")).json()["subject"] == "user:42"
    untagged = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1]})
    assert untagged.json()["subject"] is None
    assert store.erase_subject("user:42") == 1
    assert (await client.get(f"/api/v1/jobs/{job_id}")).status_code == 404


@pytest.mark.parametrize("subject", ["", "x" * 201, "user:\n42", "user:\x0042", 42, None, ["user:42"]])
async def test_a_bad_subject_is_refused_before_anything_is_recorded(api: Any, subject: Any) -> None:
    client, publisher, store = api
    response = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1], "subject": subject})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_subject"
    assert publisher.published == [] and store.list_jobs(None, 10) == []


async def test_the_subject_is_part_of_the_idempotency_hash(api: Any) -> None:
    client, _, _ = api
    key = {"Idempotency-Key": "order-7"}
    first = await client.post("/api/v1/jobs", json={"task": "add", "args": [1], "subject": "user:1"}, headers=key)
    assert first.status_code == 202
    same = await client.post("/api/v1/jobs", json={"task": "add", "args": [1], "subject": "user:1"}, headers=key)
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    other = await client.post("/api/v1/jobs", json={"task": "add", "args": [1], "subject": "user:2"}, headers=key)
    assert other.status_code == 409


def test_jobs_delete_subject_erases_and_counts(spec_path: Path, running_store: JobStore) -> None:
    hers = [finished_job_with_files(running_store, subject="user:42") for _ in range(2)]
    kept = finished_job_with_files(running_store, subject="user:7")
    result = run_kvern(spec_path, "jobs", "delete", "--subject", "user:42")
    assert result.exit_code == RET_OK and result.output == "erased 2 job(s) of subject 'user:42'\n"
    for job_id in hers:
        assert_erased(running_store, job_id)
    assert running_store.get(kept) is not None
    assert run_kvern(spec_path, "jobs", "delete").exit_code == RET_USAGE
    assert run_kvern(spec_path, "jobs", "delete", kept, "--subject", "user:7").exit_code == RET_USAGE


def test_kvern_submit_sends_the_subject(spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    def front_door(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(202, json={"id": "5a1f0c3e", "status": "queued"})

    def client(**options: Any) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(front_door), **options)

    monkeypatch.setattr(kvern_client, "httpx", types.SimpleNamespace(Client=client, HTTPError=httpx.HTTPError))
    monkeypatch.setattr(
        cli,
        "running_instance",
        lambda _ctx: types.SimpleNamespace(
            runtime=lambda: types.SimpleNamespace(extra={}),  # one machine: no host of several
            state_dir=spec_path.parent,
            spec=types.SimpleNamespace(web=types.SimpleNamespace(api_prefix="/api"), hosts=()),
        ),
    )
    monkeypatch.setattr(cli, "front_door_url", lambda _config: "http://front-door")
    assert run_kvern(spec_path, "submit", "t.work", "--subject", "user:42").exit_code == RET_OK
    assert run_kvern(spec_path, "submit", "t.work").exit_code == RET_OK
    plain = {"task": "t.work", "args": [], "kwargs": {}}
    assert sent == [{**plain, "subject": "user:42"}, plain]


# -- against a running instance ------------------------------------------------------------------------------

CANCELLABLE_TASKS = """
import time

from celery import Celery

import kvern

app = Celery("erasure")


@app.task
def wait_for_cancel(limit_s):
    deadline = time.monotonic() + limit_s
    while not kvern.cancelled():
        if time.monotonic() > deadline:
            return "never cancelled"
        kvern.progress(10)
        time.sleep(0.05)
    return "stopped"
"""

CANCELLABLE_SPEC = """
[app]
tasks = "tasks"

[web]
heads = 1

[[pools]]
name = "main"
queues = ["main"]
min = 1
max = 1
"""


@pytest.mark.integration
def test_a_running_task_polling_cancelled_ends_cancelled_on_a_real_instance(
    tmp_path: Path, start_instance: Any
) -> None:
    tasks = tmp_path / "cancellable_tasks.py"
    tasks.write_text(CANCELLABLE_TASKS)
    running = start_instance(write_project(tmp_path / "project", CANCELLABLE_SPEC, tasks))
    with running.client() as client:
        job_id = started_job(client)
        asked = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=JSON)
        assert asked.status_code == 202, asked.text
        job = wait_for_outcome(client, job_id, timeout=30)
        assert job["status"] == "cancelled" and job["attempts"] == 1
        erased = client.delete(f"/api/v1/jobs/{job_id}", headers=JSON)
        assert erased.status_code == 204
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 404
        # a running job erased: whatever its attempt writes once it sees kvern.cancelled() brings nothing back
        tagged = started_job(client, subject="user:42")
        assert client.delete(f"/api/v1/jobs/{tagged}", headers=JSON).status_code == 204
        time.sleep(1.5)
        assert client.get(f"/api/v1/jobs/{tagged}").status_code == 404
        store = JobStore(running.config.store_url)
        try:
            assert store.history(tagged) == [] and store.erase_subject("user:42") == 0
        finally:
            store.close()


def started_job(client: httpx.Client, **fields: str) -> str:
    """Submit a job that runs until it is cancelled, and wait until its attempt runs."""
    body = {"task": "tasks.wait_for_cancel", "args": [60], **fields}
    job_id = str(client.post("/api/v1/jobs", json=body).json()["id"])
    deadline = time.monotonic() + 60
    while client.get(f"/api/v1/jobs/{job_id}").json()["progress"] < 10:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    return job_id
