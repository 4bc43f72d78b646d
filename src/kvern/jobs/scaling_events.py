"""`ScalingEventLog`: the autoscaler's decisions (pool, from, to, why), kept next to the jobs.

Not part of `JobStore`: only the autoscaler writes these and only the status report and the benchmarks read
them. It shares the job store's engine (same database, same table as before), so no second connection pool.
"""

from __future__ import annotations

from sqlalchemy import Engine, insert, select

from kvern.jobs import schema
from kvern.jobs.records import ScalingEvent
from kvern.jobs.store import begin, read


class ScalingEventLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, event: ScalingEvent) -> None:
        """Append one decision; raises StoreUnavailable when the store cannot be reached."""
        with begin(self.engine) as conn:
            conn.execute(
                insert(schema.scaling_events).values(
                    at=event.at,
                    pool=event.pool,
                    from_processes=event.from_processes,
                    to_processes=event.to_processes,
                    reason=event.reason,
                )
            )

    def latest(self, pool: str | None = None, limit: int = 20) -> list[ScalingEvent]:
        """Newest first, of one pool or of all."""
        ev = schema.scaling_events
        query = select(ev).order_by(ev.c.at.desc(), ev.c.id.desc()).limit(limit)
        if pool is not None:
            query = query.where(ev.c.pool == pool)
        with read(self.engine) as conn:
            return [ScalingEvent(r.at, r.pool, r.from_processes, r.to_processes, r.reason) for r in conn.execute(query)]
