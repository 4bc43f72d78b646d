"""`JobStore`: every state change of every job, fenced by attempt number.

One implementation over SQLAlchemy Core serves SQLite (the default, in the state dir) and PostgreSQL (shared by
several machines). Each write that a worker makes names the attempt it belongs to, and only lands while that
attempt is the job's current one and the job is not finished: so a late duplicate can never overwrite an
outcome, and a state never moves backwards.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import NullPool, StaticPool

from kvern.errors import StoreUnavailable
from kvern.jobs import schema

# Re-exported (the `as` form tells mypy so): callers import it from here, where it was first defined.
from kvern.jobs.base import NOT_BEGUN, ArtifactsTooLarge
from kvern.jobs.base import IdempotencyConflict as IdempotencyConflict  # noqa: PLC0414
from kvern.jobs.batch import Answer, AttemptBegan, ClaimAttempt, RecordSuccess, WorkerOp
from kvern.jobs.coordination import CoordinationSql
from kvern.jobs.records import ArtifactInfo, Attempt, Claim, Job, NewJob, StuckSuspect, new_job_row
from kvern.jobs.states import ACTIVE, REPLAYABLE, TERMINAL, JobStatus, finished_values

SQLITE_BUSY_TIMEOUT_MS = 15_000
READ_ONLY_OPTION = "kvern_read_only"
SCHEMA_LOCK_KEY = 0x6B7665726E  # "kvern": the advisory lock held while the schema is made (PostgreSQL)


def make_engine(url: str, *, persistent: bool = False) -> Engine:
    """An engine with the settings each backend needs for many processes writing at once.

    `persistent`: one connection kept open and reused by one thread (a node's store writer): no connect,
    PRAGMAs or pre-ping per transaction. A connection the database dropped is replaced on its next use.
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not url.startswith("sqlite"):
        if persistent:
            return fresh_pool_after_fork(create_engine(url, pool_size=1, max_overflow=0, pool_recycle=300))
        pooled = create_engine(url, pool_size=4, max_overflow=8, pool_pre_ping=True, pool_recycle=300)
        return fresh_pool_after_fork(pooled)
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    if persistent:  # created in the thread that uses it; check_same_thread only trips the pool's own close
        engine = create_engine(url, poolclass=StaticPool, connect_args={**connect_args, "check_same_thread": False})
    else:
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def fresh_pool_after_fork(engine: Engine) -> Engine:
    """A forked child (a worker's task process) must not use the parent's pooled connections: two processes on
    one socket corrupt the protocol. The child starts with an empty pool and leaves the parent's connections
    open for the parent (SQLAlchemy's documented `dispose(close=False)`)."""
    alive = weakref.ref(engine)  # the hook must not keep a discarded engine alive

    def in_child() -> None:
        engine = alive()
        if engine is not None:
            engine.dispose(close=False)

    os.register_at_fork(after_in_child=in_child)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are opened by _sqlite_on_begin, so pysqlite must not open its own.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an accepted job survives a power cut, not just a crash
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # Writers take the write lock up front: a deferred transaction that upgrades later can fail with
    # SQLITE_BUSY. Readers stay deferred so they never wait for the lock (WAL lets them read meanwhile).
    if connection.get_execution_options().get(READ_ONLY_OPTION):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def begin(engine: Engine) -> Iterator[Connection]:
    """A write transaction; a store that cannot be reached raises StoreUnavailable."""
    try:
        with engine.begin() as conn:
            yield conn
    except OperationalError as exc:
        raise StoreUnavailable(f"job store unavailable: {exc.orig}") from exc


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read-only connection (SQLite: a deferred transaction that never waits for the write lock)."""
    try:
        with engine.connect() as conn:
            yield conn.execution_options(**{READ_ONLY_OPTION: True})
    except OperationalError as exc:
        raise StoreUnavailable(f"job store unavailable: {exc.orig}") from exc


def add_missing_columns(conn: Connection) -> list[str]:
    """Add the nullable columns a newer kvern declares to the tables of an older store; returns them.

    `create_all` creates missing tables only. Adding a nullable column is the one change made in place (the
    same statement on SQLite and PostgreSQL), so a state dir made by an earlier release keeps working.
    """
    added = []
    inspector = inspect(conn)
    for table in schema.metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"job store: {table.name}.{column.name} is missing and cannot be added in place")
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
            added.append(f"{table.name}.{column.name}")
    return added


def add_missing_indexes(conn: Connection) -> None:
    """Create the indexes a newer kvern declares on the tables of an older store (`create_all` makes them only
    with a new table)."""
    for table in schema.metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)


class JobStore(CoordinationSql):
    """The job store kvern runs: SQLAlchemy Core over SQLite or PostgreSQL (implements JobStoreProtocol)."""

    def __init__(self, url: str, *, persistent: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, persistent=persistent)
        self._batch = threading.local()  # the connection of a write_batch under way in this thread

    def create_schema(self) -> None:
        with self._begin() as conn:
            if conn.dialect.name == "postgresql":
                # Several hosts may start at once on one store: CREATE TABLE/TYPE are not safe side by side there
                # (a duplicate type error), so the first takes the lock and the others find the tables made.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            schema.metadata.create_all(conn)
            add_missing_columns(conn)
            add_missing_indexes(conn)

    def close(self) -> None:
        self.engine.dispose()

    def _begin(self) -> AbstractContextManager[Connection]:
        batch: Connection | None = getattr(self._batch, "conn", None)
        return nullcontext(batch) if batch is not None else begin(self.engine)

    def _read(self) -> AbstractContextManager[Connection]:
        batch: Connection | None = getattr(self._batch, "conn", None)
        return nullcontext(batch) if batch is not None else read(self.engine)

    def write_batch(self, ops: Sequence[WorkerOp]) -> list[Answer]:
        """The batch's ops in one transaction: one commit (one fsync) for all. SQLite: one BEGIN IMMEDIATE.

        The common cases go set-based first, fenced in the statements themselves: the began marks (all of them,
        first: a mark only ever saves an attempt that did begin from being given back), claims of jobs that may
        simply start their next attempt (one UPDATE ... RETURNING for all), and successes of attempts that still
        own their job (one executemany), each for a job no other op of the batch names. Every other op, and
        those the fence refused there, then runs its own method, in order. An op's error rolls the whole batch
        back."""
        answers: list[Answer | None] = [None] * len(ops)
        with self._begin() as conn:
            self._batch.conn = conn
            try:
                self._mark_began_together(conn, ops, answers)
                self._claim_together(conn, ops, answers)
                self._succeed_together(conn, ops, answers)
                return [
                    answer if answer is not None else op.apply(self) for op, answer in zip(ops, answers, strict=True)
                ]
            finally:
                self._batch.conn = None

    @staticmethod
    def _alone(ops: Sequence[WorkerOp], kind: type) -> dict[str, int]:
        """job id -> index of the ops of `kind` whose job no other op of the batch names: ops on different jobs
        touch different rows, so taking these first leaves every answer as the given order makes it. Began marks
        do not count: they are all applied before anything else (a short task's mark and outcome share a batch)."""
        seen = Counter(op.job_id for op in ops if not isinstance(op, AttemptBegan))
        return {op.job_id: index for index, op in enumerate(ops) if isinstance(op, kind) and seen[op.job_id] == 1}

    @staticmethod
    def _mark_began_together(conn: Connection, ops: Sequence[WorkerOp], answers: list[Answer | None]) -> None:
        marks = [(index, op) for index, op in enumerate(ops) if isinstance(op, AttemptBegan)]
        if not marks:
            return
        at = schema.attempts
        conn.execute(
            update(at)
            .where(at.c.job_id == bindparam("b_id"), at.c.attempt == bindparam("b_attempt"), at.c.began_at.is_(None))
            .values(began_at=bindparam("b_at")),
            [{"b_id": op.job_id, "b_attempt": op.attempt, "b_at": op.at} for _, op in marks],
        )
        for index, _ in marks:
            answers[index] = True

    def _claim_together(self, conn: Connection, ops: Sequence[WorkerOp], answers: list[Answer | None]) -> None:
        """Start the next attempt of every job that is active, not asked to stop, and within its budget. A job
        whose open attempt never began is left to `claim_attempt`, which gives that attempt back (rare: a node
        died with it claimed ahead)."""
        first = self._alone(ops, ClaimAttempt)
        if not first:
            return
        now, jobs, at = time.time(), schema.jobs, schema.attempts
        started = conn.execute(
            update(jobs)
            .where(
                jobs.c.id.in_(list(first)),
                jobs.c.status.in_([s.value for s in ACTIVE]),
                jobs.c.cancel_requested.is_(None),
                jobs.c.attempts < jobs.c.max_attempts,
                ~exists().where(self._not_begun(jobs.c.id, jobs.c.attempts)),
            )
            .values(
                status=JobStatus.RUNNING.value,
                attempts=jobs.c.attempts + 1,
                retry_at=None,
                started_at=func.coalesce(jobs.c.started_at, now),
                published_at=func.coalesce(jobs.c.published_at, now),
            )
            .returning(jobs.c.id, jobs.c.attempts, jobs.c.max_attempts)
        ).all()
        if not started:
            return
        ids = [row.id for row in started]
        # An earlier attempt still open was lost with its worker process.
        conn.execute(
            update(at).where(at.c.job_id.in_(ids), at.c.finished_at.is_(None)).values(finished_at=now, outcome="lost")
        )
        workers = {row.id: cast(ClaimAttempt, ops[first[row.id]]).worker for row in started}
        conn.execute(
            insert(at),
            [{"job_id": r.id, "attempt": r.attempts, "worker": workers[r.id], "started_at": now} for r in started],
        )
        for row in started:
            answers[first[row.id]] = Claim(run=True, attempt=row.attempts, tracked=True, max_attempts=row.max_attempts)

    def _succeed_together(self, conn: Connection, ops: Sequence[WorkerOp], answers: list[Answer | None]) -> None:
        """Record the successes whose attempt still owns its running job, with no cancel asked."""
        first = self._alone(ops, RecordSuccess)
        if not first:
            return
        now, jobs, at = time.time(), schema.jobs, schema.attempts
        wins = [cast(RecordSuccess, ops[index]) for index in first.values()]
        conn.execute(
            update(jobs)
            .where(
                jobs.c.id == bindparam("b_id"),
                jobs.c.attempts == bindparam("b_attempt"),
                jobs.c.status == JobStatus.RUNNING.value,
                jobs.c.cancel_requested.is_(None),
            )
            .values(
                status=JobStatus.SUCCEEDED.value,
                progress=100,
                result=bindparam("b_result"),
                error=None,
                outcome_attempt=bindparam("b_attempt"),
                finished_at=now,
            ),
            [{"b_id": op.job_id, "b_attempt": op.attempt, "b_result": json.dumps(op.result)} for op in wins],
        )
        # Which landed: this transaction's finish time is on exactly those rows (an executemany returns no rows).
        landed = {
            (row.id, row.outcome_attempt)
            for row in conn.execute(
                select(jobs.c.id, jobs.c.outcome_attempt).where(
                    jobs.c.id.in_(list(first)), jobs.c.status == JobStatus.SUCCEEDED.value, jobs.c.finished_at == now
                )
            )
        }
        won = [op for op in wins if (op.job_id, op.attempt) in landed]
        if not won:
            return
        conn.execute(
            update(at)
            .where(at.c.job_id == bindparam("b_id"), at.c.attempt == bindparam("b_attempt"))
            .values(finished_at=now, outcome=JobStatus.SUCCEEDED.value, error=None, traceback=None),
            [{"b_id": op.job_id, "b_attempt": op.attempt} for op in won],
        )
        for op in won:
            answers[first[op.job_id]] = True

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(select(1))

    # -- submission ---------------------------------------------------------------------------------------

    def create_jobs(self, news: Sequence[NewJob]) -> list[Job]:
        """Record jobs without idempotency keys in one transaction (one commit for all of them)."""
        rows = [new_job_row(new) for new in news]
        if any(new.idempotency_key is not None for new in news):
            raise ValueError("create_jobs takes jobs without an idempotency key; use create_job")
        with self._begin() as conn:
            conn.execute(insert(schema.jobs), rows)
        return [self._created(row) for row in rows]

    def create_job(self, new: NewJob) -> tuple[Job, bool]:
        """Record a job; returns (job, created). An idempotency key returns the job it made before."""
        row = new_job_row(new)
        try:
            with self._begin() as conn:
                conn.execute(insert(schema.jobs).values(**row))
        except IntegrityError:
            existing = self.find_by_idempotency_key(new.idempotency_key) if new.idempotency_key else None
            if existing is None:
                raise
            if existing.request_hash != new.request_hash:
                raise IdempotencyConflict(existing) from None
            return existing, False
        return self._created(row), True

    @staticmethod
    def _created(row: dict[str, Any]) -> Job:
        # Built from what was written: no second round trip on the submission path.
        return Job.from_row(SimpleNamespace(**row))

    def find_by_idempotency_key(self, key: str) -> Job | None:
        with self._read() as conn:
            row = conn.execute(select(schema.jobs).where(schema.jobs.c.idempotency_key == key)).first()
        return Job.from_row(row) if row else None

    def mark_published(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        with self._begin() as conn:
            conn.execute(
                update(schema.jobs)
                .where(schema.jobs.c.id.in_(job_ids), schema.jobs.c.published_at.is_(None))
                .values(published_at=time.time())
            )

    def withdraw(self, job_id: str) -> bool:
        """Forget a job whose message the broker never confirmed; False if a worker has already claimed it."""
        jobs = schema.jobs
        with self._begin() as conn:
            result = conn.execute(
                jobs.delete().where(
                    jobs.c.id == job_id,
                    jobs.c.status == JobStatus.QUEUED.value,
                    jobs.c.attempts == 0,
                )
            )
        return result.rowcount == 1

    def unpublished(self, older_than_s: float, limit: int = 500) -> list[Job]:
        """Queued jobs whose message the broker never confirmed: the outbox relay publishes them again."""
        cutoff = time.time() - older_than_s
        query = (
            select(schema.jobs)
            .where(
                schema.jobs.c.published_at.is_(None),
                schema.jobs.c.status == JobStatus.QUEUED.value,
                schema.jobs.c.created_at < cutoff,
            )
            .order_by(schema.jobs.c.created_at)
            .limit(limit)
        )
        with self._read() as conn:
            return [Job.from_row(row) for row in conn.execute(query)]

    # -- execution (worker side) ------------------------------------------------------------------------

    def claim_attempt(self, job_id: str, worker: str) -> Claim:
        """Start a new attempt, unless the job already has an outcome (a duplicate delivery)."""
        now = time.time()
        jobs = schema.jobs
        with self._begin() as conn:
            row = conn.execute(
                select(jobs.c.status, jobs.c.attempts, jobs.c.max_attempts, jobs.c.cancel_requested).where(
                    jobs.c.id == job_id
                )
            ).first()
            if row is None:
                return Claim(run=True, attempt=1, tracked=False)
            # A job whose cancel was asked is not run again (its attempt was lost, and it was queued again).
            if JobStatus(row.status) not in ACTIVE or self._cancel_asked(conn, job_id, row.cancel_requested, now):
                return Claim(run=False, attempt=row.attempts, tracked=True)
            # The open attempt was claimed (ahead, at dispatch) but never began: its node died first. Not counted.
            given_back = int(row.status == JobStatus.RUNNING.value and self._never_began(conn, job_id, row.attempts))
            if row.attempts >= row.max_attempts + given_back:
                # Every attempt it was allowed is spent (the last ones died with their processes): bury it.
                self._bury(conn, job_id, "attempt budget spent: the last attempt was lost with its worker process", now)
                return Claim(run=False, attempt=row.attempts, tracked=True)
            attempt = row.attempts + 1
            claimed = conn.execute(
                update(jobs)
                # The status check too: an outcome committed since the SELECT (PostgreSQL) must stand.
                .where(
                    jobs.c.id == job_id,
                    jobs.c.attempts == row.attempts,
                    jobs.c.status.in_([s.value for s in ACTIVE]),
                )
                .values(
                    status=JobStatus.RUNNING.value,
                    attempts=attempt,
                    max_attempts=jobs.c.max_attempts + given_back,
                    retry_at=None,
                    started_at=func.coalesce(jobs.c.started_at, now),
                    published_at=func.coalesce(jobs.c.published_at, now),
                )
            )
            if claimed.rowcount != 1:  # a concurrent delivery claimed it first, or it just finished
                return Claim(run=False, attempt=row.attempts, tracked=True)
            # An earlier attempt still open was lost with its worker process.
            conn.execute(
                update(schema.attempts)
                .where(schema.attempts.c.job_id == job_id, schema.attempts.c.finished_at.is_(None))
                .values(finished_at=now, outcome="lost", error=NOT_BEGUN if given_back else None)
            )
            conn.execute(insert(schema.attempts).values(job_id=job_id, attempt=attempt, worker=worker, started_at=now))
        return Claim(run=True, attempt=attempt, tracked=True, max_attempts=row.max_attempts + given_back)

    @staticmethod
    def _not_begun(job_id: Any, attempt: Any) -> Any:
        """The condition on kvern_attempts: `attempt` of the job is open and no task process began it."""
        at = schema.attempts
        return and_(at.c.job_id == job_id, at.c.attempt == attempt, at.c.finished_at.is_(None), at.c.began_at.is_(None))

    def _never_began(self, conn: Connection, job_id: str, attempt: int) -> bool:
        return bool(conn.execute(select(exists().where(self._not_begun(job_id, attempt)))).scalar())

    def mark_began(self, job_id: str, attempt: int, at: float) -> None:
        with self._begin() as conn:
            self._mark_began_together(conn, [AttemptBegan(job_id, attempt, at)], [None])

    def _cancel_asked(self, conn: Connection, job_id: str, asked_at: float | None, now: float) -> bool:
        """A job whose cancel was asked ends cancelled now, its open attempt with it; False if none was asked."""
        if asked_at is None:
            return False
        self._cancel_now(conn, and_(schema.jobs.c.id == job_id, schema.jobs.c.status.in_([s.value for s in ACTIVE])))
        at = schema.attempts
        conn.execute(
            update(at)
            .where(at.c.job_id == job_id, at.c.finished_at.is_(None))
            .values(finished_at=now, outcome=JobStatus.CANCELLED.value)
        )
        return True

    @staticmethod
    def _cancel_now(conn: Connection, where: Any, **values: Any) -> bool:
        """The job matching `where` becomes cancelled; False when none matched."""
        cancelled = {"status": JobStatus.CANCELLED.value, "finished_at": time.time(), "retry_at": None}
        return conn.execute(update(schema.jobs).where(where).values(**cancelled, **values)).rowcount == 1

    def _bury(self, conn: Connection, job_id: str, error: str, now: float, only_if: Any = None) -> bool:
        """Make an active job dead (`only_if`: a further condition); the attempt still open is closed with it."""
        jobs, at = schema.jobs, schema.attempts
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_([s.value for s in ACTIVE]))
            .where(only_if if only_if is not None else true())
            .values(status=JobStatus.DEAD.value, error=error, finished_at=now)
        )
        if result.rowcount != 1:
            return False
        conn.execute(
            update(at)
            .where(at.c.job_id == job_id, at.c.finished_at.is_(None))
            .values(finished_at=now, outcome=JobStatus.DEAD.value, error=error)
        )
        return True

    def _fence(self, job_id: str, attempt: int) -> Any:
        jobs = schema.jobs
        return and_(jobs.c.id == job_id, jobs.c.attempts == attempt, jobs.c.status == JobStatus.RUNNING.value)

    def record_progress(self, job_id: str, attempt: int, pct: int, message: str | None = None) -> bool:
        with self._begin() as conn:
            result = conn.execute(
                update(schema.jobs)
                .where(self._fence(job_id, attempt), schema.jobs.c.progress <= pct)
                .values(progress=pct, progress_message=message)
            )
        return result.rowcount == 1

    def save_artifact(
        self, job_id: str, attempt: int, name: str, content_type: str, data: bytes, max_total: int | None = None
    ) -> None:
        values = {
            "job_id": job_id,
            "attempt": attempt,
            "name": name,
            "content_type": content_type,
            "size": len(data),
            "data": data,
            "created_at": time.time(),
        }
        with self._begin() as conn:
            conn.execute(
                schema.artifacts.delete().where(
                    schema.artifacts.c.job_id == job_id,
                    schema.artifacts.c.attempt == attempt,
                    schema.artifacts.c.name == name,
                )
            )
            conn.execute(insert(schema.artifacts).values(**values))
            if max_total is not None:
                self._check_artifacts_total(conn, job_id, attempt, max_total)  # raising rolls the save back

    @staticmethod
    def _check_artifacts_total(conn: Connection, job_id: str, attempt: int, max_total: int) -> None:
        a = schema.artifacts
        query = select(func.coalesce(func.sum(a.c.size), 0)).where(a.c.job_id == job_id, a.c.attempt == attempt)
        total = int(conn.execute(query).scalar_one())
        if total > max_total:
            raise ArtifactsTooLarge(f"the artifacts of job {job_id} would hold {total} bytes, over {max_total}")

    def record_success(self, job_id: str, attempt: int, result: Any) -> bool:
        """Commit the outcome of `attempt`; False when another attempt owns the job or it is finished."""
        values = {
            "status": JobStatus.SUCCEEDED.value,
            "progress": 100,
            "result": json.dumps(result),
            "error": None,
        }
        return self._record_outcome(job_id, attempt, values, JobStatus.SUCCEEDED, None)

    def record_failure(
        self, job_id: str, attempt: int, error: str, status: JobStatus, traceback: str | None = None
    ) -> bool:
        assert status in TERMINAL
        values = {"status": status.value, "error": error}
        return self._record_outcome(job_id, attempt, values, status, error, traceback)

    def _record_outcome(
        self,
        job_id: str,
        attempt: int,
        values: dict[str, Any],
        outcome: JobStatus,
        error: str | None,
        traceback: str | None = None,
    ) -> bool:
        now = time.time()
        with self._begin() as conn:
            result = conn.execute(
                update(schema.jobs)
                .where(self._fence(job_id, attempt), schema.jobs.c.cancel_requested.is_(None))
                .values(**values, outcome_attempt=attempt, finished_at=now)
            )
            won = result.rowcount == 1
            closed_as = outcome.value if won else "superseded"
            if not won and self._cancel_attempt(conn, job_id, attempt):
                won, closed_as = True, JobStatus.CANCELLED.value
            self._close_attempt(conn, job_id, attempt, closed_as, error, now, won=won, traceback=traceback)
        return won

    def _cancel_attempt(self, conn: Connection, job_id: str, attempt: int) -> bool:
        """Fenced: the attempt ends, and a cancel was asked while it ran: the job becomes cancelled."""
        where = and_(self._fence(job_id, attempt), schema.jobs.c.cancel_requested.is_not(None))
        return self._cancel_now(conn, where, outcome_attempt=attempt)

    def record_retry(
        self, job_id: str, attempt: int, error: str, traceback: str | None = None, delay_s: float = 0.0
    ) -> bool:
        """The attempt failed and another will follow after `delay_s`: keep the error, the job stays running."""
        now = time.time()
        with self._begin() as conn:
            result = conn.execute(
                update(schema.jobs)
                .where(self._fence(job_id, attempt), schema.jobs.c.cancel_requested.is_(None))
                .values(error=error, retry_at=now + delay_s)
            )
            won = result.rowcount == 1
            if not won and self._cancel_attempt(conn, job_id, attempt):  # no retry follows a cancel
                self._close_attempt(conn, job_id, attempt, JobStatus.CANCELLED.value, error, now, won=True)
                return False
            self._close_attempt(conn, job_id, attempt, "retry", error, now, won=won, traceback=traceback)
        return won

    def _close_attempt(
        self,
        conn: Connection,
        job_id: str,
        attempt: int,
        outcome: str,
        error: str | None,
        now: float,
        *,
        won: bool,
        traceback: str | None = None,
    ) -> None:
        at = schema.attempts
        query = update(at).where(at.c.job_id == job_id, at.c.attempt == attempt)
        if not won:  # a write that lost the fence must not overwrite an outcome the attempt already has
            query = query.where(or_(at.c.outcome.is_(None), at.c.outcome == "lost"))
        conn.execute(query.values(finished_at=now, outcome=outcome, error=error, traceback=traceback))

    def mark_dead(self, job_id: str, error: str) -> bool:
        """The broker dead-lettered the job's message (delivery limit): whatever attempt ran, it is over."""
        with self._begin() as conn:
            return self._bury(conn, job_id, error, time.time())

    def stuck_suspects(self, started_before: float, retry_due_before: float, limit: int = 500) -> list[StuckSuspect]:
        """Running jobs whose current attempt started before `started_before` (and waits for no retry), or
        whose retry was due before `retry_due_before` with no attempt started since (a claim clears it)."""
        jobs, at = schema.jobs, schema.attempts
        started = func.coalesce(at.c.started_at, jobs.c.started_at, jobs.c.created_at)
        query = (
            select(
                jobs.c.id, jobs.c.task, jobs.c.queue, jobs.c.attempts, started.label("attempt_started"), jobs.c.retry_at
            )
            .select_from(jobs.outerjoin(at, and_(at.c.job_id == jobs.c.id, at.c.attempt == jobs.c.attempts)))
            .where(
                jobs.c.status == JobStatus.RUNNING.value,
                or_(
                    and_(jobs.c.retry_at.is_(None), started < started_before),
                    jobs.c.retry_at < retry_due_before,
                ),
            )
            .order_by(started)
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(query)
            return [StuckSuspect(r.id, r.task, r.queue, r.attempts, r.attempt_started, r.retry_at) for r in rows]

    def recover_stuck(self, job_id: str, attempt: int, reason: str, *, requeue: bool = True) -> JobStatus | None:
        """Queue a stuck job again (QUEUED, to be published) while it has attempts left and `requeue`, else bury
        it (DEAD).

        Fenced on `attempt`: None when the job moved on since it was found (an attempt started or finished).
        """
        jobs = schema.jobs
        now = time.time()
        fence = and_(jobs.c.id == job_id, jobs.c.attempts == attempt, jobs.c.status == JobStatus.RUNNING.value)
        with self._begin() as conn:
            if requeue and self._requeue_stuck(conn, fence, job_id, reason, now):
                return JobStatus.QUEUED
            if self._bury(conn, job_id, reason, now, only_if=fence):
                return JobStatus.DEAD
        return None

    @staticmethod
    def _requeue_stuck(conn: Connection, fence: Any, job_id: str, reason: str, now: float) -> bool:
        jobs, at = schema.jobs, schema.attempts
        requeued = conn.execute(
            update(jobs)
            .where(fence, jobs.c.attempts < jobs.c.max_attempts)
            .values(status=JobStatus.QUEUED.value, published_at=None, queued_at=now, retry_at=None, progress=0)
        )
        if requeued.rowcount != 1:
            return False
        conn.execute(
            update(at)
            .where(at.c.job_id == job_id, at.c.finished_at.is_(None))
            .values(finished_at=now, outcome="lost", error=reason)
        )
        return True

    def replay(self, job_id: str) -> Job | None:
        """Send a failed or dead job round again: same id, attempts and history kept."""
        jobs = schema.jobs
        with self._begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status.in_([s.value for s in REPLAYABLE]))
                .values(
                    status=JobStatus.QUEUED.value,
                    published_at=None,
                    finished_at=None,
                    outcome_attempt=None,
                    progress=0,
                    retry_at=None,
                    cancel_requested=None,
                    queued_at=time.time(),
                    # A fresh round of attempts, as many as the first one had (an older row: its budget).
                    max_attempts=jobs.c.attempts + func.coalesce(jobs.c.round_attempts, jobs.c.max_attempts),
                )
            )
        return self.get(job_id) if result.rowcount == 1 else None

    def cancel(self, job_id: str) -> Job | None:
        """A queued job, or a running one waiting out a retry's backoff, is cancelled at once: its message (or
        its retry's) stays in the broker, and the worker that gets it finds the job no longer active and skips
        it. A running attempt is asked to stop; its end is recorded as cancelled. None for any other job."""
        jobs = schema.jobs
        running = and_(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
        waiting = or_(jobs.c.status == JobStatus.QUEUED.value, and_(running, jobs.c.retry_at.is_not(None)))
        with self._begin() as conn:
            if not self._cancel_now(conn, and_(jobs.c.id == job_id, waiting)):
                asked = conn.execute(
                    update(jobs)
                    .where(running)
                    .values(cancel_requested=func.coalesce(jobs.c.cancel_requested, time.time()))
                )
                if asked.rowcount != 1:
                    return None
        return self.get(job_id)

    def is_cancelled(self, job_id: str) -> bool:
        jobs = schema.jobs
        with self._read() as conn:
            row = conn.execute(select(jobs.c.status, jobs.c.cancel_requested).where(jobs.c.id == job_id)).first()
        return row is None or row.cancel_requested is not None or row.status == JobStatus.CANCELLED.value

    # -- erasure ----------------------------------------------------------------------------------------

    def erase(self, job_id: str) -> bool:
        with self._begin() as conn:
            return self._erase_ids(conn, [job_id]) == 1

    def erase_subject(self, subject: str) -> int:
        jobs = schema.jobs
        with self._begin() as conn:
            ids = [row.id for row in conn.execute(select(jobs.c.id).where(jobs.c.subject == subject))]
            return self._erase_ids(conn, ids)

    def purge_finished(self, statuses: Sequence[JobStatus], finished_before: float, limit: int = 500) -> int:
        jobs = schema.jobs
        query = (
            select(jobs.c.id)
            .where(jobs.c.status.in_(finished_values(statuses)), jobs.c.finished_at < finished_before)
            .order_by(jobs.c.finished_at, jobs.c.id)
            .limit(limit)
        )
        with self._begin() as conn:
            return self._erase_ids(conn, [row.id for row in conn.execute(query)])

    @staticmethod
    def _erase_ids(conn: Connection, job_ids: Sequence[str]) -> int:
        """Delete the jobs and every row that names them (children first: the foreign keys); returns how many."""
        if not job_ids:
            return 0
        ids = list(job_ids)
        # Lock the jobs first (PostgreSQL): an artifact or attempt a running task adds meanwhile then waits, and
        # fails on the foreign key once they are gone, instead of failing this erasure.
        conn.execute(select(schema.jobs.c.id).where(schema.jobs.c.id.in_(ids)).with_for_update())
        conn.execute(schema.artifacts.delete().where(schema.artifacts.c.job_id.in_(ids)))
        conn.execute(schema.attempts.delete().where(schema.attempts.c.job_id.in_(ids)))
        conn.execute(schema.deliveries.delete().where(schema.deliveries.c.job_id.in_(ids)))  # notification log
        return int(conn.execute(schema.jobs.delete().where(schema.jobs.c.id.in_(ids))).rowcount)

    # -- reading ----------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._read() as conn:
            row = conn.execute(select(schema.jobs).where(schema.jobs.c.id == job_id)).first()
            if row is None:
                return None
            return Job.from_row(row, self._artifact_infos(conn, job_id, row.outcome_attempt))

    def _artifact_infos(self, conn: Connection, job_id: str, attempt: int | None) -> tuple[ArtifactInfo, ...]:
        if attempt is None:
            return ()
        a = schema.artifacts
        rows = conn.execute(
            select(a.c.name, a.c.content_type, a.c.size)
            .where(a.c.job_id == job_id, a.c.attempt == attempt)
            .order_by(a.c.name)
        )
        return tuple(ArtifactInfo(r.name, r.content_type, r.size) for r in rows)

    def artifact(self, job_id: str, name: str) -> tuple[str, bytes] | None:
        """The artifact of the attempt whose outcome was recorded; a losing attempt's files stay hidden."""
        a, jobs = schema.artifacts, schema.jobs
        query = (
            select(a.c.content_type, a.c.data)
            .select_from(a.join(jobs, jobs.c.id == a.c.job_id))
            .where(a.c.job_id == job_id, a.c.name == name, a.c.attempt == jobs.c.outcome_attempt)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return (row.content_type, row.data) if row else None

    def _served_artifact(self, job_id: str, name: str) -> Any:
        """The where-clause of the winning attempt's artifact `name` (artifacts joined with jobs)."""
        a, jobs = schema.artifacts, schema.jobs
        return and_(
            a.c.job_id == job_id, a.c.name == name, a.c.attempt == jobs.c.outcome_attempt, jobs.c.id == a.c.job_id
        )

    def artifact_info(self, job_id: str, name: str) -> ArtifactInfo | None:
        a = schema.artifacts
        query = select(a.c.name, a.c.content_type, a.c.size).where(self._served_artifact(job_id, name))
        with self._read() as conn:
            row = conn.execute(query).first()
        return ArtifactInfo(row.name, row.content_type, row.size) if row else None

    def artifact_chunk(self, job_id: str, name: str, offset: int, size: int) -> bytes | None:
        # substr over the blob (SQLite) or bytea (PostgreSQL): only this slice leaves the database.
        a = schema.artifacts
        query = select(func.substr(a.c.data, offset + 1, size).label("chunk")).where(
            self._served_artifact(job_id, name)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else bytes(row.chunk or b"")

    def list_jobs(
        self, status: JobStatus | None, limit: int, before: float | None = None, owner: str | None = None
    ) -> list[Job]:
        """Newest first; `before` (a created_at) pages through older jobs."""
        jobs = schema.jobs
        query = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        if before is not None:
            query = query.where(jobs.c.created_at < before)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._read() as conn:
            rows = list(conn.execute(query))
            infos = self._artifact_infos_of_rows(conn, rows)
        return [Job.from_row(row, infos.get(row.id, ())) for row in rows]

    def _artifact_infos_of_rows(self, conn: Connection, rows: Sequence[Any]) -> dict[str, tuple[ArtifactInfo, ...]]:
        """The artifacts of each job's recorded outcome, for a whole page of jobs in one query."""
        outcome_of = {row.id: row.outcome_attempt for row in rows if row.outcome_attempt is not None}
        if not outcome_of:
            return {}
        a = schema.artifacts
        query = (
            select(a.c.job_id, a.c.attempt, a.c.name, a.c.content_type, a.c.size)
            .where(a.c.job_id.in_(list(outcome_of)))
            .order_by(a.c.job_id, a.c.name)
        )
        found: dict[str, list[ArtifactInfo]] = {}
        for r in conn.execute(query):
            if r.attempt == outcome_of[r.job_id]:  # a losing attempt's files stay hidden, as in `get`
                found.setdefault(r.job_id, []).append(ArtifactInfo(r.name, r.content_type, r.size))
        return {job_id: tuple(infos) for job_id, infos in found.items()}

    def job_ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Ids that begin with `prefix` (the short id the CLI shows), in order; a full id comes first."""
        jobs = schema.jobs
        query = select(jobs.c.id).where(jobs.c.id.startswith(prefix, autoescape=True)).order_by(jobs.c.id)
        with self._read() as conn:
            ids = [str(row.id) for row in conn.execute(query.limit(limit))]
        return [i for i in ids if i.startswith(prefix)]  # SQLite's LIKE ignores case

    def history(self, job_id: str) -> list[Attempt]:
        at = schema.attempts
        with self._read() as conn:
            rows = conn.execute(select(at).where(at.c.job_id == job_id).order_by(at.c.attempt))
            return [
                Attempt(r.attempt, r.worker, r.started_at, r.finished_at, r.outcome, r.error, r.traceback) for r in rows
            ]

    def counts_by_status(self) -> dict[str, int]:
        jobs = schema.jobs
        with self._read() as conn:
            rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status))
            counts = {status.value: 0 for status in JobStatus}
            counts.update({row[0]: row[1] for row in rows})
        return counts

    def count_status(self, status: JobStatus, queues: Sequence[str]) -> int:
        jobs = schema.jobs
        query = select(func.count()).where(jobs.c.status == status.value, jobs.c.queue.in_(list(queues)))
        with self._read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def count_working(self, queues: Sequence[str]) -> int:
        """Running jobs that an attempt is working on: a job waiting out a retry's backoff needs no process."""
        jobs = schema.jobs
        query = select(func.count()).where(
            jobs.c.status == JobStatus.RUNNING.value, jobs.c.retry_at.is_(None), jobs.c.queue.in_(list(queues))
        )
        with self._read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def oldest_queued_at(self, queues: Sequence[str]) -> float | None:
        jobs = schema.jobs
        # A replayed job waits from its replay, not from its creation (an older row: from its creation).
        query = select(func.min(func.coalesce(jobs.c.queued_at, jobs.c.created_at))).where(
            jobs.c.status == JobStatus.QUEUED.value, jobs.c.queue.in_(list(queues))
        )
        with self._read() as conn:
            value = conn.execute(query).scalar()
        return float(value) if value is not None else None
