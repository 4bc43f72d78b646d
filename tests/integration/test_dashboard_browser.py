"""The dashboard in real Chromium against a real instance (nginx, web heads, RabbitMQ, a worker pool that
scales): sign in with the admin key, first paint with 10,000 jobs in the store (printed), every request stays
on the instance, the charts move while a burst runs, the pool's scale-out shows with its reason, and a dead job
is replayed from its page and succeeds, jobs are found by status and id prefix; and a job's event stream comes
through nginx as the job moves, and resumes by Last-Event-ID. Screenshots (laptop and phone) are saved in the
test's tmp dir."""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from kvern.jobs import schema
from kvern.jobs.records import NewJob, new_job_row
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore, begin
from tests.integration.conftest import Running, reports_spec, submit_report, write_project
from tests.integration.test_browser import LoopbackOnly, browser  # noqa: F401 - the chromium fixture

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.integration

STORED_JOBS = 10_000
BURST = 16
TASK = "tasks.generate_heavy_report"
UI_TIMEOUT_MS = 30_000
SCALE_OUT = re.compile(r"(\d+) → (\d+):")


def fill_store(store: JobStore, count: int) -> None:
    """`count` finished jobs spread over the last hour, written in one transaction (as a busy hour leaves them)."""
    now = time.time()
    rows = []
    for n in range(count):
        row = new_job_row(NewJob(str(uuid.uuid4()), TASK, "reports", [n % 1000], {}, max_attempts=3))
        created = now - random.uniform(600, 3000)  # none leaves the hour while the test runs
        started = created + random.uniform(0.01, 2.0)
        status = JobStatus.SUCCEEDED if n % 50 else JobStatus.FAILED
        row |= {"status": status.value, "created_at": created, "queued_at": created, "published_at": created}
        row |= {"started_at": started, "finished_at": started + random.uniform(0.5, 4.0), "attempts": 1}
        rows.append(row)
    with begin(store.engine) as conn:
        conn.execute(schema.jobs.insert(), rows)


def dead_job(store: JobStore) -> str:
    """A report job that died (its worker lost, say): valid arguments, so a replay succeeds."""
    job, _ = store.create_job(NewJob(str(uuid.uuid4()), TASK, "reports", [7], {"seconds": 0.3}, max_attempts=1))
    store.mark_published([job.id])  # its message was delivered: the relay leaves it alone
    claim = store.claim_attempt(job.id, "worker-that-vanished")
    store.record_failure(job.id, claim.attempt, "WorkerLost: the process died", JobStatus.DEAD, "Traceback: ...")
    return job.id


def sign_in(page: Page, dashboard: str, key: str) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(dashboard)
    page.fill("#key", key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#chart-activity")).to_be_visible()


def first_paint_ms(page: Page, dashboard: str) -> tuple[float, float]:
    """First contentful paint, and when the first live snapshot was drawn, in ms after navigation."""
    page.goto(dashboard)
    page.wait_for_function("() => document.body.dataset.updated !== undefined")
    paint = page.evaluate("() => performance.getEntriesByName('first-contentful-paint')[0].startTime")
    drawn = page.evaluate("() => performance.now()")
    return float(paint), float(drawn)


def charts_move_while_a_burst_runs(page: Page, running: Running) -> None:
    before = float(page.locator("#chart-activity").get_attribute("data-total") or 0)
    with running.client() as client:
        for n in range(BURST):
            assert submit_report(client, 100 + n, seconds=1.0).status_code == 202
    page.wait_for_function(
        "(before) => Number(document.getElementById('chart-activity').dataset.total) > before",
        arg=before,
        timeout=UI_TIMEOUT_MS,
    )


def scale_out_shows_with_its_reason(page: Page) -> str:
    decisions = page.locator('[data-pool="reports"] .decision')
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        for text in decisions.all_inner_texts():
            found = SCALE_OUT.search(text)
            if found and int(found.group(2)) > int(found.group(1)) and text.split(":", 3)[-1].strip():
                return text
        page.wait_for_timeout(300)
    raise AssertionError(f"no scale-out shown; decisions: {decisions.all_inner_texts()}")


def a_dead_job_is_replayed_from_its_page(page: Page, dashboard: str, job_id: str) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(f"{dashboard}#/jobs/{job_id}")
    expect(page.locator("#job-status")).to_have_text("dead")
    expect(page.locator("#job")).to_contain_text("WorkerLost: the process died")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Replay").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#job")).to_contain_text("report.pdf")


def jobs_are_found_by_status_and_id_prefix(page: Page, dashboard: str, job_id: str) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(f"{dashboard}#/jobs")
    page.select_option("#f-status", "failed")
    page.get_by_role("button", name="Find").click()
    statuses = page.locator("#jobs tbody .status")
    expect(statuses.first).to_have_text("failed")
    assert set(statuses.all_inner_texts()) == {"failed"}
    page.select_option("#f-status", "")
    page.fill("#f-q", job_id[:8])
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    expect(page.locator(f'#jobs tbody tr[data-job="{job_id}"]')).to_be_visible()


def read_events(client: httpx.Client, job_id: str, last_seen: str | None = None) -> list[tuple[str, str, float]]:
    """(event, id, seconds since the request) of a job's event stream through the front door, to its end."""
    headers = {"Last-Event-ID": last_seen} if last_seen else {}
    started = time.monotonic()
    events: list[tuple[str, str, float]] = []
    kind = event_id = ""
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=headers, timeout=60) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("id: "):
                event_id = line.removeprefix("id: ")
            elif line.startswith("data: "):
                events.append((kind, event_id, time.monotonic() - started))
    return events


def a_jobs_events_come_through_nginx_as_they_happen(running: Running) -> None:
    with running.client() as client:
        job_id = submit_report(client, 9, seconds=1.5).json()["id"]
        events = read_events(client, job_id)
        kinds = [kind for kind, _, _ in events]
        assert kinds[-1] == "end" and "progress" in kinds and kinds.count("end") == 1
        assert events[-1][2] - events[0][2] > 1.0  # each event came when it happened, not all at the end
        assert [kind for kind, _, _ in read_events(client, job_id, last_seen=events[1][1])] == ["end"]


def test_the_dashboard_live_in_a_browser(
    browser: Browser,  # noqa: F811 - the fixture imported above
    start_instance: Callable[..., Running],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    running = start_instance(write_project(tmp_path / "project", reports_spec(pool_min=1, pool_max=3)))
    store = JobStore(running.config.store_url)
    fill_store(store, STORED_JOBS)
    dead = dead_job(store)
    store.close()
    dashboard = f"{running.url}/_kvern/"
    key = running.headers["Authorization"].removeprefix("Bearer ")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    requests = LoopbackOnly()
    context.route("**/*", requests)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    try:
        sign_in(page, dashboard, key)
        paint, drawn = first_paint_ms(page, dashboard)
        print(f"\ndashboard with {STORED_JOBS} jobs: first paint {paint:.0f} ms, first live snapshot {drawn:.0f} ms")
        charts_move_while_a_burst_runs(page, running)
        decision = scale_out_shows_with_its_reason(page)
        print(f"scale-out shown: {decision}")
        expect(page.locator(".count.succeeded b")).not_to_have_text("0")
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(300)  # the charts are redrawn at the phone's width
        page.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        a_dead_job_is_replayed_from_its_page(page, dashboard, dead)
        page.screenshot(path=str(tmp_path / "dashboard-job.png"), full_page=True)
        jobs_are_found_by_status_and_id_prefix(page, dashboard, dead)
        page.screenshot(path=str(tmp_path / "dashboard-jobs.png"), full_page=True)
    finally:
        context.close()
        print("\n".join(problems))
    print(f"screenshots in {tmp_path}")
    a_jobs_events_come_through_nginx_as_they_happen(running)
    assert requests.foreign == [] and all(url.startswith(running.url + "/") for url in requests.seen)
    assert problems == []
