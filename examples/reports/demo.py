"""`make demo`: bring kvern up with the reports example, send a burst of report requests through nginx, watch
them, save the PDFs, print a summary, and take everything down again.

Usage: python examples/reports/demo.py [--reports N] [--seconds S] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from kvern.report import collect_status
from kvern.runtime.instance import Instance, front_door_url
from kvern.spec import load_spec

HERE = Path(__file__).resolve().parent
TASK = "tasks.generate_heavy_report"
TERMINAL = {"succeeded", "failed", "dead", "cancelled"}


async def submit_burst(client: httpx.AsyncClient, count: int, seconds: float) -> list[str]:
    async def submit(user_id: int) -> str | None:
        body = {"task": TASK, "args": [user_id], "kwargs": {"seconds": seconds}}
        response = await client.post("/api/v1/jobs", json=body)
        if response.status_code != 202:
            print(f"  user {user_id}: rejected {response.status_code} {response.text}")
            return None
        return str(response.json()["id"])

    ids = await asyncio.gather(*(submit(1000 + i) for i in range(count)))
    return [job_id for job_id in ids if job_id]


async def watch(client: httpx.AsyncClient, instance: Instance, ids: list[str]) -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = {}
    while True:
        responses = await asyncio.gather(*(client.get(f"/api/v1/jobs/{job_id}") for job_id in ids))
        jobs = {r.json()["id"]: r.json() for r in responses}
        states = Counter(job["status"] for job in jobs.values())
        mean_progress = sum(job["progress"] for job in jobs.values()) / max(1, len(jobs))
        pools = collect_status(instance)["pools"]
        pool_line = ", ".join(f"pool {p['name']}: {p['processes']} worker processes" for p in pools)
        line = " ".join(f"{k} {v}" for k, v in sorted(states.items()))
        print(f"\r  {line:<40} mean progress {mean_progress:5.1f}%  {pool_line}   ", end="", flush=True)
        if all(job["status"] in TERMINAL for job in jobs.values()):
            print()
            return jobs
        await asyncio.sleep(0.5)


async def save_pdfs(client: httpx.AsyncClient, jobs: dict[str, dict[str, Any]], out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    valid = 0
    for job in jobs.values():
        for artifact in job["artifacts"]:
            data = (await client.get(artifact["url"])).content
            path = out / f"report-user-{job['args'][0]}.pdf"
            path.write_bytes(data)
            valid += data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:]
    return valid


def watch_scale_in(instance: Instance) -> None:
    """After the burst, the pools shrink back to their minimum once their cool-down has passed."""
    deadline = time.monotonic() + max(p.idle_after for p in instance.spec.pools) + 15
    print("watching the pools scale back in (also visible with `kvern status`)...")
    while time.monotonic() < deadline:
        pools = collect_status(instance)["pools"]
        if all(p["processes"] <= p["min"] for p in pools):
            break
        time.sleep(1)
    for pool in collect_status(instance)["pools"]:
        last = pool["last_decision"]
        reason = f"last decision {last['from']} -> {last['to']}: {last['reason']}" if last else "no decision"
        print(f"  pool {pool['name']}: {pool['processes']} processes (min {pool['min']}); {reason}")


async def run_burst(instance: Instance, base_url: str, count: int, seconds: float, out: Path) -> bool:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        started = time.monotonic()
        ids = await submit_burst(client, count, seconds)
        print(f"accepted {len(ids)} of {count} report requests in {time.monotonic() - started:.2f}s")
        jobs = await watch(client, instance, ids)
        elapsed = time.monotonic() - started
        valid = await save_pdfs(client, jobs, out)
    watch_scale_in(instance)
    states = Counter(job["status"] for job in jobs.values())
    print()
    print("summary")
    print(f"  requested  {count}")
    print(f"  accepted   {len(ids)}")
    print(f"  succeeded  {states['succeeded']}")
    print(f"  failed     {states['failed'] + states['dead']}")
    print(f"  valid PDFs {valid} (saved in {out})")
    print(f"  time       {elapsed:.1f}s for {count} reports of ~{seconds:g}s each")
    return states["succeeded"] == count and valid == count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    options = parser.parse_args()
    spec = load_spec(HERE / "kvern.toml")
    instance = Instance(spec, HERE / ".kvern")
    print("starting kvern with the reports example (private RabbitMQ, nginx, web heads, workers)...")
    started = time.monotonic()
    config = instance.up()
    base_url = front_door_url(config)
    print(f"kvern is up in {time.monotonic() - started:.1f}s: {base_url} (open it in a browser to request a report)")
    try:
        ok = asyncio.run(run_burst(instance, base_url, options.reports, options.seconds, options.out.resolve()))
    finally:
        print("stopping kvern...")
        instance.down()
        print("kvern is down")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
