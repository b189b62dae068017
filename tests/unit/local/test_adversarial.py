"""The local gateway's adversarial drafts: lookalikes, odd Unicode, missing fields; deterministic,
fictional, and rendered on both channels so that the relay's content key agrees between them."""

from __future__ import annotations

import dataclasses
import html
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from ohip_local.adversarial import (
    HOTEL_ID_MAX,
    KINDS,
    ODD,
    AdversarialGenerator,
    AdversarialUnit,
    parse_selection,
    utf16_units,
)
from ohip_local.generator import FIRST_NAMES, LAST_NAMES
from ohip_local.poll import business_event_data
from ohip_local.source import EventDraft, EventSource, StoredEvent
from ohip_local.streaming import _dumps, parse_subscription, render_event
from ohip_relay.events import from_poll, from_stream

HOTELS = ("HOTEL1", "HOTEL2", "HOTEL3")
CHAIN = "C1"
NOW = 1_795_601_738.25  # 2026-11-25 10:15:38.25 UTC
RELAYED_AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FULL_SELECTION = (
    "metadata { offset uniqueEventId } moduleName eventName primaryKey timestamp hotelId "
    "publisherId actionInstanceId detail { elementName oldValue newValue scopeFrom scopeTo "
    "elementSequence elementType elementRole }"
)
REQUEST = parse_subscription(
    {"query": f'subscription {{ newEvent(input: {{chainCode: "{CHAIN}"}}) {{ {FULL_SELECTION} }} }}'}
)


def units(variant: str, n: int = 40, *, seed: int = 1, **kw: Any) -> list[AdversarialUnit]:
    generator = AdversarialGenerator(seed=seed, hotels=HOTELS)
    return [generator.next_unit(parse_selection(variant), **kw) for _ in range(n)]


def stored(drafts: tuple[EventDraft, ...] | list[EventDraft]) -> list[StoredEvent]:
    """The drafts numbered by a source, stamped in one second (as the gateway stamps lookalikes)."""
    source = EventSource((CHAIN,), ("SYS",), clock=lambda: NOW)
    return [source.append(CHAIN, d, created_at=NOW + i * 0.0001) for i, d in enumerate(drafts)]


def stream_frame(event: StoredEvent) -> dict[str, Any]:
    """The `newEvent` object as a client decodes it off the wire."""
    decoded: dict[str, Any] = json.loads(_dumps({"e": render_event(event, REQUEST)}))["e"]
    return decoded


def poll_item(event: StoredEvent) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(json.dumps(business_event_data(event)))
    return decoded


def key(event: StoredEvent) -> str:
    return from_poll(poll_item(event), CHAIN, RELAYED_AT).event_key


def strings(event: StoredEvent) -> list[str]:
    out = [event.primary_key, event.hotel or ""]
    for d in event.details:
        out += [d.element_name, d.old_value or "", d.new_value or ""]
    return out


# -- selection and determinism -------------------------------------------------------------------


def test_selection_by_all_kind_and_variant() -> None:
    assert len(parse_selection("all")) == sum(len(v) for v in KINDS.values())
    assert parse_selection("lookalike") == tuple(("lookalike", v) for v in KINDS["lookalike"])
    assert parse_selection(["unicode:surrogate", "missing:hotel_id", "unicode:surrogate"]) == (
        ("unicode", "surrogate"),
        ("missing", "hotel_id"),
    )
    for bad in ("nope", "lookalike:nope", "all:x", [], ["unicode", 3]):
        with pytest.raises(ValueError, match=r"adversarial kind|no adversarial|kind names"):
            parse_selection(bad)  # type: ignore[arg-type]


def test_same_seed_same_units_other_seed_other_units() -> None:
    assert units("all", 60) == units("all", 60)
    assert units("all", 60, seed=2) != units("all", 60)
    drawn = {(u.kind, u.variant) for u in units("all", 300)}
    assert drawn == set(parse_selection("all"))  # every variant comes up


def test_units_hold_exactly_the_count_asked_for() -> None:
    generator = AdversarialGenerator(seed=3, hotels=HOTELS)
    for count in (1, 2, 5, 17):
        got = generator.units(parse_selection("lookalike"), count)
        assert sum(len(u.drafts) for u in got) == count
        assert all(u.drafts for u in got)


def test_a_requested_hotel_is_used_and_drafts_of_another_generator_are_untouched() -> None:
    for unit in units("lookalike", 20, hotel="HOTEL2") + units("unicode", 20, hotel="HOTEL2"):
        assert {d.hotel for d in unit.drafts} == {"HOTEL2"}
    keys = {d.primary_key[:7] for u in units("all", 200) for d in u.drafts}
    assert all(k.startswith(("91", "95")) for k in keys)  # their own key space


# -- lookalikes -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", KINDS["lookalike"])
def test_lookalikes_are_distinct_events_with_one_content_key(variant: str) -> None:
    groups = 0
    for unit in units(f"lookalike:{variant}"):
        assert unit.same_second
        events = stored(unit.drafts)
        assert len({e.offset for e in events}) == len(events)
        assert len({e.unique_event_id for e in events}) == len(events)
        assert len({e.business_event_id for e in events}) == len(events)
        assert len({(d.hotel, d.primary_key, d.publisher_id, d.event_name) for d in unit.drafts}) == 1
        keys = [key(e) for e in events]
        if variant == "repeat" and len(events) == 3:  # set, cleared, set again: 1 and 3 alike
            assert keys[0] == keys[2] != keys[1]
            assert unit.drafts[0] == unit.drafts[2]
        else:
            assert len(set(keys)) == 1, variant
        groups += len(events) > 1
    assert groups >= (20 if variant == "unchanged" else 40)  # "unchanged" may be a single event


def test_sequence_lookalikes_differ_only_by_element_sequence() -> None:
    for unit in units("lookalike:sequence", 10):
        one, two = sorted(unit.drafts, key=lambda d: len(d.details))
        extra = [d for d in two.details if d not in one.details]
        assert [d.element_sequence for d in extra] == ["2"]
        twin = [d for d in one.details if d.element_name == extra[0].element_name]
        assert twin
        assert twin[0].old_value != twin[0].new_value
        assert dataclasses.replace(twin[0], element_sequence="2") == extra[0]


def test_unchanged_lookalikes_change_nothing() -> None:
    shapes = set()
    for unit in units("lookalike:unchanged"):
        for draft in unit.drafts:
            assert all(
                html.unescape(d.old_value or "") == html.unescape(d.new_value or "") for d in draft.details
            )
            shapes.add("empty" if not draft.details else "escaped" if "&" in str(draft.details) else "same")
    assert shapes == {"empty", "escaped", "same"}


def test_escaped_lookalikes_spell_one_value_differently() -> None:
    spellings = set()
    for unit in units("lookalike:escaped", 20):
        values = {
            d.new_value for draft in unit.drafts for d in draft.details if d.element_name == "DEPARTMENT"
        }
        assert len(values) == len(unit.drafts) >= 2
        assert {html.unescape(v or "") for v in values} == {"R&D"}
        spellings |= values
    assert spellings == {"R&amp;D", "R&D", "R&#38;D"}


# -- odd Unicode -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", KINDS["unicode"])
def test_odd_unicode_reaches_values_names_keys_and_hotels(variant: str) -> None:
    odd = ODD[variant]
    where: set[str] = set()
    for unit in units(f"unicode:{variant}", 60):
        (event,) = stored(unit.drafts)
        assert any(o in v for v in strings(event) for o in odd)
        assert any(d.new_value in odd for d in event.details)  # an odd string as a whole value
        for d in event.details:
            if any(o in d.element_name for o in odd):
                where.add("element name")
            if d.personal and any(o in (d.new_value or "") for o in odd):
                where.add("personal value")
        if any(o in event.primary_key for o in odd):
            where.add("primary key")
        if event.hotel not in HOTELS:
            assert event.hotel is not None
            assert any(o in event.hotel for o in odd)
            assert len(event.hotel) <= HOTEL_ID_MAX
            assert utf16_units(event.hotel) <= HOTEL_ID_MAX
            where.add("hotel id")
        # the wire: ASCII JSON on both channels; the client decodes the very same strings
        wire = _dumps({"e": render_event(event, REQUEST)})
        assert wire.isascii()
        frame = stream_frame(event)
        assert [d["newValue"] for d in frame["detail"]] == [d.new_value for d in event.details]
        assert frame["primaryKey"] == event.primary_key
        assert frame["hotelId"] == event.hotel
        item = poll_item(event)
        assert item["businessEvent"]["header"]["hotelId"] == event.hotel
        assert [d["dataElement"] for d in item["businessEvent"]["details"]] == [
            d.element_name for d in event.details
        ]
    assert where == {"element name", "personal value", "primary key", "hotel id"}


def test_a_lone_surrogate_is_a_json_escape_on_the_wire() -> None:
    (event,) = stored(units("unicode:surrogate", 1)[0].drafts)
    lone = next(d.new_value for d in event.details if d.new_value in ODD["surrogate"])
    assert lone is not None
    escape = json.dumps(lone)[1:-1]  # e.g. \ud83d
    assert re.fullmatch(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}", escape)
    assert escape in _dumps({"e": render_event(event, REQUEST)})
    assert escape in json.dumps(business_event_data(event))
    with pytest.raises(UnicodeEncodeError):
        lone.encode("utf-8")  # what a non-ASCII encoder would have choked on


def test_personal_values_stay_fictional_and_flagged() -> None:
    names = set(LAST_NAMES) | set(FIRST_NAMES)
    for unit in units("all", 300):
        for draft in unit.drafts:
            for d in draft.details:
                if d.element_name in ("NAME", "FIRST NAME", "EMAIL"):
                    assert d.personal
                for value in (d.old_value, d.new_value):
                    if d.personal and value:
                        assert any(n in value or n.lower() in value for n in names), value
                        if d.element_name == "EMAIL":
                            assert value.endswith("@example.com")


# -- missing fields ------------------------------------------------------------------------------


def one(variant: str, missing_as: str) -> StoredEvent:
    unit = units(f"missing:{variant}", 1, missing_as=missing_as)[0]
    (event,) = stored(unit.drafts)
    return event


@pytest.mark.parametrize("missing_as", ["absent", "null"])
def test_missing_fields_on_both_channels(missing_as: str) -> None:
    event = one("unique_event_id", missing_as)
    assert event.unique_event_id is None
    assert stream_frame(event)["metadata"] == {"offset": str(event.offset), "uniqueEventId": None}
    assert poll_item(event)["businessEventId"] == {"id": str(event.business_event_id)}

    event = one("hotel_id", missing_as)
    assert event.hotel is None
    assert stream_frame(event)["hotelId"] is None
    header = poll_item(event)["businessEvent"]["header"]
    assert header.get("hotelId", "absent") == (None if missing_as == "null" else "absent")

    event = one("publisher_id", missing_as)
    assert stream_frame(event)["publisherId"] is None
    header = poll_item(event)["businessEvent"]["header"]
    assert header.get("publisherId", "absent") == (None if missing_as == "null" else "absent")

    event = one("action_instance_id", missing_as)
    assert stream_frame(event)["actionInstanceId"] is None
    header = poll_item(event)["businessEvent"]["header"]
    assert header.get("actionId", "absent") == (None if missing_as == "null" else "absent")
    assert "parentActionId" in header

    event = one("detail_empty", missing_as)
    assert stream_frame(event)["detail"] == []
    assert poll_item(event)["businessEvent"]["details"] == []

    event = one("detail_absent", missing_as)
    assert stream_frame(event)["detail"] is None
    business_event = poll_item(event)["businessEvent"]
    assert business_event.get("details", "absent") == (None if missing_as == "null" else "absent")

    event = one("null_values", missing_as)
    details = stream_frame(event)["detail"]
    assert {(d["elementName"], d["oldValue"], d["newValue"]) for d in details} >= {
        ("WEBPAGE", None, None),
        ("ROOM FEATURE", "QUIET", None),
    }
    polled = {d["dataElement"]: d for d in poll_item(event)["businessEvent"]["details"]}
    if missing_as == "null":
        assert polled["WEBPAGE"] == {
            "dataElement": "WEBPAGE",
            "oldValue": None,
            "newValue": None,
            "scopeFrom": None,
            "scopeTo": None,
        }
    else:
        assert polled["WEBPAGE"] == {"dataElement": "WEBPAGE"}

    event = one("scope", missing_as)
    frame = {d["elementName"]: d for d in stream_frame(event)["detail"]}
    assert (frame["RATE AMOUNT"]["scopeFrom"], frame["RATE AMOUNT"]["scopeTo"]) == (None, None)
    assert (frame["ADULTS"]["scopeFrom"], frame["ADULTS"]["scopeTo"]) == ("2026-12-04", None)
    polled = {d["dataElement"]: d for d in poll_item(event)["businessEvent"]["details"]}
    assert ("scopeTo" in polled["ADULTS"]) == (missing_as == "null")


def test_the_missing_style_is_drawn_by_the_seed_unless_given() -> None:
    styles = {d.missing_as for u in units("missing", 60) for d in u.drafts}
    assert styles == {"absent", "null"}
    assert {d.missing_as for u in units("lookalike", 20) for d in u.drafts} == {"absent"}
    assert {d.missing_as for u in units("all", 60, missing_as="null") for d in u.drafts} == {"null"}


def test_default_rendering_is_unchanged_for_friendly_events() -> None:
    """A draft without adversarial fields renders as before: values "" on the stream, empty values
    and scopes left out of the poll item, every header field present."""
    draft = EventDraft("HOTEL1", "PROFILE", "UPDATE PROFILE", "1280001", "57489", ())
    (event,) = stored([draft])
    frame = stream_frame(event)
    assert frame["metadata"]["uniqueEventId"] == event.unique_event_id
    assert frame["actionInstanceId"] == str(event.action_instance_id)
    header = poll_item(event)["businessEvent"]["header"]
    assert set(header) == {
        "moduleName",
        "actionType",
        "actionId",
        "primaryKey",
        "parentActionId",
        "publisherId",
        "createdDateTime",
        "hotelId",
    }


# -- both channels agree on the content key -----------------------------------------------------


def test_every_adversarial_event_has_one_content_key_on_both_channels() -> None:
    for unit in units("all", 200, seed=9):
        for event in stored(unit.drafts):
            from_the_stream = from_stream(stream_frame(event), CHAIN, RELAYED_AT).event_key
            assert from_the_stream == key(event), (unit.kind, unit.variant)
