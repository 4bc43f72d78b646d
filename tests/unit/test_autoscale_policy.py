"""The autoscaler without a broker: BacklogPolicy's decisions, and Autoscaler.tick against a fake Supervisor."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

import kvern.autoscale.loop as loop_module
from kvern.autoscale.loop import Autoscaler, read_desired
from kvern.autoscale.pins import write_pin
from kvern.autoscale.policy import BacklogPolicy, Decision, PoolSignals
from kvern.constants import DESIRED_FILE
from kvern.errors import StoreUnavailable
from kvern.jobs import schema
from kvern.jobs.records import NewJob, ScalingEvent
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.jobs.states import JobStatus
from kvern.jobs.store import JobStore
from kvern.processes import ProcessState, pool_group, pool_slot
from kvern.spec import PoolSpec
from tests.unit.doubles import StubRunner

POOL = PoolSpec(name="reports", queues=("reports",), min=1, max=4, idle_after=10.0, target_backlog=2, max_wait=5.0)


def signals(ready: int = 0, running: int = 0, oldest_wait_s: float = 0.0, processes: int = 1) -> PoolSignals:
    return PoolSignals(ready=ready, running=running, oldest_wait_s=oldest_wait_s, processes=processes)


def run(policy: BacklogPolicy, start: float, ticks: list[PoolSignals], step: float = 1.0) -> list[Decision | None]:
    """Feed one signal per tick, `step` seconds apart; the pool follows every decision, as the loop makes it."""
    decisions = []
    processes = ticks[0].processes
    for i, tick in enumerate(ticks):
        decision = policy.decide(replace(tick, processes=processes), start + i * step)
        decisions.append(decision)
        if decision is not None:
            processes = decision.target
    return decisions


# -- BacklogPolicy ----------------------------------------------------------------------------------------------


def test_a_backlog_scales_out_on_the_first_tick() -> None:
    # given a pool of 1 process, 2 jobs per process wanted
    policy = BacklogPolicy(POOL)

    # when 5 jobs wait and 1 runs
    decision = policy.decide(signals(ready=5, running=1, processes=1), now=100.0)

    # then it asks for ceil(6 / 2) = 3 processes at once, and says why
    assert decision is not None
    assert decision.target == 3
    assert "scale out" in decision.reason and "ready=5" in decision.reason and "running=1" in decision.reason


def test_scale_out_is_bounded_by_max() -> None:
    policy = BacklogPolicy(POOL)

    decision = policy.decide(signals(ready=500, processes=1), now=0.0)

    assert decision is not None and decision.target == POOL.max


def test_a_long_wait_adds_a_process_even_when_the_backlog_is_on_target() -> None:
    # given 2 processes and a backlog they should handle (4 jobs, 2 per process)
    policy = BacklogPolicy(POOL)

    # when the oldest queued job has waited longer than max_wait
    decision = policy.decide(signals(ready=2, running=2, oldest_wait_s=7.5, processes=2), now=0.0)

    # then one more process comes, and the reason names the wait
    assert decision is not None and decision.target == 3
    assert "waited 7.5s > max_wait 5s" in decision.reason


def test_one_long_wait_adds_one_process_at_a_time_not_the_pool_max() -> None:
    # given a pool at 0 and one job that has waited long (a replay, say), ticks every 0.5 s while the new
    # worker boots and the job keeps waiting
    pool = replace(POOL, min=0, max=4, target_backlog=4)
    ticks = [signals(ready=1, oldest_wait_s=9.0 + i * 0.5, processes=0) for i in range(10)]

    # when the policy decides on each tick, the pool following every decision
    decisions = run(BacklogPolicy(pool), start=0.0, ticks=ticks, step=0.5)

    # then it starts one process, and adds the next only after max_wait (5 s) more of waiting
    targets = [d.target if d else None for d in decisions]
    assert targets == [1, None, None, None, None, None, None, None, None, None]
    later = run(BacklogPolicy(pool), start=0.0, ticks=ticks * 2, step=0.5)
    assert [d.target for d in later if d] == [1, 2]


def test_a_long_wait_without_ready_messages_adds_nothing() -> None:
    # the store may still say "queued" for a job a worker has just taken: no ready message, no push
    policy = BacklogPolicy(POOL)

    assert policy.decide(signals(ready=0, running=2, oldest_wait_s=60.0, processes=1), now=0.0) is None


def test_a_long_wait_at_max_stays_at_max() -> None:
    policy = BacklogPolicy(POOL)

    assert policy.decide(signals(ready=3, running=8, oldest_wait_s=60.0, processes=4), now=0.0) is None


def test_never_below_min_even_when_idle_for_long() -> None:
    # given a pool at its min with nothing to do
    policy = BacklogPolicy(POOL)

    # when it stays idle for many cool-downs
    decisions = run(policy, 0.0, [signals(processes=1)] * 60)

    # then nothing happens
    assert decisions == [None] * 60


def test_scale_in_waits_for_the_whole_cool_down() -> None:
    # given 3 processes and no work
    policy = BacklogPolicy(POOL)
    idle = signals(processes=3)

    # then nothing happens before idle_after, then it goes straight to min
    assert policy.decide(idle, now=0.0) is None
    assert policy.decide(idle, now=5.0) is None
    assert policy.decide(idle, now=9.9) is None
    decision = policy.decide(idle, now=10.0)
    assert decision is not None and decision.target == POOL.min
    assert "cool-down" in decision.reason


def test_work_in_the_cool_down_restarts_it() -> None:
    # given 3 processes idle for 8 s of a 10 s cool-down
    policy = BacklogPolicy(POOL)
    assert policy.decide(signals(processes=3), now=0.0) is None
    assert policy.decide(signals(processes=3), now=8.0) is None

    # when a burst briefly needs all 3, then the pool is idle again
    assert policy.decide(signals(ready=4, running=2, processes=3), now=9.0) is None

    # then the cool-down counts again from the first idle tick after the burst
    assert policy.decide(signals(processes=3), now=10.0) is None
    assert policy.decide(signals(processes=3), now=19.0) is None
    decision = policy.decide(signals(processes=3), now=20.0)
    assert decision is not None and decision.target == 1


def test_alternating_signals_do_not_flap() -> None:
    # given a load that swings between a backlog and nothing every second, for 6 cool-downs
    policy = BacklogPolicy(POOL)
    swings = [signals(ready=6, processes=1) if i % 2 == 0 else signals(processes=1) for i in range(60)]

    # when the policy sees it
    decisions = [d for d in run(policy, 0.0, swings) if d is not None]

    # then it scales out once and never back in while the swings go on
    assert [d.target for d in decisions] == [3]


def test_a_scale_to_zero_pool_drops_to_zero_after_idle_after_and_comes_back_on_one_job() -> None:
    pool = replace(POOL, min=0, idle_after=3.0)
    policy = BacklogPolicy(pool)

    # when idle for its cool-down, it goes to zero
    assert policy.decide(signals(processes=1), now=0.0) is None
    down = policy.decide(signals(processes=1), now=3.0)
    assert down is not None and down.target == 0

    # and one ready job at zero starts a process at once
    up = policy.decide(signals(ready=1, processes=0), now=3.5)
    assert up is not None and up.target == 1


@pytest.mark.parametrize(
    ("ready", "running", "target_backlog"),
    [(1, 0, 1), (0, 1, 1), (1, 0, 100), (0, 1, 100), (3, 2, 64)],
)
def test_work_never_leaves_a_pool_with_no_process(ready: int, running: int, target_backlog: int) -> None:
    # given a scale-to-zero pool whose target backlog is larger than the work there is
    policy = BacklogPolicy(replace(POOL, min=0, target_backlog=target_backlog))

    # when it has been "over-provisioned" by one process for far longer than its cool-down
    decisions = run(policy, 0.0, [signals(ready=ready, running=running, processes=1)] * 50)

    # then it never goes to zero
    assert decisions == [None] * 50
    assert policy.desired(signals(ready=ready, running=running, processes=0))[0] == 1


def test_partial_scale_in_lands_on_the_backlog_target() -> None:
    # given 4 processes and work for 2 (4 jobs, 2 per process)
    policy = BacklogPolicy(POOL)
    busy = signals(ready=0, running=4, processes=4)

    assert policy.decide(busy, now=0.0) is None
    decision = policy.decide(busy, now=10.0)

    assert decision is not None and decision.target == 2


# -- Autoscaler.tick with a fake Supervisor and scripted signals ---------------------------------------------------


class ScriptedAutoscaler(Autoscaler):
    """The real tick, with each pool's broker and store signals given by the test."""

    def __init__(self, *args: Any, script: Callable[[PoolSpec], tuple[int, int, float]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script = script

    def signals(self, pool: PoolSpec, processes: int, now: float) -> PoolSignals:
        ready, running, oldest = self.script(pool)
        return PoolSignals(ready, running, oldest, processes)


@dataclass
class Load:
    per_pool: dict[str, tuple[int, int, float]] = field(default_factory=dict)

    def __call__(self, pool: PoolSpec) -> tuple[int, int, float]:
        return self.per_pool.get(pool.name, (0, 0, 0.0))


OTHER = PoolSpec(name="thumbs", queues=("thumbs",), min=0, max=2, idle_after=5.0, target_backlog=1)


@pytest.fixture
def setup(sqlite_store: JobStore, tmp_path: Path) -> tuple[ScriptedAutoscaler, StubRunner, Load]:
    supervisor = StubRunner()
    supervisor.add_pool(POOL, running=1)
    supervisor.add_pool(OTHER, running=0)
    load = Load()
    scaler = ScriptedAutoscaler(
        (POOL, OTHER),
        sqlite_store,
        ScalingEventLog(sqlite_store.engine),
        supervisor,
        "amqp://unused",
        tmp_path,
        script=load,
    )
    return scaler, supervisor, load


def test_tick_scales_out_by_starting_free_slots_and_records_the_reason(
    setup: tuple[ScriptedAutoscaler, StubRunner, Load], sqlite_store: JobStore
) -> None:
    scaler, supervisor, load = setup
    # given a spike on reports (7 ready, 1 running: 4 processes wanted) and one job for thumbs
    load.per_pool.update(reports=(7, 1, 0.5), thumbs=(1, 0, 0.2))

    # when the autoscaler ticks
    scaler.tick(now=1000.0)

    # then it starts the free slots without waiting for them
    assert ("start", pool_slot("reports", 1), False) in supervisor.calls
    assert ("start", pool_slot("reports", 3), False) in supervisor.calls
    assert ("start", pool_slot("thumbs", 0), False) in supervisor.calls
    assert supervisor.running("reports") == 4 and supervisor.running("thumbs") == 1
    # and every decision is an event with its signals
    events = {e.pool: e for e in ScalingEventLog(sqlite_store.engine).latest()}
    assert events["reports"].at == 1000.0
    assert (events["reports"].from_processes, events["reports"].to_processes) == (1, 4)
    assert "ready=7 running=1" in events["reports"].reason
    assert (events["thumbs"].from_processes, events["thumbs"].to_processes) == (0, 1)


def test_tick_scales_in_warm_from_the_highest_slots_after_the_cool_down(
    setup: tuple[ScriptedAutoscaler, StubRunner, Load], sqlite_store: JobStore
) -> None:
    scaler, supervisor, load = setup
    # given reports scaled out to 4
    load.per_pool["reports"] = (8, 0, 0.0)
    scaler.tick(now=0.0)
    supervisor.states = {
        k: ProcessState.RUNNING if v is ProcessState.STARTING else v for k, v in supervisor.states.items()
    }
    supervisor.calls.clear()

    # when the load drops to 4 running jobs (work for 2 processes) and stays there
    load.per_pool["reports"] = (0, 4, 0.0)
    scaler.tick(now=1.0)
    scaler.tick(now=10.9)
    assert supervisor.calls == []  # still cooling down
    scaler.tick(now=11.0)

    # then the two highest slots are stopped, warm (no waiting: the running jobs finish on their own)
    assert supervisor.calls == [
        ("stop", pool_slot("reports", 3), False),
        ("stop", pool_slot("reports", 2), False),
    ]
    last = ScalingEventLog(sqlite_store.engine).latest("reports", limit=1)[0]
    assert (last.from_processes, last.to_processes) == (4, 2)
    assert "cool-down" in last.reason


def test_a_pin_overrides_the_policy_until_released(
    setup: tuple[ScriptedAutoscaler, StubRunner, Load], sqlite_store: JobStore, tmp_path: Path
) -> None:
    scaler, supervisor, load = setup
    # given reports pinned to 3 while there is no work at all
    write_pin(tmp_path, "reports", 3)
    scaler.tick(now=0.0)
    assert supervisor.running("reports") == 3
    assert "pinned to 3" in ScalingEventLog(sqlite_store.engine).latest("reports", limit=1)[0].reason

    # when a spike comes, and then a long idle time passes
    load.per_pool["reports"] = (50, 2, 30.0)
    scaler.tick(now=1.0)
    load.per_pool["reports"] = (0, 0, 0.0)
    for second in range(2, 40):
        scaler.tick(now=float(second))

    # then the pin holds against both
    assert supervisor.running("reports") == 3
    assert len(ScalingEventLog(sqlite_store.engine).latest("reports")) == 1

    # when the pin is released, the autoscaler takes over again (and the idle pool cools down to min)
    write_pin(tmp_path, "reports", None)
    scaler.tick(now=40.0)
    scaler.tick(now=50.0)
    assert supervisor.running("reports") == POOL.min


def test_a_pin_to_zero_and_a_pin_above_max_are_honoured_within_bounds(
    setup: tuple[ScriptedAutoscaler, StubRunner, Load], tmp_path: Path
) -> None:
    scaler, supervisor, load = setup
    load.per_pool["reports"] = (9, 0, 0.0)
    write_pin(tmp_path, "reports", 0)
    write_pin(tmp_path, "thumbs", 99)

    scaler.tick(now=0.0)

    assert supervisor.running("reports") == 0
    assert supervisor.running("thumbs") == OTHER.max


def test_a_slot_still_stopping_warm_is_not_started_again(
    setup: tuple[ScriptedAutoscaler, StubRunner, Load], sqlite_store: JobStore
) -> None:
    scaler, supervisor, load = setup
    # given slot 1 of reports still finishing its job after a warm stop
    supervisor.states[pool_slot("reports", 1)] = ProcessState.STOPPING

    # when a spike wants 3 processes
    load.per_pool["reports"] = (6, 0, 0.0)
    scaler.tick(now=0.0)

    # then the free slots 2 and 3 are started, not the stopping one, and the event says what was reached
    started = [name for action, name, _ in supervisor.calls if action == "start"]
    assert started == [pool_slot("reports", 2), pool_slot("reports", 3)]
    assert ScalingEventLog(sqlite_store.engine).latest("reports", limit=1)[0].to_processes == 3


def test_no_event_when_every_free_slot_is_still_stopping(
    setup: tuple[ScriptedAutoscaler, StubRunner, Load], sqlite_store: JobStore
) -> None:
    scaler, supervisor, load = setup
    # given a scale-to-zero pool whose only slots are both stopping warm
    for index in range(OTHER.max):
        supervisor.states[pool_slot("thumbs", index)] = ProcessState.STOPPING

    # when a job arrives, tick after tick
    load.per_pool["thumbs"] = (1, 0, 0.0)
    for second in range(5):
        scaler.tick(now=float(second))

    # then nothing is started and no event claims a scale-out that did not happen
    assert supervisor.calls == []
    assert ScalingEventLog(sqlite_store.engine).latest("thumbs") == []

    # and once a slot has exited, the next tick starts it
    supervisor.states[pool_slot("thumbs", 0)] = ProcessState.STOPPED
    scaler.tick(now=6.0)
    assert supervisor.calls == [("start", pool_slot("thumbs", 0), False)]


def test_no_decision_no_event(setup: tuple[ScriptedAutoscaler, StubRunner, Load], sqlite_store: JobStore) -> None:
    scaler, supervisor, load = setup
    load.per_pool["reports"] = (1, 1, 0.0)  # on target for 1 process

    for second in range(30):
        scaler.tick(now=float(second))

    assert supervisor.calls == []
    assert ScalingEventLog(sqlite_store.engine).latest() == []


def test_desired_and_pins_are_published_for_status(
    setup: tuple[ScriptedAutoscaler, StubRunner, Load], tmp_path: Path
) -> None:
    scaler, _, load = setup
    # given reports wanting fewer processes (cooling down) and thumbs pinned
    load.per_pool["reports"] = (0, 0, 0.0)
    write_pin(tmp_path, "thumbs", 2)

    scaler.tick(now=0.0)

    # then the state dir says what each pool wants, even before a decision is taken
    assert read_desired(tmp_path) == {
        "reports": {"desired": 1, "pinned": None},
        "thumbs": {"desired": 2, "pinned": 2},
    }
    assert json.loads((tmp_path / DESIRED_FILE).read_text())["reports"]["desired"] == 1


def test_every_event_is_a_scaling_event_record(
    setup: tuple[ScriptedAutoscaler, StubRunner, Load], sqlite_store: JobStore
) -> None:
    scaler, supervisor, load = setup
    # a spike, then idleness: out, then in after the cool-down
    load.per_pool["reports"] = (3, 0, 0.0)
    scaler.tick(now=0.0)
    supervisor.states = {
        k: ProcessState.RUNNING if v is ProcessState.STARTING else v for k, v in supervisor.states.items()
    }
    load.per_pool["reports"] = (0, 0, 0.0)
    scaler.tick(now=1.0)
    scaler.tick(now=11.0)

    events = ScalingEventLog(sqlite_store.engine).latest("reports")
    assert all(isinstance(e, ScalingEvent) and e.reason for e in events)
    assert [(e.at, e.from_processes, e.to_processes) for e in reversed(events)] == [(0.0, 1, 2), (11.0, 2, 1)]


def test_after_a_pin_is_released_the_cool_down_starts_again(
    setup: tuple[ScriptedAutoscaler, StubRunner, Load], sqlite_store: JobStore, tmp_path: Path
) -> None:
    scaler, supervisor, load = setup
    # given reports at 3 processes, idle, 8 s into its 10 s cool-down
    load.per_pool["reports"] = (6, 0, 0.0)
    scaler.tick(now=0.0)
    supervisor.states = {
        k: ProcessState.RUNNING if v is ProcessState.STARTING else v for k, v in supervisor.states.items()
    }
    load.per_pool["reports"] = (0, 0, 0.0)
    scaler.tick(now=1.0)
    scaler.tick(now=9.0)

    # when it is pinned at 3 for a while, then given back to the autoscaler
    write_pin(tmp_path, "reports", 3)
    scaler.tick(now=10.0)
    write_pin(tmp_path, "reports", None)
    scaler.tick(now=100.0)

    # then it does not scale in at once: the cool-down counts from the release
    assert supervisor.running("reports") == 3
    scaler.tick(now=109.0)
    assert supervisor.running("reports") == 3
    scaler.tick(now=110.0)
    assert supervisor.running("reports") == 1
    assert ScalingEventLog(sqlite_store.engine).latest("reports", limit=1)[0].at == 110.0


# -- Autoscaler.signals against a real store (the broker's queue depths stubbed) --------------------------------


@pytest.fixture
def empty_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker reports every queue empty."""

    def depths(_url: str, queues: tuple[str, ...]) -> dict[str, dict[str, int]]:
        return {name: {"ready": 0, "consumers": 1} for name in queues}

    monkeypatch.setattr(loop_module, "queue_depths", depths)


def test_a_scale_to_zero_pool_whose_only_job_waits_out_a_long_backoff_scales_to_zero(
    sqlite_store: JobStore, tmp_path: Path, empty_queues: None
) -> None:
    # given a min = 0 pool with one process, whose only job failed and waits an hour for its retry
    pool = PoolSpec(name="thumbs", queues=("thumbs",), min=0, max=2, idle_after=5.0, target_backlog=1)
    supervisor = StubRunner()
    supervisor.add_pool(pool, running=1)
    job_id = str(uuid.uuid4())
    sqlite_store.create_job(NewJob(id=job_id, task="t", queue="thumbs", args=[], kwargs={}, max_attempts=3))
    sqlite_store.claim_attempt(job_id, "w1")
    sqlite_store.record_retry(job_id, 1, "flaky", delay_s=3600)
    scaler = Autoscaler(
        (pool,), sqlite_store, ScalingEventLog(sqlite_store.engine), supervisor, "amqp://unused", tmp_path
    )

    # when the autoscaler ticks through the cool-down
    scaler.tick(now=1000.0)
    scaler.tick(now=1006.0)

    # then the pool scales to zero: nothing is there for a process to do until the retry is due
    assert supervisor.running("thumbs") == 0
    assert ("stop", pool_slot("thumbs", 0), False) in supervisor.calls


def test_a_replayed_old_job_does_not_count_as_a_long_wait(
    sqlite_store: JobStore, tmp_path: Path, empty_queues: None
) -> None:
    # given a job created 157 s ago that died, replayed now
    pool = PoolSpec(name="thumbs", queues=("thumbs",), min=0, max=3, idle_after=5.0, target_backlog=1, max_wait=5.0)
    job_id = str(uuid.uuid4())
    sqlite_store.create_job(NewJob(id=job_id, task="t", queue="thumbs", args=[], kwargs={}, max_attempts=1))
    with sqlite_store.engine.begin() as conn:
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(created_at=time.time() - 157))
    sqlite_store.claim_attempt(job_id, "w1")
    sqlite_store.record_failure(job_id, 1, "boom", JobStatus.DEAD)
    sqlite_store.replay(job_id)
    scaler = Autoscaler(
        (pool,), sqlite_store, ScalingEventLog(sqlite_store.engine), StubRunner(), "amqp://unused", tmp_path
    )

    # when the autoscaler reads the pool's signals
    signals = scaler.signals(pool, 0, now=time.time())

    # then the wait is measured from the replay, not from the job's creation
    assert signals.oldest_wait_s < 5.0


class _StoreAway(JobStore):
    """A job store that cannot be reached for the signals the policy needs."""

    def oldest_queued_at(self, queues: Any) -> float | None:
        raise StoreUnavailable("job store unavailable: connection refused")

    def count_working(self, queues: Any) -> int:
        raise StoreUnavailable("job store unavailable: connection refused")


def test_while_the_store_is_away_a_pool_holds_its_processes_and_pins_still_apply(
    tmp_path: Path, empty_queues: None
) -> None:
    # given a scale-to-zero pool running 2 processes, a second pool pinned to 1, and the store away
    store = _StoreAway(f"sqlite:///{tmp_path / 'jobs.db'}")
    supervisor = StubRunner()
    supervisor.add_pool(OTHER, running=2)
    supervisor.add_pool(POOL, running=1)
    write_pin(tmp_path, POOL.name, 2)
    scaler = Autoscaler((OTHER, POOL), store, ScalingEventLog(store.engine), supervisor, "amqp://unused", tmp_path)

    # when the autoscaler ticks for longer than the pool's cool-down
    for second in range(0, 60, 5):
        scaler.tick(now=1000.0 + second)

    # then the pool without signals keeps its processes (its jobs may be running), and the pin is applied
    assert supervisor.running(OTHER.name) == 2
    assert not [call for call in supervisor.calls if call[1].startswith(pool_group(OTHER.name))]
    assert supervisor.running(POOL.name) == 2
