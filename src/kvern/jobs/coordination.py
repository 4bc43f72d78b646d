"""Leases, pool decisions and pool heartbeats: how the controllers of several hosts share one instance.

A lease is a row (name, holder, expires_at) that its holder pushes forward every tick; another host may take it
only once it has expired. This is the leader election of River (`river_leader`: elect with an INSERT that does
nothing on conflict, re-elect with an UPDATE only where the holder is us, expired rows taken over) and of Oban
(`oban_leaders`), chosen over a PostgreSQL session advisory lock: a host cut off from the network keeps its TCP
session, and with it an advisory lock, for minutes, while its lease simply lapses after `LEASE_TTL_S`. It works
the same on SQLite (one machine) and PostgreSQL.

Times are the callers' wall clocks (the controller's tick time, a fake clock in tests); the hosts of an instance
keep NTP time, and a lease lasts seconds, far more than their drift.

`CoordinationSql` is mixed into `JobStore` (it uses the store's transactions); jobs/memory_coordination.py is the
in-memory twin.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from sqlalchemy import Connection, and_, delete, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from kvern.jobs import schema
from kvern.jobs.records import PoolDecision, PoolHost


class CoordinationSql:
    """The coordination part of JobStoreProtocol in SQL, for a class that opens the transactions."""

    def _begin(self) -> AbstractContextManager[Connection]:
        """A write transaction (StoreUnavailable when the store cannot be reached)."""
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Connection]:
        """A read-only connection."""
        raise NotImplementedError

    def hold_lease(self, name: str, holder: str, now: float, ttl_s: float) -> bool:
        leases = schema.leases
        free_or_mine = or_(leases.c.holder == holder, leases.c.expires_at < now)
        take = update(leases).where(leases.c.name == name, free_or_mine).values(holder=holder, expires_at=now + ttl_s)
        with self._begin() as conn:
            if conn.execute(take).rowcount == 1:
                return True
        try:  # no row yet: the first to insert it holds it, the other's insert fails on the key
            with self._begin() as conn:
                conn.execute(insert(leases).values(name=name, holder=holder, expires_at=now + ttl_s))
        except IntegrityError:
            return False
        return True

    def release_lease(self, name: str, holder: str) -> None:
        leases = schema.leases
        with self._begin() as conn:
            conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))

    def lease_holder(self, name: str, now: float) -> str | None:
        leases = schema.leases
        query = select(leases.c.holder).where(leases.c.name == name, leases.c.expires_at >= now)
        with self._read() as conn:
            return conn.execute(query).scalar()

    def record_pool_decision(self, decision: PoolDecision, lease: str, now: float) -> bool:
        leases, decisions = schema.leases, schema.pool_decisions
        held = exists().where(leases.c.name == lease, leases.c.holder == decision.leader, leases.c.expires_at >= now)
        values = {
            "processes": decision.processes,
            "reason": decision.reason,
            "leader": decision.leader,
            "decided_at": decision.decided_at,
        }
        with self._begin() as conn:
            if not conn.execute(select(held)).scalar():
                return False
            changed = conn.execute(update(decisions).where(decisions.c.pool == decision.pool).values(**values))
            if changed.rowcount == 0:
                conn.execute(insert(decisions).values(pool=decision.pool, **values))
        return True

    def pool_decision(self, pool: str) -> PoolDecision | None:
        decisions = schema.pool_decisions
        with self._read() as conn:
            row = conn.execute(select(decisions).where(decisions.c.pool == pool)).first()
        return PoolDecision(row.pool, row.processes, row.reason, row.leader, row.decided_at) if row else None

    def beat_pool_host(self, pool: str, host: str, processes: int, now: float, ttl_s: float) -> None:
        hosts = schema.pool_hosts
        mine = and_(hosts.c.pool == pool, hosts.c.host == host)
        values = {"processes": processes, "expires_at": now + ttl_s}
        with self._begin() as conn:
            if conn.execute(update(hosts).where(mine).values(**values)).rowcount == 1:
                return
        try:
            with self._begin() as conn:
                conn.execute(insert(hosts).values(pool=pool, host=host, **values))
        except IntegrityError:  # only this host beats for itself: a second controller of it raced; it counts once
            return

    def leave_pool(self, pool: str, host: str) -> None:
        hosts = schema.pool_hosts
        with self._begin() as conn:
            conn.execute(delete(hosts).where(hosts.c.pool == pool, hosts.c.host == host))

    def live_pool_hosts(self, pool: str, now: float) -> list[PoolHost]:
        hosts = schema.pool_hosts
        query = select(hosts).where(hosts.c.pool == pool, hosts.c.expires_at >= now).order_by(hosts.c.host)
        with self._read() as conn:
            return [PoolHost(r.pool, r.host, r.processes, r.expires_at) for r in conn.execute(query)]
