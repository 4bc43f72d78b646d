"""The autoscaler: every tick, read each pool's signals, ask its policy, apply the decision via Supervisor.

Scaling in stops the highest slots with SIGTERM, Celery's warm shutdown: a running job always finishes, so no
scaling decision ever makes a job run again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvern.autoscale.pins import autoscaler_paused, read_pins
from kvern.autoscale.policy import BacklogPolicy, Decision, PoolSignals, ScalingPolicy
from kvern.broker.admin import queue_depths
from kvern.constants import DESIRED_FILE
from kvern.errors import StoreUnavailable
from kvern.files import atomic_write
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import ScalingEvent
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.processes import ACTIVE_STATES, ProcessRunner, ProcessState, pool_group, pool_slot
from kvern.spec import PoolSpec

log = logging.getLogger("kvern.autoscale")

# The autoscaler's latest view per pool (desired processes, pin), for `kvern status`.


def read_desired(state_dir: Path) -> dict[str, dict[str, int | None]]:
    try:
        raw = json.loads((state_dir / DESIRED_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return raw if isinstance(raw, dict) else {}


@dataclass
class PoolScaler:
    pool: PoolSpec
    policy: ScalingPolicy


class Autoscaler:
    def __init__(
        self,
        pools: tuple[PoolSpec, ...],
        store: JobStoreProtocol,
        events: ScalingEventLog,
        supervisor: ProcessRunner,
        broker_url: str,
        state_dir: Path,
        policy_for: Callable[[PoolSpec], ScalingPolicy] = BacklogPolicy,
    ) -> None:
        self.scalers = [PoolScaler(pool, policy_for(pool)) for pool in pools]
        self.store = store
        self.events = events
        self.supervisor = supervisor
        self.broker_url = broker_url
        self.state_dir = state_dir
        self._published: dict[str, dict[str, int | None]] | None = None

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if autoscaler_paused(self.state_dir):
            # `kvern reload` is replacing workers one by one: a scale-in now could stop the fresh process it
            # just started, a scale-out could take the slot it is about to use.
            for scaler in self.scalers:
                scaler.policy.reset()
            return
        running, stopping = self._slots()
        pins = read_pins(self.state_dir)
        desired: dict[str, dict[str, int | None]] = {}
        for scaler in self.scalers:
            pool = scaler.pool
            current = running.get(pool.name, [])
            if pool.name in pins:
                scaler.policy.reset()
                decision = self._pinned(pool, len(current), pins[pool.name])
                wanted = max(0, min(pool.max, pins[pool.name]))
            else:
                planned = self.plan(scaler, len(current), now)
                if planned is None:
                    continue
                decision, wanted = planned
            desired[pool.name] = {"desired": wanted, "pinned": pins.get(pool.name)}
            if decision is not None and decision.target != len(current):
                self.apply(pool, current, decision, now, stopping.get(pool.name, set()))
        self._publish(desired)

    def plan(self, scaler: PoolScaler, processes: int, now: float) -> tuple[Decision | None, int] | None:
        """What the pool's policy decides for this machine's `processes` (None: leave them as they are), and the
        processes it wants now; None when the pool is held as it is."""
        try:
            signals = self.signals(scaler.pool, processes, now)
        except StoreUnavailable as exc:
            # Without the store the signals are half-known: hold the pool as it is (pins still apply).
            log.warning("pool %s: holding at %d processes, %s", scaler.pool.name, processes, exc)
            return None
        return scaler.policy.decide(signals, now), scaler.policy.desired(signals)[0]

    def _publish(self, desired: dict[str, dict[str, int | None]]) -> None:
        if desired == self._published:
            return
        atomic_write(self.state_dir / DESIRED_FILE, json.dumps(desired))
        self._published = desired

    def _pinned(self, pool: PoolSpec, current: int, pin: int) -> Decision | None:
        target = max(0, min(pool.max, pin))
        return Decision(target, f"pinned to {pin} by `kvern scale`") if target != current else None

    def signals(self, pool: PoolSpec, processes: int, now: float) -> PoolSignals:
        depths = queue_depths(self.broker_url, pool.queues)
        ready = sum(d["ready"] for d in depths.values() if d)
        oldest = self.store.oldest_queued_at(pool.queues)
        running = self.store.count_working(pool.queues)  # a job waiting out a retry's backoff needs no process
        return PoolSignals(ready, running, max(0.0, now - oldest) if oldest else 0.0, processes)

    def _slots(self) -> tuple[dict[str, list[int]], dict[str, set[int]]]:
        """Per pool: the slots running (or starting), and the slots still stopping warm (not free yet)."""
        running: dict[str, list[int]] = {}
        stopping: dict[str, set[int]] = {}
        for info in self.supervisor.processes():
            for scaler in self.scalers:
                if info.group != pool_group(scaler.pool.name) or info.slot is None:
                    continue
                if info.state in ACTIVE_STATES:
                    running.setdefault(scaler.pool.name, []).append(info.slot)
                elif info.state is ProcessState.STOPPING:
                    stopping.setdefault(scaler.pool.name, set()).add(info.slot)
        return {name: sorted(indexes) for name, indexes in running.items()}, stopping

    def apply(
        self, pool: PoolSpec, current: list[int], decision: Decision, now: float, stopping: set[int] | None = None
    ) -> None:
        target = decision.target
        if target > len(current):
            # A slot still finishing its job after a warm stop cannot be started again until it has exited.
            free = [i for i in range(pool.max) if i not in current and i not in (stopping or set())]
            chosen = free[: target - len(current)]
            if not chosen:
                return
            for index in chosen:
                self.supervisor.start(pool_slot(pool.name, index), wait=False)
            target = len(current) + len(chosen)
        else:
            for index in sorted(current, reverse=True)[: len(current) - target]:
                self.supervisor.stop(pool_slot(pool.name, index), wait=False)
        log.info("pool %s: %d -> %d (%s)", pool.name, len(current), target, decision.reason)
        try:
            self.events.record(ScalingEvent(now, pool.name, len(current), target, decision.reason))
        except StoreUnavailable as exc:  # the decision stands; only its record is lost
            log.warning("pool %s: scaling event not recorded: %s", pool.name, exc)
