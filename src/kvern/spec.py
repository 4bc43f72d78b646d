"""`kvern.toml` → a typed, validated `Spec`.

Validation happens once, here, at the edge: every error names the field (`pools[0].max`) and the problem, so
`kvern up` can refuse a bad spec in one line before it starts anything.

```toml
[app]
name = "reports"            # optional, default: the spec folder's name
tasks = "tasks"             # the module holding the Celery tasks, importable from the spec's folder
static = "static"           # optional folder served by nginx at /
user = "shop"               # optional: when kvern runs as root, every program but nginx's master runs as this
                            # account (nginx's workers as nobody); the account must exist and read the project

[web]
app = "mysite.wsgi:application"  # optional: the team's own WSGI or ASGI app, served by the web heads behind nginx
interface = "wsgi"          # optional: "wsgi" or "asgi"; default: detected from the app object
api_prefix = "/api"         # where kvern's job API is served (/api/v1/jobs, /api/health...); move it when the
                            # app has its own /api/ routes, e.g. "/_kvern/api"
dashboard_prefix = "/_kvern"  # where the dashboard is served (behind the admin key)
heads = 2                   # web head processes behind nginx
port = 8080                 # optional front door port on 127.0.0.1; default: a free port
auth = "keys"               # the job API wants an API key (`kvern keys create`); "off" only when every
                            # address is loopback, and `up` warns
listen = ["0.0.0.0:80"]     # optional: public addresses ("host:port", "[::]:80"); kvern itself keeps using
                            # 127.0.0.1:<port>. With [web.tls], these answer with a redirect to HTTPS
cors_origins = []           # web origins allowed to call the job API from a browser, as
                            # "https://app.example.com"; any other foreign Origin gets 403
server_name = ["example.com"]  # Host names answered besides localhost, 127.0.0.1 and [::1]; others get 421
rate = 200                  # /api/ requests per second per client address (0: no limit); over it: 429
burst = 400                 # requests above the rate let through at once before 429s start
connections = 256           # requests in progress at once per client address (0: no limit); over it: 429
key_rate = 200              # /api/ requests per second per API key, from any address (0: no limit)
key_burst = 400             # requests above key_rate let through at once
app_max_body_mb = 10        # largest request body the app is sent, in MiB (uploads); over it: 413
app_threads = 8             # per web head, requests a WSGI app serves at once (views waiting on I/O)
head_port = 8100            # a web host without the front role: its job API head i listens on the host's
                            # address at head_port + i, its app head i at head_port + 16 + i

[web.tls]                   # optional: HTTPS with this certificate (PEM, full chain) and key
cert = "/etc/letsencrypt/live/example.com/fullchain.pem"
key = "/etc/letsencrypt/live/example.com/privkey.pem"
listen = ["0.0.0.0:443"]    # default: port 443 on each host of web.listen

[broker]                    # optional; absent: kvern runs its own private RabbitMQ node
url = "amqp://user:pass@127.0.0.1:5672/vhost"

[store]                     # optional; absent: SQLite in the state dir
url = "postgresql://127.0.0.1:5432/test"
keep_succeeded = "7d"       # erase succeeded jobs this long after they finished ("90s", "15m", "12h", "7d";
keep_failed = "30d"         # "0": keep forever); keep_failed covers failed, dead and cancelled jobs

[[pools]]
name = "reports"
queues = ["reports"]
concurrency = 2             # task slots per worker process
min = 0                     # processes kept even when idle
max = 4                     # processes at most
idle_after = 30             # seconds with nothing to do before scaling to min
target_backlog = 4          # ready+unacked messages per process the autoscaler aims for
max_wait = 5                # seconds the oldest queued job may wait before scaling out
max_tasks_per_child = 0     # replace a task process after this many tasks (0: never)
max_memory_per_child = 0    # replace a task process once its resident memory passes this many MB (0: never)
max_backlog = 100000        # length limit of each of its queues (a quorum queue lets in the message that
                            # crosses it); past it, POST /api/v1/jobs answers 503
flush_ms = 2                # a worker's store writer waits at most this long to batch more jobs' writes
flush_items = 64            # and commits at most this many in one transaction
prefetch = 1                # messages each task slot holds ahead (short tasks: more; claimed at dispatch)

[limits]                    # optional; bounds of a submission's args and kwargs, checked before it is recorded
args_bytes = 262144         # their size as compact JSON (UTF-8), at most the 1 MiB body limit
args_depth = 32             # how deep lists and objects nest (args itself is depth 1), at most 100
args_items = 10000          # elements of all their lists and objects together
artifact_bytes = 52428800   # the files one attempt of a job saves (kvern.save_artifact), together
batch_jobs = 500            # jobs in one bulk submit (POST /api/v1/jobs:batch; the whole body: at most 1 MiB)

[hosts.front]               # optional: one table per machine; `kvern up --host front` starts its part
address = "10.0.0.5"        # the address the other hosts reach it at (its own listeners bind here)
roles = ["front", "web"]    # any of: front (nginx), web (web heads), broker (a RabbitMQ cluster node),
                            # workers (pools), controller (alone: a host running only a controller; every
                            # host runs one anyway); see README "Several machines"
pools = ["reports"]         # with "workers": the pools this host runs (default: all of them)
weight = 1                  # with "web": the share of requests each of its web heads gets from the front door

[tasks."tasks.generate_heavy_report"]
queue = "reports"           # default: the first queue of the first pool
retries = 3                 # retries after the first attempt, with exponential backoff and jitter
backoff = 1.0               # first retry delay in seconds, doubled each time, capped at backoff_max
backoff_max = 60.0
soft_time_limit = 60        # seconds; the task gets SoftTimeLimitExceeded
time_limit = 90             # seconds; the process running it is replaced
notify = ["https://hooks.example.com/kvern", "mailto:ops@example.com"]  # told when each job finishes

[notify]                    # optional; where finished jobs are announced (README "Notifications")
base_url = "https://example.com"  # links in emails; default: http://127.0.0.1:<front door port>
link = "/reports/{id}/"     # the result page an email links to; default: the job's API URL
webhook_key_file = "/etc/kvern/webhook.key"  # HMAC-SHA256 key signing webhooks (required with any webhook)
submission_webhooks = false # may POST /api/v1/jobs name webhook URLs itself (the controller would call them)

[notify.smtp]               # required with any mailto: target
host = "smtp.example.com"
port = 587
security = "starttls"       # "starttls", "tls" (implicit TLS, port 465) or "none" (loopback hosts only)
username = "reports@example.com"  # optional
password_file = "/etc/kvern/smtp-password"  # optional; the secret stays out of the spec
sender = "reports@example.com"
```
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from kvern.constants import (
    DEFAULT_MAX_BACKLOG,
    DEFAULT_TIME_LIMIT_S,
    MAX_BODY_BYTES,
    MAX_POOL_PROCESSES,
    MAX_WEB_HEADS,
)
from kvern.errors import KvernError, SpecError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
QUEUE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
MODULE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# A DNS name, optionally with a leading `*.` wildcard, or an IPv4 address: nothing nginx would read as a regex.
SERVER_NAME_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")

# What a path may not hold to be written into nginx.conf and supervisord.conf: a control character (a line
# break starts a new directive or [program:...] section), what ends, quotes or interpolates an nginx value, or
# supervisord's `%` (expanded once or twice depending on the option).
CONFIG_BREAKING = frozenset(";{}\"'\\$`%")

T = TypeVar("T")


APP_PATTERN = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
)
API_PREFIX_PATTERN = re.compile(r"^(/[A-Za-z0-9_-]+)+$")
INTERFACES = ("wsgi", "asgi")
HTTPS_PORT = 443


@dataclass(frozen=True)
class Address:
    """One address nginx listens on: an IPv4 or IPv6 address (or `*`) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsSpec:
    """HTTPS at the front door: a PEM certificate chain and its key, and where HTTPS listens."""

    cert: Path
    key: Path
    listen: tuple[Address, ...]


@dataclass(frozen=True)
class WebSpec:
    heads: int = 2
    port: int | None = None
    app: str | None = None  # "module:attr" of the team's WSGI/ASGI app, importable from the spec's folder
    interface: str | None = None  # "wsgi" | "asgi"; None: detected from the app object
    api_prefix: str = "/api"  # the job API's public path prefix
    dashboard_prefix: str = "/_kvern"  # the dashboard's public path prefix (behind the admin key)
    listen: tuple[Address, ...] = ()  # public addresses; () is 127.0.0.1:<front door port> only
    tls: TlsSpec | None = None
    auth: str = "keys"  # "keys": the job API wants an API key; "off": anyone who reaches it (loopback only)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the job API (the front door's own is)
    server_name: tuple[str, ...] = ()  # Host names nginx answers besides the loopback ones
    # Per client address (OWASP API4), enforced by nginx; 0 turns a limit off.
    rate: int = 200  # /api/ requests per second
    burst: int = 400  # requests above the rate let through at once
    connections: int = 256  # requests in progress at once
    # Per API key (the token a request carries), on top of the per-address limits.
    key_rate: int = 200  # /api/ requests per second
    key_burst: int = 400
    app_max_body_mb: int = 10  # request bodies the team's app takes (uploads); the job API's stay at 1 MiB
    app_threads: int = 8  # a WSGI app head's threads (gunicorn gthread): views in progress at once per head
    head_port: int = 8100  # on a web host without the front door: the first TCP port of its heads


@dataclass(frozen=True)
class PoolSpec:
    name: str
    queues: tuple[str, ...]
    concurrency: int = 2
    min: int = 0
    max: int = 4
    idle_after: float = 30.0
    target_backlog: int = 4
    max_wait: float = 5.0
    max_tasks_per_child: int = 0
    max_memory_per_child: int = 0  # MB
    max_backlog: int = DEFAULT_MAX_BACKLOG  # messages per queue; beyond it a publish is refused (503)
    # The node's store writer (worker/writer.py): a batch waits at most flush_ms for more ops, holds at most
    # flush_items. 2 ms costs a lone job little latency; every waiting child flushes it at once anyway.
    flush_ms: float = 2.0
    flush_items: int = 64
    prefetch: int = 1  # messages each task slot holds ahead; above 1 for short tasks (claimed at dispatch)


@dataclass(frozen=True)
class LimitsSpec:
    """Bounds of a submission's args and kwargs: a payload a worker cannot decode, pickle or render is refused
    at the door (400) instead of being recorded; and of the artifacts a job saves. The defaults are the only
    place the default values live."""

    args_bytes: int = 256 * 1024  # compact JSON size of args and kwargs
    args_depth: int = 32  # nesting of lists and objects; args and kwargs themselves are depth 1
    args_items: int = 10_000  # elements of every list and object together
    artifact_bytes: int = 50 * 1024 * 1024  # what one attempt's artifacts hold together; save_artifact refuses more
    batch_jobs: int = 500  # jobs in one bulk submit (POST /api/v1/jobs:batch)


MAX_WEB_LIMIT = 1_000_000
MAX_FLUSH_MS = 1000  # a store writer's batch that waits longer holds every child of its node
MAX_FLUSH_ITEMS = 5000
MAX_PREFETCH = 1000

# Past these, a payload breaks the layers behind the API (serializer and pickle recursion, the body limit).
MAX_ARGS_DEPTH = 100
MAX_ARGS_ITEMS = 1_000_000
MAX_ARTIFACT_BYTES = 1_000_000_000  # PostgreSQL's bytea and SQLite's blob stop at about 1 GB
MAX_BATCH_JOBS = 10_000  # a bulk submit's jobs are validated, recorded and confirmed by one request


DURATION_PATTERN = re.compile(r"^(\d{1,9})([smhd])$")
DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds of a duration such as "90s", "15m", "12h" or "7d" ("0" is 0); ValueError for anything else."""
    if text == "0":
        return 0.0
    match = DURATION_PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 12h or 7d")
    return float(int(match.group(1)) * DURATION_UNITS_S[match.group(2)])


@dataclass(frozen=True)
class RetentionSpec:
    """How long finished jobs are kept (their args, results, history and artifacts), then erased by the
    controller. Finite by default: job data often names people, and data protection law wants it kept no
    longer than needed (GDPR art. 5(1)(e), art. 25). "0" keeps jobs forever."""

    keep_succeeded: str = "7d"  # a client has long fetched its result by then
    keep_failed: str = "30d"  # failed, dead and cancelled: kept longer, to diagnose and replay

    @property
    def keep_succeeded_s(self) -> float | None:
        """Seconds to keep a succeeded job; None: forever."""
        return parse_duration(self.keep_succeeded) or None

    @property
    def keep_failed_s(self) -> float | None:
        """Seconds to keep a failed, dead or cancelled job; None: forever."""
        return parse_duration(self.keep_failed) or None


@dataclass(frozen=True)
class TaskPolicy:
    """Delivery rules of one task; tasks the spec does not name get the defaults."""

    queue: str | None = None
    retries: int = 3
    backoff: float = 1.0
    backoff_max: float = 60.0
    soft_time_limit: float | None = None
    time_limit: float = DEFAULT_TIME_LIMIT_S
    notify: tuple[str, ...] = ()  # targets told when each of its jobs finishes (webhook URLs, mailto:)


@dataclass(frozen=True)
class Spec:
    path: Path
    name: str
    tasks_module: str
    web: WebSpec
    pools: tuple[PoolSpec, ...]
    broker_url: str | None = None
    store_url: str | None = None
    static_dir: Path | None = None
    tasks: Mapping[str, TaskPolicy] = field(default_factory=dict)
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    retention: RetentionSpec = field(default_factory=RetentionSpec)
    text: str = field(default="", repr=False, compare=False)  # the TOML it was parsed from (for the snapshot)
    user: str | None = None  # [app] user: the account the instance's programs run as when kvern runs as root
    notify: NotifySpec = field(default_factory=lambda: NotifySpec())  # noqa: PLW0108 (defined below)
    hosts: tuple[HostSpec, ...] = ()  # [hosts]: which machine runs what; empty: one machine runs everything

    @property
    def root(self) -> Path:
        """The spec's folder: the tasks module and the static folder are found from here."""
        return self.path.parent

    def policy(self, task_name: str) -> TaskPolicy:
        return self.tasks.get(task_name) or TaskPolicy(queue=self.default_queue)

    @property
    def default_queue(self) -> str:
        return self.pools[0].queues[0]

    def queue_for(self, task_name: str) -> str:
        return self.policy(task_name).queue or self.default_queue

    def pool(self, name: str) -> PoolSpec:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    @property
    def all_queues(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(q for pool in self.pools for q in pool.queues))

    def max_backlog(self, queue: str) -> int:
        """The length limit of a queue (pools sharing a queue must agree on it; the parser checks)."""
        return next(p.max_backlog for p in self.pools if queue in p.queues)

    @property
    def longest_time_limit(self) -> float:
        limits = [p.time_limit for p in self.tasks.values()]
        return max([DEFAULT_TIME_LIMIT_S, *limits])


@dataclass(frozen=True)
class Tiers:
    """Which tiers one instance runs (`kvern up --only`): the web tier, the pools, or one pool alone."""

    web: bool = True
    pools: bool = True
    pool: str | None = None  # one pool's name: only that pool runs

    @classmethod
    def parse(cls, text: str) -> Tiers:
        """`all`, `web`, `pools` or a pool's name (the spec, not this, knows whether the pool exists)."""
        named = {"all": cls(), "web": cls(pools=False), "pools": cls(web=False)}
        return named.get(text) or cls(web=False, pool=text)

    def __str__(self) -> str:
        if self.pool is not None:
            return self.pool
        return "all" if self.web and self.pools else "web" if self.web else "pools"

    def check(self, spec: Spec) -> Tiers:
        if self.pool is not None and self.pool not in {p.name for p in spec.pools}:
            raise SpecError(f"--only: {self.pool!r} is not 'web', 'pools' or a pool of the spec")
        return self

    def pools_of(self, spec: Spec) -> tuple[PoolSpec, ...]:
        """The pools of the spec this instance runs."""
        if self.pool is not None:
            return (spec.pool(self.pool),)
        return spec.pools if self.pools else ()


def load_spec(path: Path, origin: Path | None = None) -> Spec:
    """Read and validate a spec file; raises `SpecError` naming the field at fault.

    `origin`: the spec file this one is a copy of (a running instance's snapshot): the spec's folder, where
    the tasks module and the static folder are found, is the origin's.
    """
    path = path.resolve()
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from exc
    return replace(parse_spec(raw, (origin or path).resolve()), text=text)


def parse_spec(raw: Mapping[str, Any], path: Path) -> Spec:
    reader = _Reader(raw, "")
    reader.only("app", "web", "broker", "store", "pools", "tasks", "limits", "notify", "hosts")
    app = reader.table("app")
    app.only("name", "tasks", "static", "user")
    tasks_module = app.get("tasks", str, required=True)
    if not MODULE_PATTERN.match(tasks_module):
        raise SpecError("app.tasks: must be a dotted module name such as 'tasks' or 'myapp.tasks'")
    pools = _parse_pools(reader)
    spec = Spec(
        path=path,
        name=_parse_name(app, path),
        tasks_module=tasks_module,
        web=_parse_web(reader.table("web"), path.parent),
        pools=pools,
        broker_url=_parse_url(reader.table("broker"), ("amqp://", "amqps://")),
        store_url=_parse_url(
            reader.table("store"), ("postgresql://", "postgresql+psycopg://", "sqlite:///"), RETENTION_FIELDS
        ),
        retention=_parse_retention(reader.table("store")),
        static_dir=_parse_static(app, path.parent),
        tasks=_parse_tasks(reader.table("tasks"), pools),
        limits=_parse_limits(reader.table("limits")),
        user=_parse_user(app),
        notify=parse_notify(reader.table("notify"), path.parent),
    )
    check_task_targets(spec)
    return replace(spec, hosts=parse_hosts(reader.table("hosts"), spec))


def _parse_user(app: _Reader) -> str | None:
    """The account must exist. Only root can run programs as another account: anyone else may name only
    themselves (the instance's own programs, which run as that account and read this spec too, do)."""
    user = app.get("user", str, default=None)
    if user is None:
        return None
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise SpecError(f"app.user: no account named {user!r} on this machine") from None
    if os.geteuid() not in (0, account.pw_uid):
        raise SpecError(f"app.user: only root can run the instance as {user!r} (kvern runs as uid {os.geteuid()})")
    return user


def _parse_name(app: _Reader, path: Path) -> str:
    # The folder's name, made valid (a letter first, at most 32): the user did not write it, so it must not fail.
    default = re.sub(r"[^a-z0-9_-]", "-", path.parent.name.lower())
    default = re.sub(r"^[^a-z]+", "", default)[:32].rstrip("-") or "kvern"
    name = app.get("name", str, default=default)
    if not NAME_PATTERN.match(name):
        raise SpecError("app.name: use lowercase letters, digits, '-' or '_' (at most 32), starting with a letter")
    return name


def _parse_web(web: _Reader, root: Path) -> WebSpec:
    spec = WebSpec(**_read_fields(web, WebSpec, skip=("listen", "tls")))
    listen = _parse_addresses(web.get("listen", list, default=[]), f"{web.where}.listen")
    spec = replace(spec, listen=listen, tls=_parse_tls(web, listen, root))
    _check_web_app(spec)
    _check_auth(spec)
    if not 1 <= spec.heads <= MAX_WEB_HEADS:
        raise SpecError(f"web.heads: must be between 1 and {MAX_WEB_HEADS}")
    if spec.port is not None and not 1 <= spec.port <= 65535:
        raise SpecError("web.port: must be a TCP port between 1 and 65535")
    _check_web_limits(spec)
    if not 1 <= spec.app_max_body_mb <= MAX_APP_BODY_MB:
        raise SpecError(f"web.app_max_body_mb: must be between 1 and {MAX_APP_BODY_MB} (MiB)")
    if not 1 <= spec.app_threads <= MAX_APP_THREADS:
        raise SpecError(f"web.app_threads: must be between 1 and {MAX_APP_THREADS}")
    if not 1024 <= spec.head_port <= 65535 - 2 * MAX_WEB_HEADS:
        raise SpecError(f"web.head_port: must be between 1024 and {65535 - 2 * MAX_WEB_HEADS}")
    names = tuple(spec.server_name)
    for name in names:
        if not isinstance(name, str) or len(name) > 253 or not SERVER_NAME_PATTERN.match(name):
            raise SpecError(f"web.server_name: {name!r} is not a host name (lowercase DNS name, optionally '*.' first)")
    return replace(spec, server_name=names, cors_origins=_parse_origins(spec.cors_origins, f"{web.where}.cors_origins"))


AUTH_MODES = ("keys", "off")
MAX_APP_BODY_MB = 4096
MAX_APP_THREADS = 256


def _check_auth(web: WebSpec) -> None:
    if web.auth not in AUTH_MODES:
        raise SpecError(f"web.auth: must be one of {', '.join(AUTH_MODES)}")
    public = [a for a in (*web.listen, *(web.tls.listen if web.tls else ())) if not is_loopback(a.host)]
    if web.auth == "off" and public:
        raise SpecError(
            f'web.auth: "off" is only for an instance reachable from this machine alone, but it listens on '
            f"{public[0]}; keep API keys on"
        )


def is_loopback(host: str) -> bool:
    return host != "*" and ipaddress.ip_address(host).is_loopback


def _check_web_app(web: WebSpec) -> None:
    if web.app is not None and not APP_PATTERN.match(web.app):
        raise SpecError(f"web.app: {web.app!r} is not 'module:attribute' (e.g. 'mysite.wsgi:application')")
    if web.interface is not None and web.interface not in INTERFACES:
        raise SpecError(f"web.interface: must be one of {', '.join(INTERFACES)} (or left out to detect it)")
    if not API_PREFIX_PATTERN.match(web.api_prefix) or len(web.api_prefix) > 100:
        raise SpecError(f"web.api_prefix: {web.api_prefix!r} must be a path such as '/api' or '/_kvern/api'")
    if not API_PREFIX_PATTERN.match(web.dashboard_prefix) or web.dashboard_prefix == web.api_prefix:
        prefix = web.dashboard_prefix
        raise SpecError(f"web.dashboard_prefix: {prefix!r} must be a path such as '/_kvern', not the API's")


ADDRESS_PATTERN = re.compile(r"^(?:(\[[0-9A-Fa-f:.]+\])|([0-9.]+|\*)):([0-9]{1,5})$")


def parse_address(text: Any, where: str) -> Address:
    """ "host:port", "[v6]:port" or "*:port" with a literal address (nginx binds it; a name would be resolved)."""
    match = ADDRESS_PATTERN.match(text) if isinstance(text, str) else None
    port = int(match.group(3)) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise SpecError(f"{where}: {text!r} is not an address such as '0.0.0.0:80', '127.0.0.1:8080' or '[::]:443'")
    host = match.group(1)[1:-1] if match.group(1) else match.group(2)
    try:
        if host != "*":
            ipaddress.ip_address(host)
    except ValueError:
        raise SpecError(f"{where}: {host!r} in {text!r} is not an IP address") from None
    return Address(host, port)


def _parse_addresses(values: list[Any], where: str) -> tuple[Address, ...]:
    addresses = tuple(parse_address(value, where) for value in values)
    if len(set(addresses)) != len(addresses):
        raise SpecError(f"{where}: an address is given twice")
    return addresses


def _parse_tls(web: _Reader, listen: tuple[Address, ...], root: Path) -> TlsSpec | None:
    if "tls" not in web.data:
        return None
    tls = web.table("tls")
    tls.only("cert", "key", "listen")
    files = {}
    for name in ("cert", "key"):
        path = check_config_path((root / tls.get(name, str, required=True)).resolve(), f"{tls.where}.{name}")
        if not path.is_file():
            raise SpecError(f"{tls.where}.{name}: file {path} does not exist")
        files[name] = path
    hosts = dict.fromkeys(address.host for address in listen) or {"127.0.0.1": None}
    default = [str(Address(host, HTTPS_PORT)) for host in hosts]
    addresses = _parse_addresses(tls.get("listen", list, default=default), f"{tls.where}.listen")
    if set(addresses) & set(listen):
        raise SpecError(f"{tls.where}.listen: an address is in web.listen too (HTTP and HTTPS need their own ports)")
    return TlsSpec(files["cert"], files["key"], addresses)


def _check_web_limits(web: WebSpec) -> None:
    bounds = {
        "rate": web.rate,
        "burst": web.burst,
        "connections": web.connections,
        "key_rate": web.key_rate,
        "key_burst": web.key_burst,
    }
    for name, value in bounds.items():
        if not 0 <= value <= MAX_WEB_LIMIT:
            raise SpecError(f"web.{name}: must be between 0 and {MAX_WEB_LIMIT} (0: no limit)")


# scheme://host[:port], nothing after it: what a browser sends as Origin.
ORIGIN_PATTERN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def _parse_origins(values: Any, where: str) -> tuple[str, ...]:
    origins = []
    for value in values:
        if not isinstance(value, str) or not ORIGIN_PATTERN.match(value):
            raise SpecError(f"{where}: {value!r} is not an origin like 'https://app.example.com' (no path, no '*')")
        origins.append(value.lower())
    return tuple(origins)


def _parse_pools(reader: _Reader) -> tuple[PoolSpec, ...]:
    items = reader.array_of_tables("pools")
    if not items:
        raise SpecError("pools: declare at least one [[pools]] table")
    pools = tuple(_parse_pool(item) for item in items)
    backlogs: dict[str, int] = {}
    for pool in pools:
        for queue in pool.queues:
            if backlogs.setdefault(queue, pool.max_backlog) != pool.max_backlog:
                raise SpecError(f"pools: queue {queue!r} is shared by pools with different max_backlog")
    names = [p.name for p in pools]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise SpecError(f"pools: pool name {sorted(duplicates)[0]!r} is used twice")
    return pools


def _parse_pool(pool: _Reader) -> PoolSpec:
    pool.only(*(f.name for f in fields(PoolSpec)))
    name = pool.get("name", str, required=True)
    if not NAME_PATTERN.match(name) or name == "web":
        raise SpecError(
            f"{pool.where}.name: {name!r} is not a valid pool name (lowercase, digits, '-', '_'; not 'web')"
        )
    queues = pool.get("queues", list, default=[name])
    if not queues or not all(isinstance(q, str) and QUEUE_PATTERN.match(q) for q in queues):
        raise SpecError(f"{pool.where}.queues: must be a non-empty list of queue names ([A-Za-z0-9_.-])")
    if any(q.startswith("kvern.") for q in queues):
        raise SpecError(f"{pool.where}.queues: names starting with 'kvern.' are reserved")
    spec = PoolSpec(name=name, queues=tuple(queues), **_read_fields(pool, PoolSpec))
    _check_pool_bounds(spec, pool.where)
    return spec


def _check_pool_bounds(pool: PoolSpec, where: str) -> None:
    if not 1 <= pool.concurrency <= 256:
        raise SpecError(f"{where}.concurrency: must be between 1 and 256")
    if pool.min < 0:
        raise SpecError(f"{where}.min: must be 0 or more")
    if not 1 <= pool.max <= MAX_POOL_PROCESSES:
        raise SpecError(f"{where}.max: must be between 1 and {MAX_POOL_PROCESSES}")
    if pool.min > pool.max:
        raise SpecError(f"{where}.min: {pool.min} is greater than max ({pool.max})")
    if pool.idle_after < 0 or pool.max_wait <= 0 or pool.target_backlog < 1:
        raise SpecError(f"{where}: idle_after must be >= 0, max_wait > 0 and target_backlog >= 1")
    if pool.max_tasks_per_child < 0 or pool.max_memory_per_child < 0:
        raise SpecError(f"{where}: max_tasks_per_child and max_memory_per_child must be >= 0 (0: no limit)")
    if pool.max_backlog < 1:
        raise SpecError(f"{where}.max_backlog: must be 1 or more")
    _check_writer_settings(pool, where)


def _check_writer_settings(pool: PoolSpec, where: str) -> None:
    if not 0 <= pool.flush_ms <= MAX_FLUSH_MS:
        raise SpecError(f"{where}.flush_ms: must be between 0 and {MAX_FLUSH_MS} (milliseconds a batch waits)")
    if not 1 <= pool.flush_items <= MAX_FLUSH_ITEMS:
        raise SpecError(f"{where}.flush_items: must be between 1 and {MAX_FLUSH_ITEMS} (ops in one transaction)")
    if not 1 <= pool.prefetch <= MAX_PREFETCH:
        raise SpecError(f"{where}.prefetch: must be between 1 and {MAX_PREFETCH} (messages per task slot)")


def _parse_limits(table: _Reader) -> LimitsSpec:
    limits = LimitsSpec(**_read_fields(table, LimitsSpec))
    bounds = {
        "args_bytes": (limits.args_bytes, MAX_BODY_BYTES),
        "args_depth": (limits.args_depth, MAX_ARGS_DEPTH),
        "args_items": (limits.args_items, MAX_ARGS_ITEMS),
        "artifact_bytes": (limits.artifact_bytes, MAX_ARTIFACT_BYTES),
        "batch_jobs": (limits.batch_jobs, MAX_BATCH_JOBS),
    }
    for name, (value, most) in bounds.items():
        if not 1 <= value <= most:
            raise SpecError(f"{table.where}.{name}: must be between 1 and {most}")
    return limits


RETENTION_FIELDS = tuple(f.name for f in fields(RetentionSpec))


def _parse_retention(table: _Reader) -> RetentionSpec:
    values = {f.name: table.get(f.name, str, default=f.default) for f in fields(RetentionSpec)}
    for name, value in values.items():
        try:
            parse_duration(value)
        except ValueError as exc:
            raise SpecError(f'{table.where}.{name}: {exc} ("0": keep forever)') from None
    return RetentionSpec(**values)


def _parse_url(table: _Reader, schemes: tuple[str, ...], also: tuple[str, ...] = ()) -> str | None:
    table.only("url", *also)
    url = table.get("url", str, default=None)
    if url is not None and not url.startswith(schemes):
        raise SpecError(f"{table.where}.url: must start with one of {', '.join(schemes)}")
    return url


def _parse_static(app: _Reader, root: Path) -> Path | None:
    static = app.get("static", str, default=None)
    if static is None:
        return None
    folder = check_config_path((root / static).resolve(), "app.static")
    if not folder.is_dir():
        raise SpecError(f"app.static: folder {folder} does not exist")
    check_static_dir(folder, root.resolve(), "the spec folder")
    return folder


def unsafe_character(value: str) -> str | None:
    """The first character of `value` that cannot be written safely into nginx's or supervisord's config."""
    return next((c for c in value if c in CONFIG_BREAKING or ord(c) < 32 or ord(c) == 127), None)


def check_config_path(path: Path, what: str, error: type[KvernError] = SpecError) -> Path:
    bad = unsafe_character(str(path))
    if bad is not None:
        raise error(f"{what}: {str(path)!r} contains {bad!r}, which cannot be written safely into a config file")
    return path


def check_static_dir(folder: Path, private: Path, what: str) -> None:
    """nginx serves all of the static folder: it must not hold the spec folder or the state dir (broker
    passwords, the job store), nor be `/`."""
    if folder == Path(folder.anchor):
        raise SpecError(f"app.static: {folder} is the root of the file system; use a folder of its own")
    if folder == private or folder in private.parents:
        raise SpecError(f"app.static: {folder} contains {what} ({private}); use a folder of its own, e.g. 'static'")


def _parse_tasks(tasks: _Reader, pools: tuple[PoolSpec, ...]) -> dict[str, TaskPolicy]:
    consumed = {q for pool in pools for q in pool.queues}
    policies: dict[str, TaskPolicy] = {}
    for task_name in tasks.keys():  # noqa: SIM118 (a _Reader, not a dict)
        entry = tasks.table(task_name)
        policy = TaskPolicy(**_read_fields(entry, TaskPolicy, queue=pools[0].queues[0]))
        policy = replace(policy, notify=parse_targets(policy.notify, f"{entry.where}.notify"))
        _check_policy(policy, entry.where, consumed)
        policies[task_name] = policy
    return policies


def _check_policy(policy: TaskPolicy, where: str, consumed: set[str]) -> None:
    if policy.queue not in consumed:
        raise SpecError(f"{where}.queue: no pool consumes queue {policy.queue!r}")
    if not 0 <= policy.retries <= 100:
        raise SpecError(f"{where}.retries: must be between 0 and 100")
    if policy.backoff < 0 or policy.backoff_max < policy.backoff:
        raise SpecError(f"{where}.backoff: must be >= 0 and not above backoff_max")
    if policy.time_limit <= 0:
        raise SpecError(f"{where}.time_limit: must be positive")
    if policy.soft_time_limit is not None and not 0 < policy.soft_time_limit < policy.time_limit:
        raise SpecError(f"{where}.soft_time_limit: must be positive and below time_limit")


# The type a field's annotation names (annotations are strings here) -> the TOML value the parser accepts.
FIELD_KINDS: dict[str, type] = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float}
FIELD_KINDS["str | None"] = str
FIELD_KINDS["tuple[str, ...]"] = list


def _read_fields(table: _Reader, cls: type, skip: tuple[str, ...] = (), **defaults: Any) -> dict[str, Any]:
    """The table's value of each field of `cls` that has a default, else that default: the dataclass is the one
    place defaults live (`defaults` overrides one that depends on the rest of the spec). Fields without a
    default, and those in `skip`, are the caller's to read; any other key in the table is refused."""
    table.only(*(f.name for f in fields(cls)))
    return {
        f.name: table.get(f.name, FIELD_KINDS[str(f.type)], default=defaults.get(f.name, f.default))
        for f in fields(cls)
        if f.default is not MISSING and f.name not in skip
    }


class _Reader:
    """A view of one TOML table that knows its dotted path, so every error names the field."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def _path(self, key: str) -> str:
        name = f'"{key}"' if "." in key else key  # as TOML spells it: tasks."tasks.report", not tasks.tasks.report
        return f"{self.where}.{name}" if self.where else name

    def keys(self) -> list[str]:
        return list(self.data)

    def only(self, *allowed: str) -> None:
        for key in self.data:
            if key not in allowed:
                raise SpecError(f"{self._path(key)}: unknown field (expected one of: {', '.join(allowed)})")

    def table(self, key: str) -> _Reader:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise SpecError(f"{self._path(key)}: must be a table")
        return _Reader(value, self._path(key))

    def array_of_tables(self, key: str) -> list[_Reader]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise SpecError(f"{self._path(key)}: must be an array of tables ([[{key}]])")
        return [_Reader(v, f"{self._path(key)}[{i}]") for i, v in enumerate(value)]

    def get(self, key: str, kind: type[T], *, default: Any = None, required: bool = False) -> T:
        if key not in self.data:
            if required:
                raise SpecError(f"{self._path(key)}: required field is missing")
            return default  # type: ignore[no-any-return]
        return _coerce(self.data[key], kind, self._path(key))


def _coerce(value: Any, kind: type[T], where: str) -> T:
    checks: dict[type, Callable[[Any], bool]] = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
    }
    if not checks[kind](value):
        raise SpecError(f"{where}: expected {kind.__name__}, got {type(value).__name__} ({value!r})")
    return kind(value)  # type: ignore[call-arg]


# -- notifications ([notify], [tasks."x"] notify) ---------------------------------------------------------------

MAX_TARGETS = 10
MAX_TARGET_CHARS = 2000
EMAIL_PATTERN = re.compile(r"^[^@\s<>,;:\"()\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$")
WEBHOOK_SCHEMES = ("https", "http")
SMTP_SECURITY = ("starttls", "tls", "none")
WEBHOOK = "webhook"
EMAIL = "email"


@dataclass(frozen=True)
class Target:
    """Where a finished job is announced: a webhook URL, or an email address (`mailto:` in the spec)."""

    kind: str  # WEBHOOK | EMAIL
    address: str  # the URL, or the bare email address

    def __str__(self) -> str:
        return f"mailto:{self.address}" if self.kind == EMAIL else self.address


def parse_target(text: Any, where: str) -> Target:
    """A webhook URL (`https://...`) or `mailto:someone@example.com`; SpecError naming `where` otherwise."""
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_TARGET_CHARS or unsafe_header(text):
        raise SpecError(f"{where}: {text!r} is not a webhook URL or a mailto: address")
    if text.startswith("mailto:"):
        address = text.removeprefix("mailto:")
        if not EMAIL_PATTERN.match(address):
            raise SpecError(f"{where}: {address!r} is not an email address")
        return Target(EMAIL, address)
    parts = urlsplit(text)
    if parts.scheme not in WEBHOOK_SCHEMES or not parts.hostname or " " in text:
        raise SpecError(f"{where}: {text!r} is not a webhook URL (http:// or https://) or a mailto: address")
    return Target(WEBHOOK, text)


def unsafe_header(text: str) -> bool:
    """Control characters would break an HTTP request line or a mail header."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def parse_targets(values: Any, where: str) -> tuple[str, ...]:
    """Targets as their canonical text (what the job record keeps), at most MAX_TARGETS, no duplicates."""
    if not isinstance(values, list | tuple) or len(values) > MAX_TARGETS:
        raise SpecError(f"{where}: must be a list of at most {MAX_TARGETS} targets")
    return tuple(dict.fromkeys(str(parse_target(value, f"{where}[{i}]")) for i, value in enumerate(values)))


@dataclass(frozen=True)
class SmtpSpec:
    """The operator's mail server. The password is read from `password_file` when a mail is sent: the spec (and
    its snapshot) never holds it."""

    host: str
    sender: str
    port: int = 587
    security: str = "starttls"
    username: str | None = None
    password_file: Path | None = None
    timeout: float = 30.0

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        return self.password_file.read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class NotifySpec:
    base_url: str | None = None  # the front door as people reach it; links in emails start with it
    webhook_key_file: Path | None = None  # HMAC-SHA256 key for webhook signatures (a secret kept out of the spec)
    submission_webhooks: bool = False  # whether a submission may name webhook URLs of its own
    smtp: SmtpSpec | None = None
    link: str | None = None  # path of a job's result page in emails, "{id}" standing for the job's id

    def webhook_key(self) -> bytes:
        if self.webhook_key_file is None:
            raise SpecError("notify.webhook_key_file: no key to sign webhooks with")
        return self.webhook_key_file.read_bytes().strip()


def parse_notify(table: _Reader, root: Path) -> NotifySpec:
    table.only("base_url", "webhook_key_file", "submission_webhooks", "smtp", "link")
    base_url = table.get("base_url", str, default=None)
    if base_url is not None and not re.match(r"^https?://[^\s/]+(/[^\s]*)?$", base_url):
        raise SpecError(f"notify.base_url: {base_url!r} must be an http:// or https:// URL")
    allowed = table.data.get("submission_webhooks", False)
    if not isinstance(allowed, bool):
        raise SpecError("notify.submission_webhooks: expected true or false")
    key_file = _secret_file(table, "webhook_key_file", root)
    smtp = _parse_smtp(table.table("smtp"), root) if "smtp" in table.data else None
    link = table.get("link", str, default=None)
    if link is not None and (not link.startswith("/") or "{" in link.replace("{id}", "") or unsafe_header(link)):
        raise SpecError(f'notify.link: {link!r} must be a path such as "/reports/{{id}}/"')
    return NotifySpec(base_url.rstrip("/") if base_url else None, key_file, allowed, smtp, link)


def _secret_file(table: _Reader, name: str, root: Path) -> Path | None:
    value = table.get(name, str, default=None)
    if value is None:
        return None
    path = (root / value).resolve()
    if not path.is_file():
        raise SpecError(f"{table.where}.{name}: file {path} does not exist")
    return path


def _parse_smtp(table: _Reader, root: Path) -> SmtpSpec:
    table.only("host", "port", "security", "username", "password_file", "sender", "timeout")
    host = table.get("host", str, required=True)
    sender = table.get("sender", str, required=True)
    spec = SmtpSpec(
        host=host,
        sender=sender,
        port=table.get("port", int, default=587),
        security=table.get("security", str, default="starttls"),
        username=table.get("username", str, default=None),
        password_file=_secret_file(table, "password_file", root),
        timeout=table.get("timeout", float, default=30.0),
    )
    if not EMAIL_PATTERN.match(sender):
        raise SpecError(f"notify.smtp.sender: {sender!r} is not an email address")
    if spec.security not in SMTP_SECURITY:
        raise SpecError(f"notify.smtp.security: must be one of {', '.join(SMTP_SECURITY)}")
    if not 1 <= spec.port <= 65535:
        raise SpecError("notify.smtp.port: must be a TCP port between 1 and 65535")
    if spec.security == "none" and host not in ("localhost", "127.0.0.1", "::1"):
        raise SpecError('notify.smtp.security: "none" sends the password and the mail in clear; only for localhost')
    return spec


def check_task_targets(spec: Spec) -> None:
    """A task's targets need what sends them: SMTP for mail, a signing key for webhooks."""
    for name, policy in spec.tasks.items():
        check_targets_configured(spec.notify, policy.notify, f'tasks."{name}".notify')


def check_targets_configured(notify: NotifySpec, targets: tuple[str, ...], where: str) -> None:
    kinds = {parse_target(target, where).kind for target in targets}
    if EMAIL in kinds and notify.smtp is None:
        raise SpecError(f"{where}: a mailto: target needs [notify.smtp]")
    if WEBHOOK in kinds and notify.webhook_key_file is None:
        raise SpecError(f"{where}: a webhook target needs notify.webhook_key_file (the key that signs it)")


# -- [hosts]: several machines ----------------------------------------------------------------------------------

HOST_ROLES = ("front", "web", "broker", "workers", "controller")
MAX_HOST_WEIGHT = 100  # nginx takes up to 1000 per server; a host's heads share far less unevenly than that
HOST_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


@dataclass(frozen=True)
class HostSpec:
    """One machine of a several-machine instance: where the others reach it, and what it runs."""

    name: str
    address: str  # an IPv4 address: RabbitMQ node names and listeners use it, so no DNS is needed
    roles: frozenset[str]
    pools: tuple[str, ...] = ()  # with the workers role: the pools it runs (all of the spec's when empty)
    weight: int = 1  # with the web role: nginx's weight of each of its heads at the front door

    def runs(self, role: str) -> bool:
        return role in self.roles


def parse_hosts(table: _Reader, spec: Spec) -> tuple[HostSpec, ...]:
    """`[hosts.NAME]` tables. Secrets never live here: they come from the shared secrets file."""
    hosts = tuple(_parse_host(name, table.table(name), spec) for name in list(table.data))
    if not hosts:
        return ()
    addresses = [host.address for host in hosts]
    if len(set(addresses)) != len(addresses):
        raise SpecError("hosts: two hosts share an address")
    brokers = [host for host in hosts if host.runs("broker")]
    if brokers and spec.broker_url:
        raise SpecError("hosts: broker hosts and [broker] url exclude each other (kvern provisions its brokers)")
    if len(brokers) == 2:  # a quorum of 2 is 2: losing either node stops every queue
        raise SpecError("hosts: 2 broker hosts cannot lose one; use 1, or 3 or more (an odd number)")
    if not brokers and not spec.broker_url:
        raise SpecError("hosts: no host has the broker role and there is no [broker] url")
    if not (spec.store_url or "").startswith("postgresql"):
        raise SpecError("hosts: the hosts share one job store: [store] url must be a PostgreSQL URL")
    # No controller rule: every application host runs one, and leases in the store decide which of them leads
    # each pool and the instance-wide duties (autoscale/shared.py). The role stays valid for older specs; alone it
    # makes a host that runs only a controller.
    return hosts


def _parse_host(name: str, host: _Reader, spec: Spec) -> HostSpec:
    if not HOST_NAME_PATTERN.match(name):
        raise SpecError(f"{host.where}: a host name is lower-case letters, digits and '-', starting with a letter")
    host.only("address", "roles", "pools", "weight")
    address = host.get("address", str, required=True)
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        raise SpecError(f"{host.where}.address: not an IPv4 address: {address!r}") from None
    if parsed.is_unspecified or parsed.is_loopback:
        raise SpecError(f"{host.where}.address: the address other hosts reach it at, not {address}")
    roles = host.get("roles", list, required=True)
    unknown = [role for role in roles if role not in HOST_ROLES]
    if unknown or not roles:
        raise SpecError(f"{host.where}.roles: expected some of {', '.join(HOST_ROLES)} (got {roles!r})")
    pools = tuple(host.get("pools", list, default=[]))
    known = {pool.name for pool in spec.pools}
    if any(pool not in known for pool in pools):
        raise SpecError(f"{host.where}.pools: not pools of the spec: {sorted(set(pools) - known)}")
    if pools and "workers" not in roles:
        raise SpecError(f"{host.where}.pools: only a host with the workers role runs pools")
    weight = host.get("weight", int, default=1)
    if not 1 <= weight <= MAX_HOST_WEIGHT:
        raise SpecError(f"{host.where}.weight: must be a whole number between 1 and {MAX_HOST_WEIGHT} (got {weight})")
    if "weight" in host.data and "web" not in roles:
        raise SpecError(f"{host.where}.weight: only a host with the web role gets requests to weigh")
    return HostSpec(name=name, address=address, roles=frozenset(roles), pools=pools, weight=weight)
