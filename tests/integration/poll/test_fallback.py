"""The poll fallback against the local OHIP gateway (real sockets) and the moto server."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from ohip_local.poll import business_event_data
from ohip_local.source import EventDraft, StoredEvent
from ohip_local.threaded import call_in_gateway
from ohip_relay.events import from_poll, load_schema
from ohip_relay.fallback import FallbackOptions
from ohip_relay.state import StreamState
from ohip_relay.telemetry import Metric

from .conftest import PollRig

pytestmark = pytest.mark.integration

SCHEMA = load_schema()
VALIDATOR = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)


def key_of(rig: PollRig, event: StoredEvent) -> str:
    item = business_event_data(event)
    return from_poll(item, rig.chain, datetime.now(UTC)).event_key


def assert_each_once(rig: PollRig, received: list[dict[str, Any]], emitted: list[StoredEvent]) -> None:
    keys = Counter(body["eventKey"] for body in received)
    assert all(n == 1 for n in keys.values()), "a duplicate reached SQS"
    assert set(keys) == {key_of(rig, e) for e in emitted}
    for body in received:
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


def test_the_seen_set_suppresses_an_event_already_claimed(rig: PollRig) -> None:
    emitted = rig.emit(6)
    already = [key_of(rig, e) for e in emitted[:2]]
    assert rig.seen.claim(already) == set(already)  # as if published before
    report = rig.tick()
    assert (report.fetched, report.published, report.duplicates) == (6, 4, 2)
    assert_each_once(rig, rig.receive(), emitted[2:])
    assert rig.telemetry.totals()[Metric.DUPLICATES_SUPPRESSED.value] == 2
    # The stream side's view: every key is known now.
    keys = {key_of(rig, e) for e in emitted}
    assert rig.seen.contains([*keys, "v1-unknown"]) == keys


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

    # SQS back: the spill goes first (not suppressed by the seen-set it was claimed in), then the rest.
    report = rig.tick(RELAY_POLL_PAGE_LIMIT="5")
    assert report.ended == "empty"
    assert (report.redelivered, report.published, report.duplicates) == (5, 12, 0)
    assert rig.objects(f"spill/{rig.chain}/") == []
    assert_each_once(rig, rig.receive(), emitted)


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


def test_an_expired_seen_entry_counts_as_new(rig: PollRig) -> None:
    assert rig.seen.claim(["k1", "k2"]) == {"k1", "k2"}
    assert rig.seen.claim(["k2", "k3"]) == {"k3"}
    rig.clock.advance(9 * 86400)  # past the 8-day TTL; DynamoDB may not have deleted it yet
    assert rig.seen.contains(["k1", "k2", "k3"]) == set()
    assert rig.seen.claim(["k1"]) == {"k1"}


def test_fallback_options_bound_the_discard(rig: PollRig) -> None:
    rig.heartbeat(StreamState.CONNECTED)
    rig.emit(10)
    with rig.fallback(FallbackOptions(page_limit=3, max_discard_pages=2)) as fb:
        report = fb.tick(lambda: 60.0)
    assert (report.discarded, report.ended) == (6, "discard-limit")
    assert rig.queued() == 4
