"""Hosts as Linux network namespaces on one bridge: the multihost tests' machines.

Each `Host` is a network namespace with its own loopback, its own address on a private /24 and its own port
space (so each runs its own epmd, its own RabbitMQ node on 5672...). The bridge that joins them lives in the
machine's namespace with the subnet's .1, so the test process reaches every host directly; no route leaves
the bridge, so no traffic goes anywhere but loopback and these namespaces.

Everything is named after a tag made from the test process's pid (`kvmh<pid hex>n<digit>`), which keeps concurrent runs
apart and lets a later run recognise (and remove) what a killed run left behind: a tag whose pid is gone.
Nothing the harness did not create is ever touched: processes are stopped by pid, and only the pids inside
the harness's own namespaces.

Faults: `link_down`/`link_up` (the host's cable), `partition`/`heal` (nftables rules inside the host's own
namespace, which drop traffic to and from chosen peers), and signals to processes by pid.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "kvmh"
NETNS_DIR = Path("/run/netns")
# 10.213.0.0/16 is carved into /24s; a run takes one no route of this machine already covers.
SUBNET_BASE = ipaddress.IPv4Network("10.213.0.0/16")
NFT = shutil.which("nft") or "/usr/sbin/nft"
_STOP_WAIT_S = 10.0
_NUMBERS = itertools.count()  # several networks of one process (a session's and a test's) get their own tags


def run(
    command: Sequence[str], *, check: bool = True, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(command), capture_output=True, text=True, check=False, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done


def namespaces_supported() -> str | None:
    """None when this process may create namespaces, bridges and veths; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"{PREFIX}probe{os.getpid():x}"
    done = run(["ip", "netns", "add", probe], check=False)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    run(["ip", "netns", "del", probe], check=False)
    return None


def nft_available() -> bool:
    return Path(NFT).exists()


@dataclass
class Host:
    """One machine: a network namespace with `address` on the bridge."""

    network: Network
    name: str
    index: int
    address: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return f"{self.network.tag}-{self.name}"

    @property
    def veth(self) -> str:
        """The machine-side end of the host's cable (on the bridge)."""
        return f"{self.network.tag}v{self.index}"

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(self.command(argv), check=check, timeout=timeout, env=env)

    def popen(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running program in this host; its output goes to `log`. Stopped at teardown."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                self.command(argv), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.processes.append(process)
        return process

    def pids(self) -> list[int]:
        """Every process inside this host's namespace (all of them started by the harness)."""
        done = run(["ip", "netns", "pids", self.netns], check=False)
        return [int(pid) for pid in done.stdout.split()]

    def kill_all(self, sig: signal.Signals = signal.SIGKILL) -> int:
        """The fault 'this machine died': every process in the namespace gets `sig`. Returns how many."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(pids)

    # -- faults on the wire -------------------------------------------------------------------------------

    def link_down(self) -> None:
        """Unplug the cable: the bridge side of the veth goes down (both directions stop)."""
        run(["ip", "link", "set", self.veth, "down"])

    def link_up(self) -> None:
        run(["ip", "link", "set", self.veth, "up"])

    def partition(self, peers: Sequence[Host]) -> None:
        """Drop every packet between this host and `peers` (nftables in this host's namespace only)."""
        addresses = ", ".join(peer.address for peer in peers)
        rules = (
            f"table inet {PREFIX}\n"
            f"delete table inet {PREFIX}\n"
            f"table inet {PREFIX} {{\n"
            f"  chain input {{ type filter hook input priority 0; ip saddr {{ {addresses} }} drop; }}\n"
            f"  chain output {{ type filter hook output priority 0; ip daddr {{ {addresses} }} drop; }}\n"
            "}\n"
        )
        done = subprocess.run(self.command([NFT, "-f", "-"]), input=rules, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"nft failed in {self.netns}: {done.stderr.strip()}")

    def heal(self) -> None:
        self.run([NFT, "delete", "table", "inet", PREFIX], check=False)

    def stop_processes(self) -> None:
        """What the harness started here, then anything left in the namespace: TERM, a wait, then KILL."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_WAIT_S
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        self.kill_all(signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


@dataclass
class Network:
    """A bridge with hosts on it; `close()` removes all of it (idempotent)."""

    tag: str
    subnet: ipaddress.IPv4Network
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @classmethod
    def create(cls) -> Network:
        remove_stale()
        network = cls(tag=f"{PREFIX}{os.getpid():x}n{next(_NUMBERS) % 10}", subnet=_free_subnet())
        try:
            run(["ip", "link", "add", network.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{network.gateway}/{network.subnet.prefixlen}", "dev", network.bridge])
            run(["ip", "link", "set", network.bridge, "up"])
        except BaseException:
            network.close()
            raise
        return network

    def add_host(self, name: str) -> Host:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", name) or name in self.hosts:
            raise ValueError(f"bad or repeated host name: {name!r}")
        index = len(self.hosts)
        host = Host(self, name, index, str(self.subnet.network_address + 10 + index))
        self.hosts[name] = host  # before creating anything: close() removes what exists of it
        run(["ip", "netns", "add", host.netns])
        host.run(["ip", "link", "set", "lo", "up"])
        run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
        run(["ip", "link", "set", host.veth, "master", self.bridge])
        run(["ip", "link", "set", host.veth, "up"])
        host.run(["ip", "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0"])
        host.run(["ip", "link", "set", "eth0", "up"])
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop_processes()
        for host in self.hosts.values():
            run(["ip", "netns", "del", host.netns], check=False)  # takes the veth pair with it
        run(["ip", "link", "del", self.bridge], check=False)
        self.hosts.clear()


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of SUBNET_BASE that no address or route of this machine overlaps."""
    taken = [ipaddress.IPv4Network(net, strict=False) for net in _routes_and_addresses()]
    candidates = list(SUBNET_BASE.subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(net) for net in taken):
            return subnet
    raise RuntimeError(f"no free /24 left in {SUBNET_BASE}")


def _routes_and_addresses() -> list[str]:
    found = []
    for line in run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
        found.append(line.split()[3])
    for line in run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
        first = line.split()[0]
        if first[0].isdigit():
            found.append(first if "/" in first else f"{first}/32")
    return found


def remove_stale() -> None:
    """Namespaces and bridges of an earlier run of this harness whose process is gone (killed mid-run)."""
    stale = set()
    names = run(["ip", "netns", "list"], check=False).stdout.split()
    names += [line.split(":")[1].strip().split("@")[0] for line in run(["ip", "-o", "link"]).stdout.splitlines()]
    for name in names:
        match = re.match(rf"^({PREFIX}([0-9a-f]+)n[0-9])(-|v|br)", name)
        if match and not Path(f"/proc/{int(match.group(2), 16)}").exists():
            stale.add(match.group(1))
    for tag in stale:
        for name in run(["ip", "netns", "list"], check=False).stdout.split():
            if name.startswith(f"{tag}-"):
                for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                run(["ip", "netns", "del", name], check=False)
        run(["ip", "link", "del", f"{tag}br"], check=False)
