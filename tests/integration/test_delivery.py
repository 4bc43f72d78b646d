"""Each delivery rule of kvern, against one real instance (PostgreSQL store, private RabbitMQ, nginx).

The instance is shared by the module; the tests that take a part of it down (broker, store, `kvern down`) come
last, in the order they must run. The task module below is written into the project folder: each task is one
kind of misbehaviour (flaky, always failing, killing its own process, outliving its limits, hogging memory).
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from kombu.connection import Connection
from kombu.messaging import Producer

from kvern.autoscale.pins import write_pin
from kvern.broker.message import task_message
from kvern.constants import DEFAULT_DELIVERY_LIMIT, PROGRAM_BROKER, ROLE_ADMIN
from kvern.jobs import schema
from kvern.jobs.base import NOT_BEGUN
from kvern.jobs.records import NewJob
from kvern.jobs.store import JobStore
from kvern.runtime.instance import Instance, owned_pids
from kvern.runtime.supervisor import Supervisor
from kvern.spec import load_spec
from tests.integration.conftest import POSTGRES, Running, wait_for_outcome

pytestmark = pytest.mark.integration

TINY_BACKLOG = 3
MEMORY_LIMIT_MB = 250

RETRY_BUDGETS = (0, 1, 3, 4, 10)

TASKS = '''
"""Tasks that misbehave on purpose, one way each."""

import os
import resource
import signal
import time
from pathlib import Path

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

import kvern

app = Celery("delivery")
_hoard = []


@app.task
def echo(tag, seconds=0.0):
    time.sleep(seconds)
    return {"tag": tag, "pid": os.getpid()}


@app.task
def flaky(succeed_on=2):
    attempt = kvern.current_job().attempt
    if attempt < succeed_on:
        raise RuntimeError(f"flaky: attempt {attempt} fails")
    return attempt


@app.task
def always_fails(tag):
    raise RuntimeError(f"always fails ({tag}) on attempt {kvern.current_job().attempt}")


@app.task
def fails_until(flag):
    if not Path(flag).exists():
        raise RuntimeError(f"{flag} is missing")
    return "flag found"


@app.task
def permanent(tag):
    raise kvern.PermanentError(f"bad input {tag}")


@app.task
def kill_self(tag):
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def kill_self_r1(tag):
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def soft_limited(seconds):
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "soft limit raised in the task"
    return "slept"


@app.task
def hard_limited(seconds):
    time.sleep(seconds)
    return "slept"


@app.task
def child_pid(tag):
    return os.getpid()


@app.task
def hog(mb):
    _hoard.append(b"x" * (mb * 1024 * 1024))
    return {"pid": os.getpid(), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


@app.task
def parked(tag, seconds=0.0):
    time.sleep(seconds)
    return tag


def _fails_every_time(tag):
    raise RuntimeError(f"fails every time ({tag}) on attempt {kvern.current_job().attempt}")


# One task per retry budget (tasks.fails_r0, tasks.fails_r1, ...), each declared in the spec.
for _retries in RETRY_BUDGETS:
    app.task(name=f"tasks.fails_r{_retries}")(_fails_every_time)
'''.replace("RETRY_BUDGETS", repr(RETRY_BUDGETS))


def retry_budget_tasks() -> str:
    return "".join(
        f'\n[tasks."tasks.fails_r{n}"]\nretries = {n}\nbackoff = 0\nbackoff_max = 0\n' for n in RETRY_BUDGETS
    )


def spec_text(store_url: str) -> str:
    return (
        retry_budget_tasks()
        + f"""
[app]
tasks = "tasks"

[web]
heads = 2

[store]
url = "{store_url}"

[[pools]]
name = "main"
queues = ["main"]
concurrency = 2
min = 1
max = 2
idle_after = 60

[[pools]]
name = "recycle"
queues = ["recycle"]
concurrency = 1
min = 1
max = 1
max_tasks_per_child = 1

[[pools]]
name = "memory"
queues = ["memory"]
concurrency = 1
min = 0
max = 1
idle_after = 60
max_memory_per_child = {MEMORY_LIMIT_MB}

[[pools]]
name = "tiny"
queues = ["tiny"]
concurrency = 1
min = 0
max = 1
max_backlog = {TINY_BACKLOG}

[tasks."tasks.flaky"]
retries = 3
backoff = 0.2
backoff_max = 0.5

[tasks."tasks.always_fails"]
retries = 2
backoff = 0.2
backoff_max = 0.5

[tasks."tasks.fails_until"]
retries = 1
backoff = 0.2
backoff_max = 0.2

[tasks."tasks.kill_self"]
retries = 20  # a budget above the delivery limit: the broker's limit is what must end it

[tasks."tasks.kill_self_r1"]
retries = 1  # a budget below the delivery limit: each attempt began (its mark committed), so each counts

[tasks."tasks.soft_limited"]
soft_time_limit = 1
time_limit = 10

[tasks."tasks.hard_limited"]
time_limit = 2

[tasks."tasks.child_pid"]
queue = "recycle"

[tasks."tasks.hog"]
queue = "memory"

[tasks."tasks.parked"]
queue = "tiny"
"""
    )


@dataclass
class Delivery:
    running: Running
    store: JobStore
    role: str  # the PostgreSQL role the instance logs in as
    admin: sqlalchemy.Engine  # a superuser connection to the same database, for the outage test

    @property
    def state_dir(self) -> Path:
        return self.running.instance.state_dir

    @property
    def spec_path(self) -> Path:
        return self.running.instance.spec.path


@pytest.fixture(scope="module")
def pg_role() -> Iterator[tuple[str, str, sqlalchemy.Engine]]:
    """A role of our own that owns a schema of our own: NOLOGIN on it is an outage nobody else sees."""
    role = f"kvern_it_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"CREATE SCHEMA {role} AUTHORIZATION {role}")
    url = f"postgresql://{role}@127.0.0.1:5432/test?options=-csearch_path%3D{role}"
    try:
        yield role, url, admin
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"ALTER ROLE {role} LOGIN")
            conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            conn.exec_driver_sql(f"DROP SCHEMA {role} CASCADE")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


@pytest.fixture(scope="module")
def delivery(
    tmp_path_factory: pytest.TempPathFactory, pg_role: tuple[str, str, sqlalchemy.Engine]
) -> Iterator[Delivery]:
    role, url, admin = pg_role
    folder = tmp_path_factory.mktemp("delivery")
    (folder / "tasks.py").write_text(TASKS)
    spec = folder / "kvern.toml"
    spec.write_text(spec_text(url))
    instance = Instance(load_spec(spec), (folder / ".kvern").resolve())
    config = instance.up()
    write_pin(instance.state_dir, "tiny", 0)  # `kvern scale tiny 0`: its queue only fills
    store = JobStore(url)
    try:
        yield Delivery(Running(instance, config), store, role, admin)
    finally:
        store.close()
        instance.down()
        leftover = owned_pids(instance.state_dir)
        assert not leftover, f"kvern down left processes behind: {leftover}"


def submit(client: httpx.Client, task: str, *args: Any, key: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/api/v1/jobs", json={"task": task, "args": list(args), "kwargs": kwargs}, headers=headers)


def accepted(client: httpx.Client, task: str, *args: Any, **kwargs: Any) -> str:
    response = submit(client, task, *args, **kwargs)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def run_job(client: httpx.Client, task: str, *args: Any, timeout: float = 60, **kwargs: Any) -> dict[str, Any]:
    return wait_for_outcome(client, accepted(client, task, *args, **kwargs), timeout=timeout)


def count_jobs(delivery: Delivery, task: str) -> int:
    with delivery.admin.connect() as conn:
        query = f"SELECT count(*) FROM {delivery.role}.kvern_jobs WHERE task = %(task)s"
        return int(conn.exec_driver_sql(query, {"task": task}).scalar() or 0)


def history(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    shown = client.get(f"/api/v1/dlq/{job_id}")
    assert shown.status_code == 200, shown.text
    return list(shown.json()["history"])


def kvern(delivery: Delivery, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kvern.cli", "-f", str(delivery.spec_path), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


# -- queues that keep what they confirm -------------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after_and_records_nothing(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        # given: the tiny pool is pinned at 0 processes, so its queue only fills
        queued: list[str] = []
        refused: httpx.Response | None = None
        # when: jobs are submitted until the queue refuses one (a quorum queue lets in the one that crosses
        # its max length, so it holds max_backlog or max_backlog + 1)
        for i in range(TINY_BACKLOG + 3):
            response = submit(client, "tasks.parked", f"p{i}")
            if response.status_code != 202:
                refused = response
                break
            queued.append(response.json()["id"])
        # then: 503 with Retry-After once the backlog is reached, and no record of the refused job
        assert TINY_BACKLOG <= len(queued) <= TINY_BACKLOG + 1, queued
        assert refused is not None and refused.status_code == 503, refused
        assert refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "backlog_full"
        assert count_jobs(delivery, "tasks.parked") == len(queued)
        # and: once the pool runs again, every job the queue accepted runs
        write_pin(delivery.state_dir, "tiny", None)
        outcomes = [wait_for_outcome(client, job_id, timeout=60) for job_id in queued]
        assert [job["status"] for job in outcomes] == ["succeeded"] * len(queued)


# -- retries and dead letters -----------------------------------------------------------------------------


def test_retries_with_backoff_end_dead_with_the_last_error_and_attempt_count(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        job = run_job(client, "tasks.always_fails", "r1")
        assert job["status"] == "dead"
        assert job["attempts"] == 3  # retries = 2
        assert "always fails (r1) on attempt 3" in job["error"]
        assert [a["outcome"] for a in history(client, job["id"])] == ["retry", "retry", "dead"]


def pool_log(delivery: Delivery, pool: str) -> str:
    return "".join(path.read_text() for path in sorted((delivery.state_dir / "logs").glob(f"pool-{pool}-*.log")))


def test_a_failure_keeps_its_traceback_and_the_worker_log_says_it_failed(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        # given a job that fails every attempt, and one that raises a permanent error
        dead = run_job(client, "tasks.always_fails", "tb")
        failed = run_job(client, "tasks.permanent", "tb")
        # then each attempt's history keeps the traceback down to the failing line (API and CLI)
        for attempt in history(client, dead["id"]):
            assert 'raise RuntimeError(f"always fails ({tag})' in attempt["traceback"], attempt
            assert "in always_fails" in attempt["traceback"]
        shown = kvern(delivery, "dlq", "show", failed["id"])
        assert shown.returncode == 0, shown.stderr
        assert "kvern.errors.PermanentError: bad input tb" in json.loads(shown.stdout)["history"][0]["traceback"]
        # and the worker log reports the failures, never a success for these jobs
        log = pool_log(delivery, "main")
        assert f"tasks.always_fails[{dead['id']}] raised unexpected: RuntimeError" in log
        assert f"tasks.permanent[{failed['id']}] raised expected: PermanentError" in log
        assert f"[{dead['id']}] succeeded" not in log and f"[{failed['id']}] succeeded" not in log


def test_a_permanent_error_fails_after_one_attempt(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        job = run_job(client, "tasks.permanent", "x1")
        assert job["status"] == "failed"
        assert job["attempts"] == 1
        assert "bad input x1" in job["error"]


def test_a_flaky_task_succeeds_on_its_second_attempt(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        job = run_job(client, "tasks.flaky", succeed_on=2)
        assert job["status"] == "succeeded"
        assert job["attempts"] == 2 and job["result"] == 2
        assert [a["outcome"] for a in history(client, job["id"])] == ["retry", "succeeded"]


def test_a_task_that_kills_its_process_every_time_is_dead_lettered(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        # given: a task that SIGKILLs its own process, with a retry budget above the delivery limit
        job = run_job(client, "tasks.kill_self", "k1", timeout=120)
        # then: the broker's delivery limit ends it, and the controller's dead-letter watcher records it
        assert job["status"] == "dead", job
        assert "delivery limit" in job["error"]
        # (the broker counts redeliveries: the first delivery and `limit` more, each one a numbered attempt)
        assert job["attempts"] == DEFAULT_DELIVERY_LIMIT + 1
        attempts = history(client, job["id"])
        assert [a["outcome"] for a in attempts] == ["lost"] * DEFAULT_DELIVERY_LIMIT + ["dead"]
        # (each attempt began in its task process, whose node survived to commit the mark: none was given back)
        assert NOT_BEGUN not in [a["error"] for a in attempts]
        assert job["max_attempts"] == 21
        # and: the pool is still serving
        assert run_job(client, "tasks.echo", "after-poison")["status"] == "succeeded"


def test_a_task_that_kills_its_process_every_time_spends_its_attempt_budget(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        # given: a task that SIGKILLs its own process, with a retry budget below the delivery limit
        job = run_job(client, "tasks.kill_self_r1", "k2", timeout=120)
        # then: its two attempts began and were lost, and the third delivery buries it: the budget ends it
        assert (job["status"], job["attempts"], job["max_attempts"]) == ("dead", 2, 2), job
        assert "attempt budget spent" in job["error"]
        assert [a["outcome"] for a in history(client, job["id"])] == ["lost", "dead"]


def test_any_retry_budget_gives_exactly_n_plus_1_attempts_and_replays_give_as_many_again(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        # given tasks that always fail, with 0, 1, 3, 4 and 10 retries and no backoff
        ids = {n: accepted(client, f"tasks.fails_r{n}", f"budget-{n}") for n in RETRY_BUDGETS}
        # when they run, then each ends after exactly N+1 attempts: dead, or failed when no retries are declared
        for n, job_id in ids.items():
            job = wait_for_outcome(client, job_id, timeout=90)
            assert (job["status"], job["attempts"]) == ("dead" if n else "failed", n + 1), job
            assert f"on attempt {n + 1}" in job["error"]
            assert [a["outcome"] for a in history(client, job_id)] == ["retry"] * n + [job["status"]]
        # and a replay of a replay gives N+1 fresh attempts each time, then dead again
        job_id = ids[4]
        for round_ in (2, 3):
            # (the replay answers once the job is queued again, so the wait below sees the new round)
            assert client.post(f"/api/v1/dlq/{job_id}/replay").status_code == 202
            job = wait_for_outcome(client, job_id, timeout=90)
            assert (job["status"], job["attempts"]) == ("dead", 5 * round_), job


def test_dead_jobs_are_listed_shown_and_replayed_keeping_id_and_history(delivery: Delivery, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    with delivery.running.client() as client:
        # given: a dead job (its flag file is missing) and a failed one
        dead = run_job(client, "tasks.fails_until", str(flag))
        failed = run_job(client, "tasks.permanent", "dlq")
        assert (dead["status"], failed["status"]) == ("dead", "failed")
        # then: the API and the CLI list and show them
        listed = {job["id"] for job in client.get("/api/v1/dlq", params={"limit": 100}).json()["jobs"]}
        assert {dead["id"], failed["id"]} <= listed
        cli_list = kvern(delivery, "dlq", "list", "--limit", "500")
        assert cli_list.returncode == 0, cli_list.stderr
        assert dead["id"] in cli_list.stdout and failed["id"] in cli_list.stdout
        cli_show = kvern(delivery, "dlq", "show", dead["id"])
        assert cli_show.returncode == 0, cli_show.stderr
        assert [a["outcome"] for a in json.loads(cli_show.stdout)["history"]] == ["retry", "dead"]
        # when: the cause is fixed and the dead job is replayed through the API
        flag.touch()
        replayed = client.post(f"/api/v1/dlq/{dead['id']}/replay")
        assert replayed.status_code == 202, replayed.text
        assert replayed.json()["id"] == dead["id"]
        # then: same id, it succeeds, and the earlier attempts are still in its history
        done = wait_for_outcome(client, dead["id"], timeout=60)
        assert done["status"] == "succeeded" and done["attempts"] == 3
        assert [a["outcome"] for a in history(client, dead["id"])] == ["retry", "dead", "succeeded"]
        # and: a finished job cannot be replayed; the CLI replays the failed one (which fails again)
        assert client.post(f"/api/v1/dlq/{dead['id']}/replay").status_code == 409
        cli_replay = kvern(delivery, "dlq", "replay", failed["id"])
        assert cli_replay.returncode == 0, cli_replay.stderr
        wait_until(lambda: client.get(f"/api/v1/jobs/{failed['id']}").json()["attempts"] == 2, 60, "the replay")
        again = wait_for_outcome(client, failed["id"])
        assert again["status"] == "failed" and again["id"] == failed["id"]
        assert [a["outcome"] for a in history(client, failed["id"])] == ["failed", "failed"]


# -- deliveries no worker can run ---------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"k": value}
    return value


def publish_raw(delivery: Delivery, queue: str, task: str, body: bytes | None = None, **kwargs: Any) -> str:
    """Record a job and publish its message straight to the queue, as no web head would (no validation)."""
    job_id = str(uuid.uuid4())
    delivery.store.create_job(NewJob(id=job_id, task=task, queue=queue, args=[], kwargs={}, max_attempts=4))
    delivery.store.mark_published([job_id])  # so the outbox relay leaves it alone
    message = task_message(job_id, task, queue, [], kwargs)
    url = delivery.running.config.broker_urls[ROLE_ADMIN]  # the worker role may not publish to the default exchange
    with Connection(url, connect_timeout=5, transport_options={"confirm_publish": True}) as conn:
        Producer(conn.channel()).publish(
            message.body if body is None else body,
            routing_key=queue,
            exchange="",
            headers=message.headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            correlation_id=job_id,
            delivery_mode=message.delivery_mode,
            serializer=None,
        )
    return job_id


def pool_pids(delivery: Delivery, pool: str) -> dict[str, int]:
    processes = Supervisor(delivery.state_dir).processes()
    return {p.name: p.pid for p in processes if p.group == f"pool-{pool}" and p.state == "RUNNING" and p.pid}


def test_a_message_no_worker_can_run_or_decode_is_dead_lettered_and_the_worker_lives_on(delivery: Delivery) -> None:
    before = pool_pids(delivery, "main")
    assert before
    # given a job whose kwargs are nested 500 deep (prefork cannot pickle them to a child process), and one
    # whose message body is not JSON at all
    too_deep = publish_raw(delivery, "main", "tasks.echo", tag=nested(500))
    garbled = publish_raw(delivery, "main", "tasks.echo", body=b'[["x"], {"tag": ')
    # then both end dead, saying why
    for job_id in (too_deep, garbled):
        wait_until(lambda job_id=job_id: _status(delivery, job_id) == "dead", 60, f"job {job_id} to be dead")
        job = delivery.store.get(job_id)
        assert job is not None and "dead-lettered" in (job.error or ""), job
    # and no worker process died for it: the same processes still run, and run a normal job
    assert {name: pid for name, pid in pool_pids(delivery, "main").items() if name in before} == before
    with delivery.running.client() as client:
        assert run_job(client, "tasks.echo", "after-undeliverable")["status"] == "succeeded"
    log = pool_log(delivery, "main")
    assert f"job {too_deep}: its message cannot be handed to a worker process" in log
    assert f"job {garbled}: its message cannot be decoded" in log


def _status(delivery: Delivery, job_id: str) -> str | None:
    job = delivery.store.get(job_id)
    return job.status.value if job else None


def test_the_controller_recovers_running_jobs_that_no_attempt_works_on(delivery: Delivery) -> None:
    # given two jobs recorded as running with no message anywhere: one whose attempt started 1000 s ago (its
    # worker vanished), one whose retry was due 1000 s ago and never came
    ids = []
    for tag in ("vanished-worker", "lost-retry"):
        job_id = str(uuid.uuid4())
        new = NewJob(id=job_id, task="tasks.echo", queue="main", args=[tag], kwargs={}, max_attempts=4)
        delivery.store.create_job(new)
        delivery.store.mark_published([job_id])
        delivery.store.claim_attempt(job_id, "ghost@nowhere")
        ids.append(job_id)
    with delivery.store.engine.begin() as conn:
        at = schema.attempts
        conn.execute(sqlalchemy.update(at).where(at.c.job_id == ids[0]).values(started_at=time.time() - 1000))
    delivery.store.record_retry(ids[1], 1, "RuntimeError: flaky", delay_s=-1000)
    with delivery.running.client() as client:
        # then the controller buries the first (a frozen worker may still hold its message: a second copy could
        # run it twice), and queues the lost retry again, which a worker runs as the next attempt
        vanished = wait_for_outcome(client, ids[0], timeout=60)
        assert (vanished["status"], vanished["attempts"]) == ("dead", 1), vanished
        assert vanished["error"].startswith("stuck: attempt 1 outlived its hard time limit")
        retried = wait_for_outcome(client, ids[1], timeout=60)
        assert (retried["status"], retried["attempts"]) == ("succeeded", 2), retried
        outcomes = [[a["outcome"] for a in client.get(f"/api/v1/dlq/{i}").json()["history"]] for i in ids]
        assert outcomes == [["dead"], ["retry", "succeeded"]]
        # and the dead one can be replayed
        assert client.post(f"/api/v1/dlq/{ids[0]}/replay").status_code == 202
        assert wait_for_outcome(client, ids[0], timeout=60)["status"] == "succeeded"


# -- idempotent submission --------------------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_return_the_same_job(delivery: Delivery) -> None:
    key = f"same-{uuid.uuid4()}"
    with delivery.running.client() as client:
        first = submit(client, "tasks.echo", "idem", key=key)
        second = submit(client, "tasks.echo", "idem", key=key)
        assert (first.status_code, second.status_code) == (202, 200)
        assert first.json()["id"] == second.json()["id"]
        assert second.headers["location"] == f"/api/v1/jobs/{first.json()['id']}"
        conflict = submit(client, "tasks.echo", "another body", key=key)
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "idempotency_conflict"
        assert wait_for_outcome(client, first.json()["id"])["status"] == "succeeded"


def test_fifty_concurrent_duplicates_make_exactly_one_job(delivery: Delivery) -> None:
    key = f"burst-{uuid.uuid4()}"
    tag = f"burst-{uuid.uuid4().hex[:8]}"
    start = threading.Barrier(50)

    def one(client: httpx.Client) -> tuple[int, str]:
        start.wait()
        response = submit(client, "tasks.echo", tag, key=key)
        return response.status_code, response.json()["id"]

    with delivery.running.client() as client, concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, [client] * 50))
        statuses = sorted(status for status, _ in answers)
        assert statuses == [200] * 49 + [202], statuses
        assert len({job_id for _, job_id in answers}) == 1
        with delivery.admin.connect() as conn:
            query = f"SELECT count(*) FROM {delivery.role}.kvern_jobs WHERE args = %(args)s"
            assert conn.exec_driver_sql(query, {"args": json.dumps([tag])}).scalar() == 1
        assert wait_for_outcome(client, answers[0][1])["status"] == "succeeded"


# -- long and stuck tasks ---------------------------------------------------------------------------------


def test_a_hard_time_limit_ends_the_job_dead_not_stuck_running(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        started = time.monotonic()
        job = run_job(client, "tasks.hard_limited", 60, timeout=45)
        assert job["status"] == "dead", job
        assert "time limit" in job["error"]
        assert time.monotonic() - started < 30
        assert [a["outcome"] for a in history(client, job["id"])] == ["dead"]
        assert run_job(client, "tasks.echo", "after-hard-limit")["status"] == "succeeded"


def test_a_soft_time_limit_raises_inside_the_task(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        job = run_job(client, "tasks.soft_limited", 8)
        assert job["status"] == "succeeded" and job["attempts"] == 1
        assert job["result"] == "soft limit raised in the task"


def test_max_tasks_per_child_replaces_the_child_after_each_job(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        pids = [run_job(client, "tasks.child_pid", i)["result"] for i in range(3)]
    assert len(set(pids)) == 3, pids


def test_max_memory_per_child_replaces_a_child_that_grew_past_it(delivery: Delivery) -> None:
    with delivery.running.client() as client:
        # given: a child that stays under the limit is kept
        small = [run_job(client, "tasks.hog", 1)["result"] for _ in range(2)]
        assert small[0]["pid"] == small[1]["pid"]
        assert small[1]["rss_mb"] < MEMORY_LIMIT_MB
        # when: a job leaves it holding more than the limit
        grown = run_job(client, "tasks.hog", MEMORY_LIMIT_MB)["result"]
        after = run_job(client, "tasks.hog", 1)["result"]
    # then: the next job runs in a new child
    assert grown["pid"] == small[0]["pid"] and grown["rss_mb"] > MEMORY_LIMIT_MB
    assert after["pid"] != grown["pid"]
    assert after["rss_mb"] < MEMORY_LIMIT_MB


# -- outbox -----------------------------------------------------------------------------------------------


def test_a_queued_job_whose_message_never_reached_the_broker_is_relayed(delivery: Delivery) -> None:
    # given: a record written as a web head would, but never published (it crashed in between)
    job_id = str(uuid.uuid4())
    new = NewJob(id=job_id, task="tasks.echo", queue="main", args=["outbox"], kwargs={}, max_attempts=4)
    delivery.store.create_job(new)
    with delivery.running.client() as client:
        # then: the controller's outbox relay publishes it and it runs
        job = wait_for_outcome(client, job_id, timeout=60)
        assert job["status"] == "succeeded" and job["attempts"] == 1
        assert job["result"]["tag"] == "outbox"


# -- outages (these take parts of the instance down: they run last) -----------------------------------------


def test_broker_down_answers_503_at_once_and_everything_reconnects(delivery: Delivery) -> None:
    supervisor = Supervisor(delivery.state_dir)
    with delivery.running.client() as client:
        assert run_job(client, "tasks.echo", "before")["status"] == "succeeded"
        before = count_jobs(delivery, "tasks.echo")
        # when: the broker stops
        supervisor.stop(PROGRAM_BROKER)
        try:
            # then: every submission answers 503 within a few seconds, never 202, and nothing is recorded
            for i in range(5):
                started = time.monotonic()
                response = submit(client, "tasks.echo", f"during-{i}")
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"]
                assert time.monotonic() - started < 6
            assert count_jobs(delivery, "tasks.echo") == before
        finally:
            supervisor.start(PROGRAM_BROKER)
        # then: web heads and workers reconnect by themselves; new jobs are accepted and run
        deadline = time.monotonic() + 60
        while (response := submit(client, "tasks.echo", "after")).status_code != 202:
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, "web heads did not reconnect to the broker"
            time.sleep(0.5)
        assert wait_for_outcome(client, response.json()["id"], timeout=60)["status"] == "succeeded"
        assert run_job(client, "tasks.echo", "after-2")["status"] == "succeeded"


def set_login(delivery: Delivery, allowed: bool) -> None:
    with delivery.admin.begin() as conn:
        conn.exec_driver_sql(f"ALTER ROLE {delivery.role} {'LOGIN' if allowed else 'NOLOGIN'}")
        if not allowed:
            conn.exec_driver_sql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{delivery.role}'"
            )


def test_store_down_answers_503_and_a_job_delivered_meanwhile_is_not_lost(delivery: Delivery) -> None:
    supervisor = Supervisor(delivery.state_dir)
    tiny_log = delivery.state_dir / "logs" / "pool-tiny-0.log"
    with delivery.running.client() as client:
        # given: a job waiting in a queue no process consumes
        write_pin(delivery.state_dir, "tiny", 0)
        wait_until(lambda: not _pool_running(delivery, "tiny"), 60, "the tiny pool to stop")
        waiting = accepted(client, "tasks.parked", "through-the-outage")
        # when: the job store becomes unreachable
        set_login(delivery, allowed=False)
        try:
            # then: submissions answer 503 within a few seconds
            for i in range(3):
                started = time.monotonic()
                response = submit(client, "tasks.echo", f"store-down-{i}")
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "store_unavailable"
                assert response.headers["retry-after"]
                assert time.monotonic() - started < 5
            # and: a worker that receives the waiting job meanwhile postpones it rather than dropping it
            # (started as the autoscaler would: it cannot read the store's signals now)
            write_pin(delivery.state_dir, "tiny", 1)
            supervisor.start("pool-tiny:pool-tiny-0")
            wait_until(lambda: "delivery postponed" in tiny_log.read_text(), 60, "the delivery during the outage")
        finally:
            set_login(delivery, allowed=True)
        # then: after recovery new jobs run, and the job delivered during the outage finishes too
        assert run_job(client, "tasks.echo", "store-back")["status"] == "succeeded"
        job = wait_for_outcome(client, waiting, timeout=60)
        assert job["status"] == "succeeded" and job["attempts"] == 1


def _pool_running(delivery: Delivery, pool: str) -> bool:
    return any(p.group == f"pool-{pool}" and p.state == "RUNNING" for p in Supervisor(delivery.state_dir).processes())


def test_kvern_down_lets_the_running_job_finish(delivery: Delivery) -> None:
    tiny_log = delivery.state_dir / "logs" / "pool-tiny-0.log"
    with delivery.running.client() as client:
        # given: a job that is running (on the tiny pool, the first pool Supervisor stops)
        write_pin(delivery.state_dir, "tiny", 1)
        job_id = accepted(client, "tasks.parked", "graceful", seconds=10)
        wait_until(lambda: client.get(f"/api/v1/jobs/{job_id}").json()["status"] == "running", 30, "the job to start")
    # when: the instance is stopped
    down = kvern(delivery, "down")
    assert down.returncode == 0, down.stderr
    # then: its worker was told to stop while the job ran, and let it finish first
    log = tiny_log.read_text()
    finished = log.find(f"tasks.parked[{job_id}] succeeded")
    assert 0 < log.rfind("Warm shutdown", 0, finished if finished > 0 else None) < finished, log[-2000:]
    job = delivery.store.get(job_id)
    assert job is not None and job.status.value == "succeeded" and job.attempts == 1, job
    # and: nothing of the instance is left running
    assert not owned_pids(delivery.state_dir)
