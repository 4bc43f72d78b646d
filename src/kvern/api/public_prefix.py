"""The job API's public prefix: nginx serves it under `[web] api_prefix` (so it never collides with the team's
app), the heads under /api/. The links the API answers with are the ones a client follows at the front door."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from kvern.jobs.views import public_api_prefix


class PublicPrefix:
    """ASGI middleware: the links the API answers with use the front door's public prefix (web.api_prefix)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = public_api_prefix.set(scope["app"].state.head.spec.web.api_prefix)
        try:
            await self.app(scope, receive, send)
        finally:
            public_api_prefix.reset(token)
