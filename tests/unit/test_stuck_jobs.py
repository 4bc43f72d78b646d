"""The controller's recovery of stuck jobs: running jobs that no attempt works on, found by the spec's limits."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from kvern.broker import relay
from kvern.constants import DEFAULT_TIME_LIMIT_S
from kvern.jobs.records import Job, NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.spec import PoolSpec, Spec, TaskPolicy, WebSpec

SHORT_LIMIT_S = 10.0


@pytest.fixture
def spec(tmp_path: Path) -> Spec:
    return Spec(
        path=tmp_path / "kvern.toml",
        name="t",
        tasks_module="tasks",
        web=WebSpec(),
        pools=(PoolSpec(name="main", queues=("main",)),),
        tasks={"tasks.short": TaskPolicy(queue="main", time_limit=SHORT_LIMIT_S)},
    )


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for the broker (empty queues): the ids of the jobs published, marked published as a confirm would."""
    sent: list[str] = []

    def publish(_url: str, jobs: list[Job], store: JobStore) -> None:
        sent.extend(job.id for job in jobs)
        store.mark_published([job.id for job in jobs])

    monkeypatch.setattr(relay, "publish_jobs", publish)
    monkeypatch.setattr(relay, "queue_depths", lambda _url, queues: {q: {"ready": 0, "consumers": 1} for q in queues})
    return sent


def running(store: JobStore, task: str, max_attempts: int = 3) -> str:
    job_id = str(uuid.uuid4())
    store.create_job(NewJob(id=job_id, task=task, queue="main", args=[], kwargs={}, max_attempts=max_attempts))
    store.claim_attempt(job_id, "w1")
    return job_id


def status(store: JobStore, job_id: str) -> JobStatus:
    job = store.get(job_id)
    assert job is not None
    return job.status


def test_an_attempt_past_its_own_tasks_hard_limit_ends_dead_and_is_not_published_again(
    job_store: JobStore, spec: Spec, published: list[str]
) -> None:
    # given a running job of a task with a 10 s limit, and one of a task with the default limit
    short, default = running(job_store, "tasks.short"), running(job_store, "tasks.other")

    # when the controller looks within the short task's limit plus the margin: nothing is stuck
    assert relay.recover_stuck_jobs(job_store, spec, "amqp://unused", now=time.time() + SHORT_LIMIT_S) == 0

    # when it looks past it (but within the default limit)
    later = time.time() + SHORT_LIMIT_S + relay.STUCK_MARGIN_S + 1
    assert relay.recover_stuck_jobs(job_store, spec, "amqp://unused", now=later) == 1

    # then only the short task's job ends dead, with the reason, and no second copy of its message is sent (a
    # frozen worker may still hold the first): attempts left or not; the other keeps running
    assert published == []
    assert status(job_store, short) is JobStatus.DEAD
    assert status(job_store, default) is JobStatus.RUNNING
    assert "outlived its hard time limit (10s)" in (job_store.history(short)[0].error or "")
    # and past the default limit the other one is recovered too, and both can be replayed
    much_later = time.time() + DEFAULT_TIME_LIMIT_S + relay.STUCK_MARGIN_S + 1
    assert relay.recover_stuck_jobs(job_store, spec, "amqp://unused", now=much_later) == 1
    assert status(job_store, default) is JobStatus.DEAD
    assert job_store.replay(short) is not None and job_store.replay(default) is not None


def test_an_overdue_retry_is_queued_again_only_when_its_queue_holds_nothing(
    job_store: JobStore, spec: Spec, published: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a job whose retry was due long ago, with attempts left
    job_id = running(job_store, "tasks.other", max_attempts=3)
    job_store.record_retry(job_id, 1, "flaky", delay_s=0)
    overdue = time.time() + relay.RETRY_OVERDUE_S + 1
    ready = {"main": 5}
    monkeypatch.setattr(
        relay, "queue_depths", lambda _url, queues: {q: {"ready": ready[q], "consumers": 1} for q in queues}
    )

    # when its queue still holds messages (the retry may be waiting behind them): it is left alone
    assert relay.recover_stuck_jobs(job_store, spec, "amqp://unused", now=overdue) == 0
    assert status(job_store, job_id) is JobStatus.RUNNING and published == []

    # when the queue is empty: it is queued again and published once
    ready["main"] = 0
    assert relay.recover_stuck_jobs(job_store, spec, "amqp://unused", now=overdue) == 1
    assert published == [job_id]
    assert status(job_store, job_id) is JobStatus.QUEUED


def test_an_overdue_retry_with_no_attempts_left_ends_dead_with_the_reason(
    job_store: JobStore, spec: Spec, published: list[str]
) -> None:
    # given a job on its last attempt, whose retry (say, lost by the broker) was due now
    job_id = running(job_store, "tasks.other", max_attempts=1)
    job_store.record_retry(job_id, 1, "flaky", delay_s=0)

    # when the controller looks while the retry may still be on its way: nothing
    assert relay.recover_stuck_jobs(job_store, spec, "amqp://unused", now=time.time() + 5) == 0
    # when the retry is long overdue
    overdue = time.time() + relay.RETRY_OVERDUE_S + 1
    assert relay.recover_stuck_jobs(job_store, spec, "amqp://unused", now=overdue) == 1

    # then it is dead, says why, was not published, and `dlq replay` can take it
    job = job_store.get(job_id)
    assert job is not None and job.status is JobStatus.DEAD
    assert "stuck: the retry after attempt 1 was due" in (job.error or "")
    assert published == []
    assert job_store.replay(job_id) is not None


def test_a_job_waiting_for_its_retry_or_running_within_its_limit_is_left_alone(
    job_store: JobStore, spec: Spec, published: list[str]
) -> None:
    backing_off = running(job_store, "tasks.short")
    job_store.record_retry(backing_off, 1, "flaky", delay_s=3600)
    working = running(job_store, "tasks.other")

    # (200 s on: past the short task's limit, within the other's; the retry is due in an hour)
    assert relay.recover_stuck_jobs(job_store, spec, "amqp://unused", now=time.time() + 200) == 0

    assert (status(job_store, backing_off), status(job_store, working)) == (JobStatus.RUNNING, JobStatus.RUNNING)
    assert published == []
