"""Faults of several machines under load, on the shared stack (tests/multihost/stack.py).

Submitters post jobs to a1's front door the whole time a fault happens; each job's task leaves one file per
completed run, so lost jobs and duplicate runs are counted from what ran, not only from what the store says.
1. The broker host leading the work queue dies (SIGKILL of all its processes), then comes back.
2. The broker host leading the work queue is cut off from the other two (nftables) for PARTITION_S, then
   the partition heals.
3. A worker host dies (SIGKILL of all its processes) while it runs jobs, then comes back.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.multihost.netns import Host, nft_available
from tests.multihost.stack import WORK_QUEUE, Stack

SUBMITTERS = 4
PAUSE_S = 0.05  # between one submitter's requests
FAULT_AT_S = 4.0  # of steady load before the fault
AFTER_FAULT_S = 8.0  # of load after it: a killed node's or host's outage is about a second
PARTITION_S = 10.0
WORKER_JOB_S = 0.5  # scenario 3's jobs: long enough that the worker host dies in the middle of some
WORKER_PAUSE_S = 0.15  # and fewer of them: the surviving host's 8 slots (16 jobs/s) keep about up
SETTLE_S = 90.0  # for every accepted job to finish after the load
TERMINAL = {"succeeded", "failed", "dead", "cancelled"}
ROWS: list[dict[str, Any]] = []


@dataclass
class Load:
    """Submits jobs with unique tags, sending a request again (same Idempotency-Key) after a 5xx or no answer."""

    url: str
    headers: dict[str, str]
    effects: Path
    seconds: float = 0.05  # each job's run time
    pause: float = PAUSE_S  # between one submitter's requests
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # tags (and keys) unique per scenario
    accepted: dict[str, str] = field(default_factory=dict)  # tag -> job id
    accepted_at: list[float] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    answers_5xx: int = 0
    why_5xx: dict[str, int] = field(default_factory=dict)  # the first 80 characters of each 5xx body, counted
    no_answer: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, submitter: int) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=httpx.Timeout(30, connect=5)) as client:
            n = 0
            while not self.stop.is_set():
                self.submit(client, f"{self.prefix}-s{submitter}-{n}")
                n += 1
                time.sleep(self.pause)

    def submit(self, client: httpx.Client, tag: str) -> None:
        body = {"task": "tasks.work", "args": [tag, str(self.effects), self.seconds]}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": tag})
            except httpx.TransportError:
                with self.lock:
                    self.no_answer += 1
                time.sleep(0.2)
                continue
            if response.status_code in (200, 202):
                with self.lock:
                    self.accepted[tag] = response.json()["id"]
                    self.accepted_at.append(time.monotonic())
                return
            assert response.status_code >= 500, f"{tag}: {response.status_code} {response.text}"
            with self.lock:
                self.answers_5xx += 1
                why = response.text[:80]
                self.why_5xx[why] = self.why_5xx.get(why, 0) + 1
            time.sleep(0.2)
        with self.lock:
            self.given_up.append(tag)

    def longest_gap_after(self, moment: float) -> float:
        """The longest wait between two accepted submissions from `moment` on: the outage the fault made."""
        stamps = sorted(t for t in self.accepted_at if t >= moment)
        edges = [moment, *stamps]
        return max(b - a for a, b in itertools.pairwise(edges)) if stamps else float("inf")


def _settle(stack: Stack, load: Load) -> tuple[list[str], dict[str, int]]:
    """Wait for every accepted job to end; returns the ones still not ended and executions per tag."""
    deadline = time.monotonic() + SETTLE_S
    pending = dict(load.accepted)
    while pending and time.monotonic() < deadline:
        for tag, job_id in list(pending.items()):
            job = stack.store.get(job_id)
            if job is not None and str(job.status) in TERMINAL:
                del pending[tag]
        time.sleep(0.5)
    runs: dict[str, int] = {}
    for path in stack.effects.iterdir():
        tag = path.name.split(".")[0]
        runs[tag] = runs.get(tag, 0) + 1
    return list(pending), runs


def _under_load(
    stack: Stack,
    fault: Callable[[], None],
    *,
    after_s: float = AFTER_FAULT_S,
    seconds: float = 0.05,
    pause: float = PAUSE_S,
) -> tuple[Load, float]:
    """Run the submitters with `fault` at FAULT_AT_S and `after_s` more; returns the load and the fault's time."""
    load = Load(stack.url, stack.headers(), stack.effects, seconds, pause)
    threads = [threading.Thread(target=load.run, args=(i,)) for i in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(FAULT_AT_S)
        fault_at = time.monotonic()
        fault()
        time.sleep(after_s)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=120)
    return load, fault_at


def _count(stack: Stack, scenario: str, load: Load, fault_at: float) -> dict[str, Any]:
    """The fault table's row; also asserts what every scenario promises: nothing accepted is lost or stuck."""
    recovery = load.longest_gap_after(fault_at)
    stuck, runs = _settle(stack, load)
    ended = {tag: stack.store.get(job_id) for tag, job_id in load.accepted.items()}
    not_ok = [tag for tag, job in ended.items() if job is not None and job.status != "succeeded"]
    never_ran = [tag for tag in load.accepted if runs.get(tag, 0) == 0]
    row = {
        "scenario": scenario,
        "accepted": len(load.accepted),
        "lost": len(load.given_up) + len(never_ran),
        "stuck": len(stuck),
        "duplicate runs": sum(1 for tag in load.accepted if runs.get(tag, 0) > 1),
        "5xx": load.answers_5xx,
        "no answer": load.no_answer,
        "202 again after (s)": round(recovery, 2),
    }
    ROWS.append(row)
    print(f"\nmultihost fault row: {row}\n5xx bodies: {load.why_5xx}")
    assert load.accepted, "no job was accepted"
    assert not load.given_up, f"submissions never accepted: {load.given_up[:5]}"
    assert not stuck, f"accepted jobs that never ended: {stuck[:5]}"
    assert not not_ok, f"accepted jobs that did not succeed: {not_ok[:5]}"
    assert not never_ran, f"accepted jobs that never ran: {never_ran[:5]}"
    return row


def test_killing_the_broker_host_leading_the_queue_under_load(stack: Stack) -> None:
    project = stack.project
    leader = project.leader(WORK_QUEUE)
    load, killed_at = _under_load(stack, lambda: _kill(leader))
    try:
        _count(stack, f"1: SIGKILL of the broker host leading {WORK_QUEUE!r}", load, killed_at)
    except BaseException:
        project.up(leader)  # the shared stack stays whole for the scenarios after this one
        raise
    # The old leader's host comes back and rejoins: the queue has its three replicas again.
    assert "rejoined its cluster" in project.up(leader)
    members = project.queue_info(WORK_QUEUE, "members", among=[leader])
    assert isinstance(members, list) and len(members) == 3


@pytest.mark.skipif(not nft_available(), reason="nftables is not installed (make system-deps installs it)")
def test_partitioning_the_leader_broker_host_from_the_others_under_load(stack: Stack) -> None:
    project = stack.project
    leader, term = project.raft_leader(WORK_QUEUE)
    others = [host for host in project.brokers() if host is not leader]

    def cut_off() -> None:
        leader.partition(others)  # clients still reach it; its peers do not
        threading.Timer(PARTITION_S, leader.heal).start()

    try:
        load, cut_at = _under_load(stack, cut_off, after_s=PARTITION_S + 10)  # 202s again 3 to 4 s after healing
    finally:
        leader.heal()
    # No 202 without a quorum's confirm: every accepted job ran, none was lost, after the partition healed.
    _count(
        stack, f"2: broker host leading {WORK_QUEUE!r} cut off from the other two for {PARTITION_S:.0f} s", load, cut_at
    )
    # The partition did cut off the leader: the other two elected one of their own (a later term), which the
    # old leader follows after healing. Whatever it had not replicated to them is what a 202 must not cover.
    new_leader, new_term = project.raft_leader(WORK_QUEUE)
    assert new_term > term and new_leader is not leader, f"no election while {leader.name} was cut off"
    expected = {f"kvern@{h.address}" for h in project.brokers()}
    deadline = time.monotonic() + 120
    while project.running_nodes(leader) != expected:  # the cluster is whole again
        assert time.monotonic() < deadline, project.running_nodes(leader)
        time.sleep(2)


def test_killing_a_worker_host_under_load(stack: Stack) -> None:
    project = stack.project
    worker = project.hosts["w2"]
    worker_pids: list[int] = []

    def die() -> None:
        worker_pids.extend(worker.pids())
        _kill(worker)

    load, killed_at = _under_load(stack, die, seconds=WORKER_JOB_S, pause=WORKER_PAUSE_S)
    try:
        row = _count(stack, "3: SIGKILL of a worker host", load, killed_at)
    finally:
        project.up(worker)  # it comes back and takes its share again (also when the count failed)
    ran_there = [p for p in stack.effects.iterdir() if p.name.startswith(load.prefix) and _pid(p) in worker_pids]
    print(f"jobs of this scenario completed on the killed worker host before it died: {len(ran_there)}")
    assert ran_there, f"the worker host took no share of the load, so its death proved nothing: {row}"


def _pid(effect: Path) -> int:
    return int(effect.name.split(".")[1])


def _kill(host: Host) -> None:
    assert host.kill_all() > 0  # the machine dies: every process of it, its Supervisor too
