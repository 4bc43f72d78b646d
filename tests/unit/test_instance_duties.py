"""The instance-wide duties (outbox relay, retention, notifications, job metrics) on several hosts: one
controller at a time runs them, and another takes them over when it dies (controller.InstanceDuties)."""

from __future__ import annotations

from collections.abc import Callable

from kvern.controller import InstanceDuties, _while_held
from kvern.jobs.memory import MemoryJobStore

TTL = 5.0


def _runner(ran: list[str], host: str) -> Callable[[], None]:
    return lambda: ran.append(host)


def test_one_controller_runs_the_duties_and_another_takes_them_over_after_its_lease_lapses() -> None:
    store = MemoryJobStore()
    a1, w2 = InstanceDuties(store, "a1", TTL), InstanceDuties(store, "w2", TTL)
    ran: list[str] = []
    steps = {duties.host: _while_held(duties, _runner(ran, duties.host)) for duties in (a1, w2)}

    # given both renew every 0.5 s: a1 first, so a1 runs the duties and w2 skips them
    for tick in range(4):
        assert a1.renew(100.0 + tick * 0.5) and not w2.renew(100.0 + tick * 0.5)
        steps["a1"]()
        steps["w2"]()
    assert ran == ["a1"] * 4

    # when a1's host dies at 101.5 (no more renewals), w2 takes the duties once the lease lapsed, not before
    assert not w2.renew(106.5)
    assert w2.renew(106.6)
    steps["w2"]()
    assert ran[-1] == "w2"


def test_a_clean_stop_releases_the_duties_at_once() -> None:
    store = MemoryJobStore()
    a1, w2 = InstanceDuties(store, "a1", TTL), InstanceDuties(store, "w2", TTL)
    assert a1.renew(100.0)
    a1.release()
    assert w2.renew(100.1)
