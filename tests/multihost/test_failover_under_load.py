"""Scenario 1 of several machines, under load: the broker host leading the work queue dies (SIGKILL of all of it).

Hosts: three broker hosts (b1..b3, one RabbitMQ cluster) and one application host (a1: front door, web heads,
a worker pool, the controller), each started with `kvern up --host`, sharing the machine's PostgreSQL through
a relay on the bridge. Submitters post jobs to a1's front door the whole time; each job's task leaves one file
per execution, so duplicates are counted from what ran, not from what the store says.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy

from kvern.jobs.store import JobStore
from kvern.runtime_config import local_key
from tests.multihost.kvern_hosts import Project, broker_tables, project_on
from tests.multihost.netns import Network
from tests.multihost.pg_relay import PostgresRelay

QUEUE = "main"
SUBMITTERS = 4
PAUSE_S = 0.05  # between one submitter's requests
LOAD_S = 20.0
FAULT_AT_S = 6.0
SETTLE_S = 90.0  # for every accepted job to finish after the load
TERMINAL = {"succeeded", "failed", "dead", "cancelled"}
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
ROWS: list[dict[str, Any]] = []

TASKS = """
import os
import time
from pathlib import Path

from celery import Celery

app = Celery("mhload")


@app.task
def work(tag: str, effects: str) -> str:
    time.sleep(0.05)
    Path(effects, f"{tag}.{os.getpid()}.{time.time_ns()}").touch()
    return tag
"""


def _spec(network: Network, schema: str, effects: Path) -> str:
    a1 = network.hosts["a1"]
    brokers = [network.hosts[name] for name in ("b1", "b2", "b3")]
    store = f"postgresql://postgres@{network.gateway}:5432/test?options=-csearch_path%3D{schema}"
    return (
        '[app]\nname = "mhload"\ntasks = "tasks"\n\n'
        f'[web]\nheads = 1\nport = 8080\nlisten = ["{a1.address}:8080"]\nserver_name = ["{a1.address}"]\n\n'
        f'[store]\nurl = "{store}"\n\n'
        '[[pools]]\nname = "main"\nqueues = ["main"]\nconcurrency = 4\nmin = 1\nmax = 2\n\n'
        f'[hosts.a1]\naddress = "{a1.address}"\nroles = ["front", "web", "workers", "controller"]\n\n'
        f"{broker_tables(brokers)}"
    )


@dataclass
class Stack:
    project: Project
    url: str
    store: JobStore
    effects: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, namespaces: None) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("load")
    effects = folder / "effects"
    effects.mkdir()
    schema = f"kvern_mh_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    network = Network.create()
    relay: PostgresRelay | None = None
    try:
        for name in ("b1", "b2", "b3", "a1"):
            network.add_host(name)
        relay = PostgresRelay(network.gateway).start()
        with project_on(network, folder, _spec(network, schema, effects), TASKS) as project:
            project.up_together(project.brokers())
            project.up(network.hosts["a1"])
            store = JobStore(f"{POSTGRES}?options=-csearch_path%3D{schema}")
            try:
                yield Stack(project, f"http://{network.hosts['a1'].address}:8080", store, effects)
            finally:
                store.close()
    finally:
        network.close()
        if relay is not None:
            relay.close()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@dataclass
class Load:
    """Submits jobs with unique tags, sending a request again (same Idempotency-Key) after a 5xx or no answer."""

    url: str
    headers: dict[str, str]
    effects: Path
    accepted: dict[str, str] = field(default_factory=dict)  # tag -> job id
    accepted_at: list[float] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    answers_5xx: int = 0
    no_answer: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, submitter: int) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=httpx.Timeout(30, connect=5)) as client:
            n = 0
            while not self.stop.is_set():
                self.submit(client, f"s{submitter}-{n}")
                n += 1
                time.sleep(PAUSE_S)

    def submit(self, client: httpx.Client, tag: str) -> None:
        body = {"task": "tasks.work", "args": [tag, str(self.effects)]}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": tag})
            except httpx.TransportError:
                with self.lock:
                    self.no_answer += 1
                time.sleep(0.2)
                continue
            if response.status_code in (200, 202):
                with self.lock:
                    self.accepted[tag] = response.json()["id"]
                    self.accepted_at.append(time.monotonic())
                return
            assert response.status_code >= 500, f"{tag}: {response.status_code} {response.text}"
            with self.lock:
                self.answers_5xx += 1
            time.sleep(0.2)
        with self.lock:
            self.given_up.append(tag)

    def longest_gap_after(self, moment: float) -> float:
        """The longest wait between two accepted submissions from `moment` on: the outage the fault made."""
        stamps = sorted(t for t in self.accepted_at if t >= moment)
        edges = [moment, *stamps]
        return max(b - a for a, b in itertools.pairwise(edges)) if stamps else float("inf")


def _settle(stack: Stack, load: Load) -> tuple[list[str], dict[str, int]]:
    """Wait for every accepted job to end; returns the ones still not ended and executions per tag."""
    deadline = time.monotonic() + SETTLE_S
    pending = dict(load.accepted)
    while pending and time.monotonic() < deadline:
        for tag, job_id in list(pending.items()):
            job = stack.store.get(job_id)
            if job is not None and str(job.status) in TERMINAL:
                del pending[tag]
        time.sleep(0.5)
    runs: dict[str, int] = {}
    for path in stack.effects.iterdir():
        tag = path.name.split(".")[0]
        runs[tag] = runs.get(tag, 0) + 1
    return list(pending), runs


def test_killing_the_broker_host_leading_the_queue_under_load(stack: Stack) -> None:
    project = stack.project
    leader = project.leader(QUEUE)
    load = Load(stack.url, {"Authorization": f"Bearer {local_key(project.state(project.hosts['a1']))}"}, stack.effects)
    threads = [threading.Thread(target=load.run, args=(i,)) for i in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(FAULT_AT_S)
        killed_at = time.monotonic()
        assert leader.kill_all() > 0  # the machine dies: its node, epmd, its Supervisor
        time.sleep(LOAD_S - FAULT_AT_S)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=120)
    recovery = load.longest_gap_after(killed_at)
    stuck, runs = _settle(stack, load)
    not_ok = [
        tag for tag, job_id in load.accepted.items() if (j := stack.store.get(job_id)) and j.status != "succeeded"
    ]
    row = {
        "scenario": f"1: SIGKILL broker host leading {QUEUE!r} ({leader.name})",
        "accepted": len(load.accepted),
        "lost": len(load.given_up) + len([t for t in load.accepted if runs.get(t, 0) == 0 and t not in stuck]),
        "stuck": len(stuck),
        "duplicate runs": sum(1 for count in runs.values() if count > 1),
        "5xx": load.answers_5xx,
        "no answer": load.no_answer,
        "202 again after (s)": round(recovery, 2),
    }
    ROWS.append(row)
    print(f"\nmultihost fault row: {row}")
    assert load.accepted, "no job was accepted"
    assert not load.given_up, f"submissions never accepted: {load.given_up[:5]}"
    assert not stuck, f"accepted jobs that never ended: {stuck[:5]}"
    assert not not_ok, f"accepted jobs that did not succeed: {not_ok[:5]}"
    assert all(runs.get(tag, 0) >= 1 for tag in load.accepted), "an accepted job never ran"
    # The old leader's host comes back and rejoins: the queue has its three replicas again.
    assert "rejoined its cluster" in project.up(leader)
    members = project.queue_info(QUEUE, "members", among=[leader])
    assert isinstance(members, list) and len(members) == 3
