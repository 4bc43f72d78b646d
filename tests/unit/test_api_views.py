"""One view of a job everywhere (its GET, the listings, the DLQ), and no stored row can break it."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from kvern.api.views import JobSummaryView, JobView
from kvern.jobs.records import Attempt, NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.jobs.views import STORED_VALUES, attempt_view, job_body, job_summary
from tests.unit import test_api

project = test_api.project
web_head = test_api.web_head
api = test_api.api


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"n": value}
    return value


def insert_job(store: JobStore, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None) -> str:
    """A row written straight into the store, as an older version of kvern may have left it."""
    job_id = str(uuid.uuid4())
    store.create_jobs([NewJob(job_id, "api_tasks.add", "main", args or [], kwargs or {}, 3)])
    return job_id


def finish(store: JobStore, job_id: str, status: JobStatus, result: Any = None) -> None:
    assert store.claim_attempt(job_id, "w@host").run
    if status is JobStatus.SUCCEEDED:
        assert store.record_success(job_id, 1, result)
    else:
        assert store.record_failure(job_id, 1, "boom", status)


async def test_the_job_list_shows_the_artifacts_its_own_get_shows(api: Any) -> None:
    client, _, store = api
    job_id = insert_job(store, [1])
    assert store.claim_attempt(job_id, "w@host").run
    store.save_artifact(job_id, 1, "report.pdf", "application/pdf", b"%PDF")
    assert store.record_success(job_id, 1, 1)
    plain = insert_job(store, [2])
    own = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    listed = {job["id"]: job for job in (await client.get("/api/v1/jobs")).json()["jobs"]}
    assert [a["name"] for a in own["artifacts"]] == ["report.pdf"]
    assert listed[job_id] == {name: value for name, value in own.items() if name not in STORED_VALUES}
    assert listed[plain]["artifacts"] == []


async def test_the_list_hides_the_artifacts_of_an_attempt_that_lost(api: Any) -> None:
    client, _, store = api
    job_id = insert_job(store, [1])
    assert store.claim_attempt(job_id, "w@host").run
    store.save_artifact(job_id, 1, "stale.txt", "text/plain", b"x")
    assert store.claim_attempt(job_id, "w@other").run  # attempt 1 was lost; attempt 2 owns the job
    assert store.record_success(job_id, 2, 1)
    listed = (await client.get("/api/v1/jobs")).json()["jobs"]
    assert listed[0]["artifacts"] == [] == (await client.get(f"/api/v1/jobs/{job_id}")).json()["artifacts"]


async def test_a_row_nested_too_deep_to_render_is_shown_with_a_placeholder_everywhere(api: Any) -> None:
    client, _, store = api
    good = insert_job(store, [1])
    deep = insert_job(store, kwargs={"x": nested(500)})
    finish(store, deep, JobStatus.DEAD)
    deep_result = insert_job(store, [3])
    finish(store, deep_result, JobStatus.SUCCEEDED, result=[nested(400)])

    listing = await client.get("/api/v1/jobs")
    assert listing.status_code == 200
    shown = {job["id"]: job for job in listing.json()["jobs"]}
    assert shown[good]["render_error"] is None
    assert "kwargs" in shown[deep]["render_error"]
    assert shown[deep_result]["render_error"] == "result could not be rendered"
    own = {job_id: (await client.get(f"/api/v1/jobs/{job_id}")).json() for job_id in (good, deep, deep_result)}
    assert own[good]["args"] == [1] and own[deep]["kwargs"] == {}
    assert own[deep_result]["result"] is None and own[deep_result]["args"] == [3]
    dead = await client.get("/api/v1/dlq")
    assert dead.status_code == 200 and [job["id"] for job in dead.json()["jobs"]] == [deep]
    assert (await client.get(f"/api/v1/dlq/{deep}")).status_code == 200


async def test_a_response_that_cannot_be_built_leaves_nothing_recorded_or_published(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, publisher, store = api

    def unrenderable(*_args: Any) -> Any:
        raise RuntimeError("cannot render")

    monkeypatch.setattr("kvern.enqueue.core.job_body", unrenderable)  # the submission core renders the answer
    response = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1]})
    assert response.status_code == 500
    assert publisher.published == []
    assert sum(store.counts_by_status().values()) == 0


async def test_dead_job_history_has_every_attempt_field_with_iso_times(api: Any) -> None:
    client, _, store = api
    job_id = insert_job(store, [1])
    finish(store, job_id, JobStatus.DEAD)
    history = (await client.get(f"/api/v1/dlq/{job_id}")).json()["history"]
    assert len(history) == 1
    assert set(history[0]) == {field.name for field in dataclasses.fields(Attempt)}
    assert history[0]["started_at"].endswith("+00:00") and history[0]["finished_at"].endswith("+00:00")
    assert (history[0]["outcome"], history[0]["error"]) == ("dead", "boom")


def test_attempt_view_is_generic_over_the_attempt_fields() -> None:
    attempt = Attempt(2, None, 0.0, None, None, None)
    assert attempt_view(attempt) == {
        "attempt": 2,
        "worker": None,
        "started_at": "1970-01-01T00:00:00+00:00",
        "finished_at": None,
        "outcome": None,
        "error": None,
        "traceback": None,
    }


@pytest.mark.parametrize("result", [{"total": 3}, float("nan"), [1.5, None]])
def test_the_job_json_has_the_shape_of_the_api_model(sqlite_store: JobStore, result: Any) -> None:
    # given a finished job (the CLI and the API render it with kvern.jobs.views, the OpenAPI model documents it)
    job_id = insert_job(sqlite_store, args=[1, 2])
    finish(sqlite_store, job_id, JobStatus.SUCCEEDED)
    stored = sqlite_store.get(job_id)
    assert stored is not None
    job = dataclasses.replace(stored, result=result)  # a NaN as an older version may have stored it
    # when it is rendered, then the body is exactly what the response model makes of it
    body = job_body(job)
    assert list(body) == list(JobView.model_fields)
    assert body["render_error"] is None  # a NaN is shown as null, as the response model always showed it
    assert JobView.model_validate(body).model_dump(mode="json") == body


def test_the_job_summary_has_the_shape_of_the_list_model(sqlite_store: JobStore) -> None:
    job = sqlite_store.get(insert_job(sqlite_store, args=[1, 2]))
    assert job is not None
    summary = job_summary(job)
    assert list(summary) == list(JobSummaryView.model_fields)
    assert JobSummaryView.model_validate(summary).model_dump(mode="json") == summary
