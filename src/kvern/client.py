"""A small client of the job API, used by `kvern submit` (and handy in scripts)."""

from __future__ import annotations

import json
import time
from typing import Any

import click
import httpx

from kvern.constants import API_PREFIX, IDEMPOTENCY_HEADER, RET_CONNECT, RET_FAILURE, RET_OK, SERVED_API_PREFIX
from kvern.jobs.states import TERMINAL, JobStatus

POLL_INTERVAL_S = 0.3


def parse_value(text: str) -> Any:
    """A CLI argument as JSON when it parses (42, true, [1]), else as a plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_kwargs(items: tuple[str, ...]) -> dict[str, Any]:
    kwargs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--kwarg")
        kwargs[name] = parse_value(value)
    return kwargs


def submit_and_follow(
    base_url: str,
    task: str,
    args: tuple[str, ...],
    kwargs: tuple[str, ...],
    wait: bool,
    idempotency_key: str | None,
    subject: str | None = None,
    api_prefix: str = SERVED_API_PREFIX,
) -> int:
    """Submit through the front door at `base_url`, whose job API is under `api_prefix` (web.api_prefix)."""
    jobs = f"{api_prefix}{API_PREFIX.removeprefix(SERVED_API_PREFIX)}/jobs"
    body = {"task": task, "args": [parse_value(a) for a in args], "kwargs": parse_kwargs(kwargs)}
    if subject is not None:
        body["subject"] = subject
    headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else {}
    with httpx.Client(base_url=base_url, timeout=10) as client:
        try:
            response = client.post(jobs, json=body, headers=headers)
        except httpx.HTTPError as exc:
            click.echo(f"kvern: front door unreachable: {exc}", err=True)
            return RET_CONNECT
        if response.status_code not in (200, 202):
            click.echo(f"kvern: rejected ({response.status_code}): {response.text}", err=True)
            return RET_FAILURE
        job = response.json()
        click.echo(f"job {job['id']} {job['status']}")
        if not wait:
            return RET_OK
        job = follow(client, job["id"], jobs)
    click.echo(json.dumps(job, indent=2))
    return RET_OK if job["status"] == JobStatus.SUCCEEDED else RET_FAILURE


def follow(client: httpx.Client, job_id: str, jobs: str = f"{API_PREFIX}/jobs") -> dict[str, Any]:
    with click.progressbar(length=100, label=f"job {job_id[:8]}") as bar:
        shown = 0
        while True:
            job: dict[str, Any] = client.get(f"{jobs}/{job_id}").json()
            bar.update(job["progress"] - shown)
            shown = job["progress"]
            if job["status"] in TERMINAL:
                return job
            time.sleep(POLL_INTERVAL_S)
