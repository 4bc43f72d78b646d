"""Several hosts scaling one pool through the store (autoscale/shared.py), on the in-memory store with a fake clock
and a fake Supervisor per host: one leader decides the pool's total, each host runs its share."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from kvern.autoscale.policy import PoolSignals
from kvern.autoscale.shared import SharedAutoscaler, pool_lease, share_of
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.records import PoolDecision
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.jobs.store import JobStore
from kvern.processes import ProcessState
from kvern.spec import PoolSpec
from tests.unit.doubles import StubRunner

POOL = PoolSpec(name="main", queues=("main",), min=1, max=2, idle_after=10.0, target_backlog=2, max_wait=5.0)
TTL = 5.0
TICK = 0.5


@dataclass
class Backlog:
    ready: int = 0
    running: int = 0


class ScriptedHost(SharedAutoscaler):
    """The real tick of one host, with the broker's and store's signals given by the test."""

    def __init__(self, *args: object, backlog: Backlog, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.backlog = backlog

    def signals(self, pool: PoolSpec, processes: int, now: float) -> PoolSignals:
        return PoolSignals(self.backlog.ready, self.backlog.running, 0.0, processes)


@dataclass
class Instance:
    store: MemoryJobStore
    events: ScalingEventLog
    tmp_path: Path
    backlog: Backlog = field(default_factory=Backlog)
    pool: PoolSpec = POOL
    hosts: dict[str, tuple[ScriptedHost, StubRunner]] = field(default_factory=dict)

    def add_host(self, name: str, running: int = 1) -> ScriptedHost:
        runner = StubRunner()
        runner.add_pool(self.pool, running=running)
        state = self.tmp_path / name
        state.mkdir()
        scaler = ScriptedHost(
            (self.pool,),
            self.store,
            self.events,
            runner,
            "amqp://unused",
            state,
            host=name,
            ttl_s=TTL,
            backlog=self.backlog,
        )
        self.hosts[name] = (scaler, runner)
        return scaler

    def tick(self, now: float, *names: str) -> None:
        """Each named host (all when none) ticks; the processes they started have booted by the next tick."""
        for name in names or list(self.hosts):
            scaler, runner = self.hosts[name]
            scaler.tick(now)
            for slot, state in runner.states.items():
                if state is ProcessState.STARTING:
                    runner.states[slot] = ProcessState.RUNNING
                elif state is ProcessState.STOPPING:
                    runner.states[slot] = ProcessState.STOPPED

    def running(self) -> dict[str, int]:
        return {name: runner.running(POOL.name) for name, (_, runner) in self.hosts.items()}


@pytest.fixture
def instance(sqlite_store: JobStore, tmp_path: Path) -> Instance:
    # Decisions in memory; the scaling events (not part of the contract) in the SQLite store.
    return Instance(MemoryJobStore(), ScalingEventLog(sqlite_store.engine), tmp_path)


def test_share_is_even_by_host_name_with_the_remainder_to_the_first_within_min_and_max() -> None:
    hosts = ["w1", "w2", "w3"]
    wide = replace(POOL, min=0, max=4)
    assert [share_of(7, hosts, h, wide) for h in hosts] == [3, 2, 2]
    assert [share_of(3, hosts, h, wide) for h in hosts] == [1, 1, 1]
    assert [share_of(2, hosts, h, wide) for h in hosts] == [1, 1, 0]
    assert [share_of(12, hosts, h, POOL) for h in hosts] == [2, 2, 2]  # max 2 per host
    assert [share_of(2, hosts, h, POOL) for h in hosts] == [1, 1, 1]  # min 1 per host


def test_one_leader_decides_the_pools_total_and_each_host_runs_its_share(instance: Instance) -> None:
    # given two hosts of a pool (min 1, max 2 per host), one process each, and a backlog of 20 jobs
    instance.add_host("w1")
    instance.add_host("w2")
    instance.backlog.ready = 20

    # when both tick a few times
    for step in range(3):
        instance.tick(100.0 + step * TICK)

    # then one host leads, the pool's total is 2 hosts x max 2, and each host runs 2
    leader = instance.store.lease_holder(pool_lease("main"), now=101.0)
    assert leader in ("w1", "w2")
    decision = instance.store.pool_decision("main")
    assert decision is not None and decision.processes == 4 and decision.leader == leader
    assert instance.running() == {"w1": 2, "w2": 2}


def test_a_host_that_joins_takes_a_share_and_the_total_grows(instance: Instance) -> None:
    # given two hosts at their max under a large backlog
    instance.add_host("w1")
    instance.add_host("w2")
    instance.backlog.ready = 100
    for step in range(3):
        instance.tick(100.0 + step * TICK)
    assert instance.running() == {"w1": 2, "w2": 2}

    # when a third host starts with its min
    instance.add_host("w3")
    for step in range(3):
        instance.tick(102.0 + step * TICK)

    # then the pool's total is 6 and w3 runs 2 of it
    decision = instance.store.pool_decision("main")
    assert decision is not None and decision.processes == 6
    assert instance.running() == {"w1": 2, "w2": 2, "w3": 2}


def test_a_host_joining_an_idle_pool_keeps_its_min_and_nobody_stops_a_process(instance: Instance) -> None:
    # given two idle hosts at their min (1 each): the pool's total is 2
    instance.add_host("w1")
    instance.add_host("w2")
    for step in range(3):
        instance.tick(100.0 + step * TICK)
    decision = instance.store.pool_decision("main")
    assert decision is not None and decision.processes == 2

    # when a third host joins with its min
    instance.add_host("w3")
    for step in range(4):
        instance.tick(102.0 + step * TICK)

    # then the total follows the bounds of three hosts, and no host stopped a process on the way
    decision = instance.store.pool_decision("main")
    assert decision is not None and decision.processes == 3
    assert instance.running() == {"w1": 1, "w2": 1, "w3": 1}
    assert not [call for _, runner in instance.hosts.values() for call in runner.calls if call[0] == "stop"]


def test_when_the_leader_host_dies_another_takes_the_lease_within_the_ttl_and_scaling_goes_on(
    instance: Instance,
) -> None:
    # given three hosts with little work: 1 process each, w-something leads
    for name in ("w1", "w2", "w3"):
        instance.add_host(name)
    instance.backlog.ready = 1
    now = 100.0
    for _ in range(3):
        instance.tick(now)
        now += TICK
    leader = instance.store.lease_holder(pool_lease("main"), now)
    assert leader is not None
    survivors = [name for name in instance.hosts if name != leader]
    died_at = now

    # when the leader's host dies (it ticks no more) and a backlog arrives
    instance.backlog.ready = 100
    new_leader = None
    while new_leader is None or new_leader == leader:
        instance.tick(now, *survivors)
        new_leader = instance.store.lease_holder(pool_lease("main"), now)
        now += TICK
        assert now - died_at <= TTL + 2 * TICK, "no survivor took the lease within its TTL"

    # then a survivor leads, and within a few more ticks it has scaled the survivors to their max
    assert new_leader in survivors
    for _ in range(3):
        instance.tick(now, *survivors)
        now += TICK
    decision = instance.store.pool_decision("main")
    assert decision is not None and decision.leader == new_leader and decision.decided_at > died_at
    assert {name: instance.running()[name] for name in survivors} == dict.fromkeys(survivors, 2)


def test_two_hosts_never_both_decide_for_one_pool_even_when_a_stalled_leader_wakes_up(instance: Instance) -> None:
    # given every decision that lands in the store is logged with who made it and when
    landed: list[tuple[float, str]] = []
    record = instance.store.record_pool_decision

    def logged(decision: PoolDecision, lease: str, now: float) -> bool:
        ok = record(decision, lease, now)
        if ok:
            landed.append((now, decision.leader))
        return ok

    instance.store.record_pool_decision = logged  # type: ignore[method-assign]
    instance.pool = replace(POOL, idle_after=1.0)  # a short cool-down: the swinging load makes many decisions
    for name in ("w1", "w2"):
        instance.add_host(name)

    # when the hosts tick together, then the leader stalls for 8 s (a long GC, a frozen VM) while the load swings,
    # then wakes up and ticks with the others
    now, stalled = 100.0, None
    for step in range(60):
        instance.backlog.ready = 40 if (step // 7) % 2 else 0
        if step == 10:
            stalled = instance.store.lease_holder(pool_lease("main"), now)
        awake = [n for n in instance.hosts if not (stalled == n and 10 <= step < 26)]
        instance.tick(now, *awake)
        now += TICK

    # then decisions came from the first leader up to its stall, and from the other one only after its lease
    # expired; the first one, awake again, never decided again (the other renews the lease every tick)
    assert stalled is not None
    writers = [who for _, who in landed]
    switch = writers.index(next(w for w in writers if w != stalled))
    assert set(writers[:switch]) == {stalled} and stalled not in writers[switch:]
    last_of_first = max(at for at, who in landed if who == stalled)
    first_of_second = landed[switch][0]
    assert first_of_second > last_of_first + TTL - TICK


def test_a_clean_stop_gives_the_lease_up_and_the_others_take_over_at_once(instance: Instance) -> None:
    instance.add_host("w1")
    instance.add_host("w2")
    instance.tick(100.0)
    leader = instance.store.lease_holder(pool_lease("main"), 100.0)
    assert leader is not None
    other = next(name for name in instance.hosts if name != leader)

    instance.hosts[leader][0].resign()
    instance.tick(100.5, other)

    assert instance.store.lease_holder(pool_lease("main"), 100.5) == other
    assert [h.host for h in instance.store.live_pool_hosts("main", 100.5)] == [other]
