"""Publisher contract, run over every publisher against the machine's RabbitMQ (guest on 127.0.0.1:5672).

The web heads' `JobPublisher` (aio-pika), the relay's `KombuPublisher` (kombu) and the app's
`ConfirmingPublisher` (kombu, `kvern.submit`) must put the same message on the queue: a Celery worker decodes
headers and body, and must not be able to tell who sent a job. Each test uses its own queue, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.message import Message

from kvern.broker import confirming
from kvern.broker.confirming import ConfirmingPublisher
from kvern.broker.message import (
    BlockingPublisherProtocol,
    JobPublisherProtocol,
    OneJobPublisherProtocol,
    job_message,
)
from kvern.broker.publisher import JobPublisher
from kvern.broker.relay import KombuPublisher
from kvern.constants import KVERN_JOB_HEADER
from kvern.errors import PublishError
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.records import Job, NewJob
from tests.integration.conftest import SYSTEM_BROKER

AIO_PIKA_URL = SYSTEM_BROKER.removesuffix("/")  # aio-pika names the default vhost "/", kombu "//"
Publish = Callable[[Job, MemoryJobStore], None]


def _publish_async(job: Job, store: MemoryJobStore) -> None:
    async def publish() -> None:
        publisher: JobPublisherProtocol = JobPublisher(AIO_PIKA_URL)
        try:
            await publisher.publish(job)
        finally:
            await publisher.close()
        store.mark_published([job.id])  # a web head marks the job once publish returned (api/published.py)

    asyncio.run(publish())


def _publish_blocking(job: Job, store: MemoryJobStore) -> None:
    publisher: BlockingPublisherProtocol = KombuPublisher(SYSTEM_BROKER)
    publisher.publish_jobs([job], store)


def _publish_confirming(job: Job, store: MemoryJobStore) -> None:
    publisher: OneJobPublisherProtocol = ConfirmingPublisher(SYSTEM_BROKER)
    try:
        publisher.publish(job)
    finally:
        publisher.close()
    store.mark_published([job.id])  # the submission core marks the job once publish returned (enqueue/core.py)


PUBLISHERS: dict[str, Publish] = {
    "aio-pika": _publish_async,
    "kombu": _publish_blocking,
    "kombu-confirming": _publish_confirming,
}


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"kvern-test-publish-{uuid.uuid4().hex}"
    with Connection(SYSTEM_BROKER, connect_timeout=5) as conn:
        Queue(name, durable=False, channel=conn.default_channel).declare()
    try:
        yield name
    finally:
        with Connection(SYSTEM_BROKER, connect_timeout=5) as conn:
            Queue(name, channel=conn.default_channel).delete()


def _recorded(store: MemoryJobStore, queue: str) -> Job:
    args: list[Any] = [7, "a", {"nested": [1.5, None]}]
    new = NewJob(str(uuid.uuid4()), "tasks.report", queue, args, {"fmt": "pdf", "pages": [1, 2]}, max_attempts=3)
    job, _ = store.create_job(new)
    return job


def _take(queue: str) -> Message:
    with Connection(SYSTEM_BROKER, connect_timeout=5) as conn:
        message: Message | None = Queue(queue, channel=conn.default_channel).get(no_ack=True)
    assert message is not None, f"nothing on {queue}"
    return message


def _as_a_worker_sees_it(message: Message) -> dict[str, Any]:
    properties = message.properties
    body = message.body  # kombu hands it decoded by its content_encoding, as Celery gets it
    return {
        "headers": message.headers,
        "body": body.encode() if isinstance(body, str) else body,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "correlation_id": properties.get("correlation_id"),
        "delivery_mode": properties.get("delivery_mode"),
        "priority": properties.get("priority"),
    }


@pytest.mark.parametrize("name", sorted(PUBLISHERS))
def test_a_published_job_is_a_celery_task_message_and_marked_published(name: str, queue: str) -> None:
    # given a recorded job
    store = MemoryJobStore()
    job = _recorded(store, queue)

    # when it is published
    PUBLISHERS[name](job, store)

    # then its queue holds a Celery protocol 2 message naming the job, persistent, and the job is published
    seen = _as_a_worker_sees_it(_take(queue))
    assert seen["headers"]["id"] == job.id and seen["headers"]["task"] == "tasks.report"
    assert seen["headers"][KVERN_JOB_HEADER] is True
    assert json.loads(seen["body"])[:2] == [job.args, job.kwargs]
    assert (seen["content_type"], seen["content_encoding"]) == ("application/json", "utf-8")
    assert seen["correlation_id"] == job.id and seen["delivery_mode"] == 2
    published = store.get(job.id)
    assert published is not None and published.published_at is not None


def test_every_publisher_puts_the_same_message_on_the_queue(queue: str) -> None:
    # given one recorded job
    store = MemoryJobStore()
    job = _recorded(store, queue)

    # when each publisher publishes it
    seen = {}
    for name, publish in PUBLISHERS.items():
        publish(job, store)
        seen[name] = _as_a_worker_sees_it(_take(queue))

    # then a worker receives the very same message from both, the one broker/message.py builds
    assert seen["aio-pika"] == seen["kombu"] == seen["kombu-confirming"]
    expected = job_message(job)
    assert seen["kombu"]["headers"] == expected.headers and seen["kombu"]["body"] == expected.body


def test_the_confirming_publisher_replaces_a_kept_connection_that_died(queue: str) -> None:
    # given: a publisher whose kept connection the broker dropped meanwhile (a restart, an idle timeout)
    store = MemoryJobStore()
    publisher = ConfirmingPublisher(SYSTEM_BROKER)
    try:
        publisher.publish(_recorded(store, queue))
        kept = publisher._idle[0].connection.connection  # the socket the broker would close
        kept.sock.shutdown(socket.SHUT_RDWR)
        # when: it publishes again
        job = _recorded(store, queue)
        publisher.publish(job)
    finally:
        publisher.close()
    # then: the message went out on a new connection, once
    assert _take(queue).headers["id"] != job.id
    assert _take(queue).headers["id"] == job.id


def test_the_confirming_publisher_refuses_to_call_an_unroutable_job_sent() -> None:
    # given: a job for a queue the broker does not have
    store = MemoryJobStore()
    job = _recorded(store, f"kvern-test-missing-{uuid.uuid4().hex}")
    publisher = ConfirmingPublisher(SYSTEM_BROKER)
    try:
        # then: the broker returns it (mandatory), and the publish fails rather than looking confirmed
        with pytest.raises(PublishError, match="NO_ROUTE"):
            publisher.publish(job)
    finally:
        publisher.close()


def test_the_confirming_publisher_confirms_concurrent_publishes_together(
    queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: threads that publish at the same time through one publisher, and a count of its confirm waits
    batches: list[int] = []
    publish_all = confirming.publish_all_confirmed

    def counted(link: Any, messages: list[Any], timeout: float) -> list[BaseException | None]:
        batches.append(len(messages))
        return publish_all(link, messages, timeout)

    monkeypatch.setattr(confirming, "publish_all_confirmed", counted)
    store = MemoryJobStore()
    jobs = [_recorded(store, queue) for _ in range(64)]
    publisher = ConfirmingPublisher(SYSTEM_BROKER)
    try:
        # when: all of them publish
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(publisher.publish, jobs))
    finally:
        publisher.close()
    # then: every message is on the queue once, and threads that came while a batch waited shared the next wait
    assert sorted(_take(queue).headers["id"] for _ in jobs) == sorted(job.id for job in jobs)
    assert sum(batches) == len(jobs)
    assert len(batches) < len(jobs)


def test_the_web_heads_publisher_confirms_a_batch_together_and_fails_only_the_unroutable_job(queue: str) -> None:
    # given: 20 jobs for a queue the broker has and one for a queue it does not
    store = MemoryJobStore()
    jobs = [_recorded(store, queue) for _ in range(20)]
    missing = _recorded(store, f"kvern-test-missing-{uuid.uuid4().hex}")

    async def publish() -> list[BaseException | None]:
        publisher = JobPublisher(AIO_PIKA_URL)
        try:
            return await publisher.publish_many([*jobs[:10], missing, *jobs[10:]])
        finally:
            await publisher.close()

    # when: they are published as one batch
    outcomes = asyncio.run(publish())
    # then: each job has its own outcome, and exactly the confirmed ones are on the queue
    assert outcomes[:10] == [None] * 10 and outcomes[11:] == [None] * 10
    assert isinstance(outcomes[10], PublishError)
    assert sorted(_take(queue).headers["id"] for _ in jobs) == sorted(job.id for job in jobs)
