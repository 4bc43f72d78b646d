"""Queue topology: quorum queues that keep what they confirm, with a dead-letter exchange.

Every declarer (`kvern up`, each Celery worker) builds its queues from these functions, so the arguments always
match: RabbitMQ refuses a redeclaration with different arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from kvern.constants import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_MAX_BACKLOG,
)


def work_queue_arguments(
    max_backlog: int = DEFAULT_MAX_BACKLOG, delivery_limit: int = DEFAULT_DELIVERY_LIMIT
) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        # A full queue refuses the publish (the web head answers 503) instead of dropping the oldest job.
        "x-overflow": "reject-publish",
        "x-max-length": max_backlog,
        # A message that keeps killing its worker is dead-lettered once it has been returned this many times
        # (the first delivery plus `delivery_limit` redeliveries).
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        # At-least-once: the dead letter is only removed from the source once the DLQ has confirmed it.
        "x-dead-letter-strategy": "at-least-once",
    }


def work_queue(name: str, max_backlog: int = DEFAULT_MAX_BACKLOG) -> Queue:
    # A topic exchange per queue lets Celery's native delayed delivery route retries back to it.
    exchange = Exchange(name, type="topic", durable=True)
    arguments = work_queue_arguments(max_backlog=max_backlog)
    return Queue(name, exchange, routing_key=name, durable=True, queue_arguments=arguments)


def dead_letter_queue(store_url: str) -> Queue:
    """The dead-letter queue of the instances sharing one job store.

    The dead-letter exchange is a fanout: on a broker shared by several deployments (or several stores), each
    store's queue gets its own copy, so no watcher swallows dead letters that belong to another store's jobs.
    """
    exchange = Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True)
    name = f"{DEAD_LETTER_QUEUE}.{hashlib.sha1(store_url.encode()).hexdigest()[:10]}"
    return Queue(name, exchange, durable=True, queue_arguments={"x-queue-type": "quorum"})


def declare_topology(broker_url: str, queue_backlogs: Mapping[str, int], store_url: str) -> None:
    """Declare the work queues (name -> max backlog) and the store's dead-letter queue (idempotent)."""
    with Connection(broker_url, connect_timeout=5) as conn:
        channel = conn.channel()
        work = [work_queue(name, size) for name, size in queue_backlogs.items()]
        for queue in (dead_letter_queue(store_url), *work):
            queue.bind(channel).declare()


def declare_delayed_delivery(broker_url: str, queues: Sequence[str]) -> None:
    """Declare Celery's native delayed delivery (`celery_delayed_*`) and route it back to each work queue.

    A Celery worker would declare this itself at start; kvern does it once with the admin role instead, so
    workers need no configure permission (configure is also what deletes a queue).
    """
    with Connection(broker_url, connect_timeout=5) as conn:
        declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum")
        for name in queues:
            bind_queue_to_native_delayed_delivery_exchange(conn, work_queue(name))
