"""The stream consumer against the local OHIP gateway (real WebSocket) and moto (real HTTP).

Each test proves one delivery guarantee of design.md or one protocol rule of ohip-api.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import pytest

from ohip_relay.backoff import CONFLICT_LOCKOUT, FORBIDDEN_RETRY, CloseKind
from ohip_relay.state import StreamState

from .conftest import FAST, Rig, eventually

pytestmark = pytest.mark.integration


async def test_events_reach_sqs_in_order_per_resource(rig: Rig) -> None:
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        rig.gateway.emit(80)
        offsets = await rig.receive_offsets(set(rig.emitted_offsets()))
        assert await running.stop() == 0
    assert sorted(offsets) == rig.emitted_offsets(), "each event exactly once"
    by_resource: dict[tuple[str, str], list[int]] = defaultdict(list)
    for body in rig.received:
        by_resource[(body["hotelId"], body["primaryKey"])].append(int(body["offset"]))
    assert any(len(v) > 1 for v in by_resource.values()), "the generator should touch a resource twice"
    for resource, seen in by_resource.items():
        assert seen == sorted(seen), f"{resource} out of order: {seen}"


async def test_first_replayed_event_is_not_published_twice_after_a_drop(rig: Rig) -> None:
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        rig.gateway.emit(20)
        await rig.receive_offsets(set(rig.emitted_offsets()))
        await eventually(
            lambda: running.consumer.checkpointed == rig.emitted_offsets()[-1], what="checkpoint"
        )
        connections = running.consumer.connections
        await rig.gateway.streaming.drop_all()
        rig.gateway.emit(30)  # emitted while the relay may be disconnected
        await rig.receive_offsets(set(rig.emitted_offsets()))
        assert running.consumer.connections > connections, "it reconnected"
        await asyncio.sleep(0)  # let late duplicates, if any, reach the queue before the final drain
        assert await running.stop() == 0
    await rig.drain_queue()
    assert sorted(rig.offsets()) == rig.emitted_offsets(), "every missed event once, nothing twice"


async def test_sigterm_completes_drains_and_checkpoints_the_last_acknowledged_offset(rig: Rig) -> None:
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        rig.gateway.emit(40)
        await rig.receive_offsets(set(rig.emitted_offsets()))
        assert await running.stop() == 0
    checkpoint = rig.state.get_checkpoint()
    assert checkpoint is not None
    assert checkpoint.offset == rig.emitted_offsets()[-1]
    # The documented attributes (docs/event-format.md), with their documented types.
    for attributes, body in zip(rig.attributes, rig.received, strict=True):
        assert attributes["schemaVersion"] == ("Number", "1")
        assert attributes["source"] == ("String", "stream")
        assert attributes["eventName"] == ("String", body["eventName"])
        assert attributes["moduleName"] == ("String", body["moduleName"])
    heartbeat = rig.state.get_heartbeat()
    assert heartbeat is not None
    assert heartbeat.state is StreamState.STOPPED
    assert rig.state.get_lease() is None or not rig.state.get_lease().is_held(heartbeat.updated_at)
    closes = rig.gateway.streaming.snapshot()["close_codes"]
    assert closes.get("1000", closes.get(1000)) == 1, f"the server closed after complete: {closes}"


async def test_restart_resumes_from_the_checkpoint(rig: Rig) -> None:
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        rig.gateway.emit(10)
        await rig.receive_offsets(set(rig.emitted_offsets()))
        assert await running.stop() == 0
    rig.gateway.emit(15)  # while no relay runs
    async with rig.consumer() as running:
        await rig.receive_offsets(set(rig.emitted_offsets()))
        assert await running.stop() == 0
    await rig.drain_queue()
    assert sorted(rig.offsets()) == rig.emitted_offsets()


async def test_token_expiry_mid_stream_loses_nothing(rig: Rig) -> None:
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        rig.gateway.emit(20)
        issued = rig.gateway.tokens.issued
        rig.gateway.tokens.expire_all()
        assert await rig.gateway.streaming.close_expired() == 1
        rig.gateway.emit(20)
        await rig.receive_offsets(set(rig.emitted_offsets()))
        outcome = running.consumer.last_outcome
        assert outcome is not None
        assert outcome.code == 4401
        assert outcome.kind is CloseKind.RENEW_TOKEN
        assert rig.gateway.tokens.issued > issued, "a new token was fetched"
        assert await running.stop() == 0
    await rig.drain_queue()
    assert sorted(rig.offsets()) == rig.emitted_offsets()


async def test_4409_waits_out_the_lockout(rig: Rig) -> None:
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        await rig.gateway.streaming.close_all(4409, "another client is connected")
        await eventually(lambda: running.consumer.next_delay is not None, what="a reconnect decision")
        assert running.consumer.last_outcome is not None
        assert running.consumer.last_outcome.kind is CloseKind.CONFLICT
        assert running.consumer.next_delay is not None
        assert running.consumer.next_delay >= CONFLICT_LOCKOUT
        assert running.consumer.status is StreamState.BACKOFF
        assert await running.stop() == 0


async def test_4403_is_reported_and_retried_only_slowly(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ohip_relay")
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        await rig.gateway.streaming.close_all(4403, "forbidden")
        await eventually(lambda: running.consumer.next_delay is not None, what="a reconnect decision")
        assert running.consumer.last_outcome is not None
        assert running.consumer.last_outcome.alarm
        assert running.consumer.next_delay is not None
        assert running.consumer.next_delay >= FORBIDDEN_RETRY
        heartbeat_detail = running.consumer._detail()
        assert heartbeat_detail is not None
        assert "4403" in heartbeat_detail
        assert await running.stop() == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "4403" in r.getMessage()]
    assert errors, "a 4403 is logged as an error (it needs a human)"
    assert running.consumer.connections == 1, "no hot loop"


async def test_a_second_consumer_stands_by_while_the_first_holds_the_lease(rig: Rig) -> None:
    async with rig.consumer(owner="task-a") as first:
        await eventually(lambda: first.consumer.status is StreamState.CONNECTED, what="first connected")
        async with rig.consumer(owner="task-b") as second:
            await eventually(lambda: second.consumer.status is StreamState.STANDBY, what="second on standby")
            rig.gateway.emit(10)
            await rig.receive_offsets(set(rig.emitted_offsets()))
            assert second.consumer.connections == 0
            assert await first.stop() == 0  # releases the lease
            await eventually(lambda: second.consumer.status is StreamState.CONNECTED, what="takeover")
            rig.gateway.emit(10)
            await rig.receive_offsets(set(rig.emitted_offsets()))
            assert await second.stop() == 0
    assert rig.gateway.streaming.snapshot()["conflicts"] == 0, "never two connections at once"
    await rig.drain_queue()
    assert sorted(rig.offsets()) == rig.emitted_offsets()


async def test_answers_server_pings_and_pings_on_its_own(make_rig, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    options = FAST.__class__(**{**FAST.__dict__, "ping_interval": 0.1, "liveness_timeout": 2.0})
    async with make_rig(server_ping_interval=0.1, pong_timeout=0.5) as rig, rig.consumer(options) as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        await eventually(
            lambda: (
                rig.gateway.streaming.snapshot()["pongs_received"] >= 3
                and rig.gateway.streaming.snapshot()["pongs_sent"] >= 3
            ),
            what="pings both ways",
        )
        assert running.consumer.connections == 1, "no 4504: every server ping was answered in time"
        assert await running.stop() == 0


async def test_next_frames_keep_the_connection_alive_while_pongs_are_deferred(
    make_rig, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    # A pong is deferred only when a ping reaches the server while it is still writing a burst, a
    # window of milliseconds: ping often, and burst again (up to a deadline) until one was deferred.
    options = FAST.__class__(**{**FAST.__dict__, "ping_interval": 0.005, "liveness_timeout": 1.0})
    async with make_rig() as rig, rig.consumer(options) as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        for _ in range(10):
            rig.gateway.streaming.start_backpressure(100)
            delivered = len(rig.emitted_offsets())
            await eventually(
                lambda n=delivered: rig.gateway.streaming.snapshot()["events_delivered"] >= n,
                what="the burst sent",
            )
            if rig.gateway.streaming.snapshot()["deferred_pongs"] >= 1:
                break
        assert rig.gateway.streaming.snapshot()["deferred_pongs"] >= 1, "no pong deferred in 10 bursts"
        await rig.receive_offsets(set(rig.emitted_offsets()), within=60)
        assert running.consumer.connections == 1
        assert await running.stop() == 0


async def test_no_log_line_carries_personal_data(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    # Everything the relay logs, at every level (the CLI keeps botocore, which logs request
    # bodies at DEBUG, at WARNING).
    caplog.set_level(logging.DEBUG, logger="ohip_relay")
    async with rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        rig.gateway.emit(50)
        await rig.gateway.streaming.drop_all()
        rig.gateway.emit(10)
        await rig.receive_offsets(set(rig.emitted_offsets()))
        assert await running.stop() == 0
    personal = set().union(*(e.personal_values() for e in rig.gateway.source.all_events(rig.chain)))
    assert personal, "the generator must produce personal data for this test to mean anything"
    text = "\n".join(caplog.text.splitlines())
    leaked = sorted(v for v in personal if v in text)
    assert not leaked, f"{len(leaked)} personal values in the log"


async def test_replayed_events_the_fallback_already_published_are_suppressed(rig: Rig) -> None:
    from datetime import UTC, datetime, timedelta

    import boto3

    from ohip_local.poll import business_event_data
    from ohip_relay.events import from_poll
    from ohip_relay.seen import SeenSet

    events = rig.gateway.emit(20)
    # The poll fallback published the first eight during an outage: their keys are in the seen-set
    # and its mark covers them.
    polled = [from_poll(business_event_data(e), rig.chain, datetime.now(UTC)) for e in events[:8]]
    seen = SeenSet(
        boto3.client("dynamodb", endpoint_url=rig.stack.endpoint_url, region_name=rig.stack.region),
        rig.stack.table_name,
    )
    seen.record((p.event_key, p.event_id) for p in polled)
    assert rig.state.advance_fallback_mark(max(p.occurred_at for p in polled) + timedelta(seconds=0))
    async with rig.consumer() as running:
        await rig.receive_offsets({e.offset for e in events[8:]})
        await eventually(lambda: running.consumer.checkpointed == events[-1].offset, what="checkpoint")
        assert await running.stop() == 0
    await rig.drain_queue()
    assert sorted(rig.offsets()) == [e.offset for e in events[8:]], "the eight polled ones were suppressed"
