"""The reports example's Django site (examples/reports/reportsite), with Django's test client.

No kvern instance: `generate_heavy_report.delay` and `kvern.job` are stubbed with what a web head would give.
"""

from __future__ import annotations

import importlib
import io
import re
import sys
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django
import pytest
from celery import _state
from django.test import Client

import kvern
from kvern.errors import BacklogFull, JobNotFound, PublishError, StoreUnavailable, SubmitError

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "reports"
if str(EXAMPLE_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLE_DIR))

from report_pdf import MAX_USER_ID  # noqa: E402
from reportsite import deployment  # noqa: E402

PDF = b"%PDF-1.4 a report %%EOF"


@dataclass
class FakeHandle:
    job: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.job["id"])

    def view(self) -> dict[str, Any]:
        return self.job

    def artifact(self, name: str) -> tuple[str, bytes]:
        if name != "report.pdf" or not self.job["artifacts"]:
            raise KeyError(name)
        return "application/pdf", PDF


@dataclass
class FakeKvern:
    """Jobs a web head's kvern would know, and the `.delay()` calls the views made."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    delayed: list[tuple[Any, ...]] = field(default_factory=list)
    submitted: list[tuple[Any, ...]] = field(default_factory=list)  # kvern.submit calls: (user id, notify)
    refuse_with: Exception | None = None

    def submit(self, task: Any, user_id: int, *, notify: list[str]) -> FakeHandle:
        if self.refuse_with is not None:
            raise self.refuse_with
        self.submitted.append((user_id, notify))
        return FakeHandle(self.add("queued", user_id=user_id))

    def delay(self, *args: Any, **kwargs: Any) -> FakeHandle:
        assert not kwargs
        if self.refuse_with is not None:
            raise self.refuse_with
        self.delayed.append(args)
        return FakeHandle(self.add("queued", user_id=args[0]))

    def job(self, job_id: str) -> FakeHandle:
        if self.refuse_with is not None:
            raise self.refuse_with
        if job_id not in self.jobs:
            raise JobNotFound(job_id)
        return FakeHandle(self.jobs[job_id])

    def add(self, status: str, *, user_id: int = 42, progress: int = 0, pdf: bool = False) -> dict[str, Any]:
        job_id = str(uuid.uuid4())
        artifacts = [{"name": "report.pdf", "url": f"/api/v1/jobs/{job_id}/artifacts/report.pdf"}] if pdf else []
        job = {
            "id": job_id,
            "status": status,
            "progress": progress,
            "progress_message": "Building the report of user 42" if progress else None,
            "args": [user_id],
            "artifacts": artifacts,
        }
        self.jobs[job_id] = job
        return job

    @property
    def last_id(self) -> str:
        return list(self.jobs)[-1]


@pytest.fixture(scope="module")
def views() -> Iterator[types.ModuleType]:
    """The site's views, with Django set up as a web head does. The tasks module they import (a Celery app
    whose task is shared with apps made later) and Django's settings variable (which makes every later Celery
    app install its Django fix-up) are not left behind for other tests, nor taken from them (another
    project's `tasks` module may be loaded)."""
    modules, finalizers = dict(sys.modules), set(_state._on_app_finalizers)
    sys.modules.pop("tasks", None)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLE_DIR))  # first: earlier tests may have left their projects' folders there
        patch.setenv("DJANGO_SECRET_KEY", "unit-tests-only-" + uuid.uuid4().hex)  # no key file in the checkout
        patch.setenv("DJANGO_SETTINGS_MODULE", "reportsite.settings")
        try:
            django.setup()
            yield importlib.import_module("reportsite.views")
        finally:
            _state._on_app_finalizers.intersection_update(finalizers)
            for name in set(sys.modules) - set(modules):
                if name == "tasks" or name.startswith("reportsite."):
                    del sys.modules[name]
            if "tasks" in modules:
                sys.modules["tasks"] = modules["tasks"]


@pytest.fixture
def fake(views: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKvern]:
    fake = FakeKvern()
    monkeypatch.setattr(views.generate_heavy_report, "delay", fake.delay)
    monkeypatch.setattr(kvern, "job", fake.job)
    monkeypatch.setattr(kvern, "submit", fake.submit)
    yield fake


@pytest.fixture
def client() -> Client:
    # CSRF is checked as in production: the test client skips it unless told otherwise.
    return Client(enforce_csrf_checks=True, SERVER_NAME="localhost")


def csrf_token(client: Client) -> str:
    page = client.get("/").content.decode()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def post_form(client: Client, user_id: str, email: str = "") -> Any:
    return client.post("/", {"user_id": user_id, "email": email, "csrfmiddlewaretoken": csrf_token(client)})


def test_the_form_renders_with_its_csrf_token_and_the_static_stylesheet(client: Client, fake: FakeKvern) -> None:
    response = client.get("/")
    page = response.content.decode()
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    assert 'name="csrfmiddlewaretoken"' in page and "csrftoken" in response.cookies
    assert 'name="user_id"' in page and ">Download report</button>" in page
    assert 'href="/style.css"' in page
    assert "<script>" not in page  # the front door's CSP allows no inline script
    assert response["X-Frame-Options"] == "DENY"
    assert fake.delayed == []


def test_posting_the_form_enqueues_the_report_and_redirects_to_its_page(client: Client, fake: FakeKvern) -> None:
    response = post_form(client, " 42 ")
    assert fake.delayed == [(42,)]
    assert response.status_code == 303
    assert response["Location"] == f"/reports/{fake.last_id}/"


def test_with_an_email_the_report_is_submitted_to_be_mailed_and_the_page_says_so(
    client: Client, fake: FakeKvern
) -> None:
    response = post_form(client, "42", "ada@example.com")
    assert fake.submitted == [(42, ["mailto:ada@example.com"])] and fake.delayed == []
    assert response["Location"] == f"/reports/{fake.last_id}/?emailed=1"
    page = client.get(response["Location"]).content.decode()
    assert "We will email it to you when it" in page


def test_an_email_kvern_refuses_gets_the_form_back_with_the_reason(client: Client, fake: FakeKvern) -> None:
    fake.refuse_with = SubmitError(400, "invalid_notify", "notify: a mailto: target needs [notify.smtp]")
    response = post_form(client, "42", "ada@example.com")
    assert response.status_code == 400
    assert b"We cannot email this report" in response.content
    bad = post_form(client, "42", "not an address")
    assert bad.status_code == 400 and 'id="form-error"' in bad.content.decode()
    assert fake.submitted == []


def test_a_post_without_the_csrf_token_is_refused(client: Client, fake: FakeKvern) -> None:
    client.get("/")
    response = client.post("/", {"user_id": "42"})
    assert response.status_code == 403 and b"The form expired" in response.content
    assert fake.delayed == []


@pytest.mark.parametrize("user_id", ["", "abc", "-1", "1.5", "4 2", str(MAX_USER_ID + 1)])
def test_a_bad_user_id_gets_the_form_back_with_400(client: Client, fake: FakeKvern, user_id: str) -> None:
    response = post_form(client, user_id)
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="form-error"' in page and ">Download report</button>" in page
    assert fake.delayed == []


@pytest.mark.parametrize("outage", [StoreUnavailable("store away"), PublishError("no confirm"), BacklogFull("full")])
def test_kvern_unavailable_on_submit_asks_to_try_again(
    client: Client, fake: FakeKvern, views: types.ModuleType, outage: Exception
) -> None:
    fake.refuse_with = outage
    response = post_form(client, "7")
    assert response.status_code == 503
    assert response["Retry-After"] == str(views.RETRY_AFTER)
    assert b"try again" in response.content


@pytest.mark.parametrize("suffix", ["/", "/status", "/pdf"])
def test_a_job_store_away_while_reading_a_report_is_503_not_500(
    client: Client, fake: FakeKvern, views: types.ModuleType, suffix: str
) -> None:
    job_id = fake.add("succeeded", pdf=True)["id"]
    fake.refuse_with = StoreUnavailable("job store unavailable: connection refused")
    response = client.get(f"/reports/{job_id}{suffix}")
    assert response.status_code == 503 and response["Retry-After"] == str(views.RETRY_AFTER)
    if suffix == "/status":
        assert response.json() == {"error": "reports are unavailable for a moment"}
    else:
        assert b"try again" in response.content


def test_the_progress_page_follows_the_job_with_a_static_script(client: Client, fake: FakeKvern) -> None:
    job = fake.add("running", progress=40)
    response = client.get(f"/reports/{job['id']}/")
    page = response.content.decode()
    assert response.status_code == 200
    assert f'data-status-url="/reports/{job["id"]}/status"' in page
    assert '<script src="/progress.js" defer></script>' in page
    assert 'value="40"' in page and "Building the report" in page
    assert re.search(r'id="ready"\s+hidden', page) and re.search(r'id="failed"[^>]*hidden', page)


def test_the_progress_page_of_a_finished_report_offers_the_pdf(client: Client, fake: FakeKvern) -> None:
    job = fake.add("succeeded", progress=100, pdf=True)
    page = client.get(f"/reports/{job['id']}/").content.decode()
    assert f'href="/reports/{job["id"]}/pdf"' in page
    assert not re.search(r'id="ready"[^>]*hidden', page)


@pytest.mark.parametrize("status", ["failed", "dead"])
def test_the_progress_page_of_a_failed_report_says_so(client: Client, fake: FakeKvern, status: str) -> None:
    job = fake.add(status)
    page = client.get(f"/reports/{job['id']}/").content.decode()
    assert "could not be made" in page
    assert not re.search(r'id="failed"[^>]*hidden', page)
    assert re.search(r'id="ready"\s+hidden', page)


def test_the_status_view_answers_json_for_each_state(client: Client, fake: FakeKvern) -> None:
    running = fake.add("running", progress=40)
    done = fake.add("succeeded", progress=100, pdf=True)
    failed = fake.add("failed", progress=60)

    body = client.get(f"/reports/{running['id']}/status").json()
    assert body == {
        "id": running["id"],
        "status": "running",
        "status_text": "Building the report…",
        "progress": 40,
        "message": "Building the report of user 42",
        "done": False,
        "failed": False,
        "pdf_url": None,
    }
    body = client.get(f"/reports/{done['id']}/status").json()
    assert (body["done"], body["failed"], body["pdf_url"]) == (True, False, f"/reports/{done['id']}/pdf")
    body = client.get(f"/reports/{failed['id']}/status").json()
    assert (body["done"], body["failed"], body["pdf_url"]) == (True, True, None)


def test_the_status_view_is_never_cached(client: Client, fake: FakeKvern) -> None:
    response = client.get(f"/reports/{fake.add('queued')['id']}/status")
    assert "no-cache" in response["Cache-Control"] and response["Content-Type"] == "application/json"


def test_the_pdf_view_sends_the_artifact_as_an_attachment(client: Client, fake: FakeKvern) -> None:
    job = fake.add("succeeded", progress=100, pdf=True, user_id=42)
    response = client.get(f"/reports/{job['id']}/pdf")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == 'attachment; filename="report-user-42.pdf"'
    assert b"".join(response.streaming_content) == PDF


@pytest.mark.parametrize("status", ["running", "failed"])
def test_the_pdf_view_of_an_unfinished_report_is_404(client: Client, fake: FakeKvern, status: str) -> None:
    assert client.get(f"/reports/{fake.add(status)['id']}/pdf").status_code == 404


@pytest.mark.parametrize("suffix", ["/", "/status", "/pdf"])
def test_an_unknown_job_is_404(client: Client, fake: FakeKvern, suffix: str) -> None:
    response = client.get(f"/reports/{uuid.uuid4()}{suffix}")
    assert response.status_code == 404
    if suffix == "/status":
        assert response.json() == {"error": "no such report"}
    else:
        assert b"There is no such page or report." in response.content


def test_a_path_that_is_no_job_id_is_404_without_asking_kvern(client: Client, fake: FakeKvern) -> None:
    fake.jobs["../etc"] = {}
    assert client.get("/reports/not-a-job/").status_code == 404


def test_other_methods_are_refused(fake: FakeKvern) -> None:
    client = Client(SERVER_NAME="localhost")  # past the CSRF check, to the views' own
    assert client.delete("/").status_code == 405
    job_id = fake.add("succeeded", pdf=True)["id"]
    for path in (f"/reports/{job_id}/", f"/reports/{job_id}/status", f"/reports/{job_id}/pdf"):
        assert client.post(path).status_code == 405


def test_a_host_outside_the_spec_is_refused(views: types.ModuleType) -> None:
    assert Client(SERVER_NAME="evil.example").get("/").status_code == 400


# -- what the settings take from the deployment --------------------------------------------------------------


def test_allowed_hosts_are_the_specs_server_names_and_loopback() -> None:
    spec = {"web": {"server_name": ["reports.example.com", "*.example.org"]}}
    assert deployment.allowed_hosts(spec) == [
        "localhost",
        "127.0.0.1",
        "[::1]",
        "reports.example.com",
        ".example.org",
    ]
    assert deployment.allowed_hosts({}) == list(deployment.LOOPBACK_HOSTS)


def test_cookies_are_secure_only_behind_tls() -> None:
    assert deployment.serves_https({"web": {"tls": {"cert": "c", "key": "k"}}})
    assert not deployment.serves_https({"web": {"heads": 2}})


def test_the_secret_key_is_made_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(deployment.SECRET_KEY_ENV, raising=False)
    path = tmp_path / ".django-secret-key"
    first = deployment.secret_key(path)
    assert len(first) >= 50 and path.stat().st_mode & 0o777 == 0o600
    assert deployment.secret_key(path) == first
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no draft left behind
    monkeypatch.setenv(deployment.SECRET_KEY_ENV, "from-the-environment")
    assert deployment.secret_key(path) == "from-the-environment"


def test_a_secret_key_that_cannot_be_made_names_the_way_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(deployment.SECRET_KEY_ENV, raising=False)
    with pytest.raises(deployment.SecretKeyError, match="DJANGO_SECRET_KEY"):
        deployment.secret_key(tmp_path / "missing-folder" / ".django-secret-key")


def test_the_secret_key_file_is_not_committed() -> None:
    ignored = (EXAMPLE_DIR.parents[1] / ".gitignore").read_text().splitlines()
    assert ".django-secret-key" in ignored


def test_djangos_deployment_checks_find_no_error(views: types.ModuleType) -> None:
    from django.core.management import call_command  # noqa: PLC0415 - needs the settings the fixture sets up

    call_command("check", deploy=True, fail_level="ERROR", stdout=io.StringIO(), stderr=io.StringIO())
