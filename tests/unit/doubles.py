"""Test doubles that implement kvern's seams (the Protocols), for unit tests without real services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvern.autoscale.policy import Decision, PoolSignals
from kvern.runtime.programs import pool_group, pool_slot
from kvern.spec import PoolSpec


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
class FakeSupervisor:
    """Supervisor's process table for pool slots; records every start and stop."""

    states: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str, bool]] = field(default_factory=list)

    def add_pool(self, pool: PoolSpec, running: int) -> None:
        for index in range(pool.max):
            self.states[pool_slot(pool.name, index)] = "RUNNING" if index < running else "STOPPED"

    def processes(self) -> list[dict[str, Any]]:
        infos = []
        for full_name, state in self.states.items():
            group, name = full_name.split(":")
            infos.append({"group": group, "name": name, "statename": state, "pid": 1})
        return infos

    def start(self, full_name: str, wait: bool = True) -> None:
        self.calls.append(("start", full_name, wait))
        self.states[full_name] = "STARTING"

    def stop(self, full_name: str, wait: bool = True) -> None:
        self.calls.append(("stop", full_name, wait))
        self.states[full_name] = "STOPPING"  # a warm stop: the slot finishes its job first

    def running(self, pool: str) -> int:
        return sum(
            1
            for name, state in self.states.items()
            if name.startswith(pool_group(pool) + ":") and state in ("RUNNING", "STARTING")
        )
