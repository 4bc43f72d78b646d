"""Baseline front doors: kvern's own nginx config (same template, same settings) in front of web heads that run
`bench.baseline_app` with the same uvicorn command line kvern gives its web heads (B1, B2), or a team's WSGI app
under bare gunicorn with the settings kvern gives its app heads (B6)."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import REPO, REPORTS_STATIC
from bench.procs import ProcessGroup, process_group, spawn
from bench.specs import SHOP_APP_THREADS
from kvern.runtime import app_head, nginx, upstreams
from kvern.runtime.instance import free_port
from kvern.spec import WebSpec

READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FrontDoor:
    url: str
    pids: dict[int, str]  # pid -> what it is (for bench.cpu), children included by their parent


def _web_head_command(socket: Path) -> list[str]:
    # kvern's web heads: runtime/programs.py::_web_program, with the baseline app instead of kvern's.
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.baseline_app:app",
        "--uds",
        str(socket),
        "--no-access-log",
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "20",
    ]


def _wait_ready(url: str, group: ProcessGroup) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        if any(not managed.alive() for managed, _, _ in group.items):
            break
        time.sleep(0.1)
    raise RuntimeError(f"baseline front door at {url} did not become ready")


@contextlib.contextmanager
def baseline_front_door(state_dir: Path, heads: int = 2) -> Iterator[FrontDoor]:
    """nginx + `heads` uvicorn processes of the baseline app; everything is stopped by pid on exit."""
    for sub in ("run", "logs"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    # The baseline is nginx without kvern: none of kvern's per-address limits (the load comes from one address).
    unlimited = WebSpec(heads=heads, rate=0, connections=0)
    upstreams.write_upstream(state_dir, range(heads), app=False)  # before nginx.conf: `nginx -t` reads it
    config = nginx.write_config(state_dir, port, REPORTS_STATIC, unlimited)
    logs = state_dir / "logs"
    with contextlib.ExitStack() as cleanup, process_group() as group:
        cleanup.callback(nginx.remove_front_dir, state_dir)  # as root, the sockets' folder is under /run/kvern
        pids = {}
        for index in range(heads):
            command = _web_head_command(nginx.web_socket(state_dir, index))
            # A head blocked in a report cannot run its graceful shutdown: it gets a short grace, then KILL.
            head = spawn(f"baseline web-{index}", command, logs / f"web-{index}.log", cwd=REPO)
            group.add(head, signal.SIGTERM, timeout=3)
            pids[head.pid] = "baseline web heads"
        front = spawn("baseline nginx", nginx.nginx_command(config), logs / "nginx.log")
        group.add(front, signal.SIGTERM)
        pids[front.pid] = "nginx"
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, group)
        yield FrontDoor(url, pids)


def _gunicorn_command(socket: Path, app: str) -> list[str]:
    # kvern's app heads: runtime/app_head.py's gunicorn settings, from gunicorn's own command line.
    return [
        sys.executable,
        "-m",
        "gunicorn",
        app,
        "--bind",
        f"unix:{socket}",
        # gunicorn gives its socket its own user's group (root's, as root): the folder's mode keeps others out
        # instead, and nginx's workers reach the socket through the folder's group.
        "--umask",
        "0o111",
        "--worker-class",
        "gthread",
        "--workers",
        str(app_head.WSGI_WORKERS),
        "--threads",
        str(SHOP_APP_THREADS),
        "--graceful-timeout",
        "20",
        "--keep-alive",
        str(app_head.KEEPALIVE_S),
        "--log-level",
        "warning",
        "--no-control-socket",
    ]


@contextlib.contextmanager
def bare_gunicorn_front_door(
    state_dir: Path, project: Path, app: str, env: dict[str, str], heads: int = 2
) -> Iterator[FrontDoor]:
    """nginx rendered as kvern renders it for an app, in front of `heads` bare gunicorn processes serving `app`
    from `project` (no kvern: `env` says where Celery's broker is); all stopped by pid on exit."""
    for sub in ("run", "logs"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    web = WebSpec(heads=heads, app=app, rate=0, connections=0)
    # nginx.conf names both upstreams; nothing is sent to the job API's (no such heads here).
    upstreams.write_upstream(state_dir, range(heads), app=True)
    config = nginx.write_config(state_dir, port, None, web)
    logs = state_dir / "logs"
    with contextlib.ExitStack() as cleanup, process_group() as group:
        cleanup.callback(nginx.remove_front_dir, state_dir)
        pids = {}
        for index in range(heads):
            command = _gunicorn_command(upstreams.app_socket(state_dir, index), app)
            head = spawn(f"bare gunicorn {index}", command, logs / f"gunicorn-{index}.log", env=env, cwd=project)
            group.add(head, signal.SIGTERM)
            pids[head.pid] = "bare gunicorn heads"
        front = spawn("bare nginx", nginx.nginx_command(config), logs / "nginx.log")
        group.add(front, signal.SIGTERM)
        pids[front.pid] = "nginx"
        url = f"http://127.0.0.1:{port}"
        _wait_page(url, group)
        yield FrontDoor(url, pids)


def _wait_page(url: str, group: ProcessGroup) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/", timeout=2).status_code == 200:
                return
        if any(not managed.alive() for managed, _, _ in group.items):
            break
        time.sleep(0.1)
    raise RuntimeError(f"bare gunicorn front door at {url} did not become ready")
