"""Property-based tests (hypothesis): frame -> message and poll item -> message over the data the
protocol allows, not only what our generator makes.

- Nothing but the documented exceptions: the protocol core never raises on a frame; the
  normalisers raise only `MalformedEvent`; a message that is built always serialises, is valid
  against the published JSON Schema, reads back equal, and has ids and attributes SQS accepts.
- Identity: distinct events never share a deduplication id, however alike their content; a replay
  of one event always has the same one.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ohip_relay.events import CanonicalEvent, MalformedEvent, from_poll, from_stream, load_schema
from ohip_relay.protocol import (
    DuplicateSkipped,
    EventReceived,
    OffsetRegression,
    ProtocolViolation,
    StreamProtocol,
    SubscriptionInput,
    UnreadableEvent,
)
from ohip_relay.publish import message_size

CHAIN = "CHAIN1"
RELAYED = datetime(2026, 12, 5, 12, 0, 0, 123_000, tzinfo=UTC)
VALIDATOR = jsonschema.Draft202012Validator(load_schema())
SQS_ID = re.compile(r"[!-~]{1,128}")
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any code point, lone surrogates and control characters included: what JSON can carry. The odd
# ones are drawn often on purpose: among all code points a lone surrogate is a rare draw.
ODD_CHARS = (
    "\ud83d\ude00\udfff\ud800\x00\x01\x1c\x7f\x85\u00a0\u0301\u200d\u202e\ufeff\ufffe\uffff\U0001f600&;#"
)
any_char = st.one_of(st.sampled_from(ODD_CHARS), st.characters(codec=None, exclude_categories=()))


def texts(min_size: int = 0, max_size: int = 30) -> st.SearchStrategy[str]:
    """Strings of `any_char` (built from lists: `st.text` leaves lone surrogates out)."""
    return st.lists(any_char, min_size=min_size, max_size=max_size).map("".join)


any_text = texts()
odd_text = st.one_of(
    any_text,
    st.sampled_from(["", " ", "H\ud83d", "\ud83d", "\udc00x", "R&amp;D", "R&D", "\x00", "\u202e", "\ufffe"]),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)
offsets = st.one_of(
    st.integers(min_value=0, max_value=10**20 - 1).map(str),
    st.sampled_from(["0", "00", "007", "9" * 20, "1" * 21, "9" * 5000, "", "-1", "1e3", " 1", "\u0661"]),
    json_scalar,
)
timestamps = st.one_of(
    st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat()),
    st.sampled_from(
        ["2026-11-25 10:15:38.0", "28-APR-24 06.18.59.028027 AM", "2026-11-25T10:15:38Z", "x", ""]
    ),
    json_scalar,
)
detail_item = st.fixed_dictionaries(
    {},
    optional={
        "elementName": odd_text | json_scalar,
        "oldValue": json_scalar,
        "newValue": json_scalar,
        "scopeFrom": odd_text | json_scalar,
        "scopeTo": odd_text | json_scalar,
        "elementSequence": json_scalar,
        "elementType": json_scalar,
        "elementRole": json_scalar,
    },
)
detail = st.one_of(st.none(), st.lists(detail_item, max_size=4), json_scalar)


def new_events(offset: st.SearchStrategy[Any] = offsets) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "metadata": st.fixed_dictionaries(
                {"offset": offset}, optional={"uniqueEventId": st.one_of(odd_text, json_scalar)}
            ),
        },
        optional={
            "moduleName": st.one_of(st.sampled_from(["RESERVATION", "Profile", "14"]), odd_text, json_scalar),
            "eventName": st.one_of(st.sampled_from(["UPDATE PROFILE", "check in"]), odd_text, json_scalar),
            "primaryKey": st.one_of(odd_text, json_scalar),
            "timestamp": timestamps,
            "hotelId": st.one_of(odd_text, json_scalar),
            "publisherId": json_scalar,
            "actionInstanceId": json_scalar,
            "detail": detail,
        },
    )


# Mostly valid events: the required fields readable, everything else anything the protocol allows.
name_text = texts(1, 20).filter(lambda t: bool(t.split()))
id_text = st.one_of(texts(1, 20).filter(lambda t: bool(t.strip())), st.integers(0))
good_timestamps = st.one_of(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)).map(lambda d: d.isoformat()),
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2049, 12, 31), timezones=st.just(UTC)
    ).map(lambda d: d.strftime("%d-%b-%y %I.%M.%S.%f %p").upper()),
    st.integers(min_value=0, max_value=4_000_000_000),
)
good_detail_item = st.fixed_dictionaries(
    {"elementName": name_text},
    optional={
        "oldValue": st.one_of(
            st.none(), odd_text, st.integers(), st.floats(allow_nan=False, allow_infinity=False)
        ),
        "newValue": st.one_of(st.none(), odd_text, st.integers(), st.booleans()),
        "scopeFrom": st.one_of(st.none(), st.dates().map(str), odd_text),
        "scopeTo": st.one_of(st.none(), st.dates().map(lambda d: d.strftime("%Y%m%d")), odd_text),
        "elementSequence": st.one_of(st.none(), st.integers(0), id_text),
        "elementType": st.one_of(st.none(), id_text),
        "elementRole": st.one_of(st.none(), id_text),
    },
)
good_new_events = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"offset": st.integers(min_value=0, max_value=10**20 - 1).map(str)},
            optional={"uniqueEventId": st.one_of(st.none(), st.just(""), id_text)},
        ),
        "moduleName": st.one_of(
            st.sampled_from(["RESERVATION", "Profile", "BlockOffsets", 14, "16"]), name_text
        ),
        "eventName": name_text,
        "primaryKey": id_text,
        "timestamp": good_timestamps,
    },
    optional={
        "hotelId": st.one_of(st.none(), texts(1, 20)),
        "publisherId": st.one_of(st.none(), id_text),
        "actionInstanceId": st.one_of(st.none(), id_text),
        "detail": st.one_of(st.none(), st.lists(good_detail_item, max_size=5)),
    },
)


def poll_items() -> st.SearchStrategy[Any]:
    header = st.fixed_dictionaries(
        {},
        optional={
            "moduleName": st.one_of(st.sampled_from(["Reservation", 14, "16"]), json_scalar),
            "actionType": st.one_of(st.sampled_from(["UPDATE PROFILE"]), odd_text, json_scalar),
            "primaryKey": st.one_of(odd_text, json_scalar),
            "createdDateTime": timestamps,
            "hotelId": st.one_of(odd_text, json_scalar),
            "publisherId": json_scalar,
            "actionId": json_scalar,
        },
    )
    item = st.fixed_dictionaries(
        {"businessEvent": st.fixed_dictionaries({"header": header}, optional={"details": detail})},
        optional={
            "businessEventId": st.one_of(
                st.fixed_dictionaries({"id": st.one_of(odd_text, json_scalar)}), odd_text, json_scalar
            )
        },
    )
    return st.one_of(item, json_scalar)


def check_message(event: CanonicalEvent) -> None:
    """What every built message must satisfy before it goes to SQS."""
    body = event.to_json()
    assert body.isascii()
    document = json.loads(body)
    VALIDATOR.validate(document)
    assert CanonicalEvent.from_json(body) == event
    assert SQS_ID.fullmatch(event.deduplication_id())
    assert SQS_ID.fullmatch(event.message_group_id())
    attributes = event.attribute_values()
    for value in attributes.values():
        value.encode("utf-8")  # SQS accepts it: no lone surrogate left
    assert message_size(body, attributes) > 0


@PROPERTY_SETTINGS
@given(new_event=st.one_of(new_events(), good_new_events, good_new_events))
def test_any_stream_frame_gives_a_valid_message_or_a_documented_outcome(new_event: dict[str, Any]) -> None:
    core = StreamProtocol(token="t", app_key="k")
    core.start(0.0)
    core.receive('{"type":"connection_ack"}', 0.0)
    core.send_subscribe(SubscriptionInput(CHAIN), 0.0)
    frame = json.dumps({"id": "1", "type": "next", "payload": {"data": {"newEvent": new_event}}})
    (outcome,) = core.receive(frame, 1.0)  # never raises
    assert isinstance(outcome, EventReceived | UnreadableEvent), outcome
    if isinstance(outcome, UnreadableEvent):
        return
    try:
        event = from_stream(outcome.new_event, CHAIN, RELAYED)
    except MalformedEvent:  # the one documented outcome besides a message
        return
    assert event.offset == str(outcome.offset)
    check_message(event)


good_poll_items = st.fixed_dictionaries(
    {
        "businessEvent": st.fixed_dictionaries(
            {
                "header": st.fixed_dictionaries(
                    {
                        "moduleName": st.sampled_from(["Reservation", 14, "16", "PROFILE"]),
                        "actionType": name_text,
                        "primaryKey": id_text,
                        "createdDateTime": st.one_of(
                            good_timestamps,
                            st.datetimes(min_value=datetime(1900, 1, 1)).map(
                                lambda d: d.strftime("%Y-%m-%d %H:%M:%S.0")
                            ),
                        ),
                    },
                    optional={
                        "hotelId": st.one_of(st.none(), texts(1, 20)),
                        "publisherId": st.one_of(st.none(), id_text),
                        "actionId": st.one_of(st.none(), id_text),
                        "parentActionId": st.one_of(st.none(), id_text),
                    },
                )
            },
            optional={
                "details": st.one_of(
                    st.none(),
                    st.lists(
                        good_detail_item.map(
                            lambda d: {("dataElement" if k == "elementName" else k): v for k, v in d.items()}
                        ),
                        max_size=5,
                    ),
                )
            },
        )
    },
    optional={"businessEventId": st.one_of(st.fixed_dictionaries({"id": id_text}), id_text, st.none())},
)


@PROPERTY_SETTINGS
@given(
    item=st.one_of(poll_items(), good_poll_items, good_poll_items),
    stand_in=st.one_of(st.none(), st.uuids().map(lambda u: u.hex)),
)
def test_any_poll_item_gives_a_valid_message_or_malformed(item: Any, stand_in: str | None) -> None:
    item = json.loads(json.dumps(item))  # as the Poll API client reads it: from JSON text
    try:
        event = from_poll(item, CHAIN, RELAYED, stand_in_id=stand_in)
    except MalformedEvent:  # the one documented outcome besides a message
        return
    check_message(event)


def _lookalike_stream_event(offset: int, uid: str | None, value: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"offset": str(offset)}
    if uid is not None:
        metadata["uniqueEventId"] = uid
    event = {
        "metadata": metadata,
        "moduleName": "PROFILE",
        "eventName": "UPDATE PROFILE",
        "primaryKey": "4711",
        "timestamp": "2026-11-25T10:15:38.5Z",
        "hotelId": "H1",
        "publisherId": "57489",
        "detail": [{"elementName": "VIP", "oldValue": "", "newValue": value}],
    }
    decoded: dict[str, Any] = json.loads(json.dumps(event))  # as it arrives: from JSON text
    return decoded


@PROPERTY_SETTINGS
@given(
    offsets_=st.lists(st.integers(min_value=0, max_value=10**20 - 1), min_size=2, max_size=8, unique=True),
    uids=st.lists(st.one_of(st.none(), texts(1, 8)), min_size=8, max_size=8),
    value=odd_text,
)
def test_distinct_stream_events_never_share_a_deduplication_id(
    offsets_: list[int], uids: list[str | None], value: str
) -> None:
    # Same content (one content key), distinct offsets: distinct events, distinct ids.
    events = []
    for offset, uid in zip(offsets_, uids, strict=False):
        try:
            events.append(from_stream(_lookalike_stream_event(offset, uid, value), CHAIN, RELAYED))
        except MalformedEvent:
            continue
    assert len({e.deduplication_id() for e in events}) == len(events)
    for event in events:  # a replay of the same event: the same id
        again = from_stream(
            _lookalike_stream_event(int(event.offset or 0), event.unique_event_id, value), CHAIN, RELAYED
        )
        assert again.deduplication_id() == event.deduplication_id()


@PROPERTY_SETTINGS
@given(
    ids=st.lists(st.one_of(texts(1, 12), st.integers()), min_size=2, max_size=8),
    value=odd_text,
)
def test_distinct_poll_events_never_share_a_deduplication_id(ids: list[str | int], value: str) -> None:
    events: dict[str, CanonicalEvent] = {}
    for business_event_id in ids:
        item = {
            "businessEventId": {"id": business_event_id},
            "businessEvent": {
                "header": {
                    "moduleName": "Profile",
                    "actionType": "UPDATE PROFILE",
                    "primaryKey": "4711",
                    "createdDateTime": "2026-11-25 10:15:38.0",
                    "hotelId": "H1",
                    "publisherId": "57489",
                },
                "details": [{"dataElement": "VIP", "oldValue": "", "newValue": value}],
            },
        }
        try:
            event = from_poll(json.loads(json.dumps(item)), CHAIN, RELAYED)
        except MalformedEvent:
            continue
        assert event.business_event_id is not None
        events.setdefault(event.business_event_id, event)
    assert len({e.deduplication_id() for e in events.values()}) == len(events)
    assert len({e.event_key for e in events.values()}) <= 1  # all alike: one content key


@PROPERTY_SETTINGS
@given(steps=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=30))
def test_the_core_reports_each_offset_once_and_never_a_lower_one_as_new(steps: list[int]) -> None:
    # Whatever order the server sends offsets in, an offset is reported as new at most once and
    # never after a higher one: a lower one is a regression, the same one a duplicate.
    core = StreamProtocol(token="t", app_key="k")
    core.start(0.0)
    core.receive('{"type":"connection_ack"}', 0.0)
    core.send_subscribe(SubscriptionInput(CHAIN), 0.0, resume_after=-1)
    reported: list[int] = []
    for offset in steps:
        frame = json.dumps(
            {
                "id": "1",
                "type": "next",
                "payload": {
                    "data": {"newEvent": {"metadata": {"offset": str(offset), "uniqueEventId": "u"}}}
                },
            }
        )
        (outcome,) = core.receive(frame, 1.0)
        assert not isinstance(outcome, ProtocolViolation)
        if isinstance(outcome, EventReceived):
            assert not reported or outcome.offset > reported[-1]
            reported.append(outcome.offset)
        elif isinstance(outcome, DuplicateSkipped):
            assert outcome.offset == reported[-1]
        else:
            assert isinstance(outcome, OffsetRegression)
            assert outcome.offset < reported[-1]
    assert reported == sorted(set(reported))
