"""Who is calling: the API key of a request (`Authorization: Bearer kvern_...`), its scopes, and what it may see.

A route names the scope it needs (`Depends(needs(Scope.READ))`); the caller comes back as a `Caller`. A job
belongs to the key that submitted it: any other non-admin key is told the job does not exist (404, never 403),
so ids cannot be probed. With `[web] auth = "off"` (loopback-only instances) every caller is an admin.

Verified keys are remembered for `VERIFIED_TTL_S` per web head, so a burst of requests with one key costs one
store read; a revoked key therefore stops working within that time on every head.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from kvern.jobs.keys import ApiKey, KeyStoreProtocol, Scope
from kvern.jobs.records import Job

VERIFIED_TTL_S = 10.0
MAX_REMEMBERED = 10_000
BEARER = HTTPBearer(auto_error=False, description="An API key made with `kvern keys create NAME --scope ...`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="kvern"'}


@dataclass(frozen=True)
class Caller:
    key: ApiKey | None  # None: authentication is off, the caller may do anything

    @property
    def owner(self) -> str | None:
        """What a job this caller submits records as its owner."""
        return self.key.id if self.key is not None else None

    @property
    def is_admin(self) -> bool:
        return self.key is None or self.key.is_admin

    def allows(self, scope: str) -> bool:
        return self.key is None or self.key.allows(scope)

    def may_see(self, job: Job) -> bool:
        return self.is_admin or job.owner == self.owner

    @property
    def list_owner(self) -> str | None:
        """The owner a listing is restricted to; None: every job (an admin)."""
        return None if self.is_admin else self.owner


OPEN = Caller(None)


def scoped_idempotency_key(owner: str | None, key: str | None) -> str | None:
    """Idempotency keys are per API key: the same key sent by two clients names two jobs. Without an owner
    (authentication off, the team's own code) the key is kept as sent, as it always was."""
    if key is None or owner is None:
        return key
    return "k:" + hashlib.sha256(f"{owner}\n{key}".encode()).hexdigest()


class Authenticator:
    """Turns a bearer token into a Caller; `keys` None means authentication is off."""

    def __init__(self, keys: KeyStoreProtocol | None) -> None:
        self.keys = keys
        self.verified: dict[str, tuple[ApiKey, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    async def caller(self, token: str | None) -> Caller | None:
        """The caller with this token; None for a missing or bad token (when authentication is on)."""
        if self.keys is None:
            return OPEN
        if not token:
            return None
        remembered = self.verified.get(token)
        now = time.monotonic()
        if remembered is not None and remembered[1] > now:
            return Caller(remembered[0])
        key = await run_in_threadpool(self.keys.verify, token)
        if key is None:
            return None
        if len(self.verified) >= MAX_REMEMBERED:
            self.verified.clear()
        self.verified[token] = (key, now + VERIFIED_TTL_S)
        return Caller(key)


def authenticator_of(request: Request) -> Authenticator:
    return request.app.state.head.auth  # type: ignore[no-any-return]


def needs(scope: str) -> Callable[..., Coroutine[Any, Any, Caller]]:
    """A FastAPI dependency: the caller, who must hold `scope`; else 401 (no or bad key) or 403 (scope)."""

    async def dependency(request: Request, credentials: Credentials) -> Caller:
        token = credentials.credentials if credentials is not None else None
        caller = await authenticator_of(request).caller(token)
        if caller is None:
            message = "a valid API key is required (Authorization: Bearer <key>)"
            raise HTTPException(401, message, headers=UNAUTHORIZED_HEADERS)
        if not caller.allows(scope):
            raise HTTPException(403, f"this API key lacks the {scope!r} scope")
        return caller

    return dependency


def is_local_request(request: Request) -> bool:
    """A request from this machine: nginx passes the client's address as X-Real-IP; a request without it came
    straight to a web head's socket, which only the instance's own accounts may open."""
    address = request.headers.get("x-real-ip")
    if address is None:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def needs_scope_or_local(scope: str) -> Callable[..., Coroutine[Any, Any, Caller]]:
    """For the docs and metrics: a key with `scope`, or any request from this machine."""
    keyed = needs(scope)

    async def dependency(request: Request, credentials: Credentials) -> Caller:
        if is_local_request(request) and credentials is None:
            return OPEN
        return await keyed(request, credentials)

    return dependency


__all__ = ["OPEN", "Caller", "Scope", "needs", "needs_scope_or_local", "scoped_idempotency_key"]
