"""The optional enricher against the local OHIP gateway (REST resources over a real socket) and the
moto server's queues, driven through its Lambda handler the way Lambda's SQS poller drives it."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import pytest

from ohip_local.aws import ProvisionedStack
from ohip_local.gateway import GatewayConfig
from ohip_relay.enrich import ENRICHED_FIELDS
from ohip_relay.events import CanonicalEvent
from ohip_relay.telemetry import Metric

from .conftest import EnrichRig

pytestmark = pytest.mark.integration


def _canonical_part(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in ENRICHED_FIELDS and not k.startswith("_")}


def _current(rig: EnrichRig, event: CanonicalEvent) -> dict[str, Any] | None:
    if event.module_name == "RESERVATION":
        assert event.hotel_id
        return rig.reservation(event.hotel_id, event.primary_key)
    return rig.profile(event.primary_key)


def _resource(event: CanonicalEvent) -> tuple[str, str]:
    """Reservations are per hotel, profiles are not (as the REST paths say)."""
    return (event.hotel_id or "" if event.module_name == "RESERVATION" else "", event.primary_key)


def test_enriched_events_carry_the_state_the_gateway_holds_at_fetch_time(rig: EnrichRig) -> None:
    first = rig.canonical(rig.emit(20))
    rig.publish(first)
    # Some of those resources change again after their events were relayed: the enricher reads
    # them as they are when it fetches, not as the events left them.
    touched = {_resource(e) for e in first}
    changed_again: set[tuple[str, str]] = set()
    for _ in range(40):  # bounded; updates dominate the generator's mix
        changed_again |= {_resource(e) for e in rig.canonical(rig.emit(5))} & touched
        if changed_again:
            break
    assert changed_again
    deliveries = rig.drain()
    assert all(not d.failed for d in deliveries)

    enriched = rig.enriched()
    assert sorted(m["eventKey"] for m in enriched) == sorted(e.event_key for e in first)
    by_key = {e.event_key: e for e in first}
    moved_on = 0
    for message in enriched:
        event = by_key[message["eventKey"]]
        assert _canonical_part(message) == event.to_dict()  # the same canonical event, unchanged
        assert message["resourceStatus"] == "found"
        assert message["resourceFetchedAt"].endswith("Z")
        assert message["resource"] == _current(rig, event)
        assert message["_attributes"]["resourceStatus"] == "found"
        assert message["_attributes"]["eventName"] == event.event_name
        moved_on += _resource(event) in changed_again
    assert moved_on
    state = rig.rest_state()
    assert state["responses"] == {"200": len(first)}
    assert rig.telemetry.flushed[Metric.ENRICHED.value] == len(first)


def test_an_expired_token_is_refreshed_once(rig: EnrichRig) -> None:
    rig.publish(rig.canonical(rig.emit(3)))
    assert not rig.deliver().failed  # type: ignore[union-attr]
    issued = rig.control.state()["tokens_issued"]
    rig.control.expire_tokens()  # the cached token is now refused (401)
    rig.publish(rig.canonical(rig.emit(3)))
    delivery = rig.deliver()
    assert delivery is not None
    assert not delivery.failed
    assert rig.control.state()["tokens_issued"] == issued + 1  # one refresh for the three records
    assert rig.rest_state()["responses"]["401"] >= 1
    assert len(rig.enriched()) == 6


@pytest.mark.parametrize("gateway_config", [GatewayConfig(oauth_app_key="token-only-key")])
def test_a_second_401_with_a_fresh_token_fails_the_record(rig: EnrichRig) -> None:
    # The token endpoint knows the application key, the REST APIs refuse it: every GET is a 401.
    (event,) = rig.canonical(rig.emit(1))
    rig.publish([event])
    delivery = rig.deliver()
    assert delivery is not None
    assert delivery.failed == delivery.received
    assert rig.rest_state()["responses"] == {"401": 2}  # the call and its one repetition
    assert rig.control.state()["tokens_issued"] == 2
    assert rig.enriched() == []


def test_429_honours_retry_after(rig: EnrichRig) -> None:
    rig.publish(rig.canonical(rig.emit(4)))
    rig.control.rest_fault("429", count=1, retry_after=7)
    delivery = rig.deliver()
    assert delivery is not None
    assert not delivery.failed
    # the one Retry-After, waited out by whichever workers were about to call
    assert set(rig.time.sleeps) == {7.0}
    assert rig.rest_state()["responses"] == {"200": 4, "429": 1}
    assert len(rig.enriched()) == 4
    assert rig.telemetry.flushed[Metric.ENRICH_RETRIES.value] == 1


def test_429_beyond_the_remaining_time_returns_the_record_to_the_queue(rig: EnrichRig) -> None:
    (event,) = rig.canonical(rig.emit(1))
    rig.publish([event])
    rig.control.rest_fault("429", count=1, retry_after=120)
    delivery = rig.deliver(remaining_ms=30_000)
    assert delivery is not None
    assert delivery.failed == delivery.received
    assert rig.time.sleeps == []  # it did not wait in vain
    assert rig.enriched() == []
    # SQS delivers it again; the rate limit is over by then.
    assert not rig.deliver().failed  # type: ignore[union-attr]
    (message,) = rig.enriched()
    assert message["eventKey"] == event.event_key
    assert message["resourceStatus"] == "found"


def test_404_is_recorded_as_not_found(rig: EnrichRig) -> None:
    events = rig.canonical(rig.emit(12))
    rig.publish(events)
    gone = next(e for e in events if e.module_name == "RESERVATION")
    assert rig.control.rest_delete("reservation", gone.primary_key, gone.hotel_id)["deleted"]
    assert all(not d.failed for d in rig.drain())  # not an error
    messages = {m["eventKey"]: m for m in rig.enriched()}
    assert len(messages) == len(events)
    for event in events:
        message = messages[event.event_key]
        if (event.hotel_id, event.primary_key) == (gone.hotel_id, gone.primary_key):
            assert message["resourceStatus"] == "not_found"
            assert message["resource"] is None
            assert message["resourceFetchedAt"]
            assert message["_attributes"]["resourceStatus"] == "not_found"
        else:
            assert message["resourceStatus"] == "found"
    not_found = sum(
        (e.hotel_id, e.primary_key) == (gone.hotel_id, gone.primary_key) and e.module_name == "RESERVATION"
        for e in events
    )
    assert rig.telemetry.flushed[Metric.ENRICH_NOT_FOUND.value] == not_found
    assert Metric.ENRICH_ERRORS.value not in rig.telemetry.flushed


def test_5xx_is_retried_with_backoff(rig: EnrichRig) -> None:
    (event,) = rig.canonical(rig.emit(1))
    rig.publish([event])
    rig.control.rest_fault("5xx", status=503, count=2)
    delivery = rig.deliver()
    assert delivery is not None
    assert not delivery.failed
    assert rig.rest_state()["responses"] == {"200": 1, "503": 2}
    assert len(rig.time.sleeps) == 2
    assert rig.time.sleeps[0] < rig.time.sleeps[1]  # exponential: 0.25-0.5 s, then 0.5-1 s
    assert [m["eventKey"] for m in rig.enriched()] == [event.event_key]


def test_persistent_5xx_fails_the_records_then_redelivery_enriches_them(rig: EnrichRig) -> None:
    events = rig.canonical(rig.emit(3))
    rig.publish(events)
    rig.control.rest_fault("5xx", status=502)  # until turned off
    delivery = rig.deliver()
    assert delivery is not None
    assert sorted(delivery.failed) == sorted(delivery.received)  # a partial batch response
    # three tries per resource; a resource's later event waits for its first (FIFO)
    resources = {e.message_group_id() for e in events}
    assert rig.rest_state()["responses"] == {"502": 3 * len(resources)}
    assert rig.enriched() == []
    assert rig.telemetry.flushed[Metric.ENRICH_ERRORS.value] == 3
    rig.control.rest_fault("off")
    assert not rig.deliver().failed  # type: ignore[union-attr]
    assert sorted(m["eventKey"] for m in rig.enriched()) == sorted(e.event_key for e in events)


def test_a_poison_message_ends_in_the_dead_letter_queue_without_blocking_the_rest(rig: EnrichRig) -> None:
    before = rig.canonical(rig.emit(3))
    rig.publish(before)
    rig.publish_raw("this is not an event", group="poison")
    after = rig.canonical(rig.emit(3))
    rig.publish(after)
    deliveries = rig.drain()  # MaxReceiveCount=2: two failed receives, then the redrive
    assert len(deliveries) == 2
    assert len(deliveries[0].received) == 7
    assert len(deliveries[0].failed) == 1
    assert deliveries[1].received == deliveries[0].failed
    assert sorted(m["eventKey"] for m in rig.enriched()) == sorted(e.event_key for e in before + after)
    (dead,) = rig.messages(rig.stack.dlq_url)
    assert dead == {"_raw": "this is not an event", "_attributes": {}}


def test_a_failed_record_holds_back_the_later_events_of_its_resource_only(rig: EnrichRig) -> None:
    events: list[CanonicalEvent] = []
    by_resource: defaultdict[str, list[CanonicalEvent]] = defaultdict(list)
    for _ in range(40):  # bounded: until one resource has two events and there are others
        for event in rig.canonical(rig.emit(5)):
            events.append(event)
            by_resource[event.message_group_id()].append(event)
        if len(by_resource) > 5 and any(len(es) >= 2 for es in by_resource.values()):
            break
    group, (first, second, *_) = next((g, es) for g, es in by_resource.items() if len(es) >= 2)
    others = [e for e in events if e.message_group_id() != group][:5]
    # The first event of that resource cannot be read now: its claim check names a missing object.
    pointer = {"bucket": rig.stack.bucket_name, "key": "oversize/missing.json", "bytes": 300_000}
    rig.sqs.send_message(
        QueueUrl=rig.relay_url,
        MessageBody=json.dumps({"schemaVersion": 1, "eventKey": first.event_key, "claimCheck": pointer}),
        MessageGroupId=group,
        MessageDeduplicationId=first.event_key,
    )
    rig.publish([second, *others])
    delivery = rig.deliver()
    assert delivery is not None
    assert len(delivery.received) == 7
    assert len(delivery.failed) == 2  # the unreadable record and the later event of its resource
    enriched = [m["eventKey"] for m in rig.enriched()]
    assert sorted(enriched) == sorted(e.event_key for e in others)


def test_unknown_events_pass_through_unenriched_and_are_counted(rig: EnrichRig) -> None:
    (template,) = rig.canonical(rig.emit(1))
    unknown = CanonicalEvent.from_dict(
        {**template.to_dict(), "moduleName": "BLOCK", "eventName": "NEW BLOCK", "eventKey": "k" * 64}
    )
    rig.publish([unknown])
    delivery = rig.deliver()
    assert delivery is not None
    assert not delivery.failed
    (message,) = rig.enriched()
    assert _canonical_part(message) == unknown.to_dict()
    assert (message["resourceStatus"], message["resource"], message["resourceFetchedAt"]) == (
        "unrouted",
        None,
        None,
    )
    assert rig.rest_state()["requests"] == 0
    expected = {Metric.ENRICH_PASSTHROUGH.value: 1, Metric.ENRICH_RETRIES.value: 0}
    assert rig.telemetry.flushed == Counter(expected)


def test_enrichment_is_off_unless_configured(
    aws_stack: ProvisionedStack, enricher_aws: ProvisionedStack
) -> None:
    # The default parameters create neither the enriched queue nor its dead-letter queue.
    assert "EnrichedQueue" not in aws_stack.refs
    assert "EnrichedDeadLetterQueue" not in aws_stack.refs
    assert "EnricherEnabled" in aws_stack.skipped["EnrichedQueue"]
    assert "EnrichedQueueUrl" not in aws_stack.outputs
    assert enricher_aws.outputs["EnrichedQueueUrl"].endswith("-enriched.fifo")
