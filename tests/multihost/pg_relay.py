"""The machine's PostgreSQL, reachable from the namespace hosts at the bridge's address (a TCP relay).

The machine's server listens on loopback only; each namespace has a loopback of its own. The relay listens on
the bridge's address (which only the namespace hosts and this machine reach) and copies bytes to and from
127.0.0.1:5432, so the hosts share one job store the way machines share a database host.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading

POSTGRES_PORT = 5432


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        client: socket.socket = self.request
        with socket.create_connection(("127.0.0.1", POSTGRES_PORT), timeout=10) as server:
            server.settimeout(None)
            back = threading.Thread(target=_copy, args=(server, client), daemon=True)
            back.start()
            _copy(client, server)
            back.join(timeout=5)


def _copy(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class PostgresRelay:
    """`start()` listens on `address`:5432; `close()` stops listening (connections still open die with it)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._server = _Server((address, POSTGRES_PORT), _Pipe)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)

    def start(self) -> PostgresRelay:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
