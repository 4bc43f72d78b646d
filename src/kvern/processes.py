"""The processes of an instance: their names, a typed record of each, and the runner that starts and stops them.

Dependency-free (layer 1): the autoscaler, the runtime and the status report all speak of processes, and none of
them needs to know that Supervisor runs them. `runtime/supervisor.py`'s `Supervisor` implements
`ProcessRunner`; tests/unit/test_process_runner.py is the contract, run over it and the unit tests' stub.

Names: a pool's worker slots are programs `pool-<pool>-<i>` in group `pool-<pool>`; web heads are `web-<i>` in
group `web` (the job API) and, with `[web] app`, `app-<i>` in group `app` (the team's app); other programs
(broker, nginx, controller) are their own group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from kvern.constants import APP_GROUP, POOL_GROUP_PREFIX, WEB_GROUP

WEB_PROGRAM_PREFIX = "web-"
APP_PROGRAM_PREFIX = "app-"


class ProcessState(StrEnum):
    """Supervisor's process states (the same words it uses)."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"  # exited too quickly while starting; will be started again
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"  # could not be started
    UNKNOWN = "UNKNOWN"


RUNNING_STATES = frozenset({ProcessState.RUNNING})
# Started or being started: the slot is taken (a BACKOFF process is started again by its runner).
ACTIVE_STATES = frozenset({ProcessState.RUNNING, ProcessState.STARTING, ProcessState.BACKOFF})
STOPPED_STATES = frozenset({ProcessState.STOPPED, ProcessState.EXITED, ProcessState.FATAL, ProcessState.UNKNOWN})


def pool_group(pool: str) -> str:
    return f"{POOL_GROUP_PREFIX}{pool}"


def pool_program_name(pool: str, index: int) -> str:
    """The program name of one worker process slot of a pool (unique across groups)."""
    return f"{pool_group(pool)}-{index}"


def pool_slot(pool: str, index: int) -> str:
    """The runner's full name of one worker process slot of a pool."""
    return f"{pool_group(pool)}:{pool_program_name(pool, index)}"


def web_program_name(index: int) -> str:
    return f"{WEB_PROGRAM_PREFIX}{index}"


def web_slot(index: int) -> str:
    """The runner's full name of one web head."""
    return f"{WEB_GROUP}:{web_program_name(index)}"


def app_program_name(index: int) -> str:
    return f"{APP_PROGRAM_PREFIX}{index}"


def app_slot(index: int) -> str:
    """The runner's full name of the team's app beside web head `index`."""
    return f"{APP_GROUP}:{app_program_name(index)}"


def slot_index(group: str, name: str) -> int | None:
    """The index of a pool, web or app slot from its group and program name; None for any other program."""
    if group == WEB_GROUP:
        prefix = WEB_PROGRAM_PREFIX
    elif group == APP_GROUP:
        prefix = APP_PROGRAM_PREFIX
    elif group.startswith(POOL_GROUP_PREFIX):
        prefix = f"{group}-"
    else:
        return None
    rest = name.removeprefix(prefix)
    return int(rest) if rest != name and rest.isdecimal() else None


def full_name(group: str, name: str) -> str:
    """`group:name`, or just `name` for a program that is its own group."""
    return f"{group}:{name}" if group != name else name


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    group: str
    state: ProcessState
    pid: int | None  # None while not running
    slot: int | None  # the slot's index for a pool's worker, a web head or an app head, else None

    @property
    def full_name(self) -> str:
        return full_name(self.group, self.name)

    @classmethod
    def of(cls, group: str, name: str, state: ProcessState, pid: int | None = None) -> ProcessInfo:
        return cls(name, group, state, pid or None, slot_index(group, name))

    @classmethod
    def from_supervisor(cls, info: Mapping[str, Any]) -> ProcessInfo:
        """From one entry of Supervisor's getProcessInfo / getAllProcessInfo (pid 0 when not running)."""
        return cls.of(str(info["group"]), str(info["name"]), ProcessState(info["statename"]), int(info["pid"]))


class ProcessRunner(Protocol):
    """Runs an instance's programs: what the autoscaler, web scaling, `up`/`down` and the status report use."""

    def processes(self) -> list[ProcessInfo]:
        """Every program the runner knows, started or not, in one call."""
        ...

    def process(self, full_name: str) -> ProcessInfo:
        """One program by full name (`group:name`, or `name` for a program that is its own group)."""
        ...

    def start(self, full_name: str, wait: bool = True) -> None:
        """Start a program (already started: nothing); `wait`: return once it is RUNNING."""
        ...

    def stop(self, full_name: str, wait: bool = True) -> None:
        """Send the program its stop signal (not running: nothing); `wait`: return once it has exited."""
        ...

    def signal(self, full_name: str, signal_name: str) -> None:
        """Send a running program a signal by name (`HUP`, `TERM`...)."""
        ...
