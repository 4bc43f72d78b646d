"""The app's own code enqueues through kvern's durable path, against a real instance (private RabbitMQ, workers).

A separate Python process stands for the team's web app: it has only KVERN_STATE_DIR, as every process kvern
starts does. It calls `kvern.submit` and, after `install_in_web_head()`, a task's `.delay()`; the jobs run on
the instance's workers and `result()` returns what the task returned. With the broker stopped, a submission
raises `kvern.Unavailable` at once and leaves no record; once the broker is back, the same process submits again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
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
# The team's app, one long-lived process driven line by line over stdin: each command answers one JSON line.
APP = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor

import kvern
from kvern.enqueue import install_in_web_head


def each_way():
    submitted = kvern.submit("tasks.add", 2, y=3)
    install_in_web_head()
    import tasks

    delayed = tasks.shout.delay("quiet")
    applied = tasks.add.apply_async(args=[10], kwargs={"y": 5})
    return {
        "submitted": [submitted.id, submitted.url, submitted.result(timeout=20)],
        "delayed": [delayed.id, delayed.get(timeout=20), delayed.status()],
        "applied": [applied.id, applied.result(timeout=20)],
    }


def from_threads():  # as a gunicorn gthread worker would: one process, several threads at once
    import tasks

    with ThreadPoolExecutor(8) as pool:
        handles = list(pool.map(lambda n: tasks.add.delay(n, y=1), range(40)))
    return {"results": [handle.result(timeout=30) for handle in handles]}


def once():
    started = time.monotonic()
    try:
        outcome = kvern.submit("tasks.add", 1, y=1).result(timeout=30)
    except kvern.Unavailable as exc:
        outcome = f"unavailable: {exc}"
    return {"outcome": outcome, "seconds": time.monotonic() - started}


COMMANDS = {"each_way": each_way, "from_threads": from_threads, "once": once}
for line in sys.stdin:
    print(json.dumps(COMMANDS[line.strip()]()), flush=True)
"""


class App:
    """The team's app as a separate process: only KVERN_STATE_DIR tells it which instance it belongs to."""

    def __init__(self, running: Running) -> None:
        env = {**os.environ, ENV_STATE_DIR: running.config.state_dir}
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(APP)],
            cwd=running.config.spec_root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the app process ended (exit {self.process.wait()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def test_the_apps_own_code_submits_durably_and_a_broker_away_raises_unavailable(
    tmp_path: Path, start_instance: Callable[..., Running]
) -> None:
    tasks = tmp_path / "shop_tasks.py"
    tasks.write_text(TASKS)
    running = start_instance(write_project(tmp_path / "shop", SPEC, tasks_source=tasks))

    app = App(running)
    try:
        check_the_app_submits(running, app)
        check_a_broker_away_and_back(running, app)
    finally:
        app.stop()


def check_the_app_submits(running: Running, app: App) -> None:
    # when: the app submits with kvern.submit, .delay() and .apply_async()
    seen = app.ask("each_way")
    # then: each is a kvern job that ran, and result() gave what the task returned
    job_id, url, result = seen["submitted"]
    assert result == 5 and url == f"/api/v1/jobs/{job_id}"
    assert seen["delayed"][1:] == ["QUIET", "succeeded"]
    assert seen["applied"][1] == 15
    with running.client() as client:
        for job in (job_id, seen["delayed"][0], seen["applied"][0]):
            assert wait_for_outcome(client, job, timeout=5)["status"] == "succeeded"
    # when: threads of the one process submit at once; then: every job runs
    assert app.ask("from_threads")["results"] == [n + 1 for n in range(40)]


def check_a_broker_away_and_back(running: Running, app: App) -> None:
    store = JobStore(running.config.store_url)
    supervisor = Supervisor(running.instance.state_dir)
    before = sum(store.counts_by_status().values())
    # when: the broker stops
    supervisor.stop(PROGRAM_BROKER)
    try:
        down = app.ask("once")
    finally:
        supervisor.start(PROGRAM_BROKER)
    # then: the submission raised Unavailable within seconds, and nothing was recorded
    assert down["outcome"].startswith("unavailable: broker unavailable"), down
    assert down["seconds"] < 6
    assert sum(store.counts_by_status().values()) == before
    store.close()
    # then: once the broker is back, the same process submits again (it reconnects) and the job runs
    deadline = time.monotonic() + 30
    while (again := app.ask("once"))["outcome"] != 2:
        assert str(again["outcome"]).startswith("unavailable"), again
        assert time.monotonic() < deadline, f"the app never reconnected: {again}"
        time.sleep(0.5)
