"""Elastic pools on a real instance: a spike scales out, idleness scales to zero, a job at zero runs, scaling in
under running jobs re-runs none of them, status shows what the autoscaler wants and why, and web heads scale
under load without a 5xx.

One instance serves the whole module: a `reports` pool (min 1, max 3) and a scale-to-zero `naps` pool (min 0,
max 2), each on its own queue, with the reports example's tasks plus a short `tasks.nap`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime

import httpx
import pytest

from kvern.jobs.scaling_events import ScalingEventLog
from kvern.jobs.store import JobStore
from kvern.processes import pool_group
from kvern.runtime.instance import Instance, owned_pids
from kvern.runtime.web_scaling import running_heads
from kvern.spec import load_spec
from tests.integration.conftest import REPORTS, Running, submit_report, wait_for_outcome, write_project

pytestmark = pytest.mark.integration

REPORTS_IDLE_AFTER = 4.0
NAPS_IDLE_AFTER = 3.0
SPEC = f"""
[app]
tasks = "tasks"
static = "static"

[web]
heads = 2

[[pools]]
name = "reports"
queues = ["reports"]
concurrency = 2
min = 1
max = 3
target_backlog = 2
max_wait = 2
idle_after = {REPORTS_IDLE_AFTER}

[[pools]]
name = "naps"
queues = ["naps"]
concurrency = 1
min = 0
max = 2
target_backlog = 1
idle_after = {NAPS_IDLE_AFTER}

[tasks."tasks.generate_heavy_report"]
queue = "reports"
retries = 2
time_limit = 60

[tasks."tasks.nap"]
queue = "naps"
retries = 0
time_limit = 30
"""
NAP_TASK = """

import time as _time


@app.task  # type: ignore[untyped-decorator, unused-ignore]
def nap(seconds: float = 0.2) -> dict[str, float]:
    kvern.progress(50)
    _time.sleep(min(float(seconds), 20.0))
    return {"slept": seconds}
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("elastic")
    tasks = folder / "tasks_source.py"
    tasks.write_text((REPORTS / "tasks.py").read_text() + NAP_TASK)
    spec = write_project(folder / "project", SPEC, tasks_source=tasks)
    instance = Instance(load_spec(spec), (spec.parent / ".kvern").resolve())
    try:
        config = instance.up()
        yield Running(instance, config)
    finally:
        instance.down()
        leftover = owned_pids(instance.state_dir)
        assert not leftover, f"kvern down left processes behind: {leftover}"


def kvern(run: Running, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kvern.cli", "-f", str(run.instance.spec.path), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def pool_size(run: Running, pool: str) -> int:
    return sum(1 for p in run.instance.supervisor.processes() if p.group == pool_group(pool) and p.state == "RUNNING")


def wait_until(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> float:
    """Poll until `condition` holds; returns the time.time() it was first seen to."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(step)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def submit_nap(client: httpx.Client, seconds: float = 0.2) -> str:
    response = client.post("/api/v1/jobs", json={"task": "tasks.nap", "kwargs": {"seconds": seconds}})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def ts(iso: str) -> float:
    """A job view's ISO time as a Unix timestamp."""
    return datetime.fromisoformat(iso).timestamp()


def store_of(run: Running) -> JobStore:
    return JobStore(run.config.store_url)


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[autoscale] {line}")


# -- reports: out on a spike, in under running jobs without re-running any ------------------------------------


def test_a_spike_scales_the_pool_out_to_its_max(platform: Running, capsys: pytest.CaptureFixture[str]) -> None:
    # given the reports pool at its min, nothing to do
    wait_until(lambda: pool_size(platform, "reports") == 1, 30, "reports pool at its min of 1")
    with platform.client() as client:
        # when a burst of 12 reports of 2 s arrives (work for 6 processes; max is 3)
        spike = time.time()
        ids = [submit_report(client, 100 + i, seconds=2.0).json()["id"] for i in range(12)]

        # then the pool grows to its max within seconds, and no further
        at_max = wait_until(lambda: pool_size(platform, "reports") == 3, 20, "reports pool at 3 processes")
        jobs = [wait_for_outcome(client, job_id) for job_id in ids]
    assert pool_size(platform, "reports") <= 3
    assert all(job["status"] == "succeeded" and job["attempts"] == 1 for job in jobs)

    # and new workers took jobs from the spike
    store = store_of(platform)
    try:
        first_new = min(
            ts(job["started_at"])
            for job in jobs
            if not (store.history(job["id"])[0].worker or "").startswith("reports-0@")
        )
        events = ScalingEventLog(store.engine).latest("reports", limit=20)
    finally:
        store.close()
    out = [e for e in events if e.at >= spike and e.to_processes > e.from_processes]
    assert out and "scale out" in out[-1].reason and "ready=" in out[-1].reason
    report(
        capsys,
        f"spike -> first scale-out decision {out[-1].at - spike:.2f}s, -> 3 processes running {at_max - spike:.2f}s, "
        f"-> first job on a new worker {first_new - spike:.2f}s",
    )
    assert first_new - spike < 20


def test_scaling_in_while_jobs_run_reruns_none_of_them(platform: Running) -> None:
    # given the reports pool pinned to 3 processes, all 3 consuming
    assert kvern(platform, "scale", "reports", "3").returncode == 0
    try:
        wait_until(lambda: pool_size(platform, "reports") == 3, 30, "reports pinned to 3")
        wait_until(lambda: _consumers(platform, "reports") == 3, 30, "3 consumers on the reports queue")
        with platform.client() as client:
            # and 6 reports of 5 s running at once, 2 on each process
            ids = [submit_report(client, 200 + i, seconds=5.0).json()["id"] for i in range(6)]
            wait_until(
                lambda: all(client.get(f"/api/v1/jobs/{i}").json()["status"] == "running" for i in ids),
                20,
                "all 6 jobs running",
                step=0.2,
            )

            # when the pool is scaled in to 1 under them
            assert kvern(platform, "scale", "reports", "1").returncode == 0

            # then every job finishes, on its first and only attempt
            jobs = [wait_for_outcome(client, job_id, timeout=60) for job_id in ids]
        assert [job["status"] for job in jobs] == ["succeeded"] * 6
        assert [job["attempts"] for job in jobs] == [1] * 6
        store = store_of(platform)
        try:
            assert all(len(store.history(job_id)) == 1 for job_id in ids)
            last = ScalingEventLog(store.engine).latest("reports", limit=1)[0]
        finally:
            store.close()
        # and the pool did go down to 1, by a decision that says why
        wait_until(lambda: pool_size(platform, "reports") == 1, 30, "reports scaled in to 1")
        assert (last.from_processes, last.to_processes) == (3, 1)
        assert "pinned to 1" in last.reason
    finally:
        kvern(platform, "scale", "reports", "auto")


def _consumers(run: Running, queue: str) -> int:
    report = json.loads(kvern(run, "status", "--json").stdout)
    depth = report["queues"].get(queue) or {"consumers": 0}
    return int(depth["consumers"])


# -- naps: to zero and back ------------------------------------------------------------------------------------


def test_a_job_submitted_to_a_pool_at_zero_runs(platform: Running, capsys: pytest.CaptureFixture[str]) -> None:
    # given the naps pool at zero processes (its min)
    wait_until(lambda: pool_size(platform, "naps") == 0, 30, "naps pool at zero")
    with platform.client() as client:
        # when a job arrives
        submitted = time.time()
        job_id = submit_nap(client)
        job = wait_for_outcome(client, job_id, timeout=60)

    # then a worker is started for it and runs it, within seconds
    assert job["status"] == "succeeded" and job["attempts"] == 1
    latency = ts(job["started_at"]) - submitted
    report(capsys, f"job submitted at zero -> started {latency:.2f}s")
    assert latency < 20


def test_an_idle_pool_scales_to_zero_after_idle_after(platform: Running, capsys: pytest.CaptureFixture[str]) -> None:
    with platform.client() as client:
        # given the naps pool has just finished a job
        job = wait_for_outcome(client, submit_nap(client), timeout=60)
        assert job["status"] == "succeeded"
        assert pool_size(platform, "naps") >= 1

        # when it has nothing to do
        zero = wait_until(lambda: pool_size(platform, "naps") == 0, NAPS_IDLE_AFTER + 20, "naps pool back at zero")

        # then it went to zero, but only after its cool-down
        finished = ts(job["finished_at"])
        idle_for = zero - finished
        store = store_of(platform)
        try:
            events = ScalingEventLog(store.engine).latest("naps", limit=20)
        finally:
            store.close()
        # the decision that took it to zero (a later one may already have started a process again for a message
        # handed back by a worker stopping warm)
        to_zero = [event for event in events if event.to_processes == 0 and event.at >= finished]
        assert to_zero, events
        last = min(to_zero, key=lambda event: event.at)
        assert "cool-down" in last.reason
        assert last.at - finished >= NAPS_IDLE_AFTER - 0.6  # one tick of slack
        report(capsys, f"idle -> zero processes {idle_for:.2f}s after the last job (idle_after {NAPS_IDLE_AFTER:g}s)")

        # and a job arriving at zero still runs
        submitted = time.time()
        again = wait_for_outcome(client, submit_nap(client), timeout=60)
    assert again["status"] == "succeeded" and again["attempts"] == 1
    report(capsys, f"job submitted at zero (again) -> started {ts(again['started_at']) - submitted:.2f}s")


# -- status ----------------------------------------------------------------------------------------------------


def test_status_shows_each_pool_current_desired_bounds_and_last_decision(platform: Running) -> None:
    # given a decision just taken on reports: pinned to 2
    assert kvern(platform, "scale", "reports", "2").returncode == 0
    try:
        wait_until(lambda: pool_size(platform, "reports") == 2, 30, "reports pinned to 2")

        # when status is asked for
        result = kvern(platform, "status", "--json")

        # then each pool shows current, desired, min and max, and the last decision with its reason
        assert result.returncode == 0, result.stderr
        pools = {pool["name"]: pool for pool in json.loads(result.stdout)["pools"]}
        reports = pools["reports"]
        assert (reports["processes"], reports["desired"], reports["pinned"]) == (2, 2, 2)
        assert (reports["min"], reports["max"]) == (1, 3)
        assert reports["last_decision"]["to"] == 2
        assert "pinned to 2" in reports["last_decision"]["reason"]
        naps = pools["naps"]
        assert (naps["min"], naps["max"], naps["pinned"]) == (0, 2, None)
        assert naps["desired"] == 0 and naps["processes"] in (0, 1)
        # and the human form says the same
        text = kvern(platform, "status").stdout
        assert "reports      2 running, desired 2 (min 1, max 3, pinned to 2)" in text
    finally:
        kvern(platform, "scale", "reports", "auto")


# -- web heads ---------------------------------------------------------------------------------------------------


class Load:
    """Clients sending GETs and POSTs through nginx until stopped; every answer and error is counted."""

    def __init__(self, url: str, job_id: str, headers: dict[str, str], clients: int = 3) -> None:
        self.url = url
        self.headers = headers
        self.job_id = job_id
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.resent = 0  # requests reset on a kept-alive connection while nginx reloaded, sent again
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(clients)]
        self.lock = threading.Lock()

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    response = self._one(client, n, i)
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # nginx's graceful reload closes idle kept-alive connections; a request sent on one at that
                    # instant is reset before it was read, and a client sends it again (as browsers do)
                    with self.lock:
                        self.resent += 1
                    try:
                        response = self._one(client, n, i)
                    except httpx.HTTPError as exc:
                        with self.lock:
                            self.errors.append(repr(exc))
                        continue
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors.append(repr(exc))
                    continue
                with self.lock:
                    self.statuses[response.status_code] += 1

    def _one(self, client: httpx.Client, n: int, i: int) -> httpx.Response:
        if i % 5 == 0:
            return submit_report(client, n * 1000 + i, seconds=0.0)
        if i % 2:
            return client.get(f"/api/v1/jobs/{self.job_id}")
        return client.get("/api/v1/jobs", params={"limit": 5})

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    @property
    def server_errors(self) -> dict[int, int]:
        return {code: count for code, count in self.statuses.items() if code >= 500}


def upstream_servers(run: Running) -> int:
    return (run.instance.state_dir / "nginx" / "upstream.conf").read_text().count("unix:")


def test_scaling_web_heads_under_load_answers_no_request_with_a_5xx(
    platform: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    with platform.client() as client:
        job_id = submit_report(client, 7, seconds=0.0).json()["id"]
    assert running_heads(platform.instance.supervisor) == [0, 1]
    try:
        # given a steady load of reads and submissions through nginx
        with Load(platform.url, job_id, platform.headers) as load:
            time.sleep(1.0)
            # when the web tier grows to 4 heads, then shrinks to 1, under it
            started = time.monotonic()
            grow = kvern(platform, "scale", "web", "4")
            grow_s = time.monotonic() - started
            assert grow.returncode == 0, grow.stderr
            assert running_heads(platform.instance.supervisor) == [0, 1, 2, 3] and upstream_servers(platform) == 4
            time.sleep(1.5)
            started = time.monotonic()
            shrink = kvern(platform, "scale", "web", "1")
            shrink_s = time.monotonic() - started
            assert shrink.returncode == 0, shrink.stderr
            assert running_heads(platform.instance.supervisor) == [0] and upstream_servers(platform) == 1
            time.sleep(1.5)
        # then no request got a 5xx or was dropped, and there was real load all along
        total = sum(load.statuses.values())
        report(
            capsys,
            f"web 2 -> 4 heads in {grow_s:.1f}s, 4 -> 1 in {shrink_s:.1f}s, under load: {total} requests, "
            f"statuses {dict(load.statuses)}",
        )
        assert load.server_errors == {}
        assert load.errors == []
        assert total >= 100
        assert set(load.statuses) <= {200, 202}
    finally:
        kvern(platform, "scale", "web", "2")
