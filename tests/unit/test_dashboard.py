"""The dashboard on a web head: sign-in by an admin key kept in an HttpOnly cookie, its pages and assets, the
job pages and actions, and the overview's arithmetic. Stub publisher, real SQLite store."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvern.api.app import WebHead, create_app
from kvern.api.dashboard.overview import (
    BUCKET_S,
    OverviewFeed,
    activity_series,
    latency_series,
    percentile,
    queue_rates,
    task_latencies,
)
from kvern.jobs.activity import JobTimes
from kvern.jobs.keys import Scope
from kvern.jobs.records import NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from tests.unit.doubles import StubPublisher, keyed_web_head

BASE = "http://web-head/_kvern"
MUL_TASK = """
@app.task
def mul(x: int, y: int = 1) -> int:
    return x * y
"""


@pytest.fixture
def web_head(tmp_path: Path) -> WebHead:
    return keyed_web_head(tmp_path, "dash_tasks", MUL_TASK)


@pytest.fixture
async def client(web_head: WebHead) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(web_head)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client


def store_of(head: WebHead) -> JobStore:
    assert isinstance(head.store, JobStore)
    return head.store


async def signed_in(client: httpx.AsyncClient, head: WebHead) -> None:
    assert head.keys is not None
    admin = head.keys.create_key("ops", [Scope.ADMIN])
    answer = await client.post(f"{BASE}/login", json={"key": admin.token})
    assert answer.status_code == 204


async def test_without_a_session_the_page_asks_for_the_key_and_the_data_is_refused(client: httpx.AsyncClient) -> None:
    page = await client.get(f"{BASE}/")
    assert page.status_code == 200 and 'id="login"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert (await client.get(f"{BASE}/api/jobs")).status_code == 401
    assert (await client.get(f"{BASE}/api/live")).status_code == 401


async def test_an_admin_key_signs_in_with_an_httponly_strict_cookie(
    client: httpx.AsyncClient, web_head: WebHead
) -> None:
    assert web_head.keys is not None
    reader = web_head.keys.create_key("reader", [Scope.READ])
    refused = await client.post(f"{BASE}/login", json={"key": reader.token})
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    admin = web_head.keys.create_key("ops", [Scope.ADMIN])
    answer = await client.post(f"{BASE}/login", json={"key": admin.token})
    cookie = answer.headers["set-cookie"]
    assert re.search(r"HttpOnly", cookie, re.I) and re.search(r"SameSite=strict", cookie, re.I)
    assert "Path=/_kvern/" in cookie
    page = await client.get(f"{BASE}/")
    assert 'id="chart-activity"' in page.text
    assert (await client.post(f"{BASE}/login", content=f"key={admin.token}")).status_code == 415  # JSON only
    broken = await client.post(f"{BASE}/login", content=b"notjson", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "malformed_json"


async def test_every_asset_the_pages_name_is_served_by_the_head(client: httpx.AsyncClient, web_head: WebHead) -> None:
    await signed_in(client, web_head)
    pages = (await client.get(f"{BASE}/")).text
    client.cookies.clear()
    pages += (await client.get(f"{BASE}/")).text
    named = set(re.findall(r'(?:src|href)="([^"#]+)"', pages)) - {"data:,"}
    assert named == {"static/style.css", "static/app.js", "static/charts.js", "static/login.js"}
    for path in named:
        assert (await client.get(f"{BASE}/{path}")).status_code == 200
    assert (await client.get(f"{BASE}/static/../app.py")).status_code == 404


async def test_jobs_are_found_by_status_task_and_id_prefix(client: httpx.AsyncClient, web_head: WebHead) -> None:
    store = store_of(web_head)
    for n, task in enumerate(["add", "add", "mul"]):
        store.create_job(NewJob(f"{n}abc-{n}", task, "main", [n], {}, max_attempts=1))
    store.cancel("1abc-1")
    await signed_in(client, web_head)

    async def ids(**query: str) -> list[str]:
        return [job["id"] for job in (await client.get(f"{BASE}/api/jobs", params=query)).json()["jobs"]]

    assert await ids() == ["2abc-2", "1abc-1", "0abc-0"]
    assert await ids(task="add") == ["1abc-1", "0abc-0"]
    assert await ids(status="cancelled") == ["1abc-1"]
    assert await ids(q="2ab") == ["2abc-2"]
    assert await ids(q="%") == []  # a LIKE wildcard is a character like any other


async def test_a_dead_job_is_replayed_and_published_again(client: httpx.AsyncClient, web_head: WebHead) -> None:
    store = store_of(web_head)
    store.create_job(NewJob("dead-1", "add", "main", [1], {}, max_attempts=1))
    claim = store.claim_attempt("dead-1", "w1")
    store.record_failure("dead-1", claim.attempt, "boom", JobStatus.DEAD, "Traceback ...")
    await signed_in(client, web_head)
    shown = (await client.get(f"{BASE}/api/jobs/dead-1")).json()
    assert shown["status"] == "dead" and shown["history"][0]["traceback"] == "Traceback ..."
    assert (await client.post(f"{BASE}/api/jobs/dead-1/cancel")).status_code == 409
    replayed = await client.post(f"{BASE}/api/jobs/dead-1/replay")
    assert replayed.status_code == 202 and replayed.json()["status"] == "queued"
    publisher = web_head.publisher
    assert isinstance(publisher, StubPublisher) and [job_id for job_id, _, _ in publisher.published] == ["dead-1"]
    assert (await client.delete(f"{BASE}/api/jobs/dead-1")).status_code == 204
    assert (await client.get(f"{BASE}/api/jobs/dead-1")).status_code == 404


def test_activity_is_counted_per_bucket_as_a_rate() -> None:
    now = 10_009.0  # the newest bucket is [10000, 10010)
    times = [
        JobTimes("add", "succeeded", now - 5, now - 4, now - 3),
        JobTimes("add", "dead", now - 25, now - 24, now - 3),
        JobTimes("add", "queued", now - 7200, None, None),  # older than the hour: nowhere
    ]
    series = activity_series(times, now)["series"]
    assert series["submitted"][-1] == 1 / BUCKET_S and series["submitted"][-3] == 1 / BUCKET_S
    assert series["succeeded"][-1] == 1 / BUCKET_S and series["dead"][-1] == 1 / BUCKET_S
    assert sum(series["failed"]) == 0 and len(series["started"]) == 3600 // BUCKET_S


def test_queue_rates_count_the_last_minute_per_queue_of_the_tasks() -> None:
    now = 10_000.0
    times = [
        JobTimes("add", "succeeded", now - 30, now - 20, now - 10),  # in and out within the minute
        JobTimes("add", "queued", now - 10, None, None),  # in only
        JobTimes("mail", "running", now - 120, now - 5, None),  # out only: submitted before the minute
        JobTimes("add", "succeeded", now - 300, now - 290, now - 280),  # neither
    ]
    queue_of = {"add": "math", "mail": "outbox"}.__getitem__
    assert queue_rates(times, queue_of, now) == {
        "math": {"in": round(2 / 60, 2), "out": round(1 / 60, 2)},
        "outbox": {"in": 0.0, "out": round(1 / 60, 2)},
    }


def test_queue_wait_and_run_time_percentiles_per_task() -> None:
    times = [JobTimes("add", "succeeded", 0.0, float(n), float(n) * 2) for n in range(1, 101)]
    (row,) = task_latencies(times, since=0.0)
    assert (row["task"], row["started"], row["wait_p50"], row["wait_p95"]) == ("add", 100, 50.0, 95.0)
    assert (row["run_p50"], row["run_p95"]) == (50.0, 95.0)
    assert percentile([], 0.5) is None


async def test_one_snapshot_per_interval_serves_every_watching_page() -> None:
    taken = 0

    async def take() -> dict[str, Any]:
        nonlocal taken
        taken += 1
        return {"n": taken}

    feed = OverviewFeed(take, interval_s=0.05)
    seen: list[list[Any]] = [[] for _ in range(5)]

    async def watch(into: list[Any]) -> None:
        async for snapshot in feed.updates(keepalive_s=1.0):
            into.append(snapshot)

    watchers = [asyncio.create_task(watch(into)) for into in seen]
    await asyncio.sleep(0.5)
    for watcher in watchers:
        watcher.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    assert 5 <= taken <= 12  # about one per interval, not one per page
    assert all(len(into) >= 5 for into in seen)
    await asyncio.sleep(0.1)
    assert feed.task is not None and feed.task.done()  # nobody watches: the feed stops reading


def test_wait_and_run_time_are_charted_per_task_and_minute() -> None:
    now = 3_659.0  # the newest minute is [3600, 3660)
    times = [JobTimes("add", "succeeded", 3_600.0, 3_600.0 + wait, 3_610.0 + wait) for wait in (1.0, 2.0, 3.0)]
    times.append(JobTimes("mul", "running", 3_520.0, 3_550.0, None))  # started in the minute before
    charted = latency_series(times, now)["tasks"]
    assert set(charted) == {"add", "mul"}
    assert charted["add"]["wait_p50"][-1] == 2.0 and charted["add"]["wait_p95"][-1] == 3.0
    assert charted["add"]["run_p50"][-1] == 10.0 and charted["add"]["run_p50"][-2] is None
    assert charted["mul"]["wait_p50"][-2] == 30.0 and all(v is None for v in charted["mul"]["run_p95"])
