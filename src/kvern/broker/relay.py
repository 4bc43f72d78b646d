"""Outbox relay and dead letters: the two ways a job could otherwise be stranded.

- A web head that crashed between recording a job and publishing it leaves a `queued` record with no
  message: the relay publishes it again (a duplicate message is harmless: attempts are fenced).
- A message that hit its queue's delivery limit (it kept killing its worker) is dead-lettered by RabbitMQ:
  the dead-letter consumer marks its job `dead`, so nothing stays `running` forever.
- Defence in depth, whatever the cause: a `running` job whose attempt outlived its hard time limit (Celery
  has killed it by then), or whose retry is long overdue, has no live attempt. It is queued and published
  again while it has attempts left (a duplicate is harmless: attempts are fenced), else it ends `dead`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from kombu.connection import Connection
from kombu.message import Message
from kombu.messaging import Consumer, Producer

from kvern.broker.admin import queue_depths
from kvern.broker.confirming import publish_confirmed
from kvern.broker.message import job_message
from kvern.broker.topology import dead_letter_queue
from kvern.constants import DEFAULT_TIME_LIMIT_S
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import Job, StuckSuspect
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.spec import Spec

log = logging.getLogger("kvern.relay")

OUTBOX_GRACE_S = 10.0
# Past its hard time limit Celery has killed an attempt; the margin covers the kill and clocks apart.
STUCK_MARGIN_S = 60.0
# A retry's message may wait behind busy processes or a pool scaling out: only a long delay means it is lost.
RETRY_OVERDUE_S = 300.0


class KombuPublisher:
    """The blocking publisher (a BlockingPublisherProtocol): one connection with confirms per batch."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url

    def publish_jobs(self, jobs: Sequence[Job], store: JobStoreProtocol) -> None:
        if not jobs:
            return
        with Connection(self.broker_url, connect_timeout=3, transport_options={"confirm_publish": True}) as conn:
            producer = Producer(conn.channel())
            for job in jobs:
                publish_confirmed(producer, job_message(job))
                store.mark_published([job.id])


def publish_jobs(broker_url: str, jobs: Sequence[Job], store: JobStoreProtocol) -> None:
    """Publish jobs with confirms (blocking), marking each published once the broker confirmed it."""
    KombuPublisher(broker_url).publish_jobs(jobs, store)


def relay_unpublished(store: JobStoreProtocol, broker_url: str, grace_s: float = OUTBOX_GRACE_S) -> int:
    """Publish again every queued job the broker never confirmed; returns how many."""
    jobs = store.unpublished(older_than_s=grace_s)
    publish_jobs(broker_url, jobs, store)
    for job in jobs:
        log.warning("outbox: published job %s again (never confirmed before)", job.id)
    return len(jobs)


def stuck_reason(suspect: StuckSuspect, spec: Spec, now: float) -> str | None:
    """Why a suspect has no live attempt, or None when it may still have one."""
    if suspect.retry_at is not None:
        if now - suspect.retry_at < RETRY_OVERDUE_S:
            return None
        overdue = now - suspect.retry_at
        return f"stuck: the retry after attempt {suspect.attempt} was due {overdue:.0f}s ago and never ran"
    limit = spec.policy(suspect.task).time_limit
    if now - suspect.started_at < limit + STUCK_MARGIN_S:
        return None
    return f"stuck: attempt {suspect.attempt} outlived its hard time limit ({limit:g}s) with no live worker"


def find_stuck(store: JobStoreProtocol, spec: Spec, now: float) -> list[tuple[StuckSuspect, str]]:
    """Running jobs that no attempt is working on or will work on, each with the reason."""
    shortest = min([DEFAULT_TIME_LIMIT_S, *(policy.time_limit for policy in spec.tasks.values())])
    suspects = store.stuck_suspects(now - shortest - STUCK_MARGIN_S, now - RETRY_OVERDUE_S)
    found = [(suspect, stuck_reason(suspect, spec, now)) for suspect in suspects]
    return [(suspect, reason) for suspect, reason in found if reason is not None]


def recover_stuck_jobs(store: JobStoreProtocol, spec: Spec, broker_url: str, now: float | None = None) -> int:
    """Bury each job whose attempt outlived its hard time limit; queue again each job whose retry never came
    (while it has attempts left and its queue holds nothing the retry could be waiting behind); returns how
    many jobs were recovered."""
    stuck = find_stuck(store, spec, time.time() if now is None else now)
    backlog = _queues_with_backlog(broker_url, {suspect.queue for suspect, _ in stuck if suspect.retry_at})
    requeued, recovered = [], 0
    for suspect, reason in stuck:
        if suspect.retry_at is not None and suspect.queue in backlog:
            continue  # the retry message may still be waiting in its queue: a second copy would run it twice
        # An attempt past its hard limit is buried, not requeued: a frozen worker may still hold the job's
        # message and hand it back later, and two copies of a message could run the job at once.
        status = store.recover_stuck(suspect.id, suspect.attempt, reason, requeue=suspect.retry_at is not None)
        recovered += status is not None
        if status is JobStatus.QUEUED:
            log.warning("job %s queued again: %s", suspect.id, reason)
            requeued.append(suspect.id)
        elif status is JobStatus.DEAD:
            log.warning("job %s is dead: %s", suspect.id, reason)
    # Unpublished until the broker confirms: if this fails, the outbox relay publishes them later.
    publish_jobs(broker_url, [job for job in map(store.get, requeued) if job is not None], store)
    return recovered


def _queues_with_backlog(broker_url: str, queues: set[str]) -> set[str]:
    if not queues:
        return set()
    depths = queue_depths(broker_url, tuple(sorted(queues)))
    return {name for name, depth in depths.items() if depth is not None and depth["ready"] > 0}


def death_reason(message: Message) -> str:
    deaths = (message.headers or {}).get("x-death") or []
    reason = deaths[0].get("reason", "unknown") if deaths else "unknown"
    if reason == "delivery_limit":
        return "dead-lettered: delivery limit reached (the task kept killing its worker process)"
    if reason == "rejected":
        return "dead-lettered: no worker could decode its message or hand it to a process (see the worker log)"
    return f"dead-lettered by the broker: {reason}"


class DeadLetterWatcher:
    """Consumes kvern's dead-letter queue in a thread and marks each job dead."""

    def __init__(self, store: JobStore, broker_url: str) -> None:
        self.store = store  # the SQL store: its URL names the instance's dead-letter queue
        self.broker_url = broker_url
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dead-letters", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def on_raw_message(self, message: Message) -> None:
        self.on_message(None, message)

    def on_message(self, body: Any, message: Message) -> None:
        job_id = (message.headers or {}).get("id") or message.properties.get("correlation_id")
        if job_id and self.store.mark_dead(str(job_id), death_reason(message)):
            log.warning("job %s is dead: %s", job_id, death_reason(message))
        message.ack()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                with (
                    Connection(self.broker_url, connect_timeout=3, heartbeat=20) as conn,
                    # on_message: the body is never decoded, so a dead letter that could not be decoded (the very
                    # reason it may be here) cannot stop the watcher; the job id is in its headers.
                    # auto_declare off: `kvern up` declared the queue; the controller role may not configure.
                    Consumer(
                        conn,
                        [dead_letter_queue(self.store.url)],
                        on_message=self.on_raw_message,
                        accept=None,
                        auto_declare=False,
                    ),
                ):
                    while not self.stopping.is_set():
                        try:
                            conn.drain_events(timeout=1)
                        except TimeoutError:
                            conn.heartbeat_check()
            except Exception as exc:  # amqp's ConnectionForced (a broker restart) is no OSError: keep watching
                log.warning("dead-letter watcher lost the broker (%r); retrying", exc)
                self.stopping.wait(2)
