"""API keys: the same contract over the SQL key store (SQLite, PostgreSQL) and the in-memory one."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.keys import (
    ApiKeyError,
    KeyStoreProtocol,
    MemoryKeyStore,
    Scope,
    SqlKeyStore,
    parse_token,
    secret_hash,
)
from kvern.jobs.records import NewJob
from kvern.jobs.store import JobStore
from tests.conftest import STORE_FIXTURES


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def keys(request: pytest.FixtureRequest) -> KeyStoreProtocol:
    if request.param == "memory":
        return MemoryKeyStore()
    store: JobStore = request.getfixturevalue(STORE_FIXTURES[request.param])
    return SqlKeyStore(store.engine)


def test_a_token_is_shown_once_and_verifies_to_its_key(keys: KeyStoreProtocol) -> None:
    issued = keys.create_key(f"ci-{uuid.uuid4().hex[:8]}", [Scope.SUBMIT, Scope.READ])
    assert parse_token(issued.token) is not None
    found = keys.verify(issued.token)
    assert found == issued.key
    assert found.allows(Scope.READ) and not found.allows(Scope.ADMIN)


def test_the_store_keeps_no_token(sql_job_store: JobStore) -> None:
    keys = SqlKeyStore(sql_job_store.engine)
    issued = keys.create_key("ci", [Scope.READ])
    with sql_job_store.engine.connect() as conn:
        stored = " ".join(str(value) for row in conn.exec_driver_sql("SELECT * FROM kvern_api_keys") for value in row)
    secret = issued.token.removeprefix(f"kvern_{issued.key.id}_")
    assert secret not in stored and issued.token not in stored
    assert secret_hash(secret) in stored


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda token: token[:-1] + ("A" if token[-1] != "A" else "B"), id="wrong-secret"),
        pytest.param(lambda token: "kvern_000000000000_" + token[19:], id="unknown-id"),
        pytest.param(lambda token: token + "x", id="too-long"),
        pytest.param(lambda token: "", id="empty"),
        pytest.param(lambda token: "Bearer " + token, id="with-scheme"),
    ],
)
def test_a_bad_token_verifies_to_nothing(keys: KeyStoreProtocol, mangle: object) -> None:
    issued = keys.create_key("k", [Scope.READ])
    assert keys.verify(mangle(issued.token)) is None  # type: ignore[operator]


def test_a_revoked_key_stops_working_and_frees_its_name(keys: KeyStoreProtocol) -> None:
    first = keys.create_key("deploy", [Scope.SUBMIT])
    assert keys.revoke("deploy")
    assert keys.verify(first.token) is None
    assert not keys.revoke("deploy")
    second = keys.create_key("deploy", [Scope.SUBMIT])
    assert keys.verify(second.token) == second.key


def test_names_are_unique_and_scopes_checked(keys: KeyStoreProtocol) -> None:
    keys.create_key("one", [Scope.READ])
    with pytest.raises(ApiKeyError, match="exists already"):
        keys.create_key("one", [Scope.ADMIN])
    with pytest.raises(ApiKeyError, match="scopes"):
        keys.create_key("two", ["root"])
    with pytest.raises(ApiKeyError, match="scopes"):
        keys.create_key("three", [])
    with pytest.raises(ApiKeyError, match="key name"):
        keys.create_key("bad name\n", [Scope.READ])


def test_list_shows_keys_without_secrets(keys: KeyStoreProtocol) -> None:
    keys.create_key("a", [Scope.READ])
    keys.create_key("b", [Scope.ADMIN, Scope.METRICS])
    listed = keys.list_keys()
    assert [key.name for key in listed] == ["a", "b"]
    assert listed[1].is_admin and listed[1].allows(Scope.SUBMIT)
    assert all("token" not in dataclasses.asdict(key) for key in listed)


def test_list_jobs_by_owner_shows_only_that_owners_jobs(job_store: JobStoreProtocol) -> None:
    def new(owner: str | None) -> NewJob:
        return NewJob(id=str(uuid.uuid4()), task="t", queue="q", args=[], kwargs={}, max_attempts=1, owner=owner)

    mine, theirs, apps = new("aaaaaaaaaaaa"), new("bbbbbbbbbbbb"), new(None)
    job_store.create_jobs([mine, theirs, apps])
    assert [job.id for job in job_store.list_jobs(None, 10, owner="aaaaaaaaaaaa")] == [mine.id]
    assert {job.id for job in job_store.list_jobs(None, 10)} == {mine.id, theirs.id, apps.id}
    got = job_store.get(mine.id)
    assert got is not None and got.owner == "aaaaaaaaaaaa"
