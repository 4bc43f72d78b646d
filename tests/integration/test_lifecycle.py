"""An instance's life across restarts: a supervisord that dies, a front door port that stays, `up` twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kvern.constants import RET_ALREADY_RUNNING, RET_NOT_RUNNING
from kvern.runtime.instance import Instance, owned_pids
from kvern.runtime.leftovers import alive, instance_pids
from kvern.runtime.supervisor import Supervisor
from kvern.runtime_config import RuntimeConfig
from kvern.spec import load_spec
from tests.integration.conftest import (
    SYSTEM_BROKER,
    auth_headers,
    delete_dead_letter_queue,
    reports_spec,
    submit_report,
    system_queue,
    wait_for_outcome,
    write_project,
)

pytestmark = pytest.mark.integration

ORPHAN_GRACE_S = 60.0  # the broker's clean shutdown is the slowest part


def kvern(spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvern.cli", "-f", str(spec), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A project with its private RabbitMQ node: for the tests about every process of an instance, broker too."""
    spec = write_project(tmp_path / "app", reports_spec(heads=1, pool_min=1, pool_max=1))
    yield spec
    down_and_check(spec)


@pytest.fixture
def machine_broker_project(tmp_path: Path) -> Iterator[Path]:
    """A project on the machine's RabbitMQ, on a queue of its own: for the tests that are not about the broker, so
    that no private node boots and stops at each `up` and `down` (5-10 s each)."""
    with system_queue() as queue:
        text = reports_spec(heads=1, pool_min=1, pool_max=1, queue=queue, broker=SYSTEM_BROKER)
        spec = write_project(tmp_path / "app", text)
        try:
            yield spec
        finally:
            down_and_check(spec)
            delete_dead_letter_queue(Instance(load_spec(spec), (spec.parent / ".kvern").resolve()))


def down_and_check(spec: Path) -> None:
    state = spec.parent / ".kvern"
    kvern(spec, "down")
    leftover = owned_pids(state.resolve())
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover, f"processes left behind: {leftover}"


def up(spec: Path) -> RuntimeConfig:
    done = kvern(spec, "up", "-d")
    assert done.returncode == 0, done.stdout + done.stderr
    return RuntimeConfig.load(spec.parent / ".kvern")


def kill_supervisord(state: Path) -> int:
    pid = Supervisor(state).daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


def test_every_process_stops_with_its_supervisor_and_up_recovers(project: Path) -> None:
    state = (project.parent / ".kvern").resolve()
    config = up(project)
    programs = instance_pids(state)
    assert len(programs) >= 5  # broker, web head, worker, nginx, controller (and their children)
    with httpx.Client(
        base_url=f"http://127.0.0.1:{config.front_door_port}", timeout=30, headers=auth_headers(state)
    ) as client:
        accepted = [submit_report(client, user, seconds=1.5).json()["id"] for user in range(4)]
    kill_supervisord(state)
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while (living := [pid for pid in programs if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not living, f"orphans of a dead supervisord still run: {living}"
    status = kvern(project, "status")
    assert status.returncode == RET_NOT_RUNNING
    again = up(project)  # one command recovers the state dir
    assert again.front_door_port == config.front_door_port
    with httpx.Client(
        base_url=f"http://127.0.0.1:{again.front_door_port}", timeout=30, headers=auth_headers(state)
    ) as client:
        for job_id in accepted:
            assert wait_for_outcome(client, job_id)["status"] == "succeeded"


def test_down_stops_what_a_dead_supervisor_left_behind(project: Path) -> None:
    state = (project.parent / ".kvern").resolve()
    config = up(project)
    programs = instance_pids(state)
    with httpx.Client(
        base_url=f"http://127.0.0.1:{config.front_door_port}", timeout=30, headers=auth_headers(state)
    ) as client:
        job_id = submit_report(client, 1, seconds=8).json()["id"]
        while client.get(f"/api/v1/jobs/{job_id}").json()["status"] != "running":
            time.sleep(0.1)
    kill_supervisord(state)
    # the busy worker finishes its job before it stops (warm shutdown): it is still there when `down` looks
    done = kvern(project, "down")
    assert done.returncode == 0, done.stderr
    assert "kvern is down" in done.stdout and "without their supervisor" in done.stdout, done.stdout
    assert [pid for pid in programs if alive(pid)] == []
    assert instance_pids(state) == [] and owned_pids(state) == []


def test_front_door_port_is_kept_across_restarts_unless_taken(machine_broker_project: Path) -> None:
    first = up(machine_broker_project)
    assert kvern(machine_broker_project, "down").returncode == 0
    second = up(machine_broker_project)
    assert second.front_door_port == first.front_door_port
    assert kvern(machine_broker_project, "down").returncode == 0
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first.front_door_port))
        squatter.listen()
        done = kvern(machine_broker_project, "up", "-d")
        assert done.returncode == 0, done.stderr
        third = RuntimeConfig.load(machine_broker_project.parent / ".kvern")
    assert third.front_door_port != first.front_door_port
    assert f"front door port {first.front_door_port} is taken" in done.stdout
    assert f"http://127.0.0.1:{third.front_door_port}" in done.stdout


def test_up_when_already_running_shows_where_and_what_to_do(machine_broker_project: Path) -> None:
    config = up(machine_broker_project)
    done = kvern(machine_broker_project, "up", "-d")
    assert done.returncode == RET_ALREADY_RUNNING
    assert f"kvern is already running: http://127.0.0.1:{config.front_door_port}" in done.stderr
    for command in ("status", "logs", "down"):
        assert f"kvern -f {machine_broker_project} {command}" in done.stderr, done.stderr
