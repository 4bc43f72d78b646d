"""Supervisor: every process of an instance runs under one supervisord, driven through its XML-RPC interface.

`ProgramConfig` describes one program; `render_supervisord_conf` writes them all; `Supervisor` is the narrow
client kvern uses to start, stop, signal and list them (kvern.processes.ProcessRunner).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from kvern.constants import LOG_DIR, SUPERVISOR_CONF, SUPERVISOR_PID, SUPERVISOR_SOCK
from kvern.errors import StartError
from kvern.processes import STOPPED_STATES, ProcessInfo, ProcessState
from kvern.runtime.leftovers import alive

PARENT_DEATH_WRAPPER = Path(__file__).with_name("parent_death.py")
STOP_POLL_S = 0.05


@dataclass(frozen=True)
class ProgramConfig:
    name: str
    command: Sequence[str]
    group: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    directory: Path | None = None
    priority: int = 100
    autostart: bool = False
    startsecs: int = 1
    startretries: int = 10
    stopsignal: str = "TERM"
    stopwaitsecs: int = 10
    stopasgroup: bool = True
    killasgroup: bool = True
    user: str | None = None  # the account supervisord (as root) switches to before starting it

    @property
    def full_name(self) -> str:
        return f"{self.group}:{self.name}" if self.group else self.name


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECTION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _line(value: object, what: str) -> str:
    """A value for one line of supervisord.conf: a line break (or any control character) would start a new
    line, even a new [program:...] section, so it is refused; `%` is doubled (supervisord expands %(...)s)."""
    text = str(value)
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise StartError(f"{what}: {text!r} contains {bad!r}, which cannot be written into supervisord.conf")
    return text.replace("%", "%%")


def _path(value: Path, what: str) -> str:
    # supervisord expands some path options twice (stdout_logfile): no number of %s is right for all of them.
    if "%" in str(value):
        raise StartError(f"{what}: {str(value)!r} contains '%', which cannot be written into supervisord.conf")
    return _line(value, what)


def _name(name: str) -> str:
    if not SECTION_NAME.match(name):
        raise StartError(f"program name {name!r} cannot be written into supervisord.conf")
    return name


def _quote(value: str, what: str) -> str:
    # supervisord splits environment values with a non-POSIX shlex: a double-quoted value ends at the next `"`
    # (there is no escape), and quotes at either end of a value are stripped.
    if '"' in value or value.startswith("'") or value.endswith("'"):
        raise StartError(f"{what}: {value!r} cannot be written into supervisord.conf (a quote it cannot escape)")
    return f'"{_line(value, what)}"'


def _environment(program: ProgramConfig) -> str:
    for key in program.environment:
        if not ENV_NAME.match(key):
            raise StartError(f"{program.name}: environment name {key!r} cannot be written into supervisord.conf")
    return ",".join(
        f"{key}={_quote(value, f'{program.name}: environment {key}')}" for key, value in program.environment.items()
    )


def _program_section(program: ProgramConfig, log_dir: Path) -> str:
    env = _environment(program)
    command = " ".join(_shell_word(word, f"{program.name}: command") for word in guarded_command(program))
    lines = [
        f"[program:{_name(program.name)}]",
        f"command={command}",
        f"priority={program.priority}",
        f"autostart={str(program.autostart).lower()}",
        "autorestart=true",
        f"startsecs={program.startsecs}",
        f"startretries={program.startretries}",
        f"stopsignal={program.stopsignal}",
        f"stopwaitsecs={program.stopwaitsecs}",
        f"stopasgroup={str(program.stopasgroup).lower()}",
        f"killasgroup={str(program.killasgroup).lower()}",
        f"stdout_logfile={_path(log_dir / (program.name + '.log'), 'state dir')}",
        "stdout_logfile_maxbytes=20MB",
        "stdout_logfile_backups=2",
        "redirect_stderr=true",
    ]
    if env:
        lines.append(f"environment={env}")
    if program.directory:
        lines.append(f"directory={_path(program.directory, f'{program.name}: directory')}")
    if program.user:
        lines.append(f"user={_account(program.user)}")
    return "\n".join(lines)


ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _account(name: str) -> str:
    if not ACCOUNT_NAME.match(name):
        raise StartError(f"account name {name!r} cannot be written into supervisord.conf")
    return name


def guarded_command(program: ProgramConfig) -> list[str]:
    """The program's command behind the parent-death wrapper: it gets its stop signal if supervisord dies."""
    return [sys.executable, "-I", "-S", str(PARENT_DEATH_WRAPPER), program.stopsignal, "--", *program.command]


def _shell_word(word: str, what: str) -> str:
    escaped = _line(word, what)
    if any(c in escaped for c in " \t'\"\\"):
        return "'" + escaped.replace("'", "'\"'\"'") + "'"
    return escaped


def _group_section(group: str, members: Sequence[ProgramConfig]) -> str:
    programs = ",".join(_name(p.name) for p in members)
    return f"[group:{_name(group)}]\nprograms={programs}\npriority={min(p.priority for p in members)}"


def render_supervisord_conf(
    state_dir: Path, identifier: str, programs: Sequence[ProgramConfig], socket_owner: str | None = None
) -> str:
    """`socket_owner`: the account that owns the control socket besides root (the controller, which scales
    the pools, runs as it when the spec names [app] user). Its config stays root's: the socket starts and
    stops programs, it cannot change what they are."""
    log_dir = state_dir / LOG_DIR
    state = _path(state_dir, "state dir")
    logs = _path(log_dir, "state dir")
    chown = f"\nchown={_account(socket_owner)}" if socket_owner else ""
    head = f"""[unix_http_server]
file={state}/{SUPERVISOR_SOCK}
chmod=0600{chown}

[supervisord]
umask=077
logfile={logs}/supervisord.log
pidfile={state}/{SUPERVISOR_PID}
childlogdir={logs}
directory={state}
identifier={_line(identifier, "identifier")}
minfds=4096
nodaemon=false
silent=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
"""
    groups: dict[str, list[ProgramConfig]] = {}
    for program in programs:
        if program.group:
            groups.setdefault(program.group, []).append(program)
    sections = [head, *(_program_section(p, log_dir) for p in programs)]
    # supervisord orders its shutdown by *group* priority (999 unless given): without it, web heads and workers
    # would be stopped before nginx, the front door, stops taking requests.
    sections += [_group_section(group, members) for group, members in groups.items()]
    return "\n\n".join(sections) + "\n"


class Supervisor:
    """A client for one instance's supervisord, over its private unix socket; a ProcessRunner."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.socket_path = state_dir / SUPERVISOR_SOCK
        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        self.rpc: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def is_running(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return self.rpc.supervisor.getState()["statename"] == "RUNNING"  # type: ignore[no-any-return]
        except (OSError, xmlrpc.client.Fault):
            return False

    def start_daemon(self, config_text: str, timeout: float = 15) -> None:
        conf = self.state_dir / SUPERVISOR_CONF
        conf.write_text(config_text)
        (self.state_dir / LOG_DIR).mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
            check=True,
            cwd=self.state_dir,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self.is_running():
            if time.monotonic() > deadline:
                raise StartError(f"supervisord did not start; see {self.state_dir / LOG_DIR / 'supervisord.log'}")
            time.sleep(0.05)

    def daemon_pid(self) -> int | None:
        try:
            return int((self.state_dir / SUPERVISOR_PID).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def processes(self) -> list[ProcessInfo]:
        return [ProcessInfo.from_supervisor(info) for info in self.rpc.supervisor.getAllProcessInfo()]

    def process(self, full_name: str) -> ProcessInfo:
        return ProcessInfo.from_supervisor(self.rpc.supervisor.getProcessInfo(full_name))

    def start(self, full_name: str, wait: bool = True) -> None:
        try:
            self.rpc.supervisor.startProcess(full_name, wait)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise StartError(f"{full_name} did not start: {fault.faultString}") from fault

    def stop(self, full_name: str, wait: bool = True) -> None:
        try:
            self.rpc.supervisor.stopProcess(full_name, wait)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise

    def states(self) -> dict[str, ProcessState]:
        """Full name -> state of every program."""
        return {p.full_name: p.state for p in self.processes()}

    def stop_together(self, full_names: Sequence[str], timeout: float) -> None:
        """Ask each to stop at once (each gets its own stop signal and stopwaitsecs), then wait for all.

        Stopping them one group after another, as supervisord's shutdown does, adds their stop times up.
        """
        for name in full_names:
            self.stop(name, wait=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.states()
            if all(states.get(name, ProcessState.STOPPED) in STOPPED_STATES for name in full_names):
                return
            time.sleep(STOP_POLL_S)

    def signal(self, full_name: str, signal_name: str) -> None:
        self.rpc.supervisor.signalProcess(full_name, signal_name)

    def shutdown(self, timeout: float) -> None:
        """Stop every program (in reverse priority order) and supervisord itself; wait until all are gone."""
        pid = self.daemon_pid()
        with contextlib.suppress(OSError, xmlrpc.client.Fault):
            self.rpc.supervisor.shutdown()
        deadline = time.monotonic() + timeout
        while pid is not None and alive(pid):
            if time.monotonic() > deadline:
                raise StartError(f"supervisord (pid {pid}) did not stop within {timeout:.0f}s")
            time.sleep(0.1)
