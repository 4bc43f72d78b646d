"""The job API behind a public front door: the links it answers with use `[web] api_prefix`, and pages served
on any address the front door listens on (plain or HTTPS) are its own origin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kvern.api.browsers import front_door_ports, is_same_origin
from kvern.spec import WebSpec
from tests.security.test_api_hardening import SUBMISSION, make_head, serve

JSON = {"Content-Type": "application/json"}
PUBLIC = """
[web]
api_prefix = "/_kvern/api"
listen = ["0.0.0.0:8080", "[::]:8080"]
server_name = ["shop.test"]
[web.tls]
cert = "cert.pem"
key = "key.pem"
listen = ["0.0.0.0:8443"]
"""


@pytest.fixture
async def public_api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    for name in ("cert.pem", "key.pem"):  # the spec checks they exist; nginx is not involved here
        (tmp_path / name).write_text("")
    async for client in serve(make_head(tmp_path, PUBLIC)):
        yield client


@pytest.fixture
async def default_api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serve(make_head(tmp_path)):
        yield client


async def test_the_default_prefix_gives_todays_links(default_api: httpx.AsyncClient) -> None:
    answer = await default_api.post("/api/v1/jobs", content=SUBMISSION, headers=JSON)
    job_id = answer.json()["id"]
    assert answer.headers["location"] == answer.json()["url"] == f"/api/v1/jobs/{job_id}"


async def test_links_use_the_public_prefix(public_api: httpx.AsyncClient) -> None:
    # nginx maps /_kvern/api/ onto the heads' /api/: the head is asked under /api/, answers with public links
    answer = await public_api.post("/api/v1/jobs", content=SUBMISSION, headers=JSON)
    assert answer.status_code == 202
    job_id = answer.json()["id"]
    assert answer.headers["location"] == answer.json()["url"] == f"/_kvern/api/v1/jobs/{job_id}"
    assert (await public_api.get(f"/api/v1/jobs/{job_id}")).json()["url"] == f"/_kvern/api/v1/jobs/{job_id}"
    await public_api.post("/api/v1/jobs", content=SUBMISSION, headers=JSON)
    page = (await public_api.get("/api/v1/jobs", params={"limit": 1})).json()
    assert page["next"].startswith("/_kvern/api/v1/jobs?limit=1&before=")
    assert page["jobs"][0]["url"].startswith("/_kvern/api/v1/jobs/")


async def test_the_docs_page_loads_its_schema_and_assets_under_the_prefix(public_api: httpx.AsyncClient) -> None:
    page = (await public_api.get("/api/docs")).text
    assert "'/_kvern/api/openapi.json'" in page or '"/_kvern/api/openapi.json"' in page
    assert "/_kvern/api/docs/assets/swagger-ui-bundle.js" in page
    assert "'/api/openapi.json'" not in page and '"/api/openapi.json"' not in page


async def test_the_openapi_document_lists_the_public_paths(
    public_api: httpx.AsyncClient, default_api: httpx.AsyncClient
) -> None:
    public = (await public_api.get("/api/openapi.json")).json()["paths"]
    assert "/_kvern/api/v1/jobs" in public and "/_kvern/api/v1/jobs/{job_id}" in public
    assert not [path for path in public if path.startswith("/api/")], list(public)
    assert "/api/v1/jobs" in (await default_api.get("/api/openapi.json")).json()["paths"]


@pytest.mark.parametrize(
    ("origin", "proto"),
    [("https://shop.test:8443", "https"), ("http://shop.test:8080", "http"), ("https://shop.test", "https")],
)
async def test_pages_on_any_front_door_address_are_same_origin(
    public_api: httpx.AsyncClient, origin: str, proto: str
) -> None:
    headers = {**JSON, "Origin": origin, "Host": "shop.test", "X-Forwarded-Proto": proto}
    assert (await public_api.post("/api/v1/jobs", content=SUBMISSION, headers=headers)).status_code == 202


@pytest.mark.parametrize("origin", ["https://shop.test:9443", "http://shop.test:3000", "https://evil.test:8443"])
async def test_other_ports_and_hosts_are_not(public_api: httpx.AsyncClient, origin: str) -> None:
    headers = {**JSON, "Origin": origin, "Host": "shop.test", "X-Forwarded-Proto": "https"}
    answer = await public_api.post("/api/v1/jobs", content=SUBMISSION, headers=headers)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "origin_not_allowed"


def test_the_forwarded_scheme_decides_the_default_port() -> None:
    # a page on https://shop.test (443) behind a TLS-terminating front door on its default port
    assert is_same_origin("https://shop.test", "shop.test", {8080}, "https")
    assert not is_same_origin("https://shop.test:8080", "shop.test:8443", {8080, 8443}, "https")


def test_front_door_ports_cover_the_local_door_listen_and_tls(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("")
    head = make_head(tmp_path, PUBLIC)
    assert front_door_ports(head.spec.web, 18000) == {18000, 8080, 8443}
    assert front_door_ports(WebSpec(), 18000) == {18000}
