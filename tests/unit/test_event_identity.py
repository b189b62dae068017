"""Event identity when one deployment serves many subscriptions (docs/event-format.md, "Many chains
in one deployment"): the subscription id takes the chain code's place in every id, and scopes the
content key when it is not the chain code; with the chain code as id everything is as before."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ohip_relay import registry
from ohip_relay.enrich import Fetched, ResourceStatus, enriched_document
from ohip_relay.events import (
    CanonicalEvent,
    MalformedEvent,
    deduplication_id,
    event_key,
    from_poll,
    from_stream,
    load_schema,
    poll_event_id,
    stream_event_id,
)

from .test_properties import PROPERTY_SETTINGS, good_new_events, good_poll_items

SAMPLES = Path(__file__).resolve().parents[2] / "events"
CHAIN = "CHAIN1"
RELAYED = datetime(2026, 11, 25, 16, 3, 0, 250_000, tzinfo=UTC)
VALIDATOR = jsonschema.Draft202012Validator(load_schema())

# What the relay published for these samples before subscriptions existed (also the example in
# docs/event-format.md): single-chain ids must stay exactly these.
STREAM_ID = "stream:CHAIN1:48213:2f6b8a4e-3c1d-4e7a-9b52-7d0c1e9a6f13"
STREAM_DEDUP = "i-7232135972c18379de7c81234530daf3b8a75c876b1d28bae95280b5d37ea657"
POLL_ID = "poll:CHAIN1:7730114"
POLL_DEDUP = "i-8deedd567c1b6c4d402490b8ff68c72c5095946ae6fbab87dff5fa7ae879c9e1"
KEY = "v1-53e6cb10b585a308a29157be25a7300550efcc1463f55ea408e311e656284645"  # one change, both channels


def stream_sample() -> dict[str, Any]:
    frame: dict[str, Any] = json.loads((SAMPLES / "stream" / "next-new-reservation.json").read_text())
    return frame


def poll_sample(index: int = 0) -> dict[str, Any]:
    items = json.loads((SAMPLES / "poll" / "business-events-200.json").read_text())["businessEventData"]
    item: dict[str, Any] = items[index]
    return item


def without_business_event_id(item: dict[str, Any]) -> dict[str, Any]:
    bare = copy.deepcopy(item)
    del bare["businessEventId"]
    return bare


# --- the single-chain shape: nothing changes ----------------------------------------------------


@pytest.mark.parametrize("subscription", [None, CHAIN])
def test_stream_ids_of_the_single_chain_shape_are_unchanged(subscription: str | None) -> None:
    event = from_stream(stream_sample(), CHAIN, RELAYED, subscription=subscription)
    assert event.event_id == STREAM_ID
    assert event.deduplication_id() == STREAM_DEDUP
    assert event.event_key == KEY
    assert event.subscription_id is None
    assert event.subscription == CHAIN
    assert event.to_json() == from_stream(stream_sample(), CHAIN, RELAYED).to_json()
    assert "subscriptionId" not in json.loads(event.to_json())


@pytest.mark.parametrize("subscription", [None, CHAIN])
def test_poll_ids_of_the_single_chain_shape_are_unchanged(subscription: str | None) -> None:
    event = from_poll(poll_sample(), CHAIN, RELAYED, subscription=subscription)
    assert event.event_id == POLL_ID
    assert event.deduplication_id() == POLL_DEDUP
    assert event.event_key == KEY
    assert event.subscription_id is None
    assert "subscriptionId" not in json.loads(event.to_json())
    stand_in = from_poll(
        without_business_event_id(poll_sample()), CHAIN, RELAYED, stand_in_id="t1", subscription=subscription
    )
    assert stand_in.event_id == "poll:CHAIN1:~t1"


def test_the_id_functions_keep_their_positional_meaning() -> None:
    assert stream_event_id(CHAIN, "48213", "u") == "stream:CHAIN1:48213:u"
    assert stream_event_id(CHAIN, "0", None) == "stream:CHAIN1:0:"
    assert poll_event_id(CHAIN, "7730114") == POLL_ID


# --- two environments, one chain code -----------------------------------------------------------


def test_one_offset_in_two_subscriptions_of_one_chain_gives_two_identities() -> None:
    prod = from_stream(stream_sample(), CHAIN, RELAYED, subscription=CHAIN)
    uat = from_stream(stream_sample(), CHAIN, RELAYED, subscription="CHAIN1-UAT")
    assert uat.event_id == "stream:CHAIN1-UAT:48213:2f6b8a4e-3c1d-4e7a-9b52-7d0c1e9a6f13"
    assert uat.offset == prod.offset
    assert uat.chain_code == prod.chain_code == CHAIN
    assert uat.event_id != prod.event_id
    assert uat.deduplication_id() != prod.deduplication_id()
    assert uat.deduplication_id() == deduplication_id(uat.event_id)
    assert uat.event_key != prod.event_key
    # Two subscriptions, neither named after the chain.
    other = from_stream(stream_sample(), CHAIN, RELAYED, subscription="CHAIN1-DEV")
    assert len({e.event_id for e in (prod, uat, other)}) == 3
    assert len({e.event_key for e in (prod, uat, other)}) == 3


def test_one_business_event_id_in_two_subscriptions_of_one_chain_gives_two_identities() -> None:
    prod = from_poll(poll_sample(), CHAIN, RELAYED)
    uat = from_poll(poll_sample(), CHAIN, RELAYED, subscription="CHAIN1-UAT")
    assert uat.event_id == "poll:CHAIN1-UAT:7730114"
    assert uat.deduplication_id() != prod.deduplication_id()
    assert uat.event_key != prod.event_key
    bare = without_business_event_id(poll_sample())
    stand_in = from_poll(bare, CHAIN, RELAYED, stand_in_id="t1", subscription="CHAIN1-UAT")
    assert stand_in.event_id == "poll:CHAIN1-UAT:~t1"


def test_both_channels_of_one_subscription_still_share_the_content_key() -> None:
    # The seen-set matches one change across the stream and the poll of ONE subscription.
    streamed = from_stream(stream_sample(), CHAIN, RELAYED, subscription="CHAIN1-UAT")
    polled = from_poll(poll_sample(), CHAIN, RELAYED, subscription="CHAIN1-UAT")
    assert streamed.event_key == polled.event_key != KEY


def test_the_scoped_key_is_the_documented_material_with_the_subscription_appended() -> None:
    event = from_poll(poll_sample(2), CHAIN, RELAYED, subscription="CHAIN1-UAT")
    changed = sorted(
        {
            (e.element_name, e.scope_from or "", e.scope_to or "", e.old_value, e.new_value)
            for e in event.detail
            if e.old_value != e.new_value
        }
    )
    material = [
        "ohip-relay/event-key/v1",
        event.hotel_id or "",
        event.event_name,
        event.primary_key,
        event.publisher_id or "",
        event.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        [list(e) for e in changed],
    ]

    def reference(items: list[Any]) -> str:
        text = json.dumps(items, separators=(",", ":"), ensure_ascii=True)
        return "v1-" + hashlib.sha256(text.encode("ascii")).hexdigest()

    assert event.event_key == reference([*material, "CHAIN1-UAT"])
    assert from_poll(poll_sample(2), CHAIN, RELAYED).event_key == reference(material)
    assert event.event_key == event_key(
        hotel_id=event.hotel_id,
        event_name=event.event_name,
        primary_key=event.primary_key,
        publisher_id=event.publisher_id,
        occurred_at=event.occurred_at,
        detail=event.detail,
        subscription_id="CHAIN1-UAT",
    )


# --- the message ------------------------------------------------------------------------------


def test_a_scoped_message_names_its_subscription_after_the_chain_code_and_reads_back() -> None:
    event = from_stream(stream_sample(), CHAIN, RELAYED, subscription="CHAIN1-UAT")
    body = event.to_json()
    document = json.loads(body)
    VALIDATOR.validate(document)
    assert list(document)[4:6] == ["chainCode", "subscriptionId"]
    assert document["subscriptionId"] == "CHAIN1-UAT"
    assert event.subscription == "CHAIN1-UAT"
    unscoped = json.loads(from_stream(stream_sample(), CHAIN, RELAYED).to_json())
    assert [k for k in document if k != "subscriptionId"] == list(unscoped)
    assert CanonicalEvent.from_json(body) == event
    assert CanonicalEvent.from_json(body).to_json() == body


def test_an_older_copy_of_the_schema_still_accepts_every_single_chain_message() -> None:
    # Why the field is absent unless it differs: older copies reject unknown fields.
    older = load_schema()
    del older["properties"]["subscriptionId"]
    validator = jsonschema.Draft202012Validator(older)
    assert older["additionalProperties"] is False
    validator.validate(json.loads(from_stream(stream_sample(), CHAIN, RELAYED, subscription=CHAIN).to_json()))
    validator.validate(json.loads(from_poll(poll_sample(), CHAIN, RELAYED, subscription=CHAIN).to_json()))
    scoped = json.loads(from_poll(poll_sample(), CHAIN, RELAYED, subscription="CHAIN1-UAT").to_json())
    assert not validator.is_valid(scoped)
    VALIDATOR.validate(scoped)


def test_reading_messages_of_both_shapes() -> None:
    body = json.loads(from_poll(poll_sample(), CHAIN, RELAYED, subscription="CHAIN1-UAT").to_json())
    # A message of an older relay (no eventId) gets the id it would have had, in its subscription.
    old = {k: v for k, v in body.items() if k != "eventId"}
    assert CanonicalEvent.from_dict(old).event_id == "poll:CHAIN1-UAT:7730114"
    # subscriptionId equal to chainCode is the same as none.
    same = {**body, "subscriptionId": CHAIN, "eventId": POLL_ID}
    assert CanonicalEvent.from_dict(same).subscription_id is None
    assert "subscriptionId" not in json.loads(CanonicalEvent.from_dict(same).to_json())
    for bad in ("", "a:b", "x" * 41, "UAT\n", 7):
        with pytest.raises(MalformedEvent) as raised:
            CanonicalEvent.from_dict({**body, "subscriptionId": bad})
        assert str(raised.value) == "malformed event: subscriptionId: missing or invalid"  # no value


def test_the_enriched_document_carries_the_subscription() -> None:
    event = from_poll(poll_sample(), CHAIN, RELAYED, subscription="CHAIN1-UAT")
    document = enriched_document(event, Fetched(ResourceStatus.UNROUTED))
    assert document["subscriptionId"] == "CHAIN1-UAT"
    core = {k: v for k, v in document.items() if k not in ("resourceStatus", "resource", "resourceFetchedAt")}
    assert CanonicalEvent.from_dict(core) == event


@pytest.mark.parametrize("bad", ["", "a:b", "x" * 41, "UAT\n", "UAT/1", ["CHAIN1"]])
def test_a_subscription_the_registry_would_refuse_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="subscription must be"):
        from_stream(stream_sample(), CHAIN, RELAYED, subscription=bad)
    with pytest.raises(ValueError, match="subscription must be"):
        from_poll(poll_sample(), CHAIN, RELAYED, subscription=bad)


@pytest.mark.parametrize(
    "candidate", ["CHAIN1", "a", "x" * 40, "x" * 41, "A B_%#$&-9", "a:b", "é", "a.b", ""]
)
def test_the_ids_accepted_are_the_registrys(candidate: str) -> None:
    accepted = True
    try:
        from_stream(stream_sample(), CHAIN, RELAYED, subscription=candidate)
    except ValueError:
        accepted = False
    assert accepted == bool(registry.SUBSCRIPTION_ID.fullmatch(candidate))


# --- properties -------------------------------------------------------------------------------

subscription_ids = st.one_of(
    st.sampled_from([CHAIN, "CHAIN1-UAT", "C", "chain1", "CHAIN1 ", " CHAIN1", "CHAIN1#2", "A&B"]),
    st.text(alphabet="ACHIN1 _%#$&-", min_size=1, max_size=40),
)
distinct_pairs = st.lists(subscription_ids, min_size=2, max_size=2, unique=True)
chain_codes = st.sampled_from([CHAIN, "C", "CHAIN1-UAT"])


def _read(make: Any) -> CanonicalEvent | None:
    try:
        event: CanonicalEvent = make()
    except MalformedEvent:
        return None
    return event


def _events(
    stream: list[dict[str, Any]], poll: list[dict[str, Any]], chain: str, subscription: str
) -> list[CanonicalEvent]:
    out = []
    for frame in stream:
        event = _read(
            lambda f=frame: from_stream(json.loads(json.dumps(f)), chain, RELAYED, subscription=subscription)
        )
        if event is not None:
            out.append(event)
    for index, item in enumerate(poll):
        event = _read(
            lambda i=item, n=index: from_poll(
                json.loads(json.dumps(i)), chain, RELAYED, stand_in_id=f"s{n}", subscription=subscription
            )
        )
        if event is not None:
            out.append(event)
    return out


@PROPERTY_SETTINGS
@given(
    pair=distinct_pairs,
    chain=chain_codes,
    stream=st.lists(good_new_events, max_size=3),
    poll=st.lists(good_poll_items, max_size=3),
)
def test_two_subscriptions_never_share_an_identity_or_a_key(
    pair: list[str], chain: str, stream: list[dict[str, Any]], poll: list[dict[str, Any]]
) -> None:
    # The same events (same offsets, same businessEventIds, same stand-ins) in two subscriptions.
    first, second = (_events(stream, poll, chain, subscription) for subscription in pair)
    assert len(first) == len(second)
    assert not {e.event_id for e in first} & {e.event_id for e in second}
    assert not {e.deduplication_id() for e in first} & {e.deduplication_id() for e in second}
    assert not {e.event_key for e in first} & {e.event_key for e in second}
    for event in first + second:
        assert event.subscription in pair
        assert (event.subscription_id is None) == (event.subscription == chain)
        VALIDATOR.validate(json.loads(event.to_json()))
        assert CanonicalEvent.from_json(event.to_json()) == event


@PROPERTY_SETTINGS
@given(
    subscription=subscription_ids,
    chain=chain_codes,
    stream=st.lists(good_new_events, min_size=1, max_size=3),
    poll=st.lists(good_poll_items, max_size=3),
)
def test_a_replay_in_one_subscription_has_the_same_identity(
    subscription: str, chain: str, stream: list[dict[str, Any]], poll: list[dict[str, Any]]
) -> None:
    once = _events(stream, poll, chain, subscription)
    again = _events(stream, poll, chain, subscription)
    assert [(e.event_id, e.deduplication_id(), e.event_key) for e in once] == [
        (e.event_id, e.deduplication_id(), e.event_key) for e in again
    ]
    if subscription == chain:  # the single-chain shape, byte for byte
        plain = []
        for frame in stream:
            event = _read(lambda f=frame: from_stream(json.loads(json.dumps(f)), chain, RELAYED))
            if event is not None:
                plain.append(event.to_json())
        assert plain == [e.to_json() for e in once if e.source == "stream"]
