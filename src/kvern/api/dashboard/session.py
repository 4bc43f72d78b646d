"""Who may see the dashboard: a holder of an admin key, remembered by an HttpOnly cookie.

The login page POSTs the key as JSON (never in a URL); the answer sets a cookie the page's scripts cannot read,
sent only to the dashboard's own path and never on a request another site starts (SameSite=Strict). The cookie
holds the key itself: any head checks it as it checks a bearer token, so no session table is shared between
heads, and revoking the key ends every session within the authenticator's cache time.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.exceptions import HTTPException

from kvern.api.auth import Caller, authenticator_of

COOKIE = "kvern_dashboard"
SESSION_S = 12 * 3600


async def dashboard_caller(request: Request) -> Caller | None:
    """The admin behind the request's cookie; None without one (authentication off: everyone, loopback only)."""
    auth = authenticator_of(request)
    caller = await auth.caller(request.cookies.get(COOKIE) if auth.enabled else None)
    return caller if caller is not None and caller.is_admin else None


async def needs_admin(request: Request) -> Caller:
    caller = await dashboard_caller(request)
    if caller is None:
        raise HTTPException(401, "sign in to the dashboard with an admin key")
    return caller


Admin = Annotated[Caller, Depends(needs_admin)]


def public_prefix(request: Request) -> str:
    """Where the browser sees the dashboard (the cookie's path)."""
    return str(request.app.state.head.spec.web.dashboard_prefix) + "/"


def is_https(request: Request) -> bool:
    return request.headers.get("x-forwarded-proto", request.url.scheme) == "https"
