"""Web hosts without the front door: their heads on TCP, the front door's upstreams of them, the peer check, and
`kvern reload` of `[hosts]` alone."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvern.constants import MAX_WEB_HEADS, RUNTIME_HOST_KEY, WEB_GROUP
from kvern.errors import ReloadRefused, SpecError, StartError
from kvern.runtime import web_head
from kvern.runtime.head_endpoints import (
    HEADS_ADDRESS_KEY,
    Endpoint,
    HeadEndpoints,
    RemoteHead,
    heads_address,
    parse_argument,
    remote_heads,
)
from kvern.runtime.head_peers import AsgiPeers, WsgiPeers, allowed_peers
from kvern.runtime.hosts import HostInstance, host_of
from kvern.runtime.instance import ROLES, Instance
from kvern.runtime.nginx import web_socket
from kvern.runtime.programs import build_programs
from kvern.runtime.reload import Reload
from kvern.runtime.reload_plan import plan_reload
from kvern.runtime.shared_secrets import SharedSecrets
from kvern.runtime.upstreams import app_socket, remote_api_heads, render_upstream, upstream_path, write_upstream
from kvern.runtime.web_heads import LiveHeads, publish_live, remote_heads_listening
from kvern.runtime_config import RuntimeConfig
from kvern.spec import Spec, load_spec
from tests.unit.test_spec_snapshot import started

BASE = """
[app]
tasks = "tasks"

[web]
app = "site:app"

[store]
url = "postgresql://postgres@127.0.0.1:5432/test"

[[pools]]
name = "main"

[hosts.front]
address = "10.0.0.5"
roles = ["front", "web", "workers", "controller"]
weight = 2

[hosts.b1]
address = "10.0.1.1"
roles = ["broker"]
"""
WEB_HOST = """
[hosts.h2]
address = "10.0.0.11"
roles = ["web"]
weight = 3
"""


def _spec(tmp_path: Path, text: str) -> Spec:
    path = tmp_path / "kvern.toml"
    path.write_text(text, encoding="utf-8")
    return load_spec(path)


def test_a_web_host_weight_defaults_to_one_and_is_read_per_host(tmp_path: Path) -> None:
    spec = _spec(tmp_path, BASE + WEB_HOST)
    assert host_of(spec, "front").weight == 2
    assert host_of(spec, "h2").weight == 3
    assert host_of(spec, "b1").weight == 1
    assert spec.web.head_port == 8100


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("weight = 3", "weight = 0"), "hosts.h2.weight: must be a whole number between 1 and 100 (got 0)"),
        (("weight = 3", "weight = 101"), "hosts.h2.weight: must be a whole number between 1 and 100"),
        (("weight = 3", 'weight = "3"'), "hosts.h2.weight: expected int"),
        (("weight = 3", "weight = 1.5"), "hosts.h2.weight: expected int"),
        (('roles = ["broker"]', 'roles = ["broker"]\nweight = 2'), "hosts.b1.weight: only a host with the web role"),
        (('app = "site:app"', 'app = "site:app"\nhead_port = 80'), "web.head_port: must be between 1024"),
        (('app = "site:app"', 'app = "site:app"\nhead_port = 65530'), "web.head_port: must be between 1024"),
    ],
)
def test_bad_weights_and_head_ports_are_refused_naming_the_field(
    tmp_path: Path, change: tuple[str, str], fragment: str
) -> None:
    with pytest.raises(SpecError) as info:
        _spec(tmp_path, (BASE + WEB_HOST).replace(*change))
    assert fragment in str(info.value)


def test_only_a_web_host_without_the_front_door_listens_on_tcp_at_its_own_address(tmp_path: Path) -> None:
    spec = _spec(tmp_path, BASE + WEB_HOST)
    assert heads_address(host_of(spec, "h2"), spec.web) == "10.0.0.11:8100"
    assert heads_address(host_of(spec, "front"), spec.web) is None
    heads = HeadEndpoints(tmp_path, "10.0.0.11", 8100)
    # Ports count within a color: slot MAX_WEB_HEADS + 1 (the second color's second head) is head 1.
    assert heads.api(1) == heads.api(MAX_WEB_HEADS + 1) == Endpoint(address="10.0.0.11", port=8101)
    assert heads.app(0) == Endpoint(address="10.0.0.11", port=8100 + MAX_WEB_HEADS)
    assert parse_argument(heads.api(1).argument()) == heads.api(1)
    local = HeadEndpoints(tmp_path)
    assert parse_argument(local.api(3).argument()) == Endpoint(unix=web_socket(tmp_path, 3))


def test_the_front_door_lists_local_heads_on_sockets_and_web_hosts_over_tcp_with_their_weights(
    tmp_path: Path,
) -> None:
    spec = _spec(
        tmp_path, BASE + WEB_HOST.replace("[web]", "") + '\n[hosts.h3]\naddress = "10.0.0.12"\nroles = ["web"]\n'
    )
    remote = list(remote_heads(replace(spec, web=replace(spec.web, heads=2))))
    assert [(h.api.upstream(), h.weight) for h in remote] == [
        ("10.0.0.11:8100", 3),
        ("10.0.0.11:8101", 3),
        ("10.0.0.12:8100", 1),
        ("10.0.0.12:8101", 1),
    ]
    text = render_upstream(tmp_path, [0], app=True, remote=remote, weight=2)
    api, app = text.split("upstream kvern_app_heads")
    assert api.startswith("upstream kvern_web_heads {\n    least_conn;\n")
    assert f'    server "unix:{web_socket(tmp_path, 0)}" weight=2 max_fails=3 fail_timeout=10s;\n' in api
    assert '    server "10.0.0.11:8101" weight=3 max_fails=3 fail_timeout=10s;\n' in api
    assert '    server "10.0.0.12:8100" weight=1 max_fails=3 fail_timeout=10s;\n' in api
    assert f'    server "unix:{app_socket(tmp_path, 0)}" weight=2 max_fails=3 fail_timeout=10s;\n' in app
    assert f'    server "10.0.0.11:{8100 + MAX_WEB_HEADS + 1}" weight=3 max_fails=3 fail_timeout=10s;\n' in app
    assert "10.0.0.5" not in text  # the front host's own heads are its sockets


def test_the_upstreams_follow_the_running_spec_and_this_hosts_weight(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "kvern.toml").write_text(BASE + WEB_HOST)
    config = started(project / "kvern.toml", tmp_path / "state", "web")
    replace(config, extra={RUNTIME_HOST_KEY: "front"}).save()
    publish_live(config.state_path, LiveHeads(color=1, count=1, app=True))
    text = upstream_path(config.state_path).read_text()
    assert f'"unix:{web_socket(config.state_path, MAX_WEB_HEADS)}" weight=2 ' in text
    assert '"10.0.0.11:8100" weight=3 ' in text
    # A reload hands the edited spec: the web host is gone from the upstreams.
    write_upstream(config.state_path, [MAX_WEB_HEADS], True, load_spec(_write(project, BASE)))
    assert "10.0.0.11" not in upstream_path(config.state_path).read_text()


def _write(project: Path, text: str) -> Path:
    path = project / "edited.toml"
    path.write_text(text)
    return path


def test_a_web_host_runs_its_heads_on_tcp_and_no_front_door(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "kvern.toml").write_text(BASE + WEB_HOST)
    config = started(project / "kvern.toml", tmp_path / "state", "web")
    config = replace(config, extra={RUNTIME_HOST_KEY: "h2", HEADS_ADDRESS_KEY: "10.0.0.11:8100"})
    programs = build_programs(load_spec(project / "kvern.toml"), config, None)
    webs = [p for p in programs if p.group == WEB_GROUP]
    assert webs[1].command[-1] == "tcp:10.0.0.11:8101"
    assert "nginx" not in [p.name for p in programs]
    # No upstream file on the web host: the front host's nginx names its heads from the spec.
    config.save()
    publish_live(config.state_path, LiveHeads(color=0, count=1, app=True))
    assert not upstream_path(config.state_path).exists()
    assert json.loads((config.state_path / "web_heads.json").read_text())["count"] == 1


def test_a_web_host_is_started_and_a_front_door_without_web_heads_is_refused(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    SharedSecrets.generate(ROLES).save(secrets)
    spec = _spec(tmp_path, BASE + WEB_HOST)
    assert HostInstance.load(Instance(spec, tmp_path / "state"), "h2", secrets).host.name == "h2"
    front_only = _spec(
        tmp_path,
        (BASE + WEB_HOST).replace(
            '"front", "web", "workers", "controller"]\nweight = 2', '"front", "workers", "controller"]'
        ),
    )
    with pytest.raises(StartError, match="a front host runs web heads too"):
        HostInstance.load(Instance(front_only, tmp_path / "state"), "front", secrets)


def test_a_web_host_added_or_reweighted_is_a_live_upstreams_change_and_a_broker_host_is_not(tmp_path: Path) -> None:
    running = _spec(tmp_path, BASE)
    added = plan_reload(running, _spec(tmp_path, BASE + WEB_HOST))
    assert [str(c) for c in added.changes] == ["hosts.h2: none -> 10.0.0.11 web weight 3"]
    assert added.upstreams_only and not added.refused
    reweighted = plan_reload(running, _spec(tmp_path, BASE.replace("weight = 2", "weight = 5")))
    assert reweighted.upstreams_only
    with_web_change = plan_reload(running, _spec(tmp_path, (BASE + WEB_HOST).replace("[web]", "[web]\nheads = 3")))
    assert not with_web_change.upstreams_only
    moved = plan_reload(running, _spec(tmp_path, BASE.replace("10.0.1.1", "10.0.1.9")))
    assert moved.refused and "hosts.b1 changed" in str(moved.refusals[0])


def test_a_web_host_refuses_a_reload_other_than_hosts(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "kvern.toml").write_text(BASE + WEB_HOST)
    config = replace(
        started(project / "kvern.toml", tmp_path / "state", "web"),
        extra={RUNTIME_HOST_KEY: "h2", HEADS_ADDRESS_KEY: "10.0.0.11:8100"},
    )
    running = config.spec()
    (project / "kvern.toml").write_text((BASE + WEB_HOST).replace("[web]", "[web]\nheads = 3"))
    edited = load_spec(project / "kvern.toml")
    with pytest.raises(ReloadRefused) as info:
        Reload(config.state_path, edited).check(config, running)
    assert "kvern up --host" in info.value.lines[0]


def _peers_answer(app: Any, client: str) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://head") as http:
            return await http.get("/api/openapi.json")

    return asyncio.run(call())


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_head_on_tcp_answers_the_front_hosts_and_itself_only(tmp_path: Path) -> None:
    spec = _spec(tmp_path, BASE + WEB_HOST)
    allowed = allowed_peers(spec, "10.0.0.11")
    assert allowed == {"10.0.0.5", "10.0.0.11"}
    app = AsgiPeers(_ok, allowed)
    assert _peers_answer(app, "10.0.0.5").text == "ok"
    assert _peers_answer(app, "10.0.0.11").status_code == 200
    refused = _peers_answer(app, "10.0.1.1")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    started_with: list[str] = []
    wsgi_peers = WsgiPeers(wsgi, allowed)
    assert wsgi_peers({"REMOTE_ADDR": "10.0.0.5"}, lambda status, headers: started_with.append(status)) == [b"ok"]
    assert wsgi_peers({"REMOTE_ADDR": "10.0.0.99"}, lambda status, headers: started_with.append(status)) != [b"ok"]
    assert started_with == ["200 OK", "403 Forbidden"]


def test_runtime_config_without_a_heads_address_keeps_sockets(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "kvern.toml").write_text(BASE)
    config = started(project / "kvern.toml", tmp_path / "state", "web")
    heads = HeadEndpoints.of(config)
    assert heads.front_door and heads.api(0) == Endpoint(unix=web_socket(config.state_path, 0))
    assert HeadEndpoints.of(RuntimeConfig.load(config.state_path)) == heads
    assert HeadEndpoints.of_state_dir(tmp_path / "never-started").front_door


def test_health_counts_the_web_hosts_heads_that_accept_a_connection(tmp_path: Path) -> None:
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a connection is refused, as by a dead host
        up, down = (Endpoint(address="127.0.0.1", port=s.getsockname()[1]) for s in (listening, closed))
        remote = [RemoteHead(up, down, 1), RemoteHead(down, up, 1)]
        upstream_path(tmp_path).parent.mkdir(parents=True)
        upstream_path(tmp_path).write_text(render_upstream(tmp_path, [0], app=True, remote=remote))
        assert remote_api_heads(tmp_path) == [up, down]  # the app upstream's servers are not the API's
        assert asyncio.run(remote_heads_listening(tmp_path)) == (1, 2)
    assert asyncio.run(remote_heads_listening(tmp_path / "no-front-door")) == (0, 0)


def test_a_job_api_head_keeps_idle_connections_longer_than_nginx_does() -> None:
    # nginx reuses an idle upstream connection for up to keepalive_timeout (60 s, its default, which
    # upstream.conf keeps): a head closing it first could meet a POST nginx may not send again.
    nginx_upstream_keepalive_s = 60
    assert "keepalive_timeout" not in render_upstream(Path("/tmp/kvern-state"), [0], app=False)
    assert web_head.server_config("kvern.api.asgi:app").timeout_keep_alive > nginx_upstream_keepalive_s
