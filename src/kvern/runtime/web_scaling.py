"""`kvern scale web N`: add or remove web heads and reload nginx's upstream without dropping a request.

Growing: start the new heads, wait until each answers on its socket, then point nginx at them. Shrinking:
point nginx away first (a graceful reload lets old nginx workers finish their requests), then stop the heads
(uvicorn finishes the requests in flight before it exits).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from kvern.constants import MAX_WEB_HEADS, PROGRAM_NGINX, WEB_GROUP
from kvern.errors import StartError
from kvern.processes import ProcessRunner, ProcessState, web_slot
from kvern.runtime import nginx

HEAD_UP_STATES = frozenset({ProcessState.RUNNING, ProcessState.STARTING})
HEAD_READY_TIMEOUT_S = 30.0
DRAIN_S = 1.0


def running_heads(supervisor: ProcessRunner) -> list[int]:
    return sorted(
        p.slot
        for p in supervisor.processes()
        if p.group == WEB_GROUP and p.slot is not None and p.state in HEAD_UP_STATES
    )


def wait_head_ready(state_dir: Path, index: int, timeout: float = HEAD_READY_TIMEOUT_S) -> None:
    transport = httpx.HTTPTransport(uds=str(nginx.web_socket(state_dir, index)))
    deadline = time.monotonic() + timeout
    with httpx.Client(transport=transport, base_url="http://web-head", timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/api/openapi.json").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise StartError(f"web head {index} did not become ready in {timeout:.0f}s")


def scale_web(supervisor: ProcessRunner, state_dir: Path, target: int) -> tuple[int, int]:
    if not 1 <= target <= MAX_WEB_HEADS:
        raise StartError(f"web heads must be between 1 and {MAX_WEB_HEADS}")
    current = running_heads(supervisor)  # not always 0..n-1: `kvern reload` moves the heads to free slots
    if len(current) < target:
        added = [index for index in range(MAX_WEB_HEADS) if index not in current][: target - len(current)]
        for index in added:
            supervisor.start(web_slot(index), wait=False)
        for index in added:
            wait_head_ready(state_dir, index)
        nginx.write_upstream(state_dir, [*current, *added])
        supervisor.signal(PROGRAM_NGINX, "HUP")
    elif len(current) > target:
        nginx.write_upstream(state_dir, current[:target])
        supervisor.signal(PROGRAM_NGINX, "HUP")
        time.sleep(DRAIN_S)  # let nginx's new workers take over before the old heads go
        for index in current[target:]:
            supervisor.stop(web_slot(index), wait=True)
    return len(current), target
