"""The harness itself: hosts reach each other over the bridge, faults cut them off, teardown leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.multihost.netns import PREFIX, Host, Network, nft_available, remove_stale, run

PORT = 7000
# Connect to ADDRESS:PORT within 1 s: exit 0 when it answered, 1 when not.
CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()\n"
    "except OSError:\n"
    "    sys.exit(1)\n"
)


def _listen(host: Host, log: Path) -> None:
    host.popen([sys.executable, "-m", "http.server", "--bind", host.address, str(PORT)], log)
    deadline = time.monotonic() + 10
    while not _reaches(host, host):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def _reaches(source: Host, target: Host) -> bool:
    done = source.run([sys.executable, "-c", CONNECT, target.address, str(PORT)], check=False)
    return done.returncode == 0


def test_hosts_reach_each_other_and_not_the_machines_loopback(network: Network, tmp_path: Path) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    _listen(a, tmp_path / "a.log")
    assert _reaches(b, a)
    # Each host has its own loopback: the listener on a's address is not on b's 127.0.0.1.
    done = b.run([sys.executable, "-c", CONNECT, "127.0.0.1", str(PORT)], check=False)
    assert done.returncode == 1


def test_link_down_cuts_a_host_off_and_link_up_restores_it(network: Network, tmp_path: Path) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    _listen(a, tmp_path / "a.log")
    a.link_down()
    assert not _reaches(b, a)
    a.link_up()
    deadline = time.monotonic() + 10
    while not _reaches(b, a):
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.skipif(not nft_available(), reason="nftables is not installed (make system-deps installs it)")
def test_partition_drops_only_the_named_peers(network: Network, tmp_path: Path) -> None:
    a, b, c = network.add_host("a"), network.add_host("b"), network.add_host("c")
    _listen(a, tmp_path / "a.log")
    a.partition([b])
    assert not _reaches(b, a)
    assert _reaches(c, a)
    a.heal()
    assert _reaches(b, a)


def test_close_removes_namespaces_bridge_and_processes(namespaces: None, tmp_path: Path) -> None:
    net = Network.create()
    try:
        a = net.add_host("a")
        _listen(a, tmp_path / "a.log")
        server = a.processes[0]
        names = [a.netns, net.bridge, a.veth]
    finally:
        net.close()
    assert server.poll() is not None
    assert names[0] not in run(["ip", "netns", "list"]).stdout.split()
    links = run(["ip", "-o", "link"]).stdout
    assert names[1] not in links and names[2] not in links


def test_a_killed_runs_namespaces_are_removed_by_the_next_run(namespaces: None) -> None:
    # Given what a run killed outright would leave: a namespace and a bridge tagged with a pid now gone
    child = subprocess.Popen(["true"])
    child.wait()
    tag = f"{PREFIX}{child.pid:x}n0"
    run(["ip", "netns", "add", f"{tag}-a"])
    run(["ip", "link", "add", f"{tag}br", "type", "bridge"])
    try:
        # When the next run starts
        remove_stale()
        # Then both are gone
        assert f"{tag}-a" not in run(["ip", "netns", "list"]).stdout.split()
        assert f"{tag}br" not in run(["ip", "-o", "link"]).stdout
    finally:
        run(["ip", "netns", "del", f"{tag}-a"], check=False)
        run(["ip", "link", "del", f"{tag}br"], check=False)
