"""`kvern status`: one report of the front door, processes, queues, jobs and pools."""

from __future__ import annotations

import time
from typing import Any

from amqp.exceptions import AMQPError
from kombu.exceptions import KombuError

from kvern.autoscale.loop import read_desired
from kvern.broker.admin import QueueDepth, queue_depths
from kvern.broker.relay import find_stuck
from kvern.constants import ROLE_ADMIN, RUNTIME_HOST_KEY
from kvern.errors import RuntimeStateError
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.jobs.store import JobStore
from kvern.processes import RUNNING_STATES, ProcessInfo, ProcessState, app_slot, pool_group, web_slot
from kvern.runtime.head_endpoints import HeadEndpoints
from kvern.runtime.instance import Instance, front_door_url
from kvern.runtime.web_heads import load_live
from kvern.runtime_config import RuntimeConfig
from kvern.spec import PoolSpec, Spec


def _unused_slot(info: ProcessInfo) -> bool:
    """A web head or worker slot that is configured but not started: not worth listing."""
    return info.slot is not None and info.state is ProcessState.STOPPED


def _pool_report(
    pool: PoolSpec, processes: list[ProcessInfo], store: JobStore, autoscaler: dict[str, dict[str, int | None]]
) -> dict[str, Any]:
    running = sum(1 for p in processes if p.group == pool_group(pool.name) and p.state in RUNNING_STATES)
    events = ScalingEventLog(store.engine).latest(pool.name, limit=1)
    last = events[0] if events else None
    return {
        "name": pool.name,
        "processes": running,
        "desired": autoscaler.get(pool.name, {}).get("desired"),
        "pinned": autoscaler.get(pool.name, {}).get("pinned"),
        "min": pool.min,
        "max": pool.max,
        "concurrency": pool.concurrency,
        "last_decision": (
            {"at": last.at, "from": last.from_processes, "to": last.to_processes, "reason": last.reason}
            if last
            else None
        ),
    }


def _web_heads_report(instance: Instance, config: RuntimeConfig, processes: list[ProcessInfo]) -> dict[str, Any] | None:
    """The heads nginx sends requests to, and how many of their job API and app processes run."""
    try:
        live = load_live(instance.state_dir)
    except RuntimeStateError:
        return None
    running = {p.full_name for p in processes if p.state in RUNNING_STATES}
    endpoints = HeadEndpoints.of(config)
    return {
        "serving": live.count,
        # A web host's heads on TCP, where the front host's nginx reaches them; None: unix sockets beside nginx.
        "listening": None if endpoints.front_door else [endpoints.api(slot).upstream() for slot in live.slots],
        "slots": list(live.slots),
        "api_running": sum(web_slot(slot) in running for slot in live.slots),
        "app": instance.spec.web.app,
        "app_running": sum(app_slot(slot) in running for slot in live.slots) if live.app else None,
    }


def _host_report(spec: Spec, config: RuntimeConfig) -> dict[str, Any] | None:
    """Which host of a several-machine instance this is, and where its front door runs (None on one machine)."""
    name = config.extra.get(RUNTIME_HOST_KEY)
    host = next((host for host in spec.hosts if host.name == name), None)
    if host is None:
        return None
    return {
        "name": host.name,
        "address": host.address,
        "roles": sorted(host.roles),
        "front_doors": [f"{h.name} at {h.address}" for h in spec.hosts if h.runs("front")],
    }


def _front_door(config: RuntimeConfig) -> str | None:
    """This instance's front door, where nginx runs beside the heads (not on a web host's TCP heads)."""
    return front_door_url(config) if config.only.web and HeadEndpoints.of(config).front_door else None


def _queues_report(broker_url: str, queues: tuple[str, ...]) -> tuple[dict[str, QueueDepth | None], str | None]:
    """Each queue's depth, or none known and why: status still shows what runs when no broker node answers."""
    try:
        return queue_depths(broker_url, queues), None
    except (OSError, AMQPError, KombuError) as exc:
        return dict.fromkeys(queues), str(exc)


def collect_status(instance: Instance) -> dict[str, Any]:
    config = instance.runtime()
    store = JobStore(config.store_url)
    processes = instance.supervisor.processes()  # one XML-RPC round trip serves the whole report
    pools = config.only.pools_of(instance.spec)
    autoscaler = read_desired(instance.state_dir)
    queues, broker_error = _queues_report(config.broker_urls[ROLE_ADMIN], instance.spec.all_queues)
    report = {
        "host": _host_report(instance.spec, config),
        "front_door": _front_door(config),
        "state_dir": str(instance.state_dir),
        "web_heads": _web_heads_report(instance, config, processes) if config.only.web else None,
        "processes": [
            {"name": p.name, "group": p.group, "state": p.state.value, "pid": p.pid}
            for p in processes
            if not _unused_slot(p)
        ],
        "queues": queues,
        "broker_error": broker_error,
        "jobs": store.counts_by_status(),
        # Running jobs with no live attempt right now; the controller requeues or buries them within seconds.
        "stuck_jobs": len(find_stuck(store, instance.spec, time.time())),
        "pools": [_pool_report(pool, processes, store, autoscaler) for pool in pools],
    }
    store.close()
    return report


def _web_heads_lines(heads: dict[str, Any] | None) -> list[str]:
    if not heads:
        return []
    where = f" on {', '.join(heads['listening'])}" if heads.get("listening") else ""
    line = f"web heads: {heads['serving']} serving{where}, job API running on {heads['api_running']}"
    if heads["app"]:
        line += f", app {heads['app']} running on {heads['app_running']}"
    return [line]


def _host_lines(host: dict[str, Any] | None, front_door: str | None) -> list[str]:
    if host is None:
        return [f"front door: {front_door or '(not run here)'}"]
    elsewhere = ", ".join(host["front_doors"]) or "no host"
    return [
        f"host: {host['name']} ({host['address']}), roles {', '.join(host['roles'])}",
        f"front door: {front_door or f'(not on this host: {elsewhere})'}",
    ]


def render_status(report: dict[str, Any]) -> str:
    lines = [*_host_lines(report.get("host"), report["front_door"]), *_web_heads_lines(report.get("web_heads"))]
    lines += ["", "processes:"]
    lines += [f"  {p['name']:<24} {p['state']:<10} pid {p['pid'] or '-'}" for p in report["processes"]]
    broker_error = report.get("broker_error")
    lines += ["", f"queues: the broker did not answer ({broker_error})" if broker_error else "queues:"]
    lines += [
        f"  {name:<24} ready {q['ready'] if q else '?':>6}  consumers {q['consumers'] if q else '?'}"
        for name, q in report["queues"].items()
    ]
    lines += ["", "jobs: " + ", ".join(f"{k} {v}" for k, v in report["jobs"].items())]
    if report.get("stuck_jobs"):
        lines.append(f"  {report['stuck_jobs']} running with no live attempt: being requeued or buried")
    lines += ["", "pools:" if report["pools"] else "pools: (none run here)"]
    for pool in report["pools"]:
        last = pool["last_decision"]
        decision = f"last {last['from']}->{last['to']}: {last['reason']}" if last else "no decision yet"
        desired = "?" if pool["desired"] is None else pool["desired"]
        pinned = f", pinned to {pool['pinned']}" if pool["pinned"] is not None else ""
        lines.append(
            f"  {pool['name']:<12} {pool['processes']} running, desired {desired} "
            f"(min {pool['min']}, max {pool['max']}{pinned}); {decision}"
        )
    return "\n".join(lines)
