"""What the OpenAPI document says beyond its routes: this instance's task names, and links from a submission
to the operations on the job it made (so a client, or a fuzzer, can follow a job from its 202)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, params
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from kvern.constants import SERVED_API_PREFIX

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
    public_prefix: Callable[[], str] = lambda: SERVED_API_PREFIX,
) -> None:
    """Serve the document at `url` behind `guard`; build it once, on first request (the task names are known
    only once the head is up). Its paths are the public ones, under `web.api_prefix`."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            built = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _name_tasks(built, task_names())
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
