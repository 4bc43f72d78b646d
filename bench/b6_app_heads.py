"""B6, the team's app on kvern's web heads: requests/s and p99 of an app page and of an app view that calls
`.delay()`, through nginx at 64 connections, side by side with the same app under bare gunicorn.

- kvern: `bench/shop_app.py` as `[web] app` on 2 web heads (each: gunicorn, 1 gthread worker x
  `SHOP_APP_THREADS` threads, bare gunicorn the same); the instance runs its web tier only (`--only web`), so
  no worker competes and the jobs stay queued. The view's
  `.delay()` goes through kvern's durable path: a job record (SQLite) and a publish confirmed by the broker.
- bare: the same app under 2 bare gunicorn processes with the same worker settings, behind nginx rendered
  from kvern's template for an app; its `.delay()` is Celery's own publish (no record, no confirm) to the same
  private broker node.

Rounds alternate kvern page, bare page, kvern view, bare view so a noisy neighbour hits all alike; medians.
Goals: kvern's page >= 0.9x bare gunicorn's; kvern's `.delay()` view p99 <= 2x its page p99.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Table, log, median, ratio, write_results
from bench.cpu import Classifier, CpuWindow, classifier, cpu_table, median_cores
from bench.frontdoor import FrontDoor, bare_gunicorn_front_door
from bench.loadgen import LoadResult, get_load, post_load
from bench.procs import BENCH_DIR, RunningInstance, kvern_instance, temp_dir, write_project
from bench.specs import shop_spec
from kvern.constants import ROLE_ADMIN

CONNECTIONS = 64
ROUNDS = 3
LOAD_S = 6.0
WARMUP_S = 2.0
PAGE_PATH = "/products"
DELAY_PATH = "/report"
APP = "shop:application"
SHOP_APP = BENCH_DIR / "shop_app.py"

Load = Callable[[str], LoadResult]
LOADS: dict[str, Load] = {
    "page": lambda url: get_load(url, PAGE_PATH, CONNECTIONS, LOAD_S),
    "delay": lambda url: post_load(url, DELAY_PATH, "{}", CONNECTIONS, LOAD_S),
}


def _figures(results: list[LoadResult], cores: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "tool": results[0].tool,
        "per_s": median(r.accepted_per_s for r in results),
        "p50_ms": median(r.p50_ms for r in results),
        "p99_ms": median(r.p99_ms for r in results),
        "failed": sum(r.failed for r in results),
        "requests": sum(r.requests for r in results),
        "cpu_cores": median_cores(cores),
        "rounds": [vars(r) | {"per_s": r.accepted_per_s} for r in results],
    }


def measure(kvern: RunningInstance, bare: FrontDoor) -> dict[str, Any]:
    for url in (kvern.url, bare.url):
        get_load(url, PAGE_PATH, CONNECTIONS, WARMUP_S)
        post_load(url, DELAY_PATH, "{}", CONNECTIONS, WARMUP_S)
    classify: Classifier = classifier([kvern.state_dir], bare.pids)
    runs = [(f"{side} {what}", url, load) for what, load in LOADS.items() for side, url in _sides(kvern, bare)]
    results: dict[str, list[LoadResult]] = {name: [] for name, _, _ in runs}
    cores: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in runs}
    for index in range(ROUNDS):
        for name, url, load in runs:
            with CpuWindow() as window:
                results[name].append(load(url))
            cores[name].append(window.cores(classify))
        log(
            f"round {index + 1}/{ROUNDS}: "
            + ", ".join(f"{n} {r[-1].accepted_per_s:,.0f}/s" for n, r in results.items())
        )
    return {name: _figures(results[name], cores[name]) for name in results}


def _sides(kvern: RunningInstance, bare: FrontDoor) -> list[tuple[str, str]]:
    return [("kvern", kvern.url), ("bare", bare.url)]


def tables(f: dict[str, Any]) -> list[Table]:
    labels = {
        "kvern page": "kvern app heads: GET page",
        "bare page": "bare gunicorn, same nginx: GET page",
        "kvern delay": "kvern app heads: POST view calling .delay() (record + confirm)",
        "bare delay": "bare gunicorn: POST view calling Celery's .delay() (no record, no confirm)",
    }
    main = Table(
        f"B6 the team's app at {CONNECTIONS} connections (median of {ROUNDS} alternating rounds of {LOAD_S:g}s; "
        f"load: {f['kvern page']['tool']})",
        ["path", "per s", "p50 (ms)", "p99 (ms)", "failed"],
        [[label, f[k]["per_s"], f[k]["p50_ms"], f[k]["p99_ms"], f[k]["failed"]] for k, label in labels.items()],
    )
    r = f["ratios"]
    ratios = Table(
        "B6 ratios",
        ["ratio", "value", "goal"],
        [
            ["kvern page / bare gunicorn page (requests/s)", r["page_over_bare"], ">= 0.9"],
            ["kvern .delay() view p99 / kvern page p99", r["delay_p99_over_page_p99"], "<= 2"],
            ["kvern .delay() view / bare Celery .delay() view (requests/s)", r["delay_over_bare"], ""],
        ],
    )
    cpu = cpu_table(
        "B6 where the CPU went during the rounds (median cores)", {name: f[name]["cpu_cores"] for name in labels}
    )
    return [main, ratios, cpu]


def run(work: Path) -> dict[str, Any]:
    project = work / "kvern"
    spec = write_project(project, shop_spec(APP), reports=False)
    shutil.copy(SHOP_APP, project / "shop.py")
    with kvern_instance(spec, project / ".kvern", only="web") as running:
        # bare Celery publishes to the same private node, as kvern's admin (it declares its own queue there)
        env = {**os.environ, "CELERY_BROKER_URL": running.config.broker_urls[ROLE_ADMIN]}
        with bare_gunicorn_front_door(work / "bare", project, APP, env) as bare:
            figures = measure(running, bare)
    figures["ratios"] = {
        "page_over_bare": ratio(figures["kvern page"]["per_s"], figures["bare page"]["per_s"]),
        "delay_p99_over_page_p99": ratio(figures["kvern delay"]["p99_ms"], figures["kvern page"]["p99_ms"]),
        "delay_over_bare": ratio(figures["kvern delay"]["per_s"], figures["bare delay"]["per_s"]),
    }
    figures["connections"] = CONNECTIONS
    figures["targets"] = {
        "page >= 0.9x bare gunicorn": figures["ratios"]["page_over_bare"] >= 0.9,
        ".delay() view p99 <= 2x page p99": figures["ratios"]["delay_p99_over_page_p99"] <= 2,
    }
    write_results("B6", figures, tables(figures))
    return figures


def main() -> dict[str, Any]:
    with temp_dir("b6") as work:
        return run(work)
