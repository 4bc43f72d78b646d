"""Manual pins (`kvern scale POOL N`): kept in the state dir so the autoscaler and the CLI agree."""

from __future__ import annotations

import json
from pathlib import Path

from kvern.constants import PINS_FILE
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
