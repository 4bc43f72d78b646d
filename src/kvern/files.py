"""Files kvern writes that another process may read at any moment: never seen half-written."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` in one step (write a temporary file beside it, then rename it over).

    A reader sees the old content or the new one, never a mix. `mode` is set before the rename, so a
    private file (0o600, the default: the state dir holds nothing for others) is never readable by others,
    not even for a moment.
    """
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0o600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.chmod(tmp, mode)
        _keep_owner(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _keep_owner(tmp: str, path: Path) -> None:
    """Root replacing a file another account owns (a state dir handed to `[app] user`) leaves it that
    account's: its processes read it."""
    if os.geteuid() != 0:
        return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode) and (info.st_uid, info.st_gid) != (0, 0):
        os.chown(tmp, info.st_uid, info.st_gid)
