"""The API's docs page, with its Swagger UI assets served by the instance itself.

No CDN: the page works offline, and no third party learns who reads the docs. The assets are the Swagger UI
dist files shipped by the `swagger-ui-py` package (Swagger UI 5, which renders the OpenAPI 3.1 FastAPI writes);
they are found without importing that package, whose own web-framework glue kvern does not use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from kvern.jobs.views import public_path

DOCS_URL = "/api/docs"
ASSETS_URL = f"{DOCS_URL}/assets"
ASSETS_PACKAGE = "swagger_ui"


def swagger_ui_assets() -> Path:
    found = importlib.util.find_spec(ASSETS_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("the Swagger UI assets are missing: install kvern's dependencies (swagger-ui-py)")
    return Path(next(iter(found.submodule_search_locations))) / "static"


def install_docs(app: FastAPI, openapi_url: str) -> None:
    app.mount(ASSETS_URL, StaticFiles(directory=swagger_ui_assets()), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> HTMLResponse:
        assets = public_path(ASSETS_URL)  # the page is read under web.api_prefix
        return get_swagger_ui_html(
            openapi_url=public_path(openapi_url),
            title=f"{app.title} - docs",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
            # Swagger UI would otherwise fetch a validity badge from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
