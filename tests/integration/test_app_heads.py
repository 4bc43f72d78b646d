"""The team's own app on the web heads, through nginx: a WSGI and an ASGI app, health, and blue/green replacement.

The instances use the system RabbitMQ (no private node to boot) and run no worker: the app is what is tested.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from kvern.constants import APP_GROUP, RET_SPEC, WEB_GROUP
from kvern.processes import app_slot
from kvern.runtime.instance import Instance, owned_pids
from kvern.runtime.web_heads import load_live, replace_heads, stop_programs
from kvern.spec import load_spec
from tests.integration.conftest import SYSTEM_BROKER, Running

WSGI_APP = """
    import json
    from pathlib import Path

    VERSION = Path("version.txt").read_text().strip()  # read once, at import: new code means a new process


    def application(environ, start_response):
        if environ["PATH_INFO"] == "/report":  # a view that hands the heavy part to a task
            from site_tasks import ping

            job = ping.delay()
            start_response("303 See Other", [("Location", f"/api/v1/jobs/{job.id}"), ("Content-Length", "0")])
            return [b""]
        body = json.dumps({
            "version": VERSION,
            "path": environ["PATH_INFO"],
            "host": environ.get("HTTP_HOST"),
            "forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
"""

ASGI_APP = """
    import json


    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        body = json.dumps({"asgi": True, "host": headers.get("host"), "client": scope["client"][0]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
"""

TASKS = """
    from celery import Celery

    app = Celery("site")


    @app.task
    def ping():
        return "pong"
"""


def site_project(folder: Path, app_source: str, app: str, heads: int = 2) -> Path:
    """A project with a tasks module, the app, a static file, and a spec on the system broker."""
    folder.mkdir(parents=True)
    (folder / "site_tasks.py").write_text(textwrap.dedent(TASKS))
    (folder / "site_app.py").write_text(textwrap.dedent(app_source))
    (folder / "version.txt").write_text("A\n")
    (folder / "static").mkdir()
    (folder / "static" / "style.css").write_text("body { color: teal; }\n")
    queue = f"apph-{uuid.uuid4().hex[:8]}"  # the system broker is shared: a queue of this test's own
    spec = folder / "kvern.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [app]
            tasks = "site_tasks"
            static = "static"

            [web]
            heads = {heads}
            app = "{app}"

            [broker]
            url = "{SYSTEM_BROKER}"

            [[pools]]
            name = "{queue}"
            min = 0
            max = 1
            """
        )
    )
    return spec


@contextlib.contextmanager
def running(spec: Path) -> Iterator[Running]:
    instance = Instance(load_spec(spec), spec.parent / ".kvern")
    config = instance.up()
    try:
        yield Running(instance, config)
    finally:
        instance.down()
        leftover = owned_pids(instance.state_dir)
        assert not leftover, f"kvern down left processes behind: {leftover}"


@pytest.fixture(scope="module")
def wsgi_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    spec = site_project(tmp_path_factory.mktemp("wsgi") / "site", WSGI_APP, "site_app:application")
    with running(spec) as run:
        yield run


def test_static_files_come_first_then_the_app_which_sees_the_client(wsgi_site: Running) -> None:
    with wsgi_site.client() as client:
        static = client.get("/style.css")
        page = client.get("/orders/42", headers={"X-Forwarded-For": "203.0.113.9"})
        jobs = client.get("/api/v1/jobs")
        health = client.get("/api/health")
    assert static.status_code == 200 and "teal" in static.text
    assert page.status_code == 200, page.text
    seen = page.json()
    assert seen["version"] == "A" and seen["path"] == "/orders/42"
    assert seen["host"] == f"127.0.0.1:{wsgi_site.config.front_door_port}"
    assert seen["forwarded_for"] == "203.0.113.9, 127.0.0.1"  # the client's chain, and the address nginx saw
    assert jobs.status_code == 200 and jobs.json()["jobs"] == []  # the job API is still at /api/
    assert health.status_code == 200
    assert health.json()["app_heads"] == {"answering": 2, "expected": 2}


def test_a_view_s_delay_is_a_kvern_job(wsgi_site: Running) -> None:
    with wsgi_site.client() as client:
        answer = client.post("/report")
        assert answer.status_code == 303, answer.text
        job = client.get(answer.headers["location"])
    assert job.status_code == 200 and job.json()["task"] == "site_tasks.ping"


class Browsing:
    """Threads GETting an app page through nginx until stopped; what every answer was, in order per thread."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url, self.stop = url, threading.Event()
        self.answers: list[list[str]] = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self._browse, args=(seen,)) for seen in self.answers]

    def _browse(self, seen: list[str]) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    try:
                        response = client.get("/page")
                    except (httpx.ReadError, httpx.RemoteProtocolError):
                        # nginx's reload closed this kept-alive connection as the request went out: a client
                        # (a browser too) sends it again on a new one
                        response = client.get("/page")
                    seen.append(
                        response.json()["version"] if response.status_code == 200 else str(response.status_code)
                    )
                except (httpx.HTTPError, ValueError) as exc:
                    seen.append(type(exc).__name__)

    def __enter__(self) -> Browsing:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def since(self, counts: list[int]) -> Counter[str]:
        return Counter(answer for seen, start in zip(self.answers, counts, strict=True) for answer in seen[start:])


def test_replacing_the_heads_under_load_fails_no_request_and_serves_the_new_code(wsgi_site: Running) -> None:
    state = wsgi_site.instance.state_dir
    supervisor = wsgi_site.instance.supervisor
    before = load_live(state)
    (wsgi_site.instance.spec.root / "version.txt").write_text("B\n")  # the new release
    with Browsing(wsgi_site.url) as load:
        time.sleep(1.0)
        # when the heads are replaced while pages are being served
        replace_heads(supervisor, state, 3)
        after = [len(seen) for seen in load.answers]
        time.sleep(1.0)
    # then no request failed, every answer once it returned is the new version, and each client saw A, then B
    answers = Counter(answer for seen in load.answers for answer in seen)
    assert set(answers) == {"A", "B"}, answers
    assert load.since(after) == Counter({"B": sum(load.since(after).values())}) and load.since(after)["B"] > 10
    for seen in load.answers:
        assert seen == sorted(seen), "a client saw the old version after the new one"
    live = load_live(state)
    assert live.color == before.idle_color and live.count == 3
    heads = (p for p in supervisor.processes() if p.group in (WEB_GROUP, APP_GROUP))
    serving = {p.full_name for p in heads if p.state == "RUNNING"}
    assert serving == set(live.programs())  # the old color's heads are stopped


def test_new_heads_that_fail_leave_the_old_ones_serving(wsgi_site: Running) -> None:
    state = wsgi_site.instance.state_dir
    before = load_live(state)
    app_file = wsgi_site.instance.spec.root / "site_app.py"
    good = app_file.read_text()
    app_file.write_text(good + "\nraise RuntimeError('a broken release')\n")
    try:
        with pytest.raises(Exception, match="did not become ready, the old ones keep serving"):
            replace_heads(wsgi_site.instance.supervisor, state, 2)
    finally:
        app_file.write_text(good)
    assert load_live(state) == before
    with wsgi_site.client() as client:
        assert client.get("/page").json()["version"] == "B"
    idle = {p.full_name for p in wsgi_site.instance.supervisor.processes() if p.state == "RUNNING"}
    assert not idle & {app_slot(slot) for slot in range(before.idle_color * 16, before.idle_color * 16 + 16)}


def test_health_is_503_while_no_app_head_answers(wsgi_site: Running) -> None:
    supervisor, live = wsgi_site.instance.supervisor, load_live(wsgi_site.instance.state_dir)
    app_heads = [app_slot(slot) for slot in live.slots]
    stop_programs(supervisor, app_heads)
    try:
        with wsgi_site.client() as client:
            health = client.get("/api/health")
            page = client.get("/page")
        assert health.status_code == 503
        assert health.json()["app_heads"] == {"answering": 0, "expected": live.count}
        assert page.status_code == 503  # nginx's own answer: no head to send it to
    finally:
        for name in app_heads:
            supervisor.start(name, wait=False)
    wait_for(lambda: httpx.get(f"{wsgi_site.url}/api/health", timeout=5).status_code == 200, "health back")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.1)


def test_an_asgi_app_is_served_by_its_heads(tmp_path: Path) -> None:
    spec = site_project(tmp_path / "site", ASGI_APP, "site_app:app", heads=1)
    with running(spec) as run, run.client() as client:
        page = client.get("/anything", headers={"X-Forwarded-For": "198.51.100.7"})
        health = client.get("/api/health")
    assert page.status_code == 200, page.text
    assert page.json() == {"asgi": True, "host": f"127.0.0.1:{run.config.front_door_port}", "client": "198.51.100.7"}
    assert health.status_code == 200 and health.json()["app_heads"] == {"answering": 1, "expected": 1}


def test_a_web_app_that_does_not_import_is_refused_by_up_in_one_line(tmp_path: Path) -> None:
    broken = textwrap.dedent(WSGI_APP) + "\nimport no_such_module_here\n"
    spec = site_project(tmp_path / "site", broken, "site_app:application")
    result = subprocess.run(
        [sys.executable, "-m", "kvern.cli", "-f", str(spec), "up", "-d"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == RET_SPEC, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "web.app: importing 'site_app:application' failed" in result.stderr
    assert "No module named 'no_such_module_here'" in result.stderr
    assert not (tmp_path / "site" / ".kvern").exists()


def test_status_shows_the_app_heads(wsgi_site: Running) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvern.cli", "-f", str(wsgi_site.instance.spec.path), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    heads = json.loads(result.stdout)["web_heads"]
    live = load_live(wsgi_site.instance.state_dir)
    assert heads["serving"] == live.count == heads["app_running"] == heads["api_running"]
    assert heads["app"] == "site_app:application"
