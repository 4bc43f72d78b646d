"""Tables of the job store (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Times are epoch seconds (float) so both engines compare and sort them the same way. A column added after the
first release is nullable, so that `JobStore.create_schema` can add it to an existing store in place.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

jobs = Table(
    "kvern_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("task", String(200), nullable=False),
    Column("queue", String(100), nullable=False),
    Column("args", Text, nullable=False),
    Column("kwargs", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("progress", Integer, nullable=False, default=0),
    Column("progress_message", Text),
    # Attempts started so far; the running attempt's number is the fence every write must match.
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    # The attempts one round allows (retries + 1): a replay grants this many again, not max_attempts again.
    # Nullable like every column added after the first release: create_schema adds it to an older store.
    Column("round_attempts", Integer),
    # When the retry of a running job waiting out its backoff is due (no attempt runs meanwhile); the next
    # claim clears it. The autoscaler does not count such a job as work for a process.
    Column("retry_at", Float),
    # When a cancel of the running job was asked: its task sees `kvern.cancelled()`, and the attempt's end
    # (return or raise) is recorded as cancelled.
    Column("cancel_requested", Float),
    # When the job last became queued (created, replayed or requeued): a queued job's wait counts from here.
    Column("queued_at", Float),
    # The attempt whose outcome was recorded: only its artifacts are exposed.
    Column("outcome_attempt", Integer),
    Column("result", Text),
    Column("error", Text),
    Column("idempotency_key", String(200), unique=True),
    # Whom the job is about ("user:42"), as the submitter tagged it: erasure of one person finds it here.
    Column("subject", String(200), index=True),
    Column("request_hash", String(64)),
    # The API key that submitted the job (its id); NULL for the team's own code (kvern.submit, .delay) and the CLI.
    Column("owner", String(16)),
    Column("created_at", Float, nullable=False),
    Column("published_at", Float),
    Column("started_at", Float),
    Column("finished_at", Float),
    # Where the job's end is announced (JSON list of targets, see spec.Target); NULL: nowhere.
    Column("notify", Text),
    # While an announcement is owed: when the controller looks at the job next (NULL once every target is done).
    Column("notify_due", Float),
    Index("ix_kvern_jobs_status_created", "status", "created_at"),
    Index("ix_kvern_jobs_unpublished", "published_at", "created_at"),
    Index("ix_kvern_jobs_status_finished", "status", "finished_at"),  # retention finds what to erase
    Index("ix_kvern_jobs_owner_created", "owner", "created_at"),  # a key lists its own jobs
    Index("ix_kvern_jobs_notify_due", "notify_due"),  # the notification outbox finds what is owed
)

api_keys = Table(
    "kvern_api_keys",
    metadata,
    Column("id", String(16), primary_key=True),  # the public part of the token, to find the key
    Column("name", String(64), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),  # SHA-256 of the secret part: the token is never stored
    Column("scopes", String(200), nullable=False),  # space-separated
    Column("created_at", Float, nullable=False),
)

attempts = Table(
    "kvern_attempts",
    metadata,
    Column("job_id", String(36), ForeignKey("kvern_jobs.id"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("worker", String(200)),
    Column("started_at", Float, nullable=False),  # when the attempt was claimed
    # When a task process began running it (a claim at dispatch may come earlier): a claimed attempt lost
    # before it began does not count against the job's budget. NULL: not (yet) known to have begun.
    Column("began_at", Float),
    Column("finished_at", Float),
    Column("outcome", String(16)),
    Column("error", Text),
    Column("traceback", Text),  # the failure's last frames, bounded by the worker
)

artifacts = Table(
    "kvern_artifacts",
    metadata,
    Column("job_id", String(36), ForeignKey("kvern_jobs.id"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("content_type", String(100), nullable=False),
    Column("size", Integer, nullable=False),
    # Kept in the store itself so that every web head, on any machine, can serve it.
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

scaling_events = Table(
    "kvern_scaling_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("pool", String(64), nullable=False),
    Column("from_processes", Integer, nullable=False),
    Column("to_processes", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_kvern_scaling_events_pool_at", "pool", "at"),
)

# Each attempt to announce a finished job to one target (jobs/deliveries.py): the log the job's GET shows, and
# what the outbox reads to know which targets are done.
deliveries = Table(
    "kvern_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("kvern_jobs.id"), nullable=False),
    Column("target", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("outcome", String(16), nullable=False),  # delivered | failed | gave_up
    Column("detail", Text, nullable=False),  # "HTTP 200", "250 OK", the error
    Index("ix_kvern_deliveries_job", "job_id", "id"),
)

# Instance-wide Prometheus samples the controller publishes (api/metrics.py renders them on every web head):
# one row per (name, labels), so a scrape reads a few hundred rows, never the jobs table.
metric_samples = Table(
    "kvern_metric_samples",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("labels", String(500), primary_key=True),  # canonical JSON of the label set
    Column("value", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Where the controller's job metrics have read up to (finished_at of the last job counted): survives restarts.
metric_cursors = Table(
    "kvern_metric_cursors",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("at", Float, nullable=False),
    Column("job_id", String(36), nullable=False),
)

# Leases (jobs/coordination.py): who does something for the whole instance (decides a pool's size, runs the outbox
# relay) until `expires_at`, which the holder pushes forward every tick.
leases = Table(
    "kvern_leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires_at", Float, nullable=False),
)

# The latest decision of each pool's leader: the processes the pool runs across its hosts.
pool_decisions = Table(
    "kvern_pool_decisions",
    metadata,
    Column("pool", String(64), primary_key=True),
    Column("processes", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("leader", String(200), nullable=False),
    Column("decided_at", Float, nullable=False),
)

# One heartbeat per host and pool: the hosts that share a pool's decision, and what each runs of it.
pool_hosts = Table(
    "kvern_pool_hosts",
    metadata,
    Column("pool", String(64), primary_key=True),
    Column("host", String(200), primary_key=True),
    Column("processes", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),
)
