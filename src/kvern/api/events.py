"""`GET /api/v1/jobs/{id}/events`: a job's status and progress as Server-Sent Events, ending with its final state.

Any web head serves any job's stream: the state comes from the shared job store, never from the head that took
the job. One poller per head (`JobWatch`) reads the marks of every job its streams follow in one query per
interval, and wakes only the streams whose job changed; a woken stream reads its job once and sends it.

Events: `status` (the status changed, and the first event), `progress` (same status, new progress or message),
`end` (the final state; the stream closes, and a client must not reconnect), `gone` (no such job any more).
Each event's id marks the state it shows: a client reconnecting with `Last-Event-ID` gets the next state it has
not seen, or the final one. Same rules as GET of the job: a key that may read it, else 404; or a watch grant
for this one job (api/watch_grants.py), which a site hands to a page that holds no key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from kvern.api.auth import Credentials, needs
from kvern.api.views import ErrorView, error_body
from kvern.api.watch_grants import grant_allows, grant_secret
from kvern.constants import API_PREFIX
from kvern.errors import RuntimeStateError, StoreUnavailable
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.keys import Scope
from kvern.jobs.states import TERMINAL
from kvern.jobs.store import JobStore
from kvern.jobs.views import job_summary
from kvern.jobs.watching import job_mark, job_marks
from kvern.runtime_config import RuntimeConfig

if TYPE_CHECKING:
    from kvern.api.app import WebHead

log = logging.getLogger("kvern.api")

POLL_S = 0.5  # how soon a change in the store reaches the streams of a head
KEEPALIVE_S = 15.0  # a comment line keeps proxies and browsers from closing an idle stream
MAX_STREAM_S = 3600.0  # a stream closes after this; the browser reconnects with Last-Event-ID
RETRY_MS = 2000  # how long a browser waits before it reconnects after a dropped stream
EVENT_STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

MarkReader = Callable[[Sequence[str]], dict[str, str]]


class JobWatch:
    """One poller per head for all its streams: reads the marks of the followed jobs in one call per interval
    and wakes the followers of a job whose mark changed. It runs only while some stream follows a job."""

    def __init__(self, read_marks: MarkReader, interval_s: float = POLL_S) -> None:
        self.read_marks = read_marks
        self.interval_s = interval_s
        self.followers: dict[str, set[asyncio.Event]] = {}
        self.marks: dict[str, str | None] = {}
        self.polls = 0  # how many reads of the store this head made (a test checks the streams share them)
        self.task: asyncio.Task[None] | None = None

    @contextmanager
    def follow(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the job's mark changes (the follower clears it before it reads the job)."""
        changed = asyncio.Event()
        self.followers.setdefault(job_id, set()).add(changed)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield changed
        finally:
            waiting = self.followers.get(job_id, set())
            waiting.discard(changed)
            if not waiting:
                self.followers.pop(job_id, None)
                self.marks.pop(job_id, None)

    async def _run(self) -> None:
        while self.followers:
            await asyncio.sleep(self.interval_s)
            job_ids = list(self.followers)
            if not job_ids:
                break
            try:
                marks = await run_in_threadpool(self.read_marks, job_ids)
            except StoreUnavailable as exc:
                log.warning("job events: the store is unavailable: %s", exc)
                continue
            self.polls += 1
            self._wake_changed(job_ids, marks)

    def _wake_changed(self, job_ids: Sequence[str], marks: dict[str, str]) -> None:
        for job_id in job_ids:
            seen = marks.get(job_id)
            if job_id in self.marks and self.marks[job_id] == seen:
                continue
            self.marks[job_id] = seen
            for changed in self.followers.get(job_id, ()):
                changed.set()


def mark_reader(store: JobStoreProtocol) -> MarkReader:
    if isinstance(store, JobStore):
        return partial(job_marks, store.engine)

    def one_by_one(job_ids: Sequence[str]) -> dict[str, str]:  # stores without SQL (tests)
        return {job.id: job_mark(job) for job in (store.get(job_id) for job_id in job_ids) if job is not None}

    return one_by_one


def sse(kind: str, data: dict[str, Any], event_id: str | None = None) -> str:
    lines = [f"event: {kind}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


async def job_events(
    store: JobStoreProtocol, watch: JobWatch, job_id: str, last_seen: str | None
) -> AsyncIterator[str]:
    """The stream of one job: its current state unless `last_seen` is it, each change after, the final state."""
    yield f"retry: {RETRY_MS}\n\n"
    deadline = time.monotonic() + MAX_STREAM_S
    sent_status: str | None = None
    with watch.follow(job_id) as changed:
        while time.monotonic() < deadline:
            changed.clear()
            job = await run_in_threadpool(store.get, job_id)
            if job is None:
                yield sse("gone", {"id": job_id})
                return
            seen = job_mark(job)
            if job.status in TERMINAL:
                yield sse("end", job_summary(job), seen)
                return
            if seen != last_seen:
                yield sse("status" if job.status.value != sent_status else "progress", job_summary(job), seen)
                last_seen, sent_status = seen, job.status.value
            try:
                await asyncio.wait_for(changed.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keepalive\n\n"


def watch_of(request: Request) -> JobWatch:
    state = request.app.state
    if getattr(state, "job_watch", None) is None:
        state.job_watch = JobWatch(mark_reader(_head(request).store))
    watch: JobWatch = state.job_watch
    return watch


def _head(request: Request) -> WebHead:
    return request.app.state.head  # type: ignore[no-any-return]


def _grant_secret(request: Request) -> bytes | None:
    """The secret grants are checked with: the app's own (tests), else the instance's runtime config's."""
    state = request.app.state
    if getattr(state, "grant_secret", None) is None:
        try:
            state.grant_secret = grant_secret(RuntimeConfig.from_environment())
        except RuntimeStateError:
            state.grant_secret = b""  # not started by kvern: no grant is valid
    secret: bytes = state.grant_secret
    return secret or None


async def _may_follow(request: Request, job_id: str, credentials: Credentials, grant: str | None) -> bool:
    """A valid grant for this job, or a key that may read it (401/403 as GET of the job for a bad key)."""
    if grant is not None:
        secret = _grant_secret(request)
        return secret is not None and grant_allows(secret, grant, job_id)
    caller = await needs(Scope.READ)(request, credentials)
    job = await run_in_threadpool(_head(request).store.get, job_id)
    return job is not None and caller.may_see(job)


# One event of the stream, as a client's parser hands it out.
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["status", "progress", "end", "gone"]},
        "id": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer"},
    },
}
EVENTS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `status`, `progress`, then `end` (or `gone`); data: the job's summary",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    },
    **{code: {"model": ErrorView} for code in (401, 403, 404, 422, 503)},
}

router = APIRouter()


@router.get(f"{API_PREFIX}/jobs/{{job_id}}/events", responses=EVENTS_RESPONSE, operation_id="job_events")
async def follow_job(
    request: Request,
    job_id: str,
    credentials: Credentials,
    grant: Annotated[str | None, Query(max_length=200)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=200)] = None,
) -> Response:
    if not await _may_follow(request, job_id, credentials, grant):
        return JSONResponse(error_body("unknown_job", f"no job with id {job_id!r}"), status_code=404)
    stream = job_events(_head(request).store, watch_of(request), job_id, last_event_id)
    return StreamingResponse(stream, media_type="text/event-stream", headers=EVENT_STREAM_HEADERS)
