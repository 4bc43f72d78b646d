"""The coordination part of JobStoreProtocol in memory (jobs/coordination.py has the SQL one and says why leases)."""

from __future__ import annotations

import threading

from kvern.jobs.records import PoolDecision, PoolHost


class CoordinationInMemory:
    def __init__(self) -> None:
        self._coordination_lock = threading.Lock()
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (holder, expires_at)
        self._decisions: dict[str, PoolDecision] = {}
        self._pool_hosts: dict[tuple[str, str], PoolHost] = {}

    def hold_lease(self, name: str, holder: str, now: float, ttl_s: float) -> bool:
        with self._coordination_lock:
            current = self._leases.get(name)
            if current is not None and current[0] != holder and current[1] >= now:
                return False
            self._leases[name] = (holder, now + ttl_s)
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._coordination_lock:
            if self._leases.get(name, ("", 0.0))[0] == holder:
                del self._leases[name]

    def lease_holder(self, name: str, now: float) -> str | None:
        with self._coordination_lock:
            current = self._leases.get(name)
            return current[0] if current is not None and current[1] >= now else None

    def record_pool_decision(self, decision: PoolDecision, lease: str, now: float) -> bool:
        with self._coordination_lock:
            current = self._leases.get(lease)
            if current is None or current[0] != decision.leader or current[1] < now:
                return False
            self._decisions[decision.pool] = decision
            return True

    def pool_decision(self, pool: str) -> PoolDecision | None:
        with self._coordination_lock:
            return self._decisions.get(pool)

    def beat_pool_host(self, pool: str, host: str, processes: int, now: float, ttl_s: float) -> None:
        with self._coordination_lock:
            self._pool_hosts[(pool, host)] = PoolHost(pool, host, processes, now + ttl_s)

    def leave_pool(self, pool: str, host: str) -> None:
        with self._coordination_lock:
            self._pool_hosts.pop((pool, host), None)

    def live_pool_hosts(self, pool: str, now: float) -> list[PoolHost]:
        with self._coordination_lock:
            beats = [b for (p, _), b in self._pool_hosts.items() if p == pool and b.expires_at >= now]
        return sorted(beats, key=lambda beat: beat.host)
