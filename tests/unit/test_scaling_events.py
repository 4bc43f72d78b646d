"""`ScalingEventLog` contract, run against SQLite and PostgreSQL (the table lives next to the jobs)."""

from __future__ import annotations

import pytest

from kvern.jobs.records import ScalingEvent
from kvern.jobs.scaling_events import ScalingEventLog
from kvern.jobs.store import JobStore


@pytest.fixture(params=["sqlite_store", "postgres_store"])
def scaling_event_log(request: pytest.FixtureRequest) -> ScalingEventLog:
    store: JobStore = request.getfixturevalue(request.param)
    return ScalingEventLog(store.engine)


def test_scaling_events_round_trip_newest_first_per_pool(scaling_event_log: ScalingEventLog) -> None:
    # given scaling events of two pools
    events = [
        ScalingEvent(at=100.0, pool="reports", from_processes=0, to_processes=2, reason="backlog 9"),
        ScalingEvent(at=101.5, pool="mail", from_processes=0, to_processes=1, reason="oldest waited 6s"),
        ScalingEvent(at=130.25, pool="reports", from_processes=2, to_processes=0, reason="idle 30s"),
    ]
    for event in events:
        scaling_event_log.record(event)

    # when read back
    # then they come back intact, newest first, filtered by pool and limited
    assert scaling_event_log.latest() == [events[2], events[1], events[0]]
    assert scaling_event_log.latest(pool="reports") == [events[2], events[0]]
    assert scaling_event_log.latest(pool="reports", limit=1) == [events[2]]
    assert scaling_event_log.latest(pool="nothing") == []
