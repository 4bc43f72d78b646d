"""Scaling policy: from a pool's signals to the number of worker processes it should run.

Scale out at once when the backlog or the oldest job's wait says so; scale in only after the pool has wanted
fewer processes for its whole cool-down (`idle_after`), which damps flapping. A pin overrides everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from kvern.spec import PoolSpec


@dataclass(frozen=True)
class PoolSignals:
    ready: int  # messages waiting in the pool's queues
    running: int  # jobs an attempt is working on (stands for unacknowledged messages)
    oldest_wait_s: float  # how long the oldest queued job has waited (0 when none)
    processes: int  # worker processes currently running

    def describe(self) -> str:
        return f"ready={self.ready} running={self.running} oldest_wait={self.oldest_wait_s:.1f}s"


@dataclass(frozen=True)
class Decision:
    target: int
    reason: str


class ScalingPolicy(Protocol):
    """One pool's scaling rule; the autoscaler holds one per pool and calls only these methods."""

    def desired(self, signals: PoolSignals) -> tuple[int, str]:
        """The processes the signals call for right now, within the pool's min and max, and why.

        No state changes: `kvern status` shows this number even while a cool-down holds the pool."""
        ...

    def decide(self, signals: PoolSignals, now: float) -> Decision | None:
        """The number of processes the pool should run now, or None to leave it as it is.

        May keep state between calls (a cool-down); `now` is the tick's time in seconds."""
        ...

    def reset(self) -> None:
        """Forget any state kept between `decide` calls (a pin took over the pool)."""
        ...


class BacklogPolicy:
    """Processes follow backlog / target_backlog, pushed up by a long wait, held up during the cool-down."""

    def __init__(self, pool: PoolSpec) -> None:
        self.pool = pool
        self.wants_fewer_since: float | None = None

    def desired(self, signals: PoolSignals) -> tuple[int, str]:
        work = signals.ready + signals.running
        desired = math.ceil(work / self.pool.target_backlog)
        reason = f"backlog {work} / target {self.pool.target_backlog} per process"
        if signals.ready > 0 and signals.oldest_wait_s > self.pool.max_wait:
            desired = max(desired, signals.processes + 1)
            reason = f"oldest job waited {signals.oldest_wait_s:.1f}s > max_wait {self.pool.max_wait:g}s"
        if work > 0:
            desired = max(desired, 1)  # never leave work with nobody to do it
        return max(self.pool.min, min(self.pool.max, desired)), reason

    def reset(self) -> None:
        """Forget a cool-down in progress (a pin took over: after it, the cool-down starts again)."""
        self.wants_fewer_since = None

    def decide(self, signals: PoolSignals, now: float) -> Decision | None:
        desired, reason = self.desired(signals)
        current = signals.processes
        if desired > current:
            self.wants_fewer_since = None
            return Decision(desired, f"scale out: {reason} ({signals.describe()})")
        if desired == current:
            self.wants_fewer_since = None
            return None
        if self.wants_fewer_since is None:
            self.wants_fewer_since = now
        if now - self.wants_fewer_since < self.pool.idle_after:
            return None
        self.wants_fewer_since = None
        return Decision(desired, f"scale in after {self.pool.idle_after:g}s cool-down: {reason} ({signals.describe()})")
