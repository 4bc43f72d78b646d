"""Who may talk to a web head that listens on TCP: the front hosts' nginx and the web host itself.

A head on a unix socket is reached through the socket's mode (owner and group). A head on TCP is reachable from
the network, so it answers only connections from the addresses of the hosts running the front door (their nginx
enforces the limits and sets X-Real-IP, which the job API trusts) and from its own host (kvern's readiness
probes); anyone else gets 403 before the request reaches the app. A firewall in front of the head ports is still
the operator's first line (README: Several machines).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from kvern.spec import Spec

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

REFUSED_BODY = b'{"error": {"code": "forbidden", "message": "web heads answer the front door only"}}'


def allowed_peers(spec: Spec, own_address: str) -> frozenset[str]:
    return frozenset({own_address, *(host.address for host in spec.hosts if host.runs("front"))})


class AsgiPeers:
    """An ASGI app that passes on requests from `allowed` addresses only."""

    def __init__(self, app: ASGIApp | Any, allowed: frozenset[str]) -> None:  # Any: uvicorn's typed middleware
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "lifespan" or (client is not None and client[0] in self.allowed):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(REFUSED_BODY)).encode())]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": REFUSED_BODY})


class WsgiPeers:
    """A WSGI app that passes on requests from `allowed` addresses only."""

    def __init__(self, app: WSGIApp, allowed: frozenset[str]) -> None:
        self.app, self.allowed = app, allowed

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REMOTE_ADDR") in self.allowed:
            return self.app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "application/json")])
        return [REFUSED_BODY]
