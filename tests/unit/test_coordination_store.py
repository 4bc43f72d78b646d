"""The job store's coordination contract (leases, pool decisions, pool heartbeats) on SQLite, PostgreSQL and in
memory. Times are given by the test (a fake clock), as the controller gives its tick's time."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from kvern.jobs.base import JobStoreProtocol
from kvern.jobs.records import PoolDecision
from kvern.jobs.store import JobStore

TTL = 5.0
LEASE = "pool:reports"


def decision(leader: str, processes: int, at: float) -> PoolDecision:
    return PoolDecision("reports", processes, f"{leader} wants {processes}", leader, at)


# -- leases ------------------------------------------------------------------------------------------------------


def test_a_free_lease_goes_to_the_first_holder_and_is_refused_to_another_until_it_expires(
    job_store: JobStoreProtocol,
) -> None:
    # given w1 took the free lease at t=100
    assert job_store.hold_lease(LEASE, "w1", now=100.0, ttl_s=TTL)

    # then w2 is refused while it lasts (up to and including its expiry)
    assert not job_store.hold_lease(LEASE, "w2", now=102.0, ttl_s=TTL)
    assert not job_store.hold_lease(LEASE, "w2", now=105.0, ttl_s=TTL)
    assert job_store.lease_holder(LEASE, now=105.0) == "w1"
    # and takes it once w1 stopped renewing and it expired
    assert job_store.hold_lease(LEASE, "w2", now=105.5, ttl_s=TTL)
    assert job_store.lease_holder(LEASE, now=105.5) == "w2"
    assert not job_store.hold_lease(LEASE, "w1", now=106.0, ttl_s=TTL)


def test_renewing_a_lease_every_tick_keeps_it_past_its_first_ttl(job_store: JobStoreProtocol) -> None:
    # given w1 holds the lease and renews it every 0.5 s
    for tick in range(30):
        assert job_store.hold_lease(LEASE, "w1", now=100.0 + tick * 0.5, ttl_s=TTL)

    # then at t=114.5, long past the first TTL, w2 is still refused and w1 holds it until 119.5
    assert not job_store.hold_lease(LEASE, "w2", now=114.6, ttl_s=TTL)
    assert job_store.lease_holder(LEASE, now=119.5) == "w1"
    assert job_store.lease_holder(LEASE, now=119.6) is None


def test_released_lease_is_free_at_once_and_only_its_holder_releases_it(job_store: JobStoreProtocol) -> None:
    # given w1 holds the lease
    assert job_store.hold_lease(LEASE, "w1", now=100.0, ttl_s=TTL)

    # when w2 releases it (it does not hold it), nothing changes; when w1 releases it, w2 takes it at once
    job_store.release_lease(LEASE, "w2")
    assert job_store.lease_holder(LEASE, now=101.0) == "w1"
    job_store.release_lease(LEASE, "w1")
    assert job_store.lease_holder(LEASE, now=101.0) is None
    assert job_store.hold_lease(LEASE, "w2", now=101.0, ttl_s=TTL)


def test_leases_of_different_names_are_independent(job_store: JobStoreProtocol) -> None:
    assert job_store.hold_lease("pool:reports", "w1", now=100.0, ttl_s=TTL)
    assert job_store.hold_lease("pool:thumbs", "w2", now=100.0, ttl_s=TTL)
    assert job_store.lease_holder("pool:reports", now=100.0) == "w1"
    assert job_store.lease_holder("pool:thumbs", now=100.0) == "w2"


def test_of_many_hosts_racing_for_a_free_lease_exactly_one_holds_it(job_store: JobStoreProtocol) -> None:
    # given eight hosts that ask for the same free lease at the same moment, again and again
    hosts = [f"w{i}" for i in range(8)]
    start = threading.Barrier(len(hosts))

    def race(host: str) -> list[bool]:
        start.wait()
        return [job_store.hold_lease(LEASE, host, now=100.0 + round_ * 0.1, ttl_s=TTL) for round_ in range(5)]

    with ThreadPoolExecutor(len(hosts)) as pool:
        held = dict(zip(hosts, pool.map(race, hosts), strict=True))

    # then one host held it every round and no other ever did
    winners = [host for host, rounds in held.items() if any(rounds)]
    assert len(winners) == 1, held
    assert all(held[winners[0]])
    assert job_store.lease_holder(LEASE, now=100.5) == winners[0]


# -- pool decisions, fenced by the pool's lease -------------------------------------------------------------------


def test_only_the_lease_holder_records_the_pool_decision(job_store: JobStoreProtocol) -> None:
    # given w1 holds the pool's lease
    assert job_store.hold_lease(LEASE, "w1", now=100.0, ttl_s=TTL)

    # when w1 and then w2 (which does not hold it) each record a decision
    assert job_store.record_pool_decision(decision("w1", 4, 100.0), LEASE, now=100.0)
    assert not job_store.record_pool_decision(decision("w2", 1, 101.0), LEASE, now=101.0)

    # then w1's stands
    assert job_store.pool_decision("reports") == decision("w1", 4, 100.0)
    assert job_store.pool_decision("thumbs") is None


def test_a_leader_whose_lease_expired_can_no_longer_record_a_decision(job_store: JobStoreProtocol) -> None:
    # given w1 led and decided, then stopped renewing (it paused, or was cut off) and w2 took the lease over
    assert job_store.hold_lease(LEASE, "w1", now=100.0, ttl_s=TTL)
    assert job_store.record_pool_decision(decision("w1", 4, 100.0), LEASE, now=100.0)
    assert not job_store.record_pool_decision(decision("w1", 6, 106.0), LEASE, now=106.0)
    assert job_store.hold_lease(LEASE, "w2", now=106.0, ttl_s=TTL)

    # when w2 decides, and w1 wakes up and tries to write what it decided on its old lease
    assert job_store.record_pool_decision(decision("w2", 2, 106.0), LEASE, now=106.0)
    assert not job_store.record_pool_decision(decision("w1", 8, 106.1), LEASE, now=106.1)

    # then the pool's decision is w2's
    assert job_store.pool_decision("reports") == decision("w2", 2, 106.0)


# -- heartbeats of the hosts serving a pool ----------------------------------------------------------------------


def test_live_pool_hosts_are_those_whose_heartbeat_has_not_expired_in_name_order(job_store: JobStoreProtocol) -> None:
    # given three hosts beat for reports, w3 first and w1 last; w2 stops beating after t=100
    job_store.beat_pool_host("reports", "w3", 2, now=100.0, ttl_s=TTL)
    job_store.beat_pool_host("reports", "w2", 1, now=100.0, ttl_s=TTL)
    job_store.beat_pool_host("reports", "w1", 2, now=100.0, ttl_s=TTL)
    job_store.beat_pool_host("thumbs", "w1", 1, now=100.0, ttl_s=TTL)
    job_store.beat_pool_host("reports", "w1", 3, now=104.0, ttl_s=TTL)
    job_store.beat_pool_host("reports", "w3", 2, now=104.0, ttl_s=TTL)

    # then at t=104 all three serve it (w1's latest count), at t=106 w2 has dropped out
    assert [(h.host, h.processes) for h in job_store.live_pool_hosts("reports", now=104.0)] == [
        ("w1", 3),
        ("w2", 1),
        ("w3", 2),
    ]
    assert [h.host for h in job_store.live_pool_hosts("reports", now=106.0)] == ["w1", "w3"]
    assert [h.host for h in job_store.live_pool_hosts("thumbs", now=104.0)] == ["w1"]


def test_a_host_leaving_a_pool_drops_out_at_once(job_store: JobStoreProtocol) -> None:
    job_store.beat_pool_host("reports", "w1", 2, now=100.0, ttl_s=TTL)
    job_store.beat_pool_host("reports", "w2", 2, now=100.0, ttl_s=TTL)
    job_store.leave_pool("reports", "w2")
    assert [h.host for h in job_store.live_pool_hosts("reports", now=100.0)] == ["w1"]


def test_an_existing_store_gets_the_coordination_tables(sql_job_store: JobStore) -> None:
    # given a store made before the coordination tables existed
    with sql_job_store.engine.begin() as conn:
        for table in ("kvern_leases", "kvern_pool_decisions", "kvern_pool_hosts"):
            conn.exec_driver_sql(f"DROP TABLE {table}")

    # when kvern starts on it again, the tables are made and work
    sql_job_store.create_schema()
    assert sql_job_store.hold_lease(LEASE, "w1", now=100.0, ttl_s=TTL)
