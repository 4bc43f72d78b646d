"""Bulk submit through the front door: real nginx, broker, store and workers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Running, reports_spec, wait_for_outcome, write_project

pytestmark = pytest.mark.integration

REPORT = "tasks.generate_heavy_report"


def test_a_batch_is_accepted_job_by_job_and_its_jobs_run(
    tmp_path: Path, start_instance: Callable[..., Running]
) -> None:
    running = start_instance(write_project(tmp_path / "batch", reports_spec(heads=1, pool_min=1, pool_max=1)))
    jobs = [
        {"task": REPORT, "args": [1], "kwargs": {"seconds": 0.1}, "idempotency_key": "one"},
        {"task": REPORT, "args": [], "kwargs": {"nope": 1}},
        {"task": REPORT, "args": [2], "kwargs": {"seconds": 0.1}},
    ]
    with running.client() as client:
        assert httpx.post(f"{running.url}/api/v1/jobs:batch", json={"jobs": jobs}).status_code == 401
        response = client.post("/api/v1/jobs:batch", json={"jobs": jobs})
        assert response.status_code == 200
        answers = response.json()["jobs"]
        assert [answer["status"] for answer in answers] == [202, 422, 202]
        again = client.post("/api/v1/jobs:batch", json={"jobs": jobs[:1]}).json()["jobs"]
        assert again[0]["status"] == 200 and again[0]["job"]["id"] == answers[0]["job"]["id"]
        for answer in (answers[0], answers[2]):
            assert wait_for_outcome(client, answer["job"]["id"], timeout=60)["status"] == "succeeded"
