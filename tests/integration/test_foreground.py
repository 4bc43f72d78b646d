"""`kvern up` in the foreground: Ctrl-C stops everything cleanly."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kvern.runtime.instance import owned_pids
from kvern.runtime_config import RuntimeConfig
from tests.integration.conftest import reports_spec, write_project

pytestmark = pytest.mark.integration


def test_ctrl_c_on_a_foreground_up_stops_every_process(tmp_path: Path) -> None:
    # given a platform started in the foreground
    spec = write_project(tmp_path / "fg", reports_spec(heads=1, pool_min=1, pool_max=1))
    process = subprocess.Popen(
        [sys.executable, "-m", "kvern.cli", "-f", str(spec), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state = spec.parent / ".kvern"
    try:
        assert process.stdout is not None
        progress = []
        for line in iter(process.stdout.readline, ""):
            if line.startswith("kvern is up: http://127.0.0.1:"):
                break
            progress.append(line)
        # ...each part was reported, with its time, as it became ready (the loop stopped at "kvern is up")
        parts = {re.split(r" (?:ready|up,|healthy) ", line.strip())[0] for line in progress}
        assert {"job store", "broker", "web heads", "pool reports", "front door"} <= parts, progress
        assert all(line.rstrip().endswith("s)") for line in progress), progress
        url = f"http://127.0.0.1:{RuntimeConfig.load(state).front_door_port}"
        assert httpx.get(f"{url}/api/health", timeout=5).status_code == 200

        # when the user presses Ctrl-C
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)

        # then it says so, exits cleanly, and leaves no process behind
        assert process.returncode == 0, output
        assert "kvern is down" in output
        assert owned_pids(state) == []
    finally:
        if process.poll() is None:
            process.kill()
        subprocess.run(
            [sys.executable, "-m", "kvern.cli", "-f", str(spec), "down"], capture_output=True, check=False, timeout=180
        )
        for pid in owned_pids(state):  # a backstop: only processes of this test's own state dir
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
