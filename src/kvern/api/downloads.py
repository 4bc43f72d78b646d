"""Artifact downloads: streamed from the store a chunk at a time, with headers that keep a browser from running
what a task saved (a task's file is as untrusted as its input)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import ArtifactInfo

CHUNK_BYTES = 256 * 1024  # what one download holds in the web head's memory at a time
SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",  # served as its declared type, never sniffed into HTML
    "Content-Security-Policy": "sandbox",  # opened in a tab anyway: no script, no same-origin access
}


def content_disposition(name: str) -> str:
    """`attachment` with the name twice (RFC 6266): an ASCII stand-in for old clients, and `filename*` in UTF-8,
    percent-encoded, so that quotes, backslashes and non-ASCII names neither break the header nor the server."""
    fallback = "".join(char if 0x20 <= ord(char) < 0x7F and char not in '"\\%' else "_" for char in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def artifact_response(store: JobStoreProtocol, job_id: str, info: ArtifactInfo) -> StreamingResponse:
    headers = {
        **SAFE_HEADERS,
        "Content-Disposition": content_disposition(info.name),
        "Content-Length": str(info.size),
    }
    return StreamingResponse(_chunks(store, job_id, info), media_type=info.content_type, headers=headers)


async def _chunks(store: JobStoreProtocol, job_id: str, info: ArtifactInfo) -> AsyncIterator[bytes]:
    offset = 0
    while offset < info.size:
        chunk = await run_in_threadpool(store.artifact_chunk, job_id, info.name, offset, CHUNK_BYTES)
        if not chunk:  # the job stopped serving it meanwhile (replayed): the short body tells the client
            return
        yield chunk
        offset += len(chunk)
