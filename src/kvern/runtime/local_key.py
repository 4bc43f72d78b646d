"""The instance's own API key: what `kvern submit`, the demo and scripts on this machine use.

`up` makes an admin key for the instance and keeps its token in the state dir (0600, the owner's only, like the
broker passwords beside it). A later `up` keeps a token that still verifies, so scripts holding it go on
working across restarts; a missing or unknown one is replaced (the old key of that name revoked).
Its name carries the state dir's hash: instances sharing one PostgreSQL store keep their own keys.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from kvern.constants import LOCAL_KEY_FILE
from kvern.files import atomic_write
from kvern.jobs.keys import Scope, SqlKeyStore
from kvern.jobs.store import JobStore

LOCAL_KEY_PREFIX = "kvern-local-"


def local_key_name(state_dir: Path) -> str:
    return LOCAL_KEY_PREFIX + hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:12]


def renew_local_key(store: JobStore, state_dir: Path) -> None:
    keys = SqlKeyStore(store.engine)
    name = local_key_name(state_dir)
    with contextlib.suppress(FileNotFoundError):
        kept = keys.verify((state_dir / LOCAL_KEY_FILE).read_text(encoding="utf-8").strip())
        if kept is not None and kept.name == name:
            return
    keys.revoke(name)
    issued = keys.create_key(name, [Scope.ADMIN])
    atomic_write(state_dir / LOCAL_KEY_FILE, issued.token + "\n", mode=0o600)
