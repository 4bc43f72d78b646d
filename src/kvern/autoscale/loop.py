"""The autoscaler: every tick, read each pool's signals, ask its policy, apply the decision via Supervisor.

Scaling in stops the highest slots with SIGTERM, Celery's warm shutdown: a running job always finishes, so no
scaling decision ever makes a job run again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvern.autoscale.pins import read_pins
from kvern.autoscale.policy import BacklogPolicy, Decision, PoolSignals
from kvern.broker.admin import queue_depths
from kvern.jobs.records import ScalingEvent
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.runtime.programs import pool_group, pool_slot
from kvern.runtime.supervisor import Supervisor
from kvern.spec import PoolSpec

log = logging.getLogger("kvern.autoscale")


@dataclass
class PoolScaler:
    pool: PoolSpec
    policy: BacklogPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.policy = BacklogPolicy(self.pool)


class Autoscaler:
    def __init__(
        self,
        pools: tuple[PoolSpec, ...],
        store: JobStore,
        supervisor: Supervisor,
        broker_url: str,
        state_dir: Path,
    ) -> None:
        self.scalers = [PoolScaler(pool) for pool in pools]
        self.store = store
        self.supervisor = supervisor
        self.broker_url = broker_url
        self.state_dir = state_dir

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        running = self._running_slots()
        pins = read_pins(self.state_dir)
        for scaler in self.scalers:
            pool = scaler.pool
            current = running.get(pool.name, [])
            if pool.name in pins:
                decision = self._pinned(pool, len(current), pins[pool.name])
            else:
                decision = scaler.policy.decide(self.signals(pool, len(current), now), now)
            if decision is not None and decision.target != len(current):
                self.apply(pool, current, decision, now)

    def _pinned(self, pool: PoolSpec, current: int, pin: int) -> Decision | None:
        target = max(0, min(pool.max, pin))
        return Decision(target, f"pinned to {pin} by `kvern scale`") if target != current else None

    def signals(self, pool: PoolSpec, processes: int, now: float) -> PoolSignals:
        depths = queue_depths(self.broker_url, pool.queues)
        ready = sum(d["ready"] for d in depths.values() if d)
        oldest = self.store.oldest_queued_at(pool.queues)
        running = self.store.count_status(JobStatus.RUNNING, pool.queues)
        return PoolSignals(ready, running, max(0.0, now - oldest) if oldest else 0.0, processes)

    def _running_slots(self) -> dict[str, list[int]]:
        slots: dict[str, list[int]] = {}
        for info in self.supervisor.processes():
            for scaler in self.scalers:
                group = pool_group(scaler.pool.name)
                if info["group"] == group and info["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
                    slots.setdefault(scaler.pool.name, []).append(int(info["name"].rsplit("-", 1)[1]))
        return {name: sorted(indexes) for name, indexes in slots.items()}

    def apply(self, pool: PoolSpec, current: list[int], decision: Decision, now: float) -> None:
        if decision.target > len(current):
            free = [i for i in range(pool.max) if i not in current]
            for index in free[: decision.target - len(current)]:
                self.supervisor.start(pool_slot(pool.name, index), wait=False)
        else:
            for index in sorted(current, reverse=True)[: len(current) - decision.target]:
                self.supervisor.stop(pool_slot(pool.name, index), wait=False)
        log.info("pool %s: %d -> %d (%s)", pool.name, len(current), decision.target, decision.reason)
        self.store.record_scaling_event(ScalingEvent(now, pool.name, len(current), decision.target, decision.reason))
