"""Webhook signatures: HMAC-SHA256 over the timestamp and the body, as `t=<unix seconds>,v1=<hex>`.

The timestamp is inside the signed text, so a receiver that rejects old timestamps also rejects replays of a
captured request. `verify` is what the README shows receivers (and what the tests check deliveries with).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Kvern-Signature"
DEFAULT_TOLERANCE_S = 300.0


def signature(key: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(key: bytes, header: str, body: bytes, now: float, tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """True when `header` signs `body` with `key` and its timestamp is within `tolerance_s` of `now`."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature(key, timestamp, body), f"t={timestamp},v1={parts.get('v1', '')}")
