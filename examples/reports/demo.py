"""`make demo`: bring kvern up with the reports example, have a crowd of people use its site through nginx, watch
the pools grow and shrink, save the PDFs, print a summary, and take everything down again.

Each person is a client of their own (their own cookies): GET / (the form and its CSRF cookie), POST the form
with the token, follow the redirect to the report's page, poll the page's status view until the report is done,
then download the PDF and check it is one.

Usage: python examples/reports/demo.py [--reports N] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from kvern.report import collect_status
from kvern.runtime.instance import Instance, front_door_url
from kvern.spec import load_spec

HERE = Path(__file__).resolve().parent
FIRST_USER_ID = 1000
POLL_S = 0.5
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
STATUS_URL = re.compile(r'data-status-url="([^"]+)"')


@dataclass
class Visit:
    """One person's way through the site, as far as it got."""

    user_id: int
    status: str = "new"  # new, then the job's status; "refused" when the form was not accepted
    progress: int = 0
    accepted_after: float | None = None  # seconds from the start until the site redirected to the report
    valid_pdf: bool = False
    problem: str = ""


def is_pdf(response: httpx.Response) -> bool:
    data = response.content
    return (
        response.headers.get("content-type") == "application/pdf"
        and response.headers.get("content-disposition", "").startswith("attachment")
        and data.startswith(b"%PDF-")
        and b"%%EOF" in data[-1024:]
    )


def find(pattern: re.Pattern[str], page: httpx.Response, what: str) -> str:
    match = pattern.search(page.text)
    if match is None:
        raise RuntimeError(f"{page.url} ({page.status_code}) has no {what}")
    return match.group(1)


async def ask_for_report(client: httpx.AsyncClient, visit: Visit, started: float) -> str | None:
    """The form, as a browser sends it; the report page's URL, or None when the site did not take it."""
    form = await client.get("/")
    token = find(CSRF_FIELD, form, "CSRF token")
    origin = str(client.base_url).rstrip("/")
    answer = await client.post(
        "/",
        data={"user_id": str(visit.user_id), "csrfmiddlewaretoken": token},
        headers={"Origin": origin, "Referer": origin + "/"},
    )
    if answer.status_code != 303:
        visit.status, visit.problem = "refused", f"POST / answered {answer.status_code}"
        return None
    visit.accepted_after = time.monotonic() - started
    return answer.headers["location"]


async def follow_report(client: httpx.AsyncClient, visit: Visit, page_url: str) -> str | None:
    """Poll the page's status view, as its script does; the PDF's URL once the report is ready."""
    status_url = find(STATUS_URL, await client.get(page_url), "status URL")
    while True:
        state = (await client.get(status_url)).json()
        visit.status, visit.progress = state["status"], state["progress"]
        if state["done"]:
            return state["pdf_url"]  # type: ignore[no-any-return]
        await asyncio.sleep(POLL_S)


async def visit_site(base_url: str, visit: Visit, started: float, out: Path) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:  # one person: one cookie jar
        try:
            page_url = await ask_for_report(client, visit, started)
            pdf_url = await follow_report(client, visit, page_url) if page_url else None
            if pdf_url:
                download = await client.get(pdf_url)
                visit.valid_pdf = is_pdf(download)
                (out / f"report-user-{visit.user_id}.pdf").write_bytes(download.content)
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            visit.problem = f"{type(exc).__name__}: {exc}"


async def show_progress(instance: Instance, visits: list[Visit]) -> None:
    """One line, redrawn: the reports' states, their mean progress and the pools' sizes."""
    while True:
        states = Counter(visit.status for visit in visits)
        mean_progress = sum(visit.progress for visit in visits) / max(1, len(visits))
        pools = (await asyncio.to_thread(collect_status, instance))["pools"]
        pool_line = ", ".join(f"pool {p['name']}: {p['processes']} worker processes" for p in pools)
        line = " ".join(f"{k} {v}" for k, v in sorted(states.items()))
        print(f"\r  {line:<40} mean progress {mean_progress:5.1f}%  {pool_line}   ", end="", flush=True)
        await asyncio.sleep(POLL_S)


async def crowd(instance: Instance, base_url: str, visits: list[Visit], out: Path) -> float:
    """Everyone uses the site at once; the seconds until the last one has their PDF."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    progress = asyncio.create_task(show_progress(instance, visits))
    try:
        await asyncio.gather(*(visit_site(base_url, visit, started, out) for visit in visits))
    finally:
        progress.cancel()
        print()
    return time.monotonic() - started


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


def summarize(visits: list[Visit], elapsed: float, out: Path) -> bool:
    accepted = [visit.accepted_after for visit in visits if visit.accepted_after is not None]
    states = Counter(visit.status for visit in visits)
    valid = sum(visit.valid_pdf for visit in visits)
    for visit in visits:
        if visit.problem:
            print(f"  user {visit.user_id}: {visit.problem}")
    print()
    print("summary")
    print(f"  requested  {len(visits)} (each through the form at /, as a person would)")
    print(f"  accepted   {len(accepted)}" + (f" (the last redirect after {max(accepted):.2f}s)" if accepted else ""))
    print(f"  succeeded  {states['succeeded']}")
    print(f"  failed     {states['failed'] + states['dead'] + states['cancelled']}")
    print(f"  valid PDFs {valid} (saved in {out})")
    print(f"  time       {elapsed:.1f}s from the first form to the last PDF")
    return states["succeeded"] == len(visits) == valid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=24)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    options = parser.parse_args()
    out = options.out.resolve()
    spec = load_spec(HERE / "kvern.toml")
    instance = Instance(spec, HERE / ".kvern")
    print("starting kvern with the reports example (private RabbitMQ, nginx, Django site on web heads, workers)...")
    started = time.monotonic()
    config = instance.up()
    base_url = front_door_url(config)
    print(f"kvern is up in {time.monotonic() - started:.1f}s: {base_url} (open it in a browser to request a report)")
    try:
        visits = [Visit(FIRST_USER_ID + i) for i in range(options.reports)]
        print(f"{len(visits)} people ask for a report at once...")
        elapsed = asyncio.run(crowd(instance, base_url, visits, out))
        watch_scale_in(instance)
        ok = summarize(visits, elapsed, out)
    finally:
        print("stopping kvern...")
        instance.down()
        print("kvern is down")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
