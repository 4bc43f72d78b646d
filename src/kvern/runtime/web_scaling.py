"""`kvern scale web N`: add or remove web heads of the live color and reload nginx's upstreams without dropping a
request. A web head is its job API head and, with `[web] app`, the app head beside it: they scale together.

Growing: start the new heads, wait until each answers on its socket, then point nginx at them. Shrinking:
point nginx away first (a graceful reload lets old nginx workers finish their requests), then stop the heads
(uvicorn and gunicorn finish the requests in flight before they exit).
"""

from __future__ import annotations

from pathlib import Path

from kvern.constants import MAX_WEB_HEADS, WEB_GROUP
from kvern.errors import StartError
from kvern.processes import ACTIVE_STATES, ProcessRunner
from kvern.runtime.web_heads import (
    LiveHeads,
    changing_heads,
    color_slots,
    head_programs,
    load_live,
    publish_live,
    reload_nginx,
    start_heads,
    stop_programs,
)


def running_heads(supervisor: ProcessRunner) -> list[int]:
    """The slots whose job API head runs or is being started (of both colors while heads are being replaced)."""
    return sorted(
        p.slot
        for p in supervisor.processes()
        if p.group == WEB_GROUP and p.slot is not None and p.state in ACTIVE_STATES
    )


def scale_web(supervisor: ProcessRunner, state_dir: Path, target: int) -> tuple[int, int]:
    if not 1 <= target <= MAX_WEB_HEADS:
        raise StartError(f"web heads must be between 1 and {MAX_WEB_HEADS}")
    with changing_heads(state_dir):
        live = load_live(state_dir)
        current = [slot for slot in running_heads(supervisor) if slot in color_slots(live.color)]
        wanted = LiveHeads(live.color, target, live.app)
        if len(current) < target:
            start_heads(supervisor, state_dir, color_slots(live.color)[len(current) : target], live.app)
            publish_live(state_dir, wanted)
            reload_nginx(supervisor)
        elif len(current) > target:
            publish_live(state_dir, wanted)
            reload_nginx(supervisor)  # returns once nginx's old workers have finished with the heads going away
            stop_programs(supervisor, [name for slot in current[target:] for name in head_programs(slot, live.app)])
        return len(current), target
