"""`python -m kvern.controller`: one per instance. It runs what keeps the instance whole:

the outbox relay, the dead-letter watcher and retention (when this instance runs the web tier), the autoscaler
(when it runs pools), and the recovery of stuck jobs. Each loop survives the broker or the store being away, and
catches up when they return.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvern.autoscale.loop import Autoscaler
from kvern.broker.relay import DeadLetterWatcher, recover_stuck_jobs, relay_unpublished
from kvern.constants import ROLE_ADMIN, ROLE_CONTROLLER
from kvern.jobs import retention
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.deliveries import DeliveryLog
from kvern.jobs.metric_samples import MetricSamples
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.jobs.store import JobStore
from kvern.notify.outbox import Outbox
from kvern.observe.publisher import INTERVAL_S as METRICS_INTERVAL_S
from kvern.observe.publisher import JobMetrics, PoolMetrics
from kvern.runtime.stopping import stop_on_signals
from kvern.runtime.supervisor import Supervisor
from kvern.runtime_config import RuntimeConfig
from kvern.spec import PoolSpec, RetentionSpec

log = logging.getLogger("kvern.controller")

AUTOSCALE_INTERVAL_S = 0.5
OUTBOX_INTERVAL_S = 2.0
STUCK_INTERVAL_S = 15.0
RETENTION_INTERVAL_S = 60.0
RETENTION_MAX_BATCHES = 20  # per round and setting: a large backlog is worked off over several rounds


@dataclass
class RetentionLoop:
    """Erases finished jobs past the spec's retention, once per interval of `clock` (wall time: it compares
    with the jobs' finish times)."""

    store: JobStoreProtocol
    spec: RetentionSpec
    clock: Callable[[], float] = time.time
    interval_s: float = RETENTION_INTERVAL_S
    batch: int = retention.PURGE_BATCH
    next_at: float = 0.0

    def tick(self) -> int:
        """Run a round if one is due; returns how many jobs it erased."""
        now = self.clock()
        if now < self.next_at:
            return 0
        self.next_at = now + self.interval_s
        erased = retention.enforce(self.store, self.spec, now, self.batch, RETENTION_MAX_BATCHES)
        if erased:
            log.info("retention: erased %d finished job(s)", erased)
        return erased


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = RuntimeConfig.from_environment()
    spec = config.spec()
    store = JobStore(config.store_url)
    run_web, pools = config.only.web, config.only.pools_of(spec)
    # Its own role: publish through the default exchange, consume the dead letters (runtime.json of an older
    # kvern has no such role: the admin one then).
    broker_url = config.broker_urls.get(ROLE_CONTROLLER) or config.broker_urls[ROLE_ADMIN]
    watcher = DeadLetterWatcher(store, broker_url) if run_web else None
    scaler = Autoscaler(
        pools,
        store,
        ScalingEventLog(store.engine),
        Supervisor(config.state_path),
        broker_url,  # queue depths: passive declares
        config.state_path,
    )
    retention_loop = RetentionLoop(store, spec.retention)
    stop = stop_on_signals()
    rounds = _background_rounds(config, store, run_web, pools, broker_url)
    if watcher:
        watcher.start()
    for background in rounds:
        background.start()
    next_outbox = next_stuck = 0.0
    while not stop.is_set():
        if pools:
            _guarded("autoscaler", scaler.tick)
        if run_web and time.monotonic() >= next_outbox:
            _guarded("outbox relay", lambda: relay_unpublished(store, broker_url))
            next_outbox = time.monotonic() + OUTBOX_INTERVAL_S
        if run_web:  # one tier runs it, not every controller of a shared store
            _guarded("retention", retention_loop.tick)
        if time.monotonic() >= next_stuck:
            _guarded("stuck jobs", lambda: recover_stuck_jobs(store, spec, broker_url))
            next_stuck = time.monotonic() + STUCK_INTERVAL_S
        stop.wait(AUTOSCALE_INTERVAL_S)
    if watcher:
        watcher.stop()
    for background in rounds:
        background.stop()


class BackgroundRounds:
    """A loop in a thread of its own, beside the main one: a slow mail server or a long count never holds up the
    autoscaler. A failing round is logged and tried again at the next."""

    def __init__(self, name: str, step: Callable[[], object], interval_s: float) -> None:
        self.name, self.step, self.interval_s = name, step, interval_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while not self.stopping.is_set():
            _guarded(self.name, self.step)
            self.stopping.wait(self.interval_s)


def _background_rounds(
    config: RuntimeConfig, store: JobStore, run_web: bool, pools: tuple[PoolSpec, ...], broker_url: str
) -> list[BackgroundRounds]:
    """The notification outbox and the job metrics on the web tier's controller (one per instance, like the
    relay); the pools' metrics on each controller that runs pools."""
    spec, samples = config.spec(), MetricSamples(store.engine)
    rounds = []
    if run_web:
        base_url = spec.notify.base_url or f"http://127.0.0.1:{config.front_door_port}"
        outbox = Outbox(store, DeliveryLog(store.engine), spec.notify, base_url, spec.web.api_prefix)
        rounds.append(BackgroundRounds("notifications", outbox.tick, OUTBOX_INTERVAL_S))
        rounds.append(BackgroundRounds("job metrics", JobMetrics(samples, store).tick, METRICS_INTERVAL_S))
    if pools:
        pool_metrics = PoolMetrics(samples, pools, Supervisor(config.state_path), broker_url, config.state_path)
        rounds.append(BackgroundRounds("pool metrics", pool_metrics.tick, METRICS_INTERVAL_S))
    return rounds


def _guarded(name: str, step: object) -> None:
    try:
        step()  # type: ignore[operator]
    except Exception as exc:  # one failing loop must not stop the others
        log.warning("%s: %s", name, exc)


if __name__ == "__main__":
    main()
