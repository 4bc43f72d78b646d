"""nginx's upstreams of web heads (upstream.conf, included by nginx.conf).

`kvern_web_heads` lists the job API's heads; with `[web] app`, `kvern_app_heads` lists the team's app heads
beside them. Both name the live heads only: the file is rewritten, and nginx reloaded gracefully (HUP),
whenever that set changes (`up`, `kvern scale web`, a reload switching colors: runtime/web_heads.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kvern.errors import StartError
from kvern.files import atomic_write
from kvern.runtime.nginx import config_path, socket_dir, web_socket
from kvern.spec import check_config_path

API_UPSTREAM = "kvern_web_heads"
APP_UPSTREAM = "kvern_app_heads"
UPSTREAM_FILE = "upstream.conf"
# As the seed has it: least_conn over equal weights; a head failing 3 times is left out for 10 s.
SERVER_OPTIONS = "weight=10 max_fails=3 fail_timeout=10s"
KEEPALIVE_CONNECTIONS = 64  # idle connections each nginx worker keeps open to the heads of one upstream


def app_socket(state_dir: Path, slot: int) -> Path:
    """Where the team's app beside web head `slot` listens."""
    return socket_dir(state_dir) / f"app-{slot}.sock"


def upstream_path(state_dir: Path) -> Path:
    return config_path(state_dir).parent / UPSTREAM_FILE


def _upstream(name: str, sockets: Iterable[Path]) -> str:
    servers = "\n".join(
        f'    server "unix:{check_config_path(sock, "state dir", StartError)}" {SERVER_OPTIONS};' for sock in sockets
    )
    return f"upstream {name} {{\n    least_conn;\n{servers}\n    keepalive {KEEPALIVE_CONNECTIONS};\n}}\n"


def render_upstream(state_dir: Path, slots: Iterable[int], app: bool) -> str:
    """The upstreams of the heads in `slots`: the job API's, and the app's when there is an app."""
    slots = list(slots)
    text = _upstream(API_UPSTREAM, (web_socket(state_dir, slot) for slot in slots))
    if app:
        text += _upstream(APP_UPSTREAM, (app_socket(state_dir, slot) for slot in slots))
    return text


def write_upstream(state_dir: Path, slots: Iterable[int], app: bool) -> None:
    path = upstream_path(state_dir)
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, render_upstream(state_dir, slots, app))
