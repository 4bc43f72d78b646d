"""`run_async_batch`: the single submit's rules for many jobs, each port asked once per round for all of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvern.enqueue.core import Accepted, accept, run_async_batch
from kvern.enqueue.validation import Submission
from kvern.errors import PublishError, StoreUnavailable
from kvern.jobs.memory import MemoryJobStore
from kvern.jobs.records import Job, NewJob
from kvern.spec import Spec, load_spec


class Ports:
    """An AsyncBatchPorts over a memory store; the publish of args [n] in `lost` never gets its confirm."""

    def __init__(self, lost: set[int], claimed: set[int]) -> None:
        self.store = MemoryJobStore()
        self.lost, self.claimed = lost, claimed
        self.calls: list[tuple[str, int]] = []  # (port, how many arguments)
        self.marked: list[str] = []

    async def record(self, news: list[NewJob]) -> list[tuple[Job, bool] | BaseException]:
        self.calls.append(("record", len(news)))
        return [StoreUnavailable("down") if new.args == [-1] else self.store.create_job(new) for new in news]

    async def publish(self, jobs: list[Job]) -> list[BaseException | None]:
        self.calls.append(("publish", len(jobs)))
        return [PublishError("no confirm") if job.args[0] in self.lost else None for job in jobs]

    async def withdraw(self, job_ids: list[str]) -> list[bool | BaseException]:
        self.calls.append(("withdraw", len(job_ids)))
        answers: list[bool | BaseException] = []
        for job_id in job_ids:
            job = self.store.get(job_id)
            answers.append(job is not None and job.args[0] not in self.claimed and self.store.withdraw(job_id))
        return answers

    async def mark_published(self, job_ids: list[str]) -> list[BaseException | None]:
        self.calls.append(("mark_published", len(job_ids)))
        self.marked += job_ids
        return [None] * len(job_ids)


@pytest.fixture
def spec(tmp_path: Path) -> Spec:
    path = tmp_path / "kvern.toml"
    path.write_text('[app]\ntasks = "tasks"\n[[pools]]\nname = "main"\nqueues = ["main"]\n')
    return load_spec(path)


def submission(n: int) -> Submission:
    return Submission("tasks.add", [n], {}, request_hash=f"h{n}")


async def test_each_port_is_asked_at_most_once_per_round_and_each_job_keeps_its_outcome(spec: Spec) -> None:
    ports = Ports(lost={2, 3}, claimed={3})
    rules = [accept(spec, submission(n), None) for n in (1, 2, 3, -1, 4)]
    outcomes = await run_async_batch(rules, ports)
    accepted = [o.job.args[0] for o in outcomes if isinstance(o, Accepted)]
    assert accepted == [1, 3, 4]  # 3's confirm was lost but a worker claimed it: the message got through
    assert isinstance(outcomes[1], PublishError) and isinstance(outcomes[3], StoreUnavailable)
    assert sorted(json.loads(row["args"])[0] for row in ports.store.jobs.values()) == [1, 3, 4]  # 2 withdrawn
    # rounds: all record; 4 publish; 1 and 4 are marked while 2 and 3 are withdrawn; then 3 (claimed) is marked
    assert ports.calls == [("record", 5), ("publish", 4), ("mark_published", 2), ("withdraw", 2), ("mark_published", 1)]
    assert sorted(ports.marked) == sorted(o.job.id for o in outcomes if isinstance(o, Accepted))
