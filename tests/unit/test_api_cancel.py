"""`POST /api/v1/jobs/{id}/cancel`: a queued job becomes cancelled and never runs."""

from __future__ import annotations

from typing import Any

from kvern.jobs.states import JobStatus
from tests.unit import test_api

project = test_api.project
web_head = test_api.web_head
api = test_api.api


async def submit(client: Any) -> str:
    response = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1]})
    assert response.status_code == 202
    return str(response.json()["id"])


async def test_a_queued_job_is_cancelled_and_a_worker_then_skips_it(api: Any) -> None:
    client, _, store = api
    job_id = await submit(client)
    response = await client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"] is not None
    claim = store.claim_attempt(job_id, "w@host")  # its message is delivered after all
    assert not claim.run
    job = store.get(job_id)
    assert job.status is JobStatus.CANCELLED and job.attempts == 0
    assert job_id not in [j.id for j in store.unpublished(older_than_s=-1)]  # the outbox relay leaves it too


async def test_cancelling_an_unknown_job_is_404(api: Any) -> None:
    client, _, _ = api
    response = await client.post("/api/v1/jobs/no-such-job/cancel")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_job"


async def test_a_finished_job_cannot_be_cancelled(api: Any) -> None:
    client, _, store = api
    job_id = await submit(client)
    assert store.claim_attempt(job_id, "w@host").run
    assert store.record_success(job_id, 1, 1)
    finished = await client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert finished.status_code == 409
    assert store.get(job_id).status is JobStatus.SUCCEEDED
    again = await submit(client)
    assert (await client.post(f"/api/v1/jobs/{again}/cancel")).status_code == 200
    assert (await client.post(f"/api/v1/jobs/{again}/cancel")).status_code == 409
