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
    hosts: int = 1  # worker hosts serving the pool: its min and max are per host (autoscale/shared.py)

    def describe(self) -> str:
        return f"ready={self.ready} running={self.running} oldest_wait={self.oldest_wait_s:.1f}s"


@dataclass(frozen=True)
class Decision:
    target: int
    reason: str


class ScalingPolicy(Protocol):
    """One pool's scaling rule; the autoscaler holds one per pool and calls only these methods."""

    def desired(self, signals: PoolSignals) -> tuple[int, str]:
        """The processes the signals call for right now, within the pool's min and max (per host: times
        `signals.hosts`), and why.

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
    """Processes follow backlog / target_backlog, pushed up by a long wait, held up during the cool-down.

    A long wait adds one process at a time, and only once the process last added has had `max_wait` seconds to
    take the waiting job: a worker takes seconds to boot, and one stale wait must not grow a pool to its max.
    """

    def __init__(self, pool: PoolSpec) -> None:
        self.pool = pool
        self.wants_fewer_since: float | None = None
        self.grown_at: float | None = None

    def _bounded(self, processes: int, hosts: int) -> int:
        return max(self.pool.min * hosts, min(self.pool.max * hosts, processes))

    def _by_backlog(self, signals: PoolSignals) -> int:
        work = signals.ready + signals.running
        by_backlog = math.ceil(work / self.pool.target_backlog)
        # never leave work with nobody
        return self._bounded(max(by_backlog, 1) if work > 0 else by_backlog, signals.hosts)

    def _waited_too_long(self, signals: PoolSignals) -> bool:
        return signals.ready > 0 and signals.oldest_wait_s > self.pool.max_wait

    def desired(self, signals: PoolSignals) -> tuple[int, str]:
        work = signals.ready + signals.running
        desired = self._by_backlog(signals)
        reason = f"backlog {work} / target {self.pool.target_backlog} per process"
        if self._waited_too_long(signals) and self._bounded(signals.processes + 1, signals.hosts) > desired:
            desired = self._bounded(signals.processes + 1, signals.hosts)
            reason = f"oldest job waited {signals.oldest_wait_s:.1f}s > max_wait {self.pool.max_wait:g}s"
        return desired, reason

    def reset(self) -> None:
        """Forget a cool-down in progress (a pin took over: after it, the cool-down starts again)."""
        self.wants_fewer_since = None
        self.grown_at = None

    def decide(self, signals: PoolSignals, now: float) -> Decision | None:
        desired, reason = self.desired(signals)
        current = signals.processes
        if desired > current:
            return self._scale_out(signals, desired, reason, now)
        if desired == current:
            self.wants_fewer_since = None
            return None
        if self.wants_fewer_since is None:
            self.wants_fewer_since = now
        if now - self.wants_fewer_since < self.pool.idle_after:
            return None
        self.wants_fewer_since = None
        return Decision(desired, f"scale in after {self.pool.idle_after:g}s cool-down: {reason} ({signals.describe()})")

    def _scale_out(self, signals: PoolSignals, desired: int, reason: str, now: float) -> Decision | None:
        for_wait_only = self._by_backlog(signals) <= signals.processes
        if for_wait_only and self.grown_at is not None and now - self.grown_at < self.pool.max_wait:
            return None  # the process last added may still be booting: give it the chance to take the job first
        self.grown_at = now
        self.wants_fewer_since = None
        return Decision(desired, f"scale out: {reason} ({signals.describe()})")
