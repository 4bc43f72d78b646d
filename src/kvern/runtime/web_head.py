"""`python -m kvern.runtime.web_head SOCKET`: one web head, uvicorn serving the job API on a unix socket.

uvicorn's own `--uds` makes the socket 0666 (anyone on the machine could skip nginx and its limits): the socket
is bound here instead, owner and group only, and handed to uvicorn already bound. On a web host without the
front door the argument is `tcp:ADDRESS:PORT` (runtime/head_endpoints.py): the head listens on that address
alone, the host's own, for the front host's nginx.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn

from kvern.runtime.head_endpoints import Endpoint, parse_argument
from kvern.runtime.head_peers import AsgiPeers, allowed_peers
from kvern.runtime_config import RuntimeConfig

SOCKET_MODE = 0o660  # the group: nginx workers may run as another user of the same group
# nginx keeps idle connections to the heads open for up to 60 s (its upstream keepalive_timeout): the heads keep
# them longer, so nginx never sends a request on a connection the head is closing at that moment (a POST sent
# there could not be retried: a 502).
HEAD_KEEPALIVE_S = 75
GRACEFUL_SHUTDOWN_S = 20


def bind_socket(path: Path) -> socket.socket:
    """A unix socket at `path` with `SOCKET_MODE`, never wider, even for a moment (the umask covers the bind)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a previous head's socket: uvicorn removes it only when it bound it itself
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(previous)
    os.chmod(path, SOCKET_MODE)
    return sock


def bind_tcp(address: str, port: int) -> socket.socket:
    """A TCP socket on `address` only (the host's address in the spec: never every interface)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted head rebinds past TIME_WAIT
    sock.bind((address, port))
    return sock


def bind_endpoint(endpoint: Endpoint) -> socket.socket:
    if endpoint.unix is not None:
        return bind_socket(endpoint.unix)
    return bind_tcp(endpoint.address, endpoint.port)


def remove_socket(endpoint: Endpoint) -> None:
    if endpoint.unix is not None:
        with contextlib.suppress(FileNotFoundError):
            endpoint.unix.unlink()


def asgi_app(endpoint: Endpoint) -> Any:
    """The job API as uvicorn loads it; on TCP, behind the peer check (runtime/head_peers.py)."""
    if endpoint.unix is not None:
        return "kvern.api.asgi:app"
    from kvern.api.asgi import app  # noqa: PLC0415 (imported by uvicorn itself on a socket)

    spec = RuntimeConfig.from_environment().spec()
    return AsgiPeers(app, allowed_peers(spec, endpoint.address))


def server_config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=HEAD_KEEPALIVE_S,
        proxy_headers=False,  # nginx passes the client's address as X-Real-IP; nothing reads X-Forwarded-For
    )


def main(argv: list[str]) -> None:
    endpoint = parse_argument(argv[0])
    sock = bind_endpoint(endpoint)
    config = server_config(asgi_app(endpoint))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        remove_socket(endpoint)


if __name__ == "__main__":
    main(sys.argv[1:])
