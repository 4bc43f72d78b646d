"""`kvern up --host NAME`: start the part of a several-machine instance that the spec's `[hosts]` gives NAME.

Each host runs its own state dir and Supervisor, as a one-machine instance does; what differs is what it
starts and where its secrets come from (the shared secrets file, runtime/shared_secrets.py). Broker hosts
run one node of kvern's RabbitMQ cluster (runtime/cluster.py). A web host without the front door runs its
heads on TCP at its own address, for the front host's nginx (runtime/head_endpoints.py). Layouts not built
per host yet are refused with the way round.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kvern.constants import PROGRAM_BROKER, ROLE_ADMIN, RUNTIME_HOST_KEY, VHOST
from kvern.errors import AlreadyRunning, SpecError, StartError
from kvern.processes import ACTIVE_STATES
from kvern.runtime.cluster import amqp_urls, cluster_node, ensure_member
from kvern.runtime.head_endpoints import HEADS_ADDRESS_KEY, HeadEndpoints, heads_address
from kvern.runtime.instance import (
    BROKER_READY_TIMEOUT_S,
    ROLES,
    Instance,
    broker_user,
    private_umask,
    role_permissions,
)
from kvern.runtime.leftovers import stop_leftovers
from kvern.runtime.programs import build_programs
from kvern.runtime.progress import Progress, Reporter, silent
from kvern.runtime.rabbitmq import PrivateNode, build_definitions
from kvern.runtime.shared_secrets import SharedSecrets
from kvern.runtime.supervisor import render_supervisord_conf
from kvern.runtime_config import RuntimeConfig, snapshot_spec
from kvern.spec import HostSpec, Spec, Tiers, check_config_path

BROKER_ONLY = frozenset({"broker"})


def host_of(spec: Spec, name: str) -> HostSpec:
    for host in spec.hosts:
        if host.name == name:
            return host
    known = ", ".join(host.name for host in spec.hosts) or "none: the spec has no [hosts]"
    raise SpecError(f"--host: {name!r} is not a host of the spec (hosts: {known})")


@dataclass
class HostInstance:
    """One host's part of the instance: `instance` gives the spec and this host's state dir."""

    instance: Instance
    host: HostSpec
    secrets: SharedSecrets

    @classmethod
    def load(cls, instance: Instance, name: str, secrets_path: Path) -> HostInstance:
        host = host_of(instance.spec, name)
        _check_supported(instance.spec, host)
        return cls(instance, host, SharedSecrets.load(secrets_path, ROLES))

    @property
    def spec(self) -> Spec:
        return self.instance.spec

    @property
    def state_dir(self) -> Path:
        return self.instance.state_dir

    def up(self, report: Reporter = silent) -> RuntimeConfig:
        if self.instance.is_running():
            raise AlreadyRunning(f"kvern is already running with state dir {self.state_dir}")
        if self.host.roles != BROKER_ONLY:
            return self._up_application(report)
        with private_umask():
            return self._up(Progress(report), report)

    def _up_application(self, report: Reporter) -> RuntimeConfig:
        """Front door and web heads, worker pools, the controller: the one-machine `up` on the cluster's URLs."""
        host = self.host
        if host.runs("controller") and host.roles != {"controller"}:
            report(f"hosts.{host.name}: the controller role is no longer needed: every host runs a controller")
        return self.application_instance().up(tiers_of(self.spec, host), report)

    def application_instance(self) -> Instance:
        """The one-machine instance this application host runs, on the cluster's URLs."""
        spec, host = self.spec, self.host
        vhost = quote(VHOST, safe="")
        urls = {role: amqp_urls(spec, broker_user(role), self.secrets.broker_passwords[role], vhost) for role in ROLES}
        extra = {RUNTIME_HOST_KEY: host.name}
        address = heads_address(host, spec.web)
        if address is not None:
            extra[HEADS_ADDRESS_KEY] = address
        return replace(self.instance, cluster_urls=urls, runtime_extra=extra)

    def runtime_config(self, snapshot: Path) -> RuntimeConfig:
        """The runtime config `up` gives this host (nothing is started), for the commands run on it later."""
        if self.host.roles == BROKER_ONLY:
            return self._runtime(snapshot)
        return self.application_instance().new_runtime(tiers_of(self.spec, self.host), snapshot)

    def _up(self, progress: Progress, report: Reporter) -> RuntimeConfig:
        check_config_path(self.state_dir, "state dir", StartError)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        stop_leftovers(self.state_dir, self.instance.stop_wait_s, report)
        config = self._runtime(snapshot_spec(self.spec, self.state_dir))
        config.save()
        node = self.node()
        node.prepare(self._definitions())
        programs = [p for p in build_programs(self.spec, config, node) if p.name == PROGRAM_BROKER]
        supervisor = self.instance.supervisor
        supervisor.start_daemon(render_supervisord_conf(self.state_dir, f"kvern-{config.instance}", programs))
        try:
            self._start_broker(node, progress)
        except BaseException:
            self.instance.down()
            raise
        return config

    def node(self) -> PrivateNode:
        timeout_ms = int((self.spec.longest_time_limit + 60) * 1000)
        return cluster_node(self.state_dir / "rabbitmq", self.host, timeout_ms, self.secrets.erlang_cookie)

    def _start_broker(self, node: PrivateNode, progress: Progress) -> None:
        admin = broker_user(ROLE_ADMIN)
        node.wait_login(
            admin, self.secrets.broker_passwords[ROLE_ADMIN], VHOST, BROKER_READY_TIMEOUT_S, self._broker_alive
        )
        if node.bootstrap_user_exists():
            node.remove_default_users(keep=self._users())
        progress.mark("broker", f"node {node.node_name} up")
        progress.mark("cluster", ensure_member(node, self.spec, self.host))

    def _broker_alive(self) -> bool:
        return self.instance.supervisor.process(PROGRAM_BROKER).state in ACTIVE_STATES

    def _users(self) -> dict[str, tuple[str, tuple[str, str, str]]]:
        permissions = role_permissions(self.spec.all_queues, self.spec.store_url or "")
        return {broker_user(role): (self.secrets.broker_passwords[role], permissions[role]) for role in ROLES}

    def _definitions(self) -> dict[str, Any]:
        return build_definitions(VHOST, self._users(), tags={broker_user(ROLE_ADMIN): ("administrator",)})

    def _runtime(self, snapshot: Path) -> RuntimeConfig:
        vhost = quote(VHOST, safe="")
        urls = {
            role: amqp_urls(self.spec, broker_user(role), self.secrets.broker_passwords[role], vhost, first=self.host)
            for role in ROLES
        }
        digest = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:6]
        return RuntimeConfig(
            spec_path=str(self.spec.path),
            spec_snapshot=str(snapshot),
            state_dir=str(self.state_dir),
            instance=f"{self.spec.name}-{self.host.name}-{digest}",
            front_door_port=0,
            store_url=self.spec.store_url or "",
            broker_urls=urls,
            management_url=None,
            management_auth=None,
            private_broker=False,  # not the one-machine private node: its ports and name come from the host
            only=Tiers(web=False, pools=False),  # its node alone: no pool of the spec runs here
            extra={RUNTIME_HOST_KEY: self.host.name},
        )


def tiers_of(spec: Spec, host: HostSpec) -> Tiers:
    """What the one-machine `up` runs on this host: the web tier, and all of its pools or one of them."""
    web = host.runs("web")
    if not host.runs("workers"):
        return Tiers(web=web, pools=False)
    if len(host.pools) == 1:
        return Tiers(web=web, pools=False, pool=host.pools[0])
    return Tiers(web=web)


def pools_run_by(spec: Spec, host: HostSpec) -> tuple[str, ...]:
    """The names of the pools `host` runs (none without the workers role)."""
    return tuple(pool.name for pool in tiers_of(spec, host).pools_of(spec))


def running_host(spec: Spec, config: RuntimeConfig) -> HostSpec | None:
    """The host of the spec this instance is (`up --host`); None on one machine."""
    name = config.extra.get(RUNTIME_HOST_KEY)
    return next((host for host in spec.hosts if host.name == name), None)


def front_door_refusal(spec: Spec, config: RuntimeConfig, command: str) -> str | None:
    """Why `kvern COMMAND`, which goes through the front door, cannot run on this host; None where it can."""
    host = running_host(spec, config)
    if host is None or host.runs("front"):
        return None
    fronts = ", ".join(f"{h.name} ({h.address})" for h in spec.hosts if h.runs("front")) or "the front host"
    return f"host {host.name} runs no front door: run `kvern {command}` on {fronts}"


def reload_refusal(spec: Spec, config: RuntimeConfig) -> str | None:
    """Why `kvern reload` cannot run on this host: a broker host has no controller nor heads to restart."""
    host = running_host(spec, config)
    if host is None or host.roles != BROKER_ONLY:
        return None
    return (
        f"host {host.name} runs only a RabbitMQ node, which a reload does not change: run `kvern reload` on the "
        "other hosts (a change of the broker hosts needs `kvern down` and `kvern up --host`)"
    )


def scale_refusal(spec: Spec, config: RuntimeConfig, target: str, processes: str) -> str | None:
    """Why `kvern scale TARGET PROCESSES` would change nothing that serves on this host, and where to run it
    instead; None when it may run here. `spec` is the running one, `target` "web" or one of its pools."""
    host = running_host(spec, config)
    here = f"host {host.name}" if host is not None else f"this instance (--only {config.only})"
    if target == "web":
        return _scale_web_refusal(config, host, here)
    if target in {pool.name for pool in config.only.pools_of(spec)}:
        return None
    if host is None:
        return f"{here} runs no pool {target!r}"
    others = ", ".join(h.name for h in spec.hosts if target in pools_run_by(spec, h)) or "no host"
    return f"{here} runs no pool {target!r} (it runs on {others}): run `kvern scale {target} {processes}` there"


def _scale_web_refusal(config: RuntimeConfig, host: HostSpec | None, here: str) -> str | None:
    if host is None:
        return None if config.only.web else f"{here} runs no web heads"
    if not config.only.web:
        roles = ", ".join(sorted(host.roles))
        return f"{here} runs no web heads (roles: {roles}): run `kvern scale web` on the front host"
    if not HeadEndpoints.of(config).front_door:
        # Its heads' ports are the spec's: heads added here would get no request, heads removed would get some.
        return (
            f"the front host's nginx lists [web] heads of web host {host.name}, not the heads running here: set "
            f"[web] heads in the spec, restart this host (kvern down, kvern up --host {host.name}), then run "
            "`kvern reload` on the front host"
        )
    return None


def _check_supported(spec: Spec, host: HostSpec) -> None:
    """Refuse, with the way round, what is not built per host yet."""
    problems = []
    if host.runs("broker") and host.roles != BROKER_ONLY:
        problems.append("a broker host runs nothing else")
    if host.runs("front") and not host.runs("web"):
        problems.append("a front host runs web heads too (a front door with remote web heads only is not built)")
    if host.runs("workers") and 1 < len(host.pools) < len(spec.pools):
        problems.append("a worker host runs one pool or all of them")
    if not any(h.runs("broker") for h in spec.hosts):
        problems.append("hosts on an external broker: use --only")
    if problems:
        raise StartError(f"--host {host.name}: not supported yet: {'; '.join(problems)} (README: Several machines)")
