"""The dashboard's pages, assets, sign-in and live feed, served by every web head under /_kvern/ (nginx maps
`[web] dashboard_prefix` onto it). Every asset ships in the package (src/kvern/dashboard): nothing is fetched
from elsewhere, and the pages' CSP allows nothing else."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from kvern.api.dashboard.overview import InstanceProbe, OverviewFeed, probe_config, snapshot
from kvern.api.dashboard.session import COOKIE, SESSION_S, Admin, dashboard_caller, is_https, public_prefix
from kvern.api.events import EVENT_STREAM_HEADERS, KEEPALIVE_S, RETRY_MS, sse
from kvern.api.views import error_body
from kvern.errors import StoreUnavailable

if TYPE_CHECKING:
    from kvern.api.app import WebHead

ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_KEY_CHARS = 200

router = APIRouter()


@cache
def asset(name: str) -> bytes:
    return resources.files("kvern").joinpath(f"dashboard/{name}").read_bytes()


def _head(request: Request) -> WebHead:
    return request.app.state.head  # type: ignore[no-any-return]


@router.get("/")
async def index(request: Request) -> Response:
    """The dashboard for a signed-in admin, else the sign-in page (same URL: nothing to leak in a redirect)."""
    page = "index.html" if await dashboard_caller(request) is not None else "login.html"
    return Response(asset(page), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in ASSETS:
        return JSONResponse(error_body("not_found", "no such asset"), status_code=404)
    return Response(asset(name), media_type=ASSETS[name], headers={"Cache-Control": "max-age=300", **PAGE_HEADERS})


@router.post("/login")
async def login(request: Request, key: Annotated[str, Body(embed=True, max_length=MAX_KEY_CHARS)]) -> Response:
    auth = request.app.state.head.auth
    caller = await auth.caller(key.strip())
    if caller is None or not caller.is_admin:
        return JSONResponse(error_body("unauthorized", "that is not an admin key of this instance"), status_code=401)
    response = Response(status_code=204)
    response.set_cookie(
        COOKIE,
        key.strip(),
        max_age=SESSION_S,
        path=public_prefix(request),
        httponly=True,
        secure=is_https(request),
        samesite="strict",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path=public_prefix(request), httponly=True, samesite="strict")
    return response


def overview_feed(request: Request) -> OverviewFeed:
    state = request.app.state
    if getattr(state, "overview_feed", None) is None:
        head = _head(request)
        probe = InstanceProbe(head.spec, head.store, probe_config())

        async def take() -> dict[str, Any]:
            broker = await head.publisher.ping()
            now = time.time()
            try:
                taken = await run_in_threadpool(snapshot, probe, now)
            except StoreUnavailable:
                return {"at": now, "health": {"broker": broker, "store": False}}
            return taken | {"health": {"broker": broker, "store": True}}

        state.overview_feed = OverviewFeed(take)
    feed: OverviewFeed = state.overview_feed
    return feed


async def _overview_events(feed: OverviewFeed) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    updates = feed.updates(KEEPALIVE_S)
    try:
        async for taken in updates:
            yield ": keepalive\n\n" if taken is None else sse("overview", taken)
    finally:
        await updates.aclose()


@router.get("/api/live")
async def live(request: Request, _admin: Admin) -> Response:
    """The overview, pushed every couple of seconds (Server-Sent Events)."""
    return StreamingResponse(
        _overview_events(overview_feed(request)), media_type="text/event-stream", headers=EVENT_STREAM_HEADERS
    )


@router.get("/api/overview")
async def overview(request: Request, _admin: Admin) -> Response:
    """One snapshot now (for scripts and the first paint's fallback)."""
    taken = await overview_feed(request).take()
    return Response(json.dumps(taken), media_type="application/json")
