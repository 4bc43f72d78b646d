"""Every error of the job API has one shape, `{"error": {"code", "message"}}`, and no input makes it answer 500."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from kvern.api.submission import SubmissionError, parse_submission
from kvern.spec import LimitsSpec
from tests.unit import test_api

# The fixtures of the main API tests: a web head on a real SQLite store with a stub publisher.
project = test_api.project
web_head = test_api.web_head
api = test_api.api

SUBMIT = "/api/v1/jobs"
JSON = {"Content-Type": "application/json"}


def assert_error_shape(body: Any, code: str | None = None) -> None:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body


def raw_submission(args_json: str) -> bytes:
    return ('{"task": "api_tasks.add", "args": ' + args_json + "}").encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"task": "api_tasks.add", "args": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", id="deep"),
        pytest.param(raw_submission("[" + "7" * 5000 + "]"), id="huge-int"),
        pytest.param(raw_submission("[NaN]"), id="nan"),
        pytest.param(raw_submission("[Infinity]"), id="infinity"),
        pytest.param(raw_submission("[-Infinity]"), id="minus-infinity"),
        pytest.param(raw_submission("[1e999]"), id="float-overflow"),
        pytest.param(raw_submission('["\\ud800"]'), id="lone-surrogate"),
        pytest.param(b'{"task": "api_tasks.add", "args": [1], "kwargs": {"\\udfff": 1}}', id="lone-surrogate-key"),
    ],
)
async def test_json_edge_cases_are_400_with_the_error_shape_and_record_nothing(api: Any, body: bytes) -> None:
    client, publisher, store = api
    response = await client.post(SUBMIT, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert_error_shape(response.json(), "malformed_json")
    assert publisher.published == [] and sum(store.counts_by_status().values()) == 0


@pytest.mark.parametrize(
    "query",
    [
        "status=bogus",
        "limit=abc",
        "limit=0",
        "limit=501",
        "before=yesterday",
        "before=nan",
        "before=inf",
        "before=1e309",
    ],
)
async def test_query_validation_errors_have_the_error_shape(api: Any, query: str) -> None:
    client, _, _ = api
    response = await client.get(f"/api/v1/jobs?{query}")
    assert response.status_code == 422
    assert_error_shape(response.json(), "invalid_request")
    assert query.split("=", maxsplit=1)[0] in response.json()["error"]["message"]


async def test_unknown_routes_are_404_with_the_error_shape(api: Any) -> None:
    client, _, _ = api
    response = await client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert_error_shape(response.json(), "not_found")


async def test_a_method_the_route_does_not_take_is_405_with_allow(api: Any) -> None:
    client, _, _ = api
    response = await client.delete("/api/v1/jobs")
    assert response.status_code == 405
    assert_error_shape(response.json(), "method_not_allowed")
    assert "POST" in response.headers["allow"] and "GET" in response.headers["allow"]


async def test_an_oversized_body_is_413_with_the_error_shape(api: Any) -> None:
    client, _, store = api
    response = await client.post(SUBMIT, content=b"[" + b" " * (2 * 1024 * 1024) + b"]", headers=JSON)
    assert response.status_code == 413
    assert_error_shape(response.json(), "body_too_large")
    assert sum(store.counts_by_status().values()) == 0


async def test_an_invalid_idempotency_key_has_the_error_shape(api: Any) -> None:
    client, _, store = api
    headers = {"Idempotency-Key": "k" * 201}
    response = await client.post(SUBMIT, json={"task": "api_tasks.add", "args": [1]}, headers=headers)
    assert response.status_code == 400
    assert_error_shape(response.json(), "invalid_idempotency_key")
    assert sum(store.counts_by_status().values()) == 0


async def test_an_unexpected_exception_is_500_with_the_error_shape(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _, store = api

    def broken(*_args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "list_jobs", broken)
    response = await client.get("/api/v1/jobs")
    assert response.status_code == 500
    assert_error_shape(response.json(), "internal_error")


async def test_the_openapi_document_references_the_error_model_for_every_error(api: Any) -> None:
    client, _, _ = api
    document = (await client.get("/api/openapi.json")).json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/api/health":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorView"}, (method, path, status)
    submit = document["paths"]["/api/v1/jobs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"]["properties"]["task"]["minLength"] == 1
    key = next(p for p in submit["parameters"] if p["name"] == "Idempotency-Key")
    schema = key["schema"].get("anyOf", [key["schema"]])[0]
    assert (schema["minLength"], schema["maxLength"]) == (1, 200)


async def test_replaying_an_unknown_job_is_404(api: Any) -> None:
    client, _, _ = api
    response = await client.post("/api/v1/dlq/no-such-job/replay")
    assert response.status_code == 404
    assert_error_shape(response.json(), "unknown_job")


async def test_replaying_a_job_that_is_not_dead_is_409(api: Any) -> None:
    client, _, _ = api
    job_id = (await client.post(SUBMIT, json={"task": "api_tasks.add", "args": [1]})).json()["id"]
    response = await client.post(f"/api/v1/dlq/{job_id}/replay")
    assert response.status_code == 409
    assert_error_shape(response.json(), "not_replayable")


def nested_list(depth: int) -> Any:
    """`depth` lists, one inside the other."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param({"task": "api_tasks.add", "kwargs": {"x": {"a": nested_list(500)}}}, "args_too_deep", id="500"),
        pytest.param({"task": "api_tasks.add", "args": [nested_list(32)]}, "args_too_deep", id="33-deep"),
        pytest.param({"task": "api_tasks.add", "args": [list(range(10_001))]}, "args_too_many_items", id="items"),
        pytest.param({"task": "api_tasks.add", "args": ["é" * 140_000]}, "args_too_large", id="bytes"),
    ],
)
async def test_args_past_the_spec_limits_are_400_and_nothing_is_recorded(
    api: Any, body: dict[str, Any], code: str
) -> None:
    client, publisher, store = api
    response = await client.post(SUBMIT, json=body)
    assert response.status_code == 400
    assert_error_shape(response.json(), code)
    assert "limits.args_" in response.json()["error"]["message"]
    assert publisher.published == [] and sum(store.counts_by_status().values()) == 0


async def test_args_at_the_limits_are_accepted(api: Any) -> None:
    client, _, _ = api
    response = await client.post(SUBMIT, json={"task": "api_tasks.add", "args": [nested_list(31)]})
    assert response.status_code == 202


def test_the_limits_come_from_the_spec() -> None:
    catalog = StubCatalog()
    body = json.dumps({"task": "t", "args": [[1, 2, 3]]}).encode()
    assert parse_submission(body, catalog, LimitsSpec()).args == [[1, 2, 3]]  # type: ignore[arg-type]
    for limits, code in [
        (LimitsSpec(args_depth=1), "args_too_deep"),
        (LimitsSpec(args_items=3), "args_too_many_items"),
        (LimitsSpec(args_bytes=10), "args_too_large"),
    ]:
        with pytest.raises(SubmissionError) as refused:
            parse_submission(body, catalog, limits)  # type: ignore[arg-type]
        assert refused.value.code == code


class StubCatalog:
    """One task `t(*args)`: enough for parse_submission to resolve and bind."""

    def resolve(self, name: str) -> Any:
        def run(*args: Any) -> None:
            return None

        return type("Task", (), {"name": name, "run": staticmethod(run)})() if name == "t" else None

    def names(self) -> list[str]:
        return ["t"]


async def test_the_docs_page_loads_its_assets_from_the_instance(api: Any) -> None:
    client, _, _ = api
    page = await client.get("/api/docs")
    assert page.status_code == 200
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page.text, re.IGNORECASE), "an external host"
    assert '"validatorUrl": null' in page.text  # no validity badge fetched from a public validator
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", page.text)
    assert len(assets) >= 3  # the script, the stylesheet and the icon
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 100, asset


async def test_metrics_are_in_the_openapi_document_as_text(api: Any) -> None:
    client, _, _ = api
    document = (await client.get("/api/openapi.json")).json()
    assert "text/plain" in document["paths"]["/api/metrics"]["get"]["responses"]["200"]["content"]


async def test_the_openapi_document_names_the_tasks_and_links_a_submission_to_its_job(api: Any) -> None:
    client, _, _ = api
    submit = (await client.get("/api/openapi.json")).json()["paths"]["/api/v1/jobs"]["post"]
    media = submit["requestBody"]["content"]["application/json"]
    assert media["schema"]["properties"]["task"]["examples"] == ["api_tasks.add"]
    links = submit["responses"]["202"]["links"]
    assert {link["operationId"] for link in links.values()} >= {"get_job", "cancel_job", "replay_dead"}
