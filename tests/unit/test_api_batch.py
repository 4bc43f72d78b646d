"""Bulk submit (`POST /api/v1/jobs:batch`) against a stub publisher and a real SQLite job store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvern.api.app import WebHead, create_app
from kvern.catalog import check_binding, load_user_app
from kvern.enqueue import validation
from kvern.errors import PublishError
from kvern.jobs.records import Job, NewJob
from kvern.jobs.store import JobStore
from kvern.spec import load_spec
from tests.unit.doubles import StubPublisher
from tests.unit.test_api import project  # noqa: F401  # the fixture: a spec with the task api_tasks.add

URL = "/api/v1/jobs:batch"
FAILING_ARG = 666  # the publisher below loses the confirm of a job with this first argument


class CountingStore(JobStore):
    """The real SQLite store, counting the transactions that record jobs."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.record_transactions = 0

    def create_jobs(self, news: Sequence[NewJob]) -> list[Job]:
        self.record_transactions += 1
        return super().create_jobs(news)

    def create_job(self, new: NewJob) -> tuple[Job, bool]:
        self.record_transactions += 1
        return super().create_job(new)


class InFlightPublisher(StubPublisher):
    """Counts how many publishes wait for their confirm at the same time; loses the confirm of FAILING_ARG's job."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0

    async def publish(self, job: Job) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)  # the confirm's round trip
        self.in_flight -= 1
        if job.args[:1] == [FAILING_ARG]:
            raise PublishError("confirm lost")
        await super().publish(job)


@pytest.fixture
def web_head(project: Path, tmp_path: Path) -> WebHead:  # noqa: F811
    spec = load_spec(project)
    _, catalog = load_user_app(spec)
    store = CountingStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    store.create_schema()
    return WebHead(spec, catalog, store, InFlightPublisher())


@pytest.fixture
async def client(web_head: WebHead) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(web_head)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://web-head") as http:
            yield http


def add(x: Any, **extra: Any) -> dict[str, Any]:
    return {"task": "api_tasks.add", "args": [x], **extra}


async def test_each_job_gets_its_own_answer_and_bad_ones_do_not_cost_the_good_ones(
    client: httpx.AsyncClient, web_head: WebHead
) -> None:
    jobs = [add(1), {"task": "nope"}, add(2, kwargs={"z": 1}), add(3, subject="\x00"), "not an object", add(4)]
    response = await client.post(URL, json={"jobs": jobs})
    assert response.status_code == 200
    answers = response.json()["jobs"]
    assert [a["status"] for a in answers] == [202, 404, 422, 400, 400, 202]
    assert [a.get("error", {}).get("code") for a in answers] == [
        None,
        "unknown_task",
        "bad_arguments",
        "invalid_subject",
        "invalid_request",
        None,
    ]
    accepted = [answers[0]["job"], answers[5]["job"]]
    assert [job["args"] for job in accepted] == [[1], [4]]
    publisher = web_head.publisher
    assert isinstance(publisher, InFlightPublisher)
    assert [job_id for job_id, _, _ in publisher.published] == [job["id"] for job in accepted]
    await web_head.marker.settled()
    for job in accepted:
        stored = web_head.store.get(job["id"])
        assert stored is not None and stored.published_at is not None
    assert len(web_head.store.list_jobs(None, 100, None, None)) == 2  # the refused ones left no record


async def test_a_batch_is_one_record_transaction_and_one_wait_for_its_confirms(
    client: httpx.AsyncClient, web_head: WebHead
) -> None:
    response = await client.post(URL, json={"jobs": [add(n) for n in range(50)]})
    assert [a["status"] for a in response.json()["jobs"]] == [202] * 50
    store, publisher = web_head.store, web_head.publisher
    assert isinstance(store, CountingStore) and isinstance(publisher, InFlightPublisher)
    assert store.record_transactions == 1
    assert publisher.most_in_flight == 50


async def test_a_lost_confirm_withdraws_only_its_own_job(client: httpx.AsyncClient, web_head: WebHead) -> None:
    response = await client.post(URL, json={"jobs": [add(1), add(FAILING_ARG), add(2)]})
    answers = response.json()["jobs"]
    assert [a["status"] for a in answers] == [202, 503, 202]
    assert answers[1]["error"]["code"] == "broker_unavailable"
    assert [job.args for job in web_head.store.list_jobs(None, 100, None, None)] == [[2], [1]]


async def test_idempotency_keys_per_job(client: httpx.AsyncClient, web_head: WebHead) -> None:
    first = (await client.post(URL, json={"jobs": [add(1, idempotency_key="a"), add(2)]})).json()["jobs"]
    again = [add(1, idempotency_key="a"), add(9, idempotency_key="a"), add(5, idempotency_key="b")]
    second = (await client.post(URL, json={"jobs": again})).json()["jobs"]
    conflict = (await client.post(URL, json={"jobs": [add(7, idempotency_key="a")]})).json()["jobs"]
    assert [a["status"] for a in first] == [202, 202]
    assert [a["status"] for a in second] == [200, 400, 202]
    assert second[0]["job"]["id"] == first[0]["job"]["id"]
    assert second[1]["error"]["code"] == "duplicate_idempotency_key"
    assert conflict[0]["status"] == 409 and conflict[0]["error"]["code"] == "idempotency_conflict"
    bad_key = (await client.post(URL, json={"jobs": [add(1, idempotency_key="")]})).json()["jobs"]
    assert bad_key[0]["error"]["code"] == "invalid_idempotency_key"
    store = web_head.store
    assert isinstance(store, CountingStore)
    assert store.record_transactions == 2 + 2 + 1  # one per keyed job, one for the keyless ones when there are any


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"jobs": []}, "invalid_batch_size"),
        ({"jobs": [add(n) for n in range(501)]}, "invalid_batch_size"),
        ({"jobs": add(1)}, "invalid_request"),
        ({"jobs": [add(1)], "extra": 1}, "invalid_request"),
        ([add(1)], "invalid_request"),
    ],
)
async def test_a_body_that_is_no_batch_is_refused_whole(
    client: httpx.AsyncClient, web_head: WebHead, body: Any, code: str
) -> None:
    response = await client.post(URL, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert web_head.store.list_jobs(None, 10, None, None) == []


async def test_the_batch_takes_no_idempotency_header(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json={"jobs": [add(1)]}, headers={"Idempotency-Key": "k"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"


async def test_the_openapi_document_lists_the_bulk_submit(client: httpx.AsyncClient) -> None:
    document = (await client.get("/api/openapi.json")).json()
    operation = document["paths"][URL]["post"]
    assert operation["operationId"] == "submit_jobs"
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert "idempotency_key" in schema["properties"]["jobs"]["items"]["description"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchView"
    }


async def test_a_batch_of_alike_jobs_binds_their_arguments_once_per_shape(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindings: list[tuple[int, tuple[str, ...]]] = []

    def counted(task: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
        bindings.append((len(args), tuple(kwargs)))
        check_binding(task, args, kwargs)

    monkeypatch.setattr(validation, "check_binding", counted)
    validation.binding_problem.cache_clear()
    jobs = [add(n) for n in range(20)] + [add(n, kwargs={"y": n}) for n in range(20)] + [add(1, kwargs={"z": 1})] * 2
    answers = (await client.post(URL, json={"jobs": jobs})).json()["jobs"]
    assert [a["status"] for a in answers] == [202] * 40 + [422, 422]
    assert answers[-1]["error"]["message"].startswith("arguments do not fit api_tasks.add(x: int, y: int = 0)")
    assert sorted(bindings) == [(1, ()), (1, ("y",)), (1, ("z",))]
