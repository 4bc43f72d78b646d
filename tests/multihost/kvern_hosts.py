"""A kvern project whose `[hosts]` are namespace hosts: run `kvern` inside each, ask each broker node."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kvern.constants import VHOST
from kvern.runtime.cluster import RABBITMQ_QUEUES, cluster_node
from kvern.runtime.instance import ROLES
from kvern.runtime.rabbitmq import RABBITMQCTL, PrivateNode
from kvern.runtime.shared_secrets import SharedSecrets
from kvern.spec import HostSpec, load_spec
from tests.multihost.netns import Host, Network

KVERN = [sys.executable, "-m", "kvern.cli"]


def broker_tables(hosts: list[Host]) -> str:
    return "".join(f'[hosts.{h.name}]\naddress = "{h.address}"\nroles = ["broker"]\n\n' for h in hosts)


@dataclass
class Project:
    network: Network
    folder: Path
    hosts: dict[str, Host]
    specs: dict[str, HostSpec] = field(default_factory=dict)

    @classmethod
    def write(cls, network: Network, folder: Path, spec_text: str, tasks: str) -> Project:
        (folder / "tasks.py").write_text(tasks)
        (folder / "kvern.toml").write_text(spec_text)
        specs = {h.name: h for h in load_spec(folder / "kvern.toml").hosts}
        project = cls(network, folder, {name: network.hosts[name] for name in specs if name in network.hosts}, specs)
        project.kvern(next(iter(project.hosts.values())), "secrets", "init", str(project.secrets))
        return project

    @property
    def secrets(self) -> Path:
        return self.folder / "secrets.json"

    @property
    def log(self) -> Path:
        return self.folder / "kvern.log"

    def brokers(self) -> list[Host]:
        return [self.hosts[name] for name, spec in self.specs.items() if spec.runs("broker") and name in self.hosts]

    def state(self, host: Host) -> Path:
        return self.folder / f"state-{host.name}"

    def kvern(self, host: Host, *args: str, timeout: float = 240) -> str:
        command = [*KVERN, "-f", str(self.folder / "kvern.toml"), "--state", str(self.state(host)), *args]
        done = host.run(command, check=False, timeout=timeout)
        with self.log.open("a") as out:
            out.write(f"$ [{host.name}] {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}\n")
        assert done.returncode == 0, f"{host.name}: kvern {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def up(self, host: Host) -> str:
        return self.kvern(host, "up", "-d", "--host", host.name, "--secrets", str(self.secrets))

    def up_together(self, hosts: list[Host]) -> None:
        """As an operator starting several machines at once; the first failure is raised."""
        errors: list[BaseException] = []

        def start(host: Host) -> None:
            try:
                self.up(host)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(host,)) for host in hosts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def down_all(self) -> None:
        """Application hosts first, then the brokers together (workers ack on the way out)."""
        application = [h for h in self.hosts.values() if not self.specs[h.name].runs("broker")]
        for group in (application, self.brokers()):
            threads = [threading.Thread(target=self._down, args=(host,)) for host in group]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    def _down(self, host: Host) -> None:
        if self.state(host).exists():
            with contextlib.suppress(Exception):  # the network's teardown stops what is left, by pid
                host.run([*KVERN, "--state", str(self.state(host)), "down"], check=False, timeout=180)

    def password(self, role: str) -> str:
        return SharedSecrets.load(self.secrets, ROLES).broker_passwords[role]

    def urls(self, role: str) -> str:
        user = f"kvern-{role}"
        return ";".join(f"amqp://{user}:{self.password(role)}@{h.address}:5672/{VHOST}" for h in self.brokers())

    def node(self, host: Host) -> PrivateNode:
        cookie = SharedSecrets.load(self.secrets, ROLES).erlang_cookie
        return cluster_node(self.state(host) / "rabbitmq", self.specs[host.name], 60_000, cookie)

    def ctl(self, host: Host, *args: str) -> str:
        return host.run([str(RABBITMQCTL), *args], env=self.node(host).environment(), timeout=60).stdout

    def running_nodes(self, host: Host) -> set[str]:
        status = json.loads(self.ctl(host, "-q", "cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def queue_info(self, queue: str, item: str, among: list[Host] | None = None) -> object:
        """One `list_queues` column of `queue`, asked of the first live broker."""
        for host in among or self.brokers():
            try:
                rows = json.loads(self.ctl(host, "-q", "list_queues", "-p", VHOST, "name", item, "--formatter", "json"))
            except AssertionError:
                continue
            return next(row[item] for row in rows if row["name"] == queue)
        raise AssertionError("no live broker node answered")

    def leader(self, queue: str) -> Host:
        """The host whose node leads `queue`'s Raft group."""
        return self.raft_leader(queue)[0]

    def raft_leader(self, queue: str) -> tuple[Host, int]:
        """The host leading `queue`'s Raft group and its term, from the members' own Raft state, asked of the
        first live broker. Not `list_queues`' leader column: that is the queue record's, which went on naming
        the old leader after an election held while it was cut off (the partition scenario then cut off a
        follower)."""
        for host in self.brokers():
            try:
                status = host.run(
                    [str(RABBITMQ_QUEUES), "-q", "quorum_status", "--vhost", VHOST, queue, "--formatter", "json"],
                    env=self.node(host).environment(),
                    timeout=60,
                ).stdout
            except AssertionError:
                continue
            leaders = [(int(m["Term"]), str(m["Node Name"])) for m in json.loads(status) if m["Raft State"] == "leader"]
            if leaders:
                term, name = max(leaders)
                return next(h for h in self.brokers() if name == f"kvern@{h.address}"), term
        raise AssertionError(f"no live broker node knows a leader of {queue!r}")


@contextlib.contextmanager
def project_on(network: Network, folder: Path, spec_text: str, tasks: str) -> Iterator[Project]:
    project = Project.write(network, folder, spec_text, tasks)
    try:
        yield project
    finally:
        project.down_all()
