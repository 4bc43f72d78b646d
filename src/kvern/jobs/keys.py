"""API keys: who may call the job API, and with which scopes.

A token is `kvern_<id>_<secret>`. The id finds the key; only a SHA-256 of the secret is stored, so a copy of the
store gives no working token. The secret is 256 random bits, which is why a fast hash is enough here (a slow
password hash defends guessable secrets; these cannot be guessed) and why every request can afford the check.

`KeyStoreProtocol` is the seam; `SqlKeyStore` (the job store's database) and `MemoryKeyStore` (unit tests) pass the
same contract tests in tests/unit/test_api_keys.py.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from kvern.errors import KvernError
from kvern.jobs import schema
from kvern.jobs.store import begin, read


class Scope:
    """What a key may do. `admin` implies every other scope and sees every key's jobs."""

    SUBMIT = "submit"  # create jobs; cancel, erase and replay its own
    READ = "read"  # read its own jobs, their history and artifacts
    ADMIN = "admin"  # everything, on every job; the dead-letter list
    METRICS = "metrics"  # /api/metrics


SCOPES = (Scope.SUBMIT, Scope.READ, Scope.ADMIN, Scope.METRICS)
TOKEN_PREFIX = "kvern_"
KEY_ID_BYTES = 6  # 12 hex characters: only finds the key, the secret is what authenticates
SECRET_BYTES = 32
TOKEN_PATTERN = re.compile(r"^kvern_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ApiKeyError(KvernError):
    """A key that cannot be made: a bad name or scope, or a name already taken."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    created_at: float

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes


@dataclass(frozen=True)
class IssuedKey:
    """A key just made, with its token: the only moment the token exists outside its holder's hands."""

    key: ApiKey
    token: str


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    match = TOKEN_PATTERN.match(token)
    return (match.group(1), match.group(2)) if match else None


def check_new_key(name: str, scopes: Iterable[str]) -> frozenset[str]:
    if not NAME_PATTERN.match(name):
        raise ApiKeyError(
            f"key name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with one of the first two"
        )
    chosen = frozenset(scopes)
    unknown = sorted(chosen - set(SCOPES))
    if unknown or not chosen:
        raise ApiKeyError(f"scopes must be some of {', '.join(SCOPES)} (got {', '.join(unknown) or 'none'})")
    return chosen


def issue(name: str, scopes: Iterable[str]) -> tuple[IssuedKey, str]:
    """A new key and the hash of its secret (what a store keeps)."""
    chosen = check_new_key(name, scopes)
    key_id = secrets.token_hex(KEY_ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    key = ApiKey(key_id, name, chosen, time.time())
    return IssuedKey(key, f"{TOKEN_PREFIX}{key_id}_{secret}"), secret_hash(secret)


class KeyStoreProtocol(Protocol):
    """Where API keys are kept. Implementations: `SqlKeyStore`, `MemoryKeyStore`."""

    def create_key(self, name: str, scopes: Iterable[str]) -> IssuedKey:
        """Make a key; raises ApiKeyError for a bad name or scope, or a name in use."""
        ...

    def verify(self, token: str) -> ApiKey | None:
        """The key a token belongs to; None for a malformed, unknown or revoked token."""
        ...

    def list_keys(self) -> list[ApiKey]:
        """Every key, oldest first (never a token or hash)."""
        ...

    def revoke(self, name: str) -> bool:
        """Remove the key of that name; False when there is none. Its jobs stay, visible to admin keys."""
        ...


class SqlKeyStore:
    """Keys in the job store's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_key(self, name: str, scopes: Iterable[str]) -> IssuedKey:
        issued, hashed = issue(name, scopes)
        key = issued.key
        row = {"id": key.id, "name": key.name, "secret_hash": hashed, "scopes": " ".join(sorted(key.scopes))}
        try:
            with begin(self.engine) as conn:
                conn.execute(insert(schema.api_keys).values(**row, created_at=key.created_at))
        except IntegrityError:
            raise ApiKeyError(f"a key named {name!r} exists already (revoke it first)") from None
        return issued

    def verify(self, token: str) -> ApiKey | None:
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        with read(self.engine) as conn:
            row = conn.execute(select(schema.api_keys).where(schema.api_keys.c.id == key_id)).first()
        if row is None or not hmac.compare_digest(row.secret_hash, secret_hash(secret)):
            return None
        return _key_of(row)

    def list_keys(self) -> list[ApiKey]:
        keys = schema.api_keys
        with read(self.engine) as conn:
            return [_key_of(row) for row in conn.execute(select(keys).order_by(keys.c.created_at, keys.c.name))]

    def revoke(self, name: str) -> bool:
        with begin(self.engine) as conn:
            return conn.execute(delete(schema.api_keys).where(schema.api_keys.c.name == name)).rowcount > 0


def _key_of(row: object) -> ApiKey:
    return ApiKey(
        row.id,  # type: ignore[attr-defined]
        row.name,  # type: ignore[attr-defined]
        frozenset(row.scopes.split()),  # type: ignore[attr-defined]
        row.created_at,  # type: ignore[attr-defined]
    )


class MemoryKeyStore:
    """Keys in a dict, for unit tests; the same contract as SqlKeyStore."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[ApiKey, str]] = {}  # id -> (key, secret hash)
        self.lock = threading.Lock()

    def create_key(self, name: str, scopes: Iterable[str]) -> IssuedKey:
        issued, hashed = issue(name, scopes)
        with self.lock:
            if any(key.name == name for key, _ in self.keys.values()):
                raise ApiKeyError(f"a key named {name!r} exists already (revoke it first)")
            self.keys[issued.key.id] = (issued.key, hashed)
        return issued

    def verify(self, token: str) -> ApiKey | None:
        parsed = parse_token(token)
        if parsed is None:
            return None
        found = self.keys.get(parsed[0])
        if found is None or not hmac.compare_digest(found[1], secret_hash(parsed[1])):
            return None
        return found[0]

    def list_keys(self) -> list[ApiKey]:
        return sorted((key for key, _ in self.keys.values()), key=lambda key: (key.created_at, key.name))

    def revoke(self, name: str) -> bool:
        with self.lock:
            for key_id, (key, _) in list(self.keys.items()):
                if key.name == name:
                    del self.keys[key_id]
                    return True
        return False
