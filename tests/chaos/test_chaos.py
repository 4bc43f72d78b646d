"""Chaos: a stream of uniquely identified jobs through nginx while one fault at a time is injected.

For every scenario, once the instance has recovered, every accepted job is checked against the job store and
against its side effects (each task run that completes appends one line to a file named after its job):

- lost: accepted (202/200) but never finished (still queued, or no record at all);
- stuck: still `running`;
- dup outcomes: more than one attempt recorded a terminal outcome;
- not ok: a job of the stream that did not succeed, or succeeded without its side effect;
- 5xx / conn errors: what the client saw; it retries both with the same Idempotency-Key, as a real client
  would. The nginx reload must answer no 5xx at all (a connection error there is an idle keep-alive connection
  closed by an old nginx worker: reported, retried by the client, not a failure);
- re-runs: side effects executed more than once (at-least-once execution; reported, not a failure);
- retried: jobs that took more than one attempt (shows the fault hit jobs mid-task);
- given back: jobs with an attempt claimed (at dispatch, or ahead) that no task process began before the fault:
  the next claim gave it back, so it did not count against the job's retries (reported, not a failure).

The poison scenario's poison job must end `dead`; it is not part of the stream's counts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from kvern.constants import PROGRAM_BROKER, PROGRAM_NGINX, ROLE_ADMIN
from kvern.jobs.base import NOT_BEGUN
from kvern.jobs.states import ACTIVE, JobStatus
from kvern.jobs.store import JobStore
from kvern.runtime.instance import Instance, front_door_url, owned_pids
from kvern.runtime.leftovers import alive, instance_pids
from kvern.runtime.supervisor import Supervisor
from kvern.spec import load_spec
from tests.chaos.conftest import ROWS
from tests.integration.conftest import auth_headers

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

POOL = "chaos"
DEFERRED_POOL = "deferred"  # prefetch 8: a task process returns before its outcome commits, the ack waits for it
RATE_S = 0.15  # one submission every RATE_S seconds per submitter
SUBMITTERS = 2
THROTTLED_WAIT_S = 0.2  # after a 429 (the per-key rate limit), before sending the same job again
LOAD_S = 7.0  # how long the stream runs in each scenario
FAULT_AT_S = 2.5  # when the fault is injected, from the start of the stream
RECOVERY_S = 120.0  # how long every accepted job has to finish after the stream ends
TERMINAL_OUTCOMES = {"succeeded", "failed", "dead"}

TASKS = '''
"""The chaos stream's task: sleeps a little, then leaves one side effect per completed run."""

import os
import signal
import time
from pathlib import Path

from celery import Celery

import kvern

app = Celery("chaos")
EFFECTS = Path(__file__).resolve().parent / "effects"


@app.task
def work(tag, seconds):
    return _work(tag, seconds)


@app.task
def work_deferred(tag, seconds):
    """The same, on the pool whose acks wait for the writer's commit."""
    return _work(tag, seconds)


def _work(tag, seconds):
    busy = EFFECTS / "busy" / str(os.getpid())
    busy.write_text(tag)
    try:
        time.sleep(seconds)
        job = kvern.current_job()
        with open(EFFECTS / "done" / tag, "a") as out:
            out.write(f"{job.attempt if job else 0} {os.getpid()}\\n")
    finally:
        busy.unlink(missing_ok=True)
    return tag


@app.task
def poison(tag):
    os.kill(os.getpid(), signal.SIGKILL)
'''

SPEC = """
[app]
tasks = "tasks"

[web]
heads = 2

[[pools]]
name = "chaos"
queues = ["chaos"]
concurrency = 2
min = 2
max = 2

[[pools]]
name = "deferred"
queues = ["deferred"]
concurrency = 2
min = 1
max = 1
prefetch = 8

[tasks."tasks.work"]
retries = 3
backoff = 1.0
backoff_max = 2.0
time_limit = 30

[tasks."tasks.work_deferred"]
queue = "deferred"
retries = 3
backoff = 1.0
backoff_max = 2.0
time_limit = 30
"""


@dataclass
class Chaos:
    instance: Instance
    url: str
    store: JobStore
    effects: Path

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.instance.state_dir)

    def pid_of(self, program: str) -> int:
        pid = self.running_pid(program)
        if pid is None:
            raise AssertionError(f"{program} is not running")
        return pid

    def running_pid(self, program: str) -> int | None:
        for info in self.supervisor.processes():
            if info.name == program and info.state == "RUNNING":
                return info.pid
        return None

    def broker_address(self) -> tuple[str, int]:
        url = urlsplit(self.instance.runtime().broker_urls[ROLE_ADMIN])
        assert url.hostname is not None and url.port is not None, url
        return url.hostname, url.port

    def worker_mains(self, pool: str = POOL) -> dict[int, str]:
        return {
            p.pid: p.name
            for p in self.supervisor.processes()
            if p.group == f"pool-{pool}" and p.state == "RUNNING" and p.pid is not None
        }


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    folder = tmp_path_factory.mktemp("chaos")
    (folder / "tasks.py").write_text(TASKS)
    (folder / "kvern.toml").write_text(SPEC)
    effects = folder / "effects"
    (effects / "busy").mkdir(parents=True)
    (effects / "done").mkdir()
    instance = Instance(load_spec(folder / "kvern.toml"), (folder / ".kvern").resolve())
    config = instance.up()
    store = JobStore(config.store_url)
    state = Chaos(instance, front_door_url(config), store, effects)
    try:
        yield state
    finally:
        store.close()
        instance.down()
        leftover = owned_pids(instance.state_dir)
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not leftover, f"kvern down left processes behind: {leftover}"


# -- the stream ----------------------------------------------------------------------------------------------


@dataclass
class Stream:
    """Submits jobs with unique tags; retries 5xx and connection errors with the same Idempotency-Key."""

    url: str
    prefix: str
    state_dir: Path
    accepted: dict[str, str] = field(default_factory=dict)  # tag -> job id
    given_up: list[str] = field(default_factory=list)
    answers_5xx: int = 0
    throttled: int = 0  # 429s: the per-key rate limit, answered by waiting and sending again
    conn_errors: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    pause_s: float = RATE_S  # between one submitter's submissions
    task_s: float | None = None  # how long each job sleeps; None: 0.2 .. 1.0 s, by tag
    task: str = "tasks.work"  # tasks.work_deferred: on the pool with prefetch above 1 (acks after commit)

    def submit(self, client: httpx.Client, tag: str, task: str, args: list[Any]) -> None:
        deadline = time.monotonic() + 90
        body = {"task": task, "args": args}
        while time.monotonic() < deadline:
            try:
                response = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": tag})
            except httpx.TransportError:
                with self.lock:
                    self.conn_errors += 1
                time.sleep(0.3)
                continue
            if response.status_code in (200, 202):
                with self.lock:
                    self.accepted[tag] = response.json()["id"]
                return
            if response.status_code == 429:
                # The key's request rate (web.key_rate) was exceeded: a client waits and sends the same job again
                # (same Idempotency-Key). Not a fault of the scenario's, so not counted as one.
                with self.lock:
                    self.throttled += 1
                time.sleep(THROTTLED_WAIT_S)
                continue
            assert response.status_code >= 500, f"{tag}: unexpected answer {response.status_code} {response.text}"
            with self.lock:
                self.answers_5xx += 1
            time.sleep(0.3)
        with self.lock:
            self.given_up.append(tag)

    def run(self, worker: int) -> None:
        headers = auth_headers(self.state_dir)
        with httpx.Client(base_url=self.url, timeout=httpx.Timeout(30, connect=5), headers=headers) as client:
            n = 0
            while not self.stopping.is_set():
                tag = f"{self.prefix}-{worker}-{n}"
                seconds = self.task_s if self.task_s is not None else 0.2 + (hash(tag) % 9) / 10
                self.submit(client, tag, self.task, [tag, seconds])
                n += 1
                time.sleep(self.pause_s)


def run_scenario(
    chaos: Chaos, name: str, inject: Callable[[Chaos, Stream], None], submitters: int = SUBMITTERS, **load: Any
) -> dict[str, Any]:
    stream = Stream(chaos.url, f"{name}-{uuid.uuid4().hex[:6]}", chaos.instance.state_dir, **load)
    threads = [threading.Thread(target=stream.run, args=(i,)) for i in range(submitters)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(FAULT_AT_S)
        inject(chaos, stream)
        time.sleep(max(0.0, LOAD_S - FAULT_AT_S))
    finally:
        stream.stopping.set()
        for thread in threads:
            thread.join(timeout=120)
    row = count(chaos, name, stream)
    ROWS.append(row)
    wait_whole(chaos)
    return row


def count(chaos: Chaos, name: str, stream: Stream) -> dict[str, Any]:
    jobs = {tag: job_id for tag, job_id in stream.accepted.items() if not tag.endswith("poison")}
    deadline = time.monotonic() + RECOVERY_S
    while time.monotonic() < deadline:
        pending = [j for j in jobs.values() if (job := chaos.store.get(j)) is None or job.status in ACTIVE]
        if not pending:
            break
        time.sleep(0.5)
    row: dict[str, Any] = {
        "scenario": name,
        "accepted": len(jobs),
        "lost": len(stream.given_up),
        "stuck": 0,
        "dup outcomes": 0,
        "not ok": 0,
        "5xx": stream.answers_5xx,
        "429": stream.throttled,
        "conn errors": stream.conn_errors,
        "re-runs": 0,
        "retried": 0,
        "given back": 0,
    }
    for tag, job_id in jobs.items():
        job = chaos.store.get(job_id)
        effects = _effects(chaos, tag)
        row["re-runs"] += max(0, effects - 1)
        if job is None or job.status == JobStatus.QUEUED:
            row["lost"] += 1
            continue
        if job.status == JobStatus.RUNNING:
            row["stuck"] += 1
            continue
        row["retried"] += job.attempts > 1
        history = chaos.store.history(job_id)
        row["given back"] += any(a.error == NOT_BEGUN for a in history)
        outcomes = [a.outcome for a in history if a.outcome in TERMINAL_OUTCOMES]
        if len(outcomes) > 1:
            row["dup outcomes"] += 1
        if job.status != JobStatus.SUCCEEDED or job.result != tag or effects == 0:
            row["not ok"] += 1
    return row


def _effects(chaos: Chaos, tag: str) -> int:
    path = chaos.effects / "done" / tag
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_whole(chaos: Chaos, timeout: float = 90) -> None:
    """Every program RUNNING again and the front door healthy, before the next scenario."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [p.state for p in chaos.supervisor.processes() if p.state != "STOPPED"]
        with contextlib.suppress(httpx.HTTPError):
            healthy = httpx.get(f"{chaos.url}/api/health", timeout=2).status_code == 200
            mains = len(chaos.worker_mains()), len(chaos.worker_mains(DEFERRED_POOL))
            if healthy and all(state == "RUNNING" for state in states) and mains == (2, 1):
                return
        time.sleep(0.5)
    raise AssertionError("the instance did not recover")


def assert_clean(row: dict[str, Any], *, allow_5xx: bool = True, hits_jobs: bool = False) -> None:
    assert row["accepted"] > 10, row
    failures = {k: row[k] for k in ("lost", "stuck", "dup outcomes", "not ok") if row[k]}
    if not allow_5xx and row["5xx"]:
        failures["5xx"] = row["5xx"]
    assert not failures, f"{row['scenario']}: {failures} ({row})"
    if hits_jobs:
        assert row["retried"] > 0, f"{row['scenario']}: the fault hit no running job ({row})"


# -- faults --------------------------------------------------------------------------------------------------


def busy_children(chaos: Chaos, timeout: float = 5) -> list[tuple[int, int]]:
    """(child pid, worker main pid) of task processes of this instance that are running a job right now."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mains = chaos.worker_mains()
        found = []
        for marker in (chaos.effects / "busy").iterdir():
            pid = int(marker.name)
            parent = _parent(pid)
            if parent in mains:
                found.append((pid, parent))
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("no task process of the instance was busy")


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def kill_worker_children(chaos: Chaos, _stream: Stream) -> None:
    for pid, main in busy_children(chaos):
        if pid in children(main):  # a task process of this instance's worker, nothing else
            os.kill(pid, signal.SIGKILL)


def kill_worker_main(chaos: Chaos, _stream: Stream) -> None:
    _pid, main = busy_children(chaos)[0]
    assert main in chaos.worker_mains()
    os.kill(main, signal.SIGKILL)


def kill_node_mid_batch(pool: str) -> Callable[[Chaos, Stream], None]:
    """SIGKILL the worker main processes of `pool`, each holding its node's store writer, while short jobs
    stream through them: the writers are committing one batch after another, with claims and outcomes of several
    jobs in each."""

    def inject(chaos: Chaos, stream: Stream) -> None:
        wait_for(lambda: _succeeded(chaos, stream) >= 20, 30, "short jobs did not flow through the workers")
        # Every node of the pool at once, at a moment a job of its queue runs: one node of two may have been
        # idle at the kill, and then the fault hit no job at all
        queue = pool  # each pool of this spec consumes the queue of its own name
        wait_for(lambda: chaos.store.count_working([queue]) > 0, 30, f"no job of pool {pool} was running")
        mains = list(chaos.worker_mains(pool))
        for main in mains:
            os.kill(main, signal.SIGKILL)
        wait_for(lambda: not set(mains) & set(chaos.worker_mains(pool)), 10, f"worker mains {mains} still run")

    return inject


def _succeeded(chaos: Chaos, stream: Stream) -> int:
    with stream.lock:
        ids = list(stream.accepted.values())
    return sum(1 for j in ids if (job := chaos.store.get(j)) is not None and job.status == JobStatus.SUCCEEDED)


# Each fault checks that it took effect: a fault that silently does nothing would leave its scenario green.


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"the fault did not take effect: {what} (after {timeout}s)"
        time.sleep(0.05)


def accepts_connections(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


def restart_broker(chaos: Chaos, _stream: Stream) -> None:
    before, address = chaos.pid_of(PROGRAM_BROKER), chaos.broker_address()
    assert accepts_connections(address), f"the broker does not listen on {address} before the fault"
    chaos.supervisor.stop(PROGRAM_BROKER)
    wait_for(lambda: not accepts_connections(address), 5, f"the broker still accepts connections on {address}")
    time.sleep(1)
    chaos.supervisor.start(PROGRAM_BROKER)
    wait_for(lambda: chaos.running_pid(PROGRAM_BROKER) not in (None, before), 30, "the broker's pid is unchanged")


def kill_web_head(chaos: Chaos, _stream: Stream) -> None:
    before = chaos.pid_of("web-0")
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: chaos.running_pid("web-0") not in (None, before), 30, "web-0 runs with its old pid")


def reload_nginx(chaos: Chaos, _stream: Stream) -> None:
    master = chaos.pid_of(PROGRAM_NGINX)
    reload_nginx_once(chaos, master)
    time.sleep(1)
    reload_nginx_once(chaos, master)
    assert chaos.pid_of(PROGRAM_NGINX) == master, "nginx was restarted, not reloaded"


def reload_nginx_once(chaos: Chaos, master: int) -> None:
    """SIGHUP to nginx; a reload starts a new generation of worker processes under the same master."""
    workers = set(children(master))
    assert workers, f"nginx (pid {master}) has no worker processes"
    chaos.supervisor.signal(PROGRAM_NGINX, "HUP")
    wait_for(lambda: bool(set(children(master)) - workers), 10, "nginx started no new worker processes")


def submit_poison(chaos: Chaos, stream: Stream) -> None:
    with httpx.Client(base_url=chaos.url, timeout=30, headers=auth_headers(chaos.instance.state_dir)) as client:
        stream.submit(client, f"{stream.prefix}-poison", "tasks.poison", ["poison"])


# -- scenarios -----------------------------------------------------------------------------------------------


def test_sigkill_of_worker_children_mid_task(chaos: Chaos) -> None:
    assert_clean(run_scenario(chaos, "kill worker children", kill_worker_children), hits_jobs=True)


def test_sigkill_of_a_worker_main_process_mid_task(chaos: Chaos) -> None:
    assert_clean(run_scenario(chaos, "kill worker main", kill_worker_main), hits_jobs=True)


@pytest.mark.parametrize(
    ("pool", "task"), [(POOL, "tasks.work"), (DEFERRED_POOL, "tasks.work_deferred")], ids=["prefetch-1", "prefetch-8"]
)
def test_sigkill_of_a_node_and_its_store_writer_mid_batch_under_load(chaos: Chaos, pool: str, task: str) -> None:
    # short jobs from more submitters, with no pause: batches of several jobs' writes are always in flight; on
    # the prefetch-8 pool, outcomes handed over but not yet committed and messages not yet acked are too. 50 ms
    # each, not 0: the task processes are then busy most of the time, so the kill surely finds jobs running (with
    # instant jobs it sometimes found none, and the scenario proved nothing about them)
    row = run_scenario(
        chaos,
        f"kill node mid-batch ({pool})",
        kill_node_mid_batch(pool),
        submitters=4,
        pause_s=0.0,
        task_s=0.05,
        task=task,
    )
    assert_clean(row, hits_jobs=True)


def test_rabbitmq_restart(chaos: Chaos) -> None:
    assert_clean(run_scenario(chaos, "restart rabbitmq", restart_broker))


def test_sigkill_of_one_web_head(chaos: Chaos) -> None:
    assert_clean(run_scenario(chaos, "kill one web head", kill_web_head))


def test_nginx_reload(chaos: Chaos) -> None:
    assert_clean(run_scenario(chaos, "reload nginx", reload_nginx), allow_5xx=False)


def test_a_poison_task(chaos: Chaos) -> None:
    stream_tags: list[Stream] = []

    def inject(chaos: Chaos, stream: Stream) -> None:
        stream_tags.append(stream)
        submit_poison(chaos, stream)

    row = run_scenario(chaos, "poison task", inject)
    poison_id = stream_tags[0].accepted[f"{stream_tags[0].prefix}-poison"]
    deadline = time.monotonic() + RECOVERY_S
    while (job := chaos.store.get(poison_id)) is not None and job.status in ACTIVE:
        assert time.monotonic() < deadline, f"the poison job is still {job.status}"
        time.sleep(0.5)
    assert job is not None and job.status == JobStatus.DEAD, job
    # whichever comes first: the queue's delivery limit or the job's attempt budget
    assert "delivery limit" in (job.error or "") or "attempt budget spent" in (job.error or "")
    assert_clean(row)


def kill_supervisord_then_up(chaos: Chaos, _stream: Stream) -> None:
    """SIGKILL the instance's supervisord mid-stream, then recover the state dir with one `kvern up -d`."""
    state = chaos.instance.state_dir
    before = set(instance_pids(state))
    old_supervisor = chaos.supervisor.daemon_pid()
    assert old_supervisor is not None and before
    os.kill(old_supervisor, signal.SIGKILL)
    done = subprocess.run(
        [sys.executable, "-m", "kvern.cli", "-f", str(chaos.instance.spec.path), "--state", str(state), "up", "-d"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert chaos.supervisor.daemon_pid() not in (None, old_supervisor)
    survivors = [pid for pid in before if alive(pid)]
    assert not survivors, f"processes of the dead supervisor outlived the recovery: {survivors}"


def test_sigkill_of_supervisord_then_up_recovers(chaos: Chaos) -> None:
    assert_clean(run_scenario(chaos, "kill supervisord, up", kill_supervisord_then_up))
