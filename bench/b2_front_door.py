"""B2, front door throughput: accepted submissions/s through nginx at 64 connections, with two ceilings.

- kvern: `POST /api/v1/jobs` of a no-op job; accepted = 202 = durable record + broker confirm. The instance
  runs its web tier only (`kvern up --only web`), so the measure is the front door, not workers competing.
- ceiling 1: a bare ASGI endpoint (parse the JSON, answer 202) behind nginx from kvern's own template, with the
  same number of uvicorn heads.
- ceiling 2: confirmed publishes/s of one Python process to a private broker node of the run (the instance
  without keys'), kvern's message to a queue declared like kvern's: 1 and 64 in flight, and as many as the bulk
  load keeps in flight (64 requests x 100 jobs), bulk's own ceiling.

kvern runs twice, side by side: with API keys (the default; every request carries the instance's key) and with
`[web] auth = "off"`, so the cost of authentication is a ratio of one run. A third kvern load sends the same
job in bulk submits (`POST /api/v1/jobs:batch`, 100 jobs per request) to the instance with keys: jobs/s is
requests/s x 100 (every job of an answered batch is accepted: the body is valid and the run ends with a check
that the store holds every job the rounds counted).

Rounds alternate them all (kvern with keys, kvern without, bare, broker) so a noisy neighbour hits all of them
alike; medians.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.common import Table, log, median, ratio, write_results
from bench.cpu import Classifier, CpuWindow, classifier, cpu_table, median_cores
from bench.frontdoor import FrontDoor, baseline_front_door
from bench.loadgen import LoadResult, post_load
from bench.procs import RunningInstance, kvern_instance, temp_dir, write_project
from bench.rawpublish import PublishRate, confirmed_publish_rate
from bench.specs import NOOP_TASK, noop_spec
from kvern.constants import ROLE_ADMIN
from kvern.jobs import schema
from kvern.jobs.store import JobStore

CONNECTIONS = 64
ROUNDS = 3
LOAD_S = 6.0
WARMUP_S = 2.0
PUBLISH_S = 4.0
KVERN_PATH = "/api/v1/jobs"
BULK_PATH = "/api/v1/jobs:batch"
BARE_PATH = "/api/v1/accept"
BODY = json.dumps({"task": NOOP_TASK, "args": [], "kwargs": {}})
BULK_SIZE = 100
PUBLISH_IN_FLIGHT = (1, CONNECTIONS, CONNECTIONS * BULK_SIZE)
BULK_BODY = json.dumps({"jobs": [json.loads(BODY)] * BULK_SIZE})


def _load_figures(results: list[LoadResult]) -> dict[str, Any]:
    return {
        "tool": results[0].tool,
        "accepted_per_s": median(r.accepted_per_s for r in results),
        "p50_ms": median(r.p50_ms for r in results),
        "p99_ms": median(r.p99_ms for r in results),
        "failed": sum(r.failed for r in results),
        "requests": sum(r.requests for r in results),
        "rounds": [vars(r) | {"accepted_per_s": r.accepted_per_s} for r in results],
    }


def _bulk_figures(results: list[LoadResult]) -> dict[str, Any]:
    figures = _load_figures(results)
    return figures | {"batch_size": BULK_SIZE, "jobs_per_s": figures["accepted_per_s"] * BULK_SIZE}


def _publish_figures(results: list[PublishRate]) -> dict[str, Any]:
    return {"per_s": median(r.per_s for r in results), "rounds": [vars(r) | {"per_s": r.per_s} for r in results]}


def _timed_load(
    url: str, path: str, body: str, classify: Classifier, headers: dict[str, str]
) -> tuple[LoadResult, dict[str, float]]:
    with CpuWindow() as window:
        result = post_load(url, path, body, CONNECTIONS, LOAD_S, headers)
    return result, window.cores(classify)


def measure(kvern: RunningInstance, open_kvern: RunningInstance, bare: FrontDoor) -> dict[str, Any]:
    # The broker's ceiling is measured on the instance without keys: the one with keys also takes the bulk load,
    # so each instance's node and store carry one extra load and the keys/no-keys ratio compares like with like.
    broker_url = open_kvern.config.broker_urls[ROLE_ADMIN]
    targets = {
        "kvern": (kvern.url, KVERN_PATH, BODY, kvern.auth_headers),
        "kvern_open": (open_kvern.url, KVERN_PATH, BODY, open_kvern.auth_headers),
        "kvern_bulk": (kvern.url, BULK_PATH, BULK_BODY, kvern.auth_headers),
        "bare": (bare.url, BARE_PATH, BODY, {}),
    }
    for url, path, body, headers in targets.values():
        post_load(url, path, body, CONNECTIONS, WARMUP_S, headers)
    classifiers = {
        "kvern": classifier([kvern.state_dir], bare.pids),
        "kvern_open": classifier([open_kvern.state_dir], bare.pids),
        "kvern_bulk": classifier([kvern.state_dir], bare.pids),
        "bare": classifier([kvern.state_dir], bare.pids),
    }
    loads: dict[str, list[LoadResult]] = {name: [] for name in targets}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    publish: dict[int, list[PublishRate]] = {n: [] for n in PUBLISH_IN_FLIGHT}
    for index in range(ROUNDS):
        for name, (url, path, body, headers) in targets.items():
            result, cores = _timed_load(url, path, body, classifiers[name], headers)
            loads[name].append(result)
            cpu[name].append(cores)
        for in_flight in PUBLISH_IN_FLIGHT:
            publish[in_flight].append(confirmed_publish_rate(broker_url, in_flight, PUBLISH_S))
        log(
            f"round {index + 1}/{ROUNDS}: kvern {loads['kvern'][-1].accepted_per_s:,.0f}/s, without keys "
            f"{loads['kvern_open'][-1].accepted_per_s:,.0f}/s, bulk "
            f"{loads['kvern_bulk'][-1].accepted_per_s * BULK_SIZE:,.0f} jobs/s, bare ASGI "
            f"{loads['bare'][-1].accepted_per_s:,.0f}/s, broker "
            + ", ".join(f"{n} in flight {publish[n][-1].per_s:,.0f}/s" for n in PUBLISH_IN_FLIGHT)
        )
    return {
        "kvern": _load_figures(loads["kvern"]) | {"cpu_cores": median_cores(cpu["kvern"])},
        "kvern_open": _load_figures(loads["kvern_open"]) | {"cpu_cores": median_cores(cpu["kvern_open"])},
        "kvern_bulk": _bulk_figures(loads["kvern_bulk"]) | {"cpu_cores": median_cores(cpu["kvern_bulk"])},
        "bare_asgi": _load_figures(loads["bare"]) | {"cpu_cores": median_cores(cpu["bare"])},
        "confirmed_publish": {str(n): _publish_figures(rates) for n, rates in publish.items()},
    }


def tables(f: dict[str, Any]) -> list[Table]:
    k, o, b = f["kvern"], f["kvern_open"], f["bare_asgi"]
    pub = f["confirmed_publish"]
    rows: list[list[Any]] = [
        [
            "kvern POST /api/v1/jobs (API key; record + confirm)",
            k["accepted_per_s"],
            k["p50_ms"],
            k["p99_ms"],
            k["failed"],
        ],
        ['kvern, same, auth = "off"', o["accepted_per_s"], o["p50_ms"], o["p99_ms"], o["failed"]],
        [
            f"kvern POST /api/v1/jobs:batch, {BULK_SIZE} jobs each (API key): jobs/s",
            f["kvern_bulk"]["jobs_per_s"],
            f["kvern_bulk"]["p50_ms"],
            f["kvern_bulk"]["p99_ms"],
            f["kvern_bulk"]["failed"],
        ],
        ["bare ASGI endpoint, same nginx + 2 uvicorn", b["accepted_per_s"], b["p50_ms"], b["p99_ms"], b["failed"]],
    ]
    rows += [[f"broker: confirmed publish, 1 process, {n} in flight", p["per_s"], "", "", 0] for n, p in pub.items()]
    main = Table(
        f"B2 front door at {CONNECTIONS} connections (median of {ROUNDS} alternating rounds of {LOAD_S:g}s; "
        f"load: {k['tool']})",
        ["path", "per s", "p50 (ms)", "p99 (ms)", "failed"],
        rows,
    )
    best_publish = max(p["per_s"] for p in pub.values())
    ratios = Table(
        "B2 ratios",
        ["ratio", "value"],
        [
            ["kvern / bare ASGI", f["ratios"]["kvern_over_bare_asgi"]],
            ["kvern with API keys / kvern without", f["ratios"]["keys_over_open"]],
            [f"kvern bulk ({BULK_SIZE} per request) / single submits, jobs/s", f["ratios"]["bulk_over_single"]],
            [f"kvern / broker confirmed publish ({CONNECTIONS} in flight)", f["ratios"]["kvern_over_publish"]],
            [
                f"kvern bulk / broker confirmed publish ({CONNECTIONS * BULK_SIZE} in flight), jobs/s",
                f["ratios"]["bulk_over_publish_at_bulk_in_flight"],
            ],
            ["bare ASGI / broker confirmed publish", ratio(b["accepted_per_s"], best_publish)],
        ],
    )
    cpu = cpu_table(
        "B2 where the CPU went during the rounds (median cores)",
        {
            "kvern rounds": k["cpu_cores"],
            "kvern without keys": o["cpu_cores"],
            "kvern bulk": f["kvern_bulk"]["cpu_cores"],
            "bare ASGI rounds": b["cpu_cores"],
        },
    )
    return [main, ratios, cpu]


def _stored_jobs(running: RunningInstance) -> int:
    store = JobStore(running.config.store_url)
    try:
        with store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.jobs)).scalar_one())
    finally:
        store.close()


def run(work: Path) -> dict[str, Any]:
    spec = write_project(work / "kvern", noop_spec(), reports=False)
    open_spec = write_project(work / "open", noop_spec().replace("[web]\n", '[web]\nauth = "off"\n'), reports=False)
    with (
        kvern_instance(spec, work / "kvern" / ".kvern", only="web") as running,
        kvern_instance(open_spec, work / "open" / ".kvern", only="web") as open_running,
        baseline_front_door(work / "bare") as bare,
    ):
        time.sleep(1)
        figures = measure(running, open_running, bare)
        figures["kvern_bulk"]["stored_jobs"] = _stored_jobs(running)
    bulk = figures["kvern_bulk"]
    answered = bulk["requests"] - bulk["failed"]
    if bulk["stored_jobs"] < answered * BULK_SIZE:  # the batches' items were not all accepted
        raise RuntimeError(f"bulk rounds: {answered} batches answered but only {bulk['stored_jobs']} jobs stored")
    k = figures["kvern"]
    publish = figures["confirmed_publish"][str(CONNECTIONS)]["per_s"]
    figures["ratios"] = {
        "kvern_over_bare_asgi": ratio(k["accepted_per_s"], figures["bare_asgi"]["accepted_per_s"]),
        "kvern_over_publish": ratio(k["accepted_per_s"], publish),
        "keys_over_open": ratio(k["accepted_per_s"], figures["kvern_open"]["accepted_per_s"]),
        "bulk_over_single": ratio(figures["kvern_bulk"]["jobs_per_s"], k["accepted_per_s"]),
        "bulk_over_publish_at_bulk_in_flight": ratio(
            figures["kvern_bulk"]["jobs_per_s"],
            figures["confirmed_publish"][str(CONNECTIONS * BULK_SIZE)]["per_s"],
        ),
    }
    figures["connections"] = CONNECTIONS
    figures["targets"] = {
        "accepted >= 1500/s": k["accepted_per_s"] >= 1500,
        "p99 <= 50 ms": k["p99_ms"] <= 50,
        "accepted >= 0.8x broker confirmed publish (64 in flight)": figures["ratios"]["kvern_over_publish"] >= 0.8,
        "keys >= 0.9x without": figures["ratios"]["keys_over_open"] >= 0.9,
        "bulk >= 5x single (jobs/s)": figures["ratios"]["bulk_over_single"] >= 5,
    }
    write_results("B2", figures, tables(figures))
    return figures


def main() -> dict[str, Any]:
    with temp_dir("b2") as work:
        return run(work)
