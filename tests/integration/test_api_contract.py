"""The running API against its own OpenAPI document, fuzzed by Schemathesis through the front door (nginx)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvern.jobs.records import NewJob
from kvern.jobs.store import JobStore
from tests.integration.conftest import (
    SYSTEM_BROKER,
    Running,
    machine_queue,
    reports_spec,
    wait_for_outcome,
    write_project,
)

pytestmark = pytest.mark.integration

# Cheap tasks only: the fuzzer's valid POSTs create real jobs.
CHEAP_TASKS = textwrap.dedent(
    """
    from celery import Celery

    app = Celery("contract")


    @app.task
    def echo(*args, **kwargs):
        return None
    """
)
# Every check Schemathesis has (not_a_server_error and response_schema_conformance among them), except the two
# about authentication: the job API has none to test (access control is the front door's business).
CHECKS = "all"
EXCLUDED_CHECKS = "ignored_auth,object_level_authorization"
MAX_EXAMPLES = 100  # per operation and phase: about 1,500 requests, the run takes about a minute


@pytest.fixture
def contract_api(tmp_path: Path, start_instance: Callable[..., Running]) -> Running:
    tasks = tmp_path / "cheap_tasks.py"
    tasks.write_text(CHEAP_TASKS)
    # On the machine's RabbitMQ (no test here is about the broker): no private node to boot and stop per test.
    queue = machine_queue()
    spec = reports_spec(heads=1, pool_min=0, pool_max=1, queue=queue, broker=SYSTEM_BROKER)
    spec = spec.replace('[tasks."tasks.generate_heavy_report"]', "")
    spec = spec.replace(f'queue = "{queue}"\nretries = 2\ntime_limit = 60\n', "")
    return start_instance(write_project(tmp_path / "contract", spec, tasks_source=tasks))


def test_the_running_api_keeps_its_openapi_contract(contract_api: Running, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{contract_api.url}/api/openapi.json",
        "--header",
        f"Authorization: {contract_api.headers['Authorization']}",
        "--checks",
        CHECKS,
        "--exclude-checks",
        EXCLUDED_CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        "8",
        "--workers",
        "2",
        "--request-timeout",
        "20",
        "--no-shrink",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "schemathesis"),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_through_the_front_door_errors_docs_and_old_rows(contract_api: Running) -> None:
    with contract_api.client() as client:
        # nginx refuses TRACE itself: the same JSON error shape as the API's, with Allow
        trace = client.request("TRACE", "/api/v1/jobs")
        assert trace.status_code == 405 and trace.json()["error"]["code"] == "method_not_allowed"
        assert "POST" in trace.headers["allow"]

        # the docs page and its assets come from the instance
        page = client.get("/api/docs")
        assert page.status_code == 200 and "https://" not in page.text
        for asset in re.findall(r"""(?:src|href)=["'](/api/docs/assets/[^"']+)["']""", page.text):
            assert client.get(asset).status_code == 200, asset

        # a payload nested 500 deep is refused at the door and leaves nothing behind
        deep = nested(500)
        refused = client.post("/api/v1/jobs", json={"task": "tasks.echo", "kwargs": {"x": deep}})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "args_too_deep"
        assert client.get("/api/v1/jobs").json()["jobs"] == []

        # a row that deep already in the store (from before the limit) still lists, with a placeholder
        store = JobStore(contract_api.config.store_url)
        try:
            store.create_jobs([NewJob(str(uuid.uuid4()), "tasks.echo", "reports", [], {"x": deep}, 1)])
        finally:
            store.close()
        listed = client.get("/api/v1/jobs")
        assert listed.status_code == 200
        assert listed.json()["jobs"][0]["render_error"] == "kwargs could not be rendered"


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"n": value}
    return value


def test_a_cancelled_job_never_runs_when_its_message_reaches_a_worker(contract_api: Running) -> None:
    with contract_api.client() as client:
        # given a job cancelled while its pool is still at zero processes
        cancelled = client.post("/api/v1/jobs", json={"task": "tasks.echo", "args": ["cancel me"]}).json()["id"]
        answer = client.post(f"/api/v1/jobs/{cancelled}/cancel")
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
        # when the pool scales up and a later job on the same queue has run
        later = client.post("/api/v1/jobs", json={"task": "tasks.echo", "args": ["after"]}).json()["id"]
        assert wait_for_outcome(client, later)["status"] == "succeeded"
        time.sleep(1)  # the cancelled job's message went first; give its skip time to land if it were a run
        # then the cancelled job never got an attempt
        job = client.get(f"/api/v1/jobs/{cancelled}").json()
        assert (job["status"], job["attempts"], job["started_at"]) == ("cancelled", 0, None)
        assert client.post(f"/api/v1/jobs/{cancelled}/cancel").status_code == 409
