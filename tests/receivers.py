"""Local receivers of notifications for the tests: a webhook endpoint and an SMTP server (aiosmtpd), both on
loopback, both keeping what they got."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


class Receiver:
    """A webhook endpoint that answers `status` and keeps each request's headers and body."""

    def __init__(self) -> None:
        self.status = 204
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@contextlib.contextmanager
def receiving_webhooks() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(timeout=5)


class Inbox:
    """aiosmtpd's handler: keeps (recipients, message) of each mail."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


@contextlib.contextmanager
def receiving_mail() -> Iterator[tuple[int, Inbox]]:
    """An SMTP server on 127.0.0.1: (its port, its inbox)."""
    inbox = Inbox()
    with socket.socket() as probe:  # aiosmtpd's start() connects to its port: it needs a real one
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = Controller(inbox, hostname="127.0.0.1", port=port)
    server.start()
    try:
        yield port, inbox
    finally:
        server.stop()
