"""The dashboard's job pages: find jobs by status, task, time and id prefix; one job with its attempts; replay,
cancel and delete (the job API's own rules: a replay publishes again, a cancel of a running job asks it to stop)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from kvern.api.dashboard.session import Admin
from kvern.api.downloads import artifact_response
from kvern.api.views import error_body
from kvern.jobs.activity import JobFilter, find_jobs
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.jobs.views import history_view, job_body, job_summary

if TYPE_CHECKING:
    from kvern.api.app import WebHead

PAGE = 50
router = APIRouter()


def _head(request: Request) -> WebHead:
    return request.app.state.head  # type: ignore[no-any-return]


def _store(request: Request) -> JobStore:
    store = _head(request).store
    if not isinstance(store, JobStore):
        raise TypeError("the dashboard reads an SQL job store")
    return store


def _unknown(job_id: str) -> JSONResponse:
    return JSONResponse(error_body("unknown_job", f"no job with id {job_id!r}"), status_code=404)


@router.get("/api/jobs")
async def list_jobs(
    request: Request,
    _admin: Admin,
    status: JobStatus | None = None,
    task: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[str | None, Query(max_length=36)] = None,
    after: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    before: Annotated[float | None, Query(allow_inf_nan=False)] = None,
) -> Response:
    where = JobFilter(status, task or None, (q or "").strip().lower() or None, after, before)
    jobs = await run_in_threadpool(find_jobs, _store(request).engine, where, PAGE)
    following = jobs[-1].created_at if len(jobs) == PAGE else None
    rows = [job_summary(job) | {"created": job.created_at, "queue": job.queue} for job in jobs]
    return JSONResponse({"jobs": rows, "next_before": following, "tasks": sorted(_head(request).catalog.names())})


@router.get("/api/jobs/{job_id}")
async def show_job(request: Request, job_id: str, _admin: Admin) -> Response:
    store = _store(request)
    job = await run_in_threadpool(store.get, job_id)
    if job is None:
        return _unknown(job_id)
    history = history_view(await run_in_threadpool(store.history, job_id))
    return JSONResponse(job_body(job) | {"queue": job.queue, "history": history})


@router.get("/api/jobs/{job_id}/artifacts/{name}")
async def download(request: Request, job_id: str, name: str, _admin: Admin) -> Response:
    store = _head(request).store
    info = await run_in_threadpool(store.artifact_info, job_id, name)
    if info is None:
        return JSONResponse(error_body("unknown_artifact", f"job {job_id!r} has no artifact {name!r}"), 404)
    return artifact_response(store, job_id, info)


@router.post("/api/jobs/{job_id}/replay")
async def replay(request: Request, job_id: str, _admin: Admin) -> Response:
    head = _head(request)
    job = await run_in_threadpool(head.store.replay, job_id)
    if job is None:
        return await _refused(request, job_id, "not_replayable", "only a failed or dead job can be replayed")
    await head.publisher.publish(job)
    await run_in_threadpool(head.store.mark_published, [job.id])
    return JSONResponse(job_body(job), status_code=202)


@router.post("/api/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str, _admin: Admin) -> Response:
    job = await run_in_threadpool(_head(request).store.cancel, job_id)
    if job is None:
        return await _refused(request, job_id, "not_cancellable", "only a queued or running job can be cancelled")
    return JSONResponse(job_body(job))


@router.delete("/api/jobs/{job_id}", status_code=204)
async def delete(request: Request, job_id: str, _admin: Admin) -> Response:
    if not await run_in_threadpool(_head(request).store.erase, job_id):
        return _unknown(job_id)
    return Response(status_code=204)


async def _refused(request: Request, job_id: str, code: str, message: str) -> JSONResponse:
    if await run_in_threadpool(_head(request).store.get, job_id) is None:
        return _unknown(job_id)
    body: dict[str, Any] = error_body(code, message)
    return JSONResponse(body, status_code=409)
