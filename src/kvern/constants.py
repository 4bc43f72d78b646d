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
KVERN_JOB_HEADER: Final = "kvern_job"  # on every message kvern publishes: a worker knows the job is tracked

# Broker roles; each gets its own generated user.
ROLE_WEB: Final = "web"
ROLE_WORKER: Final = "worker"
ROLE_ADMIN: Final = "admin"

# HTTP.
API_PREFIX: Final = "/api/v1"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
MAX_BODY_BYTES: Final = 1024 * 1024
PUBLISH_CONFIRM_TIMEOUT_S: Final = 3.0

# Files inside the state dir.
RUNTIME_FILE: Final = "runtime.json"
SUPERVISOR_CONF: Final = "supervisord.conf"
SUPERVISOR_SOCK: Final = "supervisor.sock"
SUPERVISOR_PID: Final = "supervisord.pid"
SQLITE_FILE: Final = "jobs.sqlite3"
LOG_DIR: Final = "logs"

# Environment passed to every child process.
ENV_STATE_DIR: Final = "KVERN_STATE_DIR"

# Supervisor program names.
PROGRAM_BROKER: Final = "broker"
PROGRAM_NGINX: Final = "nginx"
PROGRAM_CONTROLLER: Final = "controller"
WEB_GROUP: Final = "web"
POOL_GROUP_PREFIX: Final = "pool-"
