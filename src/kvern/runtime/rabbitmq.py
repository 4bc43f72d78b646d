"""kvern's own private RabbitMQ node, fully contained in one state directory.

The node is Debian's RabbitMQ 3.10 started in the foreground by `rabbitmq-server`; Supervisor runs it, so this
module only produces the command and the environment, never a daemon. Everything the node reads or writes
(config, enabled plugins, Erlang cookie, Mnesia, logs) lives under `state_dir`, so it coexists with the
machine's own broker and with other kvern instances: every listener is on 127.0.0.1 only, on ports the caller
chose, and the node name is derived from the state dir.

Isolation gotchas handled here (from reading rabbitmq-server/rabbitmq-env and checking a running 3.10 node):

- `rabbitmq-env` sources /etc/rabbitmq/rabbitmq-env.conf (which may set NODENAME, ERL_FLAGS, ...) and the
  node loads /etc/rabbitmq/conf.d/*.conf, advanced.config and motd: every one of those paths is redirected
  into the state dir.
- Unless told otherwise, `rabbitmq-server` forks Erlang and waits in a shell with traps: Supervisor's SIGTERM
  reaches the shell, a SIGKILL would orphan the VM, and the shell exits 0 even when the VM crashed.
  `RABBITMQ_ALLOW_INPUT` makes it `exec` the VM (the pid Supervisor holds *is* beam.smp, which handles
  SIGTERM as a clean shutdown); `-noinput` on the command line keeps the Erlang shell off.
- The distribution listener and the CLI tools' own distribution listener (35672-35682) bind 0.0.0.0 unless
  `inet_dist_use_interface` is set for both the server and `rabbitmqctl`.
- A fresh node creates guest/guest (administrator): here the first user is `kvern-bootstrap`, whose password
  is derived from the private cookie, and `provision` deletes it (and `guest`, should it exist).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp

from kvern.errors import BrokerAdminError
from kvern.files import atomic_write

__all__ = ["RABBITMQCTL", "RABBITMQ_SERVER", "BrokerAdminError", "BrokerPorts", "PrivateNode"]

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"
RABBITMQCTL = RABBITMQ_BIN / "rabbitmqctl"

LOOPBACK = "127.0.0.1"
# Erlang term form, for the kernel parameter that pins distribution listeners to loopback.
_LOOPBACK_DIST_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"
# rabbitmq-server passes `+sbwt none` (never spin: polite on a shared machine), but boot is a long serial chain
# of module loads hopping between scheduler threads, and every hop then waits for a wake-up. A very short spin
# took the median boot from 6.0 s to 4.5 s on a 2-vCPU VM, with no measurable idle CPU. Later flags win.
_SHORT_SPIN_ARGS = "+sbwt very_short +sbwtdcpu very_short +sbwtdio very_short"
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BOOTSTRAP_USER = "kvern-bootstrap"
# Users a fresh node may hold that nobody asked for; `provision` removes them.
DEFAULT_USERS = ("guest", BOOTSTRAP_USER)
# No plugins: nothing in kvern reads the management API (queue depths come over AMQP, broker/admin.py), and
# the management plugin cost about a second of every boot and five seconds of every shutdown.
PLUGINS: tuple[str, ...] = ()
DEFINITIONS_FILE = "definitions.json"

_PORT_POLL_S = 0.1
_LOGIN_POLL_S = 0.05


@dataclass(frozen=True)
class BrokerPorts:
    """The node's three TCP listeners, all bound to 127.0.0.1."""

    amqp: int
    dist: int  # Erlang distribution (rabbitmqctl talks to the node through it)
    management: int | None = None  # management plugin HTTP API, only if that plugin is enabled

    def __post_init__(self) -> None:
        ports = tuple(p for p in (self.amqp, self.dist, self.management) if p is not None)
        if any(not 0 < port < 65536 for port in ports):
            raise ValueError(f"broker ports must be in 1..65535: {self}")
        if len(set(ports)) != len(ports):
            raise ValueError(f"broker ports must be distinct: {self}")


@dataclass(frozen=True)
class PrivateNode:
    """A private RabbitMQ node whose whole state lives in `state_dir`."""

    state_dir: Path
    ports: BrokerPorts
    consumer_timeout_ms: int
    # Absolute limits, not fractions of RAM/disk: several nodes may share one machine.
    memory_high_watermark_mib: int = 1024
    disk_free_limit_mib: int = 512
    # A cluster node (runtime/cluster.py) listens on its host's address, is named after it (no DNS needed) and
    # takes the cluster's shared cookie; a private node keeps to loopback and makes its own cookie.
    address: str = LOOPBACK
    cookie: str | None = field(default=None, repr=False)

    @property
    def clustered(self) -> bool:
        return self.address != LOOPBACK

    def __post_init__(self) -> None:
        # Absolute, so the node name (a hash of it) does not depend on the caller's working directory.
        object.__setattr__(self, "state_dir", Path(self.state_dir).resolve())
        if self.consumer_timeout_ms <= 0:
            raise ValueError("consumer_timeout_ms must be positive")
        if self.memory_high_watermark_mib <= 0 or self.disk_free_limit_mib <= 0:
            raise ValueError("memory and disk limits must be positive")

    # -- names and paths -----------------------------------------------------------------------------------

    @property
    def node_name(self) -> str:
        """Unique per state dir, so two instances (and the system broker's `rabbit@...`) never clash in epmd."""
        if self.clustered:  # one node per host: its address names it, and peers reach it there
            return f"kvern@{self.address}"
        digest = hashlib.sha1(str(self.state_dir).encode(), usedforsecurity=False).hexdigest()[:8]
        return f"kvern-{digest}@localhost"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "rabbitmq.conf"

    @property
    def cookie_file(self) -> Path:
        """In $HOME, which is the state dir: where both the server and rabbitmqctl look for it."""
        return self.state_dir / ".erlang.cookie"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "log" / f"{self.node_name}.log"

    # -- files ---------------------------------------------------------------------------------------------

    def prepare(self, definitions: Mapping[str, Any] | None = None) -> None:
        """Write config, plugins list and cookie; safe to repeat (the cookie, once made, is kept).

        `definitions` (vhosts, users, permissions, as `provision` builds them) are imported by the node itself
        while it boots: no rabbitmqctl run (about a second of CPU each) on the way to a ready node.
        """
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)  # the cookie and the bootstrap password live here
        for sub in ("mnesia", "log", "conf.d"):
            (self.state_dir / sub).mkdir(mode=0o700, exist_ok=True)
        cookie = self._ensure_cookie()
        definitions_file = None
        if definitions is not None:
            definitions_file = self.state_dir / DEFINITIONS_FILE
            atomic_write(definitions_file, json.dumps(definitions), mode=0o600)  # passwords: owner only
        atomic_write(self.config_file, self._render_config(cookie, definitions_file), mode=0o600)
        atomic_write(self.state_dir / "enabled_plugins", f"[{','.join(PLUGINS)}].\n", mode=0o600)
        # Present (and empty) so nothing is sourced from /etc/rabbitmq/rabbitmq-env.conf.
        atomic_write(
            self.state_dir / "rabbitmq-env.conf",
            "# Intentionally empty: kvern passes the node's settings in its environment.\n",
            mode=0o600,
        )

    def _ensure_cookie(self) -> str:
        """The node's Erlang cookie: made once and kept, since the node and rabbitmqctl must agree on it."""
        if self.cookie is not None:  # the cluster's: every node and every rabbitmqctl of it must share it
            atomic_write(self.cookie_file, self.cookie, mode=0o400)
            return self.cookie
        with contextlib.suppress(FileNotFoundError):
            cookie = self.cookie_file.read_text().strip()
            if cookie:
                self.cookie_file.chmod(0o400)  # Erlang refuses a cookie others can read
                return cookie
        cookie = secrets.token_hex(20).upper()
        atomic_write(self.cookie_file, cookie, mode=0o400)
        return cookie

    def _render_config(self, cookie: str, definitions_file: Path | None = None) -> str:
        bootstrap_password = hmac.new(cookie.encode(), BOOTSTRAP_USER.encode(), hashlib.sha256).hexdigest()
        ports = self.ports
        lines = [
            "# Written by kvern (runtime/rabbitmq.py); regenerated on every start.",
            f"listeners.tcp.default = {self.address}:{ports.amqp}",
            "listeners.ssl = none",
        ]
        if ports.management is not None:
            lines += [f"management.tcp.ip = {LOOPBACK}", f"management.tcp.port = {ports.management}"]
        if definitions_file is not None:
            lines.append(f"load_definitions = {definitions_file}")
        lines += [
            f"consumer_timeout = {self.consumer_timeout_ms}",
            f"vm_memory_high_watermark.absolute = {self.memory_high_watermark_mib}MiB",
            f"disk_free_limit.absolute = {self.disk_free_limit_mib}MiB",
            # A fresh node's first user: not guest/guest; provision() deletes it.
            f"default_user = {BOOTSTRAP_USER}",
            f"default_pass = {bootstrap_password}",
            # A node cut off from the majority stops serving rather than diverging; it resumes on healing.
            *(["cluster_partition_handling = pause_minority"] if self.clustered else []),
            "log.console = false",
            "log.file.level = info",
            "log.file.rotation.size = 10485760",
            "log.file.rotation.count = 5",
        ]
        return "\n".join(lines) + "\n"

    # -- process -------------------------------------------------------------------------------------------

    def command(self) -> list[str]:
        """Foreground server; with `environment()` the script execs, so this pid is beam.smp itself."""
        return [str(RABBITMQ_SERVER), "-noinput"]

    def environment(self) -> dict[str, str]:
        """The complete environment for the server and rabbitmqctl: nothing is inherited from the caller.

        Values that could leak in from a parent (Supervisor merges this onto its own environment) are set
        explicitly, so a stray ERL_FLAGS or RABBITMQ_USE_LONGNAME cannot change the node.
        """
        state = self.state_dir
        return {
            "PATH": _SAFE_PATH,
            "HOME": str(state),  # the Erlang cookie is $HOME/.erlang.cookie: private to this node
            "LANG": "C.UTF-8",  # the CLI tools complain without a UTF-8 locale
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_USE_LONGNAME": "true" if self.clustered else "false",
            "RABBITMQ_NODE_IP_ADDRESS": self.address,
            "RABBITMQ_NODE_PORT": str(self.ports.amqp),
            "RABBITMQ_DIST_PORT": str(self.ports.dist),
            "RABBITMQ_CONF_ENV_FILE": str(state / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.config_file),
            "RABBITMQ_CONFIG_FILES": str(state / "conf.d" / "*.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(state / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(state / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(state / "mnesia"),
            "RABBITMQ_LOG_BASE": str(state / "log"),
            "RABBITMQ_MOTD_FILE": str(state / "motd"),
            # exec the VM instead of trapping signals in a shell; -noinput (in command()) keeps the shell off.
            "RABBITMQ_ALLOW_INPUT": "true",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"{self._dist_args} {_SHORT_SPIN_ARGS}",
            "RABBITMQ_CTL_ERL_ARGS": self._dist_args,
            "ERL_CRASH_DUMP": str(state / "erl_crash.dump"),  # not the working directory
            "ERL_EPMD_ADDRESS": self.address,  # only used if this node has to start epmd itself
            "ERL_FLAGS": "",
            "ERL_AFLAGS": "",
            "ERL_ZFLAGS": "",
            "ERL_LIBS": "",
        }

    @property
    def _dist_args(self) -> str:
        """Pin the distribution listeners (the node's and rabbitmqctl's) to the node's address."""
        if not self.clustered:
            return _LOOPBACK_DIST_ARGS
        return f"-kernel inet_dist_use_interface {{{self.address.replace('.', ',')}}}"

    # -- administration ------------------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 30, stdin: str | None = None) -> str:
        """Run rabbitmqctl against this node (its cookie, its name); returns stdout.

        Secrets go through `stdin`, never `args`: a command line is readable by every user of the machine.
        """
        command = [str(RABBITMQCTL), *args]
        shown = " ".join(args)
        try:
            done = subprocess.run(
                command,
                env=self.environment(),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerAdminError(f"rabbitmqctl {shown} timed out after {timeout:g}s ({self.node_name})") from exc
        except OSError as exc:
            raise BrokerAdminError(f"cannot run {RABBITMQCTL}: {exc}") from exc
        if done.returncode != 0:
            detail = (done.stderr.strip() or done.stdout.strip()).replace("\n", " ")
            raise BrokerAdminError(
                f"rabbitmqctl {shown} failed with exit code {done.returncode} ({self.node_name}): {detail}"
            )
        return done.stdout

    def wait_ready(self, timeout: float = 60, process: subprocess.Popen[Any] | None = None) -> None:
        """Block until the node accepts AMQP connections and has finished booting (plugins included).

        The AMQP port is polled first because it is cheap: each rabbitmqctl run costs a second of CPU, which a
        booting node on a small machine would feel. Pass the `process` you started to fail fast if it exits.
        """
        deadline = time.monotonic() + timeout
        while not _port_open(self.address, self.ports.amqp):
            if process is not None and process.poll() is not None:
                raise BrokerAdminError(
                    f"RabbitMQ node {self.node_name} exited with code {process.returncode} while starting"
                    f"{self._diagnostics()}"
                )
            if time.monotonic() >= deadline:
                raise BrokerAdminError(
                    f"RabbitMQ node {self.node_name} not listening on {self.address}:{self.ports.amqp} "
                    f"after {timeout:g}s{self._diagnostics()}"
                )
            time.sleep(_PORT_POLL_S)
        remaining = max(1.0, deadline - time.monotonic())
        self.ctl("await_startup", "--timeout", str(int(remaining) + 1), timeout=remaining + 15)

    def provision(
        self,
        vhost: str,
        users: Mapping[str, tuple[str, tuple[str, str, str]]],
        tags: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Create `vhost` and the users on it, declaratively; remove the default users.

        users: name -> (password, (configure, write, read) permission regexes on `vhost`).
        tags: name -> user tags (e.g. ("administrator",)); a user not named here gets no tags.
        Repeating it is safe: an existing user gets the given password, permissions and tags.
        One definitions import does it all: each rabbitmqctl run costs ~0.5 s, and passwords go through stdin.
        """
        self.ctl("import_definitions", "--format", "json", stdin=json.dumps(build_definitions(vhost, users, tags)))
        self.remove_default_users(keep=users)

    def remove_default_users(self, keep: Mapping[str, object] | None = None) -> None:
        """Delete the users a fresh node made for itself (`kvern-bootstrap`, `guest`) unless asked to keep them."""
        keep = keep or {}
        existing = {entry["user"] for entry in json.loads(self.ctl("-q", "list_users", "--formatter", "json"))}
        for name in DEFAULT_USERS:
            if name in existing and name not in keep:
                self.ctl("delete_user", "--", name)

    def bootstrap_user_exists(self) -> bool:
        """Whether the node's first user still logs in (over AMQP: far cheaper than a rabbitmqctl run)."""
        cookie = self.cookie_file.read_text().strip()
        password = hmac.new(cookie.encode(), BOOTSTRAP_USER.encode(), hashlib.sha256).hexdigest()
        return _amqp_login(self.address, self.ports.amqp, BOOTSTRAP_USER, password, "/") in ("ok", "no access")

    def wait_login(
        self, user: str, password: str, vhost: str, timeout: float, process_alive: Callable[[], bool]
    ) -> None:
        """Block until `user` can open `vhost` over AMQP: the node has booted and imported its definitions.

        Polled every 50 ms instead of `rabbitmqctl await_startup`, whose own start costs a second of CPU.
        """
        deadline = time.monotonic() + timeout
        while _amqp_login(self.address, self.ports.amqp, user, password, vhost) != "ok":
            if not process_alive():
                raise BrokerAdminError(f"RabbitMQ node {self.node_name} exited while starting{self._diagnostics()}")
            if time.monotonic() >= deadline:
                raise BrokerAdminError(
                    f"RabbitMQ node {self.node_name} did not let {user} in after {timeout:g}s{self._diagnostics()}"
                )
            time.sleep(_LOGIN_POLL_S)

    def _diagnostics(self, lines: int = 15) -> str:
        """What went wrong, as far as the state dir tells: the crash slogan and the end of the node's log.

        A node that dies in prelaunch (port taken, bad config) has no log file yet: its reason is on stdout
        (Supervisor's log of the program) and in the crash dump's first lines.
        """
        parts = []
        dump = self.state_dir / "erl_crash.dump"
        with contextlib.suppress(OSError), dump.open(errors="replace") as handle:
            head = [handle.readline() for _ in range(3)]
            slogan = next((line.strip() for line in head if line.startswith("Slogan:")), "")
            written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dump.stat().st_mtime))
            parts.append(f"crash dump {dump} (written {written}): {slogan[:500]}")
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            parts.append(f"no log at {self.log_file} yet; see the node's stdout")
        else:
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"last lines of {self.log_file}:\n{tail}")
        return "; " + "; ".join(parts)


def build_definitions(
    vhost: str,
    users: Mapping[str, tuple[str, tuple[str, str, str]]],
    tags: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """RabbitMQ definitions (the import format) for `vhost` and its users; see `PrivateNode.provision`."""
    tags = tags or {}
    _check_users(users, tags)
    return {
        "vhosts": [{"name": vhost}],
        "users": [
            {"name": name, "password": password, "tags": list(tags.get(name, ()))}
            for name, (password, _permissions) in users.items()
        ],
        "permissions": [
            {"user": name, "vhost": vhost, "configure": configure, "write": write, "read": read}
            for name, (_password, (configure, write, read)) in users.items()
        ],
    }


def _amqp_login(address: str, port: int, user: str, password: str, vhost: str) -> str:
    """ "ok", "refused" (the broker answered: bad credentials or no access) or "down" (no answer yet)."""
    connection = amqp.Connection(
        f"{address}:{port}", userid=user, password=password, virtual_host=vhost, connect_timeout=1
    )
    try:
        connection.connect()
    except amqp.exceptions.AccessRefused:
        outcome = "refused"
    except amqp.exceptions.NotAllowed:
        outcome = "no access"  # authenticated, but not on this vhost
    except (OSError, amqp.exceptions.AMQPError):
        outcome = "down"
    else:
        with contextlib.suppress(Exception):
            connection.close()
        return "ok"
    with contextlib.suppress(Exception):
        connection.collect()
    return outcome


def _check_users(users: Mapping[str, tuple[str, tuple[str, str, str]]], tags: Mapping[str, Sequence[str]]) -> None:
    for name, (password, _permissions) in users.items():
        if not name or name != name.strip() or any(c in name for c in "\r\n"):
            raise ValueError(f"invalid broker user name: {name!r}")
        if not password:  # an empty password would disable password login, not grant it
            raise ValueError(f"empty password for broker user {name!r}")
    unknown = set(tags) - set(users)
    if unknown:
        raise ValueError(f"tags given for users not provisioned: {sorted(unknown)}")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
