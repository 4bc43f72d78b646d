"""The whole architecture for real: private RabbitMQ, nginx, web heads, Supervisor, Celery workers."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pypdf import PdfReader

from kvern.constants import MAX_BODY_BYTES, RET_SPEC
from kvern.runtime import nginx
from kvern.runtime.instance import Instance, owned_pids
from kvern.runtime.web_scaling import scale_web
from kvern.spec import load_spec
from tests.integration.conftest import Running, reports_spec, submit_report, wait_for_outcome, write_project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    spec = write_project(tmp_path_factory.mktemp("reports"), reports_spec())
    instance = Instance(load_spec(spec), spec.parent / ".kvern")
    config = instance.up()
    try:
        yield Running(instance, config)
    finally:
        instance.down()
        leftover = owned_pids(instance.state_dir)
        assert not leftover, f"kvern down left processes behind: {leftover}"


def kvern(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvern.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=180, check=False
    )


def job_count(client: httpx.Client) -> int:
    return len(client.get("/api/v1/jobs", params={"limit": 100}).json()["jobs"])


def test_reports_come_back_as_valid_pdfs_through_nginx(platform: Running) -> None:
    with platform.client() as client:
        responses = [submit_report(client, user_id) for user_id in (1, 2, 3, 4)]
        assert [r.status_code for r in responses] == [202] * 4
        assert all(r.headers["location"] == f"/api/v1/jobs/{r.json()['id']}" for r in responses)
        jobs = [wait_for_outcome(client, r.json()["id"]) for r in responses]
        for job in jobs:
            assert job["status"] == "succeeded", job
            assert job["progress"] == 100 and job["attempts"] == 1
            assert job["started_at"] and job["finished_at"]
            artifact = job["artifacts"][0]
            download = client.get(artifact["url"])
            assert download.status_code == 200
            assert download.headers["content-type"] == "application/pdf"
            assert len(PdfReader(io.BytesIO(download.content)).pages) >= 2


def test_front_door_serves_the_page_and_the_openapi_document(platform: Running) -> None:
    with platform.client() as client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'id="generate"' in page.text
        openapi = client.get("/api/openapi.json").json()
        assert "/api/v1/jobs" in openapi["paths"] and "/api/v1/jobs/{job_id}" in openapi["paths"]
        metrics = client.get("/api/metrics")
        assert metrics.status_code == 200 and "kvern_job_store_up 1.0" in metrics.text


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b'["a list"]', 400, "invalid_request"),
        (b'{"task": "tasks.nope"}', 404, "unknown_task"),
        (b'{"task": "tasks.generate_heavy_report", "args": []}', 422, "bad_arguments"),
        (b'{"task": "tasks.generate_heavy_report", "args": [1], "kwargs": {"colour": 1}}', 422, "bad_arguments"),
        (b'{"task": "tasks.generate_heavy_report", "args": {"a": 1}}', 400, "invalid_request"),
    ],
)
def test_bad_submissions_are_rejected_and_leave_no_trace(
    platform: Running, body: bytes, status: int, code: str
) -> None:
    with platform.client() as client:
        before = job_count(client)
        response = client.post("/api/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
        assert job_count(client) == before


def test_oversized_bodies_get_413_at_the_app_and_at_the_front_door(platform: Running) -> None:
    with platform.client() as client:
        before = job_count(client)
        just_over = b'{"task": "tasks.generate_heavy_report", "args": ["' + b"x" * MAX_BODY_BYTES + b'"]}'
        far_over = b"x" * (MAX_BODY_BYTES * 3)
        for body in (just_over, far_over):
            response = client.post("/api/v1/jobs", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "body_too_large"
        assert job_count(client) == before


def raw_get(port: int, path: str) -> tuple[int, str]:
    """A GET of `path` exactly as written, on a socket of its own; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b"".join(iter(lambda: conn.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_what_nginx_refuses_itself_has_the_error_shape(platform: Running) -> None:
    with platform.client() as client:
        huge_header = client.get("/api/v1/jobs", headers={"Idempotency-Key": "k" * 10_000})
        assert huge_header.status_code == 400
        assert huge_header.json()["error"]["code"] == "bad_request"
        for malformed in ("/../x", "/..%2fkvern.toml", "/api/v1/jobs/abc%00def"):
            status, body = raw_get(platform.config.front_door_port, malformed)  # as is: a client would tidy it
            assert status == 400, (malformed, body)
            assert json.loads(body)["error"]["code"] == "bad_request"
        long_uri = client.get("/api/v1/jobs/" + "j" * 20_000)
        assert long_uri.status_code == 414
        assert long_uri.json()["error"]["code"] == "uri_too_long"
        # the web heads' own 400s pass through unchanged
        assert client.get("/api/v1/jobs", params={"limit": "abc"}).json()["error"]["code"] != "bad_request"


def test_unknown_job_and_artifact_are_404(platform: Running) -> None:
    with platform.client() as client:
        assert client.get("/api/v1/jobs/does-not-exist").json()["error"]["code"] == "unknown_job"
        assert client.get("/api/v1/jobs/does-not-exist/artifacts/report.pdf").status_code == 404


def test_job_list_is_newest_first_and_filters_by_status(platform: Running) -> None:
    with platform.client() as client:
        first = submit_report(client, 11, seconds=0).json()["id"]
        second = submit_report(client, 12, seconds=0).json()["id"]
        wait_for_outcome(client, first)
        wait_for_outcome(client, second)
        listed = [job["id"] for job in client.get("/api/v1/jobs", params={"limit": 2}).json()["jobs"]]
        assert listed == [second, first]
        succeeded = client.get("/api/v1/jobs", params={"status": "succeeded"}).json()["jobs"]
        assert succeeded and all(job["status"] == "succeeded" for job in succeeded)
        assert client.get("/api/v1/jobs", params={"status": "bogus"}).status_code == 422


def test_status_json_reports_processes_queues_and_jobs(platform: Running) -> None:
    spec = platform.instance.spec.path
    result = kvern("-f", str(spec), "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["front_door"] == platform.url
    names = {p["name"]: p["state"] for p in report["processes"]}
    assert names["nginx"] == "RUNNING" and names["broker"] == "RUNNING"
    assert names["web-0"] == "RUNNING" and names["web-1"] == "RUNNING"
    assert "reports" in report["queues"] and report["queues"]["reports"]["consumers"] >= 1
    assert report["jobs"]["succeeded"] >= 1
    assert report["pools"][0]["name"] == "reports"


def test_cli_submit_waits_for_the_outcome(platform: Running) -> None:
    spec = platform.instance.spec.path
    result = kvern(
        "-f", str(spec), "submit", "tasks.generate_heavy_report", "--arg", "7", "--kwarg", "seconds=0.2", "--wait"
    )
    assert result.returncode == 0, result.stderr
    assert '"status": "succeeded"' in result.stdout


def test_an_invalid_spec_names_the_field_and_starts_nothing(tmp_path: Path) -> None:
    spec = write_project(tmp_path / "bad", reports_spec(pool_min=5, pool_max=2))
    result = kvern("-f", str(spec), "up", "-d")
    assert result.returncode == RET_SPEC
    assert result.stderr.strip().count("\n") == 0
    assert "pools[0].min" in result.stderr
    assert not (tmp_path / "bad" / ".kvern").exists()


def test_a_spec_edited_while_running_reaches_no_process(platform: Running) -> None:
    # given the running platform (retries = 2), and its kvern.toml edited to retries = 9
    spec_file = platform.instance.spec.path
    original = spec_file.read_text()
    state = platform.instance.state_dir
    spec_file.write_text(original.replace("retries = 2", "retries = 9"))
    try:
        # when a web head starts after the edit (`kvern scale web 3`)
        assert scale_web(platform.instance.supervisor, state, 3) == (2, 3)
        # then it computes max_attempts from the snapshot `up` took, like the heads started before it
        transport = httpx.HTTPTransport(uds=str(nginx.web_socket(state, 2)))
        with httpx.Client(
            transport=transport, base_url="http://web-head", timeout=30, headers=platform.headers
        ) as head:
            response = submit_report(head, user_id=1, seconds=0.1)
        assert response.status_code == 202, response.text
        assert response.json()["max_attempts"] == 3
    finally:
        spec_file.write_text(original)
        scale_web(platform.instance.supervisor, state, 2)
