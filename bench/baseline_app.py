"""The baselines' web app, a bare ASGI app served by uvicorn behind nginx (rendered from kvern's template).

- `POST /api/v1/jobs` (B1, the synchronous trap): builds the reports example's PDF *inside the request*, the
  way the article's synchronous view calls `generate_heavy_report`. The call blocks the event loop, so each
  process serves one request at a time: a synchronous worker, like gunicorn's default.
- `GET /api/v1/jobs` (B1 probe): a cheap JSON answer, the same shape of call as kvern's job list.
- `POST /api/v1/accept` (B2 ceiling): read and parse the JSON body, answer 202 with an id. Nothing else.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "reports"))

# The example's module, importable through the path above.
from report_pdf import build_report

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _report(body: bytes) -> dict[str, Any]:
    request = json.loads(body)
    user_id = int(request["args"][0])
    seconds = float(request.get("kwargs", {}).get("seconds", 3.0))
    pdf, pages = build_report(user_id, lambda _pct: None, seconds)  # blocks this process, as a sync view does
    return {"user_id": user_id, "pages": pages, "bytes": len(pdf), "message": "Report Ready"}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    method, path = scope["method"], scope["path"]
    if method == "POST" and path == "/api/v1/jobs":
        await _answer(send, 200, _report(await _body(receive)))
    elif method == "POST" and path == "/api/v1/accept":
        json.loads(await _body(receive))
        await _answer(send, 202, {"id": str(uuid.uuid4()), "status": "queued"})
    elif method == "GET" and path in ("/api/v1/jobs", "/api/health"):
        await _answer(send, 200, {"jobs": [], "next": None})
    else:
        await _answer(send, 404, {"error": {"code": "not_found", "message": path}})
