"""Closed-loop HTTP load: N connections POST a JSON body (or GET a page) for a while; accepted/s and latency
percentiles.

Debian's `wrk` (C, epoll, 2 threads) is used when installed: it leaves the most CPU to the system under test.
Without it, a Python asyncio generator (bench.httpclient) does the same job, at a higher CPU cost per request;
the result names which one ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.common import ms, percentile
from bench.httpclient import Connection, encode_request, port_of

LUA_POST = Path(__file__).resolve().parent / "lua" / "post_json.lua"
WRK_THREADS = 2
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LoadResult:
    tool: str
    seconds: float
    requests: int
    failed: int  # non-2xx answers, socket errors and timeouts
    p50_ms: float
    p99_ms: float

    @property
    def accepted_per_s(self) -> float:
        return (self.requests - self.failed) / self.seconds if self.seconds else 0.0


def post_load(
    url: str, path: str, body: str, connections: int, seconds: float, headers: Mapping[str, str] | None = None
) -> LoadResult:
    return _load(url, path, "POST", body, connections, seconds, headers or {})


def get_load(url: str, path: str, connections: int, seconds: float) -> LoadResult:
    return _load(url, path, "GET", None, connections, seconds, {})


def _load(
    url: str, path: str, method: str, body: str | None, connections: int, seconds: float, headers: Mapping[str, str]
) -> LoadResult:
    if shutil.which("wrk"):
        return _wrk(url + path, method, body, connections, seconds, headers)
    raw = encode_request(method, path, body.encode() if body is not None else None, headers)
    return asyncio.run(_python_load(port_of(url), raw, connections, seconds))


def _wrk(
    target: str, method: str, body: str | None, connections: int, seconds: float, headers: Mapping[str, str]
) -> LoadResult:
    command = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        f"--timeout={REQUEST_TIMEOUT_S:g}s",
        "-s",
        str(LUA_POST),
        *(option for name, value in headers.items() for option in ("-H", f"{name}: {value}")),
        target,
    ]
    env = {**os.environ, "BENCH_METHOD": method, "BENCH_BODY": body or ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next(text for text in reversed(done.stdout.splitlines()) if text.startswith("{"))
    raw = json.loads(line)
    failed = sum(raw[key] for key in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        "wrk",
        raw["duration_us"] / 1e6,
        raw["requests"],
        failed,
        raw["p50_us"] / 1000,
        raw["p99_us"] / 1000,
    )


async def _python_load(port: int, raw: bytes, connections: int, seconds: float) -> LoadResult:
    latencies: list[float] = []
    failed = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal failed
        connection = Connection(port)
        try:
            while time.perf_counter() < end:
                result = await connection.request(raw, REQUEST_TIMEOUT_S)
                latencies.append(result.latency)
                failed += not 200 <= result.status < 300
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return LoadResult(
        "python-asyncio", elapsed, len(latencies), failed, ms(percentile(latencies, 50)), ms(percentile(latencies, 99))
    )
