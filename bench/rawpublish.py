"""The broker's ceiling for the front door: confirmed publishes/s of one Python process (aio-pika).

The message is exactly what a web head publishes (kvern's Celery protocol-2 message, persistent, mandatory),
to a queue declared like kvern's work queues (quorum, reject-publish, DLX); only the job store and HTTP are
left out. Two shapes: one publish in flight at a time, and `in_flight` concurrent publishes on one channel
(what a web head does with many requests at once).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel

from kvern.broker.message import task_message
from kvern.broker.publisher import aio_pika_message
from kvern.broker.topology import work_queue_arguments

RAW_QUEUE = "bench.raw-publish"


@dataclass(frozen=True)
class PublishRate:
    in_flight: int
    published: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.published / self.seconds


async def _publisher(channel: AbstractChannel, end: float, counter: list[int]) -> None:
    while time.perf_counter() < end:
        message = aio_pika_message(task_message(str(uuid.uuid4()), "bench.noop", RAW_QUEUE, [], {}))
        await channel.default_exchange.publish(message, routing_key=RAW_QUEUE, mandatory=True)
        counter[0] += 1


async def _measure(broker_url: str, in_flight: int, seconds: float) -> PublishRate:
    connection = await aio_pika.connect(broker_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.declare_queue(RAW_QUEUE, durable=True, arguments=work_queue_arguments())
        counter = [0]
        started = time.perf_counter()
        end = started + seconds
        await asyncio.gather(*(_publisher(channel, end, counter) for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
        await queue.delete(if_unused=False, if_empty=False)
        return PublishRate(in_flight, counter[0], elapsed)
    finally:
        await connection.close()


def confirmed_publish_rate(broker_url: str, in_flight: int, seconds: float) -> PublishRate:
    return asyncio.run(_measure(broker_url, in_flight, seconds))
