"""Fixtures that bring up real kvern instances (RabbitMQ, nginx, Supervisor, Celery workers).

Every instance a test starts is taken down by `kvern down`; the finalizer then kills, by pid, anything of
that instance that is still alive (and fails the test, since that is a leak).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from kvern.broker.topology import dead_letter_queue
from kvern.errors import RuntimeStateError
from kvern.runtime.instance import Instance, front_door_url, owned_pids
from kvern.runtime_config import RuntimeConfig, local_key
from kvern.spec import Tiers, load_spec

REPO = Path(__file__).resolve().parents[2]
REPORTS = REPO / "examples" / "reports"
STATIC_SITE = REPO / "tests" / "static_site"  # a page that calls the job API, served as a project's static site
SYSTEM_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
TERMINAL = {"succeeded", "failed", "dead", "cancelled"}

pytestmark = pytest.mark.integration


@dataclass
class Running:
    instance: Instance
    config: RuntimeConfig

    @property
    def url(self) -> str:
        return front_door_url(self.config)

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self.instance.state_dir)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers=self.headers)


def auth_headers(state_dir: Path) -> dict[str, str]:
    """The instance's own API key (made by `up`), as the CLI and scripts on this machine use it."""
    token = local_key(state_dir)
    return {"Authorization": f"Bearer {token}"} if token else {}


def write_project(folder: Path, spec_text: str, tasks_source: Path | None = None) -> Path:
    """A user project: the reports example's tasks, a small static site (tests/static_site: a page that calls the
    job API) and the given spec (no app)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(tasks_source or REPORTS / "tasks.py", folder / "tasks.py")
    shutil.copy(REPORTS / "report_pdf.py", folder / "report_pdf.py")
    shutil.copytree(STATIC_SITE, folder / "static", dirs_exist_ok=True)
    spec = folder / "kvern.toml"
    spec.write_text(spec_text)
    return spec


def reports_spec(
    *,
    heads: int = 2,
    pool_min: int = 1,
    pool_max: int = 3,
    extra: str = "",
    queue: str = "reports",
    broker: str | None = None,
) -> str:
    """The reports example's spec; with `broker`, on that broker (then give a `queue` of the test's own)."""
    broker_section = f'[broker]\nurl = "{broker}"\n' if broker else ""
    return f"""{broker_section}
[app]
tasks = "tasks"
static = "static"

[web]
heads = {heads}

[[pools]]
name = "reports"
queues = ["{queue}"]
concurrency = 2
min = {pool_min}
max = {pool_max}
idle_after = 5

[tasks."tasks.generate_heavy_report"]
queue = "{queue}"
retries = 2
time_limit = 60
{extra}
"""


@pytest.fixture
def start_instance(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Instance] = []

    def start(spec_path: Path, only: str = "all", state: Path | None = None) -> Running:
        instance = Instance(load_spec(spec_path), (state or spec_path.parent / ".kvern").resolve())
        started.append(instance)
        config = instance.up(Tiers.parse(only))
        return Running(instance, config)

    yield start
    leaks = []
    for instance in reversed(started):
        instance.down()
        delete_machine_broker_queues(instance)
        leftover = owned_pids(instance.state_dir)
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leaks += leftover
    assert not leaks, f"processes left behind after kvern down: {leaks}"


def wait_for_outcome(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


def submit_report(client: httpx.Client, user_id: int, seconds: float = 0.5, **headers: str) -> httpx.Response:
    body = {"task": "tasks.generate_heavy_report", "args": [user_id], "kwargs": {"seconds": seconds}}
    return client.post("/api/v1/jobs", json=body, headers=headers)


def fresh_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a schema of its own, dropped afterwards."""
    schema = f"kvern_it_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from fresh_schema_url()


@contextlib.contextmanager
def system_queue() -> Iterator[str]:
    """A fresh queue name on the machine's broker; the queue and its exchange are deleted afterwards."""
    name = f"reports_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with Connection(SYSTEM_BROKER, connect_timeout=5) as conn:
            channel = conn.channel()
            Queue(name).bind(channel).delete()
            Exchange(name).bind(channel).delete()


def delete_dead_letter_queue(instance: Instance) -> None:
    """A store's dead-letter queue on the machine's broker outlives the instance: remove this test's one."""
    if instance.spec.broker_url is None:
        return
    with contextlib.suppress(RuntimeStateError), Connection(instance.spec.broker_url, connect_timeout=5) as conn:
        queue = dead_letter_queue(instance.runtime().store_url)
        with contextlib.suppress(Exception):
            queue.bind(conn.channel()).delete()


def machine_queue() -> str:
    """A queue name of a test's own on the machine's broker (`start_instance` deletes it after `kvern down`)."""
    return f"reports_{uuid.uuid4().hex[:12]}"


def delete_machine_broker_queues(instance: Instance) -> None:
    """The queues (and their exchanges) and the dead-letter queue of an instance on the machine's broker."""
    if instance.spec.broker_url is None:
        return
    with Connection(instance.spec.broker_url, connect_timeout=5) as conn:
        for name in instance.spec.all_queues:
            channel = conn.channel()
            Queue(name).bind(channel).delete()
            Exchange(name).bind(channel).delete()
    delete_dead_letter_queue(instance)
