"""The running API against its own OpenAPI document, fuzzed by Schemathesis through the front door (nginx)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Running, reports_spec, write_project

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
    spec = reports_spec(heads=1, pool_min=0, pool_max=1).replace('[tasks."tasks.generate_heavy_report"]', "")
    spec = spec.replace('queue = "reports"\nretries = 2\ntime_limit = 60\n', "")
    return start_instance(write_project(tmp_path / "contract", spec, tasks_source=tasks))


def test_the_running_api_keeps_its_openapi_contract(contract_api: Running, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{contract_api.url}/api/openapi.json",
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


def test_the_front_door_answers_methods_nginx_refuses_with_the_error_shape(contract_api: Running) -> None:
    response = httpx.request("TRACE", f"{contract_api.url}/api/v1/jobs", timeout=10)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["allow"]
