"""Processes of a state dir whose supervisord died: found by their marker, stopped gracefully, then killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvern.constants import ENV_STATE_DIR
from kvern.runtime.leftovers import alive, instance_pids, stop_leftovers
from kvern.runtime.supervisor import ProgramConfig, guarded_command

# Writes its pid, starts a child (which inherits the environment), and ignores SIGTERM when asked to.
ORPHAN = """
import os, signal, subprocess, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def spawn(state: Path, mode: str, processes: list[subprocess.Popen[str]]) -> tuple[int, int]:
    env = {**os.environ, ENV_STATE_DIR: str(state)}
    process = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, mode], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    processes.append(process)
    assert process.stdout is not None
    child = int(process.stdout.readline())
    return process.pid, child


def test_finds_marked_processes_and_their_children_only(tmp_path: Path, spawned: list[subprocess.Popen[str]]) -> None:
    mine = spawn(tmp_path / "a", "polite", spawned)
    other = spawn(tmp_path / "b", "polite", spawned)
    found = instance_pids(tmp_path / "a")
    assert set(mine) <= set(found)
    assert not set(other) & set(found)
    assert os.getpid() not in found


def test_stops_politely_with_sigterm(tmp_path: Path, spawned: list[subprocess.Popen[str]]) -> None:
    main, child = spawn(tmp_path, "polite", spawned)
    started = time.monotonic()
    assert stop_leftovers(tmp_path, timeout=10) == 2
    assert time.monotonic() - started < 5  # it did not wait for the timeout: TERM was enough
    assert not alive(main) and not alive(child)
    assert instance_pids(tmp_path) == []


def test_kills_what_ignores_sigterm_after_the_timeout(tmp_path: Path, spawned: list[subprocess.Popen[str]]) -> None:
    main, child = spawn(tmp_path, "stubborn", spawned)
    lines: list[str] = []
    assert stop_leftovers(tmp_path, timeout=0.5, say=lines.append) == 2
    assert not alive(main) and not alive(child)
    assert any("killed" in line for line in lines), lines


def test_nothing_to_stop(tmp_path: Path) -> None:
    assert stop_leftovers(tmp_path, timeout=1) == 0


def test_every_program_runs_behind_the_parent_death_wrapper() -> None:
    program = ProgramConfig("nginx", ["/usr/sbin/nginx", "-c", "x"], stopsignal="QUIT")
    command = guarded_command(program)
    assert command[-5:] == ["QUIT", "--", "/usr/sbin/nginx", "-c", "x"]
    assert command[3].endswith("parent_death.py")


def test_wrapper_refuses_to_run_when_its_parent_is_not_supervisord() -> None:
    # Our parent (pytest) is not supervisord: the wrapper must not start the command unguarded.
    program = ProgramConfig("probe", [sys.executable, "-c", "print('started')"])
    done = subprocess.run(guarded_command(program), capture_output=True, text=True, check=False)
    assert done.returncode == 3 and "started" not in done.stdout
