"""The job event stream: its events for a job's changes, resuming by Last-Event-ID, the shared poller, and the
same access rules as GET of the job (keys, ownership, watch grants). Real SQLite store, stub publisher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kvern.api.app import WebHead, create_app
from kvern.api.events import JobWatch, job_events, mark_reader
from kvern.api.watch_grants import grant_allows, make_grant
from kvern.jobs.keys import Scope
from kvern.jobs.records import NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.jobs.watching import job_mark
from tests.unit.doubles import keyed_web_head

SECRET = b"s" * 32
FAST_POLL_S = 0.02


@pytest.fixture
def web_head(tmp_path: Path) -> WebHead:
    return keyed_web_head(tmp_path, "ev_tasks")


@pytest.fixture
async def client(web_head: WebHead) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(web_head)
    app.state.grant_secret = SECRET
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://web-head") as client:
            yield client


def store_of(head: WebHead) -> JobStore:
    assert isinstance(head.store, JobStore)
    return head.store


def new_job(store: JobStore, job_id: str, owner: str | None = None) -> None:
    store.create_job(NewJob(job_id, "add", "main", [1], {}, max_attempts=1, owner=owner))


def parse(stream: str) -> list[tuple[str, str | None]]:
    """(event, id) of each event in a stream's text."""
    events = []
    for block in stream.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], fields.get("id")))
    return events


async def collect(stream: AsyncIterator[str], into: list[str]) -> None:
    async for chunk in stream:
        into.append(chunk)


async def test_a_stream_sends_each_change_and_ends_with_the_final_state(web_head: WebHead) -> None:
    store = store_of(web_head)
    new_job(store, "j1")
    watch = JobWatch(mark_reader(store), interval_s=FAST_POLL_S)
    chunks: list[str] = []
    follower = asyncio.create_task(collect(job_events(store, watch, "j1", None), chunks))
    await asyncio.sleep(0.1)
    claim = store.claim_attempt("j1", "w1")
    await asyncio.sleep(0.1)
    store.record_progress("j1", claim.attempt, 40, "half way")
    await asyncio.sleep(0.1)
    store.record_success("j1", claim.attempt, 3)
    await asyncio.wait_for(follower, 2)
    kinds = [kind for kind, _ in parse("".join(chunks))]
    assert kinds == ["status", "status", "progress", "end"]
    assert '"status":"succeeded"' in chunks[-1]
    assert not watch.followers  # the stream let go of its job


async def test_resuming_with_the_last_event_id_skips_what_was_seen(web_head: WebHead) -> None:
    store = store_of(web_head)
    new_job(store, "j2")
    job = store.get("j2")
    assert job is not None
    watch = JobWatch(mark_reader(store), interval_s=FAST_POLL_S)
    chunks: list[str] = []
    follower = asyncio.create_task(collect(job_events(store, watch, "j2", job_mark(job)), chunks))
    await asyncio.sleep(0.1)
    assert parse("".join(chunks)) == []  # nothing new since the state the client saw
    store.cancel("j2")
    await asyncio.wait_for(follower, 2)
    assert [kind for kind, _ in parse("".join(chunks))] == ["end"]


async def test_many_streams_share_one_poll_per_interval(web_head: WebHead) -> None:
    store = store_of(web_head)
    for n in range(20):
        new_job(store, f"m{n}")
    watch = JobWatch(mark_reader(store), interval_s=0.05)
    followers = [asyncio.create_task(collect(job_events(store, watch, f"m{n}", None), [])) for n in range(20)]
    await asyncio.sleep(0.5)
    assert len(watch.followers) == 20
    assert 3 <= watch.polls <= 12  # about one read per interval for all twenty streams, not twenty
    for n in range(20):
        store.cancel(f"m{n}")
    await asyncio.wait_for(asyncio.gather(*followers), 2)


async def test_the_route_follows_the_rules_of_get(client: httpx.AsyncClient, web_head: WebHead) -> None:
    assert web_head.keys is not None
    alice = web_head.keys.create_key("alice", [Scope.READ, Scope.SUBMIT])
    bob = web_head.keys.create_key("bob", [Scope.READ])
    store = store_of(web_head)
    new_job(store, "owned", owner=alice.key.id)
    store.cancel("owned")  # finished: the stream is its final event only
    url = "/api/v1/jobs/owned/events"
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers={"Authorization": f"Bearer {bob.token}"})).status_code == 404
    answer = await client.get(url, headers={"Authorization": f"Bearer {alice.token}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-accel-buffering"] == "no"
    assert [kind for kind, _ in parse(answer.text)] == ["end"]


async def test_a_watch_grant_opens_one_job_only(client: httpx.AsyncClient, web_head: WebHead) -> None:
    store = store_of(web_head)
    for job_id in ("mine", "other"):
        new_job(store, job_id)
        store.cancel(job_id)
    grant = make_grant(SECRET, "mine")
    assert (await client.get(f"/api/v1/jobs/mine/events?grant={grant}")).status_code == 200
    assert (await client.get(f"/api/v1/jobs/other/events?grant={grant}")).status_code == 404
    forged = make_grant(b"x" * 32, "mine")
    assert (await client.get(f"/api/v1/jobs/mine/events?grant={forged}")).status_code == 404


def test_a_grant_expires() -> None:
    grant = make_grant(SECRET, "j", ttl_s=10, now=1000)
    assert grant_allows(SECRET, grant, "j", now=1005)
    assert not grant_allows(SECRET, grant, "j", now=1011)
    assert not grant_allows(SECRET, "garbage", "j", now=1005)


def test_marks_change_with_what_a_follower_sees(web_head: WebHead) -> None:
    store = store_of(web_head)
    new_job(store, "k")
    before = mark_reader(store)(["k", "missing"])
    assert list(before) == ["k"]
    claim = store.claim_attempt("k", "w")
    store.record_progress("k", claim.attempt, 10)
    assert mark_reader(store)(["k"])["k"] != before["k"]
    assert store.get("k") is not None and store.get("k").status is JobStatus.RUNNING  # type: ignore[union-attr]
