"""API keys against a running instance, through nginx: made and revoked with the CLI, 401/403/404 in the
error shape, a job visible to its own key only, and the instance's own key kept owner-only."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from kvern import cli
from kvern.constants import LOCAL_KEY_FILE, RET_FAILURE, RET_OK
from tests.integration.conftest import Running
from tests.security.test_front_door import web_tier

pytestmark = pytest.mark.integration
JOBS = "/api/v1/jobs"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with web_tier(tmp_path_factory.mktemp("keys") / "project") as running:
        yield running


def kvern_keys(running: Running, *args: str) -> tuple[int, str]:
    spec = str(running.instance.spec.path)
    result = CliRunner().invoke(cli.main, ["-f", spec, "--state", str(running.instance.state_dir), "keys", *args])
    return result.exit_code, result.stdout


def new_key(running: Running, name: str, scopes: str) -> dict[str, str]:
    code, out = kvern_keys(running, "create", name, "--scope", scopes)
    assert code == RET_OK, out
    return {"Authorization": f"Bearer {out.strip()}"}


def report(client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    body = {"task": "generate_heavy_report", "args": [7], "kwargs": {"seconds": 0.1}}
    return client.post(JOBS, json=body, headers=headers)


def test_without_a_valid_key_the_api_answers_401_through_nginx(keyed: Running) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        for headers in ({}, {"Authorization": "Bearer kvern_0123456789ab_" + "x" * 43}, {"Authorization": "x"}):
            for response in (client.get(JOBS, headers=headers), report(client, headers)):
                assert response.status_code == 401, response.text
                assert response.json()["error"]["code"] == "unauthorized"
        assert client.get("/api/health").status_code == 200  # load balancers need no key


def test_scopes_and_ownership_hold_through_nginx(keyed: Running) -> None:
    alice = new_key(keyed, "alice", "submit,read")
    bob = new_key(keyed, "bob", "submit,read")
    reader = new_key(keyed, "auditor", "read")
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        accepted = report(client, alice)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        assert report(client, reader).status_code == 403
        assert client.get(f"{JOBS}/{job_id}", headers=alice).status_code == 200
        for method, path in [("GET", f"{JOBS}/{job_id}"), ("DELETE", f"{JOBS}/{job_id}")]:
            assert client.request(method, path, headers=bob).status_code == 404
        assert client.get(JOBS, headers=bob).json()["jobs"] == []
    with keyed.client() as admin:  # the instance's own key is an admin: it sees every key's jobs
        assert admin.get(f"{JOBS}/{job_id}").status_code == 200


def test_keys_list_shows_no_token_and_revoke_stops_a_key(keyed: Running) -> None:
    carol = new_key(keyed, "carol", "read")
    code, listing = kvern_keys(keyed, "list")
    assert code == RET_OK and "carol" in listing
    assert carol["Authorization"].removeprefix("Bearer ") not in listing
    assert kvern_keys(keyed, "revoke", "carol")[0] == RET_OK
    assert kvern_keys(keyed, "revoke", "carol")[0] == RET_FAILURE
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        assert client.get(JOBS, headers=carol).status_code == 401


def test_the_instances_own_key_is_owner_only(keyed: Running) -> None:
    path: Path = keyed.instance.state_dir / LOCAL_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with keyed.client() as client:
        assert client.get(JOBS).status_code == 200


def test_a_key_over_its_rate_gets_429_while_other_keys_from_the_same_address_go_on(tmp_path: Path) -> None:
    web = "rate = 0\nkey_rate = 2\nkey_burst = 3"  # no per-address limit: only the per-key one can refuse
    with web_tier(tmp_path / "project", web) as running, running.client() as client:
        busy, other = new_key(running, "busy", "read"), new_key(running, "other", "read")
        statuses = [client.get(JOBS, headers=busy).status_code for _ in range(20)]
        assert statuses[:3] == [200, 200, 200] and statuses.count(429) >= 10, statuses
        refused = client.get(JOBS, headers=busy)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert client.get(JOBS, headers=other).status_code == 200
        # However the scheme is spelled (the API takes any case), the token counts against its own key.
        token = busy["Authorization"].removeprefix("Bearer ")
        for spelled in (f"bearer {token}", f"BEARER {token}", f"Bearer  {token}"):
            assert client.get(JOBS, headers={"Authorization": spelled}).status_code == 429, spelled
        # A made-up token fills a bucket of its own: it never throttles the real key it imitates.
        forged = {"Authorization": busy["Authorization"][:-5] + "AAAAA"}
        assert [client.get(JOBS, headers=forged).status_code for _ in range(3)] == [401, 401, 401]
