"""`ScalingPolicy` contract, run over every implementation: BacklogPolicy and the test stub FixedPolicy.

The autoscaler calls only the Protocol's methods, so any policy that keeps this contract can drive a pool.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from kvern.autoscale.loop import Autoscaler
from kvern.autoscale.policy import BacklogPolicy, Decision, PoolSignals, ScalingPolicy
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.jobs.store import JobStore
from kvern.spec import PoolSpec
from tests.unit.doubles import FixedPolicy, StubRunner

POOLS = (
    PoolSpec(name="reports", queues=("reports",), min=1, max=4, idle_after=10.0, target_backlog=2, max_wait=5.0),
    PoolSpec(name="naps", queues=("naps",), min=0, max=3, idle_after=5.0, target_backlog=1),
)
SIGNALS = [
    PoolSignals(ready, running, wait, processes)
    for ready, running, wait, processes in itertools.product((0, 1, 7, 50), (0, 3), (0.0, 60.0), (0, 1, 2, 4))
]
PolicyFactory = Callable[[PoolSpec], ScalingPolicy]
IMPLEMENTATIONS: dict[str, PolicyFactory] = {
    "backlog": BacklogPolicy,
    "fixed": lambda pool: FixedPolicy(pool, target=2),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make_policy(request: pytest.FixtureRequest) -> PolicyFactory:
    return IMPLEMENTATIONS[request.param]


def drive(policy: ScalingPolicy, ticks: list[PoolSignals], start: float) -> list[Decision | None]:
    return [policy.decide(signals, start + second) for second, signals in enumerate(ticks)]


@pytest.mark.parametrize("pool", POOLS, ids=lambda pool: pool.name)
def test_desired_and_decisions_stay_within_the_pool_bounds(make_policy: PolicyFactory, pool: PoolSpec) -> None:
    policy = make_policy(pool)
    for now, signals in enumerate(SIGNALS * 3):  # three rounds: a cool-down can end in between
        wanted, reason = policy.desired(signals)
        decision = policy.decide(signals, float(now * 7))
        assert pool.min <= wanted <= pool.max and reason
        if decision is not None:
            assert pool.min <= decision.target <= pool.max and decision.reason
            assert decision.target != signals.processes  # a decision always changes something


def test_desired_keeps_no_state(make_policy: PolicyFactory) -> None:
    # given two fresh policies, one of which is asked `desired` between every decision
    asked, untouched = make_policy(POOLS[0]), make_policy(POOLS[0])
    decisions_asked = []
    for now, signals in enumerate(SIGNALS):
        asked.desired(signals)
        decisions_asked.append(asked.decide(signals, float(now)))

    # then both decide alike
    assert decisions_asked == drive(untouched, SIGNALS, 0.0)


def test_reset_forgets_what_earlier_ticks_left(make_policy: PolicyFactory) -> None:
    # given a policy that has seen ticks (a cool-down may be under way), and one that has not
    used, fresh = make_policy(POOLS[0]), make_policy(POOLS[0])
    idle = [PoolSignals(0, 0, 0.0, 3)] * 6
    drive(used, idle, 100.0)

    # when it is reset
    used.reset()

    # then it decides as a fresh one would from now on
    assert drive(used, idle * 3, 200.0) == drive(fresh, idle * 3, 200.0)


def test_the_autoscaler_asks_the_policy_it_is_given(sqlite_store: JobStore, tmp_path: Path) -> None:
    # given an autoscaler whose policy wants 2 processes whatever the load, over an idle pool of 1
    pool = POOLS[0]
    supervisor = StubRunner()
    supervisor.add_pool(pool, running=1)
    scaler = Autoscaler(
        (pool,),
        sqlite_store,
        ScalingEventLog(sqlite_store.engine),
        supervisor,
        "amqp://unused",
        tmp_path,
        policy_for=lambda pool: FixedPolicy(pool, target=2),
    )
    scaler.signals = lambda pool, processes, now: PoolSignals(0, 0, 0.0, processes)  # type: ignore[method-assign]

    # when it ticks
    scaler.tick(now=1000.0)

    # then the pool follows that policy, not the backlog (which would keep 1)
    assert supervisor.running(pool.name) == 2
    assert "fixed at 2" in ScalingEventLog(sqlite_store.engine).latest(pool.name, limit=1)[0].reason
