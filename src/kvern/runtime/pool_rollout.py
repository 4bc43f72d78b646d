"""Replace a pool's worker processes warm, one at a time, for `kvern reload`.

For each running worker: start a fresh one in a free slot first (it reads the new spec snapshot and imports
the new code), wait until it consumes, then send the old one SIGTERM, Celery's warm shutdown: its running job
finishes on the old code, and from then on only fresh workers take jobs. When the pool is at its max, there
is no free slot: the old one is stopped first (its job still finishes) and its slot started again.

A max lowered by the reload is applied on the way (old workers beyond it are stopped without a successor); a
min raised by it is filled at the end. The autoscaler is paused meanwhile (`autoscale/pins.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kvern.errors import KvernError, StartError
from kvern.processes import ACTIVE_STATES, STOPPED_STATES, ProcessRunner, ProcessState, pool_group, pool_slot
from kvern.spec import PoolSpec

log = logging.getLogger("kvern.reload")

CONSUMING_TIMEOUT_S = 30.0
POLL_S = 0.1

# Consumers on a queue now (None when the broker cannot say): how a rollout sees a fresh worker take jobs.
ConsumerCount = Callable[[str], int | None]


def no_consumer_count(_queue: str) -> int | None:
    return None


@dataclass
class PoolRollout:
    supervisor: ProcessRunner
    pool: PoolSpec  # the pool as the new spec has it
    stop_timeout_s: float  # how long an old worker's warm stop may take (its job's time limit)
    consumers: ConsumerCount = no_consumer_count
    replaced: list[tuple[int, int]] = field(default_factory=list)  # (old slot, fresh slot)
    stopped: list[int] = field(default_factory=list)  # old slots stopped without a successor (max lowered)
    started: list[int] = field(default_factory=list)  # fresh slots beyond the old ones (min raised)

    def run(self) -> None:
        old = self._slots(ACTIVE_STATES)
        target = max(self.pool.min, min(self.pool.max, len(old)))
        fresh: list[int] = []
        for position, slot in enumerate(old):
            if len(fresh) + len(old) - position > target:
                self.supervisor.stop(pool_slot(self.pool.name, slot), wait=False)  # warm: its job finishes
                self.stopped.append(slot)
                continue
            fresh.append(self._replace(slot))
        while len(fresh) < target:
            free = self._free_slot()
            if free is None:
                raise StartError(f"pool {self.pool.name}: no free slot to reach its min of {self.pool.min}")
            self._start(free)
            fresh.append(free)
            self.started.append(free)

    def describe(self) -> str:
        parts = [f"{len(self.replaced)} process(es) replaced"]
        if self.stopped:
            parts.append(f"{len(self.stopped)} stopped (max {self.pool.max})")
        if self.started:
            parts.append(f"{len(self.started)} started (min {self.pool.min})")
        return ", ".join(parts)

    def _replace(self, old: int) -> int:
        free = self._free_slot()
        if free is None:  # at max: the old one's slot is the only one there will be
            self._stop_and_wait(old)
            self._start(old)
            self.replaced.append((old, old))
            return old
        self._start(free)
        self.supervisor.stop(pool_slot(self.pool.name, old), wait=False)
        self.replaced.append((old, free))
        return free

    def _start(self, slot: int) -> None:
        queue = self.pool.queues[0]
        before = self._consumers(queue)
        self.supervisor.start(pool_slot(self.pool.name, slot), wait=True)
        if before is None:
            return
        deadline = time.monotonic() + CONSUMING_TIMEOUT_S
        while time.monotonic() < deadline:
            now = self._consumers(queue)
            if now is None or now > before:
                return
            if self.supervisor.process(pool_slot(self.pool.name, slot)).state in STOPPED_STATES:
                raise StartError(f"pool {self.pool.name}: the fresh worker in slot {slot} exited while starting")
            time.sleep(POLL_S)
        log.warning("pool %s: slot %d is running but not consuming yet", self.pool.name, slot)

    def _consumers(self, queue: str) -> int | None:
        try:
            return self.consumers(queue)
        except (KvernError, OSError) as exc:
            log.warning("queue %s: consumers unknown (%s)", queue, exc)
            return None

    def _stop_and_wait(self, slot: int) -> None:
        name = pool_slot(self.pool.name, slot)
        self.supervisor.stop(name, wait=False)
        deadline = time.monotonic() + self.stop_timeout_s
        while self.supervisor.process(name).state not in STOPPED_STATES:
            if time.monotonic() > deadline:
                raise StartError(f"pool {self.pool.name}: slot {slot} did not stop in {self.stop_timeout_s:.0f}s")
            time.sleep(POLL_S)

    def _free_slot(self) -> int | None:
        """The lowest slot within the new max that is neither running nor still finishing a job."""
        idle = set(self._slots(STOPPED_STATES))
        return next((slot for slot in range(self.pool.max) if slot in idle), None)

    def _slots(self, states: frozenset[ProcessState]) -> list[int]:
        group = pool_group(self.pool.name)
        return sorted(
            p.slot for p in self.supervisor.processes() if p.group == group and p.slot is not None and p.state in states
        )
