"""Manual pins (`kvern scale POOL N`) and the pause of a rollout (`kvern reload`): kept in the state dir so the
autoscaler and the CLI agree."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kvern.constants import AUTOSCALE_PAUSE_FILE, PINS_FILE
from kvern.files import atomic_write


def read_pins(state_dir: Path) -> dict[str, int]:
    try:
        raw = json.loads((state_dir / PINS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {str(k): int(v) for k, v in raw.items()}


def write_pin(state_dir: Path, pool: str, processes: int | None) -> None:
    """Pin a pool to `processes`, or give it back to the autoscaler with None."""
    pins = read_pins(state_dir)
    if processes is None:
        pins.pop(pool, None)
    else:
        pins[pool] = processes
    atomic_write(state_dir / PINS_FILE, json.dumps(pins))


def pause_autoscaler(state_dir: Path, holder_pid: int) -> None:
    """Hold every pool as it is while `holder_pid` (a `kvern reload` replacing workers) lives.

    A pid rather than a flag: a reload that dies mid-way gives the pools back to the autoscaler by itself.
    """
    atomic_write(state_dir / AUTOSCALE_PAUSE_FILE, str(holder_pid))


def resume_autoscaler(state_dir: Path) -> None:
    (state_dir / AUTOSCALE_PAUSE_FILE).unlink(missing_ok=True)


def autoscaler_paused(state_dir: Path) -> bool:
    try:
        holder = int((state_dir / AUTOSCALE_PAUSE_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    try:
        os.kill(holder, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
