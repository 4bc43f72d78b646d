"""`write_batch`, the store seam of a node's writer: the contract over all three stores, and what only the SQL
stores have (one commit per batch, all or nothing, a persistent connection)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event

from kvern.errors import StoreUnavailable
from kvern.jobs.base import NOT_BEGUN, JobStoreProtocol
from kvern.jobs.batch import (
    AttemptBegan,
    CheckCancelled,
    ClaimAttempt,
    RecordFailure,
    RecordProgress,
    RecordRetry,
    RecordSuccess,
    WorkerOp,
    answer_from_wire,
    answer_to_wire,
    op_from_wire,
    op_to_wire,
)
from kvern.jobs.records import Claim
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from tests.unit.test_job_store import get, submitted


def test_a_batch_answers_each_op_as_its_own_method_would(job_store: JobStoreProtocol) -> None:
    # given three queued jobs and one finished one
    a, b, c, done = (submitted(job_store) for _ in range(4))
    job_store.claim_attempt(done.id, "w0")
    job_store.record_success(done.id, 1, "old")

    # when one batch claims them all, then another records their outcomes
    claims = job_store.write_batch([ClaimAttempt(j.id, "node") for j in (a, b, c, done)])
    outcomes = job_store.write_batch(
        [
            RecordProgress(a.id, 1, 50, "half"),
            RecordSuccess(a.id, 1, {"n": 1}),
            RecordFailure(b.id, 1, "boom", JobStatus.FAILED, "tb"),
            RecordRetry(c.id, 1, "again", None, 0.0),
            CheckCancelled(c.id),
        ]
    )

    # then the queued jobs run their first attempt and the finished one is skipped
    assert claims == [Claim(True, 1, True), Claim(True, 1, True), Claim(True, 1, True), Claim(False, 1, True)]
    # and every write landed, fenced as on its own
    assert outcomes == [True, True, True, True, False]
    assert (get(job_store, a.id).status, get(job_store, a.id).result) == (JobStatus.SUCCEEDED, {"n": 1})
    assert get(job_store, b.id).status is JobStatus.FAILED
    assert get(job_store, c.id).status is JobStatus.RUNNING and get(job_store, c.id).retry_at is not None
    assert get(job_store, done.id).result == "old"


def test_a_batch_keeps_the_fence_between_its_own_ops(job_store: JobStoreProtocol) -> None:
    # given a job whose first attempt was lost and a second one claimed, in the same batch
    job = submitted(job_store)
    answers = job_store.write_batch(
        [
            ClaimAttempt(job.id, "w1"),
            ClaimAttempt(job.id, "w2"),
            RecordSuccess(job.id, 1, "late"),  # the first attempt's outcome, after it lost the job
            RecordSuccess(job.id, 2, "won"),
            RecordSuccess(job.id, 2, "again"),  # a duplicate of the winning write
        ]
    )

    # then only the current attempt's outcome is recorded, once
    assert answers[2:] == [False, True, False]
    assert get(job_store, job.id).result == "won"
    assert [a.outcome for a in job_store.history(job.id)] == ["superseded", "succeeded"]


def test_a_batch_mixing_plain_and_special_jobs_answers_each_as_alone(job_store: JobStoreProtocol) -> None:
    # given plain queued jobs, a job whose cancel was asked, one whose budget is spent, and an unknown id
    plain = [submitted(job_store) for _ in range(3)]
    asked = submitted(job_store)
    job_store.claim_attempt(asked.id, "w0")
    job_store.cancel(asked.id)
    spent = submitted(job_store, max_attempts=1)
    job_store.claim_attempt(spent.id, "w0")
    job_store.mark_began(spent.id, 1, time.time())  # it ran, and was lost with its process

    # when one batch claims them all, then one records successes of the plain ones and of the asked one
    claims = job_store.write_batch([ClaimAttempt(j.id, "n") for j in (*plain, asked, spent)] + [ClaimAttempt("x", "n")])
    ends = job_store.write_batch([RecordSuccess(j.id, 1, j.id) for j in plain] + [RecordSuccess(asked.id, 1, "late")])

    # then each got the answer its own call gives
    assert claims[:3] == [Claim(True, 1, True)] * 3
    assert claims[3:5] == [Claim(False, 1, True)] * 2
    assert claims[5] == Claim(True, 1, False)
    assert ends == [True, True, True, False]
    assert [get(job_store, j.id).result for j in plain] == [j.id for j in plain]
    assert get(job_store, asked.id).status is JobStatus.CANCELLED
    assert get(job_store, spent.id).status is JobStatus.DEAD
    assert [a.outcome for a in job_store.history(plain[0].id)] == ["succeeded"]


def test_a_batch_gives_back_a_claimed_attempt_that_never_began_as_alone(job_store: JobStoreProtocol) -> None:
    # given jobs allowed one attempt (no retries), each claimed ahead by a node that died: one never began, one
    # began (its mark committed), and one whose mark comes in the same batch as the next claim, after it
    never, ran, late = (submitted(job_store, max_attempts=1) for _ in range(3))
    job_store.write_batch([ClaimAttempt(j.id, "dead-node") for j in (never, ran, late)])
    job_store.write_batch([AttemptBegan(ran.id, 1, time.time())])

    # when their messages come back and another node's batch claims them
    claims = job_store.write_batch(
        [
            ClaimAttempt(never.id, "n"),
            ClaimAttempt(ran.id, "n"),
            ClaimAttempt(late.id, "n"),
            AttemptBegan(late.id, 1, 1.0),
        ]
    )

    # then the attempt that never began is given back: the job runs as attempt 2, with its budget one larger
    assert claims[0] == Claim(True, 2, True) and claims[0].max_attempts == 2
    assert (get(job_store, never.id).attempts, get(job_store, never.id).max_attempts) == (2, 2)
    first = job_store.history(never.id)[0]
    assert (first.outcome, first.error) == ("lost", NOT_BEGUN)
    # and the ones that began spent their only attempt: buried, as before (a mark counts wherever it is in a batch)
    assert claims[1:3] == [Claim(False, 1, True)] * 2
    assert get(job_store, ran.id).status is get(job_store, late.id).status is JobStatus.DEAD
    assert claims[3] is True


def test_an_empty_batch_does_nothing(job_store: JobStoreProtocol) -> None:
    assert job_store.write_batch([]) == []


@pytest.mark.parametrize(
    "op",
    [
        ClaimAttempt("j", "w"),
        AttemptBegan("j", 2, 1764668400.25),
        RecordSuccess("j", 2, {"a": [1, None]}),
        RecordFailure("j", 1, "e", JobStatus.DEAD, None),
        RecordRetry("j", 3, "e", "tb", 1.5),
        RecordProgress("j", 1, 40, None),
        CheckCancelled("j"),
    ],
)
def test_an_op_survives_the_wire(op: WorkerOp) -> None:
    assert op_from_wire(op_to_wire(op)) == op


def test_an_answer_survives_the_wire() -> None:
    claim = Claim(run=True, attempt=2, tracked=True, max_attempts=4)
    again = answer_from_wire(ClaimAttempt("j", "w"), answer_to_wire(claim))
    assert isinstance(again, Claim) and (again, again.max_attempts) == (claim, 4)
    assert answer_from_wire(CheckCancelled("j"), answer_to_wire(True)) is True


def test_an_unknown_op_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown writer op"):
        op_from_wire({"op": "drop_table", "job_id": "j"})


# -- SQL stores ---------------------------------------------------------------------------------------------


def count_events(store: JobStore, name: str) -> list[int]:
    seen: list[int] = []
    sa_event.listen(store.engine, name, lambda *_: seen.append(1))
    return seen


def test_a_batch_is_one_commit(sql_job_store: JobStore) -> None:
    # given ten queued jobs
    jobs = [submitted(sql_job_store) for _ in range(10)]
    commits = count_events(sql_job_store, "commit")

    # when a batch claims them all and another records their outcomes
    sql_job_store.write_batch([ClaimAttempt(j.id, "node") for j in jobs])
    sql_job_store.write_batch([RecordSuccess(j.id, 1, None) for j in jobs])

    # then it took two commits, not twenty
    assert len(commits) == 2
    assert {get(sql_job_store, j.id).status for j in jobs} == {JobStatus.SUCCEEDED}


def test_a_batch_of_plain_claims_and_successes_takes_a_few_statements(sql_job_store: JobStore) -> None:
    # given twenty queued jobs
    jobs = [submitted(sql_job_store) for _ in range(20)]
    statements: list[str] = []
    sa_event.listen(sql_job_store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    # when one batch claims them all and another marks them began and records their successes (a short task's
    # mark and outcome share a batch)
    sql_job_store.write_batch([ClaimAttempt(j.id, "node") for j in jobs])
    claimed = len(statements)
    marks: list[WorkerOp] = [AttemptBegan(j.id, 1, time.time()) for j in jobs]
    sql_job_store.write_batch(marks + [RecordSuccess(j.id, 1, None) for j in jobs])

    # then each batch took a handful of statements, not some per job
    assert claimed <= 6 and len(statements) - claimed <= 6, statements
    assert {get(sql_job_store, j.id).status for j in jobs} == {JobStatus.SUCCEEDED}
    assert [a.outcome for a in sql_job_store.history(jobs[-1].id)] == ["succeeded"]


class Exploding:
    """An op that fails the way a broken connection does, after the ops before it ran."""

    kind = "explode"
    job_id = "none"

    def apply(self, store: JobStoreProtocol) -> bool:
        raise StoreUnavailable("job store unavailable: connection lost")


def test_a_failed_batch_lands_nothing(sql_job_store: JobStore) -> None:
    # given a queued job
    job = submitted(sql_job_store)
    ops: list[Any] = [ClaimAttempt(job.id, "node"), Exploding()]

    # when a batch claims it, then fails before its commit
    with pytest.raises(StoreUnavailable):
        sql_job_store.write_batch(ops)

    # then the claim was rolled back with it: the redelivery claims attempt 1
    assert get(sql_job_store, job.id).status is JobStatus.QUEUED
    assert sql_job_store.write_batch([ClaimAttempt(job.id, "node")]) == [Claim(True, 1, True)]


@pytest.fixture
def persistent_sqlite(tmp_path: Path) -> Iterator[tuple[JobStore, JobStore]]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    plain, persistent = JobStore(url), JobStore(url, persistent=True)
    plain.create_schema()
    try:
        yield plain, persistent
    finally:
        persistent.close()
        plain.close()


def test_a_persistent_store_connects_once(persistent_sqlite: tuple[JobStore, JobStore]) -> None:
    # given a persistent store next to an ordinary one on the same database
    plain, persistent = persistent_sqlite
    connects = count_events(persistent, "connect")
    jobs = [submitted(plain) for _ in range(5)]

    # when it writes several batches
    for job in jobs:
        persistent.write_batch([ClaimAttempt(job.id, "node"), RecordSuccess(job.id, 1, "ok")])

    # then they all went over one connection, and the other store sees their outcomes
    assert len(connects) == 1
    assert {get(plain, j.id).status for j in jobs} == {JobStatus.SUCCEEDED}
