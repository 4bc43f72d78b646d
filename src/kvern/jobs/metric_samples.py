"""`MetricSamples`: instance-wide Prometheus samples, kept in the job store.

The controller publishes them (kvern/observe/), every web head renders them at `/api/metrics`: whichever head
nginx picks, a scrape sees the same figures, and it reads this small table, never the jobs table. Histograms and
counters are stored cumulative, so they go on counting across controller restarts; the controller's place in the
stream of finished jobs is kept beside them (`kvern_metric_cursors`), in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from kvern.jobs import schema
from kvern.jobs.states import TERMINAL
from kvern.jobs.store import begin, read

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs


@dataclass(frozen=True)
class Sample:
    name: str  # the sample's full name (`kvern_job_run_seconds_bucket`)
    labels: Labels
    value: float
    updated_at: float = 0.0

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class FinishedJob:
    """What the job timings need of a finished job."""

    id: str
    task: str
    status: str
    created_at: float
    published_at: float | None
    queued_at: float | None
    started_at: float | None
    finished_at: float


@dataclass(frozen=True)
class Cursor:
    at: float
    job_id: str


@dataclass(frozen=True)
class CursorMove:
    name: str
    found: Cursor | None  # where it was when read (None: there was none)
    to: Cursor


class CursorMoved(Exception):
    """Another publisher moved the cursor first: reload the counts and the cursor from the store."""


class MetricSamples:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def all(self) -> list[Sample]:
        table = schema.metric_samples
        with read(self.engine) as conn:
            rows = conn.execute(select(table).order_by(table.c.name, table.c.labels))
            return [Sample(r.name, tuple(tuple(p) for p in json.loads(r.labels)), r.value, r.updated_at) for r in rows]

    def of_names(self, names: Sequence[str]) -> list[Sample]:
        return [sample for sample in self.all() if sample.name in set(names)]

    def publish(self, samples: Iterable[Sample], now: float, cursor: CursorMove | None = None) -> None:
        """Write each sample (insert or replace its value), and move the cursor if given, in one transaction.
        CursorMoved (nothing written) when the cursor is no longer where this publisher found it: another
        controller counted meanwhile, and these counts would count its jobs twice."""
        try:
            with begin(self.engine) as conn:
                _upsert(conn, list(samples), now)
                if cursor is not None:
                    _move_cursor(conn, cursor)
        except IntegrityError as exc:  # the first cursor, inserted by two at once
            raise CursorMoved(str(exc)) from exc

    def cursor(self, name: str) -> Cursor | None:
        table = schema.metric_cursors
        with read(self.engine) as conn:
            row = conn.execute(select(table).where(table.c.name == name)).first()
        return Cursor(row.at, row.job_id) if row else None

    def finished_since(self, after: Cursor, until: float, limit: int) -> list[FinishedJob]:
        """Jobs finished after `after` and no later than `until`, in finishing order (the status/finished_at
        index: the range since the last round, not the table)."""
        jobs = schema.jobs
        later = or_(jobs.c.finished_at > after.at, and_(jobs.c.finished_at == after.at, jobs.c.id > after.job_id))
        query = (
            select(
                jobs.c.id,
                jobs.c.task,
                jobs.c.status,
                jobs.c.created_at,
                jobs.c.published_at,
                jobs.c.queued_at,
                jobs.c.started_at,
                jobs.c.finished_at,
            )
            # `finished_at >= after.at` besides `later`: a range the index can seek to (an OR alone it cannot)
            .where(
                jobs.c.status.in_([s.value for s in TERMINAL]),
                jobs.c.finished_at >= after.at,
                later,
                jobs.c.finished_at <= until,
            )
            .order_by(jobs.c.finished_at, jobs.c.id)
            .limit(limit)
        )
        with read(self.engine) as conn:
            return [FinishedJob(*row) for row in conn.execute(query)]

    def scaling_decisions(self) -> dict[tuple[str, str], int]:
        """(pool, "out" | "in") -> decisions the autoscaler recorded."""
        events = schema.scaling_events
        grew = (events.c.to_processes > events.c.from_processes).label("grew")
        query = select(events.c.pool, grew, func.count()).group_by(events.c.pool, grew)
        with read(self.engine) as conn:
            return {(pool, "out" if out else "in"): count for pool, out, count in conn.execute(query)}


def _upsert(conn: Connection, samples: list[Sample], now: float) -> None:
    """Three statements whatever the number of samples: which exist, update those, insert the others."""
    table = schema.metric_samples
    rows: list[dict[str, Any]] = [
        {"k_name": s.name, "k_labels": json.dumps([list(p) for p in s.labels], separators=(",", ":")), "v": s.value}
        for s in samples
    ]
    names = sorted({sample.name for sample in samples})
    existing = set(conn.execute(select(table.c.name, table.c.labels).where(table.c.name.in_(names))).tuples())
    updates = [row for row in rows if (row["k_name"], row["k_labels"]) in existing]
    inserts = [row for row in rows if (row["k_name"], row["k_labels"]) not in existing]
    if updates:
        where = and_(table.c.name == bindparam("k_name"), table.c.labels == bindparam("k_labels"))
        conn.execute(update(table).where(where).values(value=bindparam("v"), updated_at=now), updates)
    if inserts:
        values = [{"name": r["k_name"], "labels": r["k_labels"], "value": r["v"], "updated_at": now} for r in inserts]
        conn.execute(insert(table), values)


def _move_cursor(conn: Connection, move: CursorMove) -> None:
    table = schema.metric_cursors
    values = {"at": move.to.at, "job_id": move.to.job_id}
    if move.found is None:
        conn.execute(insert(table).values(name=move.name, **values))
        return
    was = (table.c.name == move.name) & (table.c.at == move.found.at) & (table.c.job_id == move.found.job_id)
    if conn.execute(update(table).where(was).values(**values)).rowcount == 0:
        raise CursorMoved(f"metrics cursor {move.name!r} moved since it was read")
