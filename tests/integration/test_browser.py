"""The reports page in a real browser: Playwright drives Debian's chromium against a real kvern instance.

A person opens the front door, requests reports, watches them run, downloads the PDF and sees the API's errors.
Without playwright or /usr/bin/chromium the test skips, unless CI=1 or KVERN_REQUIRE_SERVICES=1: then it fails
(`make test` installs both). Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest
from pypdf import PdfReader

from tests.conftest import services_required
from tests.integration.conftest import Running, reports_spec, write_project

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, Request, Route

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TASK = "tasks.generate_heavy_report"
USER_IDS = (7, 42)
# The page's reports take about 3 s each (the task's default pace); both run at once (concurrency 2).
JOB_TIMEOUT_MS = 30_000
UI_TIMEOUT_MS = 10_000


def _unavailable(reason: str) -> NoReturn:
    if services_required():
        pytest.fail(f"{reason}, and CI=1 / KVERN_REQUIRE_SERVICES=1 requires it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if importlib.util.find_spec("playwright") is None:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - optional: the test skips without it

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def job_entry(page: Page, user_id: int) -> Locator:
    title = page.locator(".job-title", has_text=re.compile(rf"^Report for user {user_id}$"))
    return page.locator(".job").filter(has=title)


def request_report(page: Page, user_id: str) -> None:
    page.fill("#user-id", user_id)
    page.click("#generate")


def shows_an_api_error(page: Page) -> None:
    """The page's own fetch, with arguments the task cannot take: the person sees the API's error."""
    from playwright.sync_api import expect  # noqa: PLC0415

    def bad_arguments(route: Route) -> None:
        route.continue_(post_data=json.dumps({"task": TASK, "args": [], "kwargs": {}}))

    page.route("**/api/v1/jobs", bad_arguments)
    try:
        request_report(page, "1")
        error = page.locator("#form-error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("Could not start the report: arguments do not fit tasks.generate_heavy_report")
        expect(error).to_contain_text("(bad_arguments, HTTP 422)")
    finally:
        page.unroute("**/api/v1/jobs", bad_arguments)


def downloads_valid_pdfs(page: Page, front_door: str) -> None:
    """The first report through a click on its link, the second by fetching the link's href."""
    first, second = (job_entry(page, user_id) for user_id in USER_IDS)
    with page.expect_download() as downloading:
        first.locator("a.download").click()
    download = downloading.value
    assert download.failure() is None
    assert download.suggested_filename == "report.pdf"
    assert len(PdfReader(download.path()).pages) >= 2

    href = second.locator("a.download").get_attribute("href")
    assert href and href.startswith(front_door + "/")
    fetched = page.request.get(href)
    assert fetched.status == 200 and fetched.headers["content-type"] == "application/pdf"
    assert len(PdfReader(io.BytesIO(fetched.body())).pages) >= 2


def test_a_person_requests_watches_and_downloads_reports(
    page: Page, start_instance: Callable[..., Running], tmp_path: Path
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    running = start_instance(write_project(tmp_path / "reports", reports_spec()))
    posts: list[Request] = []
    page.on("request", lambda request: posts.append(request) if request.method == "POST" else None)
    crashes: list[str] = []
    page.on("pageerror", lambda error: crashes.append(str(error)))

    page.goto(running.url + "/")
    expect(page).to_have_title(re.compile("Reports"))
    expect(page.locator("#empty")).to_be_visible()

    # A non-numeric user id is refused by the page itself: nothing is sent.
    request_report(page, "abc")
    expect(page.locator("#form-error")).to_contain_text("Please enter a user id")
    assert posts == []

    for user_id in USER_IDS:
        request_report(page, str(user_id))
        expect(job_entry(page, user_id)).to_have_count(1)
    expect(page.locator("#form-error")).to_be_hidden()
    expect(page.locator("#empty")).to_be_hidden()
    expect(page.locator(".job")).to_have_count(len(USER_IDS))

    shows_an_api_error(page)
    expect(page.locator(".job")).to_have_count(len(USER_IDS))

    for user_id in USER_IDS:
        entry = job_entry(page, user_id)
        expect(entry.locator(".status")).to_have_text("Succeeded", timeout=JOB_TIMEOUT_MS)
        expect(entry.locator("progress")).to_have_attribute("value", "100")
        expect(entry.locator("progress")).to_have_js_property("value", 100)
        expect(entry.locator(".pct")).to_have_text("100%")
        expect(entry.locator(".job-meta")).to_contain_text(re.compile(r"\d+ pages"))
        expect(entry.locator("a.download")).to_have_count(1)

    downloads_valid_pdfs(page, running.url)

    page.screenshot(path=str(tmp_path / "reports-page.png"), full_page=True)

    # What the page shows is what the API says; the rejected request left no job behind.
    job_ids = page.locator(".job").evaluate_all("entries => entries.map(entry => entry.dataset.jobId)")
    with running.client() as client:
        jobs = client.get("/api/v1/jobs", params={"limit": 50}).json()["jobs"]
        args = [client.get(job["url"]).json()["args"] for job in jobs]  # a listing leaves them out
    assert sorted(job["id"] for job in jobs) == sorted(job_ids)
    assert {job["status"] for job in jobs} == {"succeeded"}
    assert sorted(arg[0] for arg in args) == sorted(USER_IDS)
    assert len(posts) == len(USER_IDS) + 1
    assert crashes == []
