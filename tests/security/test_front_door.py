"""The front door's hardening, tried against running instances: Host names, per-address limits, the static
site's headers and refusals, unprivileged nginx workers and values that cannot be rendered into a config."""

from __future__ import annotations

import contextlib
import os
import signal
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from kvern.errors import SpecError
from kvern.runtime.instance import Instance, owned_pids
from kvern.spec import Spec, Tiers, load_spec, parse_spec
from tests.integration.conftest import SYSTEM_BROKER, Running, write_project

pytestmark = pytest.mark.integration


def front_spec(queue: str, web: str = "") -> str:
    return f"""
[app]
tasks = "tasks"
static = "static"

[web]
heads = 1
{web}

[broker]
url = "{SYSTEM_BROKER}"

[[pools]]
name = "reports"
queues = ["{queue}"]
min = 0
max = 1

[tasks."tasks.generate_heavy_report"]
queue = "{queue}"
"""


@contextlib.contextmanager
def web_tier(folder: Path, web: str = "") -> Iterator[Running]:
    """The web tier of an instance on the machine's broker (a queue of its own, deleted afterwards)."""
    queue = f"frontdoor_{uuid.uuid4().hex[:12]}"
    spec = write_project(folder, front_spec(queue, web))
    instance = Instance(load_spec(spec), (folder / ".kvern").resolve())
    try:
        yield Running(instance, instance.up(Tiers.parse("web")))
    finally:
        instance.down()
        leftover = owned_pids(instance.state_dir)
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with Connection(SYSTEM_BROKER, connect_timeout=5) as conn:
            channel = conn.channel()
            Queue(queue).bind(channel).delete()
            Exchange(queue).bind(channel).delete()
        assert not leftover, f"processes left behind after kvern down: {leftover}"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with web_tier(tmp_path_factory.mktemp("front") / "project", 'server_name = ["app.example"]') as running:
        yield running


# -- Host names (DNS rebinding) -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "attacker.test:80", "app.example.evil.test"])
def test_an_unknown_host_gets_no_app_response(front: Running, host: str) -> None:
    with front.client() as client:
        for path in ("/api/v1/jobs", "/api/health", "/"):
            response = client.get(path, headers={"Host": host})
            assert response.status_code == 421, (path, response.text)
            assert response.json()["error"]["code"] == "unknown_host"


@pytest.mark.parametrize("host", ["app.example", "localhost", "127.0.0.1", "LOCALHOST:1234"])
def test_configured_and_loopback_hosts_are_answered(front: Running, host: str) -> None:
    with front.client() as client:
        assert client.get("/api/v1/jobs", headers={"Host": host}).status_code == 200
        assert client.get("/", headers={"Host": host}).status_code == 200


def parse_web(web: str) -> Spec:
    raw = tomllib.loads(f'[app]\ntasks = "tasks"\n[web]\n{web}\n[[pools]]\nname = "p"\n')
    return parse_spec(raw, Path("/nonexistent/kvern.toml"))


def test_server_name_defaults_to_none_and_takes_host_names() -> None:
    assert parse_web("").web.server_name == ()
    assert parse_web('server_name = ["example.com", "*.example.org", "10.0.0.1"]').web.server_name == (
        "example.com",
        "*.example.org",
        "10.0.0.1",
    )


@pytest.mark.parametrize("name", ["~^evil", "a b", "x;", "_", "", "Example.com", "a.example/x", 3])
def test_server_name_refuses_what_is_not_a_host_name(name: object) -> None:
    value = f'"{name}"' if isinstance(name, str) else str(name)
    with pytest.raises(SpecError, match=r"web\.server_name"):
        parse_web(f"server_name = [{value}]")
