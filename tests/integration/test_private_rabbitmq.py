"""kvern's private RabbitMQ node, run the way Supervisor runs it: one foreground process, stopped by SIGTERM.

Each test starts real nodes in tmp_path next to the machine's own broker; a finalizer kills, by process group,
whatever a test started and did not stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from amqp.exceptions import AccessRefused
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.exceptions import OperationalError

from kvern.errors import BrokerAdminError
from kvern.runtime.rabbitmq import RABBITMQ_SERVER, BrokerPorts, PrivateNode, build_definitions
from tests.conftest import services_required

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
PASSWORD = "s3cret pass/with:odd@chars"  # exercises URL quoting and the definitions import


@pytest.fixture(autouse=True)
def _require_rabbitmq() -> None:
    if not RABBITMQ_SERVER.exists():
        message = f"{RABBITMQ_SERVER} is not installed (apt-get install rabbitmq-server)"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Started:
    node: PrivateNode
    proc: subprocess.Popen[bytes]


def free_ports(count: int) -> list[int]:
    """Distinct free ports: all sockets stay bound until every port is picked."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def new_node(state_dir: Path, consumer_timeout_ms: int = 600_000) -> PrivateNode:
    amqp, dist = free_ports(2)
    return PrivateNode(state_dir, BrokerPorts(amqp=amqp, dist=dist), consumer_timeout_ms)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Started]]:
    started: list[Started] = []

    def start(
        name: str, *, wait: bool = True, node: PrivateNode | None = None, definitions: dict[str, Any] | None = None
    ) -> Started:
        node = node or new_node(tmp_path / name)
        node.prepare(definitions)
        with (node.state_dir / "stdout.log").open("ab") as out:
            proc = subprocess.Popen(
                node.command(),
                env=node.environment(),
                cwd=node.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, for the finalizer
            )
        started.append(Started(node, proc))
        if wait:
            node.wait_ready(READY_TIMEOUT_S, process=proc)
        return started[-1]

    yield start
    for item in started:
        if item.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(item.proc.pid, signal.SIGKILL)
        item.proc.wait(timeout=30)


# -- /proc helpers ----------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def pids_mentioning(path: Path) -> list[int]:
    """Processes whose command line, working directory or environment names `path`."""
    marker = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd").encode()
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in cwd or marker in cmdline or marker in environ:
            found.append(int(entry.name))
    return found


def _decode_address(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    # /proc/net/tcp6 prints the address as four host-order (little-endian) 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket `pid` listens on, IPv4 and IPv6 (like `ss -ltnp`)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(_decode_address(fields[1]))
    return found


# -- broker helpers -----------------------------------------------------------------------------------------------


def amqp_url(node: PrivateNode, user: str, password: str, vhost: str) -> str:
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"amqp://{credentials}@127.0.0.1:{node.ports.amqp}/{quote(vhost, safe='')}"


def users_of(node: PrivateNode) -> dict[str, list[str]]:
    return {u["user"]: u["tags"] for u in json.loads(node.ctl("-q", "list_users", "--formatter", "json"))}


def round_trip(url: str, body: dict[str, str]) -> list[dict[str, str]]:
    """Publish `body` with a publisher confirm, then consume it back."""
    exchange = Exchange("kvern.test", type="direct", durable=False)
    queue = Queue("kvern.test", exchange=exchange, routing_key="test", durable=False, auto_delete=False)
    received: list[dict[str, str]] = []

    def on_message(payload: dict[str, str], message: Any) -> None:
        received.append(payload)
        message.ack()

    with Connection(url, connect_timeout=5, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        # With confirm_publish, publish() returns only once the broker acked (it raises on a nack).
        producer.publish(body, exchange=exchange, routing_key="test", declare=[queue], serializer="json")
        assert conn.default_channel._confirm_selected  # the channel really is in confirm mode
        with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError, socket.timeout):
                    conn.drain_events(timeout=1)
    return received


def login_refused(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.connect()
    except (AccessRefused, OperationalError) as exc:
        return "ACCESS_REFUSED" in str(exc) or isinstance(exc, AccessRefused)
    return False


def stop_and_check_clean(started: Started) -> None:
    """SIGTERM the pid we started (what Supervisor does); it must exit 0 and leave nothing behind."""
    helpers = descendants(started.proc.pid)  # erl_child_setup, inet_gethost
    started.proc.send_signal(signal.SIGTERM)
    assert started.proc.wait(timeout=STOP_TIMEOUT_S) == 0
    deadline = time.monotonic() + 10  # the VM's helpers exit when it closes their pipes: give them a moment
    while any(alive(pid) for pid in helpers) or pids_mentioning(started.node.state_dir):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not [pid for pid in helpers if alive(pid)], "helpers of the VM outlived it"
    assert pids_mentioning(started.node.state_dir) == []


# -- tests --------------------------------------------------------------------------------------------------------


def test_prepare_is_idempotent_private_and_isolated(tmp_path: Path) -> None:
    node = new_node(tmp_path / "rabbitmq", consumer_timeout_ms=123_000)
    node.prepare()
    cookie = node.cookie_file.read_text()
    config = node.config_file.read_text()
    node.prepare()
    assert node.cookie_file.read_text() == cookie
    assert node.config_file.read_text() == config

    assert node.cookie_file.stat().st_mode & 0o777 == 0o400
    assert node.config_file.stat().st_mode & 0o777 == 0o600
    assert node.state_dir.stat().st_mode & 0o777 == 0o700
    # No management plugin: nothing reads it, and it cost a second of every boot and 5 s of every shutdown.
    assert (node.state_dir / "enabled_plugins").read_text() == "[].\n"
    assert f"listeners.tcp.default = 127.0.0.1:{node.ports.amqp}\n" in config
    assert "management" not in config and "load_definitions" not in config
    assert "consumer_timeout = 123000\n" in config
    assert "guest" not in config

    env = node.environment()
    assert env["HOME"] == str(node.state_dir)
    paths = [value for key, value in env.items() if key.startswith("RABBITMQ_") and value.startswith("/")]
    assert paths
    assert all(Path(value).is_relative_to(node.state_dir) for value in paths), paths
    assert "inet_dist_use_interface {127,0,0,1}" in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    assert "inet_dist_use_interface {127,0,0,1}" in env["RABBITMQ_CTL_ERL_ARGS"]

    node.cookie_file.chmod(0o600)
    node.cookie_file.write_text("")  # a write cut short: a new cookie is made, with the right mode
    node.prepare()
    assert len(node.cookie_file.read_text()) == 40
    assert node.cookie_file.stat().st_mode & 0o777 == 0o400

    assert node.node_name == new_node(tmp_path / "rabbitmq").node_name  # depends on the state dir only
    assert node.node_name != new_node(tmp_path / "other").node_name
    assert node.node_name.startswith("kvern-") and node.node_name.endswith("@localhost")


def test_node_serves_amqp_on_loopback_and_stops_clean_on_sigterm(start_node: Callable[..., Started]) -> None:
    started = start_node("rabbitmq")
    node, pid = started.node, started.proc.pid
    # rabbitmq-server exec'd the VM: Supervisor's pid is beam.smp itself, so its SIGTERM reaches the broker.
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "beam.smp"

    assert set(users_of(node)) == {"kvern-bootstrap"}  # a fresh node never had guest/guest
    assert node.ctl("eval", "application:get_env(rabbit, consumer_timeout).").strip() == "{ok,600000}"
    vhost = "kvern-test"
    users = {"app": (PASSWORD, (".*", ".*", ".*")), "viewer": ("view-only", ("^$", "^$", "^$"))}
    node.provision(vhost, users, tags={"app": ("administrator",)})
    node.provision(vhost, users, tags={"app": ("administrator",)})  # idempotent
    assert users_of(node) == {"app": ["administrator"], "viewer": []}

    url = amqp_url(node, "app", PASSWORD, vhost)
    assert round_trip(url, {"hello": "private node"}) == [{"hello": "private node"}]
    assert login_refused(amqp_url(node, "guest", "guest", "/"))
    assert login_refused(amqp_url(node, "app", "wrong", vhost))

    # A changed password replaces the old one; tags are declarative too (absent: none).
    node.provision(vhost, {"app": ("n3w-password", (".*", ".*", ".*"))}, tags={"app": ("administrator",)})
    assert login_refused(url)
    assert round_trip(amqp_url(node, "app", "n3w-password", vhost), {"n": "2"}) == [{"n": "2"}]

    # Nothing but the two chosen ports, and only on 127.0.0.1 (no management, no prometheus, no 0.0.0.0, no IPv6).
    expected = {("127.0.0.1", node.ports.amqp), ("127.0.0.1", node.ports.dist)}
    assert listening_addresses(pid) == expected

    stop_and_check_clean(started)


def test_definitions_given_to_prepare_are_loaded_as_the_node_boots(start_node: Callable[..., Started]) -> None:
    vhost = "kvern"
    users = {"app": (PASSWORD, (".*", ".*", ".*")), "web": ("web-pass", ("^$", "^amq\\.default$", "^$"))}
    definitions = build_definitions(vhost, users, tags={"app": ("administrator",)})
    started = start_node("rabbitmq", wait=False, definitions=definitions)
    node = started.node
    assert (node.state_dir / "definitions.json").stat().st_mode & 0o777 == 0o600  # it holds passwords
    # Ready as soon as a provisioned user gets in: no rabbitmqctl on the way.
    node.wait_login("app", PASSWORD, vhost, READY_TIMEOUT_S, lambda: started.proc.poll() is None)
    assert users_of(node) == {"app": ["administrator"], "web": []}  # and no bootstrap user was ever made
    assert not node.bootstrap_user_exists()
    assert round_trip(amqp_url(node, "app", PASSWORD, vhost), {"booted": "with definitions"}) == [
        {"booted": "with definitions"}
    ]
    assert login_refused(amqp_url(node, "web", "wrong", vhost))
    stop_and_check_clean(started)


def test_wait_login_fails_fast_when_the_node_dies(start_node: Callable[..., Started], tmp_path: Path) -> None:
    node = new_node(tmp_path / "rabbitmq")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", node.ports.dist))
        squatter.listen()
        started = start_node("rabbitmq", wait=False, node=node)
        begun = time.monotonic()
        with pytest.raises(BrokerAdminError, match="exited while starting"):
            node.wait_login("app", PASSWORD, "kvern", READY_TIMEOUT_S, lambda: started.proc.poll() is None)
    assert time.monotonic() - begun < READY_TIMEOUT_S / 2


def test_two_nodes_run_side_by_side(start_node: Callable[..., Started]) -> None:
    system_broker_up = _port_open(5672)
    first, second = start_node("a", wait=False), start_node("b", wait=False)  # boot concurrently
    first.node.wait_ready(READY_TIMEOUT_S, process=first.proc)
    second.node.wait_ready(READY_TIMEOUT_S, process=second.proc)

    assert first.node.node_name != second.node.node_name
    assert first.node.cookie_file.read_text() != second.node.cookie_file.read_text()
    # Each node's rabbitmqctl reaches that node and no other.
    for started in (first, second):
        assert started.node.ctl("eval", "node().").strip() == f"'{started.node.node_name}'"

    first.node.provision("kvern", {"only-a": (PASSWORD, (".*", ".*", ".*"))})
    assert "only-a" in users_of(first.node)
    assert "only-a" not in users_of(second.node)
    url = amqp_url(first.node, "only-a", PASSWORD, "kvern")
    assert round_trip(url, {"node": "a"}) == [{"node": "a"}]
    assert login_refused(url.replace(f":{first.node.ports.amqp}/", f":{second.node.ports.amqp}/"))

    stop_and_check_clean(first)
    assert second.node.ctl("await_startup").strip() == ""  # stopping one left the other alone
    stop_and_check_clean(second)
    assert _port_open(5672) == system_broker_up  # and the machine's own broker is untouched


def test_failed_start_is_reported_with_the_exit_code(start_node: Callable[..., Started], tmp_path: Path) -> None:
    node = new_node(tmp_path / "rabbitmq")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", node.ports.dist))  # the Erlang distribution port is taken
        squatter.listen()
        started = start_node("rabbitmq", wait=False, node=node)
        with pytest.raises(BrokerAdminError, match=r"exited with code [1-9].*dist_port_already_used"):
            node.wait_ready(READY_TIMEOUT_S, process=started.proc)
    assert started.proc.returncode != 0  # exec'd VM: a crash is not masked as a clean exit


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False
