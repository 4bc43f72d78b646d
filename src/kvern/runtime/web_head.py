"""`python -m kvern.runtime.web_head SOCKET`: one web head, uvicorn serving the job API on a unix socket.

uvicorn's own `--uds` makes the socket 0666 (anyone on the machine could skip nginx and its limits): the socket
is bound here instead, owner and group only, and handed to uvicorn already bound.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

import uvicorn

SOCKET_MODE = 0o660  # the group: nginx workers may run as another user of the same group
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


def main(argv: list[str]) -> None:
    path = Path(argv[0])
    sock = bind_socket(path)
    config = uvicorn.Config(
        "kvern.api.asgi:app",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


if __name__ == "__main__":
    main(sys.argv[1:])
