"""`kvern reload` without processes: the plan (running spec vs edited spec), the warm pool rollout against a
stub runner, and the autoscaler holding still while a rollout runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kvern import cli
from kvern.autoscale.pins import autoscaler_paused, pause_autoscaler, resume_autoscaler
from kvern.constants import RET_NOT_RUNNING
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.jobs.store import JobStore
from kvern.processes import ProcessInfo, ProcessState, pool_slot
from kvern.runtime.instance import Instance
from kvern.runtime.pool_rollout import PoolRollout
from kvern.runtime.reload import heads_after_reload
from kvern.runtime.reload_plan import NEEDS_RESTART, plan_reload
from kvern.runtime.stopping import reload_on_hangup
from kvern.spec import PoolSpec, Spec, load_spec
from tests.unit.doubles import StubRunner
from tests.unit.test_autoscale_policy import Load, ScriptedAutoscaler

SPEC = """
[app]
tasks = "tasks"
static = "static"

[web]
heads = 2

[[pools]]
name = "reports"
queues = ["reports"]
min = 1
max = 4

[[pools]]
name = "thumbs"

[tasks."tasks.report"]
queue = "reports"
time_limit = 120
"""


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    (tmp_path / "static").mkdir()
    path = tmp_path / "kvern.toml"
    path.write_text(SPEC)
    return path


def edited(spec_file: Path, old: str, new: str) -> Spec:
    """The spec file with one piece of text replaced, as a user edits it."""
    text = spec_file.read_text()
    assert old in text
    spec_file.write_text(text.replace(old, new))
    return load_spec(spec_file)


# -- the plan ------------------------------------------------------------------------------------------------


def test_an_unchanged_spec_plans_no_change(spec_file: Path) -> None:
    plan = plan_reload(load_spec(spec_file), load_spec(spec_file))
    assert plan.changes == () and plan.refusals == ()


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("heads = 2", "heads = 5", "web.heads"),
        ("heads = 2", 'heads = 2\nserver_name = ["example.com"]\nrate = 50', "web.server_name"),
        ("heads = 2", 'heads = 2\nlisten = ["127.0.0.1:8081"]', "web.listen"),
        ("heads = 2", 'heads = 2\ncors_origins = ["https://a.example"]', "web.cors_origins"),
        ('static = "static"\n', "", "app.static"),
        ("max = 4", "max = 40", "pools.reports.max"),
        ("min = 1", "min = 2\nconcurrency = 8\nmax_tasks_per_child = 100", "pools.reports.concurrency"),
        ("time_limit = 120", "time_limit = 60\nretries = 0", 'tasks."tasks.report".retries'),
        ('[[pools]]\nname = "thumbs"', '[[pools]]\nname = "thumbs"\n\n[limits]\nargs_depth = 8', "limits.args_depth"),
        (
            '[[pools]]\nname = "thumbs"',
            '[store]\nkeep_succeeded = "1d"\n\n[[pools]]\nname = "thumbs"',
            "store.keep_succeeded",
        ),
    ],
)
def test_live_fields_are_changes_to_apply(spec_file: Path, old: str, new: str, field: str) -> None:
    running = load_spec(spec_file)
    plan = plan_reload(running, edited(spec_file, old, new))
    assert plan.refusals == ()
    assert field in [change.field for change in plan.changes]


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("[app]", '[broker]\nurl = "amqp://u:secret@127.0.0.1:5672/v"\n\n[app]', "broker.url"),
        ("[app]", '[store]\nurl = "postgresql://u:secret@127.0.0.1/db"\n\n[app]', "store.url"),
        ('tasks = "tasks"', 'tasks = "tasks"\nname = "renamed"', "app.name"),
        ('tasks = "tasks"', 'tasks = "jobs"', "app.tasks"),
        ("heads = 2", "heads = 2\nport = 8123", "web.port"),
        ("heads = 2", 'heads = 2\napp = "site:app"', "web.app"),
        ('queues = ["reports"]', 'queues = ["reports", "urgent"]', "pools.reports.queues"),
        ("max = 4", "max = 4\nmax_backlog = 10", "pools.reports.max_backlog"),
        ('name = "thumbs"', 'name = "thumbnails"', "pools.thumbs"),
        ('name = "thumbs"', 'name = "thumbs"\n\n[[pools]]\nname = "videos"', "pools.videos"),
        ("time_limit = 120", "time_limit = 900", "tasks.*.time_limit"),
    ],
)
def test_fields_fixed_while_running_are_refused_naming_the_field(
    spec_file: Path, old: str, new: str, field: str
) -> None:
    running = load_spec(spec_file)
    plan = plan_reload(running, edited(spec_file, old, new))
    assert plan.refused
    lines = [str(refusal) for refusal in plan.refusals]
    assert any(line.startswith(f"{field} changed (") and line.endswith(NEEDS_RESTART) for line in lines), lines
    assert field not in [change.field for change in plan.changes]
    assert not any("secret" in line for line in lines)  # a URL's password never shows


def test_another_app_or_interface_is_live_but_adding_or_removing_the_app_is_refused(spec_file: Path) -> None:
    with_app = edited(spec_file, "heads = 2", 'heads = 2\napp = "site:app"')
    other_app = edited(spec_file, 'app = "site:app"', 'app = "shop.wsgi:application"\ninterface = "wsgi"')
    plan = plan_reload(with_app, other_app)
    assert plan.refusals == ()
    assert [change.field for change in plan.changes] == ["web.interface", "web.app"]
    assert [refusal.field for refusal in plan_reload(other_app, load_spec_without_app(spec_file)).refusals] == [
        "web.app"
    ]


def load_spec_without_app(spec_file: Path) -> Spec:
    spec_file.write_text(SPEC)
    return load_spec(spec_file)


def test_a_spec_file_from_another_folder_is_refused(spec_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    (other / "static").mkdir(parents=True)
    (other / "kvern.toml").write_text(SPEC)
    plan = plan_reload(load_spec(spec_file), load_spec(other / "kvern.toml"))
    assert "spec file" in [refusal.field for refusal in plan.refusals]


def test_changes_read_as_old_and_new_values(spec_file: Path) -> None:
    running = load_spec(spec_file)
    plan = plan_reload(running, edited(spec_file, "max = 4", "max = 6"))
    assert [str(change) for change in plan.changes] == ["pools.reports.max: 4 -> 6"]


def test_reload_keeps_the_heads_scaled_by_hand_unless_it_changes_web_heads(spec_file: Path) -> None:
    running = load_spec(spec_file)
    assert heads_after_reload(running, load_spec(spec_file), serving=5) == 5  # `kvern scale web 5` holds
    assert heads_after_reload(running, edited(spec_file, "heads = 2", "heads = 3"), serving=5) == 3


# -- the pool rollout ----------------------------------------------------------------------------------------

POOL = PoolSpec(name="reports", queues=("reports",), min=1, max=4)


class ExitingRunner(StubRunner):
    """A warm stop that has finished by the next look: the old worker's job was short."""

    def process(self, full_name: str) -> ProcessInfo:
        if self.states[full_name] is ProcessState.STOPPING:
            self.states[full_name] = ProcessState.STOPPED
        return super().process(full_name)


def runner_with(running: int, slots: int = 4) -> ExitingRunner:
    runner = ExitingRunner()
    runner.add_pool(replace(POOL, max=slots), running=running)
    return runner


def test_each_worker_is_replaced_by_a_fresh_one_started_before_it_is_stopped_warm() -> None:
    runner = runner_with(running=2)
    rollout = PoolRollout(runner, POOL, stop_timeout_s=5)
    rollout.run()
    assert runner.calls == [
        ("start", pool_slot("reports", 2), True),
        ("stop", pool_slot("reports", 0), False),
        ("start", pool_slot("reports", 3), True),  # slot 0 is still finishing its job
        ("stop", pool_slot("reports", 1), False),
    ]
    assert rollout.replaced == [(0, 2), (1, 3)]


def test_a_pool_at_its_max_stops_one_then_starts_one() -> None:
    runner = runner_with(running=2)
    rollout = PoolRollout(runner, replace(POOL, max=2), stop_timeout_s=5)
    rollout.run()
    assert runner.calls == [
        ("stop", pool_slot("reports", 0), False),
        ("start", pool_slot("reports", 0), True),
        ("stop", pool_slot("reports", 1), False),
        ("start", pool_slot("reports", 1), True),
    ]
    assert runner.running("reports") == 2


def test_a_slot_still_finishing_its_job_is_not_taken() -> None:
    runner = runner_with(running=1)
    runner.states[pool_slot("reports", 1)] = ProcessState.STOPPING  # scaled in before the reload, job running
    PoolRollout(runner, POOL, stop_timeout_s=5).run()
    assert runner.calls[0] == ("start", pool_slot("reports", 2), True)


def test_a_lowered_max_stops_the_extra_workers_and_a_raised_min_starts_more() -> None:
    runner = runner_with(running=4, slots=8)
    lowered = PoolRollout(runner, replace(POOL, max=2), stop_timeout_s=5)
    lowered.run()
    assert runner.running("reports") == 2 and lowered.stopped == [0, 1]
    raised = PoolRollout(runner, replace(POOL, min=3, max=8), stop_timeout_s=5)
    raised.run()
    assert runner.running("reports") == 3 and len(raised.started) == 1
    assert "1 started (min 3)" in raised.describe()


def test_a_fresh_worker_is_waited_for_until_it_consumes() -> None:
    runner = runner_with(running=1)
    counts = iter([1, 1, 2])  # before the start, then once still the old one alone, then the fresh one too
    PoolRollout(runner, POOL, stop_timeout_s=5, consumers=lambda _queue: next(counts)).run()
    assert next(counts, None) is None
    assert runner.calls[-1] == ("stop", pool_slot("reports", 0), False)


# -- the autoscaler during a rollout -------------------------------------------------------------------------


def test_the_autoscaler_holds_every_pool_while_a_live_reload_holds_the_pause(
    sqlite_store: JobStore, tmp_path: Path
) -> None:
    supervisor = StubRunner()
    supervisor.add_pool(POOL, running=1)
    load = Load({"reports": (20, 0, 9.0)})  # a backlog that wants the pool at its max
    scaler = ScriptedAutoscaler(
        (POOL,), sqlite_store, ScalingEventLog(sqlite_store.engine), supervisor, "amqp://unused", tmp_path, script=load
    )
    pause_autoscaler(tmp_path, os.getpid())
    assert autoscaler_paused(tmp_path)
    scaler.tick(now=1.0)
    assert supervisor.calls == []
    resume_autoscaler(tmp_path)
    scaler.tick(now=2.0)
    assert supervisor.running("reports") == 4


def test_a_pause_whose_reload_died_is_ignored(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    pause_autoscaler(tmp_path, int(gone.stdout))
    assert not autoscaler_paused(tmp_path)


# -- the command ---------------------------------------------------------------------------------------------


def test_reload_of_a_stopped_instance_says_not_running(spec_file: Path) -> None:
    result = CliRunner().invoke(cli.main, ["-f", str(spec_file), "reload"])
    assert result.exit_code == RET_NOT_RUNNING, result.output


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """The test installs kvern's handlers in this process: put pytest's back afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("own_signal_handlers")
def test_a_sighup_during_a_foreground_reload_runs_one_more_after_it_never_two_at_once(
    spec_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    running: list[bool] = []
    reloads = 0

    def reload(_state_dir: Path, _spec: Spec, report: Callable[[str], None]) -> None:
        nonlocal reloads
        assert not running, "two reloads at once"
        running.append(True)
        reloads += 1
        # the first reload gets a SIGHUP while it runs; the second ends the foreground `up` with Ctrl-C
        os.kill(os.getpid(), signal.SIGHUP if reloads == 1 else signal.SIGINT)
        running.pop()

    monkeypatch.setattr(cli, "reload_instance", reload)
    hangup = reload_on_hangup()
    os.kill(os.getpid(), signal.SIGHUP)
    context = click.Context(cli.main, obj={"spec": spec_file, "state": None})
    cli._wait_for_interrupt(context, Instance(load_spec(spec_file), spec_file.parent / ".kvern"), hangup)
    assert reloads == 2
    out = capsys.readouterr().out
    assert out.count("SIGHUP: reloading") == 2 and "a SIGHUP came during the reload: reloading again" in out
