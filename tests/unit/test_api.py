"""The web head's job API against a stub publisher and a real SQLite job store (no broker, no nginx)."""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest

from kvern.api.app import WebHead, create_app
from kvern.catalog import load_user_app
from kvern.errors import BacklogFull, PublishError
from kvern.jobs.store import JobStore
from kvern.spec import load_spec
from tests.unit.doubles import StubPublisher


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "api_tasks.py").write_text(
        textwrap.dedent(
            """
            from celery import Celery
            app = Celery("api")

            @app.task
            def add(x: int, y: int = 0) -> int:
                return x + y
            """
        )
    )
    spec = tmp_path / "kvern.toml"
    spec.write_text('[app]\ntasks = "api_tasks"\n[[pools]]\nname = "main"\nqueues = ["main"]\n')
    return spec


@pytest.fixture
def web_head(project: Path, tmp_path: Path) -> WebHead:
    spec = load_spec(project)
    _, catalog = load_user_app(spec)
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    store.create_schema()
    return WebHead(spec, catalog, store, StubPublisher())


@pytest.fixture
async def api(web_head: WebHead) -> AsyncIterator[tuple[httpx.AsyncClient, StubPublisher, JobStore]]:
    store, publisher = web_head.store, web_head.publisher
    assert isinstance(store, JobStore) and isinstance(publisher, StubPublisher)  # as the web_head fixture made
    app = create_app(web_head)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a crash is a 500, as in production
        async with httpx.AsyncClient(transport=transport, base_url="http://web-head") as client:
            yield client, publisher, store


async def test_accepted_job_is_recorded_published_and_located(api: Any, web_head: WebHead) -> None:
    client, publisher, store = api
    response = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1, 2]})
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/api/v1/jobs/{job_id}"
    assert publisher.published == [(job_id, "api_tasks.add", "main")]
    await web_head.marker.settled()  # confirmed jobs are marked published in batches, off the request path
    job = store.get(job_id)
    assert job is not None and job.status.value == "queued" and job.published_at is not None


async def test_short_task_names_resolve_when_unambiguous(api: Any) -> None:
    client, _publisher, _ = api
    response = await client.post("/api/v1/jobs", json={"task": "add", "args": [1]})
    assert response.status_code == 202
    assert response.json()["task"] == "api_tasks.add"


@pytest.mark.parametrize(
    ("failure", "code"),
    [(PublishError("down"), "broker_unavailable"), (BacklogFull("full"), "backlog_full")],
)
async def test_unconfirmed_publish_answers_503_and_withdraws_the_record(
    api: Any, failure: Exception, code: str
) -> None:
    client, publisher, store = api
    publisher.failure = failure
    response = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1]})
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["error"]["code"] == code
    assert store.counts_by_status()["queued"] == 0


async def test_a_lost_confirm_for_a_job_a_worker_already_claimed_is_accepted(api: Any) -> None:
    client, publisher, store = api

    def worker_claims(job_id: str) -> None:  # the message reached the broker and a worker...
        assert store.claim_attempt(job_id, "w@host").run

    publisher.while_unconfirmed = worker_claims
    publisher.failure = PublishError("confirm lost")  # ...but its confirm never came back
    response = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1]})
    assert response.status_code == 202
    job = store.get(response.json()["id"])
    assert job is not None and job.status.value == "running"


async def test_idempotency_key_returns_the_same_job_and_refuses_a_different_body(api: Any) -> None:
    client, publisher, _ = api
    headers = {"Idempotency-Key": "order-17"}
    first = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1]}, headers=headers)
    again = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1]}, headers=headers)
    other = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [2]}, headers=headers)
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 409)
    assert again.json()["id"] == first.json()["id"]
    assert len(publisher.published) == 1


async def test_concurrent_duplicates_make_exactly_one_job(api: Any) -> None:
    client, publisher, store = api
    body = {"task": "api_tasks.add", "args": [5]}
    responses = await asyncio.gather(
        *(client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "same"}) for _ in range(50))
    )
    assert {r.status_code for r in responses} <= {200, 202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(store.counts_by_status().values()) == 1
    assert len(publisher.published) == 1


async def test_bad_arguments_are_422_with_the_signature(api: Any) -> None:
    client, publisher, store = api
    response = await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1, 2, 3]})
    assert response.status_code == 422
    assert "(x: int, y: int = 0)" in response.json()["error"]["message"]
    assert publisher.published == [] and sum(store.counts_by_status().values()) == 0


async def test_health_reflects_the_broker(api: Any) -> None:
    client, publisher, _ = api
    assert (await client.get("/api/health")).status_code == 200
    publisher.failure = PublishError("down")
    assert (await client.get("/api/health")).status_code == 503


async def test_metrics_count_submissions_by_code_and_jobs_by_status(api: Any) -> None:
    client, publisher, _ = api
    await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [1]})
    await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": []})
    publisher.failure = PublishError("down")
    await client.post("/api/v1/jobs", json={"task": "api_tasks.add", "args": [2]})
    text = (await client.get("/api/metrics")).text
    for code in ("202", "422", "503"):
        assert re.search(rf'kvern_submissions_total{{code="{code}",head="\d+"}} 1\.0', text), code
    assert 'kvern_jobs{status="queued"} 1.0' in text
    assert "kvern_job_store_up 1.0" in text
    assert "kvern_submit_seconds_count" in text


async def test_the_json_body_check_runs_on_the_event_loop_not_in_a_thread(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread hand-off per request (FastAPI runs a plain `def` dependency in its threadpool) cost the submit path
    # a sixth of a web head's event loop time (cProfile, 64 submits in flight).
    client, _, _ = api
    handed_off: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        handed_off.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    refused = await client.post("/api/v1/jobs", content=b"{}", headers={"Content-Type": "text/plain"})
    missing = await client.post("/api/v1/jobs", json={"args": [1]})  # refused by the body's own check
    assert (refused.status_code, missing.status_code) == (415, 400)
    assert handed_off == []  # neither request needed the store, so neither left the event loop
