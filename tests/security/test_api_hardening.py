"""The job API's hardening: JSON-only writes (CSRF), the CORS allowlist, bounded list pages without payloads,
safe artifact downloads, and logs that never show a job's args or result.

Most tests drive the web head's ASGI app in process (a real SQLite store, a stub publisher); the last ones run a
real instance (nginx, RabbitMQ, Celery workers) and read its logs.
"""

from __future__ import annotations

import json
import logging
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
from celery.app import trace

import kvern
from kvern.api.app import WebHead, create_app
from kvern.api.browsers import is_same_origin
from kvern.api.downloads import CHUNK_BYTES
from kvern.broker.message import task_message
from kvern.catalog import load_user_app
from kvern.constants import LOG_DIR
from kvern.errors import SpecError
from kvern.jobs.base import ArtifactsTooLarge, JobStoreProtocol
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.records import ArtifactInfo, Job, NewJob
from kvern.jobs.store import JobStore
from kvern.spec import load_spec
from kvern.worker import context
from kvern.worker.log_privacy import PAYLOAD_LOGGERS, HidePayloads, hide_payloads_in_logs
from tests.integration.conftest import Running, reports_spec, start_instance, wait_for_outcome, write_project
from tests.unit.doubles import StubPublisher

__all__ = ["start_instance"]  # a fixture, used by name

TASKS = """
from celery import Celery
app = Celery("hardening")

@app.task
def add(x: int, y: int = 0) -> int:
    return x + y
"""
SPEC = '[app]\ntasks = "hardening_tasks"\n[[pools]]\nname = "main"\nqueues = ["main"]\n'
SUBMISSION = '{"task": "hardening_tasks.add", "args": [1, 2]}'


def make_head(folder: Path, extra_spec: str = "") -> WebHead:
    (folder / "hardening_tasks.py").write_text(textwrap.dedent(TASKS))
    spec_path = folder / "kvern.toml"
    spec_path.write_text(SPEC + extra_spec)
    spec = load_spec(spec_path)
    _, catalog = load_user_app(spec)
    store = JobStore(f"sqlite:///{folder / 'jobs.sqlite3'}")
    store.create_schema()
    return WebHead(spec, catalog, store, StubPublisher())


async def serve(head: WebHead) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(head)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://web-head") as client:
            yield client


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serve(make_head(tmp_path)):
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


# -- 1. writes must be JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_a_submission_not_declared_json_is_refused_with_415(
    api: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    answer = await api.post("/api/v1/jobs", content=SUBMISSION.encode(), headers=headers)
    assert_error(answer, 415, "unsupported_media_type")
    assert (await api.get("/api/v1/jobs")).json()["jobs"] == []  # nothing was recorded


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
async def test_a_json_submission_is_accepted(api: httpx.AsyncClient, content_type: str) -> None:
    answer = await api.post("/api/v1/jobs", content=SUBMISSION, headers={"Content-Type": content_type})
    assert answer.status_code == 202, answer.text


async def test_a_bodyless_write_needs_no_content_type_but_a_declared_one_must_be_json(api: httpx.AsyncClient) -> None:
    job = (await api.post("/api/v1/jobs", content=SUBMISSION, headers={"Content-Type": "application/json"})).json()
    refused = await api.post(f"/api/v1/jobs/{job['id']}/cancel", content="x", headers={"Content-Type": "text/plain"})
    assert_error(refused, 415, "unsupported_media_type")
    assert (await api.post(f"/api/v1/jobs/{job['id']}/cancel")).status_code == 200


async def test_the_openapi_document_names_403_and_415(api: httpx.AsyncClient) -> None:
    document = (await api.get("/api/openapi.json")).json()
    submit = document["paths"]["/api/v1/jobs"]["post"]
    assert {"403", "415"} <= set(submit["responses"])
    assert list(submit["requestBody"]["content"]) == ["application/json"]


# -- 2. cross-origin requests ---------------------------------------------------------------------------------

ALLOWED = "https://app.example.com"
EVIL = "https://evil.example"
JSON = {"Content-Type": "application/json"}
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


@pytest.fixture
async def cors_api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serve(make_head(tmp_path, f'[web]\ncors_origins = ["{ALLOWED}"]\n')):
        yield client


# (`https://web-head` on the default port is the head's own site when a proxy on 443 serves it: not foreign)
@pytest.mark.parametrize("origin", [EVIL, "null", "http://web-head:8081", "https://web-head:8443"])
async def test_a_post_from_a_foreign_origin_is_refused_with_403(api: httpx.AsyncClient, origin: str) -> None:
    answer = await api.post("/api/v1/jobs", content=SUBMISSION, headers={**JSON, "Origin": origin})
    assert_error(answer, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in answer.headers
    assert (await api.get("/api/v1/jobs")).json()["jobs"] == []


async def test_a_preflight_from_a_foreign_origin_is_refused_with_403(cors_api: httpx.AsyncClient) -> None:
    answer = await cors_api.options("/api/v1/jobs", headers={"Origin": EVIL, **PREFLIGHT})
    assert_error(answer, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in answer.headers


async def test_without_origin_or_from_the_front_door_itself_requests_work_without_cors_headers(
    api: httpx.AsyncClient,
) -> None:
    for headers in ({}, {"Origin": "http://web-head"}, {"Origin": "http://web-head:80"}):
        answer = await api.post("/api/v1/jobs", content=SUBMISSION, headers={**JSON, **headers})
        assert answer.status_code == 202, answer.text
        assert not any(name.startswith("access-control-") for name in answer.headers)


async def test_by_default_no_origin_gets_cors_headers(api: httpx.AsyncClient) -> None:
    answer = await api.options("/api/v1/jobs", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert_error(answer, 403, "origin_not_allowed")


async def test_an_allowed_origin_gets_cors_answers(cors_api: httpx.AsyncClient) -> None:
    preflight = await cors_api.options("/api/v1/jobs", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in preflight.headers["access-control-allow-methods"]
    answer = await cors_api.post("/api/v1/jobs", content=SUBMISSION, headers={**JSON, "Origin": ALLOWED})
    assert answer.status_code == 202
    assert answer.headers["access-control-allow-origin"] == ALLOWED


def test_the_front_door_port_stands_in_for_the_port_nginx_leaves_out_of_host() -> None:
    assert is_same_origin("http://127.0.0.1:8080", "127.0.0.1", {8080})
    assert not is_same_origin("http://127.0.0.1:3000", "127.0.0.1", {8080})
    assert is_same_origin("http://127.0.0.1:8080", "127.0.0.1:8080", {None})
    assert not is_same_origin("http://127.0.0.1:8080", "localhost", {8080})
    assert not is_same_origin("http://127.0.0.1:x", "127.0.0.1", {8080})
    # a site served under its own name by a proxy on the default port: the page's origin has no port
    assert is_same_origin("http://shop.test", "shop.test", {8080})
    assert is_same_origin("https://shop.test", "shop.test", {8080})
    assert not is_same_origin("http://shop.test:3000", "shop.test", {8080})
    assert not is_same_origin("https://evil.example", "shop.test", {8080})


@pytest.mark.parametrize("bad", ['"*"', '"https://app.example.com/"', '"app.example.com"', "1"])
def test_cors_origins_must_be_origins(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SpecError, match=r"web\.cors_origins"):
        make_head(tmp_path, f"[web]\ncors_origins = [{bad}]\n")


def test_cors_origins_are_read_from_the_spec(tmp_path: Path) -> None:
    head = make_head(tmp_path, '[web]\ncors_origins = ["https://App.Example.com", "http://127.0.0.1:3000"]\n')
    assert head.spec.web.cors_origins == ("https://app.example.com", "http://127.0.0.1:3000")


# -- 3. list pages ---------------------------------------------------------------------------------------------

LISTS = ["/api/v1/jobs", "/api/v1/dlq"]


@pytest.mark.parametrize("path", LISTS)
async def test_a_page_larger_than_100_is_refused_with_422(api: httpx.AsyncClient, path: str) -> None:
    assert_error(await api.get(path, params={"limit": 101}), 422, "invalid_request")
    assert (await api.get(path, params={"limit": 100})).status_code == 200


@pytest.mark.parametrize("path", LISTS)
async def test_the_openapi_document_caps_the_page_size(api: httpx.AsyncClient, path: str) -> None:
    document = (await api.get("/api/openapi.json")).json()
    (limit,) = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "limit"]
    assert (limit["schema"]["maximum"], limit["schema"]["default"]) == (100, 50)


async def test_listings_leave_out_args_kwargs_and_result_but_keep_artifacts(tmp_path: Path) -> None:
    head = make_head(tmp_path)
    store = head.store
    async for api in serve(head):
        secret = {"task": "hardening_tasks.add", "args": ["card-4111"], "kwargs": {"y": "pin-1234"}}
        job_id = (await api.post("/api/v1/jobs", json=secret)).json()["id"]
        claim = store.claim_attempt(job_id, "w")
        store.save_artifact(job_id, claim.attempt, "out.txt", "text/plain", b"x")
        store.record_success(job_id, claim.attempt, {"token": "result-5678"})
        dead_id = (await api.post("/api/v1/jobs", json=secret)).json()["id"]
        store.mark_dead(dead_id, "dead-lettered")
        for path in LISTS:
            listed = (await api.get(path)).json()["jobs"]
            assert listed and all(not {"args", "kwargs", "result"} & set(item) for item in listed)
            for secret_text in ("card-4111", "pin-1234", "result-5678"):
                assert secret_text not in (await api.get(path)).text
        (done,) = [item for item in (await api.get("/api/v1/jobs")).json()["jobs"] if item["id"] == job_id]
        assert [a["name"] for a in done["artifacts"]] == ["out.txt"]
        own = (await api.get(f"/api/v1/jobs/{job_id}")).json()
        assert (own["args"], own["kwargs"], own["result"]) == (
            ["card-4111"],
            {"y": "pin-1234"},
            {"token": "result-5678"},
        )


# -- 4. artifacts ----------------------------------------------------------------------------------------------


def finished_job_with_artifact(store: JobStoreProtocol, name: str, data: bytes, content_type: str) -> str:
    job_id = str(uuid.uuid4())
    store.create_job(NewJob(job_id, "hardening_tasks.add", "main", [], {}, 1))
    attempt = store.claim_attempt(job_id, "w").attempt
    store.save_artifact(job_id, attempt, name, content_type, data)
    assert store.record_success(job_id, attempt, None)
    return job_id


@pytest.mark.parametrize(
    ("name", "fallback"),
    [('a"b.txt', "a_b.txt"), ("日本.txt", "__.txt"), ("100%;x.csv", "100_;x.csv"), ("plain.txt", "plain.txt")],
)
async def test_an_artifact_download_names_the_file_per_rfc_6266_with_safe_headers(
    tmp_path: Path, name: str, fallback: str
) -> None:
    head = make_head(tmp_path)
    job_id = finished_job_with_artifact(head.store, name, b"<script>alert(1)</script>", "text/html")
    async for api in serve(head):
        answer = await api.get(f"/api/v1/jobs/{job_id}/artifacts/{quote(name)}")
        assert answer.status_code == 200, answer.text
        assert answer.content == b"<script>alert(1)</script>"
        disposition = answer.headers["content-disposition"]
        assert disposition == f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
        assert unquote(disposition.rsplit("filename*=UTF-8''", 1)[1]) == name
        assert disposition.isascii()
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-security-policy"] == "sandbox"


class CountingStore(MemoryJobStore):
    """Records how the artifact's bytes are read."""

    def __init__(self) -> None:
        super().__init__()
        self.chunk_reads: list[int] = []

    def artifact(self, job_id: str, name: str) -> tuple[str, bytes] | None:
        raise AssertionError("a download must not load the whole artifact")

    def artifact_chunk(self, job_id: str, name: str, offset: int, size: int) -> bytes | None:
        chunk = MemoryJobStore.artifact(self, job_id, name)
        assert chunk is not None
        self.chunk_reads.append(size)
        return chunk[1][offset : offset + size]

    def artifact_info(self, job_id: str, name: str) -> ArtifactInfo | None:
        found = MemoryJobStore.artifact(self, job_id, name)
        return ArtifactInfo(name, found[0], len(found[1])) if found else None


async def test_a_download_is_streamed_in_chunks(tmp_path: Path) -> None:
    head = make_head(tmp_path)
    head.store = store = CountingStore()
    data = bytes(range(256)) * 4096  # 1 MiB
    job_id = finished_job_with_artifact(store, "big.bin", data, "application/octet-stream")
    async for api in serve(head):
        answer = await api.get(f"/api/v1/jobs/{job_id}/artifacts/big.bin")
        assert answer.status_code == 200 and answer.content == data
        assert answer.headers["content-length"] == str(len(data))
    assert len(store.chunk_reads) == len(data) // CHUNK_BYTES and max(store.chunk_reads) == CHUNK_BYTES


@pytest.mark.parametrize("size", [0, 5, 100_000])
def test_an_artifact_reads_back_in_chunks(job_store: JobStoreProtocol, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    job_id = finished_job_with_artifact(job_store, "x.bin", data, "application/octet-stream")
    assert job_store.artifact_info(job_id, "x.bin") == ArtifactInfo("x.bin", "application/octet-stream", size)
    chunks = [job_store.artifact_chunk(job_id, "x.bin", offset, 4096) for offset in range(0, size + 4096, 4096)]
    assert b"".join(chunk or b"" for chunk in chunks) == data and chunks[-1] == b""
    assert job_store.artifact_chunk(job_id, "nope", 0, 10) is None
    assert job_store.artifact_info(job_id, "nope") is None


def test_a_losing_attempts_artifact_has_no_info_or_chunks(job_store: JobStoreProtocol) -> None:
    job_id = str(uuid.uuid4())
    job_store.create_job(NewJob(job_id, "hardening_tasks.add", "main", [], {}, 3))
    job_store.claim_attempt(job_id, "w")
    job_store.save_artifact(job_id, 1, "stale.txt", "text/plain", b"x")
    assert job_store.artifact_info(job_id, "stale.txt") is None  # not yet won
    assert job_store.claim_attempt(job_id, "w").attempt == 2
    assert job_store.record_success(job_id, 2, None)
    assert job_store.artifact_info(job_id, "stale.txt") is None
    assert job_store.artifact_chunk(job_id, "stale.txt", 0, 10) is None


def test_the_artifacts_of_an_attempt_are_capped_together(job_store: JobStoreProtocol) -> None:
    job_id = str(uuid.uuid4())
    job_store.create_job(NewJob(job_id, "hardening_tasks.add", "main", [], {}, 1))
    job_store.claim_attempt(job_id, "w")
    job_store.save_artifact(job_id, 1, "a.bin", "application/octet-stream", b"a" * 60, max_total=100)
    job_store.save_artifact(job_id, 1, "a.bin", "application/octet-stream", b"a" * 70, max_total=100)  # replaces
    with pytest.raises(ArtifactsTooLarge):
        job_store.save_artifact(job_id, 1, "b.bin", "application/octet-stream", b"b" * 31, max_total=100)
    with pytest.raises(ArtifactsTooLarge):  # a refused replacement keeps the file that was there
        job_store.save_artifact(job_id, 1, "a.bin", "application/octet-stream", b"a" * 101, max_total=100)
    job_store.save_artifact(job_id, 1, "b.bin", "application/octet-stream", b"b" * 30, max_total=100)
    assert job_store.record_success(job_id, 1, None)
    assert [(a.name, a.size) for a in get_job(job_store, job_id).artifacts] == [("a.bin", 70), ("b.bin", 30)]


def get_job(store: JobStoreProtocol, job_id: str) -> Job:
    job = store.get(job_id)
    assert job is not None
    return job


@contextmanager
def running_attempt(store: JobStoreProtocol) -> Iterator[str]:
    job_id = str(uuid.uuid4())
    store.create_job(NewJob(job_id, "hardening_tasks.add", "main", [], {}, 1))
    token = context._current.set(context.JobContext(store, context.JobInfo(job_id, 1)))
    store.claim_attempt(job_id, "w")
    try:
        yield job_id
    finally:
        context._current.reset(token)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a/b.txt",
        "a\\b.txt",
        ".hidden",
        "..",
        "new\nline.txt",
        "tab\t.txt",
        "bell\x07",
        "rtl\u202etxt.exe",
        " padded.txt",
        "x" * 201,
    ],
)
def test_save_artifact_refuses_a_name_that_is_no_plain_file_name(name: str) -> None:
    store = MemoryJobStore()
    with running_attempt(store) as job_id, pytest.raises(ValueError, match="artifact name"):
        kvern.save_artifact(name, b"x", "text/plain")
    assert store.artifact_info(job_id, name) is None and store.history(job_id)


@pytest.mark.parametrize(
    "content_type",
    ["text", "text/", "/plain", "text/plain\r\nX-Evil: 1", "text/plain\n", "*/*", "a b/c", "t/" + "x" * 120],
)
def test_save_artifact_refuses_a_content_type_that_is_no_media_type(content_type: str) -> None:
    with running_attempt(MemoryJobStore()), pytest.raises(ValueError, match="content type"):
        kvern.save_artifact("out.txt", b"x", content_type)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("日本.txt", "text/plain; charset=utf-8"), ('a"b.txt', None), ("report.pdf", "application/pdf")],
)
def test_save_artifact_keeps_plain_names_and_media_types(name: str, content_type: str | None) -> None:
    store = MemoryJobStore()
    with running_attempt(store) as job_id:
        kvern.save_artifact(name, b"x", content_type)
    assert store._artifacts[(job_id, 1, name)]["data"] == b"x"


def test_save_artifact_refuses_files_over_the_spec_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "_artifact_limits", context.ArtifactLimits(max_bytes=100))
    store = MemoryJobStore()
    with running_attempt(store):
        kvern.save_artifact("a.bin", b"a" * 60)
        with pytest.raises(ValueError, match="100"):
            kvern.save_artifact("b.bin", b"b" * 41)
        with pytest.raises(ValueError, match="artifact_bytes"):
            kvern.save_artifact("c.bin", b"c" * 101)
        kvern.save_artifact("b.bin", b"b" * 40)
    assert sorted(name for (_, _, name) in store._artifacts) == ["a.bin", "b.bin"]


def test_the_artifact_cap_is_read_from_the_spec(tmp_path: Path) -> None:
    assert make_head(tmp_path).spec.limits.artifact_bytes == 50 * 1024 * 1024
    assert make_head(tmp_path, "[limits]\nartifact_bytes = 1000\n").spec.limits.artifact_bytes == 1000
    with pytest.raises(SpecError, match=r"limits\.artifact_bytes"):
        make_head(tmp_path, "[limits]\nartifact_bytes = 0\n")


# -- against a running instance (nginx, RabbitMQ, Supervisor, Celery workers) -------------------------------------

SECRET_TASKS = textwrap.dedent(
    """
    from celery import Celery

    import kvern

    app = Celery("secrets")


    @app.task
    def keep(card, pin=None):
        kvern.save_artifact("日本 \\"q\\".txt", b"<html><script>alert(1)</script>", "text/html")
        return {"token": "result-token-" + card[-4:] + "-9f8e7d"}
    """
)
CARD, PIN, RESULT = "card-4111-1111-1111-4242", "pin-2468-SECRET", "result-token-4242-9f8e7d"


@pytest.fixture
def secrets_instance(tmp_path: Path, start_instance: Callable[..., Running]) -> Running:
    tasks = tmp_path / "secret_tasks.py"
    tasks.write_text(SECRET_TASKS)
    spec = reports_spec(heads=1, pool_min=1, pool_max=1).split('[tasks."tasks.generate_heavy_report"]')[0]
    return start_instance(write_project(tmp_path / "secrets", spec, tasks_source=tasks))


@pytest.mark.integration
def test_through_the_front_door_the_api_is_hardened_and_logs_keep_no_payloads(secrets_instance: Running) -> None:
    body = {"task": "tasks.keep", "args": [CARD], "kwargs": {"pin": PIN}}
    with secrets_instance.client() as client:
        # a CSRF-style submission: text/plain from a foreign page
        forged = client.post("/api/v1/jobs", content=json.dumps(body), headers={"Content-Type": "text/plain"})
        assert_error(forged, 415, "unsupported_media_type")
        foreign = client.post("/api/v1/jobs", json=body, headers={"Origin": "https://evil.example"})
        assert_error(foreign, 403, "origin_not_allowed")
        preflight = client.options("/api/v1/jobs", headers={"Origin": "https://evil.example", **PREFLIGHT})
        assert_error(preflight, 403, "origin_not_allowed")
        assert client.get("/api/v1/jobs").json()["jobs"] == []
        # the front door's own page posts with its own origin
        answer = client.post("/api/v1/jobs", json=body, headers={"Origin": secrets_instance.url})
        assert answer.status_code == 202, answer.text
        job = wait_for_outcome(client, answer.json()["id"])
        assert job["status"] == "succeeded" and job["result"] == {"token": RESULT}
        (artifact,) = job["artifacts"]
        download = client.get(artifact["url"])
        assert download.status_code == 200 and download.content == b"<html><script>alert(1)</script>"
        assert download.headers["content-disposition"].endswith("filename*=UTF-8''%E6%97%A5%E6%9C%AC%20%22q%22.txt")
        assert download.headers["x-content-type-options"] == "nosniff"
        assert download.headers["content-security-policy"] == "sandbox"
        assert RESULT not in client.get("/api/v1/jobs").text
    logs = secrets_instance.config.state_path / LOG_DIR
    written = {path: path.read_text(errors="replace") for path in logs.rglob("*") if path.is_file()}
    assert any("tasks.keep" in text for text in written.values()), "the worker log should name the task"
    for secret in (CARD, PIN, RESULT):
        leaking = [path.name for path, text in written.items() if secret in text]
        assert not leaking, f"{secret} is in {leaking}"


# -- 5. logs keep no payloads ----------------------------------------------------------------------------------


@pytest.fixture
def payloads_hidden(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(trace, "LOG_SUCCESS", trace.LOG_SUCCESS)  # restored afterwards
    hide_payloads_in_logs()
    yield
    for name in PAYLOAD_LOGGERS:
        logger = logging.getLogger(name)
        for installed in [f for f in logger.filters if isinstance(f, HidePayloads)]:
            logger.removeFilter(installed)


def test_celerys_success_receipt_and_failure_lines_show_no_payload(
    payloads_hidden: None, caplog: pytest.LogCaptureFixture
) -> None:
    context = {"id": "j1", "name": "tasks.keep", "runtime": 0.1, "args": repr([CARD]), "kwargs": repr({"p": PIN})}
    with caplog.at_level(logging.INFO):
        trace.info(trace.LOG_SUCCESS, {**context, "return_value": repr({"token": RESULT})})
        logging.getLogger("celery.worker.strategy").info(
            "%(name)s %(args)s %(kwargs)s", context, extra={"data": context}
        )
        logging.getLogger("celery.app.trace").error("Task %(name)s[%(id)s] raised %(args)s %(kwargs)s", context)
    assert "Task tasks.keep[j1] succeeded in 0.1s" in caplog.text
    for secret in (CARD, PIN, RESULT):
        assert secret not in caplog.text
        assert all(secret not in repr(getattr(record, "data", "")) for record in caplog.records)


def test_task_messages_carry_no_payload_in_their_headers() -> None:
    message = task_message("j1", "tasks.keep", "reports", [CARD], {"pin": PIN})
    assert CARD not in repr(message.headers) and PIN not in repr(message.headers)
    assert json.loads(message.body)[:2] == [[CARD], {"pin": PIN}]  # the worker still gets them
