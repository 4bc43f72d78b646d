"""`DeliveryLog`: the notification outbox's state in the job store.

A job submitted with targets carries them (`kvern_jobs.notify`) and a due time (`notify_due`, indexed). The
controller's outbox asks for finished jobs whose due time has passed, tries each target not yet done, logs every
attempt here (`kvern_deliveries`, shown on the job's GET), and then either clears the due time (every target
delivered or given up) or moves it to the next retry. All of it lives in the store, so a controller restarted
mid-way resumes where it stopped: at least once, never lost.

Not part of `JobStore`, like the scaling events: only the outbox writes here. It shares the store's engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from kvern.jobs import schema
from kvern.jobs.records import Job
from kvern.jobs.states import TERMINAL
from kvern.jobs.store import begin, read
from kvern.jobs.views import iso

DELIVERED = "delivered"
FAILED = "failed"  # tried again later
GAVE_UP = "gave_up"  # the last attempt failed too
DONE = (DELIVERED, GAVE_UP)


@dataclass(frozen=True)
class Delivery:
    """One attempt to tell one target."""

    target: str
    attempt: int
    at: float
    outcome: str
    detail: str

    def view(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "attempt": self.attempt,
            "at": iso(self.at),
            "outcome": self.outcome,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class OwedJob:
    job: Job
    targets: tuple[str, ...]
    deliveries: tuple[Delivery, ...]
    due: float  # the due time it was found with (claim compares it)

    def pending(self) -> list[tuple[str, int]]:
        """(target, attempts made so far) of each target not yet done."""
        return [
            (target, sum(1 for d in self.deliveries if d.target == target))
            for target in self.targets
            if not any(d.target == target and d.outcome in DONE for d in self.deliveries)
        ]


class DeliveryLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def owed(self, now: float, limit: int = 50) -> list[OwedJob]:
        """Finished jobs whose announcement is due, oldest due first (an index range, not a table scan)."""
        jobs = schema.jobs
        # The status as an expression: the planner then walks the notify_due index (the few owed jobs), not the
        # status index (every finished job).
        finished = func.coalesce(jobs.c.status, "").in_([s.value for s in TERMINAL])
        query = select(jobs).where(jobs.c.notify_due <= now, finished).order_by(jobs.c.notify_due).limit(limit)
        with read(self.engine) as conn:
            rows = list(conn.execute(query))
            logs = self._deliveries(conn, [row.id for row in rows])
        return [
            OwedJob(
                Job.from_row(row), tuple(json.loads(row.notify or "[]")), tuple(logs.get(row.id, ())), row.notify_due
            )
            for row in rows
        ]

    @staticmethod
    def _deliveries(conn: Connection, job_ids: Sequence[str]) -> dict[str, list[Delivery]]:
        if not job_ids:
            return {}
        d = schema.deliveries
        query = select(d).where(d.c.job_id.in_(list(job_ids))).order_by(d.c.id)
        found: dict[str, list[Delivery]] = {}
        for row in conn.execute(query):
            found.setdefault(row.job_id, []).append(Delivery(row.target, row.attempt, row.at, row.outcome, row.detail))
        return found

    def record(self, job_id: str, delivery: Delivery) -> None:
        with begin(self.engine) as conn:
            conn.execute(
                insert(schema.deliveries).values(
                    job_id=job_id,
                    target=delivery.target,
                    attempt=delivery.attempt,
                    at=delivery.at,
                    outcome=delivery.outcome,
                    detail=delivery.detail[:1000],
                )
            )

    def claim(self, owed: OwedJob, until: float) -> bool:
        """Take the job for one round: its due time moves to `until` only if no other controller moved it first
        (web tiers on several machines sharing one store announce each job once). Should this one die, the job
        is due again at `until`."""
        jobs = schema.jobs
        where = (jobs.c.id == owed.job.id) & (jobs.c.notify_due == owed.due)
        with begin(self.engine) as conn:
            return bool(conn.execute(update(jobs).where(where).values(notify_due=until)).rowcount)

    def reschedule(self, job_id: str, due: float | None) -> None:
        """When to look at the job again; None: nothing more is owed."""
        with begin(self.engine) as conn:
            conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(notify_due=due))

    def of_job(self, job_id: str) -> list[Delivery]:
        """Every attempt for the job, oldest first."""
        with read(self.engine) as conn:
            return self._deliveries(conn, [job_id]).get(job_id, [])
