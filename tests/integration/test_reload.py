"""`kvern reload`: new code and spec reach a running instance with no failed request and no lost job."""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from kvern.constants import RET_SPEC, SPEC_SNAPSHOT
from kvern.jobs.records import Job
from kvern.jobs.store import JobStore
from kvern.processes import ACTIVE_STATES, pool_group
from kvern.runtime.instance import Instance, owned_pids
from kvern.runtime.supervisor import Supervisor
from kvern.runtime_config import RuntimeConfig
from kvern.spec import load_spec
from tests.integration.conftest import (
    SYSTEM_BROKER,
    Running,
    delete_machine_broker_queues,
    machine_queue,
    write_project,
)

pytestmark = pytest.mark.integration

CLIENT_THREADS = 8
GETS_PER_POST = 3  # each client thread: three page reads, then one job


def versioned_tasks(version: str) -> str:
    """The project's tasks at one version: the task's result names it."""
    return f'''
from celery import Celery

app = Celery("reloaded")
VERSION = "{version}"


@app.task
def work(n: int) -> dict:
    return {{"version": VERSION, "n": n}}
'''


def versioned_page(version: str) -> str:
    """The project's own web app (WSGI) at one version: its page names it."""
    return f"""
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"page version {version}"]
"""


def write_code(folder: Path, version: str) -> None:
    (folder / "tasks.py").write_text(versioned_tasks(version))
    (folder / "webpage.py").write_text(versioned_page(version))


def reload_spec(*, queue: str, pool_max: int = 2, other_queue: bool = False, heads: int = 2) -> str:
    """On the machine's RabbitMQ, `queue` the test's own: reload is not about the broker, and a private node
    would boot and stop in each test. No per-address limits: the whole load comes from one address."""
    queues = f'["{queue}", "{queue}_other"]' if other_queue else f'["{queue}"]'
    return f"""
[broker]
url = "{SYSTEM_BROKER}"

[app]
tasks = "tasks"

[web]
app = "webpage:app"
heads = {heads}
rate = 0
connections = 0
key_rate = 0

[[pools]]
name = "work"
queues = {queues}
concurrency = 4
min = 1
max = {pool_max}
idle_after = 60

[tasks."tasks.work"]
time_limit = 30
"""


def project(folder: Path, spec_text: str, version: str) -> Path:
    spec = write_project(folder, spec_text)
    write_code(folder, version)
    return spec


def kvern(spec: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kvern.cli", "-f", str(spec), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@dataclass
class Answer:
    started: float
    status: int
    version: str | None = None  # which code the page came from
    job_id: str | None = None


@dataclass
class Load:
    """Client threads reading the app's page and posting jobs through the front door until stopped."""

    url: str
    headers: dict[str, str]
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    resent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, number: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as client:
            while not self.stop.is_set():
                for _ in range(GETS_PER_POST):
                    self._call(lambda: self._read_page(client))
                self._call(functools.partial(self._post, client, number, str(uuid.uuid4())))

    def _call(self, request: Callable[[], Answer]) -> None:
        try:
            self.answers.append(request())
        except (httpx.ReadError, httpx.RemoteProtocolError):
            # A kept-alive connection that nginx closed as the request went out (an old worker leaving after a
            # graceful reload): a browser sends the request again on a new connection (RFC 9112, 9.3.1), and
            # so does this client; POSTs carry an idempotency key, so a resent job is never a second job.
            self.resent += 1
            self._call_once_more(request)
        except httpx.HTTPError as exc:
            self.errors.append(repr(exc))

    def _call_once_more(self, request: Callable[[], Answer]) -> None:
        try:
            self.answers.append(request())
        except httpx.HTTPError as exc:
            self.errors.append(repr(exc))

    def _read_page(self, client: httpx.Client) -> Answer:
        started = time.monotonic()
        response = client.get("/")
        shown = response.text.removeprefix("page version ") if response.status_code == 200 else None
        return Answer(started, response.status_code, version=shown)

    def _post(self, client: httpx.Client, number: int, key: str) -> Answer:
        started = time.monotonic()
        body = {"task": "tasks.work", "args": [number]}
        response = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
        job_id = response.json().get("id") if response.status_code == 202 else None
        return Answer(started, response.status_code, job_id=job_id)


@contextlib.contextmanager
def load_on(url: str, headers: dict[str, str]) -> Iterator[Load]:
    load = Load(url, headers)
    with ThreadPoolExecutor(CLIENT_THREADS) as executor:
        futures = [executor.submit(load.client, n) for n in range(CLIENT_THREADS)]
        try:
            yield load
        finally:
            load.stop.set()
            for future in futures:
                future.result()


def wait_until_finished(store: JobStore, ids: list[str], timeout: float = 90) -> dict[str, Job]:
    """The jobs of `ids` once each has finished; fails naming those that are missing or still unfinished."""
    deadline = time.monotonic() + timeout
    while True:
        # One query for all of them: the instance holds only this test's jobs (thousands; one get each was slow).
        jobs = {job.id: job for job in store.list_jobs(None, limit=len(ids) + 1000)}
        unfinished = {
            i: jobs[i].status.value if i in jobs else "missing"
            for i in ids
            if i not in jobs or jobs[i].status.value not in ("succeeded", "failed")
        }
        if not unfinished:
            return jobs
        assert time.monotonic() < deadline, dict(list(unfinished.items())[:20])
        time.sleep(0.5)


def test_two_reloads_under_load_answer_every_request_and_run_every_job_on_the_new_code(
    tmp_path: Path, start_instance: Callable[..., Running]
) -> None:
    # given a running project at v1, and clients reading a page and posting jobs a few hundred times a second
    spec = project(tmp_path / "site", reload_spec(queue=machine_queue()), "v1")
    running = start_instance(spec)
    store = JobStore(running.config.store_url)
    reloaded_at: dict[str, float] = {}
    with load_on(running.url, running.headers) as load:
        time.sleep(2)
        for version in ("v2", "v3"):
            # when the code changes and `kvern reload` runs
            write_code(spec.parent, version)
            result = kvern(spec, "reload")
            assert result.returncode == 0, result.stdout + result.stderr
            print(result.stdout)
            reloaded_at[version] = time.monotonic()
            time.sleep(2)
    answers = sorted(load.answers, key=lambda a: a.started)
    took = answers[-1].started - answers[0].started
    print(f"{len(answers)} requests in {took:.1f}s ({len(answers) / took:.0f}/s), {load.resent} resent")

    # then every request got a 2xx answer
    assert not load.errors, load.errors[:5]
    assert [a.status for a in answers if not 200 <= a.status < 300] == []
    # ...every page read after a reload returned shows its code
    for version, at in reloaded_at.items():
        pages = [a for a in answers if a.started > at and a.version is not None]
        assert pages and {a.version for a in pages} <= {version, "v3"}, version
    # ...every accepted job succeeded (none lost, none stuck), and those posted after a reload ran its code
    jobs = [a for a in answers if a.job_id is not None]
    stored = wait_until_finished(store, [a.job_id for a in jobs if a.job_id])
    for version, at in reloaded_at.items():
        newer = {version, "v3"}
        for answer in (a for a in jobs if a.started > at):
            job = stored.get(answer.job_id or "")
            assert job is not None and job.status.value == "succeeded"
            assert job.result["version"] in newer, (version, job.result)


def test_a_change_that_needs_down_up_or_broken_code_is_refused_and_sighup_applies_a_larger_pool_max(
    tmp_path: Path,
) -> None:
    # given a platform in the foreground, its pool at most 1 process
    queue = machine_queue()
    spec = project(tmp_path / "fg", reload_spec(queue=queue, pool_max=1, heads=1), "v1")
    state = spec.parent / ".kvern"
    process = subprocess.Popen(
        [sys.executable, "-m", "kvern.cli", "-f", str(spec), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = _lines_of(process)
    try:
        _wait_for_line(lines, "kvern is up")
        supervisor = Supervisor(state)
        pids = {p.full_name: p.pid for p in supervisor.processes()}
        snapshot = (state / SPEC_SNAPSHOT).read_text()

        # when the spec changes a pool's queues: refused, one line naming the field, nothing changed
        spec.write_text(reload_spec(queue=queue, pool_max=1, heads=1, other_queue=True))
        refused = kvern(spec, "reload")
        assert refused.returncode == RET_SPEC, refused.stdout + refused.stderr
        assert "pools.work.queues" in refused.stderr and "needs `kvern down` + `kvern up`" in refused.stderr
        assert (state / SPEC_SNAPSHOT).read_text() == snapshot
        assert {p.full_name: p.pid for p in supervisor.processes()} == pids

        # when the new code does not import: refused with the error, nothing changed
        spec.write_text(reload_spec(queue=queue, pool_max=1, heads=1))
        (spec.parent / "tasks.py").write_text("import no_such_module\n")
        broken = kvern(spec, "reload")
        assert broken.returncode == RET_SPEC, broken.stdout + broken.stderr
        assert "no_such_module" in broken.stderr
        assert (state / SPEC_SNAPSHOT).read_text() == snapshot
        assert {p.full_name: p.pid for p in supervisor.processes()} == pids
        write_code(spec.parent, "v1")

        # when the pool's max grows to 3 and the foreground `up` gets SIGHUP
        spec.write_text(reload_spec(queue=queue, pool_max=3, heads=1))
        process.send_signal(signal.SIGHUP)
        _wait_for_line(lines, "kvern reloaded")

        # then the instance runs the new spec, and the pool may grow past its old max
        assert RuntimeConfig.load(state).spec().pool("work").max == 3
        pinned = kvern(spec, "scale", "work", "3")
        assert pinned.returncode == 0, pinned.stderr
        deadline = time.monotonic() + 60
        while _running_workers(supervisor) < 3:
            assert time.monotonic() < deadline, "the pool did not grow to its new max"
            time.sleep(0.2)

        process.send_signal(signal.SIGINT)
        _wait_for_line(lines, "kvern is down")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        kvern(spec, "down")
        for pid in owned_pids(state):  # a backstop: only processes of this test's own state dir
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        delete_machine_broker_queues(Instance(load_spec(spec), state.resolve()))


def _running_workers(supervisor: Supervisor) -> int:
    return sum(1 for p in supervisor.processes() if p.group == pool_group("work") and p.state in ACTIVE_STATES)


def _lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, ""):
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str], start: str, timeout: float = 120) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if line.startswith(start):
            return seen
    raise AssertionError(f"no line starting with {start!r} in {timeout}s: {seen}")
