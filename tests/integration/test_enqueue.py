"""The app's own code enqueues through kvern's durable path, against a real instance (private RabbitMQ, workers).

A separate Python process stands for the team's web app: it has only KVERN_STATE_DIR, as every process kvern
starts does. It calls `kvern.submit` and, after `install_in_web_head()`, a task's `.delay()`; the jobs run on
the instance's workers and `result()` returns what the task returned. With the broker stopped, a submission
raises `kvern.Unavailable` at once and leaves no record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvern.constants import ENV_STATE_DIR, PROGRAM_BROKER
from kvern.jobs.store import JobStore
from kvern.runtime.supervisor import Supervisor
from tests.integration.conftest import Running, wait_for_outcome, write_project

pytestmark = pytest.mark.integration

TASKS = """
from celery import Celery

app = Celery("shop")


@app.task
def add(x, y=0):
    return x + y


@app.task
def shout(word):
    return word.upper()
"""
SPEC = """
[app]
tasks = "tasks"

[web]
heads = 1

[[pools]]
name = "main"
queues = ["main"]
concurrency = 2
min = 1
max = 1
"""
# The team's app: submits one job each way, waits for both results, prints what it saw as one JSON line.
APP = """
import json
import kvern
from kvern.enqueue import install_in_web_head

submitted = kvern.submit("tasks.add", 2, y=3)
install_in_web_head()
import tasks

delayed = tasks.shout.delay("quiet")
applied = tasks.add.apply_async(args=[10], kwargs={"y": 5})
print(json.dumps({
    "submitted": [submitted.id, submitted.url, submitted.result(timeout=20)],
    "delayed": [delayed.id, delayed.get(timeout=20), delayed.status()],
    "applied": [applied.id, applied.result(timeout=20)],
}))
"""
# The same app while the broker is away: the submission must raise, and quickly.
APP_BROKER_DOWN = """
import json, time
import kvern

started = time.monotonic()
try:
    kvern.submit("tasks.add", 1, y=1)
    outcome = "accepted"
except kvern.Unavailable as exc:
    outcome = f"unavailable: {exc}"
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - started}))
"""


def run_app(running: Running, source: str) -> dict[str, Any]:
    """Run `source` as a process of the team's app: only KVERN_STATE_DIR tells it which instance it belongs to."""
    env = {**os.environ, ENV_STATE_DIR: running.config.state_dir}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        cwd=running.config.spec_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_the_apps_own_code_submits_durably_and_a_broker_away_raises_unavailable(
    tmp_path: Path, start_instance: Callable[..., Running]
) -> None:
    tasks = tmp_path / "shop_tasks.py"
    tasks.write_text(TASKS)
    running = start_instance(write_project(tmp_path / "shop", SPEC, tasks_source=tasks))

    # when: the app submits with kvern.submit, .delay() and .apply_async()
    seen = run_app(running, APP)

    # then: each is a kvern job that ran, and result() gave what the task returned
    job_id, url, result = seen["submitted"]
    assert result == 5 and url == f"/api/v1/jobs/{job_id}"
    assert seen["delayed"][1:] == ["QUIET", "succeeded"]
    assert seen["applied"][1] == 15
    with running.client() as client:
        for job in (job_id, seen["delayed"][0], seen["applied"][0]):
            assert wait_for_outcome(client, job, timeout=5)["status"] == "succeeded"

    # when: the broker stops
    store = JobStore(running.config.store_url)
    supervisor = Supervisor(running.instance.state_dir)
    before = sum(store.counts_by_status().values())
    supervisor.stop(PROGRAM_BROKER)
    try:
        down = run_app(running, APP_BROKER_DOWN)
    finally:
        supervisor.start(PROGRAM_BROKER)
    # then: the submission raised Unavailable within seconds, and nothing was recorded
    assert down["outcome"].startswith("unavailable: broker unavailable"), down
    assert down["seconds"] < 6
    assert sum(store.counts_by_status().values()) == before
    store.close()
