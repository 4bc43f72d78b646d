"""The web heads' ASGI app: validate, record, publish with confirm, answer 202. Nothing heavy runs here."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from kvern.api.auth import Authenticator, Caller, needs, needs_scope_or_local, scoped_idempotency_key
from kvern.api.batching import BatchPorts, JobInserter
from kvern.api.browsers import OriginGuard
from kvern.api.bulk import submit_batch
from kvern.api.dashboard import router as dashboard_router
from kvern.api.docs import install_docs
from kvern.api.downloads import artifact_response
from kvern.api.events import router as job_events_router
from kvern.api.head_ports import HeadPorts
from kvern.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kvern.api.metrics import ApiMetrics
from kvern.api.openapi import install_openapi, job_links
from kvern.api.public_prefix import PublicPrefix
from kvern.api.published import PublishedMarker
from kvern.api.submission import Submission, SubmissionError, parse_batch, parse_submission
from kvern.api.views import (
    BatchView,
    DeadJobView,
    ErrorView,
    HealthView,
    JobDetailView,
    JobPage,
    JobView,
    error_body,
)
from kvern.broker.message import JobPublisherProtocol
from kvern.broker.publisher import JobPublisher
from kvern.catalog import TaskCatalog, load_user_app
from kvern.constants import (
    API_PREFIX,
    CLIENT_CLOSED_REQUEST,
    IDEMPOTENCY_HEADER,
    MAX_BODY_BYTES,
    MAX_SUBJECT_CHARS,
    ROLE_WEB,
    SUBJECT_PATTERN,
)
from kvern.enqueue.core import accept, run_async
from kvern.errors import BacklogFull, PublishError, StoreUnavailable
from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.deliveries import DeliveryLog
from kvern.jobs.keys import KeyStoreProtocol, Scope, SqlKeyStore
from kvern.jobs.metric_samples import MetricSamples
from kvern.jobs.records import Job
from kvern.jobs.states import REPLAYABLE, JobStatus
from kvern.jobs.store import JobStore
from kvern.jobs.views import history_view, job_body, job_summary, job_url, public_path
from kvern.runtime.web_heads import app_heads_answering, remote_heads_listening
from kvern.runtime_config import RuntimeConfig
from kvern.spec import Spec

log = logging.getLogger("kvern.api")

RETRY_AFTER_S = "2"
MAX_IDEMPOTENCY_KEY = 200
MAX_PAGE_SIZE = 100  # jobs per list page: bounds what one request makes the store and the head load
DEFAULT_PAGE_SIZE = 50
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
OPENAPI_URL = "/api/openapi.json"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorView} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}
JSON_MEDIA_TYPE = "application/json"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class WebHead:
    spec: Spec
    catalog: TaskCatalog
    store: JobStoreProtocol
    publisher: JobPublisherProtocol
    front_door_port: int | None = None  # the origin's port, which nginx's Host header leaves out
    keys: KeyStoreProtocol | None = None  # None: authentication is off (`[web] auth = "off"`, unit tests)
    state_dir: Path | None = None  # where the app heads' sockets are found; None: no app heads to check
    deliveries: DeliveryLog | None = None  # the notification log a job's GET shows; None: not kept (unit tests)
    published_metrics: MetricSamples | None = None  # what the controller publishes; None: counted from the store
    marker: PublishedMarker = field(init=False)
    auth: Authenticator = field(init=False)
    metrics: ApiMetrics = field(init=False)
    inserter: JobInserter = field(init=False)

    def __post_init__(self) -> None:
        self.marker = PublishedMarker(self.store)
        self.metrics = ApiMetrics(self.store, self.published_metrics)
        self.inserter = JobInserter(self.store)
        self.auth = Authenticator(self.keys)

    @classmethod
    def from_runtime(cls, config: RuntimeConfig) -> WebHead:
        spec = config.spec()
        _, catalog = load_user_app(spec)
        publisher = JobPublisher(config.broker_urls[ROLE_WEB])
        store = JobStore(config.store_url)
        keys = SqlKeyStore(store.engine) if spec.web.auth == "keys" else None
        deliveries, published = DeliveryLog(store.engine), MetricSamples(store.engine)
        return cls(
            spec, catalog, store, publisher, config.front_door_port, keys, config.state_path, deliveries, published
        )

    async def submit(
        self, submission: Submission, idempotency_key: str | None, owner: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Record and publish a job for `owner` (an API key's id) by enqueue/core.py's rules; returns the answer's
        body and whether the job is new. Idempotency keys are the owner's own: another key's same key is another
        job."""
        ports = HeadPorts(self.store, self.publisher, self.inserter, self.marker)
        scoped = scoped_idempotency_key(owner, idempotency_key)
        accepted = await run_async(accept(self.spec, submission, scoped, owner), ports)
        return accepted.body, accepted.created


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def create_app(head: WebHead | None = None) -> FastAPI:
    """The app; `head` is built from the runtime config at startup unless a test passes one."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.head = head or WebHead.from_runtime(RuntimeConfig.from_environment())
        yield
        await app.state.head.marker.close()
        await app.state.head.publisher.close()
        app.state.head.store.close()

    app = FastAPI(
        title="kvern job API",
        version="1",
        lifespan=lifespan,
        openapi_url=None,  # served by install_openapi, behind a key (or from this machine)
        docs_url=None,  # served by install_docs, with local assets
        redoc_url=None,
        dependencies=[Depends(require_json_body)],
    )
    app.add_middleware(OriginGuard)
    app.add_middleware(PublicPrefix)
    docs_guard = [Depends(needs_scope_or_local(Scope.READ))]
    install_docs(app, OPENAPI_URL, docs_guard)
    install_openapi(
        app,
        OPENAPI_URL,
        lambda: list(_head_of(app).catalog.names()),
        docs_guard,
        notify=lambda: _head_of(app).spec.notify,
        public_prefix=lambda: _head_of(app).spec.web.api_prefix,
    )
    _install_error_handlers(app)
    _install_job_routes(app)
    _install_batch_route(app)
    _install_cancel_route(app)
    _install_erase_route(app)
    _install_dead_letter_routes(app)
    _install_health_routes(app)
    app.include_router(job_events_router)
    app.include_router(dashboard_router)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    _install_protocol_error_handlers(app)

    @app.exception_handler(StoreUnavailable)
    async def store_down(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("job store unavailable: %s", exc)
        return json_error(503, "store_unavailable", "the job store is unavailable", {"Retry-After": RETRY_AFTER_S})

    @app.exception_handler(BacklogFull)
    async def backlog_full(_request: Request, exc: BacklogFull) -> JSONResponse:
        return json_error(503, "backlog_full", str(exc), {"Retry-After": RETRY_AFTER_S})

    @app.exception_handler(PublishError)
    async def broker_down(_request: Request, exc: PublishError) -> JSONResponse:
        log.warning("publish failed: %s", exc)
        return json_error(503, "broker_unavailable", str(exc), {"Retry-After": RETRY_AFTER_S})


def _install_protocol_error_handlers(app: FastAPI) -> None:
    """FastAPI's and Starlette's own errors (validation, 404, 405, crashes) in the API's one error shape."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(error.get("type") == "json_invalid" for error in exc.errors()):  # a body FastAPI itself parses
            return json_error(400, "malformed_json", "request body is not valid JSON")
        problems = [_validation_problem(error) for error in exc.errors()]
        if any(IDEMPOTENCY_HEADER in problem for problem in problems):
            return json_error(400, "invalid_idempotency_key", f"{IDEMPOTENCY_HEADER} must be 1 to 200 characters")
        # 422 as FastAPI has always answered here (clients may test for it); only the shape changes.
        return json_error(422, "invalid_request", "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            headers["Allow"] = ", ".join(sorted(_allowed_methods(request)))
        code = HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return json_error(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _exc: ClientDisconnect) -> Response:
        # Handled here, not by `crashed`: Starlette re-raises what reaches that one, and the server logs it again.
        return _client_gone(request)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientDisconnect):  # raised outside a route: no traceback either
            return _client_gone(request)
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return json_error(500, "internal_error", "the web head failed to answer; the error is in its log")


def _client_gone(request: Request) -> Response:
    """The client went away mid-request (a load generator closing its connections): nothing failed here and no
    one reads the answer, so one line without a traceback and no 500."""
    log.info("%s %s: client disconnected before the answer", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


HTTP_ERROR_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


async def require_json_body(request: Request) -> None:
    """A write's body must be declared JSON: a web page can send a cross-origin `text/plain` or form POST
    without asking the browser's CORS preflight, but never an `application/json` one. A write without a body and
    without a Content-Type (cancel, replay) carries nothing to misread."""
    if request.method not in WRITE_METHODS:
        return
    declared = request.headers.get("content-type")
    if declared is None and not _may_have_body(request):
        return
    media_type = (declared or "").split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise StarletteHTTPException(415, f"the request body must be {JSON_MEDIA_TYPE}")


def _may_have_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return "transfer-encoding" in request.headers or (length is not None and length.strip() != "0")


def _validation_problem(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}"


def _allowed_methods(request: Request) -> set[str]:
    """Every method some route takes at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return methods


def _head(request: Request) -> WebHead:
    return _head_of(request.app)


def _head_of(app: FastAPI) -> WebHead:
    return app.state.head  # type: ignore[no-any-return]


SUBMIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["task"],
    "properties": {
        "task": {"type": "string", "minLength": 1},
        "args": {"type": "array", "items": {}},
        "kwargs": {"type": "object"},
        # who is told when it finishes: "mailto:..." (webhook URLs if the spec allows them)
        "notify": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
        "subject": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_SUBJECT_CHARS,
            "pattern": SUBJECT_PATTERN,
        },
    },
    "additionalProperties": False,
}
SUBMIT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": SUBMIT_SCHEMA}}}}


def _install_job_routes(app: FastAPI) -> None:
    @app.post(
        f"{API_PREFIX}/jobs",
        status_code=202,
        response_model=JobView,
        responses={**ERRORS, 200: {"model": JobView, "links": job_links()}, 202: {"links": job_links()}},
        openapi_extra=SUBMIT_BODY,
        operation_id="submit_job",
    )
    async def submit_job(
        request: Request,
        caller: Annotated[Caller, Depends(needs(Scope.SUBMIT))],
        idempotency_key: Annotated[
            str | None, Header(alias=IDEMPOTENCY_HEADER, min_length=1, max_length=MAX_IDEMPOTENCY_KEY)
        ] = None,
    ) -> Response:
        started = time.perf_counter()
        code = 500
        try:
            response = await _submit(request, idempotency_key, caller)
            code = response.status_code
            return response
        except (PublishError, StoreUnavailable, ClientDisconnect) as exc:
            code = CLIENT_CLOSED_REQUEST if isinstance(exc, ClientDisconnect) else 503
            raise
        finally:
            _head(request).metrics.observe_submission(code, time.perf_counter() - started)

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}", response_model=JobDetailView, responses=ERRORS, operation_id="get_job")
    async def get_job(request: Request, job_id: str, caller: Reader) -> Response:
        job = await _visible_job(request, job_id, caller)
        if job is None:
            return unknown_job(job_id)
        body = job_body(job)
        deliveries = _head(request).deliveries
        if deliveries is not None:  # each attempt to announce its end (README "Notifications")
            body["notifications"] = [d.view() for d in await run_in_threadpool(deliveries.of_job, job_id)]
        return JSONResponse(body)

    @app.get(f"{API_PREFIX}/jobs", response_model=JobPage, responses=ERRORS)
    async def list_jobs(
        request: Request,
        caller: Reader,
        status: JobStatus | None = None,
        limit: PageSize = DEFAULT_PAGE_SIZE,
        before: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    ) -> Response:
        jobs = await run_in_threadpool(_head(request).store.list_jobs, status, limit, before, caller.list_owner)
        following = None
        if len(jobs) == limit:
            query = f"limit={limit}&before={jobs[-1].created_at!r}" + (f"&status={status.value}" if status else "")
            following = public_path(f"{API_PREFIX}/jobs?{query}")
        return JSONResponse({"jobs": [job_summary(job) for job in jobs], "next": following})

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}/artifacts/{{name}}", responses=ERRORS)
    async def get_artifact(request: Request, job_id: str, name: str, caller: Reader) -> Response:
        store = _head(request).store
        visible = await _visible_job(request, job_id, caller)
        info = await run_in_threadpool(store.artifact_info, job_id, name) if visible else None
        if info is None:
            return json_error(404, "unknown_artifact", f"job {job_id!r} has no artifact {name!r}")
        return artifact_response(store, job_id, info)


Reader = Annotated[Caller, Depends(needs(Scope.READ))]
Submitter = Annotated[Caller, Depends(needs(Scope.SUBMIT))]


def unknown_job(job_id: str) -> JSONResponse:
    return json_error(404, "unknown_job", f"no job with id {job_id!r}")


async def _visible_job(request: Request, job_id: str, caller: Caller) -> Job | None:
    """The job, when the caller may see it; another key's job is as unknown as a job that never existed."""
    job = await run_in_threadpool(_head(request).store.get, job_id)
    return job if job is not None and caller.may_see(job) else None


async def _submit(request: Request, idempotency_key: str | None, caller: Caller) -> Response:
    head = _head(request)
    body = await _read_body(request)
    if isinstance(body, Response):
        return body
    try:
        submission = parse_submission(body, head.catalog, head.spec.limits, head.spec.notify)
    except SubmissionError as exc:
        return json_error(exc.status, exc.code, exc.message)
    try:
        answer, created = await head.submit(submission, idempotency_key, caller.owner)
    except SubmissionError as exc:  # an idempotency key used before with another request (409)
        return json_error(exc.status, exc.code, exc.message)
    return JSONResponse(answer, status_code=202 if created else 200, headers={"Location": job_url(answer["id"])})


async def _read_body(request: Request) -> bytes | Response:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return json_error(413, "body_too_large", f"request body is over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return json_error(413, "body_too_large", f"request body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _batch_body() -> dict[str, Any]:
    # The jobs' items are not constrained in the schema: a job that breaks the single submit's rules is answered
    # in its own slot of the 200, not by refusing the request, so no item is "invalid" for the request itself.
    item = {
        "description": "a job, as the body of POST /api/v1/jobs (task, args, kwargs, subject), plus an optional "
        "idempotency_key (1 to 200 characters); answered in its own slot",
        "example": {"task": "tasks.generate_heavy_report", "args": [42], "idempotency_key": "report-42"},
    }
    jobs = {"type": "array", "minItems": 1, "items": item, "description": "1 to [limits] batch_jobs (500) jobs"}
    schema = {"type": "object", "required": ["jobs"], "properties": {"jobs": jobs}, "additionalProperties": False}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _install_batch_route(app: FastAPI) -> None:
    """Bulk submit (api/bulk.py): one answer per job, in order; 200 once the batch is understood."""

    @app.post(
        f"{API_PREFIX}/jobs:batch",
        response_model=BatchView,
        responses=ERRORS,
        openapi_extra=_batch_body(),
        operation_id="submit_jobs",
    )
    async def submit_jobs(request: Request, caller: Submitter) -> Response:
        head = _head(request)
        started = time.perf_counter()
        if IDEMPOTENCY_HEADER.lower() in request.headers:
            message = f"a bulk submit takes each job's idempotency_key, not an {IDEMPOTENCY_HEADER} header"
            return json_error(400, "invalid_idempotency_key", message)
        body = await _read_body(request)
        if isinstance(body, Response):
            return body
        try:
            items = parse_batch(body, head.catalog, head.spec.limits, head.spec.notify)
        except SubmissionError as exc:
            return json_error(exc.status, exc.code, exc.message)
        ports = BatchPorts(head.store, head.publisher, head.marker)
        answers = await submit_batch(head.spec, ports, items, caller.owner)
        seconds = time.perf_counter() - started
        for answer in answers:
            head.metrics.observe_submission(answer["status"], seconds)
        return JSONResponse({"jobs": answers})


CANCEL_ASKED: dict[int | str, dict[str, Any]] = {
    202: {"model": JobView, "description": "the running attempt is asked to stop; it ends cancelled"}
}


def _install_cancel_route(app: FastAPI) -> None:
    """Cancel a job: a queued one never runs (200); a running one is asked to stop and ends cancelled (202)."""

    @app.post(
        f"{API_PREFIX}/jobs/{{job_id}}/cancel",
        response_model=JobView,
        responses={**ERRORS, **CANCEL_ASKED},
        operation_id="cancel_job",
    )
    async def cancel_job(request: Request, job_id: str, caller: Submitter) -> Response:
        store = _head(request).store
        if await _visible_job(request, job_id, caller) is None:
            return unknown_job(job_id)
        job = await run_in_threadpool(store.cancel, job_id)
        if job is not None:
            return JSONResponse(job_body(job), status_code=202 if job.status is JobStatus.RUNNING else 200)
        current = await run_in_threadpool(store.get, job_id)
        if current is None:
            return json_error(404, "unknown_job", f"no job with id {job_id!r}")
        return json_error(
            409,
            "not_cancellable",
            f"job {job_id!r} is {current.status.value}; only a queued or running job can be cancelled",
        )


ERASED: dict[int | str, dict[str, Any]] = {204: {"description": "the job, its history and its artifacts are erased"}}


def _install_erase_route(app: FastAPI) -> None:
    """Erase a job whatever its state: its record, attempt history and artifacts (a person's right to erasure)."""

    @app.delete(
        f"{API_PREFIX}/jobs/{{job_id}}",
        status_code=204,
        response_class=Response,
        responses={**ERRORS, **ERASED},
        operation_id="erase_job",
    )
    async def erase_job(request: Request, job_id: str, caller: Submitter) -> Response:
        visible = await _visible_job(request, job_id, caller)
        if visible is None or not await run_in_threadpool(_head(request).store.erase, job_id):
            return json_error(404, "unknown_job", f"no job with id {job_id!r}")
        return Response(status_code=204)


def _install_dead_letter_routes(app: FastAPI) -> None:
    @app.get(f"{API_PREFIX}/dlq", response_model=JobPage, responses=ERRORS)
    async def list_dead(request: Request, caller: Reader, limit: PageSize = DEFAULT_PAGE_SIZE) -> Response:
        store = _head(request).store
        owner = caller.list_owner
        jobs = [
            job for status in REPLAYABLE for job in await run_in_threadpool(store.list_jobs, status, limit, None, owner)
        ]
        jobs.sort(key=lambda job: job.created_at, reverse=True)
        return JSONResponse({"jobs": [job_summary(job) for job in jobs[:limit]], "next": None})

    @app.get(f"{API_PREFIX}/dlq/{{job_id}}", response_model=DeadJobView, responses=ERRORS, operation_id="show_dead")
    async def show_dead(request: Request, job_id: str, caller: Reader) -> Response:
        store = _head(request).store
        job = await _visible_job(request, job_id, caller)
        if job is None:
            return json_error(404, "unknown_job", f"no job with id {job_id!r}")
        history = history_view(await run_in_threadpool(store.history, job_id))
        return JSONResponse({**job_body(job), "history": history})

    @app.post(
        f"{API_PREFIX}/dlq/{{job_id}}/replay",
        status_code=202,
        response_model=JobView,
        responses=ERRORS,
        operation_id="replay_dead",
    )
    async def replay_dead(request: Request, job_id: str, caller: Submitter) -> Response:
        head = _head(request)
        if await _visible_job(request, job_id, caller) is None:
            return unknown_job(job_id)
        job = await run_in_threadpool(head.store.replay, job_id)
        if job is None:
            if await run_in_threadpool(head.store.get, job_id) is None:
                return json_error(404, "unknown_job", f"no job with id {job_id!r}")
            return json_error(409, "not_replayable", f"job {job_id!r} is not dead or failed")
        await head.publisher.publish(job)
        await run_in_threadpool(head.store.mark_published, [job.id])
        return JSONResponse(job_body(job), status_code=202)


METRICS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


def _install_health_routes(app: FastAPI) -> None:
    @app.get("/api/health", response_model=HealthView, responses={503: {"model": HealthView}})
    async def health(request: Request) -> JSONResponse:
        head = _head(request)
        broker = await head.publisher.ping()
        try:
            await run_in_threadpool(head.store.ping)
            store = True
        except StoreUnavailable:
            store = False
        body: dict[str, Any] = {"broker": broker, "store": store}
        healthy = broker and store
        if head.spec.web.app is not None and head.state_dir is not None:
            # The app sees the Host the client used, so an app that checks it (Django's ALLOWED_HOSTS) answers.
            answering, expected = await app_heads_answering(head.state_dir, request.headers.get("host", "localhost"))
            body["app_heads"] = {"answering": answering, "expected": expected}
            healthy = healthy and answering > 0
        if head.spec.hosts and head.state_dir is not None:
            # Told, not judged: this host's own heads keep the front door serving while a web host is down.
            listening, expected = await remote_heads_listening(head.state_dir)
            if expected:
                body["web_hosts"] = {"listening": listening, "expected": expected}
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get(
        "/api/metrics",
        response_class=PlainTextResponse,
        responses=METRICS_RESPONSE,
        dependencies=[Depends(needs_scope_or_local(Scope.METRICS))],
        openapi_extra={"security": [{}, {"HTTPBearer": []}]},  # a key, or none from this machine
    )
    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(_head(request).metrics.render)
        return Response(body, media_type=METRICS_CONTENT_TYPE)
