"""GroupCall: the items threads hand in while a batch runs share the next run; each gets its own answer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvern.broker.grouping import GroupCall


class Doubler:
    """Answers each item with twice its value, refuses negative ones; a run takes a while, like a round trip."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.lock = threading.Lock()

    def run(self, items: list[int]) -> list[int | BaseException]:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.batches.append(items)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return [ValueError(f"negative {n}") if n < 0 else n * 2 for n in items]


def test_a_lone_call_runs_its_own_item_at_once() -> None:
    doubler = Doubler()
    assert GroupCall(doubler.run, 10).call(3) == 6
    assert doubler.batches == [[3]]


def test_concurrent_calls_share_runs_one_at_a_time_and_each_gets_its_answer() -> None:
    doubler = Doubler()
    group = GroupCall(doubler.run, 64)
    items = list(range(-8, 32))
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = {n: pool.submit(group.call, n) for n in items}
    for n, future in futures.items():
        if n < 0:
            with pytest.raises(ValueError, match=f"negative {n}"):
                future.result()
        else:
            assert future.result() == n * 2
    assert sorted(n for batch in doubler.batches for n in batch) == items  # every item ran exactly once
    assert len(doubler.batches) < len(items)  # calls that arrived during a run shared the next
    assert doubler.most_running == 1


def test_a_failed_run_fails_every_call_of_its_batch_and_the_next_batch_still_runs() -> None:
    calls = 0

    def run(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(0.05)
            raise ConnectionError("broker gone")
        return [n for n in items]

    group = GroupCall(run, 64)
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(group.call, 1)
        time.sleep(0.01)  # the first run is under way: these wait for the next
        later = [pool.submit(group.call, n) for n in (2, 3, 4)]
    with pytest.raises(ConnectionError):
        first.result()
    assert [future.result() for future in later] == [2, 3, 4]
    assert calls == 2
