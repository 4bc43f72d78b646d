"""nginx's upstreams of web heads (upstream.conf, included by nginx.conf).

`kvern_web_heads` lists the job API's heads; with `[web] app`, `kvern_app_heads` lists the team's app heads
beside them. Both name this host's live heads (on unix sockets) and, in a several-machine instance, the heads of
every web host without the front door (over TCP, runtime/head_endpoints.py), each with its host's weight. The
file is rewritten, and nginx reloaded gracefully (HUP), whenever that set changes (`up`, `kvern scale web`, a
reload switching colors: runtime/web_heads.py; a reload adding or removing a web host: runtime/reload.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from kvern.constants import RUNTIME_HOST_KEY
from kvern.errors import RuntimeStateError, StartError
from kvern.files import atomic_write
from kvern.runtime.head_endpoints import (
    Endpoint,
    HeadEndpoints,
    RemoteHead,
    app_socket,
    local_weight,
    remote_heads,
)
from kvern.runtime.nginx import config_path
from kvern.runtime_config import RuntimeConfig
from kvern.spec import Spec, check_config_path

__all__ = [
    "API_UPSTREAM",
    "APP_UPSTREAM",
    "app_socket",
    "remote_api_heads",
    "render_upstream",
    "upstream_path",
    "write_upstream",
]

API_UPSTREAM = "kvern_web_heads"
APP_UPSTREAM = "kvern_app_heads"
UPSTREAM_FILE = "upstream.conf"
# As the seed has it: least_conn over weighted heads; a head failing 3 times within 10 s is left out for 10 s
# (nginx's passive health check: a refused or timed-out connection counts, the request going to the next head).
FAIL_OPTIONS = "max_fails=3 fail_timeout=10s"
KEEPALIVE_CONNECTIONS = 64  # idle connections each nginx worker keeps open to the heads of one upstream
TCP_SERVER = re.compile(r'^    server "([0-9.]+):([0-9]+)" ', re.MULTILINE)


def upstream_path(state_dir: Path) -> Path:
    return config_path(state_dir).parent / UPSTREAM_FILE


def _server(endpoint: Endpoint, weight: int) -> str:
    if endpoint.unix is not None:
        check_config_path(endpoint.unix, "state dir", StartError)
    return f'    server "{endpoint.upstream()}" weight={weight} {FAIL_OPTIONS};'


def _upstream(name: str, servers: Iterable[tuple[Endpoint, int]]) -> str:
    lines = "\n".join(_server(endpoint, weight) for endpoint, weight in servers)
    return f"upstream {name} {{\n    least_conn;\n{lines}\n    keepalive {KEEPALIVE_CONNECTIONS};\n}}\n"


def render_upstream(
    state_dir: Path, slots: Iterable[int], app: bool, remote: Sequence[RemoteHead] = (), weight: int = 1
) -> str:
    """The upstreams of this host's heads in `slots` (of weight `weight`) and of the `remote` heads: the job
    API's, and the app's when there is an app."""
    local = HeadEndpoints(state_dir)
    slots = list(slots)
    text = _upstream(
        API_UPSTREAM, [*((local.api(slot), weight) for slot in slots), *((h.api, h.weight) for h in remote)]
    )
    if app:
        text += _upstream(
            APP_UPSTREAM, [*((local.app(slot), weight) for slot in slots), *((h.app, h.weight) for h in remote)]
        )
    return text


def write_upstream(state_dir: Path, slots: Iterable[int], app: bool, spec: Spec | None = None) -> None:
    """Write upstream.conf for this host's heads in `slots` and the web hosts of `spec` (default: the spec
    the instance runs, when it has started)."""
    host_name = None
    try:
        config = RuntimeConfig.load(state_dir)
        host_name = config.extra.get(RUNTIME_HOST_KEY)
        spec = spec or config.spec()
    except RuntimeStateError:
        pass
    remote = list(remote_heads(spec)) if spec is not None else []
    weight = local_weight(spec, host_name) if spec is not None else 1
    path = upstream_path(state_dir)
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, render_upstream(state_dir, slots, app, remote, weight))


def remote_api_heads(state_dir: Path) -> list[Endpoint]:
    """The job API heads of other hosts that nginx sends requests to now, as upstream.conf names them (it is
    rewritten at each change, so it is current where the running spec snapshot of a head may not be)."""
    try:
        text = upstream_path(state_dir).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    api = text.partition(f"upstream {APP_UPSTREAM} ")[0]
    return [Endpoint(address=address, port=int(port)) for address, port in TCP_SERVER.findall(api)]
