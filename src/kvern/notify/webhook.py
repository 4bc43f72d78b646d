"""POST a finished job's view to a webhook URL, signed (notify/signing.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from kvern.notify.signing import SIGNATURE_HEADER, signature

TIMEOUT_S = 10.0


class DeliveryFailed(Exception):
    """The target did not take the notification; the outbox tries again later."""


def post_webhook(url: str, view: dict[str, Any], key: bytes, attempt: int, client: httpx.Client) -> str:
    """Send `view` as JSON; returns what the receiver answered ("HTTP 204"). Anything but a 2xx is a failure.
    Redirects are not followed: a signed body goes only where the operator or submitter pointed it."""
    body = json.dumps(view, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "kvern-webhook",
        SIGNATURE_HEADER: signature(key, int(time.time()), body),
        "X-Kvern-Job": str(view["id"]),
        "X-Kvern-Attempt": str(attempt),  # receivers dedupe by job id: delivery is at least once
    }
    try:
        response = client.post(url, content=body, headers=headers, timeout=TIMEOUT_S, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"HTTP {response.status_code}")
    return f"HTTP {response.status_code}"
