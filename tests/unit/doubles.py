"""Test doubles that implement kvern's seams (the Protocols), for unit tests without real services."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvern.api.app import WebHead
from kvern.autoscale.policy import Decision, PoolSignals
from kvern.catalog import load_user_app
from kvern.jobs.keys import SqlKeyStore
from kvern.jobs.records import Job
from kvern.jobs.store import JobStore
from kvern.processes import ACTIVE_STATES, STOPPED_STATES, ProcessInfo, ProcessState, pool_group, pool_slot
from kvern.spec import PoolSpec, load_spec


class StubPublisher:
    """A JobPublisherProtocol that records what would be published; can be told to fail like a broker that is
    down or full."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, str]] = []  # (job id, task, queue)
        self.failure: Exception | None = None
        self.while_unconfirmed: Callable[[str], None] | None = None  # what happens before the confirm is lost

    async def publish(self, job: Job) -> None:
        await asyncio.sleep(0)
        if self.while_unconfirmed is not None:
            self.while_unconfirmed(job.id)
        if self.failure is not None:
            raise self.failure
        self.published.append((job.id, job.task, job.queue))

    async def publish_many(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        outcomes = await asyncio.gather(*(self.publish(job) for job in jobs), return_exceptions=True)
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    async def ping(self) -> bool:
        return self.failure is None

    async def close(self) -> None:
        return None


class StubBlockingPublisher:
    """A OneJobPublisherProtocol (the app's blocking publisher) that records what would be published; can be told
    to fail like a broker that is down or full."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, str]] = []  # (job id, task, queue)
        self.failure: Exception | None = None
        self.while_unconfirmed: Callable[[str], None] | None = None  # what happens before the confirm is lost
        self.closed = False

    def publish(self, job: Job) -> None:
        if self.while_unconfirmed is not None:
            self.while_unconfirmed(job.id)
        if self.failure is not None:
            raise self.failure
        self.published.append((job.id, job.task, job.queue))

    def close(self) -> None:
        self.closed = True


class FixedPolicy:
    """A ScalingPolicy that wants `target` processes (within the pool's bounds) whatever the signals."""

    def __init__(self, pool: PoolSpec, target: int) -> None:
        self.pool = pool
        self.target = target

    def desired(self, signals: PoolSignals) -> tuple[int, str]:
        return max(self.pool.min, min(self.pool.max, self.target)), f"fixed at {self.target}"

    def decide(self, signals: PoolSignals, now: float) -> Decision | None:
        wanted, reason = self.desired(signals)
        return Decision(wanted, reason) if wanted != signals.processes else None

    def reset(self) -> None:
        """Nothing kept between ticks."""


@dataclass
class StubRunner:
    """A ProcessRunner over a table of programs (full name -> state); records every start, stop and signal.

    Starting makes a program STARTING and stopping makes it STOPPING (a warm stop: a worker finishes its job
    first); a test moves it on by setting `states`. Pids are 1000 + the program's position while it is live.
    """

    states: dict[str, ProcessState] = field(default_factory=dict)
    calls: list[tuple[str, str, bool]] = field(default_factory=list)
    signals: list[tuple[str, str]] = field(default_factory=list)

    def add_pool(self, pool: PoolSpec, running: int) -> None:
        for index in range(pool.max):
            self.states[pool_slot(pool.name, index)] = ProcessState.RUNNING if index < running else ProcessState.STOPPED

    def add_program(self, full_name: str, state: ProcessState = ProcessState.STOPPED) -> None:
        self.states[full_name] = state

    def processes(self) -> list[ProcessInfo]:
        return [self._info(position, name, state) for position, (name, state) in enumerate(self.states.items())]

    def process(self, full_name: str) -> ProcessInfo:
        position = list(self.states).index(full_name)  # an unknown name raises, as Supervisor's BAD_NAME does
        return self._info(position, full_name, self.states[full_name])

    @staticmethod
    def _info(position: int, full_name: str, state: ProcessState) -> ProcessInfo:
        group, _, name = full_name.rpartition(":")
        pid = 1000 + position if state in (ProcessState.RUNNING, ProcessState.STOPPING) else None
        return ProcessInfo.of(group or name, name, state, pid)

    def start(self, full_name: str, wait: bool = True) -> None:
        self.calls.append(("start", full_name, wait))
        if self.states[full_name] not in ACTIVE_STATES:
            self.states[full_name] = ProcessState.RUNNING if wait else ProcessState.STARTING

    def stop(self, full_name: str, wait: bool = True) -> None:
        self.calls.append(("stop", full_name, wait))
        if self.states[full_name] not in STOPPED_STATES:
            self.states[full_name] = ProcessState.STOPPED if wait else ProcessState.STOPPING

    def signal(self, full_name: str, signal_name: str) -> None:
        self.signals.append((full_name, signal_name))

    def running(self, pool: str) -> int:
        """The pool's slots started or starting."""
        return sum(
            1
            for name, state in self.states.items()
            if name.startswith(pool_group(pool) + ":") and state in (ProcessState.RUNNING, ProcessState.STARTING)
        )


ADD_TASK = """
@app.task
def add(x: int, y: int = 0) -> int:
    return x + y
"""


def keyed_web_head(folder: Path, tasks_module: str, more_tasks: str = "") -> WebHead:
    """A web head with API keys on, over a SQLite store in `folder` and a tasks module named `tasks_module`
    (`add`, and `more_tasks`' source), publishing to a StubPublisher."""
    source = f"from celery import Celery\napp = Celery({tasks_module!r})\n{ADD_TASK}{textwrap.dedent(more_tasks)}"
    (folder / f"{tasks_module}.py").write_text(source)
    (folder / "kvern.toml").write_text(f'[app]\ntasks = "{tasks_module}"\n[[pools]]\nname = "main"\n')
    spec = load_spec(folder / "kvern.toml")
    _, catalog = load_user_app(spec)
    store = JobStore(f"sqlite:///{folder / 'jobs.sqlite3'}")
    store.create_schema()
    return WebHead(spec, catalog, store, StubPublisher(), keys=SqlKeyStore(store.engine))
