"""`RuntimeConfig`: what every child process of one instance needs to know, written once by `kvern up`.

It holds the generated broker credentials, so the file is 0600 and lives in the state dir. Beside it, `up`
keeps a snapshot of the spec it validated: every process of the instance reads that, never the editable
kvern.toml, so a spec edited while the instance runs cannot reach one process and not another.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvern.constants import ENV_STATE_DIR, LOCAL_KEY_FILE, RUNTIME_FILE, SPEC_SNAPSHOT
from kvern.errors import RuntimeStateError
from kvern.files import atomic_write
from kvern.spec import Spec, Tiers, load_spec

# runtime.json's `only` for a host running neither tier (a broker node, or a controller alone): `Tiers.__str__`
# would write "pools", read back as every pool. No pool name can hold a colon.
NO_TIERS = "none:"


@dataclass(frozen=True)
class RuntimeConfig:
    spec_path: str  # the spec file as the user keeps it: its folder holds the tasks module and static folder
    spec_snapshot: str  # the copy `up` validated and started from, in the state dir: what every process reads
    state_dir: str
    instance: str
    front_door_port: int
    store_url: str
    broker_urls: dict[str, str]  # role -> amqp URL with that role's credentials
    management_url: str | None  # http://127.0.0.1:port of the broker's management API, if any
    management_auth: tuple[str, str] | None
    private_broker: bool
    only: Tiers = field(default_factory=Tiers)  # which tiers this instance runs (in runtime.json as --only's text)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def spec_file(self) -> Path:
        return Path(self.spec_path)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def spec_root(self) -> Path:
        """The spec's original folder (the snapshot lives elsewhere)."""
        return self.spec_file.parent

    def spec(self) -> Spec:
        """The spec this instance was started with: its snapshot, seen from the original folder."""
        return load_spec(Path(self.spec_snapshot), origin=self.spec_file)

    def save(self) -> None:
        only = self.only
        raw: dict[str, Any] = asdict(self) | {"only": str(only) if only.web or only.pools or only.pool else NO_TIERS}
        atomic_write(self.state_path / RUNTIME_FILE, json.dumps(raw, indent=2), mode=0o600)

    @classmethod
    def load(cls, state_dir: Path) -> RuntimeConfig:
        path = state_dir / RUNTIME_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RuntimeStateError(f"no kvern instance has run with state dir {state_dir}") from None
        auth = raw.get("management_auth")
        raw["management_auth"] = tuple(auth) if auth else None
        only = raw.get("only", "all")
        raw["only"] = Tiers(web=False, pools=False) if only == NO_TIERS else Tiers.parse(only)
        return cls(**raw)

    @classmethod
    def from_environment(cls) -> RuntimeConfig:
        """The config of the instance that started this process (Supervisor passes the state dir)."""
        state_dir = os.environ.get(ENV_STATE_DIR)
        if not state_dir:
            raise RuntimeStateError(f"{ENV_STATE_DIR} is not set: this process must be started by kvern")
        return cls.load(Path(state_dir))


def snapshot_spec(spec: Spec, state_dir: Path) -> Path:
    """Keep the spec text `up` validated in the state dir: what every process of the instance reads."""
    path = state_dir / SPEC_SNAPSHOT
    atomic_write(path, spec.text)
    return path


def local_key(state_dir: Path) -> str | None:
    """The token of the instance's own API key (made by `up`), or None when there is none (authentication off,
    or an instance that never ran)."""
    try:
        return (state_dir / LOCAL_KEY_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
