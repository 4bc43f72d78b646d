"""Every name kvern shares between processes lives here: queues, exchanges, headers, files, exit codes."""

from __future__ import annotations

from typing import Final

# Exit codes of the `kvern` command (documented in the README).
RET_OK: Final = 0
RET_FAILURE: Final = 1  # a command ran and reported failure (e.g. a job failed under `submit --wait`)
RET_USAGE: Final = 2  # bad command line (click's own code)
RET_SPEC: Final = 3  # the spec file is missing or invalid
RET_NOT_RUNNING: Final = 4  # the command needs a running instance and there is none
RET_ALREADY_RUNNING: Final = 5  # `up` found the instance already running
RET_START: Final = 6  # a part of the platform did not become healthy in time
RET_CONNECT: Final = 7  # the front door or the broker could not be reached

# Broker topology.
VHOST: Final = "kvern"
DEAD_LETTER_EXCHANGE: Final = "kvern.dead"
DEAD_LETTER_QUEUE: Final = "kvern.dead"
DEFAULT_DELIVERY_LIMIT: Final = 5
DEFAULT_MAX_BACKLOG: Final = 100_000
DEFAULT_TIME_LIMIT_S: Final = 300.0  # a task's hard time limit unless the spec sets one
KVERN_JOB_HEADER: Final = "kvern_job"  # on every message kvern publishes: a worker knows the job is tracked

# Broker roles; each gets its own generated user.
ROLE_WEB: Final = "web"
ROLE_WORKER: Final = "worker"
ROLE_CONTROLLER: Final = "controller"  # outbox relay, stuck jobs, dead-letter watcher, queue depths
ROLE_ADMIN: Final = "admin"

# Where a guarded task keeps the user's own function (the worker sets it; argument binding reads it).
ORIGINAL_RUN_ATTR: Final = "_kvern_original_run"

# HTTP.
# Where the API heads serve the job API; the front door maps the public `[web] api_prefix` onto it.
SERVED_API_PREFIX: Final = "/api"
API_PREFIX: Final = "/api/v1"
DASHBOARD_PREFIX: Final = "/_kvern"  # where the heads serve the dashboard (the front door: [web] dashboard_prefix)
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
MAX_BODY_BYTES: Final = 1024 * 1024
# The status of a request whose client went away before the answer (nginx's "client closed request").
CLIENT_CLOSED_REQUEST: Final = 499
# A job's subject ("user:42"): whom the job is about, so that everything about one person can be erased.
MAX_SUBJECT_CHARS: Final = 200
SUBJECT_PATTERN: Final = r"^[^\u0000-\u001f\u007f]+$"  # no control characters (they would break logs and CLI)
PUBLISH_CONFIRM_TIMEOUT_S: Final = 3.0

# Files inside the state dir.
RUNTIME_FILE: Final = "runtime.json"
SPEC_SNAPSHOT: Final = "spec.snapshot.toml"  # the spec `up` validated; what every process of the instance reads
SUPERVISOR_CONF: Final = "supervisord.conf"
SUPERVISOR_SOCK: Final = "supervisor.sock"
SUPERVISOR_PID: Final = "supervisord.pid"
SQLITE_FILE: Final = "jobs.sqlite3"
LOG_DIR: Final = "logs"
LOCAL_KEY_FILE: Final = "local.key"  # the token of the instance's own admin API key (runtime/local_key.py)
PINS_FILE: Final = "pins.json"  # pools pinned by `kvern scale POOL N`, read by the autoscaler
DESIRED_FILE: Final = "autoscale.json"  # the autoscaler's latest wish per pool, shown by `kvern status`
AUTOSCALE_PAUSE_FILE: Final = "autoscale.paused"  # the pid of a `kvern reload` replacing workers: hold pools
RELOAD_LOCK_FILE: Final = "reload.lock"  # one reload at a time per instance
DOWN_REQUESTED_FILE: Final = "down-requested"  # `kvern down` ran: a foreground `up` that sees it ends cleanly
WEB_HEADS_FILE: Final = "web_heads.json"  # which color of web heads nginx sends requests to, and how many

# Environment passed to every child process.
ENV_STATE_DIR: Final = "KVERN_STATE_DIR"

# Supervisor program names.
PROGRAM_BROKER: Final = "broker"
PROGRAM_NGINX: Final = "nginx"
PROGRAM_CONTROLLER: Final = "controller"
WEB_GROUP: Final = "web"
MAX_WEB_HEADS: Final = 16  # web program slots rendered once at `up`: web.heads and `scale web` stay within
# Blue/green: every web head slot exists in two colors; a reload starts the idle color, then nginx switches to it.
WEB_COLORS: Final = 2
WEB_SLOTS: Final = MAX_WEB_HEADS * WEB_COLORS  # color c's heads are slots c * MAX_WEB_HEADS + 0, 1, ...
APP_GROUP: Final = "app"  # with [web] app: the team's own app, one process beside each job API head
HEAD_GRACEFUL_SHUTDOWN_S: Final = 20  # an app head finishes its requests in flight within this after SIGTERM
POOL_GROUP_PREFIX: Final = "pool-"
# A pool's max is at most this; every pool's worker slots are rendered up to it at `up`, so `kvern reload` can
# raise a pool's max without touching Supervisor's config (a new program in a running group needs the group
# removed and added again, which stops every process in it).
MAX_POOL_PROCESSES: Final = 64

# Coordination of several hosts through the job store (jobs/coordination.py): each lease is a row that its holder
# renews every controller tick and that lapses by itself when the holder stops renewing (a dead or cut-off host).
LEASE_TTL_S: Final = 5.0  # ten autoscaler ticks: a host missing a few renewals (a slow store) keeps its lease
POOL_LEASE_PREFIX: Final = "pool:"  # + a pool's name: the host that decides the pool's size
INSTANCE_DUTIES_LEASE: Final = "instance-duties"  # outbox relay, retention, notifications, job metrics
RUNTIME_HOST_KEY: Final = "host"  # RuntimeConfig.extra of a host of several: the spec's name for it
