"""Scenario 5: a worker host joins while a backlog drains, and the pool's leader freezes.

On the shared stack (tests/multihost/stack.py) the pool `main` runs on a1 and w2, at most 2 processes per host of
4 jobs each. A backlog of 1-second jobs (sleeps: the 2 cores are not what limits) drains at the pool's capacity;
w3, declared in the spec, is then started: the pool's leader raises the pool's total and w3 takes its share, so the
drain rate rises. Then the leader's controller is frozen (SIGSTOP, as a stalled or cut-off host): another host
takes the pool's lease once it lapsed and decides from then on. w3 is stopped again at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import func, select

from kvern.autoscale.shared import pool_lease
from kvern.constants import LEASE_TTL_S, PROGRAM_CONTROLLER
from kvern.jobs import schema
from kvern.runtime.supervisor import Supervisor
from tests.multihost.stack import Stack
from tests.multihost.test_failover_under_load import TERMINAL, _pid

POOL = "main"
PER_HOST_MAX = 2  # the stack's pool: max = 2 per host
JOB_S = 1.0
BACKLOG = 1200
BATCH = 400
BOOT_S = 5.0  # a worker process that was started takes its first jobs after this
WINDOW_S = 8.0
SCALED_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0


def _submit_backlog(stack: Stack, prefix: str) -> list[str]:
    """BACKLOG jobs in batches; a job refused (5xx: the broker did not confirm it, as after the broker faults of
    the scenarios before) is sent again with the same idempotency key."""
    accepted: dict[str, str] = {}
    tags = [f"{prefix}-{n}" for n in range(BACKLOG)]
    deadline = time.monotonic() + SCALED_TIMEOUT_S
    with httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=60) as client:
        while len(accepted) < BACKLOG:
            assert time.monotonic() < deadline, f"only {len(accepted)} of {BACKLOG} jobs accepted"
            batch = [tag for tag in tags if tag not in accepted][:BATCH]
            jobs = [
                {"task": "tasks.work", "args": [tag, str(stack.effects), JOB_S], "idempotency_key": tag}
                for tag in batch
            ]
            response = client.post("/api/v1/jobs:batch", json={"jobs": jobs})
            assert response.status_code == 200, response.text
            for tag, answer in zip(batch, response.json()["jobs"], strict=True):
                assert answer["status"] in (200, 202) or answer["status"] >= 500, answer
                if answer["status"] < 500:
                    accepted[tag] = answer["job"]["id"]
    return list(accepted.values())


def _wait_for_processes(stack: Stack, hosts: set[str], per_host: int) -> float:
    """Until each of `hosts` reports `per_host` processes of the pool; returns when."""
    deadline = time.monotonic() + SCALED_TIMEOUT_S
    while True:
        beats = {beat.host: beat.processes for beat in stack.store.live_pool_hosts(POOL, time.time())}
        if all(beats.get(host) == per_host for host in hosts):
            return time.time()
        assert time.monotonic() < deadline, f"the pool did not reach {per_host} per host on {hosts}: {beats}"
        time.sleep(0.5)


def _finished_between(effects: Path, prefix: str, start: float, end: float) -> int:
    """Jobs of this scenario that completed in [start, end) (wall time, from each run's effect file)."""
    done = 0
    for path in effects.iterdir():
        tag, _, finished_ns = path.name.split(".")
        if tag.startswith(prefix) and start <= int(finished_ns) / 1e9 < end:
            done += 1
    return done


def _drain_rate(effects: Path, prefix: str) -> float:
    """Jobs per second over the next WINDOW_S."""
    start = time.time()
    time.sleep(WINDOW_S + 1.5)  # the runs ending at the window's end have written their files
    return _finished_between(effects, prefix, start, start + WINDOW_S) / WINDOW_S


def _wait_drained(stack: Stack, ids: list[str]) -> int:
    """Until every job of `ids` ended; returns how many had not by the deadline."""
    jobs = schema.jobs
    unfinished = (
        select(func.count()).select_from(jobs).where(jobs.c.id.in_(ids), jobs.c.status.not_in(sorted(TERMINAL)))
    )
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        with stack.store.engine.connect() as conn:
            left = int(conn.execute(unfinished).scalar_one())
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(1)


def _freeze_the_leader(stack: Stack) -> tuple[str, float, str]:
    """SIGSTOP the controller of the host leading the pool; returns (that host, how long until another host led
    and decided, the new leader)."""
    project = stack.project
    leader = stack.store.lease_holder(pool_lease(POOL), time.time())
    assert leader is not None, "the pool has no leader"
    pid = Supervisor(project.state(project.hosts[leader])).process(PROGRAM_CONTROLLER).pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        deadline = time.monotonic() + LEASE_TTL_S + 10
        while True:
            decision = stack.store.pool_decision(POOL)
            if decision is not None and decision.leader != leader and decision.decided_at > frozen_at:
                return leader, decision.decided_at - frozen_at, decision.leader
            assert time.monotonic() < deadline, f"no other host decided for the pool after {leader} froze"
            time.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_adding_a_worker_host_raises_the_drain_rate_and_a_frozen_leader_is_replaced(stack: Stack) -> None:
    project = stack.project
    w3 = project.hosts["w3"]
    prefix = f"drain{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    try:
        # given a backlog the two worker hosts drain at their max
        ids = _submit_backlog(stack, prefix)
        _wait_for_processes(stack, {"a1", "w2"}, PER_HOST_MAX)
        time.sleep(BOOT_S)
        before = _drain_rate(stack.effects, prefix)

        # when a third worker host starts
        up_at = time.time()
        project.up(w3)
        joined = _wait_for_processes(stack, {"a1", "w2", "w3"}, PER_HOST_MAX)
        time.sleep(BOOT_S)
        after = _drain_rate(stack.effects, prefix)
        decision = stack.store.pool_decision(POOL)
        ran_on_w3 = [p for p in stack.effects.iterdir() if p.name.startswith(prefix) and _pid(p) in w3.pids()]

        # and the pool's leader freezes
        frozen, takeover_s, new_leader = _freeze_the_leader(stack)
        print(
            f"\nscenario 5: drain rate {before:.1f} jobs/s on 2 worker hosts -> {after:.1f} jobs/s on 3 "
            f"(x{after / before:.2f}); w3 ran {PER_HOST_MAX} processes {joined - up_at:.0f} s after its up began, "
            f"ran {len(ran_on_w3)} jobs; pool total {decision.processes if decision else None}; "
            f"leader {frozen} frozen -> {new_leader} decided after {takeover_s:.1f} s (lease TTL {LEASE_TTL_S:g} s)"
        )
        # then the pool's total grew to 3 hosts' max, w3 took jobs and the drain rate rose
        assert decision is not None and decision.processes == 3 * PER_HOST_MAX
        assert ran_on_w3, "w3 ran none of the backlog"
        assert after > before * 1.2, f"the drain rate did not rise: {before:.1f} -> {after:.1f} jobs/s"
        # and another host led the pool within the lease's TTL (plus a tick or two)
        assert takeover_s <= LEASE_TTL_S + 2.0, takeover_s
        # and the backlog drained with nothing lost
        assert _wait_drained(stack, ids) == 0
        assert _finished_between(stack.effects, prefix, 0, float("inf")) >= BACKLOG
    finally:
        if project.state(w3).exists():
            with contextlib.suppress(AssertionError):
                project.kvern(w3, "down")
        print(f"scenario 5 took {time.monotonic() - started:.0f} s")
