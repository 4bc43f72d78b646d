"""The web heads nginx sends requests to, and switching them for new ones without dropping a request.

A web head slot runs the job API (`web-<slot>`) and, with `[web] app`, the team's app beside it (`app-<slot>`).
Slots come in two colors (blue/green): color c owns slots c * MAX_WEB_HEADS up to (c + 1) * MAX_WEB_HEADS - 1.
One color is live; `web_heads.json` in the state dir says which, and how many of its heads run.

`replace_heads` is a deploy: fresh processes of the idle color (new code, new spec snapshot) start and must
answer, nginx is pointed at them by a graceful reload, and once nginx's old workers have finished the requests
they held, the old color's heads are stopped (they too finish what they are serving first).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from kvern.constants import MAX_WEB_HEADS, PROGRAM_NGINX, WEB_COLORS, WEB_HEADS_FILE
from kvern.errors import RuntimeStateError, StartError
from kvern.files import atomic_write
from kvern.processes import ACTIVE_STATES, STOPPED_STATES, ProcessRunner, ProcessState, app_slot, web_slot
from kvern.runtime.head_endpoints import Endpoint, HeadEndpoints
from kvern.runtime.leftovers import alive, parent_of
from kvern.runtime.upstreams import remote_api_heads, write_upstream

HEAD_READY_TIMEOUT_S = 30.0
READY_POLL_S = 0.1
PROBE_TIMEOUT_S = 2.0
REMOTE_CONNECT_TIMEOUT_S = 0.5  # a web host's head that takes longer to accept a connection counts as down
NGINX_RELOAD_TIMEOUT_S = 10.0  # a HUP that starts no new workers: nginx refused the new config
NGINX_DRAIN_TIMEOUT_S = 30.0  # nginx's proxy_read_timeout: no request to a head is held longer
HEAD_STOP_TIMEOUT_S = 40.0
CRASHED_STATES = frozenset({ProcessState.BACKOFF, ProcessState.FATAL, ProcessState.EXITED})


@dataclass(frozen=True)
class LiveHeads:
    """The heads nginx sends requests to: the first `count` slots of `color`; `app`: the team's app beside each."""

    color: int
    count: int
    app: bool

    @property
    def slots(self) -> range:
        return color_slots(self.color, self.count)

    @property
    def idle_color(self) -> int:
        return (self.color + 1) % WEB_COLORS

    def programs(self) -> list[str]:
        return [name for slot in self.slots for name in head_programs(slot, self.app)]


def color_slots(color: int, count: int = MAX_WEB_HEADS) -> range:
    first = color * MAX_WEB_HEADS
    return range(first, first + count)


def head_programs(slot: int, app: bool) -> list[str]:
    """The runner's names of one web head slot: its job API head, and its app head when there is an app."""
    return [web_slot(slot), app_slot(slot)] if app else [web_slot(slot)]


def load_live(state_dir: Path) -> LiveHeads:
    try:
        raw = json.loads((state_dir / WEB_HEADS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuntimeStateError(f"no web heads have run with state dir {state_dir}") from None
    return LiveHeads(int(raw["color"]), int(raw["count"]), bool(raw["app"]))


def publish_live(state_dir: Path, live: LiveHeads) -> None:
    """Record `live` and point nginx's upstreams at it (nginx reads them at its next start or reload); on a web
    host without the front door, the front host's upstreams name its heads by the spec's ports instead."""
    atomic_write(state_dir / WEB_HEADS_FILE, json.dumps(asdict(live)))
    if HeadEndpoints.of_state_dir(state_dir).front_door:
        write_upstream(state_dir, live.slots, live.app)


@contextlib.contextmanager
def changing_heads(state_dir: Path) -> Iterator[None]:
    """One change of the web heads at a time (a scale and a reload at once would each switch half of them)."""
    with (state_dir / f"{WEB_HEADS_FILE}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# -- readiness ------------------------------------------------------------------------------------------------


def api_head_answers(state_dir: Path, slot: int) -> bool:
    """The job API head serves its OpenAPI document (it has loaded the catalog)."""
    return _answer(HeadEndpoints.of_state_dir(state_dir).api(slot), "/api/openapi.json") == 200


def app_head_answers(state_dir: Path, slot: int, host: str = "localhost") -> bool:
    """The app head gives any HTTP answer: whether the app likes the request is the app's business."""
    return _answer(HeadEndpoints.of_state_dir(state_dir).app(slot), "/", host) is not None


def _answer(endpoint: Endpoint, path: str, host: str = "localhost") -> int | None:
    try:
        with endpoint.client(host, PROBE_TIMEOUT_S) as client:
            return client.get(path).status_code
    except httpx.HTTPError:
        return None


async def app_heads_answering(state_dir: Path, host: str) -> tuple[int, int]:
    """(answering, expected) of the live app heads, probed at once; for the job API's health route."""
    try:
        live = load_live(state_dir)
    except (RuntimeStateError, ValueError, KeyError):
        return 0, 0
    endpoints = HeadEndpoints.of_state_dir(state_dir)
    answers = await asyncio.gather(*(_answer_async(endpoints.app(slot), host) for slot in live.slots))
    return sum(answers), len(answers)


async def _answer_async(endpoint: Endpoint, host: str) -> bool:
    try:
        async with endpoint.async_client(PROBE_TIMEOUT_S) as client:
            await client.get("/", headers={"Host": host})
    except httpx.HTTPError:
        return False
    return True


async def remote_heads_listening(state_dir: Path) -> tuple[int, int]:
    """(listening, expected) of the other hosts' job API heads in nginx's upstreams, by a TCP connect to each at
    once (a health check costs at most `REMOTE_CONNECT_TIMEOUT_S`); (0, 0) where there are none."""
    heads = remote_api_heads(state_dir)
    answers = await asyncio.gather(*(_listening_async(head) for head in heads))
    return sum(answers), len(answers)


async def _listening_async(endpoint: Endpoint) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(endpoint.address, endpoint.port), REMOTE_CONNECT_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def wait_ready(supervisor: ProcessRunner, state_dir: Path, slots: Sequence[int], app: bool) -> None:
    """Until every head of `slots` answers; a `StartError` when one crashes first or the time is up."""
    pending = {web_slot(slot): slot for slot in slots} | ({app_slot(slot): slot for slot in slots} if app else {})
    deadline = time.monotonic() + HEAD_READY_TIMEOUT_S
    while pending:
        for name, slot in list(pending.items()):
            ready = app_head_answers if name.startswith("app") else api_head_answers
            if ready(state_dir, slot):
                del pending[name]
        if not pending:
            return
        states = {p.full_name: p.state for p in supervisor.processes()}
        crashed = sorted(name for name in pending if states.get(name) in CRASHED_STATES)
        if crashed:
            raise StartError(f"{', '.join(crashed)} exited before answering (see their logs in the state dir)")
        if time.monotonic() > deadline:
            raise StartError(f"{', '.join(sorted(pending))} did not answer within {HEAD_READY_TIMEOUT_S:.0f}s")
        time.sleep(READY_POLL_S)


# -- starting, stopping, switching ----------------------------------------------------------------------------


def start_heads(supervisor: ProcessRunner, state_dir: Path, slots: Sequence[int], app: bool) -> None:
    """Start the heads of `slots` and wait until they answer; when they do not, stop them again and raise."""
    names = [name for slot in slots for name in head_programs(slot, app)]
    for name in names:
        supervisor.start(name, wait=False)
    try:
        wait_ready(supervisor, state_dir, slots, app)
    except BaseException:
        stop_programs(supervisor, names)
        raise


def stop_programs(supervisor: ProcessRunner, names: Sequence[str]) -> None:
    """Stop them all at once (each finishes its requests in flight), and wait until they have exited."""
    for name in names:
        supervisor.stop(name, wait=False)
    deadline = time.monotonic() + HEAD_STOP_TIMEOUT_S
    wanted = set(names)
    while time.monotonic() < deadline:
        if all(p.state in STOPPED_STATES for p in supervisor.processes() if p.full_name in wanted):
            return
        time.sleep(READY_POLL_S)
    raise StartError(f"{', '.join(sorted(wanted))} did not stop within {HEAD_STOP_TIMEOUT_S:.0f}s")


def active_programs(supervisor: ProcessRunner, color: int, app: bool) -> list[str]:
    """Every head program of `color` that runs or is being started."""
    names = {name for slot in color_slots(color) for name in head_programs(slot, app)}
    return [p.full_name for p in supervisor.processes() if p.full_name in names and p.state in ACTIVE_STATES]


def reload_nginx(supervisor: ProcessRunner) -> None:
    """Graceful reload (HUP): new workers take the new upstreams; return once the old ones have exited, having
    finished the requests they held (or after `NGINX_DRAIN_TIMEOUT_S`)."""
    if all(p.full_name != PROGRAM_NGINX for p in supervisor.processes()):
        return  # a web host without the front door: the front host's nginx names its heads by the spec's ports
    master = supervisor.process(PROGRAM_NGINX).pid
    if master is None:
        return  # not started yet: it reads upstream.conf when it starts
    old = _children(master)
    supervisor.signal(PROGRAM_NGINX, "HUP")
    deadline = time.monotonic() + NGINX_RELOAD_TIMEOUT_S
    while not _children(master) - old:
        if time.monotonic() > deadline:
            raise StartError("nginx did not reload its configuration (see nginx-error.log in the state dir)")
        time.sleep(READY_POLL_S)
    deadline = time.monotonic() + NGINX_DRAIN_TIMEOUT_S
    while any(alive(pid) for pid in old) and time.monotonic() < deadline:
        time.sleep(READY_POLL_S)


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == pid and alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def switch_to(supervisor: ProcessRunner, state_dir: Path, new: LiveHeads, old: LiveHeads) -> None:
    """Point nginx at `new`; when nginx refuses, point it back at `old` and raise."""
    publish_live(state_dir, new)
    try:
        reload_nginx(supervisor)
    except StartError:
        publish_live(state_dir, old)
        raise


def replace_heads(supervisor: ProcessRunner, state_dir: Path, heads: int) -> None:
    """Serve from `heads` fresh heads of the idle color (new code, new spec snapshot) instead of the live ones.

    If the new heads do not answer, they are stopped and a `StartError` says why; the old ones keep serving.
    """
    if not 1 <= heads <= MAX_WEB_HEADS:
        raise StartError(f"web heads must be between 1 and {MAX_WEB_HEADS}")
    with changing_heads(state_dir):
        live = load_live(state_dir)
        new = LiveHeads(live.idle_color, heads, live.app)
        # Left over from a replacement that was interrupted: they would run the code of that time.
        stop_programs(supervisor, active_programs(supervisor, new.color, new.app))
        try:
            start_heads(supervisor, state_dir, new.slots, new.app)
        except StartError as exc:
            raise StartError(f"the new web heads did not become ready, the old ones keep serving: {exc}") from exc
        try:
            switch_to(supervisor, state_dir, new, live)
        except StartError:
            stop_programs(supervisor, new.programs())
            raise
        stop_programs(supervisor, active_programs(supervisor, live.color, live.app))
