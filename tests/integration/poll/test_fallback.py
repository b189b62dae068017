"""The poll fallback against the local OHIP gateway (real sockets) and the moto server."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from ohip_local.poll import business_event_data
from ohip_local.source import Detail, EventDraft, StoredEvent
from ohip_local.threaded import call_in_gateway
from ohip_relay.events import from_poll, load_schema
from ohip_relay.fallback import FallbackOptions, spill_stand_in
from ohip_relay.state import StreamState
from ohip_relay.telemetry import Metric

from .conftest import START, Crash, CrashPlan, PollRig, PollTap, Wrapped, client_error, poll_id, stream_id

pytestmark = pytest.mark.integration

SCHEMA = load_schema()
VALIDATOR = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)


def key_of(rig: PollRig, event: StoredEvent) -> str:
    item = business_event_data(event)
    return from_poll(item, rig.chain, datetime.now(UTC)).event_key


def event_id_of(rig: PollRig, event: StoredEvent) -> str:
    return f"poll:{rig.chain}:{event.business_event_id}"


def assert_each_once(rig: PollRig, received: list[dict[str, Any]], emitted: list[StoredEvent]) -> None:
    ids = Counter(body["eventId"] for body in received)
    assert all(n == 1 for n in ids.values()), "a duplicate reached SQS"
    assert set(ids) == {event_id_of(rig, e) for e in emitted}
    keys = {event_id_of(rig, e): key_of(rig, e) for e in emitted}
    for body in received:
        assert body["eventKey"] == keys[body["eventId"]]
        assert body["businessEventId"] == body["eventId"].rsplit(":", 1)[1]
        attributes, group = body.pop("_attributes"), body.pop("_group")
        types = body.pop("_attribute_types")
        VALIDATOR.validate(body)
        assert types == {name: "Number" if name == "schemaVersion" else "String" for name in attributes}
        assert attributes["schemaVersion"] == "1"
        assert body["source"] == "poll"
        assert attributes["source"] == "poll"
        assert attributes["eventName"] == body["eventName"]
        assert group == f"{body['hotelId']}:{body['primaryKey']}"


def test_healthy_stream_backlog_is_drained_and_discarded(rig: PollRig) -> None:
    rig.heartbeat(StreamState.CONNECTED)
    rig.emit(25)
    report = rig.tick()
    assert report.healthy
    assert not report.active
    assert (report.discarded, report.published, report.ended) == (25, 0, "empty")
    assert rig.queued() == 0
    assert rig.receive() == []
    record = rig.state.get_fallback()
    assert record is not None
    assert not record.active
    assert record.counter("discarded") == 25
    assert record.last_polled_occurred_at is None


def test_fallback_starts_within_one_tick_and_stops_after_the_recover_period(rig: PollRig) -> None:
    clock = rig.clock
    rig.heartbeat(StreamState.CONNECTED)
    assert not rig.tick().active

    # The stream loses its connection; within the grace period nothing changes.
    down_at = clock.now
    clock.advance(30)
    rig.heartbeat(StreamState.BACKOFF, last_frame_at=down_at)
    emitted = rig.emit(12)
    report = rig.tick()
    assert report.healthy
    assert not report.active
    assert report.discarded == 12

    # The next tick after the grace period has passed: active, and it publishes.
    clock.advance(31)
    rig.heartbeat(StreamState.BACKOFF, last_frame_at=down_at)
    emitted = rig.emit(9)
    report = rig.tick()
    assert not report.healthy
    assert report.active
    assert report.started
    assert report.published == 9
    assert_each_once(rig, rig.receive(), emitted)
    record = rig.state.get_fallback()
    assert record is not None
    assert record.active
    assert record.since == clock.now
    assert record.counter("activations") == 1
    newest = max(e.created_at for e in emitted)
    assert record.last_polled_occurred_at is not None
    assert abs(record.last_polled_occurred_at.timestamp() - int(newest)) < 1

    # The stream is back: the fallback keeps publishing through the recover period...
    for _ in range(2):
        clock.advance(60)
        rig.heartbeat(StreamState.CONNECTED)
        more = rig.emit(3)
        report = rig.tick()
        assert report.healthy
        assert report.active
        assert report.published == 3
        assert_each_once(rig, rig.receive(), more)
    # ...and stops once the stream has been healthy for 120 s.
    clock.advance(60)
    rig.heartbeat(StreamState.CONNECTED)
    rig.emit(4)
    report = rig.tick()
    assert report.stopped
    assert not report.active
    assert (report.published, report.discarded) == (0, 4)
    assert rig.receive() == []


@pytest.mark.parametrize("hotels", ["", "HOTEL1,HOTEL2,HOTEL3"])
def test_an_outage_drained_by_the_fallback_publishes_every_event_once(rig: PollRig, hotels: str) -> None:
    emitted = rig.emit(40)  # no heartbeat at all: the stream is down
    report = rig.tick(OHIP_HOTEL_IDS=hotels, RELAY_POLL_PAGE_LIMIT="7")
    assert report.active
    assert report.ended == "empty"
    assert (report.fetched, report.published, report.duplicates) == (40, 40, 0)
    assert report.pages == 6 if not hotels else report.pages >= 6
    assert rig.queued() == 0
    assert_each_once(rig, rig.receive(), emitted)
    # Nothing left: the next tick publishes nothing.
    assert rig.tick(OHIP_HOTEL_IDS=hotels).published == 0
    assert rig.receive() == []
    assert rig.telemetry.totals()[Metric.POLL_EVENTS_PUBLISHED.value] == 40


def test_published_events_are_recorded_for_the_stream_and_no_poll_event_is_suppressed(rig: PollRig) -> None:
    emitted = rig.emit(6)
    # Copies with the same content recorded before (as by an earlier tick): the Poll API dequeues,
    # so nothing polled is "already published" by content; both copies are published and recorded.
    earlier = {key_of(rig, e): f"poll:{rig.chain}:earlier-{i}" for i, e in enumerate(emitted[:2])}
    rig.seen.record(earlier.items())
    report = rig.tick()
    assert (report.fetched, report.published, report.duplicates) == (6, 6, 0)
    assert_each_once(rig, rig.receive(), emitted)
    recorded = rig.recorded()
    for event in emitted:
        key = key_of(rig, event)
        assert recorded[key] == {event_id_of(rig, event)} | ({earlier[key]} if key in earlier else set())
    # The stream's copies: each matched once, however often replayed; another stream event with
    # the same content is matched only while there are poll copies left.
    for event in emitted:
        key = key_of(rig, event)
        assert rig.seen.match(key, stream_id(event))
        assert rig.seen.match(key, stream_id(event))
        second = rig.seen.match(key, f"stream:{rig.chain}:9{event.offset}:")
        assert bool(second) == (key in earlier)
    record = rig.state.get_fallback()
    assert record is not None
    assert record.last_polled_occurred_at is not None
    assert abs(record.last_polled_occurred_at.timestamp() - int(max(e.created_at for e in emitted))) < 1


def lookalike_draft() -> EventDraft:
    return EventDraft(
        hotel="HOTEL1",
        module="RESERVATION",
        event_name="UPDATE RESERVATION",
        primary_key="5551",
        publisher_id="9",
        details=(Detail("ROOM", "101", "202"),),
    )


def test_two_events_that_look_alike_both_reach_the_queue(rig: PollRig) -> None:
    # The same field set twice within one second: the same content key, two businessEventIds.
    first = rig.append(lookalike_draft(), at=START + 0.2)
    second = rig.append(lookalike_draft(), at=START + 0.7)
    key = key_of(rig, first)
    assert key_of(rig, second) == key
    report = rig.tick()
    assert (report.published, report.duplicates) == (2, 0)
    received = rig.receive()
    assert sorted(body["eventId"] for body in received) == sorted(
        event_id_of(rig, e) for e in (first, second)
    )
    assert {body["eventKey"] for body in received} == {key}
    assert rig.recorded() == {key: {event_id_of(rig, first), event_id_of(rig, second)}}
    # Two poll copies cancel the two stream copies, and no third event with that content.
    assert rig.seen.match(key, stream_id(second))
    assert rig.seen.match(key, stream_id(first))
    assert not rig.seen.match(key, f"stream:{rig.chain}:99999:")


def test_the_same_business_event_id_twice_in_a_page_is_one_message(rig: PollRig) -> None:
    emitted = rig.emit(4)
    tap = PollTap(rewrite=lambda items: [items[0], *items[:2], items[1], *items[2:]])
    with rig.built(tap=tap) as fb:
        report = fb.tick(lambda: 60.0)
    assert len(tap.served) == 6
    assert (report.fetched, report.published, report.duplicates) == (6, 4, 2)
    assert_each_once(rig, rig.receive(), emitted)
    assert rig.telemetry.totals()[Metric.DUPLICATES_SUPPRESSED.value] == 2


def drop_ids(items: list[Any]) -> list[Any]:
    for item in items:
        del item["businessEventId"]
    return items


def test_items_without_a_business_event_id_are_published_under_stand_ins(rig: PollRig) -> None:
    rig.append(lookalike_draft(), at=START + 0.2)
    rig.append(lookalike_draft(), at=START + 0.7)
    with rig.built(tap=PollTap(rewrite=drop_ids)) as fb:
        report = fb.tick(lambda: 60.0)
    assert (report.published, report.malformed, report.duplicates) == (2, 0, 0)
    received = rig.receive()
    ids = {body["eventId"] for body in received}
    assert len(ids) == 2
    assert all(re.fullmatch(rf"poll:{rig.chain}:~[0-9a-f]{{32}}", i) for i in ids)
    assert all(body["businessEventId"] is None for body in received)
    assert len({body["eventKey"] for body in received}) == 1
    assert set().union(*rig.recorded().values()) == ids


def test_a_spilled_item_keeps_its_stand_in_when_it_is_re_delivered(rig: PollRig) -> None:
    rig.emit(3)
    missing_queue = rig.stack.queue_url.rsplit("/", 1)[0] + "/no-such-queue.fifo"
    with rig.built(tap=PollTap(rewrite=drop_ids), RELAY_QUEUE_URL=missing_queue) as fb:
        assert fb.tick(lambda: 60.0).spilled == 3
    (key,) = rig.objects(f"spill/{rig.chain}/")
    stand_ins = rig.document(key)["standInIds"]
    assert len(set(stand_ins)) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", s) for s in stand_ins)
    expected = {f"poll:{rig.chain}:~{s}" for s in stand_ins}

    # Re-delivered, and the tick killed right after SQS took them (the spill is still there)...
    plan = CrashPlan(0, "after", only="sqs.send_message_batch")
    with rig.built(sqs=Wrapped(rig.sqs, "sqs", plan)) as fb, pytest.raises(Crash):
        fb.tick(lambda: 60.0)
    assert rig.objects(f"spill/{rig.chain}/") == [key]
    assert rig.recorded() == {}
    # ...so the next tick re-delivers them again, under the same ids: one message and one
    # recorded copy per event.
    report = rig.tick()
    assert (report.redelivered, report.spills_pending) == (3, 0)
    assert sorted(body["eventId"] for body in rig.receive()) == sorted(expected)
    recorded = rig.recorded()
    assert set().union(*recorded.values()) == expected
    assert sum(len(ids) for ids in recorded.values()) == 3


def test_a_spill_document_of_the_previous_version_is_re_delivered(rig: PollRig) -> None:
    emitted = rig.emit(2)
    system = rig.gateway.config.external_systems[0]
    taken = call_in_gateway(rig.gateway, lambda: rig.gateway.source.dequeue(system, 2))
    assert taken == emitted
    items = [business_event_data(e) for e in emitted]
    del items[1]["businessEventId"]
    key = f"spill/{rig.chain}/000000000000001-old.json"
    document = {"schemaVersion": 1, "chainCode": rig.chain, "reason": "ServiceUnavailable", "items": items}
    rig.s3.put_object(Bucket=rig.stack.bucket_name, Key=key, Body=json.dumps(document).encode())
    report = rig.tick()
    assert (report.redelivered, report.spills_pending, report.ended) == (2, 0, "empty")
    ids = {body["eventId"] for body in rig.receive()}
    assert ids == {event_id_of(rig, emitted[0]), f"poll:{rig.chain}:~{spill_stand_in(key, 1)}"}


@pytest.mark.parametrize(("mode", "extra"), [("5xx", {"status": 503}), ("429", {"retry_after": 3})])
def test_a_poll_api_fault_loses_nothing(rig: PollRig, mode: str, extra: dict[str, Any]) -> None:
    emitted = rig.emit(10)
    rig.set_fault(mode, count=1, **extra)
    report = rig.tick()
    assert report.active
    assert report.ended == "poll-error"
    assert report.fetched == 0
    assert report.errors
    assert rig.telemetry.totals()[Metric.POLL_ERRORS.value] >= 1
    assert rig.queued() == 10
    report = rig.tick()
    assert report.published == 10
    assert not report.errors
    assert_each_once(rig, rig.receive(), emitted)


# The queue the tick is pointed at is not its role's: SQS refuses it (AccessDenied, as in AWS).
@pytest.mark.denials_expected
def test_an_sqs_failure_spills_the_page_and_the_next_tick_redelivers_it(rig: PollRig) -> None:
    emitted = rig.emit(12)
    missing_queue = rig.stack.queue_url.rsplit("/", 1)[0] + "/no-such-queue.fifo"
    report = rig.tick(RELAY_QUEUE_URL=missing_queue, RELAY_POLL_PAGE_LIMIT="5")
    assert report.ended == "sqs-error"
    assert (report.fetched, report.published, report.spilled) == (5, 0, 5)
    assert rig.queued() == 7  # the tick stopped: no further page was taken off OHIP's queue
    spilled = rig.objects(f"spill/{rig.chain}/")
    assert len(spilled) == 1
    assert rig.telemetry.totals()[Metric.POLL_SPILLED.value] == 5

    # SQS still down: the spill is tried first, stays, and no page is fetched.
    requests = rig.poll_requests()
    report = rig.tick(RELAY_QUEUE_URL=missing_queue)
    assert report.ended == "sqs-error"
    assert report.fetched == 0
    assert rig.poll_requests() == requests
    assert rig.objects(f"spill/{rig.chain}/") == spilled

    # Nothing is recorded for the stream until SQS has it: the stream publishes its copies if the
    # spill were lost.
    assert rig.recorded() == {}
    assert rig.state.get_fallback().last_polled_occurred_at is None  # type: ignore[union-attr]
    document = rig.document(spilled[0])
    assert document["schemaVersion"] == 2
    assert len(document["items"]) == 5
    assert document["standInIds"] == [None] * 5

    # SQS back: the spill goes first, then the rest; all of it recorded once on the queue.
    report = rig.tick(RELAY_POLL_PAGE_LIMIT="5")
    assert report.ended == "empty"
    assert (report.redelivered, report.published, report.duplicates) == (5, 12, 0)
    assert rig.objects(f"spill/{rig.chain}/") == []
    assert_each_once(rig, rig.receive(), emitted)
    assert set().union(*rig.recorded().values()) == {event_id_of(rig, e) for e in emitted}


def test_a_tick_without_enough_time_fetches_nothing(rig: PollRig) -> None:
    rig.emit(10)
    report = rig.tick(lambda: 9.9)  # under the 10 s safety margin
    assert report.active
    assert report.ended == "time"
    assert report.fetched == 0
    assert rig.poll_requests() == 0
    assert rig.queued() == 10


def test_a_tick_stops_requesting_pages_when_time_runs_short(rig: PollRig) -> None:
    emitted = rig.emit(10)
    left = iter([30.0])  # enough for one page, then under the margin

    report = rig.tick(lambda: next(left, 5.0), RELAY_POLL_PAGE_LIMIT="4")
    assert report.ended == "time"
    assert (report.pages, report.fetched, report.published) == (1, 4, 4)
    assert rig.poll_requests() == 1
    assert rig.queued() == 6
    assert rig.tick().published == 6
    assert_each_once(rig, rig.receive(), emitted)


def test_malformed_items_are_reported_and_parked_while_valid_neighbours_are_published(rig: PollRig) -> None:
    before = rig.emit(3)
    bad = EventDraft(
        hotel="HOTEL1", module="RESERVATION", event_name=" ", primary_key="1", publisher_id="9", details=()
    )
    call_in_gateway(rig.gateway, lambda: rig.gateway.source.append(rig.chain, bad))
    after = rig.emit(3)
    report = rig.tick()
    assert (report.fetched, report.published, report.malformed) == (7, 6, 1)
    assert_each_once(rig, rig.receive(), before + after)
    assert rig.telemetry.totals()[Metric.MALFORMED_EVENTS.value] == 1
    parked = rig.objects(f"malformed/{rig.chain}/")
    assert len(parked) == 1
    document = json.loads(rig.s3.get_object(Bucket=rig.stack.bucket_name, Key=parked[0])["Body"].read())
    assert "header.actionType" in document["reason"]
    assert len(document["items"]) == 1


def test_fallback_options_bound_the_discard(rig: PollRig) -> None:
    rig.heartbeat(StreamState.CONNECTED)
    rig.emit(10)
    with rig.fallback(FallbackOptions(page_limit=3, max_discard_pages=2)) as fb:
        report = fb.tick(lambda: 60.0)
    assert (report.discarded, report.ended) == (6, "discard-limit")
    assert rig.queued() == 4


# -- poison: quarantined, never fatal ------------------------------------------------------------


def refuse_marked(operation: str, kwargs: dict[str, Any]) -> None:
    """SQS refusing a whole SendMessageBatch because one body has content it does not accept."""
    if operation == "send_message_batch" and any(POISON in e["MessageBody"] for e in kwargs["Entries"]):
        raise client_error("InvalidMessageContents", 400)


POISON = "REFUSED-BY-SQS"


def poisoned(item: dict[str, Any], kind: str) -> dict[str, Any]:
    details = item["businessEvent"].setdefault("details", [])
    value = "x" * 1_100_000 if kind == "too-large" else POISON
    details.append({"dataElement": "COMMENTS", "newValue": value})
    return item


@pytest.mark.parametrize("kind", ["too-large", "refused"])
def test_a_poison_item_in_a_spilled_page_does_not_stop_later_ticks(rig: PollRig, kind: str) -> None:
    # An earlier tick took three events off the Poll API and spilled them; the middle one can never
    # be sent: too large for the queue without a claim-check bucket, or content SQS refuses.
    system = rig.gateway.config.external_systems[0]
    rig.emit(3)
    spilled = call_in_gateway(rig.gateway, lambda: rig.gateway.source.dequeue(system, 3))
    items = [business_event_data(e) for e in spilled]
    poisoned(items[1], kind)
    key = f"spill/{rig.chain}/000000000000001-{kind}.json"
    document = {"schemaVersion": 1, "chainCode": rig.chain, "reason": "ServiceUnavailable", "items": items}
    rig.s3.put_object(Bucket=rig.stack.bucket_name, Key=key, Body=json.dumps(document).encode())
    later = rig.emit(4)

    sqs = Wrapped(rig.sqs, "sqs", intercept=refuse_marked)
    for tick in range(2):
        with rig.built(sqs=sqs, claim_check=False) as fb:
            report = fb.tick(lambda: 60.0)
        assert report.ended == "empty", (tick, report.summary())
        assert rig.objects(f"spill/{rig.chain}/") == []
        if tick == 0:
            assert (report.redelivered, report.malformed, report.published) == (2, 1, 6)
        else:
            assert (report.redelivered, report.malformed, report.published) == (0, 0, 2)
        if tick == 0:
            later += rig.emit(2)
    assert rig.queued() == 0
    assert_each_once(rig, rig.receive(), [spilled[0], spilled[2], *later])
    parked = rig.parked()
    assert [poll_id(rig.chain, item) for item in parked] == [event_id_of(rig, spilled[1])]
    (parked_key,) = rig.objects(f"malformed/{rig.chain}/")
    assert rig.document(parked_key)["reason"].startswith("refused: ")
    assert rig.telemetry.totals()[Metric.MALFORMED_EVENTS.value] == 1
    # Never recorded: the stream publishes its own copy of the poison event (or parks it).
    assert event_id_of(rig, spilled[1]) not in set().union(*rig.recorded().values())


def test_a_poison_item_in_a_polled_page_is_parked_and_the_page_goes_on(rig: PollRig) -> None:
    emitted = rig.emit(5)

    def poison_third(items: list[Any]) -> list[Any]:
        poisoned(items[2], "refused")
        return items

    sqs = Wrapped(rig.sqs, "sqs", intercept=refuse_marked)
    with rig.built(sqs=sqs, tap=PollTap(rewrite=poison_third)) as fb:
        report = fb.tick(lambda: 60.0)
    assert (report.ended, report.published, report.malformed, report.spilled) == ("empty", 4, 1, 0)
    assert_each_once(rig, rig.receive(), emitted[:2] + emitted[3:])
    assert [poll_id(rig.chain, item) for item in rig.parked()] == [event_id_of(rig, emitted[2])]


def test_an_unreadable_spill_object_is_parked_and_polling_goes_on(rig: PollRig) -> None:
    emitted = rig.emit(3)
    key = f"spill/{rig.chain}/000000000000001-garbled.json"
    rig.s3.put_object(Bucket=rig.stack.bucket_name, Key=key, Body=b"{not json")
    report = rig.tick()
    assert (report.ended, report.published, report.malformed, report.spills_pending) == ("empty", 3, 1, 0)
    assert rig.objects(f"spill/{rig.chain}/") == []
    assert rig.parked() == ["{not json"]
    assert_each_once(rig, rig.receive(), emitted)


def test_a_seen_set_failure_after_publishing_is_a_warning(rig: PollRig) -> None:
    def refuse_seen(operation: str, kwargs: dict[str, Any]) -> None:
        if operation == "update_item" and kwargs["Key"]["pk"]["S"].startswith("seen#"):
            raise client_error("ProvisionedThroughputExceededException", 400, operation="UpdateItem")

    emitted = rig.emit(4)
    with rig.built(dynamodb=Wrapped(rig.dynamodb, "dynamodb", intercept=refuse_seen)) as fb:
        report = fb.tick(lambda: 60.0)
    assert (report.ended, report.published, report.errors) == ("empty", 4, [])
    assert_each_once(rig, rig.receive(), emitted)
    # Not recorded: the stream publishes its copies too (duplicates, never a loss).
    assert rig.recorded() == {}
    assert not any(rig.seen.match(key_of(rig, e), stream_id(e)) for e in emitted)
