"""The several-machine instance the multihost scenarios share (booting it is most of their time).

Hosts: b1..b3 (one RabbitMQ cluster), a1 (front door, web heads, a worker pool, a controller), w2 (a second
worker host for the same pool) and h2 (a web host: its heads on TCP behind a1's front door); w3, a third worker
host, is declared but only started by the scenario that adds a worker host (test_worker_hosts.py). They share
the machine's PostgreSQL through a relay on the bridge, in a schema of their own. Each job's task leaves one
file per completed run in `effects`, so duplicates are counted from what ran.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy

from kvern.jobs.store import JobStore
from kvern.runtime_config import local_key
from tests.multihost.kvern_hosts import Project, broker_tables, project_on
from tests.multihost.netns import Host, Network
from tests.multihost.pg_relay import PostgresRelay

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
BROKERS = ("b1", "b2", "b3")
WORK_QUEUE = "main"

TASKS = """
import os
import time
from pathlib import Path

from celery import Celery

app = Celery("multihost")


@app.task
def work(tag: str, effects: str, seconds: float = 0.05) -> str:
    time.sleep(seconds)
    Path(effects, f"{tag}.{os.getpid()}.{time.time_ns()}").touch()
    return tag
"""


def web_host_table(host: Host) -> str:
    return f'[hosts.{host.name}]\naddress = "{host.address}"\nroles = ["web"]\n\n'


def spec_text(network: Network, schema: str, brokers: tuple[str, ...] = BROKERS) -> str:
    a1, w2 = network.hosts["a1"], network.hosts["w2"]
    store = f"postgresql://postgres@{network.gateway}:5432/test?options=-csearch_path%3D{schema}"
    return (
        '[app]\nname = "multihost"\ntasks = "tasks"\n\n'
        f'[web]\nheads = 1\nport = 8080\nlisten = ["{a1.address}:8080"]\nserver_name = ["{a1.address}"]\n\n'
        f'[store]\nurl = "{store}"\n\n'
        f'[[pools]]\nname = "main"\nqueues = ["{WORK_QUEUE}"]\nconcurrency = 4\nmin = 1\nmax = 2\n\n'
        f'[hosts.a1]\naddress = "{a1.address}"\nroles = ["front", "web", "workers", "controller"]\n\n'
        f'[hosts.w2]\naddress = "{w2.address}"\nroles = ["workers"]\n\n'
        f'[hosts.w3]\naddress = "{network.hosts["w3"].address}"\nroles = ["workers"]\n\n'  # started by scenario 5
        f"{web_host_table(network.hosts['h2'])}"
        f"{broker_tables([network.hosts[name] for name in brokers])}"
    )


@dataclass
class Stack:
    project: Project
    store: JobStore
    effects: Path

    @property
    def front(self) -> Host:
        return self.project.hosts["a1"]

    @property
    def url(self) -> str:
        return f"http://{self.front.address}:8080"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {local_key(self.project.state(self.front))}"}


@contextlib.contextmanager
def running_stack(folder: Path, brokers: tuple[str, ...] = BROKERS) -> Iterator[Stack]:
    """The stack, up; `brokers` names its broker hosts (B8 compares one with three)."""
    effects = folder / "effects"
    effects.mkdir()
    schema = f"kvern_mh_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    network = Network.create()
    relay: PostgresRelay | None = None
    try:
        for name in (*brokers, "a1", "w2", "h2", "w3"):
            network.add_host(name)
        relay = PostgresRelay(network.gateway).start()
        with project_on(network, folder, spec_text(network, schema, brokers), TASKS) as project:
            project.up_together(project.brokers())
            # Together too: the job store's tables are made under an advisory lock (jobs/store.py).
            project.up_together([network.hosts[name] for name in ("a1", "w2", "h2")])
            store = JobStore(f"{POSTGRES}?options=-csearch_path%3D{schema}")
            try:
                yield Stack(project, store, effects)
            finally:
                store.close()
    finally:
        network.close()
        if relay is not None:
            relay.close()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()
