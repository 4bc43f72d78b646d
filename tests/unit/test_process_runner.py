"""`ProcessRunner` contract, run over the unit tests' StubRunner and the real Supervisor.

The real one runs its own supervisord in a temporary state dir with `sleep` as every program; supervisord and
its programs are shut down at the end of the module (and each test stops what it started).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvern.processes import (
    ACTIVE_STATES,
    STOPPED_STATES,
    ProcessRunner,
    ProcessState,
    pool_program_name,
    pool_slot,
    slot_index,
    web_program_name,
    web_slot,
)
from kvern.runtime.supervisor import ProgramConfig, Supervisor, render_supervisord_conf
from tests.unit.doubles import StubRunner

POOL = "t"
SOLO = "solo"
SLOTS = (pool_slot(POOL, 0), pool_slot(POOL, 1), web_slot(0))
ALL = (*SLOTS, SOLO)


def _sleeper(name: str, group: str | None = None) -> ProgramConfig:
    return ProgramConfig(name, ["sleep", "300"], group=group, startsecs=0, stopwaitsecs=5)


def _programs() -> list[ProgramConfig]:
    return [
        _sleeper(pool_program_name(POOL, 0), f"pool-{POOL}"),
        _sleeper(pool_program_name(POOL, 1), f"pool-{POOL}"),
        _sleeper(web_program_name(0), "web"),
        _sleeper(SOLO),
    ]


@pytest.fixture(scope="module")
def supervisor() -> Iterator[Supervisor]:
    # A short path: the control socket's path must fit in a unix socket address.
    state_dir = Path(tempfile.mkdtemp(prefix="kvern-runner-"))
    runner = Supervisor(state_dir)
    try:
        runner.start_daemon(render_supervisord_conf(state_dir, "kvern-runner-contract", _programs()))
        yield runner
    finally:
        runner.shutdown(timeout=20)
        shutil.rmtree(state_dir, ignore_errors=True)


def _stub() -> StubRunner:
    stub = StubRunner()
    for name in ALL:
        stub.add_program(name)
    return stub


@pytest.fixture(params=["stub", "supervisor"])
def runner(request: pytest.FixtureRequest) -> Iterator[ProcessRunner]:
    implementation: ProcessRunner = _stub() if request.param == "stub" else request.getfixturevalue("supervisor")
    try:
        yield implementation
    finally:
        for name in ALL:
            implementation.stop(name, wait=True)


def test_processes_lists_every_program_typed_with_its_slot(runner: ProcessRunner) -> None:
    infos = {info.full_name: info for info in runner.processes()}

    assert set(infos) == set(ALL)
    assert all(info.state in STOPPED_STATES and info.pid is None for info in infos.values())
    assert infos[pool_slot(POOL, 1)].group == f"pool-{POOL}" and infos[pool_slot(POOL, 1)].slot == 1
    assert infos[web_slot(0)].group == "web" and infos[web_slot(0)].slot == 0
    assert infos[SOLO].group == SOLO and infos[SOLO].slot is None


def test_start_and_wait_runs_the_program_with_a_pid(runner: ProcessRunner) -> None:
    runner.start(pool_slot(POOL, 1), wait=True)

    started = runner.process(pool_slot(POOL, 1))
    assert started.state is ProcessState.RUNNING and started.pid is not None and started.pid > 0
    assert started.name == pool_program_name(POOL, 1) and started.slot == 1
    others = [info for info in runner.processes() if info.full_name != started.full_name]
    assert all(info.state in STOPPED_STATES for info in others)

    runner.start(pool_slot(POOL, 1), wait=True)  # starting a started program changes nothing
    assert runner.process(pool_slot(POOL, 1)).pid == started.pid


def test_start_without_waiting_takes_the_slot_at_once(runner: ProcessRunner) -> None:
    runner.start(web_slot(0), wait=False)

    assert runner.process(web_slot(0)).state in ACTIVE_STATES


def test_stop_and_wait_ends_the_program(runner: ProcessRunner) -> None:
    runner.start(SOLO, wait=True)

    runner.stop(SOLO, wait=True)

    stopped = runner.process(SOLO)
    assert stopped.state in STOPPED_STATES and stopped.pid is None
    runner.stop(SOLO, wait=True)  # stopping a stopped program changes nothing
    assert runner.process(SOLO).state in STOPPED_STATES


def test_a_harmless_signal_leaves_the_program_running(runner: ProcessRunner) -> None:
    runner.start(pool_slot(POOL, 0), wait=True)
    pid = runner.process(pool_slot(POOL, 0)).pid

    runner.signal(pool_slot(POOL, 0), "CONT")

    assert runner.process(pool_slot(POOL, 0)).state is ProcessState.RUNNING
    assert runner.process(pool_slot(POOL, 0)).pid == pid


@pytest.mark.parametrize(
    ("group", "name", "index"),
    [
        ("pool-reports", "pool-reports-3", 3),
        ("pool-a-b", "pool-a-b-12", 12),  # a pool name with a dash
        ("web", "web-7", 7),
        ("web", "webby", None),
        ("pool-reports", "pool-reports-x", None),
        ("broker", "broker", None),
        ("controller", "controller-1", None),
    ],
)
def test_slot_index_is_parsed_from_the_known_names_only(group: str, name: str, index: int | None) -> None:
    assert slot_index(group, name) == index
