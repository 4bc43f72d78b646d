"""The node's store writer (worker/writer.py) and a task process's client of it (worker/writer_client.py), over a
real unix socket and a real SQLite store; and a guarded Celery task (eager) writing through them."""

from __future__ import annotations

import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import kvern
from kvern.errors import StoreUnavailable
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.batch import Answer, WorkerOp
from kvern.jobs.records import Claim, NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.spec import TaskPolicy
from kvern.worker.execution import guard_task
from kvern.worker.writer import NodeWriter, socket_path_for
from kvern.worker.writer_client import WriterClient

WORKER = "pool-0@test"


class AwayStore:
    """A store that cannot be reached, in front of a real one (artifacts)."""

    def __init__(self, inner: JobStoreProtocol) -> None:
        self.inner = inner
        self.away = True

    def write_batch(self, ops: Any) -> list[Answer]:
        if self.away:
            raise StoreUnavailable("job store unavailable: down for the test")
        return self.inner.write_batch(ops)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    store.create_schema()
    yield store
    store.close()


def running_writer(store: Any, path: Path, flush_ms: float = 2.0, flush_items: int = 64) -> NodeWriter:
    writer = NodeWriter(store, path, flush_ms, flush_items)
    writer.start()
    return writer


@pytest.fixture
def writer(store: JobStore, tmp_path: Path) -> Iterator[NodeWriter]:
    writer = running_writer(JobStore(store.url, persistent=True), tmp_path / "w.sock", flush_ms=20.0)
    yield writer
    writer.close()


def submit(store: JobStoreProtocol, max_attempts: int = 4) -> str:
    job_id = str(uuid.uuid4())
    store.create_job(NewJob(job_id, "tasks.work", "default", [], {}, max_attempts))
    return job_id


def test_children_claim_and_record_through_the_writer_in_shared_batches(store: JobStore, writer: NodeWriter) -> None:
    # given eight jobs and eight task processes (threads, each with its own connection)
    jobs = [submit(store) for _ in range(8)]
    answers: dict[str, tuple[Claim, bool]] = {}
    start = threading.Barrier(len(jobs))

    def child(job_id: str) -> None:
        client = WriterClient(writer.path, artifacts=store)
        start.wait()
        claim = client.claim_attempt(job_id, WORKER)
        answers[job_id] = (claim, client.record_success(job_id, claim.attempt, {"job": job_id}))

    threads = [threading.Thread(target=child, args=(job_id,)) for job_id in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # then every job ran its first attempt and its outcome is recorded
    assert answers == {job_id: (Claim(True, 1, True), True) for job_id in jobs}
    for job_id in jobs:
        job = store.get(job_id)
        assert job is not None and (job.status, job.result) == (JobStatus.SUCCEEDED, {"job": job_id})
    # and the sixteen writes took fewer commits than writes
    assert writer.ops == 16
    assert writer.batches < 16


def test_a_batch_waits_no_longer_than_its_flush_items(store: JobStore, tmp_path: Path) -> None:
    # given a writer that commits one op per batch
    writer = running_writer(JobStore(store.url, persistent=True), tmp_path / "one.sock", flush_items=1)
    try:
        client = WriterClient(writer.path, artifacts=store)
        job_id = submit(store)

        # when a child claims and records
        claim = client.claim_attempt(job_id, WORKER)
        client.record_success(job_id, claim.attempt, None)
    finally:
        writer.close()

    # then each write was its own batch
    assert (writer.batches, writer.ops) == (2, 2)


def test_the_socket_is_for_the_instance_user_only(writer: NodeWriter) -> None:
    assert stat.S_IMODE(writer.path.stat().st_mode) == 0o600


def test_a_store_away_is_store_unavailable_for_the_child_and_nothing_lands(store: JobStore, tmp_path: Path) -> None:
    # given a writer whose store cannot be reached
    away = AwayStore(store)
    writer = running_writer(away, tmp_path / "away.sock")
    try:
        client = WriterClient(writer.path, artifacts=store)
        job_id = submit(store)

        # when a child claims, the claim is refused as the store's own would be
        with pytest.raises(StoreUnavailable, match="down for the test"):
            client.claim_attempt(job_id, WORKER)
        queued = store.get(job_id)
        assert queued is not None and queued.status is JobStatus.QUEUED

        # and once the store is back, the same client's claim goes through
        away.away = False
        assert client.claim_attempt(job_id, WORKER) == Claim(True, 1, True)
    finally:
        writer.close()


def test_no_writer_is_store_unavailable(store: JobStore, tmp_path: Path) -> None:
    client = WriterClient(tmp_path / "nobody.sock", artifacts=store)
    with pytest.raises(StoreUnavailable, match="writer unavailable"):
        client.claim_attempt(submit(store), WORKER)


class Failing:
    """A store whose batches fail whenever they hold a claim of `bad`: the writer must isolate that op."""

    def __init__(self, inner: JobStoreProtocol, bad: str) -> None:
        self.inner, self.bad = inner, bad

    def write_batch(self, ops: list[WorkerOp]) -> list[Answer]:
        if any(getattr(op, "job_id", None) == self.bad for op in ops):
            raise RuntimeError("a broken op")
        return self.inner.write_batch(ops)


def test_one_failing_op_does_not_fail_the_others_of_its_batch(store: JobStore, tmp_path: Path) -> None:
    # given a writer whose store fails one job's writes, and two children writing at once
    good, bad = submit(store), submit(store)
    writer = running_writer(Failing(store, bad), tmp_path / "f.sock", flush_ms=50.0)
    results: dict[str, Any] = {}
    start = threading.Barrier(2)

    def child(job_id: str) -> None:
        client = WriterClient(writer.path, artifacts=store)
        start.wait()
        try:
            results[job_id] = client.claim_attempt(job_id, WORKER)
        except RuntimeError as exc:
            results[job_id] = exc

    try:
        threads = [threading.Thread(target=child, args=(j,)) for j in (good, bad)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        writer.close()

    # then the good claim landed and the bad one raised in its own child
    assert results[good] == Claim(True, 1, True)
    assert isinstance(results[bad], RuntimeError) and "a broken op" in str(results[bad])


def test_a_long_state_dir_gets_a_private_socket_dir(tmp_path: Path) -> None:
    short = socket_path_for(tmp_path, "p-0")
    long = socket_path_for(tmp_path / ("x" * 120), "p-0")
    assert short == tmp_path / "writer-p-0.sock"
    assert len(str(long)) < 100 and stat.S_IMODE(long.parent.stat().st_mode) == 0o700
    long.parent.rmdir()


def test_a_guarded_task_runs_and_records_through_the_writer(store: JobStore, writer: NodeWriter) -> None:
    # given a Celery task guarded with the writer's client, reporting progress and checking for a cancel
    app = Celery("kvern-writer-test", set_as_current=False)
    app.conf.task_always_eager = True
    seen: dict[str, Any] = {}

    def work(n: int) -> int:
        kvern.progress(50, "half")
        seen["cancelled"] = kvern.cancelled()
        job = kvern.current_job()
        assert job is not None
        seen["progress"] = store.get(job.job_id).progress  # type: ignore[union-attr]
        return n * 2

    task = app.task(name="tasks.work")(work)
    guard_task(task, WriterClient(writer.path, artifacts=store), TaskPolicy(queue="default"), WORKER)
    job_id = submit(store)

    # when the job is delivered
    task.apply(args=(21,), task_id=job_id)
    app.close()

    # then its progress, its cancel check and its outcome all went through the writer
    job = store.get(job_id)
    assert job is not None and (job.status, job.result) == (JobStatus.SUCCEEDED, 42)
    assert seen == {"cancelled": False, "progress": 50}
    assert writer.ops == 4  # claim, progress, cancel check, success
