"""The front door's hardening, tried against running instances: Host names, per-address limits, the static
site's headers and refusals, unprivileged nginx workers and values that cannot be rendered into a config."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from supervisor.options import ServerOptions, UnhosedConfigParser

from kvern.errors import SpecError, StartError
from kvern.runtime import nginx
from kvern.runtime.instance import Instance, owned_pids
from kvern.runtime.supervisor import ProgramConfig, render_supervisord_conf
from kvern.spec import Spec, Tiers, load_spec, parse_spec
from tests.integration.conftest import SYSTEM_BROKER, Running, write_project

pytestmark = pytest.mark.integration
DOTFILES = (".env", ".git/config", "sub/.htpasswd")


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
def web_tier(folder: Path, web: str = "", only: str = "web", state: Path | None = None) -> Iterator[Running]:
    """The web tier of an instance on the machine's broker (a queue of its own, deleted afterwards)."""
    queue = f"frontdoor_{uuid.uuid4().hex[:12]}"
    spec = write_project(folder, front_spec(queue, web))
    instance = Instance(load_spec(spec), state or (folder / ".kvern").resolve())
    try:
        yield Running(instance, instance.up(Tiers.parse(only)))
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
    folder = tmp_path_factory.mktemp("front") / "project"
    for secret in DOTFILES:  # what a static folder kept in git or beside a .env may hold
        (folder / "static" / secret).parent.mkdir(parents=True, exist_ok=True)
        (folder / "static" / secret).write_text("SECRET=1\n")
    with web_tier(folder, 'server_name = ["app.example"]') as running:
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


# -- limits per client address (OWASP API4) ------------------------------------------------------------------


def assert_too_many(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "too_many_requests"


def test_requests_over_the_rate_get_429_with_retry_after(tmp_path: Path) -> None:
    with web_tier(tmp_path / "project", "rate = 2\nburst = 5") as running, running.client() as client:
        statuses = [client.get("/api/health").status_code for _ in range(20)]
        assert statuses.count(200) <= 8 and statuses[:3] == [200, 200, 200], statuses
        assert_too_many(client.get("/api/v1/jobs"))
        assert client.get("/").status_code == 200  # the static site is not rate limited


def test_connections_over_the_limit_get_429(tmp_path: Path) -> None:
    with web_tier(tmp_path / "project", "connections = 2") as running:
        port = running.config.front_door_port
        held = []
        try:
            for _ in range(2):  # a POST whose body never comes keeps its request in progress
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
                held.append(sock)
            time.sleep(0.3)
            with running.client() as client:
                assert_too_many(client.get("/"))
            for sock in held:
                sock.close()
            time.sleep(0.3)
            with running.client() as client:
                assert client.get("/").status_code == 200
        finally:
            for sock in held:
                sock.close()


def test_limits_have_safe_defaults_and_bounds() -> None:
    web = parse_web("").web
    assert (web.rate, web.burst, web.connections) == (200, 400, 256)
    assert (web.key_rate, web.key_burst, web.app_max_body_mb, web.app_threads) == (200, 400, 10, 8)
    assert parse_web("rate = 0\nconnections = 0").web.rate == 0
    fields = ("rate = -1", "burst = -5", "connections = 2000000", "key_rate = -1", "app_max_body_mb = 0")
    for field in (*fields, "app_max_body_mb = 5000", "app_threads = 0", "app_threads = 1000"):
        with pytest.raises(SpecError, match=rf"web\.{field.split()[0]}"):
            parse_web(field)


# -- the static site -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/index.html", "/app.js", "/style.css", "/missing.html"])
def test_the_static_site_sends_security_headers(front: Running, path: str) -> None:
    with front.client() as client:
        headers = client.get(path).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    policy = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self';" in policy and "unsafe" not in policy


@pytest.mark.parametrize("path", [f"/{name}" for name in DOTFILES] + ["/.git/", "/sub/.htpasswd?x=1"])
def test_dotfiles_are_not_served(front: Running, path: str) -> None:
    with front.client() as client:
        response = client.get(path)
    assert response.status_code == 404 and "SECRET" not in response.text


def test_dotfiles_are_not_copied_where_nginx_workers_read(front: Running) -> None:
    # as root, the static folder is served from a copy the unprivileged workers may read: no secrets in it
    served = nginx.front_dir(front.instance.state_dir)
    copied = [str(path.relative_to(served)) for path in served.rglob("*") if path.name.startswith(".")]
    assert copied == []
    assert (front.instance.spec.static_dir or Path()).joinpath(".env").exists()  # the project keeps its own


def project_with_static(folder: Path, static: str) -> Path:
    return write_project(folder, f'[app]\ntasks = "tasks"\nstatic = "{static}"\n[[pools]]\nname = "reports"\n')


@pytest.mark.parametrize("static", [".", "..", "/", "static/.."])
def test_a_static_folder_holding_the_spec_folder_is_refused(tmp_path: Path, static: str) -> None:
    with pytest.raises(SpecError, match=r"app\.static: .*(contains the spec folder|root of the file system)"):
        load_spec(project_with_static(tmp_path, static))
    assert load_spec(project_with_static(tmp_path / "ok", "static")).static_dir == tmp_path / "ok" / "static"


def test_a_static_folder_holding_the_state_dir_is_refused(tmp_path: Path) -> None:
    spec = load_spec(project_with_static(tmp_path, "static"))
    state = tmp_path / "static" / "state"  # kvern up --state static/state
    with pytest.raises(SpecError, match=r"app\.static: .* contains the state dir"):
        Instance(spec, state).up(Tiers.parse("web"))
    assert not (state / "nginx" / "nginx.conf").exists()


# -- values rendered into config files -----------------------------------------------------------------------

# Folders whose joined path closes the static location and the server, then opens a server of its own that
# lists the whole file system: `root /T/x; } } server { listen ...; root /; autoindex on; location /z { root /T/y;`
INJECTED_SERVER = ("x; } } server { listen 127.0.0.1:1; root ", "; autoindex on; location ", "z { root ", "y")


def test_a_static_path_that_would_open_an_nginx_server_is_refused(tmp_path: Path) -> None:
    static = "/".join(INJECTED_SERVER)
    (tmp_path / static).mkdir(parents=True)
    spec = project_with_static(tmp_path, static.replace("'", ""))
    with pytest.raises(SpecError, match=r"app\.static: .* contains ';'"):
        load_spec(spec)


def test_a_state_dir_that_would_add_a_supervisor_program_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    state = tmp_path / f"state\n[program:injected]\ncommand=/usr/bin/touch {marker}\nautostart=true\n[x]"
    with (
        pytest.raises(StartError, match=r"state dir: .* contains '\\n'"),
        web_tier(tmp_path / "project", only="reports", state=state),
    ):
        time.sleep(1)
    assert not marker.exists()
    assert not state.exists()


def test_a_project_path_with_spaces_is_served(tmp_path: Path) -> None:
    with web_tier(tmp_path / "a b") as running, running.client() as client:  # short: sockets are in it
        assert client.get("/").status_code == 200
        assert client.get("/api/v1/jobs").status_code == 200


def test_supervisord_reads_back_every_value_as_written(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    word = 'it\'s "quoted" \\ 50% , done'
    value = "x'y\\z%w,v=1 's done"
    program = ProgramConfig("p-0", ["/bin/echo", word], directory=tmp_path, environment={"A": value})
    parser = UnhosedConfigParser()
    parser.read_string(render_supervisord_conf(tmp_path, "kvern-x", [program]))
    options = ServerOptions()
    options.here = str(tmp_path)
    (read,) = options.processes_from_section(parser, "program:p-0", "p")
    assert read.environment == {"A": value}
    assert shlex.split(read.command)[-1] == word


@pytest.mark.parametrize(
    ("environment", "command"),
    [
        ({"A": "x\n[program:b]"}, ["/bin/true"]),
        ({}, ["/bin/echo", "a\rb"]),
        ({"A\nB": "1"}, ["/bin/true"]),
        ({"A": 'x" B="y'}, ["/bin/true"]),
    ],
)
def test_supervisord_values_with_line_breaks_are_refused(
    tmp_path: Path, environment: dict[str, str], command: list[str]
) -> None:
    program = ProgramConfig("p-0", command, environment=environment)
    with pytest.raises(StartError, match=r"cannot be written into supervisord\.conf"):
        render_supervisord_conf(tmp_path, "kvern-x", [program])


def test_nginx_paths_are_quoted_and_checked_even_without_the_spec(tmp_path: Path) -> None:
    text = nginx.render_config(tmp_path / "state dir", 8080, tmp_path / "my static")
    assert f'root "{tmp_path}/my static";' in text and f'pid "{tmp_path}/state dir/nginx/nginx.pid";' in text
    with pytest.raises(StartError, match=r"app\.static: .* contains ';'"):
        nginx.render_config(tmp_path, 8080, tmp_path / "x; root /")


# -- unprivileged nginx workers ------------------------------------------------------------------------------


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def nginx_workers(running: Running) -> list[int]:
    master = running.instance.supervisor.process("nginx").pid
    assert master is not None
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root master can switch its workers' user")
def test_nginx_workers_do_not_run_as_root_and_still_serve(front: Running) -> None:
    workers = nginx_workers(front)
    assert len(workers) == nginx.NGINX_WORKER_PROCESSES
    assert all(uid_of(pid) != 0 for pid in workers), {pid: uid_of(pid) for pid in workers}
    with front.client() as client:
        assert client.get("/").status_code == 200  # the static folder sits under a folder only root may enter
        big = {"task": "tasks.generate_heavy_report", "args": [1], "kwargs": {"note": "x" * 200_000}}
        # a body over nginx's buffer goes through its temp files (the workers must write them): the app answers
        assert client.post("/api/v1/jobs", json=big).status_code == 422
        assert client.post("/api/v1/jobs", json={"task": "tasks.generate_heavy_report", "args": [1]}).status_code == 202
