"""`python -m kvern.controller`: one per instance, or one per host of a several-machine instance. It runs what
keeps the instance whole:

the outbox relay, the dead-letter watcher and retention (when this instance runs the web tier; on several hosts,
on whichever holds their lease), the autoscaler (when it runs pools; on several hosts each pool's lease holder
decides, autoscale/shared.py), and the recovery of stuck jobs. Each loop survives the broker or the store being
away, and catches up when they return.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvern.autoscale.loop import Autoscaler
from kvern.autoscale.shared import SharedAutoscaler
from kvern.broker.relay import DeadLetterWatcher, recover_stuck_jobs, relay_unpublished
from kvern.constants import (
    INSTANCE_DUTIES_LEASE,
    LEASE_TTL_S,
    ROLE_ADMIN,
    ROLE_CONTROLLER,
    RUNTIME_HOST_KEY,
)
from kvern.errors import StoreUnavailable
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


@dataclass
class InstanceDuties:
    """On a host of a several-machine instance, the instance-wide duties (outbox relay, retention, notifications,
    job metrics) run on whichever controller holds their lease (jobs/coordination.py): one at a time, and another
    host takes them over within `LEASE_TTL_S` when that one dies."""

    store: JobStoreProtocol
    host: str
    ttl_s: float = LEASE_TTL_S
    held: bool = False

    def renew(self, now: float | None = None) -> bool:
        """Take or renew the lease; whether this controller runs the duties until the next renewal."""
        now = time.time() if now is None else now
        try:
            held = self.store.hold_lease(INSTANCE_DUTIES_LEASE, self.host, now, self.ttl_s)
        except StoreUnavailable as exc:  # its lease lapses meanwhile: another host may take it
            log.warning("instance duties: lease not renewed: %s", exc)
            held = False
        if held != self.held:
            log.info("instance duties: %s on this host (%s)", "running" if held else "no longer running", self.host)
        self.held = held
        return held

    def release(self) -> None:
        if self.held:
            self.store.release_lease(INSTANCE_DUTIES_LEASE, self.host)
            self.held = False


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = RuntimeConfig.from_environment()
    spec = config.spec()
    store = JobStore(config.store_url)
    pools = config.only.pools_of(spec)
    host = config.extra.get(RUNTIME_HOST_KEY)
    # One machine: the web tier's controller runs the instance-wide duties. Several: whichever holds their lease.
    duties = InstanceDuties(store, host) if host else None
    run_duties = config.only.web or duties is not None
    # Its own role: publish through the default exchange, consume the dead letters (runtime.json of an older
    # kvern has no such role: the admin one then).
    broker_url = config.broker_urls.get(ROLE_CONTROLLER) or config.broker_urls[ROLE_ADMIN]
    # Dead letters on every host that may run the duties: marking a job dead twice is harmless.
    watcher = DeadLetterWatcher(store, broker_url) if run_duties else None
    scaler = _autoscaler(config, pools, store, broker_url, host)
    retention_loop = RetentionLoop(store, spec.retention)
    stop = stop_on_signals()
    rounds = _background_rounds(config, store, run_duties, pools, broker_url, duties)
    if watcher:
        watcher.start()
    for background in rounds:
        background.start()
    next_outbox = next_stuck = 0.0
    while not stop.is_set():
        if pools:
            _guarded("autoscaler", scaler.tick)
        leads = duties.renew() if duties else run_duties
        if leads and time.monotonic() >= next_outbox:
            _guarded("outbox relay", lambda: relay_unpublished(store, broker_url))
            next_outbox = time.monotonic() + OUTBOX_INTERVAL_S
        if leads:  # one controller runs it, not every controller of a shared store
            _guarded("retention", retention_loop.tick)
        if time.monotonic() >= next_stuck:
            _guarded("stuck jobs", lambda: recover_stuck_jobs(store, spec, broker_url))
            next_stuck = time.monotonic() + STUCK_INTERVAL_S
        stop.wait(AUTOSCALE_INTERVAL_S)
    if watcher:
        watcher.stop()
    for background in rounds:
        background.stop()
    _resign(scaler, duties)


def _autoscaler(
    config: RuntimeConfig, pools: tuple[PoolSpec, ...], store: JobStore, broker_url: str, host: str | None
) -> Autoscaler:
    """One machine: the autoscaler decides for its pools alone. A host of several: it shares them (shared.py)."""
    supervisor, events = Supervisor(config.state_path), ScalingEventLog(store.engine)
    if host is None:  # queue depths: passive declares on `broker_url`
        return Autoscaler(pools, store, events, supervisor, broker_url, config.state_path)
    return SharedAutoscaler(pools, store, events, supervisor, broker_url, config.state_path, host=host)


def _resign(scaler: Autoscaler, duties: InstanceDuties | None) -> None:
    """A clean stop hands the leases over at once rather than after their TTL."""
    if isinstance(scaler, SharedAutoscaler):
        _guarded("leaving the pools", scaler.resign)
    if duties is not None:
        _guarded("instance duties", duties.release)


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
    config: RuntimeConfig,
    store: JobStore,
    run_duties: bool,
    pools: tuple[PoolSpec, ...],
    broker_url: str,
    duties: InstanceDuties | None = None,
) -> list[BackgroundRounds]:
    """The notification outbox and the job metrics with the instance-wide duties (one controller at a time, like
    the relay); the pools' metrics on each controller that runs pools."""
    spec, samples = config.spec(), MetricSamples(store.engine)
    rounds = []
    if run_duties:
        outbox = Outbox(store, DeliveryLog(store.engine), spec.notify, _base_url(config), spec.web.api_prefix)
        rounds.append(BackgroundRounds("notifications", _while_held(duties, outbox.tick), OUTBOX_INTERVAL_S))
        job_metrics = JobMetrics(samples, store)
        rounds.append(BackgroundRounds("job metrics", _while_held(duties, job_metrics.tick), METRICS_INTERVAL_S))
    if pools:
        pool_metrics = PoolMetrics(samples, pools, Supervisor(config.state_path), broker_url, config.state_path)
        rounds.append(BackgroundRounds("pool metrics", pool_metrics.tick, METRICS_INTERVAL_S))
    return rounds


def _while_held(duties: InstanceDuties | None, step: Callable[[], object]) -> Callable[[], object]:
    """`step`, skipped while another host's controller holds the instance-wide duties."""
    if duties is None:
        return step
    return lambda: step() if duties.held else None


def _base_url(config: RuntimeConfig) -> str:
    """Where the links in notifications point: the spec's, else the front door (a front host's, with [hosts])."""
    spec = config.spec()
    if spec.notify.base_url:
        return spec.notify.base_url
    front = next((host for host in spec.hosts if host.runs("front")), None)
    if front is not None and spec.web.port:
        return f"http://{front.address}:{spec.web.port}"
    return f"http://127.0.0.1:{config.front_door_port}"


def _guarded(name: str, step: object) -> None:
    try:
        step()  # type: ignore[operator]
    except Exception as exc:  # one failing loop must not stop the others
        log.warning("%s: %s", name, exc)


if __name__ == "__main__":
    main()
