"""B1, the synchronous trap: 500 users ask for a report at once while a probe keeps using the site.

(a) synchronous baseline: the report is built inside the web request, 2 web processes (one request at a time
    each, like gunicorn's sync workers) behind nginx rendered from kvern's own template;
(b) kvern with the reports example's spec (2 web heads, pool `reports`: concurrency 2, 1..4 processes).

Each user opens a connection and POSTs `tasks.generate_heavy_report(user_id, seconds=3)`; a probe fetches the
static page and `GET /api/v1/jobs?limit=1` PROBE_HZ times a second each (open loop: a slow answer never delays
the next probe), first while idle, then through the spike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Table, log, ms, percentile, ratio, reports_spec_text, write_results
from bench.cpu import CpuWindow, classifier, cpu_table
from bench.frontdoor import baseline_front_door
from bench.httpclient import Result, encode_request, fetch_once, port_of
from bench.jobs import count_succeeded, job_body
from bench.procs import kvern_instance, temp_dir, write_project
from kvern.jobs.store import JobStore

USERS = 500
REPORT_SECONDS = 3.0
CLIENT_TIMEOUT_S = 60.0
PROBE_HZ = 20.0
IDLE_S = 5.0
MIN_SPIKE_S = 10.0
OBSERVE_S = 60.0  # reports delivered within this long of the burst are counted
TASK = "tasks.generate_heavy_report"
PROBES = {"static": "/", "api": "/api/v1/jobs?limit=1"}


@dataclass
class Probe:
    port: int
    headers: dict[str, str]
    results: dict[str, list[Result]] = field(default_factory=lambda: {k: [] for k in PROBES})
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def run(self, until: Callable[[], bool]) -> None:
        while not until():
            for kind, path in PROBES.items():
                self.tasks.append(asyncio.create_task(self._one(kind, path)))
            await asyncio.sleep(1 / PROBE_HZ)

    async def _one(self, kind: str, path: str) -> None:
        result = await fetch_once(self.port, encode_request("GET", path, headers=self.headers), CLIENT_TIMEOUT_S)
        self.results[kind].append(result)

    async def drain(self) -> None:
        await asyncio.gather(*self.tasks)

    def between(self, kind: str, start: float, end: float) -> list[Result]:
        return [r for r in self.results[kind] if start <= r.started < end]


@dataclass
class SpikeRun:
    reports: list[Result]
    burst_at: float
    all_answered_s: float
    spike_end: float
    probe: Probe
    cpu: CpuWindow  # from the burst until every user had an answer
    delivered: int = 0  # reports whose result existed within OBSERVE_S of the burst
    cpu_cores: dict[str, float] = field(default_factory=dict)


async def _burst(port: int, headers: dict[str, str]) -> list[Result]:
    async def user(index: int) -> Result:
        raw = job_body(TASK, [1000 + index], {"seconds": REPORT_SECONDS}, headers)
        return await fetch_once(port, raw, CLIENT_TIMEOUT_S)

    return await asyncio.gather(*(user(i) for i in range(USERS)))


async def spike(url: str, headers: dict[str, str]) -> SpikeRun:
    """Idle probing, then the burst with probing until every user has an answer (at least MIN_SPIKE_S)."""
    port = port_of(url)
    probe = Probe(port, headers)
    idle_end = time.time() + IDLE_S
    await probe.run(lambda: time.time() >= idle_end)
    burst_at = time.time()
    spike_end = burst_at + CLIENT_TIMEOUT_S + 5  # replaced once every user has an answer
    prober = asyncio.create_task(probe.run(lambda: time.time() >= spike_end))
    with CpuWindow() as cpu:
        reports = await _burst(port, headers)
    all_answered = max(r.started + r.latency for r in reports) - burst_at
    spike_end = burst_at + max(all_answered, MIN_SPIKE_S)
    await prober
    await probe.drain()
    return SpikeRun(reports, burst_at, all_answered, spike_end, probe, cpu)


def _wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def run_baseline(work: Path) -> SpikeRun:
    log(f"B1a synchronous baseline: {USERS} users, reports of {REPORT_SECONDS:g}s built inside the request")
    with baseline_front_door(work / "sync") as door:
        run = asyncio.run(spike(door.url, {}))
        run.cpu_cores = run.cpu.cores(classifier([], door.pids))
        run.delivered = sum(
            1 for r in run.reports if r.status == 200 and r.started + r.latency <= run.burst_at + OBSERVE_S
        )
    return run


def run_kvern(work: Path) -> SpikeRun:
    log(f"B1b kvern, reports example spec: {USERS} users, reports of {REPORT_SECONDS:g}s")
    # The 500 users are 500 addresses in life but one here: kvern's per-address limits stay off for them.
    example = reports_spec_text().replace("[web]\n", "[web]\nrate = 0\nconnections = 0\nkey_rate = 0\n", 1)
    spec = write_project(work / "kvern", example, reports=True)
    with kvern_instance(spec, work / "kvern" / ".kvern") as running:
        run = asyncio.run(spike(running.url, running.auth_headers))
        run.cpu_cores = run.cpu.cores(classifier([running.state_dir]))
        _wait_until(run.burst_at + OBSERVE_S)
        store = JobStore(running.config.store_url)
        try:
            run.delivered = count_succeeded(store, run.burst_at - 1, run.burst_at + OBSERVE_S)
        finally:
            store.close()
    return run


# -- figures ------------------------------------------------------------------------------------------------


def _latency_figures(results: list[Result], ok_status: int) -> dict[str, Any]:
    latencies = [r.latency for r in results]
    return {
        "requests": len(results),
        "ok": sum(1 for r in results if r.status == ok_status),
        "errors": sum(1 for r in results if r.status != ok_status and not r.timed_out),
        "timeouts": sum(1 for r in results if r.timed_out),
        "statuses": _status_counts(results),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies, default=float("nan"))),
    }


def _status_counts(results: list[Result]) -> dict[str, int]:
    """Requests per status; a refusal with kvern's error body also by its code ("503 broker_unavailable")."""
    counts: dict[str, int] = {}
    for r in results:
        key = "timeout" if r.timed_out else ("conn-error" if r.status < 0 else str(r.status))
        code = _error_code(r) if r.status >= 400 else None
        key = f"{key} {code}" if code else key
        counts[key] = counts.get(key, 0) + 1
    return counts


def _error_code(result: Result) -> str | None:
    try:
        error = result.json().get("error")
    except (ValueError, AttributeError):  # not kvern's JSON (nginx's page, the baseline's answer)
        return None
    return str(error.get("code")) if isinstance(error, dict) else None


def figures_of(run: SpikeRun, ok_status: int) -> dict[str, Any]:
    idle_start = run.burst_at - IDLE_S
    probes = {}
    for kind in PROBES:
        idle = _latency_figures(run.probe.between(kind, idle_start, run.burst_at), 200)
        during = _latency_figures(run.probe.between(kind, run.burst_at, run.spike_end), 200)
        probes[kind] = {"idle": idle, "spike": during, "p99_spike_over_idle": ratio(during["p99_ms"], idle["p99_ms"])}
    return {
        "reports": _latency_figures(run.reports, ok_status),
        "all_answered_s": run.all_answered_s,
        "spike_window_s": run.spike_end - run.burst_at,
        "reports_delivered_within_s": OBSERVE_S,
        "reports_delivered": run.delivered,
        "probes": probes,
        "cpu_cores_during_burst": run.cpu_cores,
    }


def _report_rows(name: str, f: dict[str, Any], ok: str) -> list[Any]:
    r = f["reports"]
    return [name, f"{r['ok']} x {ok}", r["errors"], r["timeouts"], f["all_answered_s"], r["p50_ms"], r["p99_ms"]]


def _probe_rows(name: str, f: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for kind, p in f["probes"].items():
        idle, during = p["idle"], p["spike"]
        bad = during["errors"] + during["timeouts"]
        spike_ratio = p["p99_spike_over_idle"]
        rows.append([name, kind, idle["p50_ms"], idle["p99_ms"], during["p50_ms"], during["p99_ms"], spike_ratio, bad])
    return rows


def tables(sync: dict[str, Any], kvern: dict[str, Any]) -> list[Table]:
    reports = Table(
        f"B1 reports: {USERS} concurrent users, report of {REPORT_SECONDS:g}s each, client timeout "
        f"{CLIENT_TIMEOUT_S:g}s",
        ["system", "answered", "errors", "timeouts", "all answered (s)", "p50 (ms)", "p99 (ms)"],
        [_report_rows("sync baseline", sync, "200 report"), _report_rows("kvern", kvern, "202 accepted")],
    )
    probes = Table(
        f"B1 probes ({PROBE_HZ:g}/s each, fresh connection): idle vs during the spike",
        ["system", "probe", "idle p50", "idle p99", "spike p50", "spike p99", "p99 spike/idle", "errors+timeouts"],
        _probe_rows("sync baseline", sync) + _probe_rows("kvern", kvern),
    )
    delivered = Table(
        f"B1 reports actually built within {OBSERVE_S:g}s of the burst",
        ["system", "reports delivered", "of"],
        [["sync baseline", sync["reports_delivered"], USERS], ["kvern", kvern["reports_delivered"], USERS]],
    )
    cpu = cpu_table(
        "B1 where the CPU went from the burst until every user had an answer (cores)",
        {"sync baseline": sync["cpu_cores_during_burst"], "kvern": kvern["cpu_cores_during_burst"]},
    )
    return [reports, probes, delivered, cpu]


def targets(kvern: dict[str, Any]) -> dict[str, bool]:
    r = kvern["reports"]
    probes_ok = all(p["p99_spike_over_idle"] <= 2.0 for p in kvern["probes"].values())
    return {
        "every report request answered 202": r["ok"] == USERS,
        "report p99 <= 100 ms": r["p99_ms"] <= 100,
        "probe p99 within 2x idle": probes_ok,
    }


def run(work: Path) -> dict[str, Any]:
    sync_run = run_baseline(work)
    kvern_run = run_kvern(work)
    sync, kvern = figures_of(sync_run, 200), figures_of(kvern_run, 202)
    figures = {
        "users": USERS,
        "report_seconds": REPORT_SECONDS,
        "client_timeout_s": CLIENT_TIMEOUT_S,
        "probe_hz": PROBE_HZ,
        "sync_baseline": sync,
        "kvern": kvern,
        "targets": targets(kvern),
    }
    write_results("B1", figures, tables(sync, kvern))
    return figures


def main() -> dict[str, Any]:
    with temp_dir("b1") as work:
        return run(work)
