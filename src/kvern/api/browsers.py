"""Browsers: a request from another web origin is refused unless the spec allows that origin.

A browser names the page that makes a request in its `Origin` header (every cross-origin request but a plain
GET, and every POST). Without one (curl, the CLI, a same-origin GET) or with the front door's own origin, the
request goes on as it is. An origin listed in `[web] cors_origins` gets CORS answers from Starlette's
CORSMiddleware; any other gets 403 `origin_not_allowed` before the API sees the request, preflight or not.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from kvern.api.views import error_body
from kvern.constants import IDEMPOTENCY_HEADER
from kvern.spec import WebSpec

DEFAULT_PORTS = {"http": 80, "https": 443}
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", IDEMPOTENCY_HEADER)
CORS_EXPOSED_HEADERS = ("Location", "Retry-After")
CORS_MAX_AGE_S = 600


def is_same_origin(
    origin: str, host: str | None, front_door_ports: Collection[int | None], scheme: str = "http"
) -> bool:
    """Whether `origin` is the site the request was sent to (its Host). nginx passes `$host`, which drops the
    port: then the origin's port may be one the front door listens on (the local door, web.listen, web.tls),
    or its scheme's default (a proxy on 80/443 in front of kvern, serving `web.server_name`)."""
    asked, served = urlsplit(origin), urlsplit(f"//{host or ''}")
    if asked.scheme not in DEFAULT_PORTS or not asked.hostname or asked.hostname != served.hostname:
        return False
    try:
        asked_port = asked.port or DEFAULT_PORTS[asked.scheme]
        served_port = served.port
    except ValueError:  # a port that is no number
        return False
    if served_port is not None:
        return asked_port == served_port
    return asked_port in {*front_door_ports, DEFAULT_PORTS[asked.scheme], DEFAULT_PORTS.get(scheme, 80)}


def front_door_ports(web: WebSpec, local_door_port: int | None) -> frozenset[int | None]:
    """Every port a page of this site may be served on."""
    tls = web.tls.listen if web.tls else ()
    return frozenset({local_door_port, *(address.port for address in (*web.listen, *tls))})


def request_scheme(scope: Scope) -> str:
    """The scheme the browser used: nginx, the only client of a web head's socket, always sets
    X-Forwarded-Proto to its `$scheme` (overwriting a client's own)."""
    forwarded = Headers(scope=scope).get("x-forwarded-proto")
    return forwarded if forwarded in DEFAULT_PORTS else str(scope["scheme"])


class OriginGuard:
    """ASGI middleware; the allowed origins and the front door's port are read from the app's web head (known
    once the app has started), so the same app object serves whatever spec the head was built from."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._cors: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = Headers(scope=scope).get("origin") if scope["type"] == "http" else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        head = scope["app"].state.head
        allowed: Sequence[str] = head.spec.web.cors_origins
        ports = front_door_ports(head.spec.web, head.front_door_port)
        if is_same_origin(origin, Headers(scope=scope).get("host"), ports, request_scheme(scope)):
            await self.app(scope, receive, send)
        elif origin.lower() in allowed:
            await self._cors_app(allowed)(scope, receive, send)
        else:
            message = f"requests from origin {origin!r} are not allowed (web.cors_origins)"
            await JSONResponse(error_body("origin_not_allowed", message), status_code=403)(scope, receive, send)

    def _cors_app(self, allowed: Sequence[str]) -> ASGIApp:
        if self._cors is None:
            options: dict[str, Any] = {
                "allow_origins": list(allowed),
                "allow_methods": list(CORS_METHODS),
                "allow_headers": list(CORS_REQUEST_HEADERS),
                "expose_headers": list(CORS_EXPOSED_HEADERS),
                "max_age": CORS_MAX_AGE_S,
            }
            self._cors = CORSMiddleware(self.app, **options)
        return self._cors
