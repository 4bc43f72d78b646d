"""The `kvern` command line with click's CliRunner: exit codes, short job ids, parseable output."""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from kvern import cli
from kvern.constants import PINS_FILE, RET_ALREADY_RUNNING, RET_FAILURE, RET_NOT_RUNNING, RET_OK, RET_SPEC, RET_USAGE
from kvern.errors import AlreadyRunning, JobNotFound, NotRunning
from kvern.jobs.records import NewJob
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.runtime.supervisor import Supervisor
from kvern.runtime_config import RuntimeConfig, snapshot_spec
from kvern.spec import Tiers, load_spec

SPEC = """
[app]
tasks = "cli_tasks"

[[pools]]
name = "images"
queues = ["images"]
max = 4
"""

FIRST = "5a1f0c3e-0000-4000-8000-000000000001"
SECOND = "5a1f0c3e-0000-4000-8000-000000000002"
OTHER = "9b2e4d17-0000-4000-8000-000000000003"


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "kvern.toml"
    path.write_text(SPEC)
    return path


def kvern(spec_path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli.main, ["-f", str(spec_path), *args])


def record(store: JobStore, job_id: str) -> None:
    store.create_job(NewJob(id=job_id, task="cli_tasks.resize", queue="images", args=[], kwargs={}, max_attempts=1))


@pytest.fixture
def stored_jobs(sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobStore]:
    """Three jobs, two sharing their first 8 characters; the dlq commands see this store as a running instance's."""
    for job_id in (FIRST, SECOND, OTHER):
        record(sqlite_store, job_id)
    runtime = types.SimpleNamespace(store_url=sqlite_store.url, broker_urls={"admin": "amqp://unused"})
    running = types.SimpleNamespace(runtime=lambda: runtime)
    monkeypatch.setattr(cli, "running_instance", lambda _ctx: running)
    yield sqlite_store


# -- exit codes by exception type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [(AlreadyRunning("kvern is up at http://127.0.0.1:8080"), RET_ALREADY_RUNNING), (NotRunning("x"), RET_NOT_RUNNING)],
)
def test_the_exit_code_follows_the_error_type_not_its_wording(error: Exception, code: int) -> None:
    @cli.handle_errors
    def command() -> None:
        raise error

    with pytest.raises(SystemExit) as exited:
        command()
    assert exited.value.code == code


# -- scale ---------------------------------------------------------------------------------------------------


def test_scale_above_the_pools_max_is_a_bad_command_line(spec_path: Path) -> None:
    result = kvern(spec_path, "scale", "images", "9")
    assert result.exit_code == RET_USAGE, result.output
    assert "9 is above pool images's max (4)" in result.output
    assert "invalid spec" not in result.output


def test_scale_of_an_unknown_pool_is_a_bad_command_line(spec_path: Path) -> None:
    result = kvern(spec_path, "scale", "imgs", "2")
    assert result.exit_code == RET_USAGE, result.output
    assert "no pool named 'imgs' (pools: images, or web)" in result.output


@pytest.mark.parametrize("heads", ["0", "17", "99"])
def test_scale_web_outside_its_bounds_is_a_bad_command_line(spec_path: Path, heads: str) -> None:
    result = kvern(spec_path, "scale", "web", heads)
    assert result.exit_code == RET_USAGE, result.output
    assert "web heads must be between 1 and 16" in result.output


def test_logs_of_an_unknown_program_names_the_programs_that_have_logs(spec_path: Path) -> None:
    logs = spec_path.parent / ".kvern" / "logs"
    logs.mkdir(parents=True)
    (logs / "controller.log").write_text("started\n")
    result = kvern(spec_path, "logs", "nosuch")
    assert result.exit_code == RET_USAGE, result.output
    assert "no log of a program named 'nosuch' (logs: controller)" in result.output
    assert kvern(spec_path, "logs", "controller").output.splitlines()[-1] == "started"


def test_scale_within_max_needs_a_running_instance(spec_path: Path) -> None:
    result = kvern(spec_path, "scale", "images", "3")
    assert result.exit_code == RET_NOT_RUNNING, result.output


def _pretend_running(spec_path: Path, monkeypatch: pytest.MonkeyPatch, only: Tiers) -> None:
    """An instance of the spec as it is now, running `only` (its snapshot and runtime.json in the state dir)."""
    state = spec_path.parent / ".kvern"
    state.mkdir()
    spec = load_spec(spec_path)
    RuntimeConfig(
        spec_path=str(spec.path),
        spec_snapshot=str(snapshot_spec(spec, state)),
        state_dir=str(state),
        instance="cli",
        front_door_port=1,
        store_url="sqlite://",
        broker_urls={},
        management_url=None,
        management_auth=None,
        private_broker=False,
        only=only,
    ).save()
    monkeypatch.setattr(Supervisor, "is_running", lambda _self: True)


def test_scale_of_a_running_instance_follows_the_spec_it_was_started_with(
    spec_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an instance started with max = 4 (its snapshot and runtime.json in the state dir), still running
    _pretend_running(spec_path, monkeypatch, Tiers())
    # when kvern.toml is edited to max = 20, then `scale` still holds the pool to the running max
    spec_path.write_text(SPEC.replace("max = 4", "max = 20"))
    result = kvern(spec_path, "scale", "images", "9")
    assert result.exit_code == RET_USAGE, result.output
    assert "9 is above pool images's max (4)" in result.output


@pytest.mark.parametrize(
    ("only", "args", "refusal"),
    [
        ("web", ("images", "2"), "this instance (--only web) runs no pool 'images'"),
        ("pools", ("web", "2"), "this instance (--only pools) runs no web heads"),
    ],
)
def test_scale_of_a_tier_an_only_instance_does_not_run_is_refused(
    spec_path: Path, monkeypatch: pytest.MonkeyPatch, only: str, args: tuple[str, str], refusal: str
) -> None:
    _pretend_running(spec_path, monkeypatch, Tiers.parse(only))
    result = kvern(spec_path, "scale", *args)
    assert result.exit_code == RET_FAILURE, result.output
    assert result.output == f"kvern: {refusal}\n"
    assert not (spec_path.parent / ".kvern" / PINS_FILE).exists()


# -- status --------------------------------------------------------------------------------------------------


def test_status_json_with_nothing_running_prints_parseable_json_and_exits_4(spec_path: Path) -> None:
    result = kvern(spec_path, "status", "--json")
    assert result.exit_code == RET_NOT_RUNNING
    report = json.loads(result.stdout)
    assert report == {"running": False, "state_dir": str(spec_path.parent / ".kvern")}
    assert "no kvern instance is running" in result.stderr


def test_status_json_without_a_spec_still_prints_parseable_json(tmp_path: Path) -> None:
    result = kvern(tmp_path / "kvern.toml", "status", "--json")
    assert result.exit_code == RET_SPEC
    report = json.loads(result.stdout)
    assert report["running"] is False and "spec file not found" in report["error"]


def test_status_without_json_and_nothing_running_prints_nothing_on_stdout(spec_path: Path) -> None:
    result = kvern(spec_path, "status")
    assert result.exit_code == RET_NOT_RUNNING
    assert result.stdout == ""


# -- job ids -------------------------------------------------------------------------------------------------


def test_dlq_show_accepts_the_short_id(spec_path: Path, stored_jobs: JobStore) -> None:
    result = kvern(spec_path, "dlq", "show", OTHER[:8])
    assert result.exit_code == RET_OK, result.output
    assert json.loads(result.stdout)["id"] == OTHER


def test_dlq_show_accepts_the_full_id_even_when_it_is_a_prefix_of_nothing_else(
    spec_path: Path, stored_jobs: JobStore
) -> None:
    result = kvern(spec_path, "dlq", "show", FIRST)
    assert result.exit_code == RET_OK, result.output
    assert json.loads(result.stdout)["id"] == FIRST


def test_an_ambiguous_short_id_is_a_bad_command_line_listing_the_matches(
    spec_path: Path, stored_jobs: JobStore
) -> None:
    result = kvern(spec_path, "dlq", "show", FIRST[:8])
    assert result.exit_code == RET_USAGE, result.output
    assert f"matches several jobs ({FIRST}, {SECOND})" in result.stderr


def test_a_too_short_id_is_a_bad_command_line(spec_path: Path, stored_jobs: JobStore) -> None:
    result = kvern(spec_path, "dlq", "show", OTHER[:3])
    assert result.exit_code == RET_USAGE, result.output
    assert f"give at least {cli.MIN_ID_PREFIX} characters" in result.stderr


@pytest.mark.parametrize("command", ["show", "replay"])
def test_an_unknown_job_is_a_failure_not_a_missing_instance(
    spec_path: Path, stored_jobs: JobStore, command: str
) -> None:
    result = kvern(spec_path, "dlq", command, "deadbeef")
    assert result.exit_code == RET_FAILURE, result.output
    assert "no job with id 'deadbeef'" in result.stderr


def test_replaying_a_job_that_is_not_dead_or_failed_says_why(spec_path: Path, stored_jobs: JobStore) -> None:
    result = kvern(spec_path, "dlq", "replay", OTHER[:8])
    assert result.exit_code == RET_FAILURE, result.output
    assert f"job {OTHER} is {JobStatus.QUEUED.value}: only dead or failed jobs can be replayed" in result.stderr


def test_a_prefix_with_like_wildcards_matches_only_literally(sqlite_store: JobStore) -> None:
    record(sqlite_store, FIRST)
    with pytest.raises(JobNotFound):
        cli.resolve_job_id(sqlite_store, "5a1f%")
    with pytest.raises(JobNotFound):
        cli.resolve_job_id(sqlite_store, "5a1f_0c3")
    assert cli.resolve_job_id(sqlite_store, "5a1f0") == FIRST


def test_job_ids_starting_with_is_the_same_on_every_store(job_store: JobStore) -> None:
    for job_id in (FIRST, SECOND, OTHER):
        record(job_store, job_id)
    assert job_store.job_ids_starting_with("5a1f0c3e", 10) == [FIRST, SECOND]
    assert job_store.job_ids_starting_with(FIRST, 10) == [FIRST]
    assert job_store.job_ids_starting_with("5A1F", 10) == []  # ids are lower case; the match is exact
    assert job_store.job_ids_starting_with("5a1f", 1) == [FIRST]
    with pytest.raises(click.BadParameter):
        cli.resolve_job_id(job_store, "5a1f0c3e")


def test_up_with_a_state_dir_no_config_file_can_hold_is_a_bad_command_line(spec_path: Path) -> None:
    state = spec_path.parent / "state\n[program:x]"
    result = CliRunner().invoke(cli.main, ["-f", str(spec_path), "--state", str(state), "up", "-d"])
    assert result.exit_code == RET_USAGE, result.output
    assert "--state" in result.output and "'\\n'" in result.output
    assert not state.exists()
