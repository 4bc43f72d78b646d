"""`[app] user` for real: kvern as root, every program of the instance as a throwaway system account.

The account is made for the test (`useradd --system`) and removed after it. The project lives in a folder of
its own under /tmp that the account may read (pytest's own tmp folders are root's alone), and kvern runs on
the system's Python 3 with this checkout's packages: the account could not run an interpreter under /root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kvern.constants import RUNTIME_FILE, SPEC_SNAPSHOT, SQLITE_FILE, SUPERVISOR_PID
from kvern.runtime.instance import owned_pids
from kvern.runtime.leftovers import command_name, instance_pids
from kvern.runtime.run_as import Account
from kvern.runtime_config import RuntimeConfig
from tests.integration.conftest import auth_headers, reports_spec, submit_report, wait_for_outcome, write_project

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="only root can run programs as another account"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="no useradd to make a throwaway account"),
]

SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
NOBODY = pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def account() -> Iterator[Account]:
    name = f"kvern-test-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True, timeout=30
    )
    try:
        yield Account.named(name)
    finally:
        subprocess.run(["userdel", name], check=False, timeout=30)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder under /tmp that any account may enter (mkdtemp makes it 0700: opened to 0755)."""
    folder = Path(tempfile.mkdtemp(prefix="kvern-run-as-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def python_for(account: Account, folder: Path) -> Path:
    """A virtualenv of the system's Python that sees this checkout's packages, which the account can run."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} (the system's Python of this version) is not installed")
    venv = folder / "venv"
    # umask 022 whatever this process's is now: the account must be able to enter the venv and run its python
    command = [str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(venv)]
    subprocess.run(command, check=True, timeout=60, umask=0o022)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "kvern-checkout.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    if account.run([str(python), "-c", "import kvern.worker, uvicorn"], timeout=60).returncode != 0:
        pytest.skip(f"an unprivileged account cannot read this checkout's packages ({ours})")
    return python


@dataclass
class Started:
    python: Path
    spec: Path

    @property
    def state(self) -> Path:
        return self.spec.parent / ".kvern"

    def kvern(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        command = [str(self.python), "-m", "kvern.cli", "-f", str(self.spec), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def project(account: Account, shared_dir: Path) -> Iterator[Started]:
    spec_text = reports_spec(heads=1, pool_min=1, pool_max=2).replace("[app]\n", f'[app]\nuser = "{account.name}"\n')
    started = Started(python_for(account, shared_dir), write_project(shared_dir / "project", spec_text))
    # An older run as root left root's files: `up` hands them over.
    started.state.mkdir(mode=0o700)
    (started.state / SQLITE_FILE).write_bytes(b"")
    (started.state / "pins.json").write_text("{}")
    try:
        yield started
    finally:
        started.kvern("down")
        for pid in owned_pids(started.state):  # a backstop: only processes of this test's own state dir
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    real, effective, saved, _fs = (int(field) for field in line.split()[1:])
    assert real == effective == saved, f"pid {pid}: uids {line}"
    return real


def processes_of(state: Path) -> dict[int, str]:
    """pid -> what it is, for every process of the instance."""
    found = {}
    for pid in instance_pids(state):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            found[pid] = command if command_name(pid) != "beam.smp" else "beam.smp"
    return found


def kind(command: str) -> str:
    for marker, name in (
        ("nginx: master", "nginx master"),
        ("nginx: worker", "nginx worker"),
        ("kvern.worker", "worker"),
        ("kvern.runtime.web_head", "web head"),
        ("kvern.controller", "controller"),
        ("beam.smp", "broker"),
    ):
        if marker in command:
            return name
    return "other"


def test_every_program_runs_as_the_account_and_a_job_succeeds(project: Started, account: Account) -> None:
    # when kvern, as root, brings up an instance whose spec names the account
    up = project.kvern("up", "-d")
    assert up.returncode == 0, up.stdout + up.stderr

    # then every program's process runs as the account, nginx's master as root and its workers as nobody
    uids: dict[str, set[int]] = {}
    for pid, command in processes_of(project.state).items():
        uids.setdefault(kind(command), set()).add(uid_of(pid))
    assert uids.pop("nginx master") == {0}
    assert uids.pop("nginx worker") == {NOBODY}
    for name in ("worker", "web head", "controller", "broker"):
        assert uids.pop(name) == {account.uid}, name
    assert set().union(*uids.values()) <= {account.uid}, uids  # the broker's helpers, the task processes
    supervisord = int((project.state / SUPERVISOR_PID).read_text())
    assert uid_of(supervisord) == 0

    # ...the account owns its files, root keeps what root runs
    owners = {name: (project.state / name).stat().st_uid for name in (RUNTIME_FILE, SPEC_SNAPSHOT, SQLITE_FILE)}
    assert owners == dict.fromkeys(owners, account.uid)
    assert (project.state / RUNTIME_FILE).stat().st_mode & 0o777 == 0o600
    assert (project.state / "rabbitmq" / "mnesia").stat().st_uid == account.uid
    assert (project.state / "supervisord.conf").stat().st_uid == 0
    assert (project.state / "nginx" / "nginx.conf").stat().st_uid == 0

    # when a job is submitted through the front door, and the pool pinned (root writes the pin, the
    # controller, as the account, reads it)
    config = RuntimeConfig.load(project.state)
    headers = auth_headers(project.state)
    with httpx.Client(base_url=f"http://127.0.0.1:{config.front_door_port}", timeout=30, headers=headers) as client:
        job = submit_report(client, 42, seconds=0.2).json()
        done = wait_for_outcome(client, job["id"])
    pinned = project.kvern("scale", "reports", "2")

    # then it succeeds, and the pool grows to the pin
    assert done["status"] == "succeeded", done
    assert pinned.returncode == 0, pinned.stderr
    assert (project.state / "pins.json").stat().st_uid == account.uid
    deadline = time.monotonic() + 60
    while not any("kvern.worker reports 1" in command for command in processes_of(project.state).values()):
        assert time.monotonic() < deadline, "the controller did not apply the pin"
        time.sleep(0.2)

    # when it is taken down, nothing of it, nor of the account, is left
    down = project.kvern("down")
    assert down.returncode == 0, down.stderr
    assert owned_pids(project.state) == []
    left = _account_processes(account)
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:  # a process just told to stop may still be exiting (a zombie)
        time.sleep(0.2)
        left = _account_processes(account)
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left]


def _uid_or_none(pid: int) -> int | None:
    try:
        return uid_of(pid)
    except (OSError, StopIteration):
        return None


def _is_epmd(pid: int) -> bool:
    """Erlang's port mapper: one daemon per machine that every Erlang node shares (started by the first node
    when none runs, and left running by design), not a process of the instance."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "epmd"
    except OSError:
        return False


def _account_processes(account: Account) -> list[int]:
    return [
        pid
        for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
        if _uid_or_none(pid) == account.uid and not _is_epmd(pid)
    ]
