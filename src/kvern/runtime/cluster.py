"""A RabbitMQ cluster that kvern provisions: one node per broker host of the spec's `[hosts]`.

Each node is a `PrivateNode` bound to its host's address and named `kvern@<address>` (long names: no DNS in
the way), with the cookie and users of the shared secrets file, so every node holds the same definitions.

Membership is RabbitMQ's own: a node joins with `rabbitmqctl join_cluster` on its first start, and a node that
restarts finds its peers itself (Mnesia remembers them), so a restart only has to wait. The first broker host
of the spec starts alone when it has no peer yet; every other one joins whichever peer answers first. After a
join, the quorum queues declared before it get a replica on the new node (`rabbitmq-queues grow`), so every
queue ends up on every node whatever the order the hosts came up in.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from kvern.errors import BrokerAdminError
from kvern.runtime.rabbitmq import RABBITMQ_BIN, BrokerPorts, PrivateNode
from kvern.spec import HostSpec, Spec

AMQP_PORT = 5672
DIST_PORT = 25672
RABBITMQ_QUEUES = RABBITMQ_BIN / "rabbitmq-queues"
JOIN_TIMEOUT_S = 180.0
_JOIN_RETRY_S = 2.0


def broker_hosts(spec: Spec) -> tuple[HostSpec, ...]:
    return tuple(host for host in spec.hosts if host.runs("broker"))


def node_name(host: HostSpec) -> str:
    return f"kvern@{host.address}"


def cluster_node(state_dir: Path, host: HostSpec, consumer_timeout_ms: int, cookie: str) -> PrivateNode:
    """This host's node: its whole state in `state_dir`, listening on the host's address."""
    return PrivateNode(
        state_dir, BrokerPorts(AMQP_PORT, DIST_PORT), consumer_timeout_ms, address=host.address, cookie=cookie
    )


def amqp_urls(spec: Spec, user: str, password: str, vhost: str, first: HostSpec | None = None) -> str:
    """Every node's URL for one user, `;`-joined as kombu takes a failover list; `first` (this host) leads."""
    hosts = sorted(broker_hosts(spec), key=lambda host: host != first)
    return ";".join(f"amqp://{user}:{password}@{host.address}:{AMQP_PORT}/{vhost}" for host in hosts)


def running_nodes(node: PrivateNode, of: str | None = None) -> list[str]:
    """The running members of the cluster of `node` (or of the node named `of`, asked through it)."""
    target = ("-n", of) if of else ()
    status = json.loads(node.ctl("-q", *target, "cluster_status", "--formatter", "json", timeout=20))
    return [str(name) for name in status.get("running_nodes", [])]


def ensure_member(node: PrivateNode, spec: Spec, host: HostSpec, timeout: float = JOIN_TIMEOUT_S) -> str:
    """Make the running `node` a member of the spec's cluster; returns what was done (for the progress line).

    A node that was clustered before (a restart) is left alone: Mnesia finds its peers. The first broker host
    (the seed) starts the cluster; every other host joins the seed, or, while the seed is down, a peer that is
    clustered already. Never a lone peer: two lone nodes joining each other would make two clusters.
    """
    brokers = broker_hosts(spec)
    peers = [node_name(peer) for peer in brokers if peer != host]
    if not peers:
        return "single node"
    if _known_peers(node) & set(peers):
        return "rejoined its cluster"
    if host == brokers[0]:
        return "started the cluster"
    joined = _join_cluster(node, peers, timeout)
    _grow_quorum_queues(node)
    return f"joined {joined}"


def _known_peers(node: PrivateNode) -> set[str]:
    """Peers this node was clustered with before, running or not (its disk nodes)."""
    status = json.loads(node.ctl("-q", "cluster_status", "--formatter", "json"))
    return {str(name) for name in status.get("disk_nodes", [])} - {node.node_name}


def _joinable(node: PrivateNode, peer: str, seed: str) -> bool:
    try:
        members = running_nodes(node, of=peer)
    except BrokerAdminError:
        return False  # down, or still booting
    return peer == seed or len(members) > 1


def _join_cluster(node: PrivateNode, peers: Sequence[str], timeout: float) -> str:
    """Wait for a joinable peer (the seed first), then stop the app, forget the lone node's state and join it."""
    deadline = time.monotonic() + timeout
    while True:
        peer = next((peer for peer in peers if _joinable(node, peer, seed=peers[0])), None)
        if peer is not None:
            break
        if time.monotonic() > deadline:
            raise BrokerAdminError(f"{node.node_name}: none of {', '.join(peers)} answered in {timeout:g}s")
        time.sleep(_JOIN_RETRY_S)
    node.ctl("stop_app")
    try:
        node.ctl("reset")
        node.ctl("join_cluster", peer, timeout=60)
    finally:
        node.ctl("start_app", timeout=120)
    return peer


def _grow_quorum_queues(node: PrivateNode) -> None:
    """A replica on this node of every quorum queue declared before it joined."""
    done = subprocess.run(
        [str(RABBITMQ_QUEUES), "grow", node.node_name, "all"],
        env=node.environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise BrokerAdminError(f"rabbitmq-queues grow failed on {node.node_name}: {done.stderr.strip()}")
