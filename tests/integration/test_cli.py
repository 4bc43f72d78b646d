"""The `kvern` command against a real instance: the short id `submit --wait` prints works where ids are taken,
an unknown job is a failure (exit 1, not "no running instance"), and `status --json` always parses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from kvern.constants import RET_FAILURE, RET_NOT_RUNNING, RET_OK
from tests.integration.conftest import SYSTEM_BROKER, Running, machine_queue, reports_spec, write_project

pytestmark = pytest.mark.integration


def kvern(spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kvern.cli", "-f", str(spec), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_short_ids_unknown_jobs_and_status_json(start_instance: Callable[..., Running], tmp_path: Path) -> None:
    # given a running instance and a job submitted with --wait, which shows its short id
    # on the machine's RabbitMQ, a queue of the test's own (the CLI is what is tested): no private node to boot
    text = reports_spec(heads=1, pool_min=1, pool_max=1, queue=machine_queue(), broker=SYSTEM_BROKER)
    spec = write_project(tmp_path / "cli", text)
    run = start_instance(spec)
    submitted = kvern(spec, "submit", "tasks.generate_heavy_report", "--arg", "7", "--kwarg", "seconds=0.2", "--wait")
    assert submitted.returncode == RET_OK, submitted.stderr
    job_id = re.search(r"^job (\S+) queued$", submitted.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
    short = job_id[:8]
    assert f"job {short}" in submitted.stdout + submitted.stderr

    # when the short id is given to `dlq show`, then it shows that job
    shown = kvern(spec, "dlq", "show", short)
    assert shown.returncode == RET_OK, shown.stderr
    assert json.loads(shown.stdout)["id"] == job_id

    # when an unknown job is replayed, then that is a failure saying so (not "no running instance")
    unknown = str(uuid.uuid4())
    replayed = kvern(spec, "dlq", "replay", unknown)
    assert replayed.returncode == RET_FAILURE, replayed.stderr
    assert f"no job with id '{unknown}'" in replayed.stderr

    # when a job that succeeded is replayed by its short id, then the refusal says why
    not_dead = kvern(spec, "dlq", "replay", short)
    assert not_dead.returncode == RET_FAILURE
    assert f"job {job_id} is succeeded: only dead or failed jobs can be replayed" in not_dead.stderr

    # status --json says it runs; once down, it still prints JSON, with exit 4
    running = kvern(spec, "status", "--json")
    assert running.returncode == RET_OK, running.stderr
    assert json.loads(running.stdout)["running"] is True
    run.instance.down()
    stopped = kvern(spec, "status", "--json")
    assert stopped.returncode == RET_NOT_RUNNING
    assert json.loads(stopped.stdout) == {"running": False, "state_dir": str(run.instance.state_dir)}
