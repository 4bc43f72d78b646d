"""The autoscaler of one host among several serving the same pools (a `[hosts]` instance).

Every worker host runs a controller, and each pool has one leader among them: the host holding the pool's lease
in the job store (jobs/coordination.py says why a lease). Each tick, every host
1. beats for each of its pools (the processes it runs of it, until `LEASE_TTL_S`),
2. takes or renews the pool's lease; the holder alone asks the pool's policy, on instance-wide signals (the
   broker's queue depth, the store's running jobs) and the processes of all live hosts, and records the pool's
   total in the store, fenced by its lease,
3. takes its share of that total: split evenly over the live hosts by name, the remainder to the first ones, within
   the pool's `min` and `max`, and starts or stops only its own processes (warm: a running job always finishes).

The pool's `min` and `max` are per host: a pool on 3 hosts runs 3 x min to 3 x max processes. A leader that dies
stops renewing; another host takes the lease once it expired and goes on from the recorded decision. A host that
dies stops beating, and the others' shares grow to cover the total. `kvern scale POOL N` on a host pins that
host's own processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from kvern.autoscale.loop import Autoscaler, PoolScaler
from kvern.autoscale.pins import autoscaler_paused
from kvern.autoscale.policy import BacklogPolicy, Decision, PoolSignals, ScalingPolicy
from kvern.constants import LEASE_TTL_S, POOL_LEASE_PREFIX
from kvern.errors import StoreUnavailable
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import PoolDecision, PoolHost
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.processes import ProcessRunner
from kvern.spec import PoolSpec

log = logging.getLogger("kvern.autoscale")


def share_of(total: int, hosts: list[str], host: str, pool: PoolSpec) -> int:
    """`host`'s part of `total` processes over `hosts` (in name order): even, the remainder to the first ones,
    within the pool's min and max per host (a host that just joined keeps its min under a total decided before)."""
    each, remainder = divmod(total, len(hosts))
    return max(pool.min, min(pool.max, each + (1 if hosts.index(host) < remainder else 0)))


def pool_lease(pool: str) -> str:
    return POOL_LEASE_PREFIX + pool


@dataclass(frozen=True)
class PoolView:
    """What this tick knows of a pool across the instance."""

    hosts: list[PoolHost]
    decision: PoolDecision | None


class SharedAutoscaler(Autoscaler):
    def __init__(
        self,
        pools: tuple[PoolSpec, ...],
        store: JobStoreProtocol,
        events: ScalingEventLog,
        supervisor: ProcessRunner,
        broker_url: str,
        state_dir: Path,
        *,
        host: str,
        ttl_s: float = LEASE_TTL_S,
        policy_for: Callable[[PoolSpec], ScalingPolicy] = BacklogPolicy,
    ) -> None:
        super().__init__(pools, store, events, supervisor, broker_url, state_dir, policy_for)
        self.host = host
        self.ttl_s = ttl_s
        self.views: dict[str, PoolView] = {}
        self.leading: set[str] = set()

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        running, _ = self._slots()
        try:
            for scaler in self.scalers:
                name = scaler.pool.name
                self.store.beat_pool_host(name, self.host, len(running.get(name, [])), now, self.ttl_s)
                self.views[name] = self._lead(scaler, now)
        except StoreUnavailable as exc:
            # Neither this host's share nor the pool's total is known: hold every pool as it is.
            log.warning("holding every pool as it is: %s", exc)
            self.views.clear()
            return
        super().tick(now)

    def _lead(self, scaler: PoolScaler, now: float) -> PoolView:
        """Take or renew the pool's lease; as its holder, decide the pool's total. Returns what this tick knows."""
        pool = scaler.pool
        hosts = self.store.live_pool_hosts(pool.name, now)
        recorded = self.store.pool_decision(pool.name)
        leads = self.store.hold_lease(pool_lease(pool.name), self.host, now, self.ttl_s)
        self._note_leadership(pool.name, leads)
        if not leads or autoscaler_paused(self.state_dir) or not hosts:
            return PoolView(hosts, recorded)
        total = sum(host.processes for host in hosts)
        try:
            signals = replace(self.signals(pool, total, now), hosts=len(hosts))
        except Exception as exc:  # the broker or the store away: the hosts follow the decision recorded last
            log.warning("pool %s: no decision this tick: %s", pool.name, exc)
            return PoolView(hosts, recorded)
        target, reason = self._target(scaler, signals, recorded, now)
        if recorded is not None and (recorded.processes, recorded.leader) == (target, self.host):
            return PoolView(hosts, recorded)  # unchanged: nothing to write
        made = PoolDecision(pool.name, target, reason, self.host, now)
        if self.store.record_pool_decision(made, pool_lease(pool.name), now):
            log.info("pool %s: %d -> %d across %d host(s) (%s)", pool.name, total, target, len(hosts), reason)
            return PoolView(hosts, made)
        return PoolView(hosts, self.store.pool_decision(pool.name))

    @staticmethod
    def _target(scaler: PoolScaler, signals: PoolSignals, recorded: PoolDecision | None, now: float) -> tuple[int, str]:
        """The policy's decision; else the one recorded (a new leader goes on from its predecessor's), kept within
        the live hosts' min and max: a host that joined or left moves the bounds, not the policy's wish."""
        decision = scaler.policy.decide(signals, now)
        if decision is not None:
            return decision.target, decision.reason
        if recorded is None:
            return scaler.policy.desired(signals)
        low, high = scaler.pool.min * signals.hosts, scaler.pool.max * signals.hosts
        return max(low, min(high, recorded.processes)), recorded.reason

    def _note_leadership(self, pool: str, leads: bool) -> None:
        if leads and pool not in self.leading:
            log.info("pool %s: this host (%s) leads it now", pool, self.host)
            self.leading.add(pool)
        elif not leads and pool in self.leading:
            log.info("pool %s: this host (%s) no longer leads it", pool, self.host)
            self.leading.discard(pool)

    def plan(self, scaler: PoolScaler, processes: int, now: float) -> tuple[Decision | None, int] | None:
        """This host's share of the pool's decision; None (hold) while the pool has no decision yet."""
        pool = scaler.pool
        view = self.views.get(pool.name)
        names = [host.host for host in view.hosts] if view else []
        if view is None or view.decision is None or self.host not in names:
            return None
        share = share_of(view.decision.processes, names, self.host, pool)
        if share == processes:
            return None, share
        why = f"share {share} of {view.decision.processes} on {len(names)} host(s), led by {view.decision.leader}"
        return Decision(share, f"{why}: {view.decision.reason}"), share

    def resign(self) -> None:
        """A clean stop: leave every pool and give its lease up, so the others take over at once."""
        for scaler in self.scalers:
            self.store.leave_pool(scaler.pool.name, self.host)
            self.store.release_lease(pool_lease(scaler.pool.name), self.host)
