"""A minimal asyncio HTTP/1.1 client: low CPU per request, so the load generator steals little from kvern.

Keep-alive connections, Content-Length or chunked responses; every request's latency is measured with
`time.perf_counter()` from the first byte written to the last byte read. Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

HOST = "127.0.0.1"
TIMEOUT_STATUS = 0  # status of a request the client gave up on
ERROR_STATUS = -1  # status of a request that failed at the connection level


@dataclass(frozen=True)
class Result:
    status: int
    started: float  # time.time() when it was sent
    latency: float  # seconds
    body: bytes = b""

    @property
    def timed_out(self) -> bool:
        return self.status == TIMEOUT_STATUS

    def json(self) -> Any:
        return json.loads(self.body)


def port_of(base_url: str) -> int:
    port = urlsplit(base_url).port
    assert port is not None, base_url
    return port


def encode_request(
    method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: keep-alive"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def post_json(path: str, payload: Any, headers: Mapping[str, str] | None = None) -> bytes:
    return encode_request("POST", path, json.dumps(payload).encode(), headers)


class Connection:
    """One keep-alive connection; reopened transparently after the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes, timeout: float) -> Result:
        started, t0 = time.time(), time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                status, body = await self._exchange(raw)
        except TimeoutError:
            await self.close()
            return Result(TIMEOUT_STATUS, started, time.perf_counter() - t0)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            await self.close()
            return Result(ERROR_STATUS, started, time.perf_counter() - t0)
        return Result(status, started, time.perf_counter() - t0, body)

    async def _exchange(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, headers = _parse_head(head)
        body = await _read_body(self.reader, headers)
        if headers.get("connection") == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return b""
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return b"".join(chunks)
        chunks.append(chunk[:-2])


async def fetch_once(port: int, raw: bytes, timeout: float) -> Result:
    """One request on a fresh connection (a new user), closed afterwards."""
    connection = Connection(port)
    try:
        return await connection.request(raw, timeout)
    finally:
        await connection.close()
