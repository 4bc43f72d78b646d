"""B8, several machines: what the broker cluster's coordination costs per job, and how long each fault keeps
submits from being accepted.

Jobs/s with 1, 2 or 3 worker hosts on the same 2 cores would measure the cores, not the design, so B8
measures what the extra machines cost and what a fault costs, on the multihost tests' own harness
(tests/multihost: hosts as network namespaces; imported, not copied; root only).
(a) Coordination cost: two stacks up side by side, one with 3 broker hosts (one RabbitMQ cluster, the work
    queue replicated on all three) and one with 1 broker host; rounds alternate between them. A round is the
    tests' steady load with no fault (4 submitters posting 50 ms jobs to the front door for 12 s) and the
    wait until every accepted job ended; the CPU time (utime + stime from /proc/<pid>/stat) of every process in
    the broker hosts' namespaces and of the controller's processes on a1, over the round, per accepted job.
(b) Recovery: the multihost scenarios 1, 2 and 3 (tests/multihost/test_failover_under_load.py, run as they
    are, assertions included), RUNS times each on the 3-broker stack; the median of their "202 again after"
    figure and every run's fault row.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Table, log, median, write_results
from tests.multihost import test_failover_under_load as scenarios
from tests.multihost.netns import Host, namespaces_supported, nft_available
from tests.multihost.stack import BROKERS, Stack, running_stack

RUNS = 3
ROUND_S = scenarios.FAULT_AT_S + scenarios.AFTER_FAULT_S  # the tests' load, with no fault
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
FAULTS: dict[str, Callable[[Stack], None]] = {
    "1. SIGKILL of the broker host leading the work queue": (
        scenarios.test_killing_the_broker_host_leading_the_queue_under_load
    ),
    "2. the leader's broker host cut off from the other two for 10 s": (
        scenarios.test_partitioning_the_leader_broker_host_from_the_others_under_load
    ),
    "3. SIGKILL of a worker host": scenarios.test_killing_a_worker_host_under_load,
}


def _ticks(pid: int) -> int:
    """CPU time of one process so far (utime + stime), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _controller_pids(front: Host) -> list[int]:
    pids = []
    for pid in front.pids():
        with contextlib.suppress(OSError):
            if b"kvern.controller" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return pids


def _cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(_ticks(pid) for pid in pids) / TICKS_PER_S for name, pids in groups.items()}


def _coordination_round(stack: Stack) -> dict[str, float]:
    """One round of steady load on `stack`: broker and controller CPU seconds per 1,000 accepted jobs."""
    project = stack.project
    groups = {
        "broker": [pid for host in project.brokers() for pid in host.pids()],
        "controller": _controller_pids(stack.front),
    }
    before, started = _cpu_seconds(groups), time.monotonic()
    load, _ = scenarios._under_load(stack, lambda: None)
    stuck, _runs = scenarios._settle(stack, load)
    after, elapsed = _cpu_seconds(groups), time.monotonic() - started
    assert not stuck, f"jobs that never ended: {stuck[:5]}"
    jobs = len(load.accepted)
    return {
        "jobs": float(jobs),
        "seconds": elapsed,
        **{f"{name} cpu s per 1000 jobs": (after[name] - before[name]) * 1000 / jobs for name in groups},
        **{f"{name} cores": (after[name] - before[name]) / elapsed for name in groups},
    }


def _coordination(stacks: dict[str, Stack]) -> tuple[dict[str, dict[str, float]], Table]:
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in stacks}
    for number in range(RUNS):
        for name, stack in stacks.items():
            log(f"B8 coordination round {number + 1}/{RUNS}: {name}")
            rounds[name].append(_coordination_round(stack))
    medians = {name: {key: median(r[key] for r in runs) for key in runs[0]} for name, runs in rounds.items()}
    keys = list(next(iter(medians.values())))
    table = Table(
        f"B8 coordination cost: steady load, {ROUND_S:.0f} s per round (median of {RUNS} alternating rounds)",
        ["figure", *medians],
        [[key, *(medians[name][key] for name in medians)] for key in keys],
    )
    return medians, table


def _recovery(stack: Stack) -> tuple[dict[str, Any], list[Table]]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in FAULTS}
    for number in range(RUNS):
        for name, scenario in FAULTS.items():
            log(f"B8 recovery run {number + 1}/{RUNS}: {name}")
            scenario(stack)
            rows[name].append(scenarios.ROWS[-1])
    again = {name: median(row["202 again after (s)"] for row in runs) for name, runs in rows.items()}
    summary = Table(
        f"B8 time to the next 202 after each fault (median of {RUNS} runs; 4 submitters, jobs of 50 ms, 0.5 s in 3)",
        ["fault", "202 again after (s)", "runs (s)", "accepted", "lost", "stuck", "duplicate runs", "5xx"],
        [
            [
                name,
                again[name],
                " / ".join(f"{row['202 again after (s)']:.2f}" for row in runs),
                " / ".join(str(row["accepted"]) for row in runs),
                sum(row["lost"] for row in runs),
                sum(row["stuck"] for row in runs),
                " / ".join(str(row["duplicate runs"]) for row in runs),
                " / ".join(str(row["5xx"]) for row in runs),
            ]
            for name, runs in rows.items()
        ],
    )
    return {"202 again after (s), median": again, "rows": rows}, [summary]


def _ratios(three: dict[str, float], one: dict[str, float]) -> Table:
    return Table(
        "B8 coordination: 3 broker hosts / 1 broker host",
        ["figure (per accepted job)", "ratio"],
        [
            [f"{part} CPU", three[f"{part} cpu s per 1000 jobs"] / one[f"{part} cpu s per 1000 jobs"]]
            for part in ("broker", "controller")
        ],
    )


def main() -> dict[str, Any]:
    reason = namespaces_supported()
    if reason is not None or not nft_available():
        raise RuntimeError(f"B8 needs network namespaces and nftables: {reason or 'nft is not installed'}")
    with tempfile.TemporaryDirectory(prefix="kvern-b8-") as folder:
        three_dir, one_dir = Path(folder, "three"), Path(folder, "one")
        three_dir.mkdir()
        one_dir.mkdir()
        with running_stack(three_dir, BROKERS) as three:
            with running_stack(one_dir, BROKERS[:1]) as one:
                coordination, cost_table = _coordination({"3 broker hosts": three, "1 broker host": one})
            recovery, recovery_tables = _recovery(three)  # the other stack is down: fewer cores taken
    ratio = _ratios(coordination["3 broker hosts"], coordination["1 broker host"])
    figures = {"coordination": coordination, "recovery": recovery}
    write_results("B8", figures, [cost_table, ratio, *recovery_tables])
    return figures
