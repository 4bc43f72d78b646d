"""Read the broker's state over AMQP (passive declares), so it works with or without the management plugin."""

from __future__ import annotations

from typing import TypedDict

from amqp.exceptions import NotFound
from kombu.connection import Connection


class QueueDepth(TypedDict):
    ready: int
    consumers: int


def queue_depths(broker_url: str, queues: tuple[str, ...]) -> dict[str, QueueDepth | None]:
    """Ready messages and consumers per queue; None for a queue that does not exist (yet)."""
    depths: dict[str, QueueDepth | None] = {}
    with Connection(broker_url, connect_timeout=3) as conn:
        for name in queues:
            channel = conn.channel()
            try:
                ok = channel.queue_declare(name, passive=True)
                depths[name] = QueueDepth(ready=ok.message_count, consumers=ok.consumer_count)
            except NotFound:
                depths[name] = None
            finally:
                if channel.is_open:
                    channel.close()
    return depths
