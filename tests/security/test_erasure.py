"""Erasure, cancel of a running job, retention and subject tagging: the store contract (every backend), the
job API, the `kvern jobs` commands and the controller's retention loop."""

from __future__ import annotations

import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from kvern import cli
from kvern.constants import RET_FAILURE, RET_OK
from kvern.jobs import schema
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import NewJob
from kvern.jobs.store import JobStore
from tests.unit import test_api

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


def kvern(spec_path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli.main, ["-f", str(spec_path), *args])


def test_jobs_delete_takes_a_short_id_and_erases_the_job(spec_path: Path, running_store: JobStore) -> None:
    job_id, kept = finished_job_with_files(running_store), finished_job_with_files(running_store)
    result = kvern(spec_path, "jobs", "delete", job_id[:8])
    assert result.exit_code == RET_OK, result.output
    assert f"erased job {job_id}" in result.output
    assert_erased(running_store, job_id)
    assert running_store.get(kept) is not None
    missing = kvern(spec_path, "jobs", "delete", job_id)
    assert missing.exit_code == RET_FAILURE and "no job" in missing.output
