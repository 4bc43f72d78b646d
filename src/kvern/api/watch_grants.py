"""Watch grants: a signed, expiring permission to follow one job's events, for a page that holds no API key.

A site's page follows a job its server submitted (`.delay()` from a view: the job has no owner, only an admin
key may read it). The server hands the page a grant for that job instead of a key: an HMAC over the job id and
an expiry, which the web heads check. It opens that job's event stream and nothing else, and the stream carries
the job's summary (status, progress, artifacts), never its arguments or result.

The signing secret is derived from the web role's broker credentials, which `up` generates and which both the
job API's heads and the team's app (through `kvern.submit`) already read from the runtime config: no new
secret to distribute, and a new `up` that makes new credentials retires every grant.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from kvern.constants import API_PREFIX, ROLE_WEB
from kvern.runtime_config import RuntimeConfig

GRANT_TTL_S = 3600.0
GRANT_CONTEXT = b"kvern job events grant\n"


def grant_secret(config: RuntimeConfig) -> bytes:
    return hashlib.sha256(GRANT_CONTEXT + config.broker_urls[ROLE_WEB].encode()).digest()


def make_grant(secret: bytes, job_id: str, ttl_s: float = GRANT_TTL_S, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl_s)
    return f"{expires}.{_signature(secret, job_id, expires)}"


def grant_allows(secret: bytes, grant: str, job_id: str, now: float | None = None) -> bool:
    """True when `grant` was made with `secret` for `job_id` and has not expired."""
    expires_text, _, signature = grant.partition(".")
    if not expires_text.isdigit() or not signature:
        return False
    expires = int(expires_text)
    if expires < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature, _signature(secret, job_id, expires))


def _signature(secret: bytes, job_id: str, expires: int) -> str:
    return hmac.new(secret, f"{job_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def events_url(job_id: str, config: RuntimeConfig, api_prefix: str) -> str:
    """The path a page opens (with EventSource) to follow `job_id`, grant included; `api_prefix` is the spec's
    `[web] api_prefix`, where the front door serves the job API."""
    grant = make_grant(grant_secret(config), job_id)
    return f"{api_prefix}{API_PREFIX.removeprefix('/api')}/jobs/{job_id}/events?grant={grant}"
