"""HTTPS at a real front door: a throwaway CA (trustme) signs a certificate for localhost and 127.0.0.1, kvern
serves it on web.tls.listen with the Mozilla intermediate settings, web.listen redirects to it, kvern's own
local door stays plain HTTP, and a new certificate is served after nginx's HUP without a failed request.
Then the job API under another prefix, through nginx."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509

from kvern.constants import PROGRAM_NGINX
from kvern.errors import StartError
from kvern.runtime.instance import Instance, free_port, owned_pids
from kvern.spec import Tiers, load_spec
from tests.integration.conftest import Running, write_project
from tests.security.test_front_door import front_spec, web_tier

pytestmark = pytest.mark.integration
HSTS = "max-age=63072000"
REQUESTS_EACH_SIDE = 5  # requests made before the HUP, and again once the new certificate is served


@dataclass
class Door:
    running: Running
    ca: trustme.CA
    cert: Path
    key: Path
    http_port: int
    https_port: int

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def context(self, minimum: ssl.TLSVersion | None = None, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if minimum is not None:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer old versions: the server must refuse
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
        return context

    def handshake(self, context: ssl.SSLContext, server_name: str = "localhost") -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=5)
        try:
            return context.wrap_socket(raw, server_hostname=server_name)
        except BaseException:
            raw.close()
            raise

    def serial(self) -> int:
        with self.handshake(self.context()) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)

    def issue(self) -> int:
        """A new certificate from the same CA into the same files (each replaced at once); its serial."""
        issued = self.ca.issue_cert("localhost", "127.0.0.1")
        for path, text in ((self.key, issued.private_key_pem.bytes()), (self.cert, chain(issued))):
            part = path.with_suffix(".part")
            part.write_bytes(text)
            os.replace(part, path)
        return int(x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number)


def chain(issued: trustme.LeafCert) -> bytes:
    return b"".join(blob.bytes() for blob in issued.cert_chain_pems)


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    folder = tmp_path_factory.mktemp("tls") / "project"
    folder.mkdir()
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    (folder / "cert.pem").write_bytes(chain(issued))
    issued.private_key_pem.write_to_path(str(folder / "key.pem"))
    http_port, https_port = free_port(), free_port()
    web = (
        f'listen = ["127.0.0.1:{http_port}"]\n'
        f'[web.tls]\ncert = "cert.pem"\nkey = "key.pem"\nlisten = ["127.0.0.1:{https_port}"]\n'
    )
    with web_tier(folder, web) as running:
        yield Door(running, ca, folder / "cert.pem", folder / "key.pem", http_port, https_port)


def test_https_answers_with_a_chain_the_ca_signed_and_hsts(door: Door) -> None:
    for host in ("127.0.0.1", "localhost"):
        with httpx.Client(verify=door.context(), timeout=10) as client:
            answer = client.get(f"https://{host}:{door.https_port}/api/health")
        assert answer.status_code == 200, answer.text
        assert answer.headers["strict-transport-security"] == HSTS
    with httpx.Client(verify=door.context(), timeout=10) as client:
        missing = client.get(
            f"{door.https}/api/v1/jobs/nope", headers=door.running.headers
        )  # the API's own error answers carry it too
        page = client.get(f"{door.https}/")
    assert missing.status_code == 404 and missing.headers["strict-transport-security"] == HSTS
    assert page.status_code == 200 and page.headers["strict-transport-security"] == HSTS


def test_tls_1_2_and_1_3_are_accepted_and_1_1_refused(door: Door) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        with door.handshake(door.context(version, version)) as tls:
            assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol version|unsupported protocol"):
        door.handshake(door.context(ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_1)).close()


def test_http2_is_offered(door: Door) -> None:
    context = door.context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with door.handshake(context) as tls:
        assert tls.selected_alpn_protocol() == "h2"


def test_web_listen_redirects_to_https(door: Door) -> None:
    with httpx.Client(timeout=10) as client:
        answer = client.get(f"http://127.0.0.1:{door.http_port}/api/v1/jobs?limit=1")
        assert answer.status_code == 301
        assert answer.headers["location"] == f"{door.https}/api/v1/jobs?limit=1"
        assert "strict-transport-security" not in answer.headers
        unknown = client.get(f"http://127.0.0.1:{door.http_port}/", headers={"Host": "evil.example"})
        assert unknown.status_code == 421


def test_the_local_door_stays_plain_http(door: Door) -> None:
    with door.running.client() as client:
        answer = client.get("/api/health")
    assert answer.status_code == 200 and "strict-transport-security" not in answer.headers


def test_an_unknown_host_over_https_gets_421(door: Door) -> None:
    with httpx.Client(verify=door.context(), timeout=10) as client:
        answer = client.get(f"{door.https}/api/health", headers={"Host": "evil.example"})
    assert answer.status_code == 421


def test_a_new_certificate_is_served_after_hup_without_a_failed_request(door: Door) -> None:
    before = door.serial()
    failures: list[str] = []
    done = threading.Event()
    answered: list[float] = []  # when each request got its answer (or failed)

    def keep_asking() -> None:  # a new connection (and handshake) for every request
        while not done.is_set():
            try:
                with httpx.Client(verify=door.context(), timeout=10) as client:
                    status = client.get(f"{door.https}/api/health").status_code
                if status != 200:
                    failures.append(f"status {status}")
            except (httpx.HTTPError, OSError) as exc:
                failures.append(repr(exc))
            answered.append(time.monotonic())

    def wait_for_requests(after: float, count: int) -> None:
        # Counted, not timed: on a loaded machine a fixed window may hold too few requests to show anything.
        deadline = time.monotonic() + 60
        while sum(1 for at in answered if at > after) < count:
            assert time.monotonic() < deadline, f"fewer than {count} requests in 60 s"
            time.sleep(0.05)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        wait_for_requests(0, REQUESTS_EACH_SIDE)
        serial = door.issue()
        assert serial != before
        hup_at = time.monotonic()
        door.running.instance.supervisor.signal(PROGRAM_NGINX, "HUP")
        deadline = time.monotonic() + 15
        while door.serial() != serial:
            assert time.monotonic() < deadline, "nginx still serves the old certificate 15 s after HUP"
            time.sleep(0.1)
        new_certificate_at = time.monotonic()
        wait_for_requests(new_certificate_at, REQUESTS_EACH_SIDE)
    finally:
        done.set()
        asker.join(timeout=30)
    # requests before the HUP, while nginx replaced its workers, and after the new certificate was served
    assert sum(1 for at in answered if at < hup_at) >= REQUESTS_EACH_SIDE
    assert sum(1 for at in answered if at > new_certificate_at) >= REQUESTS_EACH_SIDE
    assert len(answered) > 2 * REQUESTS_EACH_SIDE and not failures, failures


# -- the job API under another prefix ----------------------------------------------------------------------------


def test_the_job_api_under_another_prefix(tmp_path: Path) -> None:
    with web_tier(tmp_path / "project", 'api_prefix = "/_kvern/api"') as running, running.client() as client:
        body = {"task": "tasks.generate_heavy_report", "args": [7]}
        submitted = client.post("/_kvern/api/v1/jobs", json=body)
        assert submitted.status_code == 202, submitted.text
        url = submitted.json()["url"]
        assert url == submitted.headers["location"] == f"/_kvern/api/v1/jobs/{submitted.json()['id']}"
        status = client.get(url)
        assert status.status_code == 200 and status.json()["id"] == submitted.json()["id"]
        assert client.get("/_kvern/api/health").status_code == 200
        # nginx replaces the prefix in the decoded path and escapes it again: names with %, spaces, ? survive
        artifact = client.get(f"{url}/artifacts/a%20b%25c%3F.pdf")
        assert artifact.status_code == 404 and "'a b%c?.pdf'" in artifact.json()["error"]["message"]
        # /api/ is no longer the job API: it is the site's (here the static folder's) to answer
        assert client.get("/api/health").status_code == 404
        assert client.post("/api/v1/jobs", json=body).status_code == 404


def test_a_key_that_does_not_match_fails_up_in_one_line_with_nothing_started(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "cert.pem").write_bytes(chain(trustme.CA().issue_cert("localhost")))
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(folder / "key.pem"))
    web = f'[web.tls]\ncert = "cert.pem"\nkey = "key.pem"\nlisten = ["127.0.0.1:{free_port()}"]\n'
    spec = write_project(folder, front_spec("tls_refused", web))
    instance = Instance(load_spec(spec), (folder / ".kvern").resolve())
    try:
        with pytest.raises(StartError) as refused:
            instance.up(Tiers.parse("web"))
        message = str(refused.value)
        assert message.startswith("web.tls: nginx cannot use the certificate and key: ") and "\n" not in message
        assert "key values mismatch" in message
        assert owned_pids(instance.state_dir) == [] and instance.supervisor.daemon_pid() is None
    finally:
        instance.down()
