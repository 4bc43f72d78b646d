"""Claims at dispatch (worker/dispatch.py): the main process claims a delivery's attempt before handing it to the
pool, at most `window` at a time, and a forged claim in a message never reaches a task process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvern.constants import ORIGINAL_RUN_ATTR
from kvern.jobs.batch import ClaimAttempt, WorkerOp
from kvern.worker.dispatch import CLAIM_FIELD, ClaimingDispatch, DispatchClaims, claim_window, claiming_request

WORKER = "noop-0@host"


class _Task:
    def __init__(self, guarded: bool) -> None:
        if guarded:
            setattr(self, ORIGINAL_RUN_ATTR, lambda: None)


class _Request:
    """What the dispatch touches of a Celery request: its id, task and request dict."""

    def __init__(self, job_id: str, guarded: bool = True, headers: dict[str, Any] | None = None) -> None:
        self.id = job_id
        self.task = _Task(guarded)
        self.request_dict: dict[str, Any] = dict(headers or {})


class _Writer:
    """Holds each op and its reply until the test commits it."""

    def __init__(self) -> None:
        self.held: list[tuple[WorkerOp, Callable[[Any], None]]] = []

    def submit(self, op: WorkerOp, reply: Callable[[Any], None]) -> None:
        self.held.append((op, reply))

    def commit(self, answer: Any = None) -> None:
        held, self.held = self.held, []
        for op, reply in held:
            reply(answer if answer is not None else {"answer": {"run": True, "attempt": 1, "tracked": True}})
            assert isinstance(op, ClaimAttempt)


class _Loop:
    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.calls.append((callback, args))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for callback, args in calls:
            callback(*args)


def _dispatch(window: int) -> tuple[ClaimingDispatch, _Writer, _Loop, list[Any]]:
    writer, loop = _Writer(), _Loop()
    handed: list[Any] = []
    return ClaimingDispatch(handed.append, writer, loop, WORKER, window), writer, loop, handed


def test_a_delivery_reaches_the_pool_only_once_its_claim_committed_and_carries_it() -> None:
    dispatch, writer, loop, handed = _dispatch(window=2)

    dispatch(_Request("job-1"))
    assert [op for op, _ in writer.held] == [ClaimAttempt("job-1", WORKER)]
    assert handed == []

    writer.commit()
    assert handed == []  # the writer's thread only schedules the hand-over on the event loop
    loop.run()
    assert [r.id for r in handed] == ["job-1"]
    assert handed[0].request_dict[CLAIM_FIELD] == {"answer": {"run": True, "attempt": 1, "tracked": True}}


def test_deliveries_beyond_the_window_wait_unclaimed_until_one_is_acked() -> None:
    # given a window of 2 and 5 deliveries prefetched
    dispatch, writer, loop, _ = _dispatch(window=2)
    for index in range(5):
        dispatch(_Request(f"job-{index}"))

    # then only 2 are claimed
    assert [op.job_id for op, _ in writer.held] == ["job-0", "job-1"]
    writer.commit()
    loop.run()

    # and when one is acked, the next is claimed: never more than the window
    dispatch.release()
    assert [op.job_id for op, _ in writer.held] == ["job-2"]
    dispatch.release()
    dispatch.release()
    assert [op.job_id for op, _ in writer.held] == ["job-2", "job-3", "job-4"]


def test_a_task_outside_the_catalog_is_handed_over_without_a_claim() -> None:
    dispatch, writer, _, handed = _dispatch(window=1)

    dispatch(_Request("celery-internal", guarded=False))

    assert writer.held == []
    assert [r.id for r in handed] == ["celery-internal"]


def test_a_claim_a_message_carried_is_replaced_by_the_main_processs_own() -> None:
    dispatch, writer, loop, handed = _dispatch(window=1)
    forged = {"answer": {"run": True, "attempt": 99, "tracked": False}}

    dispatch(_Request("job-1", headers={CLAIM_FIELD: forged}))
    writer.commit({"error": "unavailable", "message": "job store unavailable"})
    loop.run()

    assert handed[0].request_dict[CLAIM_FIELD] == {"error": "unavailable", "message": "job store unavailable"}


def test_a_delivery_the_pool_refuses_frees_its_place() -> None:
    writer, loop = _Writer(), _Loop()

    def refuse(_: Any) -> None:
        raise RuntimeError("pool closed")

    dispatch = ClaimingDispatch(refuse, writer, loop, WORKER, window=1)
    dispatch(_Request("job-1"))
    dispatch(_Request("job-2"))
    writer.commit()
    loop.run()

    assert [op.job_id for op, _ in writer.held] == ["job-2"]


def test_an_ack_or_a_reject_releases_the_claim_once() -> None:
    released: list[str] = []

    class _Base:
        def acknowledge(self) -> None:
            released.append("ack")

        def reject(self, requeue: bool = False) -> None:
            released.append(f"reject {requeue}")

    class _Dispatch:
        def release(self) -> None:
            released.append("release")

    request = claiming_request(_Base)()
    request.kvern_dispatch = _Dispatch()
    request.acknowledge()
    request.reject(requeue=True)

    assert released == ["ack", "release", "reject True"]


def test_the_window_is_the_running_slots_and_one_claimed_ahead_per_slot() -> None:
    assert claim_window(concurrency=4, prefetch=1) == 4
    assert claim_window(concurrency=4, prefetch=8) == 8
    assert claim_window(concurrency=1, prefetch=4) == 2


def test_install_wraps_the_consumers_dispatch_once() -> None:
    class _Consumer:
        hub = _Loop()

        def on_task_request(self, request: Any) -> None: ...

    consumer = _Consumer()
    claims = DispatchClaims(_Writer(), WORKER, 2)
    claims.install(consumer)
    wrapped = consumer.on_task_request
    claims.install(consumer)

    assert isinstance(wrapped, ClaimingDispatch)
    assert consumer.on_task_request is wrapped
