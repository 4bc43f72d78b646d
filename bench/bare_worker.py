"""`python -m bench.bare_worker VARIANT QUEUE CONCURRENCY`: a bare Celery worker for B3 (no kvern in it).

VARIANT is `default` (Celery's defaults: early acks, prefetch multiplier 4), `late` (task_acks_late=True,
worker_prefetch_multiplier=1), or `same` (kvern's guarantees without kvern: acks late, reject on a lost worker
process, prefetch 1, on a queue declared exactly like kvern's work queues: quorum, reject-publish, DLX; its
sender publishes with confirms).
The broker URL comes from $BENCH_BROKER_URL (not argv: it holds a password).
The worker runs the same no-op task as kvern's pool, with the same process flags and log level kvern gives its
workers (INFO: a line per received and per finished task).
"""

from __future__ import annotations

import os
import sys

from bench.workloads import app
from kvern.broker.topology import work_queue

LATE: dict[str, object] = {"task_acks_late": True, "worker_prefetch_multiplier": 1}
SAME: dict[str, object] = {**LATE, "task_reject_on_worker_lost": True}
VARIANTS: dict[str, dict[str, object]] = {"default": {}, "late": LATE, "same": SAME}
QUORUM_VARIANTS = frozenset({"same"})


def main(argv: list[str]) -> None:
    variant, queue, concurrency = argv[0], argv[1], int(argv[2])
    app.conf.update(broker_url=os.environ["BENCH_BROKER_URL"], task_default_queue=queue, **VARIANTS[variant])
    if variant in QUORUM_VARIANTS:
        app.conf.task_queues = [work_queue(queue)]
    app.worker_main(
        [
            "worker",
            f"--hostname=bare-{variant}-{queue}@%h",  # unique per queue: a drain worker runs beside the others
            f"--queues={queue}",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--loglevel=INFO",  # as kvern's workers log
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
