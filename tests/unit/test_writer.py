"""The node's store writer (worker/writer.py) and a task process's client of it (worker/writer_client.py), over a
real unix socket and a real SQLite store; and a guarded Celery task (eager) writing through them."""

from __future__ import annotations

import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from celery import Celery

import kvern
from kvern.errors import StoreUnavailable
from kvern.jobs.base import ArtifactsTooLarge, JobStoreProtocol
from kvern.jobs.batch import Answer, SaveSpooledArtifact, WorkerOp
from kvern.jobs.records import Claim, NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.spec import TaskPolicy
from kvern.worker.deferred_ack import deferred_ack_request
from kvern.worker.execution import guard_task
from kvern.worker.writer import FORGET_KEY, NodeWriter, send_frame, socket_path_for
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
        client = WriterClient(writer.path, writer.spool)
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
        client = WriterClient(writer.path, writer.spool)
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
        client = WriterClient(writer.path, writer.spool)
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
    client = WriterClient(tmp_path / "nobody.sock", tmp_path)
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
        client = WriterClient(writer.path, writer.spool)
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
    guard_task(task, WriterClient(writer.path, writer.spool), TaskPolicy(queue="default"), WORKER)
    job_id = submit(store)

    # when the job is delivered
    task.apply(args=(21,), task_id=job_id)
    app.close()

    # then its progress, its cancel check and its outcome all went through the writer
    job = store.get(job_id)
    assert job is not None and (job.status, job.result) == (JobStatus.SUCCEEDED, 42)
    assert seen == {"cancelled": False, "progress": 50}
    assert writer.ops == 5  # claim, began, progress, cancel check, success


# -- deferred outcomes and acks (a pool with prefetch above 1) -----------------------------------------------------


class Gated:
    """A store whose batches wait for `gate`: what a test needs to look between an outcome's hand-over and its
    commit."""

    def __init__(self, inner: JobStoreProtocol) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()

    def write_batch(self, ops: list[WorkerOp]) -> list[Answer]:
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        return self.inner.write_batch(ops)


def test_a_deferred_outcome_is_handed_over_at_once_and_its_ack_waits_for_its_commit(
    store: JobStore, tmp_path: Path
) -> None:
    # given a claimed job, and a writer whose next batch waits for the test
    gated = Gated(store)
    writer = running_writer(gated, tmp_path / "d.sock")
    try:
        client = WriterClient(writer.path, writer.spool, defer_outcomes=True)
        job_id = submit(store)
        claim = client.claim_attempt(job_id, WORKER)
        gated.gate.clear()

        # when the child hands its success over, and the node asks to ack once it committed
        assert client.record_success(job_id, claim.attempt, "done") is True
        seen_at_ack: list[JobStatus | None] = []
        acked = threading.Event()

        def ack() -> None:
            job = store.get(job_id)
            seen_at_ack.append(job.status if job else None)
            acked.set()

        writer.after_commit(ack)

        # then the child was answered while nothing is committed, and the ack waits
        running = store.get(job_id)
        assert running is not None and running.status is JobStatus.RUNNING
        assert not acked.wait(timeout=0.3)

        # and once the batch commits, the ack comes, with the outcome already recorded
        gated.gate.set()
        assert acked.wait(timeout=10)
    finally:
        writer.close()
    assert seen_at_ack == [JobStatus.SUCCEEDED]


def test_an_ack_comes_with_no_further_op_to_carry_it(store: JobStore, writer: NodeWriter) -> None:
    # given a node whose last op was answered (its batch committed), then nothing more
    client = WriterClient(writer.path, writer.spool)
    client.claim_attempt(submit(store), WORKER)
    acked = threading.Event()

    # when an ack is asked for, it comes without another batch
    writer.after_commit(acked.set)
    assert acked.wait(timeout=5)
    assert writer.batches == 1


def test_a_deferred_outcome_whose_store_is_away_is_committed_once_it_is_back(store: JobStore, tmp_path: Path) -> None:
    # given a claimed job, and a store that goes away before its outcome is handed over
    away = AwayStore(store)
    away.away = False
    writer = running_writer(away, tmp_path / "a.sock")
    try:
        client = WriterClient(writer.path, writer.spool, defer_outcomes=True)
        job_id = submit(store)
        claim = client.claim_attempt(job_id, WORKER)
        away.away = True

        # when the child hands over a failure
        client.record_failure(job_id, claim.attempt, "boom", JobStatus.FAILED, "trace")
        acked = threading.Event()
        writer.after_commit(acked.set)

        # then no ack while the store is away (the node dying now leaves the message to be delivered again)
        assert not acked.wait(timeout=0.5)
        away.away = False

        # and once it is back, the writer commits the held outcome and the ack follows
        assert acked.wait(timeout=10)
    finally:
        writer.close()
    job = store.get(job_id)
    assert job is not None and (job.status, job.error) == (JobStatus.FAILED, "boom")


def test_deferred_outcomes_of_many_children_share_batches_with_their_next_claims(
    store: JobStore, tmp_path: Path
) -> None:
    # given four children that each run five jobs in a row, handing outcomes over without waiting
    writer = running_writer(JobStore(store.url, persistent=True), tmp_path / "m.sock", flush_ms=5.0)
    jobs = [[submit(store) for _ in range(5)] for _ in range(4)]
    start = threading.Barrier(len(jobs))

    def child(mine: list[str]) -> None:
        client = WriterClient(writer.path, writer.spool, defer_outcomes=True)
        start.wait()
        for job_id in mine:
            claim = client.claim_attempt(job_id, WORKER)
            client.record_success(job_id, claim.attempt, job_id)

    try:
        threads = [threading.Thread(target=child, args=(mine,)) for mine in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        acked = threading.Event()
        writer.after_commit(acked.set)
        assert acked.wait(timeout=10)
    finally:
        writer.close()

    # then every outcome is recorded, in fewer commits than writes
    for job_id in (j for mine in jobs for j in mine):
        job = store.get(job_id)
        assert job is not None and (job.status, job.result) == (JobStatus.SUCCEEDED, job_id)
    assert writer.ops == 40
    assert writer.batches < 40


class FakeRequest:
    """Celery's Request as far as its ack goes."""

    acknowledged = False

    def __init__(self) -> None:
        self.acks: list[Any] = []
        self._connection_errors = (OSError,)

    def _on_ack(self, logger: Any, errors: Any) -> None:
        self.acks.append(errors)


class FakeLoop:
    def __init__(self) -> None:
        self.scheduled: list[Any] = []

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.scheduled.append(callback)


class ManualCommits:
    def __init__(self) -> None:
        self.waiting: list[Any] = []

    def after_commit(self, callback: Any) -> None:
        self.waiting.append(callback)

    def commit(self) -> None:
        for callback in self.waiting:
            callback()
        self.waiting.clear()


def test_a_deferred_ack_request_acks_on_the_event_loop_after_the_commit_and_once() -> None:
    commits, loop = ManualCommits(), FakeLoop()
    request = deferred_ack_request(FakeRequest, commits, loop)()

    # when Celery acks (twice: a late failure path asks again)
    request.acknowledge()
    request.acknowledge()

    # then nothing is acked before the commit, and Celery sees it as acked already
    assert request.acknowledged and request.acks == [] and loop.scheduled == []
    commits.commit()
    # and the commit only schedules the ack on the loop, which then sends it once
    assert request.acks == [] and len(loop.scheduled) == 1
    loop.scheduled[0]()
    assert request.acks == [(OSError,)]


def test_deferred_acks_without_an_event_loop_are_refused_rather_than_sent_from_the_writer_thread(
    store: JobStore, writer: NodeWriter
) -> None:
    # given a task guarded for deferred acks, and a consumer with no event loop (no hub to ack on)
    app = Celery("kvern-writer-test", set_as_current=False)

    def work() -> None:
        return None

    task = app.task(name="tasks.work")(work)
    guard_task(task, WriterClient(writer.path, writer.spool), TaskPolicy(queue="default"), WORKER, commits=writer)

    class NoLoop:
        hub = None

    # when the worker builds the task's strategy, it refuses
    with pytest.raises(RuntimeError, match="event loop"):
        task.start_strategy(app, NoLoop())
    app.close()
    assert task.Request == "celery.worker.request:Request"


def test_deferred_acks_with_a_kombu_whose_call_soon_is_not_thread_safe_are_refused(
    store: JobStore, writer: NodeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Celery("kvern-writer-test", set_as_current=False)

    def work() -> None:
        return None

    task = app.task(name="tasks.work")(work)
    guard_task(task, WriterClient(writer.path, writer.spool), TaskPolicy(queue="default"), WORKER, commits=writer)
    monkeypatch.setattr(kombu, "VERSION", kombu.VERSION._replace(minor=6))

    class Loop:
        hub = FakeLoop()

    with pytest.raises(RuntimeError, match=r"kombu >= 5\.7"):
        task.start_strategy(app, Loop())
    app.close()


# -- artifacts, spooled to the writer ----------------------------------------------------------------------------


def _claimed(store: JobStore, client: WriterClient) -> tuple[str, int]:
    job_id = submit(store)
    return job_id, client.claim_attempt(job_id, WORKER).attempt


def test_an_artifact_reaches_the_store_through_the_writer_and_its_spool_file_is_removed(
    store: JobStore, writer: NodeWriter
) -> None:
    client = WriterClient(writer.path, writer.spool)
    job_id, attempt = _claimed(store, client)

    client.save_artifact(job_id, attempt, "report.pdf", "application/pdf", b"%PDF-1.7 tiny", max_total=1024)

    assert writer.ops == 2  # claim, artifact: the task process opened no store connection of its own
    assert client.record_success(job_id, attempt, None)
    assert store.artifact(job_id, "report.pdf") == ("application/pdf", b"%PDF-1.7 tiny")
    assert list(writer.spool.iterdir()) == []
    assert stat.S_IMODE(writer.spool.stat().st_mode) == 0o700


def test_an_artifact_over_the_cap_raises_artifacts_too_large_in_the_task_process(
    store: JobStore, writer: NodeWriter
) -> None:
    client = WriterClient(writer.path, writer.spool)
    job_id, attempt = _claimed(store, client)

    with pytest.raises(ArtifactsTooLarge):
        client.save_artifact(job_id, attempt, "big.bin", "application/octet-stream", b"x" * 100, max_total=10)

    assert client.record_success(job_id, attempt, None)
    assert store.artifact(job_id, "big.bin") is None
    assert list(writer.spool.iterdir()) == []


def test_the_writer_reads_no_file_outside_its_spool(store: JobStore, writer: NodeWriter, tmp_path: Path) -> None:
    client = WriterClient(writer.path, writer.spool)
    job_id, attempt = _claimed(store, client)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not an artifact")

    with pytest.raises(RuntimeError, match="spool"):
        client.call(SaveSpooledArtifact(job_id, attempt, "secret.txt", "text/plain", str(secret)))

    assert secret.exists()
    assert client.record_success(job_id, attempt, None)
    assert store.artifact(job_id, "secret.txt") is None


# -- began marks: sent, never answered ---------------------------------------------------------------------------


def test_a_began_mark_is_sent_without_an_answer_and_lands_with_the_next_batch(
    store: JobStore, writer: NodeWriter
) -> None:
    # given a job with no retries whose attempt a child holds, and that child's connection to the writer
    job_id = submit(store, max_attempts=1)
    client = WriterClient(writer.path, writer.spool)
    assert client.claim_attempt(job_id, WORKER) == Claim(True, 1, True)
    ops_before = writer.ops

    # when the child marks it began, then asks whether it was cancelled (an answer a stray True would spoil)
    client.mark_began(job_id, 1, 1764668400.0)
    cancelled = client.is_cancelled(job_id)

    # then the mark was not answered (the next call read its own answer) and it committed: a redelivery's claim
    # now counts the attempt and buries the job instead of giving the attempt back
    assert cancelled is False
    assert writer.ops == ops_before + 2
    assert store.claim_attempt(job_id, "other@host") == Claim(False, 1, True)


def test_a_refused_request_that_wants_no_answer_gets_none(store: JobStore, writer: NodeWriter) -> None:
    # given a child that sends a request the writer refuses, marked as wanting no answer
    job_id = submit(store)
    client = WriterClient(writer.path, writer.spool)
    send_frame(client._connection(), {"op": "drop_table", "job_id": job_id, FORGET_KEY: True})

    # when it then claims, then it reads the claim's answer, not the refusal
    assert client.claim_attempt(job_id, WORKER) == Claim(True, 1, True)
