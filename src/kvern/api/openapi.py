"""What the OpenAPI document says beyond its routes: this instance's task names, and links from a submission
to the operations on the job it made (so a client, or a fuzzer, can follow a job from its 202)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, params
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from kvern.constants import SERVED_API_PREFIX
from kvern.spec import MAX_TARGET_CHARS, MAX_TARGETS, NotifySpec

# operationIds of the operations that take the id a submission answers with.
JOB_OPERATIONS = ("get_job", "cancel_job", "show_dead", "replay_dead")
SUBMIT_PATH = "/api/v1/jobs"


def job_links() -> dict[str, Any]:
    return {name: {"operationId": name, "parameters": {"job_id": "$response.body#/id"}} for name in JOB_OPERATIONS}


def install_openapi(
    app: FastAPI,
    url: str,
    task_names: Callable[[], list[str]],
    guard: Sequence[params.Depends] = (),
    notify: Callable[[], NotifySpec] | None = None,
    public_prefix: Callable[[], str] = lambda: SERVED_API_PREFIX,
) -> None:
    """Serve the document at `url` behind `guard`; build it once, on first request (the task names are known
    only once the head is up). Its paths are the public ones, under `web.api_prefix`."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            built = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _name_tasks(built, task_names())
            if notify is not None:
                _describe_notify(built, notify())
            built["paths"] = _under_prefix(built["paths"], public_prefix())
            app.openapi_schema = built
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]

    @app.get(url, include_in_schema=False, dependencies=list(guard))
    async def openapi_document() -> JSONResponse:
        return JSONResponse(document())


def _under_prefix(paths: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The heads serve under /api; nginx maps `web.api_prefix` onto it, so a client must call the prefix."""
    if prefix == SERVED_API_PREFIX:
        return paths
    return {
        prefix + path.removeprefix(SERVED_API_PREFIX) if path.startswith(f"{SERVED_API_PREFIX}/") else path: item
        for path, item in paths.items()
    }


def _name_tasks(document: dict[str, Any], names: list[str]) -> None:
    if not names:
        return
    media = document["paths"][SUBMIT_PATH]["post"]["requestBody"]["content"]["application/json"]
    media["schema"]["properties"]["task"]["examples"] = names
    media["example"] = {"task": names[0], "args": [], "kwargs": {}}


# What a submission's `notify` may hold on this instance, no looser than what it accepts (spec.parse_target):
# mail addresses once [notify.smtp] is set, webhook URLs once notify.submission_webhooks is on.
MAILTO_PATTERN = r"^mailto:[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$"
WEBHOOK_PATTERN = r"^https?://[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*(:[0-9]{1,5})?(/[!-~]*)?$"


def notify_schema(notify: NotifySpec) -> dict[str, Any]:
    patterns = [MAILTO_PATTERN] if notify.smtp is not None else []
    if notify.submission_webhooks and notify.webhook_key_file is not None:
        patterns.append(WEBHOOK_PATTERN)
    if not patterns:
        return {"type": "array", "maxItems": 0, "description": "this instance sends no notifications"}
    item = {"type": "string", "maxLength": MAX_TARGET_CHARS, "pattern": "|".join(patterns)}
    return {"type": "array", "maxItems": MAX_TARGETS, "items": item, "description": "told when the job finishes"}


def _describe_notify(document: dict[str, Any], notify: NotifySpec) -> None:
    media = document["paths"][SUBMIT_PATH]["post"]["requestBody"]["content"]["application/json"]
    media["schema"]["properties"]["notify"] = notify_schema(notify)
