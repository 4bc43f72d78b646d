"""API keys at the job API: 401 without a valid key, 403 without the scope, 404 for another key's job, lists
and idempotency keys per key, admin sees all (stub publisher, real SQLite store, keys in the same store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kvern.api.app import WebHead, create_app
from kvern.jobs.keys import Scope
from tests.unit.doubles import keyed_web_head

JOBS = "/api/v1/jobs"


@pytest.fixture
def web_head(tmp_path: Path) -> WebHead:
    return keyed_web_head(tmp_path, "auth_tasks")


@pytest.fixture
async def client(web_head: WebHead) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(web_head)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://web-head") as client:
            yield client


def bearer(web_head: WebHead, name: str, *scopes: str) -> dict[str, str]:
    assert web_head.keys is not None
    return {"Authorization": f"Bearer {web_head.keys.create_key(name, scopes).token}"}


async def submit(client: httpx.AsyncClient, headers: dict[str, str], **extra: str) -> httpx.Response:
    return await client.post(JOBS, json={"task": "add", "args": [1, 2]}, headers={**headers, **extra})


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer kvern_000000000000_" + "A" * 43, "Basic dXNlcjpwYXNz", "Bearer not-a-key"],
)
async def test_no_or_bad_key_is_401_in_the_error_shape(client: httpx.AsyncClient, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for response in (await client.get(JOBS, headers=headers), await submit(client, headers)):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_key_without_the_scope_is_403(client: httpx.AsyncClient, web_head: WebHead) -> None:
    reader = bearer(web_head, "reader", Scope.READ)
    submitter = bearer(web_head, "submitter", Scope.SUBMIT)
    assert (await submit(client, reader)).status_code == 403
    assert (await client.get(JOBS, headers=submitter)).status_code == 403
    assert (await client.get(JOBS, headers=reader)).status_code == 200


async def test_another_keys_job_does_not_exist_for_it(client: httpx.AsyncClient, web_head: WebHead) -> None:
    alice = bearer(web_head, "alice", Scope.SUBMIT, Scope.READ)
    mallory = bearer(web_head, "mallory", Scope.SUBMIT, Scope.READ)
    admin = bearer(web_head, "ops", Scope.ADMIN)
    job_id = (await submit(client, alice)).json()["id"]
    for method, path in [
        ("GET", f"{JOBS}/{job_id}"),
        ("GET", f"{JOBS}/{job_id}/artifacts/report.pdf"),
        ("POST", f"{JOBS}/{job_id}/cancel"),
        ("DELETE", f"{JOBS}/{job_id}"),
        ("GET", f"/api/v1/dlq/{job_id}"),
        ("POST", f"/api/v1/dlq/{job_id}/replay"),
    ]:
        response = await client.request(method, path, headers=mallory)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] in {"unknown_job", "unknown_artifact"}
    assert (await client.get(JOBS, headers=mallory)).json()["jobs"] == []
    assert [job["id"] for job in (await client.get(JOBS, headers=alice)).json()["jobs"]] == [job_id]
    assert (await client.get(f"{JOBS}/{job_id}", headers=alice)).status_code == 200
    assert [job["id"] for job in (await client.get(JOBS, headers=admin)).json()["jobs"]] == [job_id]
    assert (await client.get(f"{JOBS}/{job_id}", headers=admin)).status_code == 200


async def test_idempotency_keys_belong_to_their_api_key(client: httpx.AsyncClient, web_head: WebHead) -> None:
    alice = bearer(web_head, "alice", Scope.SUBMIT)
    bob = bearer(web_head, "bob", Scope.SUBMIT)
    first = await submit(client, alice, **{"Idempotency-Key": "order-1"})
    again = await submit(client, alice, **{"Idempotency-Key": "order-1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    other = await client.post(JOBS, json={"task": "add", "args": [5]}, headers={**bob, "Idempotency-Key": "order-1"})
    assert other.status_code == 202  # not 409 with alice's job id
    assert other.json()["id"] != first.json()["id"]


async def test_a_revoked_key_stops_working(client: httpx.AsyncClient, web_head: WebHead) -> None:
    key = bearer(web_head, "temp", Scope.READ)
    assert (await client.get(JOBS, headers=key)).status_code == 200
    assert web_head.keys is not None and web_head.keys.revoke("temp")
    web_head.auth.verified.clear()  # heads remember a verified key for a few seconds
    assert (await client.get(JOBS, headers=key)).status_code == 401


async def test_docs_and_metrics_need_a_key_from_elsewhere(client: httpx.AsyncClient, web_head: WebHead) -> None:
    remote = {"X-Real-IP": "203.0.113.9"}
    for path in ("/api/openapi.json", "/api/docs", "/api/metrics"):
        assert (await client.get(path, headers=remote)).status_code == 401, path
        assert (await client.get(path, headers={"X-Real-IP": "127.0.0.1"})).status_code == 200, path
    metrics = bearer(web_head, "prom", Scope.METRICS)
    assert (await client.get("/api/metrics", headers={**remote, **metrics})).status_code == 200
    reader = bearer(web_head, "reader", Scope.READ)
    assert (await client.get("/api/metrics", headers={**remote, **reader})).status_code == 403
    assert (await client.get("/api/health", headers=remote)).status_code in {200, 503}  # open to load balancers
