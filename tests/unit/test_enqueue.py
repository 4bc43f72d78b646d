"""The app's own way in (kvern.submit, JobHandle, .delay() routed through kvern) over the in-memory store and a
stub publisher: refused before anything is recorded, withdrawn when the broker never confirms, idempotent."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from celery import Task

import kvern
from kvern.catalog import TaskCatalog, load_user_app
from kvern.constants import ENV_STATE_DIR, ROLE_WEB
from kvern.enqueue import install_in_web_head, process
from kvern.enqueue.intercept import route_tasks_through_kvern, unroute
from kvern.enqueue.submitter import Submitter
from kvern.errors import (
    BacklogFull,
    JobFailed,
    PublishError,
    RuntimeStateError,
    StoreUnavailable,
    SubmitError,
    Unavailable,
)
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.records import NewJob
from kvern.runtime_config import RuntimeConfig
from kvern.spec import Tiers, load_spec
from tests.unit.doubles import StubBlockingPublisher

TASKS = """
from celery import Celery
app = Celery("shop")

@app.task
def add(x: int, y: int = 0) -> int:
    return x + y

@app.task
def report(user_id: int) -> str:
    return f"report-{user_id}"
"""
SPEC = """
[app]
tasks = "shop_tasks"

[[pools]]
name = "main"
queues = ["main"]

[[pools]]
name = "reports"
queues = ["reports"]

[tasks."shop_tasks.report"]
queue = "reports"
retries = 2

[limits]
args_bytes = 200
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "shop_tasks.py").write_text(textwrap.dedent(TASKS))
    spec = tmp_path / "kvern.toml"
    spec.write_text(SPEC)
    return spec


@pytest.fixture
def submitter(project: Path) -> Submitter:
    spec = load_spec(project)
    _, catalog = load_user_app(spec)
    return Submitter(spec, catalog, MemoryJobStore(), StubBlockingPublisher())


def parts(submitter: Submitter) -> tuple[MemoryJobStore, StubBlockingPublisher]:
    store, publisher = submitter.store, submitter.publisher
    assert isinstance(store, MemoryJobStore) and isinstance(publisher, StubBlockingPublisher)
    return store, publisher


def finish(store: MemoryJobStore, job_id: str, result: Any = None, error: str | None = None) -> None:
    """What a worker would record: one attempt that succeeds with `result`, or fails for good with `error`."""
    claim = store.claim_attempt(job_id, "worker-1")
    if error is None:
        store.record_success(job_id, claim.attempt, result)
    else:
        from kvern.jobs.states import JobStatus  # noqa: PLC0415

        store.record_failure(job_id, claim.attempt, error, JobStatus.FAILED)


# -- submit -------------------------------------------------------------------------------------------------


def test_a_submitted_job_is_recorded_published_and_marked_published(submitter: Submitter) -> None:
    store, publisher = parts(submitter)
    handle = submitter.submit("shop_tasks.report", [42])
    assert publisher.published == [(handle.id, "shop_tasks.report", "reports")]
    submitter.marker.flush()  # confirmed jobs are marked published in batches, off the caller's path
    job = store.get(handle.id)
    assert job is not None and job.published_at is not None
    assert job.args == [42] and job.max_attempts == 3  # the spec's retries = 2
    assert handle.url == f"/api/v1/jobs/{handle.id}"
    assert handle.status() == "queued" and handle.progress == 0


def test_the_task_object_and_its_short_name_are_accepted(submitter: Submitter) -> None:
    add: Task = submitter.catalog.tasks["shop_tasks.add"]
    by_object = submitter.submit(add, (1,), {"y": 2})
    by_short_name = submitter.submit("add", [1])
    assert by_object.view()["task"] == by_short_name.view()["task"] == "shop_tasks.add"
    assert by_object.view()["kwargs"] == {"y": 2}


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "status", "code"),
    [
        ("shop_tasks.nope", [1], {}, 404, "unknown_task"),
        ("shop_tasks.add", [], {}, 422, "bad_arguments"),
        ("shop_tasks.add", [1], {"z": 3}, 422, "bad_arguments"),
        ("shop_tasks.add", ["x" * 300], {}, 400, "args_too_large"),
        ("shop_tasks.add", [object()], {}, 400, "invalid_request"),
        ("shop_tasks.add", [float("nan")], {}, 400, "invalid_request"),
    ],
)
def test_a_refused_submission_raises_before_anything_is_recorded(
    submitter: Submitter, task: str, args: list[Any], kwargs: dict[str, Any], status: int, code: str
) -> None:
    store, publisher = parts(submitter)
    with pytest.raises(SubmitError) as refused:
        submitter.submit(task, args, kwargs)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert store.jobs == {} and publisher.published == []


def test_a_task_of_another_app_is_refused(submitter: Submitter) -> None:
    other = Task()
    other.name = "elsewhere.add"
    with pytest.raises(SubmitError, match="not a task of the instance's app"):
        submitter.submit(other, [1])


@pytest.mark.parametrize("failure", [PublishError("broker unavailable"), BacklogFull("queue 'reports' is full")])
def test_an_unconfirmed_job_is_withdrawn_and_raises_unavailable(submitter: Submitter, failure: Exception) -> None:
    store, publisher = parts(submitter)
    publisher.failure = failure
    with pytest.raises(Unavailable):
        submitter.submit("report", [1])
    assert store.jobs == {}


def test_a_job_claimed_while_its_confirm_was_lost_is_accepted(submitter: Submitter) -> None:
    store, publisher = parts(submitter)
    publisher.failure = PublishError("confirm lost")

    def reached_a_worker(job_id: str) -> None:
        store.claim_attempt(job_id, "worker-1")

    publisher.while_unconfirmed = reached_a_worker
    handle = submitter.submit("report", [1])
    assert handle.status() == "running"


class DownStore(MemoryJobStore):
    def create_job(self, new: NewJob) -> Any:
        raise StoreUnavailable("job store unavailable: connection refused")

    def create_jobs(self, news: Sequence[NewJob]) -> Any:
        raise StoreUnavailable("job store unavailable: connection refused")


def test_a_store_that_is_down_raises_unavailable_and_nothing_is_published(submitter: Submitter) -> None:
    down = Submitter(submitter.spec, submitter.catalog, DownStore(), StubBlockingPublisher())
    with pytest.raises(Unavailable, match="job store unavailable"):
        down.submit("report", [1])
    with pytest.raises(Unavailable, match="job store unavailable"):
        down.submit("report", [1], idempotency_key="k-1")
    assert parts(down)[1].published == []


def test_published_marks_are_written_in_the_background_in_batches(submitter: Submitter) -> None:
    store, _ = parts(submitter)
    handles = [submitter.submit("add", [n]) for n in range(5)]
    deadline = time.monotonic() + 5
    while any(store.jobs[handle.id]["published_at"] is None for handle in handles):
        assert time.monotonic() < deadline, "the marks were never written"
        time.sleep(0.01)


def test_threads_that_submit_at_once_share_commits_and_each_gets_its_own_job(submitter: Submitter) -> None:
    store, publisher = parts(submitter)
    commits: list[int] = []
    record_batch = store.create_jobs

    def slow_commit(news: Sequence[NewJob]) -> Any:
        commits.append(len(news))
        time.sleep(0.02)  # a commit takes a while: the threads arriving meanwhile wait for the next one
        return record_batch(news)

    store.create_jobs = slow_commit  # type: ignore[method-assign]
    with ThreadPoolExecutor(8) as pool:
        handles = list(pool.map(lambda n: submitter.submit("add", [n]), range(40)))
    assert [handle.view()["args"] for handle in handles] == [[n] for n in range(40)]
    assert len({handle.id for handle in handles}) == 40 == len(publisher.published) == sum(commits)
    assert len(commits) < 40  # some commits held several jobs


# -- idempotency --------------------------------------------------------------------------------------------


def test_the_same_key_and_request_return_the_same_job_published_once(submitter: Submitter) -> None:
    _, publisher = parts(submitter)
    first = submitter.submit("report", [7], idempotency_key="order-7")
    again = submitter.submit("report", [7], idempotency_key="order-7")
    assert again.id == first.id and len(publisher.published) == 1


def test_the_same_key_with_another_request_is_a_conflict(submitter: Submitter) -> None:
    first = submitter.submit("report", [7], idempotency_key="order-7")
    with pytest.raises(SubmitError) as refused:
        submitter.submit("report", [8], idempotency_key="order-7")
    assert (refused.value.status, refused.value.code) == (409, "idempotency_conflict")
    assert first.id in refused.value.message


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_an_idempotency_key_out_of_bounds_is_refused(submitter: Submitter, key: str) -> None:
    with pytest.raises(SubmitError) as refused:
        submitter.submit("report", [1], idempotency_key=key)
    assert refused.value.code == "invalid_idempotency_key"


# -- the handle ---------------------------------------------------------------------------------------------


def test_result_waits_for_the_outcome(submitter: Submitter) -> None:
    store, _ = parts(submitter)
    handle = submitter.submit("add", [1, 2])
    with pytest.raises(TimeoutError, match="still queued"):
        handle.result(timeout=0.1)
    finish(store, handle.id, result=3)
    assert handle.result(timeout=1) == 3 and handle.get(timeout=1) == 3
    assert handle.ready() and handle.view()["status"] == "succeeded" and handle.refresh()["result"] == 3


def test_result_of_a_failed_job_raises_job_failed(submitter: Submitter) -> None:
    store, _ = parts(submitter)
    handle = submitter.submit("add", [1, 2])
    finish(store, handle.id, error="ValueError: no")
    with pytest.raises(JobFailed) as failed:
        handle.result(timeout=1)
    assert (failed.value.status, failed.value.error) == ("failed", "ValueError: no")


def test_artifacts_are_listed_and_read(submitter: Submitter) -> None:
    store, _ = parts(submitter)
    handle = submitter.submit("report", [1])
    claim = store.claim_attempt(handle.id, "worker-1")
    store.save_artifact(handle.id, claim.attempt, "report.pdf", "application/pdf", b"%PDF-1.4")
    store.record_success(handle.id, claim.attempt, "report-1")
    assert handle.artifacts() == ["report.pdf"]
    assert handle.artifact("report.pdf") == ("application/pdf", b"%PDF-1.4")
    assert handle.artifact_url("report.pdf") == f"/api/v1/jobs/{handle.id}/artifacts/report.pdf"
    with pytest.raises(KeyError):
        handle.artifact("missing.pdf")


async def test_asubmit_submits_and_aresult_waits_without_blocking_the_loop(submitter: Submitter) -> None:
    handle = await submitter.asubmit("add", [1], {"y": 1})
    assert handle.status() == "queued" and parts(submitter)[1].published[0][0] == handle.id
    waiting = asyncio.create_task(handle.aresult(timeout=5))
    await asyncio.sleep(0.1)  # the loop runs on while the handle waits
    finish(parts(submitter)[0], handle.id, result=2)
    assert await waiting == 2


# -- .delay() and .apply_async() ----------------------------------------------------------------------------


@pytest.fixture
def routed(submitter: Submitter) -> Iterator[TaskCatalog]:
    route_tasks_through_kvern(submitter.catalog, submitter, submitter.spec.queue_for)
    yield submitter.catalog
    unroute(submitter.catalog)


def test_delay_and_apply_async_submit_through_kvern(submitter: Submitter, routed: TaskCatalog) -> None:
    store, publisher = parts(submitter)
    report, add = routed.tasks["shop_tasks.report"], routed.tasks["shop_tasks.add"]
    delayed = report.delay(42)
    applied = add.apply_async(args=[1], kwargs={"y": 2}, queue="main", retry=True)
    keyed = add.apply_async((5,), idempotency_key="k-5", subject="user:5")
    assert [entry[0] for entry in publisher.published] == [delayed.id, applied.id, keyed.id]
    assert store.get(delayed.id) is not None and delayed.status() == "queued"
    assert applied.view()["kwargs"] == {"y": 2} and keyed.view()["subject"] == "user:5"
    assert add.apply_async((5,), idempotency_key="k-5", subject="user:5").id == keyed.id
    signed = add.s(7, y=1).delay()  # a signature's delay() ends in the task's apply_async
    assert signed.view()["args"] == [7] and publisher.published[-1][0] == signed.id


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda task: task.delay(), "bad_arguments"),
        (lambda task: task.delay(1, 2, 3), "bad_arguments"),
        (lambda task: task.apply_async((1,), countdown=10), "unsupported_option"),
        (lambda task: task.apply_async((1,), queue="reports"), "unsupported_option"),
        (lambda task: task.apply_async((1,), link=object()), "unsupported_option"),
    ],
)
def test_a_routed_call_kvern_cannot_honour_raises_before_anything_is_recorded(
    submitter: Submitter, routed: TaskCatalog, call: Any, code: str
) -> None:
    store, publisher = parts(submitter)
    with pytest.raises(SubmitError) as refused:
        call(routed.tasks["shop_tasks.add"])
    assert refused.value.code == code
    assert store.jobs == {} and publisher.published == []


def test_unroute_gives_the_tasks_back_their_celery_methods(submitter: Submitter) -> None:
    add = submitter.catalog.tasks["shop_tasks.add"]
    celery_delay = type(add).delay
    route_tasks_through_kvern(submitter.catalog, submitter, submitter.spec.queue_for)
    assert "delay" in vars(add)
    unroute(submitter.catalog)
    assert "delay" not in vars(add) and type(add).delay is celery_delay


# -- the process's submitter, from the runtime config ---------------------------------------------------------


@pytest.fixture
def state_dir(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime config as `kvern up` writes it, whose broker refuses connections (nothing listens there)."""
    state = tmp_path / "state"
    state.mkdir()
    snapshot = state / "spec.toml"
    snapshot.write_text(project.read_text())
    closed = "amqp://web:secret@127.0.0.1:1//"
    RuntimeConfig(
        spec_path=str(project),
        spec_snapshot=str(snapshot),
        state_dir=str(state),
        instance="shop-test",
        front_door_port=1,
        store_url=f"sqlite:///{state / 'jobs.sqlite3'}",
        broker_urls={ROLE_WEB: closed},
        management_url=None,
        management_auth=None,
        private_broker=True,
        only=Tiers(),
    ).save()
    monkeypatch.setenv(ENV_STATE_DIR, str(state))
    process.forget()
    yield state
    unroute(process.loaded().catalog)
    process.forget()


def test_without_the_state_dir_submit_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_STATE_DIR, raising=False)
    process.forget()
    with pytest.raises(RuntimeStateError, match=ENV_STATE_DIR):
        kvern.submit("add", 1)


def test_a_web_head_routes_delay_and_a_broker_away_raises_unavailable_with_nothing_kept(state_dir: Path) -> None:
    install_in_web_head()
    submitter = process.current_submitter()
    submitter.store.create_schema()
    add = process.loaded().catalog.tasks["shop_tasks.add"]
    with pytest.raises(Unavailable, match="broker unavailable"):
        add.delay(1, y=2)
    with pytest.raises(Unavailable):
        kvern.submit("add", 1)
    assert submitter.store.list_jobs(None, 10) == []
    with pytest.raises(SubmitError):
        add.delay("too", "many", "args")


def test_a_forked_child_makes_its_own_connections(state_dir: Path) -> None:
    parent = process.current_submitter()
    assert process.current_submitter() is parent  # one per process
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (gunicorn's preload forks its workers like this)
        try:
            child = process.current_submitter()
            fresh = child is not parent and child.publisher is not parent.publisher
            os.write(writing, b"own" if fresh and child.catalog is parent.catalog else b"shared")
        finally:
            os._exit(0)
    os.close(writing)
    answer = os.read(reading, 10)
    os.waitpid(pid, 0)
    assert answer == b"own"  # new connections, the catalog loaded once
    assert process.current_submitter() is parent


def test_the_public_api_is_what_all_exports() -> None:
    assert sorted(kvern.__all__) == sorted(
        [
            *("JobFailed", "JobHandle", "JobInfo", "JobNotFound", "KvernError", "PermanentError", "SubmitError"),
            *("Unavailable", "asubmit", "cancelled", "current_job", "job", "progress", "save_artifact", "submit"),
        ]
    )
    assert all(getattr(kvern, name) is not None for name in kvern.__all__)
    assert issubclass(StoreUnavailable, kvern.Unavailable) and issubclass(PublishError, kvern.Unavailable)
    assert json.dumps(kvern.Unavailable.status) == "503"
