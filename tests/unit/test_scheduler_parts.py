"""The pieces a fleet task shares between its chain sessions: the publisher's per-session view and
its router, the metrics view, and the log context. A fake stands in for the shared SqsPublisher."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from ohip_relay import logcontext
from ohip_relay.balance import BalanceConfig
from ohip_relay.publish import OutboundMessage, PublisherStats, PublishFailure, SqsPublisher
from ohip_relay.scheduler import ChainTelemetry, PublisherRouter, SchedulerOptions, new_worker_id
from ohip_relay.stream import wait_within
from ohip_relay.telemetry import Metric, Telemetry


class FakeShared:
    """Buffers what is submitted; `ack`/`fail` play SQS's answers through the router's callbacks."""

    def __init__(self, router: PublisherRouter, *, room: bool = True) -> None:
        self.router = router
        self.submitted: list[OutboundMessage] = []
        self.room = room
        self.gate = asyncio.Event()
        self.gate.set()

    @property
    def has_room(self) -> bool:
        return self.room

    @property
    def stats(self) -> PublisherStats:
        return cast(PublisherStats, None)

    async def submit(self, message: OutboundMessage) -> None:
        await self.gate.wait()
        self.submitted.append(message)

    def ack(self, index: int) -> None:
        self.router.on_ack(self.submitted[index].ack_token)

    def fail(self, index: int) -> None:
        token = self.submitted[index].ack_token
        self.router.on_failure(
            PublishFailure(
                ack_token=token,
                code="InvalidMessageContents",
                reason="x",
                body="b",
                dedup_id="d",
                group_id="g",
                attempts=1,
            )
        )


def message(offset: int) -> OutboundMessage:
    return OutboundMessage(body="{}", attributes={}, group_id="g", dedup_id=f"d{offset}", ack_token=offset)


async def test_acknowledgements_go_to_the_session_that_submitted_and_flush_waits_for_its_own_only() -> None:
    router = PublisherRouter()
    shared = FakeShared(router)
    one, two = router.new(cast(SqsPublisher, shared)), router.new(cast(SqsPublisher, shared))
    acked: dict[str, list[Any]] = {"one": [], "two": []}
    one.on_ack = acked["one"].append
    two.on_ack = acked["two"].append
    await one.submit(message(7))
    await two.submit(message(7))  # the same offset in another chain: a different route
    assert (one.buffered, two.buffered) == (1, 1)
    shared.ack(1)
    assert acked == {"one": [], "two": [7]}
    assert two.buffered == 0
    await asyncio.wait_for(two.flush(), 1)  # two's own message is settled: no wait for one's
    flushing = asyncio.ensure_future(one.flush())
    await asyncio.sleep(0)
    assert not flushing.done()
    shared.ack(0)
    await asyncio.wait_for(flushing, 1)
    assert acked["one"] == [7]


async def test_a_failure_reaches_its_session_with_the_offset_alone() -> None:
    router = PublisherRouter()
    shared = FakeShared(router)
    one = router.new(cast(SqsPublisher, shared))
    failures: list[PublishFailure] = []
    one.on_failure = failures.append
    await one.submit(message(3))
    shared.fail(0)
    assert [f.ack_token for f in failures] == [3]
    assert one.buffered == 0


async def test_answers_for_an_ended_session_are_dropped_and_a_cancelled_submit_is_not_counted() -> None:
    router = PublisherRouter()
    shared = FakeShared(router)
    one = router.new(cast(SqsPublisher, shared))
    await one.submit(message(1))
    router.drop(one)
    shared.ack(0)  # no error, no callback
    shared.gate.clear()  # the shared publisher is full: submit waits
    two = router.new(cast(SqsPublisher, shared))
    waiting = asyncio.ensure_future(two.submit(message(2)))
    await asyncio.sleep(0)
    assert two.buffered == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert two.buffered == 0
    await asyncio.wait_for(two.flush(), 1)


def test_a_sessions_metrics_are_the_tasks_counts_without_its_gauges() -> None:
    shared = Telemetry(service="stream", emit=False)
    one, two = ChainTelemetry(shared), ChainTelemetry(shared)
    one.count(Metric.EVENTS_RECEIVED, 2)
    two.count(Metric.EVENTS_RECEIVED)
    one.gauge(Metric.STREAM_LAG, 5.0)
    one.flush()  # a session never flushes the task's metrics
    assert shared.totals() == {"EventsReceived": 3.0}
    assert shared._gauges == {}


def test_log_lines_of_a_session_name_its_subscription() -> None:
    record = logging.LogRecord("ohip_relay.stream", logging.INFO, __file__, 1, "connected", None, None)
    outside = logging.LogRecord("ohip_relay.stream", logging.INFO, __file__, 1, "connected", None, None)

    async def in_session() -> None:
        logcontext.set_subscription("one-CHAINA")
        logcontext.SubscriptionFilter(prefix=True).filter(record)

    asyncio.run(in_session())
    logcontext.SubscriptionFilter(prefix=True).filter(outside)  # the task's context did not leak
    assert record.getMessage() == "[one-CHAINA] connected"
    assert getattr(record, "subscription", None) == "one-CHAINA"
    assert outside.getMessage() == "connected"
    assert not hasattr(outside, "subscription")


def test_scheduler_options_keep_the_lease_rules() -> None:
    with pytest.raises(ValueError, match="renew_interval"):
        SchedulerOptions(lease_seconds=10, renew_interval=5, balance=BalanceConfig(lease_seconds=10))
    with pytest.raises(ValueError, match=r"balance\.lease_seconds"):
        SchedulerOptions(lease_seconds=30, balance=BalanceConfig(lease_seconds=20))


def test_worker_ids_are_never_reused_and_have_no_hash() -> None:
    ids = {new_worker_id() for _ in range(50)}
    assert len(ids) == 50
    assert all("#" not in worker for worker in ids)


async def test_a_cancel_that_lands_as_the_future_completes_is_not_lost() -> None:
    """`wait_within` (the renewals' wait): the future completes and the waiter is cancelled in the
    same loop turn, as at a shutdown. The cancel must reach the waiter (3.11's `wait_for` returned
    the result instead, and the cancelled renewal loop ran on: fleet chaos seed 5150)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    waiter = asyncio.ensure_future(wait_within(future, 10.0))
    await asyncio.sleep(0)
    future.set_result(1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert future.result() == 1  # the future itself is left alone


async def test_wait_within_gives_the_result_or_times_out_leaving_the_future_running() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    done.set_result(7)
    assert await wait_within(done, 1.0) == 7
    pending: asyncio.Future[int] = loop.create_future()
    with pytest.raises(TimeoutError):
        await wait_within(pending, 0.01)
    assert not pending.done()
