"""One running kvern instance: bring it up in order, report on it, take it down leaving nothing behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name

from kvern.broker.topology import dead_letter_queue, declare_delayed_delivery, declare_topology
from kvern.constants import (
    DOWN_REQUESTED_FILE,
    LOCAL_KEY_FILE,
    PROGRAM_BROKER,
    PROGRAM_CONTROLLER,
    PROGRAM_NGINX,
    ROLE_ADMIN,
    ROLE_CONTROLLER,
    ROLE_WEB,
    ROLE_WORKER,
    SQLITE_FILE,
    VHOST,
)
from kvern.errors import AlreadyRunning, RuntimeStateError, SpecError, StartError
from kvern.jobs.store import JobStore
from kvern.processes import ACTIVE_STATES, STOPPED_STATES, ProcessState, pool_slot
from kvern.runtime import nginx, run_as
from kvern.runtime.head_endpoints import HeadEndpoints
from kvern.runtime.leftovers import stop_leftovers
from kvern.runtime.local_key import renew_local_key
from kvern.runtime.programs import build_programs
from kvern.runtime.progress import Progress, Reporter, silent
from kvern.runtime.rabbitmq import BrokerPorts, PrivateNode, build_definitions
from kvern.runtime.supervisor import Supervisor, render_supervisord_conf
from kvern.runtime.web_heads import LiveHeads, publish_live
from kvern.runtime_config import RuntimeConfig, snapshot_spec
from kvern.spec import Spec, Tiers, check_config_path
from kvern.worker.check import ERROR_MARKER

ALL_TIERS = Tiers()
HEALTH_TIMEOUT_S = 90.0
USER_APP_CHECK_TIMEOUT_S = 60.0
HEALTH_POLL_S = 0.05
BROKER_READY_TIMEOUT_S = 90.0

# Broker roles, each with its own generated user; `role_permissions` says what each may do.
ROLES = (ROLE_WEB, ROLE_WORKER, ROLE_CONTROLLER, ROLE_ADMIN)
NO_NAME = "^$"  # a permission regex no queue or exchange matches
DEFAULT_EXCHANGE = "^amq\\.default$"
# The entry of Celery's native delayed delivery: a retry with a countdown is published there.
DELAYED_DELIVERY_ENTRY = level_name(MAX_LEVEL)


def role_permissions(queues: Sequence[str], store_url: str) -> dict[str, tuple[str, str, str]]:
    """What each role may do on kvern's vhost: (configure, write, read) regexes over queue and exchange names.

    `up` declares every queue, exchange and binding with the admin role, so no other role may configure
    (RabbitMQ's configure is also what deletes). Queue depths are passive declares, which need no permission.
    """
    return {
        ROLE_WEB: (NO_NAME, DEFAULT_EXCHANGE, NO_NAME),  # publish through the default exchange only
        # Consume the work queues; publish a retry to its queue's exchange (no delay) or the delay chain.
        ROLE_WORKER: (NO_NAME, _exactly([*queues, DELAYED_DELIVERY_ENTRY]), _exactly(queues)),
        # Publish again (outbox, stuck jobs) through the default exchange; consume the store's dead letters.
        ROLE_CONTROLLER: (NO_NAME, DEFAULT_EXCHANGE, _exactly([dead_letter_queue(store_url).name])),
        ROLE_ADMIN: (".*", ".*", ".*"),
    }


def _exactly(names: Sequence[str]) -> str:
    return "^(" + "|".join(re.escape(name) for name in names) + ")$"


def broker_user(role: str) -> str:
    return f"kvern-{role}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_state_dir(spec_path: Path) -> Path:
    return spec_path.resolve().parent / ".kvern"


@dataclass
class Instance:
    spec: Spec
    state_dir: Path
    # A host of a several-machine instance (runtime/hosts.py): each role's failover list of cluster nodes, and
    # whether this host runs a controller (each application host does; the leases decide who leads what).
    cluster_urls: dict[str, str] | None = None
    run_controller: bool = True
    # Which host of the spec this is (its controller shares the pools with the others), where its heads listen.
    runtime_extra: dict[str, str] = field(default_factory=dict)

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.state_dir)

    def is_running(self) -> bool:
        return self.supervisor.is_running()

    def runtime(self) -> RuntimeConfig:
        return RuntimeConfig.load(self.state_dir)

    def private_node(self, config: RuntimeConfig) -> PrivateNode | None:
        if not config.private_broker:
            return None
        ports = BrokerPorts(**{k: int(v) for k, v in _broker_ports(config).items()})
        timeout_ms = int((self.spec.longest_time_limit + 60) * 1000)
        return PrivateNode(self.state_dir / "rabbitmq", ports, timeout_ms)

    # -- up ---------------------------------------------------------------------------------------------

    @classmethod
    def started(cls, state_dir: Path) -> Instance:
        """The instance that runs (or last ran) with this state dir, with the spec it was started with."""
        return cls(RuntimeConfig.load(state_dir).spec(), state_dir)

    def up(self, only: Tiers = ALL_TIERS, report: Reporter = silent) -> RuntimeConfig:
        """Start every part; `report` gets a line as each becomes ready (broker, store, web heads, pools...)."""
        if self.is_running():
            raise AlreadyRunning(f"kvern is already running with state dir {self.state_dir}")
        with private_umask():  # what up writes (and supervisord, which sets its own umask=077 for its children)
            (self.state_dir / DOWN_REQUESTED_FILE).unlink(missing_ok=True)
            return self._up(only, report)

    def stopped_by_down(self) -> bool:
        """Whether the last stop of this instance was asked for with `down` (not a supervisord that died)."""
        return (self.state_dir / DOWN_REQUESTED_FILE).exists()

    def _up(self, only: Tiers, report: Reporter) -> RuntimeConfig:
        progress = Progress(report)
        check_config_path(self.state_dir, "state dir", StartError)  # it is written into every config file
        account = run_as.account_of(self.spec)  # [app] user, when kvern runs as root: programs run as it
        if account is not None:
            run_as.check_readable(self.spec, account)
        check_user_app(self.spec, account)  # a broken tasks module is a spec error: refuse before starting anything
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)  # an existing dir keeps its mode otherwise: it holds passwords and job data
        if account is not None:
            run_as.refuse_symlinks(self.state_dir)
        if not self.spec.store_url:
            private_sqlite_files(self.state_dir / SQLITE_FILE)
        # A previous run whose supervisord died may have left processes (the broker holds the node name).
        stop_leftovers(self.state_dir, self.stop_wait_s, report)
        # What runs is what was validated: a later edit of the spec file reaches no process of this instance.
        snapshot = snapshot_spec(self.spec, self.state_dir)
        config = self.new_runtime(only, snapshot, report)
        config.save()
        node = self.private_node(config)
        if node is not None:
            node.prepare(_broker_definitions(self.spec, config))  # users and vhost are loaded by the node as it boots
        run_web, pools = only.web, only.pools_of(self.spec)
        if run_web:
            publish_live(self.state_dir, self.first_heads)  # the upstreams nginx.conf includes
        if run_web and HeadEndpoints.of(config).front_door:
            nginx.write_config(self.state_dir, config.front_door_port, self.spec.static_dir, self.spec.web)
        programs = run_as.programs_as(build_programs(self.spec, config, node), account)
        if account is not None:
            run_as.hand_over(self.state_dir, account, sqlite=not self.spec.store_url)
        supervisor = self.supervisor
        owner = account.name if account else None
        supervisor.start_daemon(render_supervisord_conf(self.state_dir, f"kvern-{config.instance}", programs, owner))
        try:
            self._start_parts(config, node, run_web, [(p.name, p.min) for p in pools], progress)
        except BaseException:
            self.down()
            raise
        return config

    def _start_parts(
        self,
        config: RuntimeConfig,
        node: PrivateNode | None,
        run_web: bool,
        pools: list[tuple[str, int]],
        progress: Progress,
    ) -> None:
        """The broker boots (autostarted) while web heads import and the store's schema is made; then the rest."""
        supervisor = self.supervisor
        if run_web:  # a web head connects to the broker on its first request, not at start
            for name in self.first_heads.programs():
                supervisor.start(name, wait=False)
        store = JobStore(config.store_url)
        store.create_schema()
        if self.spec.web.auth == "keys":
            renew_local_key(store, self.state_dir)
        else:
            (self.state_dir / LOCAL_KEY_FILE).unlink(missing_ok=True)
        store.close()
        progress.mark("job store")
        if node is not None:
            self._wait_broker(config, node)
            progress.mark("broker")
        admin_url = config.broker_urls[ROLE_ADMIN]
        declare_topology(admin_url, {q: self.spec.max_backlog(q) for q in self.spec.all_queues}, config.store_url)
        declare_delayed_delivery(admin_url, self.spec.all_queues)  # workers may not declare it themselves
        for pool, minimum in pools:
            for index in range(minimum):
                supervisor.start(pool_slot(pool, index), wait=False)
        if self.run_controller:
            supervisor.start(PROGRAM_CONTROLLER, wait=False)
        self.wait_healthy(config, run_web, pools, progress)

    def _wait_broker(self, config: RuntimeConfig, node: PrivateNode) -> None:
        node.wait_login(
            broker_user(ROLE_ADMIN), _password(config, ROLE_ADMIN), VHOST, BROKER_READY_TIMEOUT_S, self._broker_alive
        )
        if node.bootstrap_user_exists():  # a node first booted by an older kvern, or guest from elsewhere
            node.remove_default_users(keep=_broker_users(self.spec, config))

    def _broker_alive(self) -> bool:
        return self.supervisor.process(PROGRAM_BROKER).state in ACTIVE_STATES

    def wait_healthy(
        self, config: RuntimeConfig, run_web: bool, pools: list[tuple[str, int]], progress: Progress | None = None
    ) -> None:
        """Until every pool's minimum is RUNNING and the front door answers healthy, reporting each part."""
        progress = progress or Progress(silent)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        waiting = _Waiting(self, config, run_web, pools, progress)
        while not waiting.step():
            if time.monotonic() > deadline:
                raise StartError(f"not healthy after {HEALTH_TIMEOUT_S:.0f}s (waiting for: {waiting.left()})")
            time.sleep(HEALTH_POLL_S)

    def new_runtime(self, only: Tiers, snapshot: Path, report: Reporter = silent) -> RuntimeConfig:
        previous = _previous_runtime(self.state_dir)
        common: dict[str, Any] = {
            "spec_path": str(self.spec.path),
            "spec_snapshot": str(snapshot),
            "state_dir": str(self.state_dir),
            "instance": f"{self.spec.name}-{hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:6]}",
            "front_door_port": self.spec.web.port or _front_door_port(previous, report),
            "store_url": self.spec.store_url or f"sqlite:///{self.state_dir / SQLITE_FILE}",
            "only": only,
        }
        if self.cluster_urls is not None:
            return RuntimeConfig(
                **common,
                broker_urls=self.cluster_urls,
                management_url=None,
                management_auth=None,
                private_broker=False,
                extra=dict(self.runtime_extra),
            )
        if self.spec.broker_url:
            # The user's URL serves every role: kvern cannot create users on a broker it does not own.
            urls = dict.fromkeys(ROLES, self.spec.broker_url)
            return RuntimeConfig(
                **common, broker_urls=urls, management_url=None, management_auth=None, private_broker=False
            )
        ports = {"amqp": free_port(), "dist": free_port()}
        passwords = {role: _reuse_password(previous, role) for role in ROLES}
        vhost = quote(VHOST, safe="")
        return RuntimeConfig(
            **common,
            broker_urls={
                role: f"amqp://{broker_user(role)}:{passwords[role]}@127.0.0.1:{ports['amqp']}/{vhost}"
                for role in ROLES
            },
            management_url=None,  # no management plugin: nothing reads it
            management_auth=None,
            private_broker=True,
            extra={f"broker_{k}_port": str(v) for k, v in ports.items()},
        )

    @property
    def first_heads(self) -> LiveHeads:
        """The web heads `up` starts: the spec's number, of the first color."""
        return LiveHeads(color=0, count=self.spec.web.heads, app=self.spec.web.app is not None)

    # -- down -------------------------------------------------------------------------------------------

    @property
    def stop_wait_s(self) -> float:
        """How long a graceful stop may take: a worker finishes its running job first."""
        return self.spec.longest_time_limit + 120

    def down(self, report: Reporter = silent) -> bool:
        """Stop everything (workers warm); returns False when nothing was running.

        Processes of the state dir that outlived their supervisord are stopped too, by pid.
        """
        supervisor = self.supervisor
        running = supervisor.is_running()
        if running:
            (self.state_dir / DOWN_REQUESTED_FILE).touch()
            progress = Progress(report)
            with contextlib.suppress(OSError, xmlrpc.client.Fault):  # shutdown() below still stops everything
                self._stop_in_tiers(progress)
            supervisor.shutdown(timeout=self.stop_wait_s)
            progress.mark("supervisor", "stopped")
        leftovers = stop_leftovers(self.state_dir, self.stop_wait_s, report)
        nginx.remove_front_dir(self.state_dir)
        return running or leftovers > 0

    def _stop_in_tiers(self, progress: Progress) -> None:
        """The front door first (it finishes the requests in flight), then all between it and the broker at once
        (workers finish their running job), the broker last (so workers can still ack)."""
        supervisor = self.supervisor
        live = [name for name, state in supervisor.states().items() if state not in STOPPED_STATES]
        middle = [name for name in live if name not in (PROGRAM_NGINX, PROGRAM_BROKER)]
        tiers = [
            ("front door", [PROGRAM_NGINX]),
            ("web heads, workers, controller", middle),
            ("broker", [PROGRAM_BROKER]),
        ]
        for label, names in tiers:
            present = [name for name in names if name in live]
            if present:
                supervisor.stop_together(present, self.stop_wait_s)
                progress.mark(label, "stopped")


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and dirs created meanwhile are the owner's only (0600 / 0700)."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def private_sqlite_files(database: Path) -> None:
    """The SQLite store holds job args and results: owner only, even when an older kvern made it 0644.

    SQLite gives the -wal and -shm files it creates the database file's mode, so they follow.
    """
    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            path.chmod(0o600)


def check_user_app(spec: Spec, account: run_as.Account | None = None) -> None:
    """Load the user's code in child processes, as a worker and an app head would: the tasks module and, with
    `[web] app`, the web app (both at once), as `account` when the programs run as one (root never imports the
    team's code then). A failure is a `SpecError` in one line, the tasks module's first."""
    checks = [
        (f"app.tasks: loading {spec.tasks_module!r}", [sys.executable, "-m", "kvern.worker.check", str(spec.path)])
    ]
    if spec.web.app is not None:
        checks.append(
            (
                f"web.app: loading {spec.web.app!r}",
                [sys.executable, "-m", "kvern.runtime.app_head", "--check", str(spec.path)],
            )
        )
    as_account: dict[str, Any] = {}
    if account is not None:
        as_account = {
            "user": account.uid,
            "group": account.gid,
            "extra_groups": account.groups,
            "env": {**os.environ, **account.environment},
        }
    children = [
        (
            what,
            subprocess.Popen(
                command, cwd=spec.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **as_account
            ),
        )
        for what, command in checks
    ]
    deadline = time.monotonic() + USER_APP_CHECK_TIMEOUT_S
    try:
        failures = [_check_failure(what, child, deadline) for what, child in children]
    finally:
        for _what, child in children:
            child.kill()  # after a timeout: the others are not waited for
            child.wait()
    first = next((failure for failure in failures if failure is not None), None)
    if first is not None:
        raise SpecError(first)


def _check_failure(what: str, child: subprocess.Popen[str], deadline: float) -> str | None:
    """The one line a check child reports, or None when it loaded the code."""
    try:
        _out, stderr = child.communicate(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        return f"{what} did not finish in {USER_APP_CHECK_TIMEOUT_S:.0f}s"
    if child.returncode == 0:
        return None
    reported = [line for line in stderr.splitlines() if line.startswith(ERROR_MARKER)]
    if reported:
        return reported[-1].removeprefix(ERROR_MARKER)
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    return f"{what} failed (exit {child.returncode}): {last}"


RABBITMQ_DEFAULT_CONSUMER_TIMEOUT_S = 1800.0


def consumer_timeout_warning(spec: Spec) -> str | None:
    """On an external broker kvern cannot set the consumer timeout: warn when a task may outlive the default.

    RabbitMQ closes the channel of a consumer that holds a message longer than `consumer_timeout`, which
    would redeliver a long task while it still runs.
    """
    if spec.broker_url is None or spec.longest_time_limit < RABBITMQ_DEFAULT_CONSUMER_TIMEOUT_S:
        return None
    needed_ms = int((spec.longest_time_limit + 60) * 1000)
    return (
        f"warning: a task may run {spec.longest_time_limit:.0f}s, longer than RabbitMQ's default consumer_timeout "
        f"(30 min): set consumer_timeout >= {needed_ms} on the external broker, or long tasks are redelivered"
    )


def auth_off_warning(spec: Spec) -> str | None:
    if spec.web.auth != "off":
        return None
    return (
        'WARNING: web.auth = "off": the job API answers anyone who reaches it, with no API key. Every address is '
        "loopback, but every program and user of this machine can submit, read and erase jobs."
    )


def root_warning(spec: Spec) -> str | None:
    """As root without `[app] user`, the team's code (app heads, workers) runs as root: say so at every `up`."""
    if os.geteuid() != 0 or spec.user is not None:
        return None
    return (
        "WARNING: kvern runs as root and [app] user is not set: the web heads, workers and controller (your app's "
        'and tasks\' code) run as root. Set [app] user = "<account>" to run them as that account (README, Security).'
    )


def front_door_url(config: RuntimeConfig) -> str:
    return f"http://127.0.0.1:{config.front_door_port}"


def _front_door_healthy(config: RuntimeConfig, api_prefix: str) -> bool:
    try:
        response = httpx.get(f"{front_door_url(config)}{api_prefix}/health", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _broker_ports(config: RuntimeConfig) -> dict[str, str]:
    return {k.removeprefix("broker_").removesuffix("_port"): v for k, v in config.extra.items()}


def _previous_runtime(state_dir: Path) -> RuntimeConfig | None:
    try:
        return RuntimeConfig.load(state_dir)
    except (RuntimeStateError, TypeError, ValueError):
        return None


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nginx could listen on `port` (it sets SO_REUSEADDR too, so TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _front_door_port(previous: RuntimeConfig | None, report: Reporter) -> int:
    """The previous run's port when it is still free, so bookmarks and scripts keep working across restarts."""
    if previous is None or not previous.front_door_port:
        return free_port()
    if port_is_free(previous.front_door_port):
        return previous.front_door_port
    port = free_port()
    report(f"front door port {previous.front_door_port} is taken by another program: using {port} this time")
    return port


def _broker_users(spec: Spec, config: RuntimeConfig) -> dict[str, tuple[str, tuple[str, str, str]]]:
    permissions = role_permissions(spec.all_queues, config.store_url)
    return {broker_user(role): (_password(config, role), permissions[role]) for role in ROLES}


def _broker_definitions(spec: Spec, config: RuntimeConfig) -> dict[str, Any]:
    users = _broker_users(spec, config)
    return build_definitions(VHOST, users, tags={broker_user(ROLE_ADMIN): ("administrator",)})


class _Waiting:
    """What `wait_healthy` still waits for: each pool's minimum, the web heads' sockets, then the front door."""

    def __init__(
        self, instance: Instance, config: RuntimeConfig, run_web: bool, pools: list[tuple[str, int]], progress: Progress
    ) -> None:
        self.instance, self.config, self.run_web, self.progress = instance, config, run_web, progress
        self.pools = {pool: {pool_slot(pool, i) for i in range(minimum)} for pool, minimum in pools}
        heads = instance.first_heads if run_web else LiveHeads(0, 0, app=False)
        endpoints = HeadEndpoints.of(config)
        self.heads = [endpoints.api(slot) for slot in heads.slots]
        self.app_heads = [endpoints.app(slot) for slot in heads.slots] if heads.app else []
        self.front_door = endpoints.front_door  # a web host without it: the heads listening is all
        self.nginx_started = False

    def step(self) -> bool:
        states = {p.full_name: p.state for p in self.instance.supervisor.processes()}
        for pool, slots in self.pools.items():
            if all(states.get(slot) is ProcessState.RUNNING for slot in slots):
                self.progress.mark(f"pool {pool}", f"up, {len(slots)} process(es)")
        pools_up = all(f"pool {pool}" in self.progress.done for pool in self.pools)
        if not self.run_web:
            return pools_up
        heads_up = "web heads" in self.progress.done
        if not heads_up and all(head.listening() for head in self.heads + self.app_heads):
            # nginx only once the heads listen: connection errors before that would count against max_fails.
            where = "" if self.front_door else f" on {self.heads[0].address}"
            self.progress.mark("web heads", f"up, {len(self.heads)} listening{where}")
            if self.app_heads:
                self.progress.mark("app heads", f"up, {len(self.app_heads)} listening ({self.instance.spec.web.app})")
            if self.front_door:
                self.instance.supervisor.start(PROGRAM_NGINX, wait=False)
                self.nginx_started = True
        if not self.front_door:  # a web host: the front host's nginx reaches its heads
            return pools_up and "web heads" in self.progress.done
        if self.nginx_started and "front door" not in self.progress.done and self._front_door_healthy():
            self.progress.mark("front door", f"healthy at {front_door_url(self.config)}")
        return pools_up and "front door" in self.progress.done

    def _front_door_healthy(self) -> bool:
        return _front_door_healthy(self.config, self.instance.spec.web.api_prefix)  # the API's public path

    def left(self) -> str:
        pools = [f"pool {pool}" for pool in self.pools if f"pool {pool}" not in self.progress.done]
        parts: tuple[str, ...] = ("web heads", "app heads") if self.app_heads else ("web heads",)
        parts += ("front door",) if self.front_door else ()
        web = [] if not self.run_web else [p for p in parts if p not in self.progress.done]
        return ", ".join(pools + web) or "nothing"


def _reuse_password(previous: RuntimeConfig | None, role: str) -> str:
    # Keep credentials across restarts: the private node's data dir already knows these users.
    if previous is not None and previous.private_broker and role in previous.broker_urls:
        password = urlsplit(previous.broker_urls[role]).password
        if password:
            return password
    return secrets.token_hex(16)


def _password(config: RuntimeConfig, role: str) -> str:
    password = urlsplit(config.broker_urls[role]).password
    assert password is not None
    return password


def owned_pids(state_dir: Path) -> list[int]:
    """Processes whose command line or environment names this state dir: what tests check is gone after `down`.

    `down` itself does not use it: it stops the instance's processes found by `leftovers.instance_pids`.
    """
    found = []
    marker = str(state_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmdline or marker in environ:
            found.append(int(entry.name))
    return found
