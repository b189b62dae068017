"""The canonical event: both normalisers, the schema, the event key, and what malformed input does."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest

from ohip_relay.events import (
    CanonicalEvent,
    MalformedEvent,
    canonical_module,
    deduplication_id,
    event_key,
    from_poll,
    from_stream,
    load_schema,
    parse_timestamp,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "events"
CHAIN = "CHAIN1"
RELAYED = datetime(2026, 11, 25, 16, 3, 0, 250_000, tzinfo=UTC)
VALIDATOR = jsonschema.Draft202012Validator(load_schema(), format_checker=jsonschema.FormatChecker())


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def stream_event(name: str) -> dict[str, Any]:
    """The `newEvent` object of a stream sample (a fresh copy)."""
    event: dict[str, Any] = sample(f"stream/{name}")["payload"]["data"]["newEvent"]
    return event


def poll_item(index: int) -> dict[str, Any]:
    item: dict[str, Any] = sample("poll/business-events-200.json")["businessEventData"][index]
    return item


def valid(event: CanonicalEvent) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(event.to_json())
    VALIDATOR.validate(body)
    return body


# --- both normalisers produce schema-valid events --------------------------------------------


@pytest.mark.parametrize("name", ["next-new-reservation.json", "next-update-profile.json"])
def test_stream_samples_are_schema_valid(name: str) -> None:
    body = valid(from_stream(sample(f"stream/{name}"), CHAIN, RELAYED))  # whole `next` frame
    assert body["source"] == "stream"
    assert re.fullmatch(r"[0-9]+", body["offset"])
    assert body["uniqueEventId"]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_poll_samples_are_schema_valid(index: int) -> None:
    body = valid(from_poll(poll_item(index), CHAIN, RELAYED))
    assert body["source"] == "poll"
    assert body["offset"] is None
    assert body["uniqueEventId"] is None


def test_stream_event_fields() -> None:
    body = valid(from_stream(stream_event("next-new-reservation.json"), CHAIN, RELAYED))
    assert body["hotelId"] == "DEMO01"
    assert body["moduleName"] == "RESERVATION"
    assert body["eventName"] == "NEW RESERVATION"
    assert body["primaryKey"] == "2241871"
    assert body["offset"] == "48213"
    assert body["actionInstanceId"] == "3310457"
    assert body["occurredAt"] == "2026-11-25T10:15:38.123Z"  # Oracle style, AM, read as UTC
    assert body["relayedAt"] == "2026-11-25T16:03:00.250Z"
    email = next(e for e in body["detail"] if e["elementName"] == "EMAIL")
    assert email == {
        "elementName": "EMAIL",
        "oldValue": "",
        "newValue": "jane.testperson@example.com",
        "elementSequence": "1",
        "elementType": "EMAIL",
        "elementRole": "PRIMARY",
    }
    adults = next(e for e in body["detail"] if e["elementName"] == "ADULTS")
    assert (adults["scopeFrom"], adults["scopeTo"]) == ("2026-12-04", "2026-12-06")


def test_body_is_compact_ascii_in_documented_order() -> None:
    event = dict(stream_event("next-update-profile.json"))
    event["detail"] = [{"elementName": "name", "oldValue": "Müller", "newValue": "Müller-Łukasz"}]
    text = from_stream(event, CHAIN, RELAYED).to_json()
    assert text.isascii()
    assert ": " not in text
    assert ", " not in text
    assert list(json.loads(text)) == [
        "schemaVersion",
        "eventKey",
        "eventId",
        "source",
        "chainCode",
        "hotelId",
        "moduleName",
        "eventName",
        "primaryKey",
        "offset",
        "uniqueEventId",
        "businessEventId",
        "publisherId",
        "actionInstanceId",
        "occurredAt",
        "relayedAt",
        "detail",
    ]
    assert json.loads(text)["detail"][0] == {
        "elementName": "NAME",
        "oldValue": "Müller",
        "newValue": "Müller-Łukasz",
    }


@pytest.mark.parametrize(
    ("source", "make"),
    [
        ("stream", lambda: from_stream(stream_event("next-new-reservation.json"), CHAIN, RELAYED)),
        ("poll", lambda: from_poll(poll_item(2), CHAIN, RELAYED)),
    ],
)
def test_json_round_trip(source: str, make: Callable[[], CanonicalEvent]) -> None:
    event = make()
    assert event.source == source
    again = CanonicalEvent.from_json(event.to_json())
    assert again == event
    assert again.to_json() == event.to_json()


# --- the schema is strict ----------------------------------------------------------------------


def _schema_errors(change: Callable[[dict[str, Any]], None], *, poll: bool = False) -> int:
    event = (
        from_poll(poll_item(0), CHAIN, RELAYED)
        if poll
        else from_stream(stream_event("next-new-reservation.json"), CHAIN, RELAYED)
    )
    body = json.loads(event.to_json())
    change(body)
    return len(list(VALIDATOR.iter_errors(body)))


@pytest.mark.parametrize(
    ("change", "poll"),
    [
        (lambda b: b.update(extra="x"), False),
        (lambda b: b["detail"][0].update(extra="x"), False),
        (lambda b: b.update(offset=None), False),
        (lambda b: b.update(offset="48213"), True),
        (lambda b: b.update(occurredAt="2026-11-25T10:15:38Z"), False),
        (lambda b: b.update(eventKey="v1-xyz"), False),
        (lambda b: b.update(moduleName="Reservation"), False),
        (lambda b: b.update(schemaVersion=2), False),
        (lambda b: b.pop("publisherId"), False),
    ],
)
def test_schema_rejects(change: Callable[[dict[str, Any]], None], poll: bool) -> None:
    assert _schema_errors(change, poll=poll) > 0


def test_schema_ships_in_the_package() -> None:
    on_disk = json.loads((REPO / "shared/ohip_relay/schemas/relay-event.v1.json").read_text())
    assert load_schema() == on_disk
    jsonschema.Draft202012Validator.check_schema(on_disk)


# --- the event key -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream_name", "poll_index"),
    [("next-new-reservation.json", 0), ("next-update-profile.json", 1)],
)
def test_same_change_has_same_key_on_both_channels(stream_name: str, poll_index: int) -> None:
    streamed = from_stream(stream_event(stream_name), CHAIN, RELAYED)
    polled = from_poll(poll_item(poll_index), CHAIN, RELAYED + timedelta(minutes=5))
    assert streamed.event_key == polled.event_key
    # One change, two events of two sources: the content key matches them, their ids never do.
    assert streamed.event_id != polled.event_id
    assert streamed.deduplication_id() != polled.deduplication_id()
    assert streamed.message_group_id() == polled.message_group_id()
    assert streamed.occurred_at != polled.occurred_at  # milliseconds differ, the key does not


def test_delta_true_and_false_frames_have_same_key() -> None:
    full = stream_event("next-update-profile.json")
    delta = copy.deepcopy(full)
    delta["detail"] = [e for e in full["detail"] if e["oldValue"] != e["newValue"]]
    assert len(delta["detail"]) < len(full["detail"])
    a, b = from_stream(full, CHAIN, RELAYED), from_stream(delta, CHAIN, RELAYED)
    assert a.event_key == b.event_key
    assert a.detail != b.detail
    assert a.changed_detail() == b.changed_detail()


def _mutated(change: Callable[[dict[str, Any]], None]) -> CanonicalEvent:
    event = stream_event("next-update-profile.json")
    change(event)
    return from_stream(event, CHAIN, RELAYED)


def _element(event: dict[str, Any], name: str) -> dict[str, Any]:
    element: dict[str, Any] = next(e for e in event["detail"] if e["elementName"] == name)
    return element


BASE_KEY = from_stream(stream_event("next-update-profile.json"), CHAIN, RELAYED).event_key


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda e: _element(e, "EMAIL").update(newValue="other@example.org"), id="new value"),
        pytest.param(lambda e: _element(e, "EMAIL").update(oldValue="x@example.org"), id="old value"),
        pytest.param(lambda e: _element(e, "CITY").update(newValue="Otherton"), id="one more change"),
        pytest.param(lambda e: _element(e, "EMAIL").update(scopeFrom="2026-12-01"), id="scope"),
        pytest.param(lambda e: e.update(timestamp="25-NOV-26 02.41.08.654321 PM"), id="next second"),
        pytest.param(lambda e: e.update(timestamp="26-NOV-26 02.41.07.654321 PM"), id="next day"),
        pytest.param(lambda e: e.update(primaryKey="1281000"), id="other resource"),
        pytest.param(lambda e: e.update(hotelId="DEMO02"), id="other hotel"),
        pytest.param(lambda e: e.update(hotelId=None), id="chain level"),
        pytest.param(lambda e: e.update(eventName="NEW PROFILE"), id="other event"),
        pytest.param(lambda e: e.update(publisherId="57490"), id="other publisher"),
    ],
)
def test_different_changes_have_different_keys(change: Callable[[dict[str, Any]], None]) -> None:
    assert _mutated(change).event_key != BASE_KEY


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda e: e["detail"].reverse(), id="element order"),
        pytest.param(lambda e: e.update(timestamp="25-NOV-26 02.41.07.000001 PM"), id="same second"),
        pytest.param(lambda e: e.update(timestamp="2026-11-25T14:41:07.9+00:00"), id="ISO with zone"),
        pytest.param(
            lambda e: e.update(timestamp="2026-11-25T15:41:07+01:00"), id="other zone, same instant"
        ),
        pytest.param(
            lambda e: e["metadata"].update(offset="99999", uniqueEventId="other"), id="replayed copy"
        ),
        pytest.param(lambda e: e.update(actionInstanceId="1"), id="action id"),
        pytest.param(lambda e: e.update(moduleName="Profile"), id="module spelling"),
        pytest.param(lambda e: e.update(eventName=" update   profile "), id="event spelling"),
        pytest.param(lambda e: e.update(publisherId=57489, primaryKey=1280999), id="numbers"),
        pytest.param(lambda e: _element(e, "EMAIL").update(elementSequence="2"), id="stream-only attrs"),
        pytest.param(lambda e: e["detail"].append(dict(_element(e, "EMAIL"))), id="repeated element"),
        pytest.param(lambda e: e["detail"].append({"elementName": "WEBPAGE"}), id="valueless element"),
    ],
)
def test_key_ignores_what_does_not_tell_changes_apart(change: Callable[[dict[str, Any]], None]) -> None:
    assert _mutated(change).event_key == BASE_KEY


def test_escaped_and_plain_values_give_same_key() -> None:
    streamed = stream_event("next-update-profile.json")
    _element(streamed, "EMAIL")["newValue"] = "j&amp;t@example.org"
    polled = poll_item(1)
    next(d for d in polled["businessEvent"]["details"] if d["dataElement"] == "EMAIL")["newValue"] = (
        "j&t@example.org"
    )
    assert from_stream(streamed, CHAIN, RELAYED).event_key == from_poll(polled, CHAIN, RELAYED).event_key


def test_key_format_and_reference_function() -> None:
    event = from_poll(poll_item(2), CHAIN, RELAYED)
    assert re.fullmatch(r"v1-[0-9a-f]{64}", event.event_key)
    recomputed = event_key(
        hotel_id=event.hotel_id,
        event_name=event.event_name,
        primary_key=event.primary_key,
        publisher_id=event.publisher_id,
        occurred_at=event.occurred_at,
        detail=event.detail,
    )
    assert recomputed == event.event_key


# --- Poll API quirks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (14, "PROFILE"),
        ("14", "PROFILE"),
        (16, "RESERVATION"),
        (16.0, "RESERVATION"),
        (" 16 ", "RESERVATION"),
        (0, "ACTIVITY"),
        (17, "STAY_RECORDS"),
        (42, "42"),
        ("Reservation", "RESERVATION"),
        ("RESERVATION", "RESERVATION"),
        ("reservation", "RESERVATION"),
        ("BlockOffsets", "BLOCK_OFFSETS"),
        ("Block Offsets", "BLOCK_OFFSETS"),
        ("BLOCKOFFSETS", "BLOCK_OFFSETS"),
        ("NightAudit", "NIGHT_AUDIT"),
        ("Spa Bookings", "SPA_BOOKINGS"),
    ],
)
def test_module_names_and_numbers(given: object, expected: str) -> None:
    assert canonical_module(given) == expected


def test_poll_module_number_and_name_give_same_event() -> None:
    by_number, by_name = poll_item(1), poll_item(1)
    by_name["businessEvent"]["header"]["moduleName"] = "Profile"
    a, b = from_poll(by_number, CHAIN, RELAYED), from_poll(by_name, CHAIN, RELAYED)
    assert a == b
    assert a.module_name == "PROFILE"


def test_poll_numbers_as_strings_or_numbers() -> None:
    as_numbers, as_strings = poll_item(0), poll_item(0)
    as_strings["businessEvent"]["header"].update(
        actionId="3310457", publisherId="57489", primaryKey=" 2241871 "
    )
    as_numbers["businessEvent"]["header"].update(primaryKey=2241871)
    a, b = from_poll(as_numbers, CHAIN, RELAYED), from_poll(as_strings, CHAIN, RELAYED)
    assert a == b
    assert (a.publisher_id, a.action_instance_id, a.primary_key) == ("57489", "3310457", "2241871")


def test_poll_missing_values_become_empty_strings() -> None:
    event = from_poll(poll_item(1), CHAIN, RELAYED)
    webpage = next(e for e in event.detail if e.element_name == "WEBPAGE")
    assert (webpage.old_value, webpage.new_value, webpage.changed) == ("", "", False)
    name = next(e for e in event.detail if e.element_name == "NAME")
    assert (name.old_value, name.new_value) == ("Testperson", "Testperson")


def test_poll_time_is_utc_by_default_and_zone_is_configurable() -> None:
    utc = from_poll(poll_item(0), CHAIN, RELAYED)
    assert valid(utc)["occurredAt"] == "2026-11-25T10:15:38.000Z"
    berlin = from_poll(poll_item(0), CHAIN, RELAYED, naive_tz=ZoneInfo("Europe/Berlin"))
    assert valid(berlin)["occurredAt"] == "2026-11-25T09:15:38.000Z"
    assert berlin.event_key != utc.event_key
    same_zone_stream = from_stream(
        stream_event("next-new-reservation.json"), CHAIN, RELAYED, naive_tz=ZoneInfo("Europe/Berlin")
    )
    assert same_zone_stream.event_key == berlin.event_key


def test_poll_accepts_the_business_event_itself() -> None:
    item = poll_item(2)
    bare = from_poll(item["businessEvent"], CHAIN, RELAYED, stand_in_id="t1")
    wrapped = from_poll(item, CHAIN, RELAYED)
    assert dataclasses.replace(
        bare, event_id=wrapped.event_id, business_event_id=wrapped.business_event_id
    ) == (wrapped)
    assert bare.event_id == f"poll:{CHAIN}:~t1"


def test_poll_item_fields() -> None:
    body = valid(from_poll(poll_item(2), CHAIN, RELAYED))
    assert (body["moduleName"], body["primaryKey"], body["publisherId"]) == (
        "RESERVATION",
        "2241905",
        "57491",
    )
    assert body["actionInstanceId"] == "3310611"
    assert body["hotelId"] == "DEMO02"


def test_stream_offset_is_canonical_digits() -> None:
    event = stream_event("next-update-profile.json")
    event["metadata"]["offset"] = 48219
    assert from_stream(event, CHAIN, RELAYED).offset == "48219"
    event["metadata"]["offset"] = "0048219"
    assert from_stream(event, CHAIN, RELAYED).offset == "48219"


def test_scope_dates_are_normalised() -> None:
    item = poll_item(2)
    rate = item["businessEvent"]["details"][2]
    rate.update(scopeFrom="20261210", scopeTo="2026-12-11 00:00:00.0")
    element = from_poll(item, CHAIN, RELAYED).detail[2]
    assert (element.scope_from, element.scope_to) == ("2026-12-10", "2026-12-11")


# --- timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("28-APR-24 06.18.59.028027 AM", "2024-04-28T06:18:59.028Z"),
        ("28-apr-24 06.18.59.028027 pm", "2024-04-28T18:18:59.028Z"),
        ("01-JAN-26 12.00.01.5 AM", "2026-01-01T00:00:01.500Z"),
        ("01-JAN-26 12.00.01 PM", "2026-01-01T12:00:01.000Z"),
        ("01-JAN-2026 23.59.59", "2026-01-01T23:59:59.000Z"),
        ("15-MAR-99 10.00.00.000000 AM", "1999-03-15T10:00:00.000Z"),
        ("2021-07-08 11:15:38.0", "2021-07-08T11:15:38.000Z"),
        ("2021-07-08T11:15:38.123456789Z", "2021-07-08T11:15:38.123Z"),
        ("2021-07-08T13:15:38+02:00", "2021-07-08T11:15:38.000Z"),
        ("2021-07-08T06:15:38-0500", "2021-07-08T11:15:38.000Z"),
        ("2021-07-08 11:15", "2021-07-08T11:15:00.000Z"),
        (1625742938, "2021-07-08T11:15:38.000Z"),
        (1625742938123, "2021-07-08T11:15:38.123Z"),
    ],
)
def test_timestamp_formats(given: object, expected: str) -> None:
    parsed = parse_timestamp(given)
    assert parsed.tzinfo is not None
    assert f"{parsed:%Y-%m-%dT%H:%M:%S}.{parsed.microsecond // 1000:03d}Z" == expected


def test_naive_timestamps_use_the_given_zone_and_zoned_ones_keep_theirs() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert parse_timestamp("2021-07-08 11:15:38.0", naive_tz=plus_two).hour == 9
    assert parse_timestamp("28-APR-24 06.18.59 AM", naive_tz=plus_two).hour == 4
    assert parse_timestamp("2021-07-08T11:15:38Z", naive_tz=plus_two).hour == 11


# --- SQS helpers -------------------------------------------------------------------------------


def test_message_attributes() -> None:
    attributes = from_poll(poll_item(0), CHAIN, RELAYED).message_attributes()
    assert attributes == {
        "eventName": {"DataType": "String", "StringValue": "NEW RESERVATION"},
        "moduleName": {"DataType": "String", "StringValue": "RESERVATION"},
        "hotelId": {"DataType": "String", "StringValue": "DEMO01"},
        "source": {"DataType": "String", "StringValue": "poll"},
        "schemaVersion": {"DataType": "Number", "StringValue": "1"},
    }
    assert from_poll(poll_item(0), CHAIN, RELAYED).attribute_values() == {
        "eventName": "NEW RESERVATION",
        "moduleName": "RESERVATION",
        "hotelId": "DEMO01",
        "source": "poll",
        "schemaVersion": "1",
    }


def test_chain_level_event_has_no_hotel_attribute_and_a_star_group() -> None:
    event = stream_event("next-update-profile.json")
    event["hotelId"] = ""
    canonical = from_stream(event, CHAIN, RELAYED)
    assert canonical.hotel_id is None
    assert valid(canonical)["hotelId"] is None
    assert "hotelId" not in canonical.message_attributes()
    assert "hotelId" not in canonical.attribute_values()
    assert canonical.message_group_id() == "*:1280999"


def test_group_and_dedup_ids_fit_sqs_limits() -> None:
    allowed = re.compile(r"[!-~]{1,128}")
    event = stream_event("next-update-profile.json")
    event["primaryKey"] = "K " + "9" * 300  # a space and too long: hashed
    canonical = from_stream(event, CHAIN, RELAYED)
    assert allowed.fullmatch(canonical.message_group_id())
    assert canonical.message_group_id().startswith("h-")
    assert allowed.fullmatch(canonical.deduplication_id())
    assert canonical.deduplication_id() == deduplication_id(canonical.event_id)
    assert from_poll(poll_item(2), CHAIN, RELAYED).message_group_id() == "DEMO02:2241905"


# --- malformed input ---------------------------------------------------------------------------

PERSONAL = "Jane Testperson jane.testperson@example.com"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda e: e.pop("metadata"), "metadata"),
        (lambda e: e["metadata"].update(offset=PERSONAL), "metadata.offset"),
        (lambda e: e["metadata"].update(offset=None), "metadata.offset"),
        (lambda e: e.update(eventName=None), "eventName"),
        (lambda e: e.update(eventName={"name": PERSONAL}), "eventName"),
        (lambda e: e.update(primaryKey=[PERSONAL]), "primaryKey"),
        (lambda e: e.update(primaryKey=""), "primaryKey"),
        (lambda e: e.update(moduleName=True), "moduleName"),
        (lambda e: e.update(hotelId=PERSONAL), "hotelId"),
        (lambda e: e.update(publisherId=1.5), "publisherId"),
        (lambda e: e.update(timestamp=PERSONAL), "timestamp"),
        (lambda e: e.update(timestamp="31-FEB-26 10.00.00 AM"), "timestamp"),
        (lambda e: e.update(timestamp="2026-11-25 13:00:00 PM"), "timestamp"),
        (lambda e: e.pop("timestamp"), "timestamp"),
        (lambda e: e.update(detail=PERSONAL), "detail"),
        (lambda e: e["detail"].append(PERSONAL), "detail[7]"),
        (lambda e: e["detail"][2].pop("elementName"), "detail[2].elementName"),
        (lambda e: e["detail"][2].update(newValue={"email": PERSONAL}), "detail[2].newValue"),
    ],
)
def test_malformed_stream_event_names_the_field_not_the_value(
    change: Callable[[dict[str, Any]], None], field: str
) -> None:
    event = stream_event("next-update-profile.json")
    change(event)
    with pytest.raises(MalformedEvent) as caught:
        from_stream(event, CHAIN, RELAYED)
    assert caught.value.field == field
    message = str(caught.value)
    assert field in message
    for secret in ("Jane", "Testperson", "example.com", "example.org", "7946"):
        assert secret not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda i: i.pop("businessEvent"), "businessEvent"),
        (lambda i: i["businessEvent"].pop("header"), "businessEvent.header"),
        (lambda i: i["businessEvent"]["header"].update(actionType=""), "header.actionType"),
        (lambda i: i["businessEvent"]["header"].update(createdDateTime=PERSONAL), "header.createdDateTime"),
        (lambda i: i["businessEvent"]["header"].update(moduleName=-1), "header.moduleName"),
        (lambda i: i["businessEvent"]["header"].pop("primaryKey"), "header.primaryKey"),
        (lambda i: i["businessEvent"].update(details={"x": PERSONAL}), "details"),
        (lambda i: i["businessEvent"]["details"][0].pop("dataElement"), "details[0].elementName"),
    ],
)
def test_malformed_poll_item_names_the_field_not_the_value(
    change: Callable[[dict[str, Any]], None], field: str
) -> None:
    item = poll_item(1)
    change(item)
    with pytest.raises(MalformedEvent) as caught:
        from_poll(item, CHAIN, RELAYED)
    assert caught.value.field == field
    assert "Jane" not in str(caught.value)
    assert "example" not in str(caught.value)


def test_not_an_object_is_malformed() -> None:
    with pytest.raises(MalformedEvent):
        from_stream([], CHAIN, RELAYED)  # type: ignore[arg-type]
    with pytest.raises(MalformedEvent):
        from_poll("x", CHAIN, RELAYED)  # type: ignore[arg-type]


def test_caller_errors_are_value_errors_not_malformed_events() -> None:
    event = stream_event("next-update-profile.json")
    with pytest.raises(ValueError, match="timezone-aware") as caught:
        from_stream(event, CHAIN, datetime(2026, 11, 25, 10, 0))
    assert not isinstance(caught.value, MalformedEvent)
    with pytest.raises(ValueError, match="chain_code"):
        from_stream(event, "", RELAYED)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"schemaVersion": 2}',
    ],
)
def test_from_json_rejects_what_is_not_a_v1_message(text: str) -> None:
    with pytest.raises(MalformedEvent):
        CanonicalEvent.from_json(text)


def test_from_json_rejects_unknown_and_missing_fields() -> None:
    body = json.loads(from_poll(poll_item(0), CHAIN, RELAYED).to_json())
    with pytest.raises(MalformedEvent, match="unknown field"):
        CanonicalEvent.from_json(json.dumps({**body, "extra": 1}))
    del body["eventName"]
    with pytest.raises(MalformedEvent, match="eventName"):
        CanonicalEvent.from_json(json.dumps(body))
