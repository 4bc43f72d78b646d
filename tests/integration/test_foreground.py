"""`kvern up` in the foreground: Ctrl-C stops everything cleanly; a `kvern down` from elsewhere ends it cleanly;
a supervisord that dies ends it with a failure (so a service manager starts it again), leaving nothing behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kvern.constants import SUPERVISOR_PID
from kvern.runtime.instance import owned_pids
from kvern.runtime_config import RuntimeConfig
from tests.integration.conftest import reports_spec, write_project

pytestmark = pytest.mark.integration


@dataclass
class Foreground:
    process: subprocess.Popen[str]
    spec: Path
    state: Path
    progress: list[str]  # what it printed until "kvern is up"

    def kvern(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "kvern.cli", "-f", str(self.spec), *args]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=180)


@pytest.fixture
def foreground(tmp_path: Path) -> Iterator[Foreground]:
    """A platform started with a foreground `kvern up`, once it said it is up."""
    spec = write_project(tmp_path / "fg", reports_spec(heads=1, pool_min=1, pool_max=1))
    process = subprocess.Popen(
        [sys.executable, "-m", "kvern.cli", "-f", str(spec), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = Foreground(process, spec, spec.parent / ".kvern", [])
    try:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, ""):
            if line.startswith("kvern is up: http://127.0.0.1:"):
                break
            running.progress.append(line)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        running.kvern("down")
        for pid in owned_pids(running.state):  # a backstop: only processes of this test's own state dir
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_ctrl_c_on_a_foreground_up_stops_every_process(foreground: Foreground) -> None:
    # given a platform started in the foreground, each part reported with its time as it became ready
    parts = {re.split(r" (?:ready|up,|healthy) ", line.strip())[0] for line in foreground.progress}
    assert {"job store", "broker", "web heads", "pool reports", "front door"} <= parts, foreground.progress
    assert all(line.rstrip().endswith("s)") for line in foreground.progress), foreground.progress
    url = f"http://127.0.0.1:{RuntimeConfig.load(foreground.state).front_door_port}"
    assert httpx.get(f"{url}/api/health", timeout=5).status_code == 200

    # when the user presses Ctrl-C
    foreground.process.send_signal(signal.SIGINT)
    output, _ = foreground.process.communicate(timeout=120)

    # then it says so, exits cleanly, and leaves no process behind
    assert foreground.process.returncode == 0, output
    assert "kvern is down" in output
    assert owned_pids(foreground.state) == []


def test_kvern_down_from_elsewhere_ends_the_foreground_up_cleanly(foreground: Foreground) -> None:
    assert foreground.kvern("down").returncode == 0
    output, _ = foreground.process.communicate(timeout=60)
    assert foreground.process.returncode == 0, output
    assert "stopped by kvern down" in output


def test_a_foreground_up_whose_supervisord_dies_fails_and_leaves_nothing(foreground: Foreground) -> None:
    supervisord = int((foreground.state / SUPERVISOR_PID).read_text())
    os.kill(supervisord, signal.SIGKILL)  # its programs live on, orphaned: the up must notice and clean up
    output, _ = foreground.process.communicate(timeout=180)
    assert foreground.process.returncode == 1, output
    assert "supervisord is gone" in output
    assert owned_pids(foreground.state) == []
