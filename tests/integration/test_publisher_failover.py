"""The web heads' publisher over a list of broker nodes (a cluster's failover list), against the machine's broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from kombu.connection import Connection
from kombu.entity import Queue

from kvern.broker.publisher import JobPublisher
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.records import NewJob
from kvern.runtime.instance import free_port
from tests.integration.conftest import SYSTEM_BROKER

pytestmark = pytest.mark.integration

AIO_PIKA_URL = SYSTEM_BROKER.removesuffix("/")  # aio-pika names the default vhost "/", kombu "//"


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"kvern-failover-{uuid.uuid4().hex[:8]}"
    with Connection(SYSTEM_BROKER, connect_timeout=5) as conn:
        Queue(name, durable=False, channel=conn.default_channel).declare()
    try:
        yield name
    finally:
        with Connection(SYSTEM_BROKER, connect_timeout=5) as conn:
            Queue(name, channel=conn.default_channel).delete()


def test_a_node_of_the_list_that_is_down_is_skipped(queue: str) -> None:
    # given: a list whose first node does not answer (nothing listens on its port) and whose second does
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    publisher = JobPublisher(f"{dead};{AIO_PIKA_URL}")
    store = MemoryJobStore()
    job, _ = store.create_job(NewJob(str(uuid.uuid4()), "tasks.report", queue, [1], {}, max_attempts=1))

    async def publish() -> None:
        try:
            await publisher.publish(job)
        finally:
            await publisher.close()

    # when: a job is published
    asyncio.run(publish())
    # then: it is on the queue, through the live node
    with Connection(SYSTEM_BROKER) as conn:
        message = Queue(queue, channel=conn.default_channel).get(no_ack=True)
    assert message is not None and message.headers["id"] == job.id
