"""The team's app on the web heads, without running it: naming, programs, upstreams, colors, loading the app."""

from __future__ import annotations

import asyncio
import os
import socket
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from kvern.api.app import WebHead, create_app
from kvern.catalog import load_user_app
from kvern.constants import APP_GROUP, MAX_WEB_HEADS, WEB_COLORS, WEB_GROUP
from kvern.errors import RuntimeStateError, SpecError
from kvern.jobs.store import JobStore
from kvern.processes import ProcessInfo, ProcessState, app_program_name, app_slot, slot_index, web_slot
from kvern.runtime import app_head
from kvern.runtime.app_head import ASGI, WSGI, detect_interface, load_web_app
from kvern.runtime.nginx import remove_front_dir, socket_dir, web_socket
from kvern.runtime.programs import build_programs
from kvern.runtime.upstreams import app_socket, render_upstream, upstream_path
from kvern.runtime.web_heads import LiveHeads, color_slots, head_programs, load_live, publish_live
from kvern.spec import load_spec, parse_spec
from tests.unit.doubles import StubPublisher
from tests.unit.test_spec_snapshot import started


def test_app_heads_are_named_like_web_heads_in_a_group_of_their_own() -> None:
    assert app_program_name(3) == "app-3"
    assert app_slot(17) == f"{APP_GROUP}:app-17"
    assert slot_index(APP_GROUP, "app-17") == 17
    assert slot_index(APP_GROUP, "apple") is None
    assert ProcessInfo.of(APP_GROUP, "app-2", ProcessState.RUNNING, 10).slot == 2


def test_each_color_owns_its_own_slots() -> None:
    assert list(color_slots(0, 2)) == [0, 1]
    assert list(color_slots(1, 3)) == [MAX_WEB_HEADS, MAX_WEB_HEADS + 1, MAX_WEB_HEADS + 2]
    assert len(color_slots(WEB_COLORS - 1)) == MAX_WEB_HEADS
    live = LiveHeads(color=1, count=2, app=True)
    assert live.idle_color == 0 and LiveHeads(0, 1, app=False).idle_color == 1
    slot = MAX_WEB_HEADS
    assert live.programs() == [web_slot(slot), app_slot(slot), web_slot(slot + 1), app_slot(slot + 1)]
    assert head_programs(4, app=False) == [web_slot(4)]


def test_upstreams_name_the_live_heads_and_the_app_heads_beside_them(tmp_path: Path) -> None:
    text = render_upstream(tmp_path, color_slots(1, 2), app=True)
    api, app = text.split("upstream kvern_app_heads")
    assert api.startswith("upstream kvern_web_heads {\n    least_conn;")
    for slot in (MAX_WEB_HEADS, MAX_WEB_HEADS + 1):
        assert f'server "unix:{web_socket(tmp_path, slot)}" weight=1 max_fails=3 fail_timeout=10s;' in api
        assert f'server "unix:{app_socket(tmp_path, slot)}" weight=1 max_fails=3 fail_timeout=10s;' in app
    assert "least_conn;" in app and "keepalive 64;" in app and "web-" not in app
    assert "kvern_app_heads" not in render_upstream(tmp_path, [0], app=False)


def test_the_live_heads_are_recorded_with_their_upstreams(tmp_path: Path) -> None:
    with pytest.raises(RuntimeStateError):
        load_live(tmp_path)
    live = LiveHeads(color=1, count=3, app=True)
    publish_live(tmp_path, live)
    assert load_live(tmp_path) == live
    assert upstream_path(tmp_path).read_text() == render_upstream(tmp_path, live.slots, app=True)


def test_an_app_head_program_beside_every_web_head_slot_of_both_colors(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "kvern.toml").write_text('[app]\ntasks = "t"\n[web]\napp = "site:app"\n[[pools]]\nname = "main"\n')
    config = started(project / "kvern.toml", tmp_path / "state", "web")
    spec = load_spec(project / "kvern.toml")
    programs = build_programs(spec, config, None)
    apps = [p for p in programs if p.group == APP_GROUP]
    webs = [p for p in programs if p.group == WEB_GROUP]
    assert len(apps) == len(webs) == MAX_WEB_HEADS * WEB_COLORS
    head = apps[MAX_WEB_HEADS]
    assert head.name == f"app-{MAX_WEB_HEADS}" and head.directory == project
    assert head.command[-3:] == ["-m", "kvern.runtime.app_head", str(app_socket(config.state_path, MAX_WEB_HEADS))]
    without_app = parse_spec({"app": {"tasks": "t"}, "pools": [{"name": "main"}]}, project / "kvern.toml")
    assert not [p for p in build_programs(without_app, config, None) if p.group == APP_GROUP]


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b""]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    pass


class AsgiClass:
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        pass


class WsgiClass:
    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return []


@pytest.mark.parametrize(
    ("app", "interface"),
    [(wsgi_app, WSGI), (WsgiClass(), WSGI), (asgi_app, ASGI), (AsgiClass(), ASGI), (Starlette(), ASGI)],
)
def test_the_interface_is_told_by_the_app_object(app: Any, interface: str) -> None:
    assert detect_interface(app) == interface


def site_project(tmp_path: Path, source: str, app: str = "{module}:application", extra: str = "") -> Path:
    module = f"site_{uuid.uuid4().hex[:8]}"  # Python caches modules by name
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    spec = tmp_path / "kvern.toml"
    spec.write_text(f'[app]\ntasks = "t"\n[web]\napp = "{app.format(module=module)}"\n{extra}[[pools]]\nname = "m"\n')
    return spec


def test_the_web_app_is_imported_from_the_spec_folder(tmp_path: Path) -> None:
    spec = site_project(tmp_path, "def application(environ, start_response):\n    return []\n")
    app, interface = load_web_app(load_spec(spec))
    assert callable(app) and interface == WSGI


def test_the_spec_s_interface_wins_over_detection(tmp_path: Path) -> None:
    spec = site_project(tmp_path, "def application(scope, receive, send):\n    pass\n", extra='interface = "asgi"\n')
    assert load_web_app(load_spec(spec))[1] == ASGI


@pytest.mark.parametrize(
    ("source", "interface", "message"),
    [
        ("async def application(scope, receive, send):\n    pass\n", "wsgi", r'"wsgi", but .* is an ASGI application'),
        ("class A:\n    async def __call__(self, s, r, w): ...\napplication = A()\n", "wsgi", r"an ASGI application"),
        ("def application(environ, start_response):\n    return []\n", "asgi", r"as a WSGI application does"),
        ("def application(scope, receive, send):\n    pass\n", "wsgi", r"as an ASGI application does"),
    ],
)
def test_an_interface_the_app_plainly_is_not_is_refused(
    tmp_path: Path, source: str, interface: str, message: str
) -> None:
    spec = site_project(tmp_path, source, extra=f'interface = "{interface}"\n')
    with pytest.raises(SpecError, match=message) as raised:
        load_web_app(load_spec(spec))
    assert str(raised.value).startswith("web.interface: ")


def test_an_interface_the_signature_cannot_tell_stands(tmp_path: Path) -> None:
    spec = site_project(tmp_path, "def application(*args):\n    pass\n", extra='interface = "asgi"\n')
    assert load_web_app(load_spec(spec))[1] == ASGI


@pytest.mark.parametrize(
    ("source", "app", "message"),
    [
        ("import not_installed_anywhere\n", "{module}:application", r"ModuleNotFoundError: No module named"),
        ("x = 1 / 0\n", "{module}:application", r"\.py:1: ZeroDivisionError: division by zero"),
        ("def application(:\n", "{module}:application", r"\.py:1: SyntaxError"),
        ("import sys\nsys.exit('set SECRET_KEY')\n", "{module}:application", r"SystemExit: set SECRET_KEY"),
        ("application = 1\n", "{module}:missing", r"has no attribute 'missing'"),
        ("application = 1\n", "{module}:application", r"is a int, not a WSGI or ASGI application"),
    ],
)
def test_an_app_that_cannot_be_served_is_one_line_naming_the_field(
    tmp_path: Path, source: str, app: str, message: str
) -> None:
    spec = site_project(tmp_path, source, app)
    with pytest.raises(SpecError, match=message) as raised:
        load_web_app(load_spec(spec))
    assert str(raised.value).startswith("web.app: ") and "\n" not in str(raised.value)


@pytest.fixture
def head_with_app(tmp_path: Path) -> Iterator[WebHead]:
    module = f"health_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from celery import Celery\napp = Celery('h')\n\n@app.task\ndef t():\n    pass\n"
    )
    spec_path = tmp_path / "kvern.toml"
    spec_path.write_text(f'[app]\ntasks = "{module}"\n[web]\napp = "site:app"\n[[pools]]\nname = "main"\n')
    spec = load_spec(spec_path)
    _, catalog = load_user_app(spec)
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    store.create_schema()
    state = tmp_path / "state"
    state.mkdir()
    socket_dir(state).mkdir(parents=True)  # under /run/kvern as root
    publish_live(state, LiveHeads(color=0, count=2, app=True))
    yield WebHead(spec, catalog, store, StubPublisher(), state_dir=state)
    remove_front_dir(state)


async def health(head: WebHead) -> httpx.Response:
    app = create_app(head)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://web-head") as client:
            return await client.get("/api/health")


async def answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")  # any answer is an answer
    await writer.drain()
    writer.close()


async def test_health_is_503_while_no_app_head_answers(head_with_app: WebHead) -> None:
    response = await health(head_with_app)
    assert response.status_code == 503
    assert response.json() == {"broker": True, "store": True, "app_heads": {"answering": 0, "expected": 2}}


async def test_health_is_200_while_an_app_head_answers(head_with_app: WebHead) -> None:
    assert head_with_app.state_dir is not None
    server = await asyncio.start_unix_server(answer_http, path=str(app_socket(head_with_app.state_dir, 1)))
    async with server:
        response = await health(head_with_app)
    assert response.status_code == 200
    assert response.json()["app_heads"] == {"answering": 1, "expected": 2}


def test_a_wsgi_head_runs_as_many_threads_as_the_spec_says() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return []

    server = app_head.GunicornServer(app, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), threads=24)
    os.close(int(server.cfg.bind[0].removeprefix("fd://")))  # the server adopted the socket; it never runs here
    assert server.cfg.threads == 24 and server.cfg.worker_class_str == "gthread"
