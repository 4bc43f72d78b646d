"""`kvern reload` (and SIGHUP to a foreground `kvern up`): new code and spec on a running instance, no downtime.

Checked first, changed after: the edited spec is validated and its tasks module loaded as `up` does, then
compared with the running snapshot (`reload_plan.py`); a change that needs `down` + `up` refuses the whole
reload before anything is touched. Then, in order:

1. the new snapshot is written (atomically): every process started from now on reads it;
2. nginx's config is rewritten (listen, TLS, limits, static) and checked with `nginx -t`;
3. fresh web heads start, nginx reloads onto them with its new config (and rereads the certificate files), the
   old heads drain and stop (`web_heads.replace_heads`);
4. the controller is restarted (autoscaler, relay, retention with the new settings);
5. each pool's workers are replaced warm, one at a time (`pool_rollout.py`), the autoscaler paused meanwhile.

If nginx refuses the new config or the fresh heads fail, the previous snapshot and config are put back: the old heads
never stopped serving. One reload runs at a time per instance (a lock file in the state dir).

A reload that changes `[hosts]` alone (a web host added or removed, a weight) writes the snapshot and, on a host
with the front door, rewrites nginx's upstreams and reloads nginx gracefully (`nginx -t` first): nothing else is
restarted. A web host without the front door takes no other reload: its heads' ports are fixed by the spec, so a
second color cannot start beside the first; `kvern down` and `kvern up --host` it, the front door routes around it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kvern.autoscale.pins import pause_autoscaler, resume_autoscaler
from kvern.broker.admin import queue_depths
from kvern.constants import PROGRAM_CONTROLLER, RELOAD_LOCK_FILE, ROLE_ADMIN
from kvern.errors import KvernError, NotRunning, ReloadRefused, StartError
from kvern.files import atomic_write
from kvern.runtime import nginx
from kvern.runtime.head_endpoints import HeadEndpoints
from kvern.runtime.instance import check_user_app
from kvern.runtime.pool_rollout import PoolRollout
from kvern.runtime.progress import Progress, Reporter, silent
from kvern.runtime.reload_plan import ReloadPlan, plan_reload
from kvern.runtime.supervisor import Supervisor
from kvern.runtime.upstreams import write_upstream
from kvern.runtime.web_heads import load_live, reload_nginx, replace_heads
from kvern.runtime_config import RuntimeConfig
from kvern.spec import Spec

STOP_MARGIN_S = 30.0
WEB_HOST_RELOAD = (
    "a web host without the front door reloads nothing but [hosts]: its heads' ports are fixed, so new heads "
    "cannot start beside the old ones; run `kvern down` and `kvern up --host` on it (the front door routes around it)"
)


@dataclass
class Reload:
    """One reload of the instance in `state_dir` to the spec `edited` (read from the spec file just now)."""

    state_dir: Path
    edited: Spec
    report: Reporter = silent

    def run(self) -> ReloadPlan:
        supervisor = Supervisor(self.state_dir)
        if not supervisor.is_running():
            raise NotRunning(f"no kvern instance is running with state dir {self.state_dir}")
        with _one_at_a_time(self.state_dir):
            config = RuntimeConfig.load(self.state_dir)
            running = config.spec()
            plan = self.check(config, running)
            if plan.upstreams_only:
                self._upstreams(config, running, supervisor, Progress(self.report))
            else:
                self._apply(config, running, plan, supervisor)
        return plan

    def check(self, config: RuntimeConfig, running: Spec) -> ReloadPlan:
        """Refuse before anything changes: fields that need `down` + `up`, then what `up` would refuse."""
        plan = plan_reload(running, self.edited)
        if plan.refused:
            raise ReloadRefused([str(refusal) for refusal in plan.refusals])
        config.only.check(self.edited)
        if config.only.web and not HeadEndpoints.of(config).front_door and not plan.upstreams_only:
            raise ReloadRefused([WEB_HOST_RELOAD])
        check_user_app(self.edited)
        for change in plan.changes:
            self.report(f"change {change}")
        if not plan.changes:
            self.report("spec unchanged: new code only")
        return plan

    def _apply(self, config: RuntimeConfig, running: Spec, plan: ReloadPlan, supervisor: Supervisor) -> None:
        progress = Progress(self.report)
        pause_autoscaler(self.state_dir, os.getpid())  # before the controller restarts: it starts paused
        try:
            self._snapshot_and_web(config, running, supervisor, progress)
            supervisor.stop(PROGRAM_CONTROLLER, wait=True)
            supervisor.start(PROGRAM_CONTROLLER, wait=True)
            progress.mark("controller", "restarted")
            self._pools(config, supervisor, progress)
        finally:
            resume_autoscaler(self.state_dir)

    def _snapshot_and_web(
        self, config: RuntimeConfig, running: Spec, supervisor: Supervisor, progress: Progress
    ) -> None:
        snapshot = Path(config.spec_snapshot)
        atomic_write(snapshot, self.edited.text)
        progress.mark("spec snapshot", "written")
        if not config.only.web:
            return
        try:
            # Checked by `nginx -t` now, read by nginx at the switch to the new heads: one graceful reload, not
            # two (each closes the idle keep-alive connections of clients).
            write_front_door(config, self.edited)
            progress.mark("front door config", "checked")
            heads = heads_after_reload(running, self.edited, load_live(self.state_dir).count)
            replace_heads(supervisor, self.state_dir, heads)
        except BaseException:
            # The old heads still serve: put back what they and nginx were started with.
            atomic_write(snapshot, running.text)
            with contextlib.suppress(KvernError, OSError, xmlrpc.client.Fault):  # the first error is the one to tell
                write_front_door(config, running)
                reload_nginx(supervisor)
            raise
        progress.mark("web heads", f"replaced, {heads} serving the new code")

    def _upstreams(self, config: RuntimeConfig, running: Spec, supervisor: Supervisor, progress: Progress) -> None:
        """`[hosts]` changed alone: the snapshot, and on the front host nginx's upstreams (checked, then HUP)."""
        snapshot = Path(config.spec_snapshot)
        atomic_write(snapshot, self.edited.text)
        progress.mark("spec snapshot", "written")
        if not (config.only.web and HeadEndpoints.of(config).front_door):
            return
        live = load_live(self.state_dir)
        try:
            write_upstream(self.state_dir, live.slots, live.app, self.edited)
            write_front_door(config, self.edited)  # `nginx -t` over the new upstreams
            reload_nginx(supervisor)
        except BaseException:
            atomic_write(snapshot, running.text)
            with contextlib.suppress(KvernError, OSError, xmlrpc.client.Fault):
                write_upstream(self.state_dir, live.slots, live.app, running)
                reload_nginx(supervisor)
            raise
        progress.mark("front door", f"upstreams reloaded: {_upstream_summary(self.edited, live.count)}")

    def _pools(self, config: RuntimeConfig, supervisor: Supervisor, progress: Progress) -> None:
        admin_url = config.broker_urls[ROLE_ADMIN]

        def consumers(queue: str) -> int | None:
            depth = queue_depths(admin_url, (queue,)).get(queue)
            return depth["consumers"] if depth else None

        stop_timeout = self.edited.longest_time_limit + STOP_MARGIN_S
        for pool in config.only.pools_of(self.edited):
            rollout = PoolRollout(supervisor, pool, stop_timeout, consumers)
            rollout.run()
            progress.mark(f"pool {pool.name}", rollout.describe())


def _upstream_summary(spec: Spec, local: int) -> str:
    web_hosts = [h for h in spec.hosts if h.runs("web") and not h.runs("front")]
    return f"{local} local head(s), {len(web_hosts) * spec.web.heads} on {len(web_hosts)} web host(s)"


def heads_after_reload(running: Spec, edited: Spec, serving: int) -> int:
    """As many heads as serve now (`kvern scale web` may have changed that), unless the reload changes
    `web.heads` itself: then the edited spec's count."""
    return edited.web.heads if edited.web.heads != running.web.heads else serving


def write_front_door(config: RuntimeConfig, spec: Spec) -> None:
    """nginx's config as `up` writes it (over the upstreams of the heads serving now); `nginx -t` checks it first
    and a refused config leaves the running one in place."""
    nginx.write_config(config.state_path, config.front_door_port, spec.static_dir, spec.web)


@contextmanager
def _one_at_a_time(state_dir: Path) -> Iterator[None]:
    with (state_dir / RELOAD_LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartError("another reload of this instance is running") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def reload_instance(state_dir: Path, edited: Spec, report: Reporter = silent) -> ReloadPlan:
    return Reload(state_dir, edited, report).run()
