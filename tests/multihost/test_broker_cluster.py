"""kvern's RabbitMQ cluster on three namespace hosts, each started with `kvern up --host bN`.

One cluster serves the whole module (booting three nodes costs most of its time); the tests run in order:
the cluster forms, the node leading the quorum queue is killed under a steady stream of confirmed publishes,
its host comes back and rejoins.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kombu.connection import Connection
from kombu.entity import Queue

from kvern.constants import VHOST
from kvern.runtime.cluster import cluster_node
from kvern.runtime.instance import ROLES
from kvern.runtime.rabbitmq import RABBITMQCTL, PrivateNode
from kvern.runtime.shared_secrets import SharedSecrets
from kvern.spec import HostSpec, load_spec
from tests.multihost.netns import Host, Network

QUEUE = "mh.cluster"
KVERN = [sys.executable, "-m", "kvern.cli"]
TASKS = "from celery import shared_task\n\n\n@shared_task\ndef noop() -> None:\n    pass\n"


@dataclass
class Cluster:
    network: Network
    project: Path
    secrets: Path
    hosts: dict[str, Host]
    log: Path
    specs: dict[str, HostSpec] = field(default_factory=dict)

    def kvern(self, host: Host, *args: str, timeout: float = 240) -> str:
        command = [*KVERN, "-f", str(self.project / "kvern.toml"), "--state", str(self.state(host)), *args]
        done = host.run(command, check=False, timeout=timeout)
        with self.log.open("a") as out:
            out.write(f"$ [{host.name}] {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}\n")
        assert done.returncode == 0, f"{host.name}: kvern {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def up(self, host: Host) -> str:
        return self.kvern(host, "up", "-d", "--host", host.name, "--secrets", str(self.secrets))

    def state(self, host: Host) -> Path:
        return self.project / f"state-{host.name}"

    def node(self, host: Host) -> PrivateNode:
        cookie = SharedSecrets.load(self.secrets, ROLES).erlang_cookie
        return cluster_node(self.state(host) / "rabbitmq", self.specs[host.name], 60_000, cookie)

    def ctl(self, host: Host, *args: str) -> str:
        node = self.node(host)
        return host.run([str(RABBITMQCTL), *args], env=node.environment(), timeout=60).stdout

    def admin_urls(self) -> str:
        password = SharedSecrets.load(self.secrets, ROLES).broker_passwords["admin"]
        return ";".join(f"amqp://kvern-admin:{password}@{h.address}:5672/{VHOST}" for h in self.hosts.values())

    def running_nodes(self, host: Host) -> set[str]:
        status = json.loads(self.ctl(host, "-q", "cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def leader(self) -> Host:
        """The host whose node leads QUEUE's Raft group, asked of any live node."""
        for host in self.hosts.values():
            try:
                rows = json.loads(
                    self.ctl(host, "-q", "list_queues", "-p", VHOST, "name", "leader", "--formatter", "json")
                )
            except AssertionError:
                continue
            leader = next(row["leader"] for row in rows if row["name"] == QUEUE)
            return next(h for h in self.hosts.values() if leader == f"kvern@{h.address}")
        raise AssertionError("no live node answered")


def _spec(hosts: dict[str, Host]) -> str:
    tables = "".join(f'[hosts.{name}]\naddress = "{h.address}"\nroles = ["broker"]\n\n' for name, h in hosts.items())
    return (
        '[app]\nname = "mh"\ntasks = "tasks"\n\n'
        '[store]\nurl = "postgresql://postgres@127.0.0.1:5432/test"\n\n'
        '[[pools]]\nname = "main"\nqueues = ["main"]\n\n'
        '[hosts.w1]\naddress = "10.255.255.254"\nroles = ["workers", "controller"]\n\n'
        f"{tables}"
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, namespaces: None) -> Iterator[Cluster]:
    project = tmp_path_factory.mktemp("cluster")
    network = Network.create()
    try:
        hosts = {name: network.add_host(name) for name in ("b1", "b2", "b3")}
        (project / "tasks.py").write_text(TASKS)
        (project / "kvern.toml").write_text(_spec(hosts))
        specs = {h.name: h for h in load_spec(project / "kvern.toml").hosts}
        secrets = project / "secrets.json"
        made = Cluster(network, project, secrets, hosts, project / "kvern.log", specs)
        made.kvern(hosts["b1"], "secrets", "init", str(secrets))
        starts = [threading.Thread(target=made.up, args=(host,)) for host in hosts.values()]
        for thread in starts:  # all at once, as an operator starting three machines would
            thread.start()
        for thread in starts:
            thread.join()
        yield made
    finally:
        for host in network.hosts.values():
            state = project / f"state-{host.name}"
            if state.exists():
                host.run([*KVERN, "--state", str(state), "down"], check=False, timeout=120)
        network.close()


def test_three_broker_hosts_form_one_cluster(cluster: Cluster) -> None:
    expected = {f"kvern@{h.address}" for h in cluster.hosts.values()}
    deadline = time.monotonic() + 60
    while cluster.running_nodes(cluster.hosts["b3"]) != expected:
        assert time.monotonic() < deadline, cluster.running_nodes(cluster.hosts["b3"])
        time.sleep(1)
    assert cluster.running_nodes(cluster.hosts["b1"]) == expected
    # The per-role users of the secrets file are on every node: the web role logs in at b3 as at b1.
    password = SharedSecrets.load(cluster.secrets, ROLES).broker_passwords["web"]
    for host in cluster.hosts.values():
        with Connection(f"amqp://kvern-web:{password}@{host.address}:5672/{VHOST}") as conn:
            conn.connect()


@dataclass
class Stream:
    """Publishes numbered messages with confirms until stopped; records which were confirmed and when."""

    urls: str
    confirmed: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self._publish()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def _publish(self) -> None:
        policy = {"max_retries": 60, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}
        options = {"confirm_publish": True, "connect_timeout": 2}
        with Connection(self.urls, transport_options=options, failover_strategy="round-robin") as conn:
            producer = conn.Producer()
            number = 0
            while not self.stop.is_set():
                producer.publish({"n": number}, routing_key=QUEUE, delivery_mode=2, retry=True, retry_policy=policy)
                self.confirmed.append(number)
                self.times.append(time.monotonic())
                number += 1
                time.sleep(0.01)

    def longest_gap(self, after: float) -> float:
        stamps = [t for t in self.times if t >= after - 5]
        return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


def _drain(urls: str) -> list[int]:
    received: list[int] = []
    with Connection(urls, failover_strategy="round-robin") as conn:
        channel = conn.channel()
        while True:
            message = channel.basic_get(QUEUE, no_ack=True)
            if message is None:
                return received
            received.append(json.loads(message.body)["n"])


def test_killing_the_leader_host_loses_no_confirmed_message(cluster: Cluster) -> None:
    urls = cluster.admin_urls()
    with Connection(urls, failover_strategy="round-robin") as conn:
        queue = Queue(QUEUE, durable=True, queue_arguments={"x-queue-type": "quorum"})
        queue(conn.channel()).declare()
    leader = cluster.leader()
    stream = Stream(urls)
    publisher = threading.Thread(target=stream.run)
    publisher.start()
    time.sleep(3)
    before = len(stream.confirmed)
    # When the machine leading the queue dies (every process of it, SIGKILL)
    killed_at = time.monotonic()
    assert leader.kill_all() > 0
    time.sleep(8)
    stream.stop.set()
    publisher.join(timeout=60)
    assert stream.error is None, stream.error
    after = len(stream.confirmed) - before
    # Then publishing goes on at another node within seconds, and every confirmed message is there.
    assert after > 0, "no publish was confirmed after the leader died"
    gap = stream.longest_gap(killed_at)
    new_leader = cluster.leader()
    assert new_leader is not leader
    received = _drain(urls)
    lost = set(stream.confirmed) - set(received)
    duplicates = len(received) - len(set(received))
    _record(cluster, killed=leader.name, confirmed=len(stream.confirmed), lost=len(lost), gap=gap, dup=duplicates)
    assert not lost
    # The dead host comes back: its node rejoins the cluster with its Raft replica.
    output = cluster.up(leader)
    assert "rejoined its cluster" in output
    expected = {f"kvern@{h.address}" for h in cluster.hosts.values()}
    assert cluster.running_nodes(leader) == expected
    members = json.loads(
        cluster.ctl(leader, "-q", "list_queues", "-p", VHOST, "name", "members", "--formatter", "json")
    )
    assert set(next(row["members"] for row in members if row["name"] == QUEUE)) == expected


def _record(cluster: Cluster, **numbers: object) -> None:
    """The numbers the README's fault table quotes, in the test's log (pytest -s shows them too)."""
    line = " ".join(
        f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}" for key, value in numbers.items()
    )
    print(f"leader kill: {line}")
    with cluster.log.open("a") as out:
        out.write(f"leader kill: {line}\n")
