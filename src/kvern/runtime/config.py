"""`RuntimeConfig`: what every child process of one instance needs to know, written once by `kvern up`.

It holds the generated broker credentials, so the file is 0600 and lives in the state dir.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvern.constants import ENV_STATE_DIR, RUNTIME_FILE
from kvern.errors import RuntimeStateError


@dataclass(frozen=True)
class RuntimeConfig:
    spec_path: str
    state_dir: str
    instance: str
    front_door_port: int
    store_url: str
    broker_urls: dict[str, str]  # role -> amqp URL with that role's credentials
    management_url: str | None  # http://127.0.0.1:port of the broker's management API, if any
    management_auth: tuple[str, str] | None
    private_broker: bool
    only: str = "all"  # which tiers this instance runs: all | web | pools | <pool name>
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def spec_file(self) -> Path:
        return Path(self.spec_path)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def save(self) -> None:
        path = self.state_path / RUNTIME_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(self), out, indent=2)
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> RuntimeConfig:
        path = state_dir / RUNTIME_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RuntimeStateError(f"no kvern instance has run with state dir {state_dir}") from None
        auth = raw.get("management_auth")
        raw["management_auth"] = tuple(auth) if auth else None
        return cls(**raw)

    @classmethod
    def from_environment(cls) -> RuntimeConfig:
        """The config of the instance that started this process (Supervisor passes the state dir)."""
        state_dir = os.environ.get(ENV_STATE_DIR)
        if not state_dir:
            raise RuntimeStateError(f"{ENV_STATE_DIR} is not set: this process must be started by kvern")
        return cls.load(Path(state_dir))
