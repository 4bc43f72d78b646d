"""Topologies: two instances side by side, the machine's own RabbitMQ, a PostgreSQL job store, a split run
(web tier on one instance, worker pools on another), and `kvern up -d` / `kvern down` leaving nothing behind.

The external broker is the machine's RabbitMQ (guest on 127.0.0.1:5672, vhost /). Every test there uses a
queue of its own (`reports_<hex>`) and deletes it, and the exchange kvern declares for it, afterwards. The
dead-letter queue of each test's store is deleted too; Celery's `celery_delayed_*` topology is shared by
everything on that vhost, so it is left in place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from amqp.exceptions import PreconditionFailed
from kombu.connection import Connection
from kombu.entity import Queue
from pypdf import PdfReader

from kvern.broker.topology import dead_letter_queue
from kvern.constants import RET_ALREADY_RUNNING, RET_NOT_RUNNING, SQLITE_FILE
from kvern.jobs.store import JobStore
from kvern.runtime.instance import Instance, owned_pids
from kvern.spec import Tiers, load_spec
from tests.integration.conftest import (
    REPORTS,
    SYSTEM_BROKER,
    Running,
    delete_dead_letter_queue,
    fresh_schema_url,
    submit_report,
    system_queue,
    wait_for_outcome,
    write_project,
)

pytestmark = pytest.mark.integration

MANAGEMENT_PORT = 15672
# The reports example's tasks plus one that builds a report only once a job of the other instance runs too: two
# instances that could not work at the same time fail it (it times out), and one that can always passes it,
# however late a loaded machine starts either job.
ALONGSIDE_TASK = """

import pathlib as _pathlib
import time as _time


@app.task
def report_alongside(user_id, here, there, seconds=0.5):
    _pathlib.Path(here).touch()
    deadline = _time.monotonic() + 90
    while not _pathlib.Path(there).exists():
        if _time.monotonic() > deadline:
            raise TimeoutError(f"no job of the other instance ran within 90 s of this one ({there})")
        _time.sleep(0.05)
    # The report as generate_heavy_report builds it (called inline, a task would start a job attempt of its own)
    pdf, pages = build_report(_as_user_id(user_id), lambda pct: None, _as_seconds(seconds))
    kvern.save_artifact(ARTIFACT_NAME, pdf, content_type="application/pdf")
    return {"user_id": user_id, "pages": pages}
"""
ALONGSIDE_POLICY = '[tasks."tasks.report_alongside"]\nqueue = "reports"\nretries = 0\ntime_limit = 120\n'


def topology_spec(
    queue: str = "reports",
    *,
    broker: str | None = None,
    store: str | None = None,
    heads: int = 1,
    pool_min: int = 1,
    pool_max: int = 2,
) -> str:
    sections = [
        '[app]\ntasks = "tasks"\nstatic = "static"\n',
        f"[web]\nheads = {heads}\n",
        f'[broker]\nurl = "{broker}"\n' if broker else "",
        f'[store]\nurl = "{store}"\n' if store else "",
        f'[[pools]]\nname = "reports"\nqueues = ["{queue}"]\nconcurrency = 2\nmin = {pool_min}\nmax = {pool_max}\n',
        f'[tasks."tasks.generate_heavy_report"]\nqueue = "{queue}"\nretries = 2\ntime_limit = 60\n',
    ]
    return "\n".join(s for s in sections if s)


@contextlib.contextmanager
def running(*projects: tuple[Path, str], parallel: bool = False) -> Iterator[list[Running]]:
    """Instances for a whole module (spec, --only): up, then `kvern down` (in parallel), then no process of any
    may be left."""
    instances = [Instance(load_spec(spec), (spec.parent / ".kvern").resolve()) for spec, _ in projects]
    onlys = [only for _, only in projects]
    try:
        if parallel:  # each private node boots while the other one does
            with ThreadPoolExecutor(len(instances)) as pool:
                configs = list(pool.map(lambda i, o: i.up(Tiers.parse(o)), instances, onlys))
        else:
            configs = [instance.up(Tiers.parse(only)) for instance, only in zip(instances, onlys, strict=True)]
        yield [Running(instance, config) for instance, config in zip(instances, configs, strict=True)]
    finally:
        with ThreadPoolExecutor(len(instances)) as pool:
            list(pool.map(lambda i: i.down(), instances))
        for instance in instances:
            delete_dead_letter_queue(instance)
        leftover = [pid for instance in instances for pid in owned_pids(instance.state_dir)]
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not leftover, f"kvern down left processes behind: {leftover}"


def kvern(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvern.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def assert_valid_pdf(client: httpx.Client, job: dict[str, Any]) -> None:
    assert job["status"] == "succeeded", (job.get("error"), job)
    assert job["attempts"] == 1
    download = client.get(job["artifacts"][0]["url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/pdf"
    assert len(PdfReader(io.BytesIO(download.content)).pages) >= 2


def ports(run: Running) -> set[int]:
    """The TCP ports an instance listens on: its front door and its private broker's."""
    broker = {int(v) for k, v in run.config.extra.items() if k.startswith("broker_") and k.endswith("_port")}
    return {run.config.front_door_port, *broker}


def span(job: dict[str, Any]) -> tuple[float, float]:
    """When a job ran, as Unix timestamps."""
    return datetime.fromisoformat(job["started_at"]).timestamp(), datetime.fromisoformat(job["finished_at"]).timestamp()


def submit_alongside(client: httpx.Client, user_id: int, here: Path, there: Path) -> httpx.Response:
    """A report job that marks `here` once it runs, then waits for `there` (its peer's mark) to build the PDF."""
    body = {"task": "tasks.report_alongside", "args": [user_id, str(here), str(there)]}
    return client.post("/api/v1/jobs", json=body)


def program_groups(run: Running) -> set[str]:
    return {p.group for p in run.instance.supervisor.processes() if p.state != "STOPPED"}


# -- two instances side by side, each with its private broker; the second keeps its jobs in PostgreSQL -------


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Running, str]]:
    tasks = tmp_path_factory.mktemp("tasks") / "tasks.py"
    tasks.write_text((REPORTS / "tasks.py").read_text() + ALONGSIDE_TASK)
    with contextlib.ExitStack() as stack:
        pg_url = stack.enter_context(contextlib.contextmanager(fresh_schema_url)())
        first_spec, second_spec = topology_spec(), topology_spec(store=pg_url)
        first = write_project(tmp_path_factory.mktemp("first"), f"{first_spec}\n{ALONGSIDE_POLICY}", tasks)
        second = write_project(tmp_path_factory.mktemp("second"), f"{second_spec}\n{ALONGSIDE_POLICY}", tasks)
        a, b = stack.enter_context(running((first, "all"), (second, "all"), parallel=True))
        yield a, b, pg_url


def test_two_instances_run_side_by_side_with_their_own_ports_and_brokers(
    side_by_side: tuple[Running, Running, str],
) -> None:
    a, b, _ = side_by_side
    # then nothing is shared: front door, AMQP and distribution ports, supervisord
    ports_a, ports_b = ports(a), ports(b)
    assert len(ports_a) == 3 and len(ports_b) == 3  # front door, broker's AMQP, distribution (no management)
    assert not ports_a & ports_b
    assert 5672 not in ports_a | ports_b  # and the machine's own RabbitMQ keeps its port
    assert a.config.private_broker and b.config.private_broker
    assert a.config.broker_urls != b.config.broker_urls
    assert a.instance.supervisor.daemon_pid() != b.instance.supervisor.daemon_pid()
    assert "broker" in program_groups(a) and "broker" in program_groups(b)


def test_both_instances_serve_reports_at_the_same_time(
    side_by_side: tuple[Running, Running, str], tmp_path: Path
) -> None:
    a, b, _ = side_by_side
    with a.client() as client_a, b.client() as client_b:
        # when both get reports to build, at the same moment, each job waiting until its peer on the other
        # instance runs too (so the check below does not hang on how soon a loaded machine starts each job)
        submitted = [
            (client, submit_alongside(client, user_id, tmp_path / f"{here}-{user_id}", tmp_path / f"{there}-{user_id}"))
            for user_id in (21, 22)
            for client, here, there in ((client_a, "a", "b"), (client_b, "b", "a"))
        ]
        assert [r.status_code for _, r in submitted] == [202] * 4
        jobs = [(client, wait_for_outcome(client, r.json()["id"])) for client, r in submitted]

        # then each comes back as a valid PDF from the instance it was sent to
        for client, job in jobs:
            assert_valid_pdf(client, job)
        # and the two instances were working at the same time
        spans_a = [span(j) for c, j in jobs if c is client_a]
        spans_b = [span(j) for c, j in jobs if c is client_b]
        assert any(sa < fb and sb < fa for sa, fa in spans_a for sb, fb in spans_b), (spans_a, spans_b)
        # and a job of one instance is unknown to the other
        only_in_a = jobs[0][1]["id"]
        assert client_b.get(f"/api/v1/jobs/{only_in_a}").status_code == 404


def test_a_postgresql_job_store_keeps_the_jobs_of_the_instance_that_names_it(
    side_by_side: tuple[Running, Running, str],
) -> None:
    a, b, pg_url = side_by_side
    # given the second instance's spec names a PostgreSQL store
    assert b.config.store_url == pg_url
    assert a.config.store_url.startswith("sqlite:///")

    # when it runs a job
    with b.client() as client:
        job = wait_for_outcome(client, submit_report(client, 31, seconds=0.2).json()["id"])
        assert_valid_pdf(client, job)

    # then the job, its attempt and its artifact are in PostgreSQL, and nothing went to a SQLite file
    store = JobStore(pg_url)
    try:
        stored = store.get(job["id"])
        assert stored is not None and stored.status.value == "succeeded"
        assert [attempt.outcome for attempt in store.history(job["id"])] == ["succeeded"]
        assert store.artifact(job["id"], "report.pdf") is not None
    finally:
        store.close()
    assert not (b.instance.state_dir / SQLITE_FILE).exists()
    assert (a.instance.state_dir / SQLITE_FILE).exists()


# -- the machine's RabbitMQ as an external broker ------------------------------------------------------------


@pytest.fixture(scope="module")
def external_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, str]]:
    with system_queue() as queue:
        spec = write_project(tmp_path_factory.mktemp("external"), topology_spec(queue, broker=SYSTEM_BROKER))
        with running((spec, "all")) as (run,):
            yield run, queue


def test_an_external_broker_run_serves_reports_without_a_private_node(external_broker: tuple[Running, str]) -> None:
    run, queue = external_broker
    # then kvern runs no broker of its own
    assert not run.config.private_broker
    assert set(run.config.broker_urls.values()) == {SYSTEM_BROKER}
    assert "broker" not in program_groups(run)

    # when reports are asked for through nginx
    with run.client() as client:
        responses = [submit_report(client, user_id, seconds=0.3) for user_id in (41, 42, 43)]
        assert [r.status_code for r in responses] == [202] * 3
        for response in responses:
            assert_valid_pdf(client, wait_for_outcome(client, response.json()["id"]))

    # then they went through the machine's broker, on this test's own queue
    assert run.instance.spec.queue_for("tasks.generate_heavy_report") == queue


def test_the_topology_on_an_external_broker_is_quorum_queues_with_a_dead_letter_queue(
    external_broker: tuple[Running, str],
) -> None:
    run, queue = external_broker
    with Connection(SYSTEM_BROKER, connect_timeout=5) as conn:
        # then the work queue exists, with a consumer (the pool's worker)
        ok = conn.channel().queue_declare(queue, passive=True)
        assert ok.consumer_count >= 1
        # and the dead-letter queue kvern routes dead letters to exists there too
        dead_letters = dead_letter_queue(run.config.store_url).name
        assert conn.channel().queue_declare(dead_letters, passive=True).queue == dead_letters
        # and the work queue is a quorum queue: redeclaring it as a classic queue is refused
        with pytest.raises(PreconditionFailed):
            Queue(queue, durable=True, queue_arguments={"x-queue-type": "classic"}).bind(conn.channel()).declare()


def test_an_external_broker_needs_no_management_plugin(external_broker: tuple[Running, str]) -> None:
    run, queue = external_broker
    # given the machine's broker has no management API listening
    if port_open(MANAGEMENT_PORT):
        pytest.skip("the machine's RabbitMQ has its management plugin on: cannot show kvern does without it")
    assert run.config.management_url is None

    # when status is asked for
    result = kvern("-f", str(run.instance.spec.path), "status", "--json")

    # then it still reports the queue's depth and consumers (read over AMQP)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["queues"][queue]["consumers"] >= 1
    assert report["queues"][queue]["ready"] == 0
    assert report["front_door"] == run.url


# -- a split run: web heads on one instance, worker pools on another, sharing a broker and a job store --------


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Running]]:
    with contextlib.ExitStack() as stack:
        queue = stack.enter_context(system_queue())
        pg_url = stack.enter_context(contextlib.contextmanager(fresh_schema_url)())
        text = topology_spec(queue, broker=SYSTEM_BROKER, store=pg_url, heads=2)
        # Two "machines": each has its own copy of the project and its own state dir.
        front = write_project(tmp_path_factory.mktemp("machines") / "front", text)
        back = write_project(front.parent.parent / "back", text)
        # Started one after the other: both create the job store's schema if it is missing.
        web, pools = stack.enter_context(running((front, "web"), (back, "pools")))
        yield web, pools


def test_a_split_run_runs_each_tier_on_its_own_instance(split: tuple[Running, Running]) -> None:
    web, pools = split
    # then the web instance runs nginx and web heads, and no worker
    assert {"nginx", "web"} <= program_groups(web)
    assert not any(group.startswith("pool-") for group in program_groups(web))
    # and the pools instance runs workers, and no nginx nor web head
    assert "pool-reports" in program_groups(pools)
    assert not {"nginx", "web", "broker"} & program_groups(pools)
    assert pools.instance.state_dir != web.instance.state_dir
    assert not port_open(pools.config.front_door_port)


def test_a_job_submitted_to_the_web_instance_is_run_by_the_pools_instance(split: tuple[Running, Running]) -> None:
    web, pools = split
    with web.client() as client:
        # when a report is asked for through the web instance's front door
        response = submit_report(client, 51, seconds=0.5)
        assert response.status_code == 202
        job = wait_for_outcome(client, response.json()["id"])

        # then it succeeds, and the web instance serves its PDF
        assert_valid_pdf(client, job)

    # and the attempt was run by a worker of the pools instance
    store = JobStore(pools.config.store_url)
    try:
        workers = [attempt.worker or "" for attempt in store.history(job["id"])]
    finally:
        store.close()
    assert len(workers) == 1
    assert f"@{pools.config.instance}." in workers[0], workers
    assert pools.config.instance != web.config.instance


def test_status_of_a_split_run_shows_each_instance_its_own_tier(split: tuple[Running, Running]) -> None:
    web, pools = split
    web_report = json.loads(
        kvern("-f", str(web.instance.spec.path), "--state", str(web.instance.state_dir), "status", "--json").stdout
    )
    pools_report = json.loads(
        kvern("-f", str(pools.instance.spec.path), "--state", str(pools.instance.state_dir), "status", "--json").stdout
    )

    assert web_report["front_door"] == web.url and web_report["pools"] == []
    assert pools_report["front_door"] is None
    assert [p["name"] for p in pools_report["pools"]] == ["reports"]
    assert pools_report["pools"][0]["processes"] >= 1
    # both see the same job store
    assert web_report["jobs"] == pools_report["jobs"]


# -- the CLI pair ------------------------------------------------------------------------------------------------


def test_cli_up_detached_then_down_leaves_no_process_behind(tmp_path: Path) -> None:
    with system_queue() as queue:
        spec = write_project(tmp_path / "cli", topology_spec(queue, broker=SYSTEM_BROKER))
        state = (spec.parent / ".kvern").resolve()
        try:
            # when the platform is started detached
            up = kvern("-f", str(spec), "up", "-d")
            assert up.returncode == 0, up.stderr

            # then it has printed its front door, which answers, and its processes run
            url = up.stdout.strip().rsplit(" ", 1)[-1]
            assert url.startswith("http://127.0.0.1:")
            assert httpx.get(f"{url}/api/health", timeout=5).status_code == 200
            pids = set(owned_pids(state))
            supervisord = int((state / "supervisord.pid").read_text())
            assert supervisord in pids and len(pids) >= 5  # supervisord, nginx (+ workers), web head, pool, ...

            # and a second `up` is refused, starting nothing more
            again = kvern("-f", str(spec), "up", "-d")
            assert again.returncode == RET_ALREADY_RUNNING
            assert "already running" in again.stderr

            # when it is taken down
            down = kvern("-f", str(spec), "down")

            # then nothing of it is left, and the front door is closed
            assert down.returncode == 0 and "kvern is down" in down.stdout
            assert owned_pids(state) == []
            # and the front door stopped taking requests before the web heads and the workers behind it went
            stopped = [line.split("stopped: ")[1].split()[0] for line in _log(state) if "stopped: " in line]
            assert stopped.index("nginx") < stopped.index("web-0") < stopped.index("pool-reports-0"), stopped
            assert not port_open(int(url.rsplit(":", 1)[1]))
            # and the commands that need a running instance say it is not running
            assert kvern("-f", str(spec), "status").returncode == RET_NOT_RUNNING
            assert "was not running" in kvern("-f", str(spec), "down").stdout
        finally:
            Instance(load_spec(spec), state).down()
            leftover = owned_pids(state)
            for pid in leftover:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _log(state: Path) -> list[str]:
    return (state / "logs" / "supervisord.log").read_text().splitlines()
