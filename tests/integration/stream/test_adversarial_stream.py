"""The stream consumer on data the protocol allows and our generator never made (issue 16).

Each test names the finding it proves; each failed on the code before the identity model: events
were identified by a content hash, offset 0 was "nothing", a lone surrogate crashed the publisher,
offsets were limited to 10 digits, uniqueEventId was required, the lease did not close a socket
blocked on a full publisher, offsets going backwards were skipped as duplicates, and a crash wrote
the heartbeat of a planned stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import boto3
import pytest

from ohip_local.faultproxy import FaultRule, running_fault_proxy
from ohip_relay.health import HealthThresholds, judge_stream
from ohip_relay.state import LEASE_PREFIX, StreamState
from ohip_relay.stream import StreamOptions

from .conftest import FAST, Rig, eventually

pytestmark = pytest.mark.integration


def _ids(rig: Rig) -> set[str]:
    return {str(body["eventId"]) for body in rig.received}


async def test_lookalike_events_all_reach_the_queue(rig: Rig) -> None:
    # Finding 1: the same change twice within a second (VIP set, cleared, set again), one change on
    # two rows, changes with no changed element, `R&amp;D` and `R&D`: equal content keys. With the
    # key as FIFO deduplication id SQS dropped every repeat and answered success.
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        emitted = rig.gateway.emit(24, adversarial="lookalike")
        await rig.receive_offsets({e.offset for e in emitted})
        assert await running.stop() == 0
    await rig.drain_queue()
    keys = [body["eventKey"] for body in rig.received]
    assert len(set(keys)) < len(emitted), "the generator should have made lookalikes"
    assert sorted(rig.offsets()) == [e.offset for e in emitted]
    assert len(_ids(rig)) == len(emitted), "one distinct eventId per event"


async def test_a_log_that_starts_at_offset_zero(make_rig: Any) -> None:
    # Finding 2: the first event at offset 0 anchored the watermark at 0 and track(0) raised; on a
    # restart offset 0 counted as already handled.
    async with make_rig(first_offset=0) as rig, rig.consumer() as running:
        emitted = rig.gateway.emit(3)
        assert [e.offset for e in emitted] == [0, 1, 2]
        await rig.receive_offsets({0, 1, 2})
        await eventually(lambda: running.consumer.checkpointed == 2, what="checkpoint 2")
        assert await running.stop() == 0


async def test_a_restart_before_offset_zero_was_acknowledged_replays_it(make_rig: Any) -> None:
    # Finding 2, the restart: what a crash right after the first event leaves is the anchor, -1
    # ("read from 0, nothing handled"), and the next start delivers offset 0.
    async with make_rig(first_offset=0) as rig:
        rig.gateway.emit(2)
        assert rig.state.advance_checkpoint(-1, "crashed-task")
        async with rig.consumer(RELAY_START_POSITION="latest") as running:
            await rig.receive_offsets({0, 1})
            await eventually(lambda: running.consumer.checkpointed == 1, what="checkpoint 1")
            assert await running.stop() == 0
        await rig.drain_queue()
        assert sorted(rig.offsets()) == [0, 1]


async def test_twenty_digit_offsets_are_checkpointed_and_resumed(make_rig: Any) -> None:
    # Finding 4: offsets over 10 digits were accepted, then every subscribe from the stored
    # checkpoint raised: a crash loop.
    start = 10**20 - 10
    async with make_rig(first_offset=start) as rig:
        for _ in range(2):  # the second start subscribes from a 20-digit checkpoint
            async with rig.consumer() as running:
                emitted = rig.gateway.emit(3)
                await rig.receive_offsets({e.offset for e in emitted})
                await eventually(
                    lambda: running.consumer.checkpointed == emitted[-1].offset,  # noqa: B023
                    what="checkpoint",
                )
                assert await running.stop() == 0
        await rig.drain_queue()
        assert sorted(rig.offsets()) == list(range(start, start + 6))
        assert all(len(body["offset"]) == 20 for body in rig.received)


async def test_odd_unicode_is_published_not_fatal(rig: Rig) -> None:
    # Finding 3: a lone UTF-16 surrogate ("H\ud83d") passed the decoder, then UnicodeEncodeError in
    # the publisher killed the process, and every restart replayed it. Now the body carries the exact
    # value (JSON-escaped); message attributes, where SQS accepts fewer characters, get U+FFFD.
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        emitted = rig.gateway.emit(12, adversarial="unicode")
        emitted += rig.gateway.emit(3, adversarial="unicode:surrogate")
        await rig.receive_offsets({e.offset for e in emitted})
        assert await running.stop() == 0
    surrogate_values = [
        d.new_value
        for e in emitted[-3:]
        for d in e.details
        if d.new_value and _has_lone_surrogate(d.new_value)
    ]
    assert surrogate_values, "the generator should have made lone surrogates"
    published = {d["newValue"] for body in rig.received for d in body["detail"]}
    assert set(surrogate_values) <= published  # exactly as sent, not replaced
    for attributes in rig.attributes:
        for _, value in attributes.values():
            assert not _has_lone_surrogate(value)


def _has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


async def test_missing_optional_fields_are_published(rig: Rig) -> None:
    # Finding 7: an event without uniqueEventId was dropped as malformed.
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        emitted = rig.gateway.emit(16, adversarial="missing")
        emitted += rig.gateway.emit(2, adversarial="missing:unique_event_id")
        await rig.receive_offsets({e.offset for e in emitted})
        assert await running.stop() == 0
    without_id = [body for body in rig.received if body["uniqueEventId"] is None]
    assert without_id
    assert all(body["eventId"] == f"stream:{rig.chain}:{body['offset']}:" for body in without_id)


async def test_an_event_the_format_cannot_carry_is_parked_and_passed(rig: Rig) -> None:
    # "Poison is quarantined": an event the canonical format cannot carry (here an event name that
    # is only spaces) is parked raw under malformed/, and the checkpoint passes it once it is.
    from ohip_local.source import EventDraft

    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        before = rig.gateway.emit(2)
        bad = rig.gateway.source.append(
            rig.chain, EventDraft("HOTEL1", "PROFILE", "   ", "4711", "57489", details=())
        )
        after = rig.gateway.emit(2)
        await rig.receive_offsets({e.offset for e in before + after})
        await eventually(
            lambda: running.consumer.checkpointed == after[-1].offset, what="checkpoint passes it"
        )
        assert running.consumer.parked == 1
        assert await running.stop() == 0
    assert bad.offset not in rig.offsets()
    parked = _parked(rig)
    assert len(parked) == 1
    assert parked[0]["offset"] == str(bad.offset)
    assert "eventName" in parked[0]["reason"]
    assert json.loads(parked[0]["frame"])["payload"]["data"]["newEvent"]["metadata"]["offset"] == str(
        bad.offset
    )


async def test_events_sqs_refuses_for_their_content_are_parked_not_fatal(rig: Rig) -> None:
    # SQS refusing a message for its content (InvalidMessageContents) stopped the relay (exit 1),
    # and every restart replayed the same event: a crash loop. Now it is parked and passed.
    with running_fault_proxy(rig.stack.endpoint_url) as proxy:
        async with rig.consumer(AWS_ENDPOINT_URL=proxy.url) as running:
            await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
            rule = proxy.add(FaultRule("sqs", error="refuse", operation="SendMessageBatch", count=1))
            refused = rig.gateway.emit(1)
            await eventually(lambda: running.consumer.parked == 1, what="parked")
            later = rig.gateway.emit(3)
            await rig.receive_offsets({e.offset for e in later})
            await eventually(lambda: running.consumer.checkpointed == later[-1].offset, what="checkpoint")
            assert not running.task.done()
            assert await running.stop() == 0
    assert rule.injected == 1
    assert refused[0].offset not in rig.offsets()
    assert [p["offset"] for p in _parked(rig)] == [str(refused[0].offset)]


def _parked(rig: Rig) -> list[dict[str, Any]]:
    s3 = boto3.client("s3", endpoint_url=rig.stack.endpoint_url, region_name=rig.stack.region)
    listed = s3.list_objects_v2(Bucket=rig.stack.bucket_name, Prefix=f"malformed/{rig.chain}/")
    return [
        json.loads(s3.get_object(Bucket=rig.stack.bucket_name, Key=obj["Key"])["Body"].read())
        for obj in listed.get("Contents", [])
    ]


async def test_losing_the_lease_closes_a_socket_blocked_on_a_full_publisher(rig: Rig) -> None:
    # Finding 8: with SQS down the publisher fills up and the consumer waits in submit(); a lease
    # lost meanwhile left the socket open, and a successor could connect: two connections.
    options = StreamOptions(**{**FAST.__dict__, "max_in_flight": 3})
    with running_fault_proxy(rig.stack.endpoint_url) as proxy:
        async with rig.consumer(options, AWS_ENDPOINT_URL=proxy.url) as running:
            await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
            proxy.add(FaultRule("sqs", error="unavailable", operation="SendMessageBatch"))
            rig.gateway.emit(10)
            await eventually(lambda: not running.consumer.publisher.has_room, what="a full publisher")
            _steal_lease(rig, "successor-task")
            await eventually(
                lambda: rig.gateway.streaming.snapshot()["live_connections"] == 0,
                within=FAST.lease_renew_interval * 4 + 5,
                what="the socket closed",
            )
            assert running.consumer.status is StreamState.STANDBY or not running.consumer.holding_lease
            proxy.clear()
            assert await running.stop() == 0


def _steal_lease(rig: Rig, owner: str) -> None:
    """Another task holds the lease from now on (as after a lease lapse on a slow renewal)."""
    ddb = boto3.client("dynamodb", endpoint_url=rig.stack.endpoint_url, region_name=rig.stack.region)
    now = time.time()
    ddb.put_item(
        TableName=rig.stack.table_name,
        Item={
            "pk": {"S": f"{LEASE_PREFIX}{rig.chain}"},
            "kind": {"S": "lease"},
            "chain": {"S": rig.chain},
            "owner": {"S": owner},
            "leaseUntil": {"N": f"{now + 60:.3f}"},
            "renewedAt": {"N": f"{now:.3f}"},
            "generation": {"N": "99"},
        },
    )


async def test_offsets_going_backwards_stop_streaming_and_say_so(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # Finding 9: a reset on OHIP's side was skipped as duplicates while the heartbeat said
    # "connected", so the poll fallback stayed off and every new event was lost.
    options = StreamOptions(**{**FAST.__dict__, "regression_retry": 0.5})
    with caplog.at_level(logging.ERROR, logger="ohip_relay.stream"):
        async with rig.consumer(options) as running:
            await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
            first = rig.gateway.emit(5)
            await rig.receive_offsets({e.offset for e in first})
            rig.gateway.source.reset_offset(rig.chain, first[0].offset)
            rig.gateway.emit(2)
            await eventually(lambda: running.consumer.status is StreamState.REGRESSED, what="regressed")
            heartbeat = await _heartbeat_in(rig, StreamState.REGRESSED)
            verdict = judge_stream(heartbeat, time.time(), HealthThresholds())
            assert not verdict.healthy, verdict
            # Once OHIP's offsets pass what was handled, streaming resumes by itself.
            rig.gateway.source.jump_offset(rig.chain, first[-1].offset + 10)
            resumed = rig.gateway.emit(2)
            await rig.receive_offsets({e.offset for e in resumed}, within=30)
            await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected again")
            assert await running.stop() == 0
    assert any("offsets went backwards" in r.getMessage() for r in caplog.records)


async def _heartbeat_in(rig: Rig, state: StreamState) -> Any:
    deadline = time.monotonic() + 10
    while True:
        heartbeat = rig.state.get_heartbeat()
        if heartbeat is not None and heartbeat.state == state:
            return heartbeat
        if time.monotonic() > deadline:
            pytest.fail(f"the heartbeat never said {state}: {heartbeat}")
        await asyncio.sleep(0.05)


async def test_a_crash_writes_failed_which_is_unhealthy_at_once(rig: Rig) -> None:
    # Finding 9, second half: a relay that died on an error wrote "stopped", which the fallback
    # reads as a planned stop within its grace period.
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")

        async def broken(*_: Any) -> None:
            raise RuntimeError("a bug")

        running.consumer._publish = broken  # type: ignore[method-assign]
        rig.gateway.emit(1)
        with pytest.raises(RuntimeError):
            async with asyncio.timeout(15):
                await running.task
    heartbeat = rig.state.get_heartbeat()
    assert heartbeat is not None
    assert heartbeat.state == StreamState.FAILED
    verdict = judge_stream(heartbeat, time.time(), HealthThresholds(grace_seconds=600))
    assert not verdict.healthy
