"""The notification outbox: the controller's thread that announces finished jobs to their targets.

Why an outbox in the store and not a send from the worker: the job's outcome is recorded first and alone, so a
slow or broken mail server or webhook can never delay or fail it; and what is owed survives any crash (the
worker's, the controller's, the store's connection), so every target is told at least once. Each target is
retried with exponential backoff until it takes the notification or MAX_ATTEMPTS have failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from kvern.errors import KvernError
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.deliveries import DELIVERED, FAILED, GAVE_UP, Delivery, DeliveryLog, OwedJob
from kvern.jobs.records import Job
from kvern.jobs.views import job_body, job_url, public_api_prefix
from kvern.notify.email import send_email
from kvern.notify.webhook import DeliveryFailed, post_webhook
from kvern.spec import EMAIL, NotifySpec, Target, parse_target

log = logging.getLogger("kvern.notify")

INTERVAL_S = 2.0
MAX_ATTEMPTS = 10
FIRST_RETRY_S = 5.0
MAX_RETRY_S = 1800.0  # 10 attempts span about an hour
LEASE_S = 300.0  # a round's hold on a job: targets time out long before (webhook 10 s, SMTP 30 s each)


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 5, 10, 20, ... up to 30 minutes."""
    return float(min(FIRST_RETRY_S * 2 ** (attempts - 1), MAX_RETRY_S))


@dataclass
class Outbox:
    store: JobStoreProtocol  # the job with its artifacts, for the view
    deliveries: DeliveryLog
    notify: NotifySpec
    base_url: str  # the front door as people reach it
    api_prefix: str = "/api"
    clock: Callable[[], float] = time.time
    client: httpx.Client = field(default_factory=httpx.Client)

    def tick(self) -> int:
        """Announce what is due; returns how many delivery attempts were made."""
        now = self.clock()
        return sum(self._announce(owed, now) for owed in self.deliveries.owed(now))

    def _announce(self, owed: OwedJob, now: float) -> int:
        if not self.deliveries.claim(owed, now + LEASE_S):
            return 0  # another controller took it
        view = self.view(self.store.get(owed.job.id) or owed.job)
        next_due: float | None = None
        pending = owed.pending()
        for target, made in pending:
            attempt = made + 1
            try:
                outcome, detail = DELIVERED, self.send(parse_target(target, "notify"), view, attempt)
            except (DeliveryFailed, KvernError, OSError) as exc:  # OSError: a secret file gone missing
                outcome, detail = (GAVE_UP if attempt >= MAX_ATTEMPTS else FAILED), str(exc)
                log.warning("job %s: telling %s failed (attempt %d): %s", owed.job.id, target, attempt, detail)
            if outcome == FAILED:
                due = now + retry_delay(attempt)
                next_due = due if next_due is None else min(next_due, due)
            self.deliveries.record(owed.job.id, Delivery(target, attempt, self.clock(), outcome, detail))
        self.deliveries.reschedule(owed.job.id, next_due)
        return len(pending)

    def view(self, job: Job) -> dict[str, Any]:
        """The job as its GET shows it, with links as the front door's clients use them."""
        token = public_api_prefix.set(self.api_prefix)
        try:
            return job_body(job)
        finally:
            public_api_prefix.reset(token)

    def link(self, job_id: str) -> str:
        if self.notify.link is not None:
            return self.base_url + self.notify.link.replace("{id}", job_id)
        token = public_api_prefix.set(self.api_prefix)
        try:
            return self.base_url + job_url(job_id)
        finally:
            public_api_prefix.reset(token)

    def send(self, target: Target, view: dict[str, Any], attempt: int) -> str:
        if target.kind == EMAIL:
            if self.notify.smtp is None:
                raise DeliveryFailed("no [notify.smtp] server in the spec")
            return send_email(self.notify.smtp, target.address, view, self.link(view["id"]))
        return post_webhook(target.address, view, self.notify.webhook_key(), attempt, self.client)
