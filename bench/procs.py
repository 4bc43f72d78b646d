"""Everything the harness starts, and how it is stopped: kvern instances and our own processes, by pid.

Nothing is ever killed by name: a kvern instance goes down with `Instance.down()` (and any leftover process
that names its state dir is then killed by pid), our own processes are started in a session of their own and
stopped by that pid (process group), in `finally` blocks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPORTS_EXAMPLE, REPORTS_STATIC, log
from kvern.runtime.instance import Instance, front_door_url, owned_pids
from kvern.runtime_config import RuntimeConfig, local_key
from kvern.spec import Tiers, load_spec

BENCH_DIR = Path(__file__).resolve().parent
WORKLOADS = BENCH_DIR / "workloads.py"
STOP_TIMEOUT_S = 15.0


@contextlib.contextmanager
def temp_dir(name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"kvern-bench-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- our own processes --------------------------------------------------------------------------------------


@dataclass
class Managed:
    name: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> None:
        """Signal the process, wait, then kill its process group (its own session: pgid == pid)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) ignored {signal.Signals(sig).name}; killing its process group")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # children left behind (e.g. prefork pool processes)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def spawn(
    name: str, command: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Managed:
    out = log_file.open("ab")
    try:
        process = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        out.close()
    return Managed(name, process)


class ProcessGroup:
    """Processes stopped together, last started first."""

    def __init__(self) -> None:
        self.items: list[tuple[Managed, int, float]] = []

    def add(self, managed: Managed, stop_signal: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> Managed:
        self.items.append((managed, stop_signal, timeout))
        return managed

    def stop_all(self) -> None:
        for managed, sig, timeout in reversed(self.items):
            managed.stop(sig, timeout)
        self.items.clear()


@contextlib.contextmanager
def process_group() -> Iterator[ProcessGroup]:
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.stop_all()


# -- kvern instances ----------------------------------------------------------------------------------------


@dataclass
class RunningInstance:
    instance: Instance
    config: RuntimeConfig

    @property
    def url(self) -> str:
        return front_door_url(self.config)

    @property
    def state_dir(self) -> Path:
        return self.instance.state_dir

    @property
    def auth_headers(self) -> dict[str, str]:
        """The instance's own API key, as scripts on this machine use it (none when auth is off)."""
        token = local_key(self.state_dir)
        return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def kvern_instance(spec_path: Path, state_dir: Path, only: str = "all") -> Iterator[RunningInstance]:
    instance = Instance(load_spec(spec_path), state_dir.resolve())
    started = time.monotonic()
    try:
        config = instance.up(Tiers.parse(only))
        log(f"kvern up in {time.monotonic() - started:.1f}s: {front_door_url(config)} ({spec_path})")
        yield RunningInstance(instance, config)
    finally:
        instance.down()
        leftovers = owned_pids(instance.state_dir)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            log(f"WARNING: killed {len(leftovers)} processes kvern down left behind: {leftovers}")


def write_project(folder: Path, spec_text: str, *, reports: bool) -> Path:
    """A user project in `folder`: the reports example's tasks (reports=True) or the bench workloads."""
    folder.mkdir(parents=True, exist_ok=True)
    if reports:
        for name in ("tasks.py", "report_pdf.py"):
            shutil.copy(REPORTS_EXAMPLE / name, folder / name)
        shutil.copytree(REPORTS_STATIC, folder / "static", dirs_exist_ok=True)
    else:
        shutil.copy(WORKLOADS, folder / "tasks.py")
    spec = folder / "kvern.toml"
    spec.write_text(spec_text)
    return spec
