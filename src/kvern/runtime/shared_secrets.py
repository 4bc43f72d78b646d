"""The secrets every host of a several-machine instance shares, in one file the operator copies to each host.

`kvern secrets init PATH` makes it (0600); `kvern up --host NAME --secrets PATH` reads it. The spec names the
hosts and their roles but never holds a secret, so it can live in version control while this file does not.

Format (JSON):
    {"erlang_cookie": "...", "broker_passwords": {"web": "...", "worker": "...", "controller": "...", "admin": "..."}}
"""

from __future__ import annotations

import json
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvern.errors import StartError
from kvern.files import atomic_write

ENV_SECRETS = "KVERN_SECRETS"


@dataclass(frozen=True)
class SharedSecrets:
    erlang_cookie: str  # the broker nodes' shared cookie: who holds it controls every node of the cluster
    broker_passwords: Mapping[str, str]  # broker role -> that role's password, the same on every node

    @classmethod
    def generate(cls, roles: Sequence[str]) -> SharedSecrets:
        return cls(secrets.token_hex(20).upper(), {role: secrets.token_hex(16) for role in roles})

    def save(self, path: Path) -> None:
        if path.exists():
            raise StartError(f"{path} exists: it may be what the hosts share already (remove it to make a new one)")
        raw = {"erlang_cookie": self.erlang_cookie, "broker_passwords": dict(self.broker_passwords)}
        atomic_write(path, json.dumps(raw, indent=2) + "\n", mode=0o600)

    @classmethod
    def load(cls, path: Path, roles: Sequence[str]) -> SharedSecrets:
        """Refuses a file others may read, and one that lacks a role's password."""
        try:
            mode = path.stat().st_mode
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StartError(f"no secrets file at {path}: make it with `kvern secrets init {path}`") from None
        except (OSError, ValueError) as exc:
            raise StartError(f"cannot read the secrets file {path}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StartError(f"{path} is readable by others: chmod 600 {path}")
        try:
            cookie, passwords = str(raw["erlang_cookie"]), {role: str(raw["broker_passwords"][role]) for role in roles}
        except (KeyError, TypeError) as exc:
            raise StartError(f"{path}: missing {exc} (make a new file with `kvern secrets init`)") from None
        if not cookie or not all(passwords.values()):
            raise StartError(f"{path}: empty cookie or password")
        return cls(cookie, passwords)
