"""Where the web heads listen, and so where nginx and kvern's own probes reach them.

On a host that runs the front door (and on one machine) the heads listen on unix sockets in the front dir:
only nginx's workers, through their group, can reach them. A web host without the front door (`[hosts.NAME]`
roles with "web" but not "front") has its heads listen on TCP at its own address, never 0.0.0.0: its job API
head i at `web.head_port + i`, its app head i at `web.head_port + MAX_WEB_HEADS + i` (i counts within the live
color, so the ports are fixed by the spec and the front host derives them from it without asking).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from kvern.constants import MAX_WEB_HEADS
from kvern.errors import RuntimeStateError
from kvern.runtime.nginx import socket_dir, web_socket
from kvern.runtime_config import RuntimeConfig
from kvern.spec import HostSpec, Spec, WebSpec

# RuntimeConfig.extra: "address:head_port" when this instance's heads listen on TCP (no front door beside them).
HEADS_ADDRESS_KEY = "heads_address"
TCP_PREFIX = "tcp:"  # a head program's argument: "tcp:ADDRESS:PORT" instead of a socket's path
CONNECT_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Endpoint:
    """One head's listening address: a unix socket, or an IPv4 address and port."""

    unix: Path | None = None
    address: str = ""
    port: int = 0

    @property
    def is_tcp(self) -> bool:
        return self.unix is None

    def upstream(self) -> str:
        """As nginx's `server` takes it (quoted by the caller)."""
        return f"{self.address}:{self.port}" if self.unix is None else f"unix:{self.unix}"

    def argument(self) -> str:
        """As the head program takes it (runtime/web_head.py, app_head.py)."""
        return f"{TCP_PREFIX}{self.address}:{self.port}" if self.unix is None else str(self.unix)

    def listening(self) -> bool:
        family = socket.AF_UNIX if self.unix is not None else socket.AF_INET
        target = str(self.unix) if self.unix is not None else (self.address, self.port)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            try:
                sock.connect(target)
            except OSError:
                return False
        return True

    def client(self, host: str, timeout: float) -> httpx.Client:
        if self.unix is None:
            return httpx.Client(base_url=f"http://{self.address}:{self.port}", headers={"Host": host}, timeout=timeout)
        transport = httpx.HTTPTransport(uds=str(self.unix))
        return httpx.Client(transport=transport, base_url=f"http://{host}", timeout=timeout)

    def async_client(self, timeout: float) -> httpx.AsyncClient:
        if self.unix is None:
            return httpx.AsyncClient(base_url=f"http://{self.address}:{self.port}", timeout=timeout)
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.unix)), base_url="http://app", timeout=timeout
        )


def parse_argument(text: str) -> Endpoint:
    """The head program's argument back into an endpoint."""
    if not text.startswith(TCP_PREFIX):
        return Endpoint(unix=Path(text))
    address, _, port = text.removeprefix(TCP_PREFIX).rpartition(":")
    return Endpoint(address=address, port=int(port))


def api_port(web: WebSpec, slot: int) -> int:
    return web.head_port + slot % MAX_WEB_HEADS


def app_port(web: WebSpec, slot: int) -> int:
    return web.head_port + MAX_WEB_HEADS + slot % MAX_WEB_HEADS


def app_socket(state_dir: Path, slot: int) -> Path:
    """Where the team's app beside web head `slot` listens, on a host with the front door."""
    return socket_dir(state_dir) / f"app-{slot}.sock"


@dataclass(frozen=True)
class HeadEndpoints:
    """The endpoints of this instance's heads: sockets in `state_dir`, or TCP at `address` from `head_port` on."""

    state_dir: Path
    address: str | None = None
    head_port: int = 0

    @classmethod
    def of(cls, config: RuntimeConfig) -> HeadEndpoints:
        raw = config.extra.get(HEADS_ADDRESS_KEY)
        if raw is None:
            return cls(config.state_path)
        address, _, port = raw.rpartition(":")
        return cls(config.state_path, address, int(port))

    @classmethod
    def of_state_dir(cls, state_dir: Path) -> HeadEndpoints:
        """From the runtime config; sockets when there is none yet (they are the default)."""
        try:
            return cls.of(RuntimeConfig.load(state_dir))
        except RuntimeStateError:
            return cls(state_dir)

    @property
    def front_door(self) -> bool:
        """Whether nginx runs beside these heads (it does wherever they listen on sockets)."""
        return self.address is None

    def api(self, slot: int) -> Endpoint:
        if self.address is None:
            return Endpoint(unix=web_socket(self.state_dir, slot))
        return Endpoint(address=self.address, port=self.head_port + slot % MAX_WEB_HEADS)

    def app(self, slot: int) -> Endpoint:
        if self.address is None:
            return Endpoint(unix=app_socket(self.state_dir, slot))
        return Endpoint(address=self.address, port=self.head_port + MAX_WEB_HEADS + slot % MAX_WEB_HEADS)


def heads_address(host: HostSpec, web: WebSpec) -> str | None:
    """`HEADS_ADDRESS_KEY`'s value for a host's instance: None where the heads stay on sockets."""
    if host.runs("web") and not host.runs("front"):
        return f"{host.address}:{web.head_port}"
    return None


@dataclass(frozen=True)
class RemoteHead:
    """A head of another host, as the front door's upstream lists it."""

    api: Endpoint
    app: Endpoint
    weight: int


def remote_heads(spec: Spec) -> Iterator[RemoteHead]:
    """The heads of every web host without the front door, `web.heads` each, at the ports the spec gives them."""
    for host in spec.hosts:
        if host.runs("web") and not host.runs("front"):
            for index in range(spec.web.heads):
                api = Endpoint(address=host.address, port=api_port(spec.web, index))
                app = Endpoint(address=host.address, port=app_port(spec.web, index))
                yield RemoteHead(api, app, host.weight)


def local_weight(spec: Spec, host_name: str | None) -> int:
    """The weight of this host's own heads: its `[hosts.NAME] weight`, 1 on one machine."""
    return next((host.weight for host in spec.hosts if host.name == host_name), 1)
