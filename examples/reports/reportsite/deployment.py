"""What the settings learn from where the site is deployed: its secret key and the host names it answers.

Kept apart from settings.py so each rule can be tested on its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tomllib
from pathlib import Path
from typing import Any

SECRET_KEY_ENV = "DJANGO_SECRET_KEY"
# nginx answers these whatever the spec says (kvern's own checks and a browser on the machine itself).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


class SecretKeyError(RuntimeError):
    """No secret key in the environment, and none can be read or made in the project."""


def secret_key(path: Path) -> str:
    """The key from $DJANGO_SECRET_KEY, else from ``path``, which is made on first use.

    Several web head processes may start at once: the key is written to a file of its own and linked into
    place, so exactly one key wins and no process ever reads a half-written file.
    """
    from_env = os.environ.get(SECRET_KEY_ENV, "").strip()
    if from_env:
        return from_env
    try:
        if not path.exists():
            _create_once(path, secrets.token_urlsafe(50))
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretKeyError(f"set {SECRET_KEY_ENV}, or let the site write {path}: {exc}") from exc
    if not key:
        raise SecretKeyError(f"{path} is empty: delete it to get a new key, or set {SECRET_KEY_ENV}")
    return key


def _create_once(path: Path, key: str) -> None:
    draft = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(key + "\n")
        with contextlib.suppress(FileExistsError):  # another process won the race: its key is the key
            os.link(draft, path)
    finally:
        draft.unlink()


def read_spec(path: Path) -> dict[str, Any]:
    """kvern.toml beside the project (empty without one: the site then answers the loopback names only)."""
    try:
        with path.open("rb") as spec:
            return tomllib.load(spec)
    except FileNotFoundError:
        return {}


def allowed_hosts(spec: dict[str, Any]) -> list[str]:
    """The spec's ``[web] server_name`` and the loopback names, as Django spells them ("*.a.b" is ".a.b")."""
    names = spec.get("web", {}).get("server_name", [])
    return [*LOOPBACK_HOSTS, *(name.removeprefix("*") for name in names)]


def serves_https(spec: dict[str, Any]) -> bool:
    """With ``[web.tls]`` nginx redirects plain HTTP to HTTPS, so cookies may be marked Secure."""
    return "tls" in spec.get("web", {})
