"""The reports site in a real browser: Playwright drives Debian's chromium against a real kvern instance that
serves the example's Django site on its web heads behind nginx.

A person opens the front door, types a user id, clicks "Download report", lands on the report's page, waits
for the PDF link and downloads the PDF; a report that fails and one that does not exist say so, and with the
broker stopped the form answers "try again" (503). Every request the page makes stays on 127.0.0.1.

Without playwright or /usr/bin/chromium the test skips, unless CI=1 or KVERN_REQUIRE_SERVICES=1: then it fails
(`make test` installs both). Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

import pytest
from pypdf import PdfReader

from kvern.constants import PROGRAM_BROKER
from kvern.jobs.store import JobStore
from kvern.runtime.supervisor import Supervisor
from tests.conftest import services_required
from tests.integration.conftest import REPORTS, Running, reports_spec, submit_report

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

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
USER_ID = 42
# A report takes about 3 s (the task's default pace); the first one may wait for the pool's first worker.
JOB_TIMEOUT_MS = 30_000
UI_TIMEOUT_MS = 10_000
REPORT_PAGE = re.compile(r"/reports/[0-9a-f-]{36}/$")


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


class LoopbackOnly:
    """Every request the page makes: those for another host than 127.0.0.1 are aborted and kept here."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.foreign: list[str] = []

    def __call__(self, route: Route) -> None:
        url = route.request.url
        self.seen.append(url)
        if urlsplit(url).hostname != "127.0.0.1":
            self.foreign.append(url)
            route.abort()
            return
        route.continue_()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def write_site(folder: Path) -> Path:
    """The reports example as a team would deploy it (its Django site included), with a test-sized spec."""
    shutil.copytree(
        REPORTS,
        folder,
        ignore=shutil.ignore_patterns(".kvern", "__pycache__", ".django-secret-key*", "demo-output", "demo.py"),
    )
    spec = reports_spec().replace("[web]\n", '[web]\napp = "reportsite.wsgi:application"\n', 1)
    (folder / "kvern.toml").write_text(spec)
    return folder / "kvern.toml"


def a_bad_user_id_gets_the_form_back(page: Page) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.fill("#id_user_id", "abc")
    with page.expect_response(lambda response: response.request.method == "POST") as answer:
        page.get_by_role("button", name="Download report").click()
    assert answer.value.status == 400
    expect(page.locator("#form-error")).to_contain_text("A user id is a whole number")
    expect(page).to_have_url(re.compile(r"/$"))


def requests_and_downloads_a_report(page: Page, tmp_path: Path) -> str:
    """From the form to the PDF; the report page's URL."""
    from playwright.sync_api import expect  # noqa: PLC0415

    page.fill("#id_user_id", str(USER_ID))
    page.get_by_role("button", name="Download report").click()
    expect(page).to_have_url(REPORT_PAGE)
    expect(page.locator("h1")).to_have_text(f"Report for user {USER_ID}")
    link = page.get_by_role("link", name="Download the PDF")
    expect(link).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#status")).to_have_text("Your report is ready.")
    expect(page.locator("#progress")).to_have_js_property("value", 100)
    expect(page.locator("#pct")).to_have_text("100%")
    expect(page.locator("#failed")).to_be_hidden()
    # The page followed the job by the events kvern pushed (through nginx), not by polling.
    expect(page.locator("#report")).to_have_attribute("data-following", "events")
    page.screenshot(path=str(tmp_path / "report-page.png"), full_page=True)

    with page.expect_download() as downloading:
        link.click()
    download = downloading.value
    assert download.failure() is None
    assert download.suggested_filename == f"report-user-{USER_ID}.pdf"
    reader = PdfReader(download.path())
    assert len(reader.pages) >= 2 and reader.metadata is not None
    assert reader.metadata.title == f"Annual Sales Report - user {USER_ID}"
    return page.url


def a_failed_report_and_an_unknown_one_say_so(page: Page, front_door: str, failing_job: str) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(f"{front_door}/reports/{failing_job}/")
    expect(page.locator("#failed")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#status")).to_have_text("The report could not be made.")
    expect(page.locator("#ready")).to_be_hidden()

    unknown = page.goto(f"{front_door}/reports/{uuid.uuid4()}/")
    assert unknown is not None and unknown.status == 404
    expect(page.locator("h1")).to_have_text("Not found")


def a_broker_away_asks_to_try_again(page: Page, running: Running) -> None:
    """With the broker stopped, kvern cannot take the job: the site answers its 503 page, nothing is recorded."""
    from playwright.sync_api import expect  # noqa: PLC0415

    supervisor = Supervisor(running.instance.state_dir)
    store = JobStore(running.config.store_url)
    before = sum(store.counts_by_status().values())
    page.goto(running.url + "/")
    supervisor.stop(PROGRAM_BROKER)
    try:
        page.fill("#id_user_id", str(USER_ID))
        with page.expect_response(lambda response: response.request.method == "POST") as answer:
            page.get_by_role("button", name="Download report").click()
        assert answer.value.status == 503 and answer.value.headers["retry-after"] == "5"
        expect(page.locator("h1")).to_have_text("Please try again in a moment")
        assert sum(store.counts_by_status().values()) == before
    finally:
        supervisor.start(PROGRAM_BROKER)
        store.close()


def test_a_person_asks_for_a_report_and_downloads_the_pdf(
    page: Page, start_instance: Callable[..., Running], tmp_path: Path
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    running = start_instance(write_site(tmp_path / "reports"))
    with running.client() as client:  # a report the task refuses (seconds out of range): it fails, retries and all
        failing_job = submit_report(client, 5, seconds=1e6).json()["id"]
    requests = LoopbackOnly()
    page.route("**/*", requests)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)

    page.goto(running.url + "/")
    expect(page).to_have_title(re.compile("Reports"))
    a_bad_user_id_gets_the_form_back(page)
    report_page = requests_and_downloads_a_report(page, tmp_path)
    a_failed_report_and_an_unknown_one_say_so(page, running.url, failing_job)
    a_broker_away_asks_to_try_again(page, running)

    # The site's page followed the job's pushed events (a grant for that job in the URL, no key), asked the
    # site's status view for its wording, and the view agrees with the job API.
    job_id = report_page.rstrip("/").rsplit("/", 1)[-1]
    assert any(url.startswith(f"{running.url}/api/v1/jobs/{job_id}/events?grant=") for url in requests.seen)
    assert f"{running.url}/reports/{job_id}/status" in requests.seen
    assert f"{running.url}/progress.js" in requests.seen
    with running.client() as client:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert (job["status"], job["args"], job["task"]) == ("succeeded", [USER_ID], "tasks.generate_heavy_report")
    assert requests.foreign == [] and all(url.startswith(running.url + "/") for url in requests.seen)
    # No script error, no CSP refusal: only the browser's notes of the answers that were meant to be errors.
    assert problems == [
        f"Failed to load resource: the server responded with a status of {status}"
        for status in ("400 (Bad Request)", "404 (Not Found)", "503 (Service Unavailable)")
    ]
