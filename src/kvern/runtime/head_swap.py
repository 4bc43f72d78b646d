"""Blue/green replacement of the web heads, for `kvern reload`: fresh heads take over before the old ones go.

Fresh processes (the new code) start in slots nobody uses, and nginx is pointed at them only once each answers
on its socket. nginx's graceful reload (HUP) starts new workers and lets the old ones finish their requests;
only once every old worker has exited are the old heads stopped (uvicorn finishes what it has in flight), so
no request ever reaches a head that is going away. If a fresh head does not come up, it is stopped and the old
heads keep serving.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from kvern.constants import MAX_WEB_HEADS, PROGRAM_NGINX, WEB_GROUP
from kvern.errors import StartError
from kvern.processes import STOPPED_STATES, ProcessRunner, web_slot
from kvern.runtime import nginx
from kvern.runtime.web_scaling import running_heads, wait_head_ready

OLD_WORKERS_TIMEOUT_S = 60.0  # an old nginx worker may be finishing a long request (or an event stream)
HEADS_STOP_TIMEOUT_S = 40.0  # uvicorn's graceful shutdown is 20 s
POLL_S = 0.05


def replace_heads(supervisor: ProcessRunner, state_dir: Path, heads: int) -> None:
    """Start `heads` fresh web heads, switch nginx to them, then stop the ones that served until now."""
    old = running_heads(supervisor)
    fresh = _free_slots(supervisor, old, heads)
    for index in fresh:
        supervisor.start(web_slot(index), wait=False)
    try:
        for index in fresh:
            wait_head_ready(state_dir, index)
    except StartError:
        _stop_all(supervisor, fresh)
        raise
    switch_upstream(supervisor, state_dir, fresh)
    _stop_all(supervisor, old)


def switch_upstream(supervisor: ProcessRunner, state_dir: Path, slots: Sequence[int]) -> None:
    """Point nginx at these heads and return once no nginx worker serves with the previous upstream."""
    nginx.write_upstream(state_dir, slots)
    reload_nginx(supervisor)


def reload_nginx(supervisor: ProcessRunner) -> None:
    """HUP nginx (it rereads its config and certificates) and wait until its old workers have exited."""
    master = supervisor.process(PROGRAM_NGINX).pid
    if master is None:
        raise StartError("nginx is not running")
    old_workers = _children(master)
    supervisor.signal(PROGRAM_NGINX, "HUP")
    deadline = time.monotonic() + OLD_WORKERS_TIMEOUT_S
    while any(_alive(pid) for pid in old_workers):
        if time.monotonic() > deadline:
            return  # a long request keeps one busy: the old heads still finish theirs before they exit
        time.sleep(POLL_S)


def _free_slots(supervisor: ProcessRunner, taken: Sequence[int], wanted: int) -> list[int]:
    idle = {
        p.slot
        for p in supervisor.processes()
        if p.group == WEB_GROUP and p.slot is not None and p.state in STOPPED_STATES
    }
    free = [index for index in range(MAX_WEB_HEADS) if index in idle and index not in taken]
    if len(free) < wanted:
        raise StartError(
            f"{wanted} fresh web heads need {wanted} free slots beside the {len(taken)} running "
            f"(at most {MAX_WEB_HEADS} in all)"
        )
    return free[:wanted]


def _stop_all(supervisor: ProcessRunner, slots: Sequence[int]) -> None:
    for index in slots:
        supervisor.stop(web_slot(index), wait=False)
    names = {web_slot(index) for index in slots}
    deadline = time.monotonic() + HEADS_STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(p.state in STOPPED_STATES for p in supervisor.processes() if p.full_name in names):
            return
        time.sleep(POLL_S)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (nginx's workers, for its master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The second field (the command) is in parentheses and may hold spaces: the parent is after it.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False
