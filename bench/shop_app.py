"""B6's app, copied as `shop.py` into the bench project: a small WSGI site as a team writes one, with a page and
a view that hands the heavy part to a task with `.delay()`.

Under kvern (an app head), `.delay()` records the job and waits for the broker's confirm; under bare gunicorn it
is Celery's own publish (no record, no confirm), to the same broker.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from tasks import noop  # type: ignore[import-not-found, unused-ignore]  # the project's tasks.py

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
PRODUCTS = [(f"Product {n}", f"{n * 3 + 0.99:.2f}", n % 7) for n in range(1, 31)]


def page() -> bytes:
    """What a template would render: a list of 30 products (about 3 KB of HTML)."""
    rows = "\n".join(
        f"<tr><td>{name}</td><td>{price} EUR</td><td>{'in stock' if stock else 'sold out'}</td></tr>"
        for name, price, stock in PRODUCTS
    )
    return f"<!doctype html><html><head><title>Shop</title></head><body><table>{rows}</table></body></html>".encode()


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/report" and environ["REQUEST_METHOD"] == "POST":
        job = noop.delay()
        body = json.dumps({"id": job.id}).encode()
        start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    body = page()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
