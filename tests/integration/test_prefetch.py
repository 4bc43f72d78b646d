"""A pool's `prefetch`: its worker holds more messages than it runs, and a prefetched job spends no attempt even
when the worker dies holding it: the worker's main process claims a job when it hands it to the pool, the running
ones and one more per slot (worker/dispatch.py), and a claimed attempt that no task process began is given back
by the next claim. Above prefetch 1 a message is acked once its outcome committed, not when its task returned
(worker/deferred_ack.py)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from kvern.broker.admin import queue_depths
from kvern.constants import ROLE_ADMIN
from kvern.jobs import schema
from kvern.jobs.base import NOT_BEGUN
from kvern.jobs.store import JobStore
from kvern.runtime.supervisor import Supervisor
from tests.integration.conftest import Running, wait_for_outcome, write_project

TASKS = """
import time

from celery import Celery

app = Celery("prefetch")


@app.task
def nap(seconds):
    time.sleep(seconds)
    return seconds
"""

SPEC = """
[app]
tasks = "tasks"
static = "static"

[web]
heads = 1

[[pools]]
name = "short"
queues = ["short"]
concurrency = 1
min = 1
max = 1
prefetch = 4

[tasks."tasks.nap"]
queue = "short"
retries = 0
time_limit = 60
"""

JOBS = 5
CLAIM_WINDOW = 2  # the pool's one slot, and one job claimed ahead (claim_window(1, 4))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} (after {timeout}s)"
        time.sleep(0.1)


def test_jobs_prefetched_or_claimed_ahead_spend_no_attempt_when_their_worker_dies(
    start_instance: Callable[..., Running], tmp_path: Path
) -> None:
    # given a pool of one task slot that prefetches 4 messages, and 5 jobs of 3 s each with no retries
    tasks = tmp_path / "tasks_source.py"
    tasks.write_text(TASKS)
    running = start_instance(write_project(tmp_path / "project", SPEC, tasks_source=tasks))
    store = JobStore(running.config.store_url)
    broker = running.config.broker_urls[ROLE_ADMIN]
    try:
        with running.client() as client:
            ids = [
                client.post("/api/v1/jobs", json={"task": "tasks.nap", "args": [3]}).json()["id"] for _ in range(JOBS)
            ]

            # when the worker has taken its 4 messages: one runs, one is claimed to run next, two wait unclaimed
            def taken() -> bool:
                depth = queue_depths(broker, ("short",))["short"]
                return depth is not None and depth["ready"] == JOBS - 4

            wait_until(taken, 60, "the worker did not prefetch 4 messages")
            wait_until(lambda: sum(_attempts(store, j) for j in ids) >= CLAIM_WINDOW, 30, "no job started")
            wait_until(lambda: len(_began(store, ids)) == 1, 30, "the running job's start was not recorded")
            time.sleep(0.5)  # a claim beyond the window would have committed by now
            attempts = [_attempts(store, j) for j in ids]
            began = _began(store, ids)

            # then only the running job and the one claimed ahead have an attempt, and only the running one began
            assert sorted(attempts) == [0, 0, 0, 1, 1], attempts
            claimed_ahead = [j for j, n in zip(ids, attempts, strict=True) if n == 1 and j not in began]
            prefetched = [j for j, n in zip(ids, attempts, strict=True) if n == 0]
            assert len(began) == len(claimed_ahead) == 1, (began, attempts)

            # and when the worker is killed holding them
            worker = next(p for p in Supervisor(running.instance.state_dir).processes() if p.group == "pool-short")
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            outcomes = {j: wait_for_outcome(client, j, timeout=120) for j in ids}
            ahead_history = [(a.outcome, a.error) for a in store.history(claimed_ahead[0])]
    finally:
        store.close()
    # then the job claimed ahead still runs and succeeds, with no retries: its unused attempt was given back
    ahead = outcomes[claimed_ahead[0]]
    assert (ahead["status"], ahead["attempts"], ahead["max_attempts"]) == ("succeeded", 2, 2), ahead
    assert ahead_history == [("lost", NOT_BEGUN), ("succeeded", None)]
    # and the prefetched ones succeed on their first attempt
    assert [(outcomes[j]["status"], outcomes[j]["attempts"]) for j in prefetched] == [("succeeded", 1)] * 3
    # while the one that was running spent its only attempt, as a job killed mid-run does: dead, not run again
    killed = outcomes[began.pop()]
    assert (killed["status"], killed["attempts"]) == ("dead", 1), killed
    assert "attempt budget spent" in killed["error"]


SHORT_JOBS = 40  # ten times what the worker may hold unacked (1 slot x prefetch 4)


def test_deferred_acks_are_sent_so_a_stream_longer_than_the_prefetch_window_drains(
    start_instance: Callable[..., Running], tmp_path: Path
) -> None:
    # given a pool that may hold 4 unacked messages, whose task process returns before its outcome commits
    tasks = tmp_path / "tasks_source.py"
    tasks.write_text(TASKS)
    running = start_instance(write_project(tmp_path / "project", SPEC, tasks_source=tasks))
    broker = running.config.broker_urls[ROLE_ADMIN]

    # when ten times that many short jobs are submitted
    with running.client() as client:
        ids = [
            client.post("/api/v1/jobs", json={"task": "tasks.nap", "args": [0]}).json()["id"] for _ in range(SHORT_JOBS)
        ]
        outcomes = [wait_for_outcome(client, j, timeout=120) for j in ids]

    # then every one succeeded on its first attempt (an ack never sent would stall the worker after 4), and
    # nothing is left in the queue
    assert [(o["status"], o["attempts"]) for o in outcomes] == [("succeeded", 1)] * SHORT_JOBS
    depth = queue_depths(broker, ("short",))["short"]
    assert depth is not None and depth["ready"] == 0


def _began(store: JobStore, job_ids: list[str]) -> set[str]:
    """The jobs one of whose attempts a task process began."""
    at = schema.attempts
    with store.engine.connect() as conn:
        query = select(at.c.job_id).where(at.c.job_id.in_(job_ids), at.c.began_at.is_not(None))
        return {row.job_id for row in conn.execute(query)}


def _attempts(store: JobStore, job_id: str) -> int:
    job = store.get(job_id)
    return job.attempts if job else -1
