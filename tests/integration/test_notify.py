"""Notifications and instance-wide metrics on a real instance: a finished job is announced by a signed webhook
(the task's, from the spec) and by email (the submission's own), each attempt is on the job's GET, and
`/api/metrics` shows the job in its task's histograms with the pool and its queue."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from kvern.notify.signing import SIGNATURE_HEADER, verify
from tests.integration.conftest import Running, reports_spec, wait_for_outcome, write_project
from tests.receivers import receiving_mail, receiving_webhooks

pytestmark = pytest.mark.integration

TASK = "tasks.generate_heavy_report"


T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout}s")


def test_a_finished_job_is_announced_and_measured(tmp_path: Path, start_instance: Callable[..., Running]) -> None:
    key = b"integration-key"
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "webhook.key").write_bytes(key)
    with receiving_webhooks() as receiver, receiving_mail() as (smtp_port, inbox):
        extra = f"""notify = ["{receiver.url}"]

[notify]
webhook_key_file = "webhook.key"
link = "/reports/{{id}}/"

[notify.smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
sender = "reports@example.com"
"""
        spec = write_project(tmp_path / "project", reports_spec(heads=1, pool_max=1, extra=extra))
        running = start_instance(spec)
        with running.client() as client:
            body = {"task": TASK, "args": [7], "kwargs": {"seconds": 0.2}, "notify": ["mailto:ada@example.com"]}
            submitted = client.post("/api/v1/jobs", json=body)
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            assert wait_for_outcome(client, job_id)["status"] == "succeeded"

            def delivered() -> list[dict[str, str]]:
                log = client.get(f"/api/v1/jobs/{job_id}").json()["notifications"]
                return log if {entry["outcome"] for entry in log} == {"delivered"} and len(log) == 2 else []

            log = wait_until(delivered, 30, "both targets told")
            assert {entry["target"] for entry in log} == {receiver.url, "mailto:ada@example.com"}
            [(headers, sent)] = receiver.requests
            assert verify(key, headers[SIGNATURE_HEADER], sent, time.time())
            assert json.loads(sent)["id"] == job_id
            [(to, mail)] = inbox.mails
            assert to == ["ada@example.com"]
            payload = mail.get_payload(decode=True)
            assert isinstance(payload, bytes)
            assert f"{running.url}/reports/{job_id}/" in payload.decode()

            refused = client.post("/api/v1/jobs", json=body | {"notify": ["http://127.0.0.1:1/steal"]})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_notify"

            def measured() -> str:
                text = httpx.get(f"{running.url}/api/metrics", headers=running.headers, timeout=10).text
                return text if f'kvern_job_run_seconds_count{{task="{TASK}"}} 1.0' in text else ""

            metrics = wait_until(measured, 40, "the job in its task's run-time histogram")
            assert re.search(r'kvern_pool_processes\{pool="reports"\} 1\.0', metrics)
            assert re.search(r'kvern_queue_consumers\{queue="reports"\} 1\.0', metrics)
            assert f'kvern_jobs_finished_total{{status="succeeded",task="{TASK}"}} 1.0' in metrics
