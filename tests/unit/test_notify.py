"""Notifications: targets in the spec and in submissions, webhook signatures, and the outbox delivering to a real
local SMTP server (aiosmtpd) and a local webhook receiver, over a real SQLite store."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvern.api.openapi import notify_schema
from kvern.catalog import load_user_app
from kvern.enqueue.core import new_job
from kvern.enqueue.submitter import Submitter
from kvern.enqueue.validation import Submission, parse_notify
from kvern.errors import SpecError, SubmitError
from kvern.jobs.deliveries import DELIVERED, FAILED, GAVE_UP, DeliveryLog
from kvern.jobs.records import NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.notify.outbox import MAX_ATTEMPTS, Outbox, retry_delay
from kvern.notify.signing import SIGNATURE_HEADER, signature, verify
from kvern.spec import MAX_TARGET_CHARS, NotifySpec, SmtpSpec, load_spec, parse_spec
from tests.receivers import Inbox, Receiver, receiving_mail, receiving_webhooks
from tests.unit.doubles import StubBlockingPublisher

KEY = b"test-webhook-key"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving_webhooks() as receiver:
        yield receiver


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpSpec, Inbox]]:
    with receiving_mail() as (port, inbox):
        yield SmtpSpec(host="127.0.0.1", port=port, security="none", sender="reports@example.com", timeout=5), inbox


@pytest.fixture(params=["sqlite_store", "postgres_store"])
def store(request: pytest.FixtureRequest) -> JobStore:
    """The real job store, on both engines."""
    found: JobStore = request.getfixturevalue(request.param)
    return found


# -- helpers ------------------------------------------------------------------------------------------------------


def finished_job(store: JobStore, notify: tuple[str, ...], *, finish: bool = True) -> str:
    job_id = str(uuid.uuid4())
    store.create_job(NewJob(job_id, "tasks.report", "main", [42], {}, max_attempts=1, notify=notify))
    if finish:
        claim = store.claim_attempt(job_id, "w1")
        store.record_success(job_id, claim.attempt, {"pages": 3})
    return job_id


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def outbox(store: JobStore, key_file: Path, smtp: SmtpSpec | None = None, clock: Clock | None = None) -> Outbox:
    notify = NotifySpec(
        base_url="https://shop.example.com", webhook_key_file=key_file, smtp=smtp, link="/reports/{id}/"
    )
    return Outbox(store, DeliveryLog(store.engine), notify, "https://shop.example.com", "/api", clock or Clock())


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.key"
    path.write_bytes(KEY + b"\n")
    return path


# -- delivery -----------------------------------------------------------------------------------------------------


def test_a_finished_job_is_announced_once_by_signed_webhook_and_by_email(
    store: JobStore, receiver: Receiver, smtp: tuple[SmtpSpec, Inbox], key_file: Path
) -> None:
    smtp_spec, inbox = smtp
    job_id = finished_job(store, (receiver.url, "mailto:ada@example.com"))
    box = outbox(store, key_file, smtp_spec)

    assert box.tick() == 2
    assert box.tick() == 0  # nothing owed any more

    [(headers, body)] = receiver.requests
    assert verify(KEY, headers[SIGNATURE_HEADER], body, time.time())
    assert not verify(KEY, headers[SIGNATURE_HEADER], body.replace(b"42", b"43"), time.time())
    view = json.loads(body)
    assert (view["id"], view["status"], view["result"]) == (job_id, "succeeded", {"pages": 3})
    assert headers["X-Kvern-Job"] == job_id
    [(to, mail)] = inbox.mails
    assert to == ["ada@example.com"]
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert f"https://shop.example.com/reports/{job_id}/" in payload.decode()
    assert "ready" in mail["Subject"]
    log = DeliveryLog(store.engine).of_job(job_id)
    assert [(d.target, d.outcome) for d in log] == [(receiver.url, DELIVERED), ("mailto:ada@example.com", DELIVERED)]


def test_a_failing_webhook_is_retried_with_backoff_until_it_answers(
    store: JobStore, receiver: Receiver, key_file: Path
) -> None:
    receiver.status = 500
    job_id = finished_job(store, (receiver.url,))
    clock = Clock()
    box = outbox(store, key_file, clock=clock)

    assert box.tick() == 1
    assert box.tick() == 0  # not due before its backoff
    clock.now += retry_delay(1)
    receiver.status = 200
    assert box.tick() == 1

    log = DeliveryLog(store.engine).of_job(job_id)
    assert [(d.attempt, d.outcome, d.detail) for d in log] == [(1, FAILED, "HTTP 500"), (2, DELIVERED, "HTTP 200")]
    assert len(receiver.requests) == 2


def test_a_target_is_given_up_after_the_last_attempt(store: JobStore, key_file: Path) -> None:
    job_id = finished_job(store, ("http://127.0.0.1:9/unreachable",))  # discard port: refused
    clock = Clock()
    box = outbox(store, key_file, clock=clock)
    for _ in range(MAX_ATTEMPTS + 2):
        box.tick()
        clock.now += 3600
    log = DeliveryLog(store.engine).of_job(job_id)
    assert len(log) == MAX_ATTEMPTS
    assert log[-1].outcome == GAVE_UP
    assert {d.outcome for d in log[:-1]} == {FAILED}


def test_only_finished_jobs_are_announced_and_a_new_outbox_resumes_what_is_owed(
    store: JobStore, receiver: Receiver, key_file: Path
) -> None:
    running = finished_job(store, (receiver.url,), finish=False)
    assert outbox(store, key_file).tick() == 0
    claim = store.claim_attempt(running, "w1")
    store.record_failure(running, claim.attempt, "boom", JobStatus.FAILED)
    # A controller restarted after the job ended: the store says what is owed.
    assert outbox(store, key_file).tick() == 1
    assert json.loads(receiver.requests[0][1])["status"] == "failed"


def test_erasing_a_job_erases_its_notification_log(store: JobStore, receiver: Receiver, key_file: Path) -> None:
    job_id = finished_job(store, (receiver.url,))
    outbox(store, key_file).tick()
    assert store.erase(job_id)
    assert DeliveryLog(store.engine).of_job(job_id) == []


def test_signature_rejects_an_old_timestamp_and_another_key() -> None:
    body = b'{"id": "x"}'
    header = signature(KEY, 1_000_000, body)
    assert verify(KEY, header, body, 1_000_100)
    assert not verify(KEY, header, body, 1_000_000 + 3600)
    assert not verify(b"other", header, body, 1_000_100)
    assert not verify(KEY, "garbage", body, 1_000_100)


# -- the spec and submissions -------------------------------------------------------------------------------------

BASE = {"app": {"tasks": "tasks"}, "pools": [{"name": "main"}]}


def test_task_targets_need_smtp_and_a_signing_key(tmp_path: Path) -> None:
    mail_only = BASE | {"tasks": {"tasks.report": {"notify": ["mailto:ops@example.com"]}}}
    with pytest.raises(SpecError, match=r"notify\.smtp"):
        parse_spec(mail_only, tmp_path / "kvern.toml")
    hook_only = BASE | {"tasks": {"tasks.report": {"notify": ["https://hooks.example.com/x"]}}}
    with pytest.raises(SpecError, match="webhook_key_file"):
        parse_spec(hook_only, tmp_path / "kvern.toml")
    (tmp_path / "key").write_text("k")
    (tmp_path / "smtp-password").write_text("hunter2\n")
    notify = {
        "webhook_key_file": "key",
        "smtp": {
            "host": "smtp.example.com",
            "sender": "r@example.com",
            "username": "r",
            "password_file": "smtp-password",
        },
    }
    both = BASE | {"tasks": {"tasks.report": {"notify": ["https://hooks.example.com/x", "mailto:ops@example.com"]}}}
    spec = parse_spec(both | {"notify": notify}, tmp_path / "kvern.toml")
    assert spec.policy("tasks.report").notify == ("https://hooks.example.com/x", "mailto:ops@example.com")
    assert spec.notify.smtp is not None and spec.notify.smtp.password() == "hunter2"


@pytest.mark.parametrize(
    "target",
    ["ftp://x.example.com/", "mailto:not-an-address", "mailto:a@b.example.com\r\nBcc: x@y.com", "https://", 7],
)
def test_a_bad_target_is_refused_naming_the_field(tmp_path: Path, target: Any) -> None:
    raw = BASE | {"tasks": {"tasks.report": {"notify": [target]}}}
    with pytest.raises(SpecError, match=r"tasks\.\"tasks\.report\"\.notify\[0\]"):
        parse_spec(raw, tmp_path / "kvern.toml")


def test_clear_smtp_is_only_for_localhost(tmp_path: Path) -> None:
    raw = BASE | {"notify": {"smtp": {"host": "smtp.example.com", "sender": "r@example.com", "security": "none"}}}
    with pytest.raises(SpecError, match="only for localhost"):
        parse_spec(raw, tmp_path / "kvern.toml")


def test_a_submission_names_mail_targets_and_webhooks_only_when_the_spec_allows(tmp_path: Path) -> None:
    smtp = SmtpSpec(host="127.0.0.1", sender="r@example.com")
    (tmp_path / "key").write_text("k")
    closed = NotifySpec(webhook_key_file=tmp_path / "key", smtp=smtp)
    assert parse_notify(["mailto:ada@example.com"], closed) == ("mailto:ada@example.com",)
    with pytest.raises(SubmitError, match="submission_webhooks") as refused:
        parse_notify(["https://evil.example.com/"], closed)
    assert refused.value.status == 400
    opened = NotifySpec(webhook_key_file=tmp_path / "key", smtp=smtp, submission_webhooks=True)
    assert parse_notify(["https://hooks.example.com/"], opened) == ("https://hooks.example.com/",)
    with pytest.raises(SubmitError, match="smtp"):
        parse_notify(["mailto:ada@example.com"], NotifySpec())
    with pytest.raises(SubmitError):
        parse_notify("mailto:ada@example.com", closed)  # a list, not a string


def test_a_job_carries_its_tasks_targets_and_its_submissions_own(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k")
    raw = BASE | {
        "tasks": {"tasks.report": {"notify": ["https://hooks.example.com/x"]}},
        "notify": {"webhook_key_file": "key", "smtp": {"host": "127.0.0.1", "sender": "r@example.com"}},
    }
    spec = parse_spec(raw, tmp_path / "kvern.toml")
    submission = Submission("tasks.report", [], {}, "hash", notify=("mailto:ada@example.com",))
    assert new_job(spec, submission, None).notify == ("https://hooks.example.com/x", "mailto:ada@example.com")
    assert new_job(spec, replace(submission, task="tasks.other", notify=()), None).notify == ()


def test_the_readme_verification_snippet_accepts_kvern_signatures_only() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = readme.split("Verifying a webhook", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    body = b'{"id":"x","status":"succeeded"}'
    header = signature(KEY, int(time.time()), body)
    assert namespace["verify"](KEY, header, body)
    assert not namespace["verify"](KEY, header, body + b" ")
    assert not namespace["verify"](b"another key", header, body)


def test_the_signing_key_is_the_key_files_content_without_its_final_newline(tmp_path: Path) -> None:
    key_file = tmp_path / "webhook.key"
    key_file.write_bytes(b"c2VjcmV0LWtleQ==\n")  # as `base64 > file` writes it
    assert NotifySpec(webhook_key_file=key_file).webhook_key() == b"c2VjcmV0LWtleQ=="


def test_two_controllers_on_one_store_announce_a_job_once(store: JobStore, receiver: Receiver, key_file: Path) -> None:
    finished_job(store, (receiver.url,))
    first, second = outbox(store, key_file), outbox(store, key_file)
    [seen_by_both] = first.deliveries.owed(time.time())
    assert second.tick() == 1  # the second one is quicker
    assert first._announce(seen_by_both, time.time()) == 0  # the first finds it taken
    assert len(receiver.requests) == 1


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_every_target_the_openapi_document_allows_is_accepted(data: st.DataObject) -> None:
    """A fuzzer (schemathesis) sends what the schema allows and expects it accepted."""
    notify = NotifySpec(webhook_key_file=Path(__file__), smtp=SmtpSpec("127.0.0.1", "r@example.com"))
    allowed = notify_schema(replace(notify, submission_webhooks=True))["items"]["pattern"]
    target = data.draw(st.from_regex(allowed, fullmatch=True).filter(lambda t: len(t) <= MAX_TARGET_CHARS))
    expected = (target,)
    if target.startswith("http"):
        assert parse_notify([target], replace(notify, submission_webhooks=True)) == expected
    else:
        assert parse_notify([target], notify) == expected
    assert notify_schema(NotifySpec())["maxItems"] == 0  # nothing configured: nothing allowed


def test_kvern_submit_records_the_submissions_targets_for_the_outbox(store: JobStore, tmp_path: Path) -> None:
    (tmp_path / "notify_shop_tasks.py").write_text(
        'from celery import Celery\napp = Celery("shop")\n\n@app.task\ndef report(user_id: int) -> str:\n'
        '    return f"report-{user_id}"\n'
    )
    (tmp_path / "kvern.toml").write_text(
        '[app]\ntasks = "notify_shop_tasks"\n\n[[pools]]\nname = "main"\n\n'
        '[notify.smtp]\nhost = "127.0.0.1"\nsender = "r@example.com"\n'
    )
    spec = load_spec(tmp_path / "kvern.toml")
    _, catalog = load_user_app(spec)
    submitter = Submitter(spec, catalog, store, StubBlockingPublisher())
    try:
        handle = submitter.submit("report", [42], notify=["mailto:ada@example.com"])
        with pytest.raises(SubmitError, match="webhook"):
            submitter.submit("report", [43], notify=["https://hooks.example.com/"])
    finally:
        submitter.close()  # its background marks land before the store goes
    claim = store.claim_attempt(handle.id, "w1")
    store.record_success(handle.id, claim.attempt, "report-42")
    [owed] = DeliveryLog(store.engine).owed(time.time())
    assert (owed.job.id, owed.targets) == (handle.id, ("mailto:ada@example.com",))
