"""The job API's response models (for OpenAPI) and its error body.

The JSON of jobs and attempts itself is built by kvern.jobs.views, which the CLI shares.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ArtifactView(BaseModel):
    name: str
    url: str
    content_type: str
    size: int


class JobSummaryView(BaseModel):
    """A job in a listing: everything but args, kwargs and result (the job's own GET has them)."""

    id: str
    task: str
    status: str
    progress: int
    progress_message: str | None
    attempts: int
    max_attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    artifacts: list[ArtifactView]
    url: str
    render_error: str | None = None  # set when a stored value could not be rendered and is shown empty
    cancel_requested: str | None = None  # a running job asked to stop: when (it then ends cancelled)
    subject: str | None = None  # whom the job is about, as the submitter tagged it ("user:42")


class JobView(JobSummaryView):
    """A job as its own GET shows it."""

    args: list[Any]
    kwargs: dict[str, Any]
    result: Any


class JobDetailView(JobView):
    """A job as its own GET shows it: with each attempt to announce its end (README "Notifications"): target,
    attempt, at, outcome (delivered, failed, gave_up) and detail."""

    notifications: list[dict[str, Any]] = []


class JobPage(BaseModel):
    jobs: list[JobSummaryView]
    next: str | None


class DeadJobView(JobView):
    history: list[dict[str, Any]]  # one entry per attempt: every field of the attempt, times in ISO 8601


class AppHeadsHealthView(BaseModel):
    answering: int  # app heads that gave an HTTP answer just now
    expected: int  # app heads nginx sends requests to


class WebHostsHealthView(BaseModel):
    listening: int  # job API heads of web hosts that accepted a TCP connection just now
    expected: int  # job API heads of web hosts nginx sends requests to


class HealthView(BaseModel):
    broker: bool
    store: bool
    app_heads: AppHeadsHealthView | None = None  # with `[web] app` only
    web_hosts: WebHostsHealthView | None = None  # on a front host balancing web hosts' heads ([hosts]) only


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorView(BaseModel):
    error: ErrorBody


class BatchItemView(BaseModel):
    """One job of a bulk submit: 202 accepted, 200 made before (idempotency key), else its error."""

    status: int
    job: JobView | None = None
    error: ErrorBody | None = None


class BatchView(BaseModel):
    jobs: list[BatchItemView]  # in the order the jobs were sent


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
