"""Shared fixtures: job stores on SQLite (always), PostgreSQL (an isolated schema per test) and in memory.

PostgreSQL tests skip when the server cannot be reached, unless CI=1 or KVERN_REQUIRE_SERVICES=1: then they
fail, so a CI run can never pass silently without the PostgreSQL backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.store import JobStore

# KVERN_TEST_POSTGRES_URL names another server; by default user postgres, then root (trust auth).
POSTGRES_URLS = (
    (os.environ["KVERN_TEST_POSTGRES_URL"],)
    if os.environ.get("KVERN_TEST_POSTGRES_URL")
    else ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test")
)
TRUTHY = {"1", "true", "yes", "on"}
STORE_FIXTURES = {"sqlite": "sqlite_store", "postgresql": "postgres_store", "memory": "memory_store"}


def services_required() -> bool:
    return any(os.environ.get(name, "").strip().lower() in TRUTHY for name in ("CI", "KVERN_REQUIRE_SERVICES"))


def _first_reachable_postgres() -> tuple[str | None, str]:
    import psycopg  # noqa: PLC0415 - only the PostgreSQL tests need the driver

    errors = []
    for url in POSTGRES_URLS:
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url, ""
        except psycopg.Error as exc:
            errors.append(f"{url}: {exc}".strip())
    return None, "; ".join(errors)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """A URL of the test PostgreSQL server (trust auth); skip, or fail when services are required."""
    url, error = _first_reachable_postgres()
    if url is None:
        message = f"PostgreSQL unreachable ({error})"
        if services_required():
            pytest.fail(message + " and CI=1 / KVERN_REQUIRE_SERVICES=1 requires it", pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture
def postgres_store_url(postgres_admin_url: str) -> Iterator[str]:
    """A store URL whose search_path is a fresh schema, dropped after the test."""
    import psycopg  # noqa: PLC0415

    schema = f"kvern_t_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{postgres_admin_url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(autouse=True)
def _forget_shared_tasks_of_earlier_projects() -> Iterator[None]:
    """Celery's `@app.task` is shared by default: it joins every app finalized later in the process. Tests load
    many projects in one process (`Instance.up` loads the tasks module to check it); without this, a project's
    catalog would hold the tasks of every project loaded before it."""
    from celery import _state  # noqa: PLC0415

    before = set(_state._on_app_finalizers)
    yield
    _state._on_app_finalizers.intersection_update(before)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[JobStore]:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    store.create_schema()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def postgres_store(postgres_store_url: str) -> Iterator[JobStore]:
    store = JobStore(postgres_store_url)
    store.create_schema()
    try:
        yield store
    finally:
        store.close()  # before the schema is dropped: no pooled connection may hold it


@pytest.fixture
def memory_store() -> MemoryJobStore:
    return MemoryJobStore()


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def job_store(request: pytest.FixtureRequest) -> JobStoreProtocol:
    """The same contract, run against each implementation."""
    store: JobStoreProtocol = request.getfixturevalue(STORE_FIXTURES[request.param])
    return store


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_job_store(request: pytest.FixtureRequest) -> JobStore:
    """Each SQL backend, for what only a database has (its tables, their migration, its transactions)."""
    store: JobStore = request.getfixturevalue(STORE_FIXTURES[request.param])
    return store
