"""The front door in front of the team's app: kvern's nginx config with `[web] app`, run by the real nginx,
before a small HTTP app on a unix socket where the app heads will listen (kvern_app_heads). Static files
first, then the app; the app's own errors reach the browser as they are; no head: a plain 503."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kvern.runtime import nginx, upstreams
from kvern.runtime.instance import free_port
from kvern.spec import WebSpec

pytestmark = pytest.mark.integration


class AppHandler(http.server.BaseHTTPRequestHandler):
    """The team's app: echoes what nginx tells it, and answers some paths with its own errors."""

    def do_GET(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.switch_protocols()
            return
        statuses = {"/missing": 404, "/boom": 500, "/busy": 503}
        status = statuses.get(self.path.split("?")[0], 200)
        body = f"app {self.path} proto={self.headers['X-Forwarded-Proto']} host={self.headers['Host']}"
        self.answer(status, body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer(201, f"posted {self.path}")

    def answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        if status == 503:
            self.send_header("Retry-After", "30")
        self.end_headers()
        self.wfile.write(data)

    def switch_protocols(self) -> None:
        """Enough of a WebSocket server to see nginx pass the upgrade and then the bytes both ways."""
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        self.wfile.write(b"echo " + self.rfile.readline())
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


class AppServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        request, _ = super().get_request()
        return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port) client address


@dataclass
class Front:
    url: str
    app: AppServer
    socket: Path


def start_app(path: Path) -> AppServer:
    path.unlink(missing_ok=True)
    server = AppServer(str(path), AppHandler)
    path.chmod(0o660)  # as the heads' sockets: nginx's workers connect through the folder's group
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def app_upstream(path: Path) -> str:
    # The app heads' upstream as the test needs it: two entries of one socket (a retry has somewhere to go, as
    # with several heads), never marked down.
    servers = "".join(f'    server "unix:{path}" max_fails=0;\n' for _ in range(2))
    return f"upstream kvern_app_heads {{\n{servers}}}\n"


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Front]:
    state = tmp_path / "state"
    state.mkdir()
    static = tmp_path / "project" / "static"
    (static / "css").mkdir(parents=True)
    (static / "css" / "site.css").write_text("body {}")
    (static / ".env").write_text("SECRET=1")
    port = free_port()
    app_socket = upstreams.app_socket(state, 0)
    upstreams.write_upstream(state, range(1), app=False)  # the API heads' upstream, as `up` writes it
    with upstreams.upstream_path(state).open("a") as upstream:
        upstream.write(app_upstream(app_socket))
    config = nginx.write_config(state, port, static, WebSpec(app="mysite.wsgi:application", app_max_body_mb=3))
    app = start_app(app_socket)
    process = subprocess.Popen(nginx.nginx_command(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{url}/css/site.css", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield Front(url, app, app_socket)
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        app.shutdown()
        app.server_close()
        nginx.remove_front_dir(state)


def test_static_files_first_then_the_app(front: Front) -> None:
    with httpx.Client(base_url=front.url, timeout=10) as client:
        css = client.get("/css/site.css")
        assert css.text == "body {}" and css.headers["x-content-type-options"] == "nosniff"
        assert "content-security-policy" not in css.headers  # the app sets its own CSP
        page = client.get("/reports/42?x=1")
        assert page.status_code == 200
        assert page.text == f"app /reports/42?x=1 proto=http host=127.0.0.1:{front.url.rsplit(':', 1)[1]}"
        assert client.get("/").text.startswith("app / ")  # no index.html in the static folder: the app's home
        assert client.get("/.env").text.startswith("app /.env ")  # dotfiles are never read from the static folder
        assert client.get("/.well-known/security.txt").text.startswith("app /.well-known/")


def test_the_apps_own_errors_are_passed_through(front: Front) -> None:
    with httpx.Client(base_url=front.url, timeout=10) as client:
        missing = client.get("/missing")
        assert missing.status_code == 404 and missing.text.startswith("app /missing")  # not kvern's JSON 404
        boom = client.get("/boom")
        assert boom.status_code == 500 and boom.text.startswith("app /boom")
        busy = client.get("/busy")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "30" and busy.text.startswith("app /busy")
        posted = client.post("/orders", content=b"x")
        assert posted.status_code == 201 and posted.text == "posted /orders"


def test_the_app_takes_bodies_up_to_its_own_limit_and_the_job_api_keeps_1_mib(front: Front) -> None:
    upload = b"x" * (2 * 1024 * 1024)
    with httpx.Client(base_url=front.url, timeout=10) as client:
        assert client.post("/upload", content=upload).text == "posted /upload"
        too_big = client.post("/upload", content=upload * 2)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
        api = client.post("/api/v1/jobs", content=upload, headers={"Content-Type": "application/json"})
        assert api.status_code == 413


def test_websockets_pass_through_to_the_app(front: Front) -> None:
    port = int(front.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".encode()
        )
        with conn.makefile("rb") as reader:
            assert reader.readline().startswith(b"HTTP/1.1 101")
            while reader.readline() not in (b"\r\n", b""):
                pass
            conn.sendall(b"ping\n")
            assert reader.readline() == b"echo ping\n"


def test_the_job_api_is_still_the_heads(front: Front) -> None:
    with httpx.Client(base_url=front.url, timeout=10) as client:
        answer = client.get("/api/health")  # no API head runs in this test: the API's own JSON 503
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "unavailable"


def test_no_app_head_answering_is_a_plain_503_with_retry_after(front: Front) -> None:
    front.app.shutdown()
    front.app.server_close()
    front.socket.unlink()
    with httpx.Client(base_url=front.url, timeout=10) as client:
        page = client.get("/reports/42")
        assert page.status_code == 503 and page.headers["retry-after"] == "2"
        assert page.headers["content-type"].startswith("text/plain") and "try again" in page.text
        # a head that comes back serves again
        restarted = start_app(front.socket)
        try:
            assert client.get("/reports/42").status_code == 200
        finally:
            restarted.shutdown()
            restarted.server_close()
