"""`python -m kvern.worker POOL INDEX`: one worker process of a pool, as Supervisor starts it."""

from __future__ import annotations

import atexit
import logging
import socket
import sys

from kvern.catalog import load_user_app
from kvern.constants import ROLE_WORKER
from kvern.jobs.store import JobStore
from kvern.runtime_config import RuntimeConfig
from kvern.spec import PoolSpec
from kvern.worker.app import UndeclaringConsumer, safe_settings
from kvern.worker.context import limit_artifacts
from kvern.worker.dispatch import DispatchClaims, claim_window
from kvern.worker.execution import guard_task, watch_hard_time_limits
from kvern.worker.log_privacy import hide_payloads_in_logs
from kvern.worker.memory import share_memory_with_children
from kvern.worker.wakeup import wake_on_signals
from kvern.worker.writer import NodeWriter, socket_path_for
from kvern.worker.writer_client import WriterClient


def main(argv: list[str]) -> None:
    pool_name, index = argv[0], int(argv[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hide_payloads_in_logs()
    config = RuntimeConfig.from_environment()
    spec = config.spec()
    pool = spec.pool(pool_name)
    app, catalog = load_user_app(spec)
    app.conf.update(safe_settings(spec, config.broker_urls[ROLE_WORKER], pool.queues))
    app.conf.worker_consumer = f"{UndeclaringConsumer.__module__}:{UndeclaringConsumer.__name__}"
    app.conf.worker_prefetch_multiplier = pool.prefetch  # claimed when a child starts it, not when prefetched
    store = JobStore(config.store_url)
    limit_artifacts(spec.limits.artifact_bytes)
    node = f"{pool_name}-{index}@{config.instance}.{socket.gethostname()}"
    writer = start_writer(config, pool, f"{pool_name}-{index}")
    # The children write through the node's writer. Above prefetch 1, they hand outcomes over without waiting
    # for the commit, and each message is acked once its outcome committed (worker/deferred_ack.py).
    deferred = pool.prefetch > 1
    attempts = WriterClient(writer.path, writer.spool, defer_outcomes=deferred)
    # The main process claims each attempt when it hands the delivery to a child (worker/dispatch.py).
    claims = DispatchClaims(writer, node, claim_window(pool.concurrency, pool.prefetch))
    for name, task in catalog.tasks.items():
        guard_task(task, attempts, spec.policy(name), node, commits=writer if deferred else None, claims=claims)
    recycling = []
    if pool.max_tasks_per_child:
        recycling.append(f"--max-tasks-per-child={pool.max_tasks_per_child}")
    if pool.max_memory_per_child:
        recycling.append(f"--max-memory-per-child={pool.max_memory_per_child * 1024}")  # Celery counts KiB
    watch_hard_time_limits(store)
    share_memory_with_children()
    wake_on_signals(app)  # an idle worker acts on SIGTERM at once, not after its next poll timeout
    app.worker_main(
        [
            "worker",
            *recycling,  # options of the `worker` command: before it, Celery refuses them
            f"--hostname={node}",
            f"--queues={','.join(pool.queues)}",
            f"--concurrency={pool.concurrency}",
            "--pool=prefork",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def start_writer(config: RuntimeConfig, pool: PoolSpec, name: str) -> NodeWriter:
    """The node's store writer, listening before Celery forks the children that use it."""
    store = JobStore(config.store_url, persistent=True)
    writer = NodeWriter(store, socket_path_for(config.state_path, name), pool.flush_ms, pool.flush_items)
    writer.start()
    atexit.register(writer.close)
    return writer


if __name__ == "__main__":
    main(sys.argv[1:])
