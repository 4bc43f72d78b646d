"""The one task message kvern publishes for a job, and the publishers' Protocols.

Every publisher builds its message here, so what a Celery worker decodes never depends on who sent it: the web
heads' asynchronous `JobPublisher` (broker/publisher.py, aio-pika), the blocking `KombuPublisher`
(broker/relay.py: the outbox relay, stuck-job recovery and `kvern dlq replay`), and the app's blocking
`ConfirmingPublisher` (broker/confirming.py: `kvern.submit`, `.delay()`). The message follows Celery's task
protocol 2, so the user's plain Celery workers consume it unchanged. Free of any AMQP client: a module that only
needs the message does not load one. tests/integration/test_publishers.py is the contract over both.
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kvern.constants import KVERN_JOB_HEADER
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import Job

CONTENT_TYPE = "application/json"
# What the message's argsrepr/kwargsrepr headers show (Celery logs and events print them): never the payload.
HIDDEN_REPR = "…"
CONTENT_ENCODING = "utf-8"
PERSISTENT = 2  # AMQP delivery mode: the broker writes the message to disk


@dataclass(frozen=True)
class TaskMessage:
    """One job's message: the queue it goes to, its body, its headers and its AMQP properties."""

    queue: str
    body: bytes
    headers: dict[str, Any]
    correlation_id: str
    content_type: str = CONTENT_TYPE
    content_encoding: str = CONTENT_ENCODING
    delivery_mode: int = PERSISTENT
    priority: int = 0


def task_message(job_id: str, task: str, queue: str, args: list[Any], kwargs: dict[str, Any]) -> TaskMessage:
    """The message, in Celery's protocol 2 and JSON-encoded, that asks a worker of `queue` to run the job."""
    headers = {**_fixed_headers(), "task": task, "id": job_id, "root_id": job_id}
    body = json.dumps([args, kwargs, EMBED])
    return TaskMessage(queue=queue, body=body.encode(), headers=headers, correlation_id=job_id)


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@functools.cache
def _fixed_headers() -> dict[str, Any]:
    """The headers every job's message shares, built once per process (the host name is a system call)."""
    return {
        "lang": "py",
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": HIDDEN_REPR,
        "kwargsrepr": HIDDEN_REPR,
        "origin": f"kvern-web@{socket.gethostname()}",
        "ignore_result": True,
        KVERN_JOB_HEADER: True,
    }


def job_message(job: Job) -> TaskMessage:
    return task_message(job.id, job.task, job.queue, job.args, job.kwargs)


class JobPublisherProtocol(Protocol):
    """The web heads' publisher (asynchronous): one job at a time, each awaited until the broker confirms it."""

    async def publish(self, job: Job) -> None:
        """Return once the broker confirmed the job's message; raise PublishError (broker away, no confirm in
        time) or BacklogFull (the queue refused it)."""
        ...

    async def publish_many(self, jobs: Sequence[Job]) -> list[BaseException | None]:
        """Publish the jobs' messages together and wait for their confirms together; each job's outcome: None
        once confirmed, else the PublishError or BacklogFull its submission gets."""
        ...

    async def ping(self) -> bool:
        """True when the broker can be reached now."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class BlockingPublisherProtocol(Protocol):
    """The relay's and the CLI's publisher (blocking): a batch of jobs, each marked published once confirmed."""

    def publish_jobs(self, jobs: Sequence[Job], store: JobStoreProtocol) -> None:
        """Publish each job's message in order and mark it published in `store` once the broker confirmed it;
        a failure raises (the jobs not yet confirmed stay unpublished, for the outbox relay to retry)."""
        ...


class OneJobPublisherProtocol(Protocol):
    """The app's publisher (blocking, shared by threads): one job at a time, each confirmed (broker/confirming.py)."""

    def publish(self, job: Job) -> None:
        """Return once the broker confirmed the job's message; raise PublishError or BacklogFull otherwise."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...
