"""The stream consumer's per-event shortcuts give exactly what the general code gives."""

from __future__ import annotations

import hashlib
import html
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ohip_relay import events
from ohip_relay.events import (
    DetailElement,
    canonical_event_name,
    canonical_module,
    event_key,
    format_instant,
    from_stream,
)
from ohip_relay.protocol import EventReceived, StreamProtocol, SubscriptionInput

RELAYED = datetime(2026, 11, 25, 16, 3, 0, 250_000, tzinfo=UTC)


def new_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "metadata": {"offset": "42", "uniqueEventId": "u-42"},
        "moduleName": "Reservation",
        "eventName": "update  reservation",
        "primaryKey": "123",
        "timestamp": "28-APR-24 06.18.59.028027 AM",
        "hotelId": "HOTEL1",
        "publisherId": "7",
        "actionInstanceId": "9",
        "detail": [
            {"elementName": "rate  code", "oldValue": "A&amp;B", "newValue": "A&B"},
            {"elementName": "ROOM", "oldValue": 101, "newValue": "102", "scopeFrom": "20240501"},
            {"dataElement": "notes", "oldValue": None, "newValue": "x &lt; y", "elementSequence": 3},
        ],
    }
    event.update(changes)
    return event


@pytest.mark.parametrize(
    "instant",
    [
        datetime(2026, 11, 25, 10, 15, 38, 123_999, tzinfo=UTC),
        datetime(1000, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
    ],
)
def test_format_instant_is_the_strftime_spelling(instant: datetime) -> None:
    assert format_instant(instant) == f"{instant:%Y-%m-%dT%H:%M:%S}.{instant.microsecond // 1000:03d}Z"


def reference_key(detail: list[DetailElement], occurred_at: datetime) -> str:
    """The event key as first written: every element through html.unescape, json.dumps."""
    changed = sorted(
        {
            (
                e.element_name,
                e.scope_from or "",
                e.scope_to or "",
                html.unescape(e.old_value),
                html.unescape(e.new_value),
            )
            for e in detail
            if html.unescape(e.old_value) != html.unescape(e.new_value)
        }
    )
    material = ["ohip-relay/event-key/v1", "H", "E", "P", "", f"{occurred_at:%Y-%m-%dT%H:%M:%SZ}"]
    material.append([list(element) for element in changed])  # type: ignore[arg-type]
    text = json.dumps(material, separators=(",", ":"), ensure_ascii=True)
    return "v1-" + hashlib.sha256(text.encode("ascii")).hexdigest()


@pytest.mark.parametrize("year", [2026, 999])
def test_event_key_matches_the_reference_derivation(year: int) -> None:
    detail = [
        DetailElement("A", "x&amp;y", "x&y"),  # the same once unescaped: not a change
        DetailElement("B", "&lt;1", "2", scope_from="2024-05-01"),
        DetailElement("C", "1", "1"),
        DetailElement("D", "", "é&#233;"),
        DetailElement("B", "&lt;1", "2", scope_from="2024-05-01"),  # a repeat counts once
    ]
    occurred = datetime(year, 4, 28, 6, 18, 59, 28_000, tzinfo=UTC)
    key = event_key(
        hotel_id="H", event_name="E", primary_key="P", publisher_id=None, occurred_at=occurred, detail=detail
    )
    assert key == reference_key(detail, occurred)


def test_to_json_is_compact_ascii_json_of_to_dict() -> None:
    event = from_stream(new_event(hotelId="HÔTEL"), "CHAIN1", RELAYED)
    assert event.to_json() == json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=True)
    assert event.to_json().isascii()


def test_repeated_events_normalise_the_same_way() -> None:
    first = from_stream(new_event(), "CHAIN1", RELAYED)
    again = from_stream(new_event(), "CHAIN1", RELAYED)  # names now come from the caches
    assert first == again
    assert first.event_name == "UPDATE RESERVATION"
    assert first.module_name == "RESERVATION"
    assert [e.element_name for e in first.detail] == ["RATE CODE", "ROOM", "NOTES"]
    assert first.detail[1].old_value == "101"
    assert first.detail[1].scope_from == "2024-05-01"
    assert first.detail[2].old_value == ""
    assert first.detail[2].element_sequence == "3"
    assert [e.changed for e in first.detail] == [False, True, True]


def test_module_numbers_and_digit_strings_are_not_confused_by_the_cache() -> None:
    assert canonical_module("BlockOffsets") == canonical_module("BlockOffsets") == "BLOCK_OFFSETS"
    assert canonical_module(16) == canonical_module("16") == "RESERVATION"
    assert canonical_module("16") == "RESERVATION"
    assert canonical_module("42") == "42"


def test_a_bad_value_is_still_reported_by_field_after_good_ones_were_cached() -> None:
    from_stream(new_event(), "CHAIN1", RELAYED)
    bad = new_event()
    bad["detail"][1]["newValue"] = {"nested": "object"}
    with pytest.raises(events.MalformedEvent, match=r"detail\[1\]\.newValue"):
        from_stream(bad, "CHAIN1", RELAYED)
    bad = new_event(eventName="   ")
    with pytest.raises(events.MalformedEvent, match="eventName"):
        from_stream(bad, "CHAIN1", RELAYED)
    with pytest.raises(ValueError, match="chain_code"):
        from_stream(new_event(), "CHAIN!", RELAYED)


def test_the_name_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "_NAMES", {})
    monkeypatch.setattr(events, "_MODULE_NAMES", {})
    monkeypatch.setattr(events, "_CACHE_LIMIT", 3)
    for n in range(10):
        event = from_stream(new_event(eventName=f"event {n}", moduleName=f"Module{n}"), "CHAIN1", RELAYED)
        assert event.event_name == canonical_event_name(f"event {n}") == f"EVENT {n}"
        assert event.module_name == f"MODULE{n}"
    assert len(events._NAMES) <= 3
    assert len(events._MODULE_NAMES) <= 3


@pytest.mark.parametrize("text", ["plain ascii", "Café ÿ €", "\U0001f600 emoji"])
def test_frame_size_counts_utf8_bytes_of_text_frames(text: str) -> None:
    core = StreamProtocol(token="t", app_key="k")
    core.start(0.0)
    core.receive('{"type":"connection_ack"}', 0.0)
    core.send_subscribe(SubscriptionInput("CHAIN1", offset="0"), 0.0)
    frame = json.dumps(
        {
            "id": core.subscription_id,
            "type": "next",
            "payload": {"data": {"newEvent": new_event(primaryKey=text)}},
        },
        ensure_ascii=False,
    )
    (event,) = core.receive(frame, 1.0)
    assert isinstance(event, EventReceived)
    assert event.frame_size == len(frame.encode("utf-8"))


def test_a_chain_code_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ValueError, match="chain_code"):
        from_stream(new_event(), ["CHAIN1"], RELAYED)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sent", "published"),
    [
        ("20240501", "2024-05-01"),
        ("2024-05-01", "2024-05-01"),
        (" 2024-05-01T00:00:00 ", "2024-05-01"),
        ("20240231", "20240231"),  # not a date: kept as sent
        ("next week", "next week"),
        (20240501, "2024-05-01"),
    ],
)
def test_scope_dates_are_the_same_from_the_cache(sent: object, published: str) -> None:
    events._SCOPE_DATES.clear()
    first = events._scope_date(sent, "scopeFrom")
    again = events._scope_date(sent, "scopeFrom")  # the second time from the cache (strings)
    assert first == again == published
    assert (sent in events._SCOPE_DATES) is isinstance(sent, str)


def test_detail_elements_built_positionally_match_the_keyword_constructor() -> None:
    # _detail_from_ohip builds DetailElement with tuple.__new__ in field order: a reordered or
    # added field must fail here, not silently shift values into the wrong fields.
    assert DetailElement._fields == (
        "element_name",
        "old_value",
        "new_value",
        "scope_from",
        "scope_to",
        "element_sequence",
        "element_type",
        "element_role",
    )
    item = {
        "elementName": "rate code",
        "oldValue": "A",
        "newValue": "B",
        "scopeFrom": "20240501",
        "scopeTo": "2024-05-03",
        "elementSequence": 2,
        "elementType": " EMAIL ",
        "elementRole": "PRIMARY",
    }
    built = events._detail_from_ohip(item, "detail", 0)
    assert type(built) is DetailElement
    assert built == DetailElement(
        element_name="RATE CODE",
        old_value="A",
        new_value="B",
        scope_from="2024-05-01",
        scope_to="2024-05-03",
        element_sequence="2",
        element_type="EMAIL",
        element_role="PRIMARY",
    )
    assert built.scope_to == "2024-05-03"
    assert built.element_role == "PRIMARY"
