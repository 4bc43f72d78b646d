"""A client that goes away mid-request (a load generator closing its connections) is one short log line, not a
traceback and not a 500 in the metrics; an unexpected exception keeps its traceback at ERROR."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import pytest

from kvern.api.app import WebHead, create_app
from tests.unit import test_api

project = test_api.project
web_head = test_api.web_head
api = test_api.api

SUBMIT = "/api/v1/jobs"


async def _post_then_disconnect(head: WebHead) -> list[MutableMapping[str, Any]]:
    """POST a submission whose client is gone before its body arrives; returns what the app sent."""
    app = create_app(head)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": SUBMIT,
        "raw_path": SUBMIT.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"web-head"), (b"content-type", b"application/json"), (b"content-length", b"40")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async with app.router.lifespan_context(app):
        await app(scope, receive, send)  # raising here, uvicorn would log the traceback once more
    return sent


def _submissions(head: WebHead, code: str) -> float:
    value = head.metrics.registry.get_sample_value("kvern_submissions_total", {"head": head.metrics.head, "code": code})
    return value or 0.0


async def test_a_client_gone_mid_request_is_one_line_without_traceback_nor_500(
    web_head: WebHead, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sent = await _post_then_disconnect(web_head)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [499]
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING] == []
    gone = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO
    assert f"POST {SUBMIT}" in gone[0].getMessage()
    assert (_submissions(web_head, "500"), _submissions(web_head, "499")) == (0, 1)  # nginx's "client closed request"


async def test_an_unexpected_exception_keeps_its_traceback(
    api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client, _, store = api

    def broken(*_args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "list_jobs", broken)
    assert (await client.get(SUBMIT)).status_code == 500
    failed = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(failed) == 1 and "GET /api/v1/jobs failed" in failed[0].getMessage()
