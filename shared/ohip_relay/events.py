"""The canonical event: the one message format SQS consumers read, whichever channel carried it.

`from_stream` turns a Streaming API `newEvent` into a `CanonicalEvent`, `from_poll` does the same
for one Poll API `businessEventData` item. Both accept OHIP's variations (numbers as JSON numbers
or strings, the poll module as a name or a number, timestamps with or without a zone, OPERA's
`28-APR-24 06.18.59.028027 AM` timestamp style) and produce one strict shape, described by the
JSON Schema `schemas/relay-event.v1.json` and, for people, by `docs/event-format.md`.

Input that cannot be turned into a valid event raises `MalformedEvent`, whose message names the
field and never its value (event payloads carry personal data), so callers can park it.

Two keys, two purposes (docs/event-format.md, "Which key to use"):

- `event_id` is the event's identity as its source gives it: on the stream, subscription +
  offset + `uniqueEventId`; on the Poll API, subscription + `businessEventId`. Distinct events
  always differ, replays of one event are equal. The FIFO deduplication id, the claim-check object
  name and every "already done" decision within one channel are derived from it.
- `event_key` is a content key: the same for one business change on both channels, and also the
  same for two changes that look alike (the same field set twice within a second). It only ever
  matches one change across the two channels, once per copy (`seen.SeenSet`).

The subscription is the registry entry the event came through (`registry.Subscription.id`). It is
the chain code unless told otherwise, and then every id and key is what it was before there were
subscriptions. A subscription whose id is not its chain code (two OPERA environments with one
chain code in one deployment) puts its id in the event ids, in the content key, and in the
message as `subscriptionId` (docs/event-format.md, "Many chains in one deployment").

Pure code: no I/O, no clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from importlib import resources
from typing import Any, Literal, NamedTuple, cast

from .fastjson import dumps_ascii, dumps_ascii_bytes

SCHEMA_VERSION = 1
SCHEMA_RESOURCE = "schemas/relay-event.v1.json"
KEY_PREFIX = "v1-"
_KEY_DOMAIN = "ohip-relay/event-key/v1"

Source = Literal["stream", "poll"]

# Poll API `header.moduleName` arrives as a name or as a number. The numbers are the positions in
# the module enum of Oracle's Integration Processor API spec (`businessEventModuleType`, in spec
# order); the spec's own example pairs 14 with an UPDATE PROFILE event, which matches. Canonical
# spelling: upper case, words joined by "_" (the stream's event names are upper case too).
MODULES: tuple[str, ...] = (
    "ACTIVITY",
    "AVAILABILITY",
    "BLOCK",
    "BLOCK_OFFSETS",
    "CASHIERING",
    "CATERING",
    "CATERING_NOTES",
    "CONFIGURATION",
    "ECERTIFICATE",
    "ENROLLMENT",
    "HOUSEKEEPING",
    "MR_ENROLLMENT",
    "NIGHT_AUDIT",
    "OWNER_CONTRACT",
    "PROFILE",
    "RATE",
    "RESERVATION",
    "STAY_RECORDS",
)
MODULE_NUMBERS: Mapping[int, str] = dict(enumerate(MODULES))
_MODULES_BY_LETTERS = {name.replace("_", ""): name for name in MODULES}

_CHAIN_CODE = re.compile(r"^[A-Za-z0-9 _%#$&-]{1,20}$")
# The ids `registry.SUBSCRIPTION_ID` accepts (no ":", so an event id names its subscription
# unambiguously). Matched whole: `$` would also let a trailing newline through.
_SUBSCRIPTION_ID = re.compile(r"[A-Za-z0-9 _%#$&-]{1,40}")
_DIGITS = re.compile(r"^[0-9]+$")
_SQS_ID = re.compile(r"^[!-~]{1,128}$")  # FIFO group/dedup ids: printable ASCII, no space
# What SQS accepts in a message attribute value (the XML 1.0 characters): anything else, lone UTF-16
# surrogates among it, becomes U+FFFD there. The body keeps the exact value (JSON-escaped).
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: The longest stream offset accepted (ohip-api.md 1, "Subscribing": up to 20 digits, "0" included).
OFFSET_MAX_DIGITS = 20
STREAM_ID_PREFIX = "stream:"
POLL_ID_PREFIX = "poll:"
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_ISO_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?$"
)
# OPERA/Oracle TIMESTAMP text, e.g. "28-APR-24 06.18.59.028027 AM" (two- or four-digit year).
_ORACLE_TIME = re.compile(
    r"^(\d{1,2})-([A-Za-z]{3})-(\d{2}|\d{4})[ T]+(\d{1,2})[.:](\d{2})[.:](\d{2})(?:[.,](\d{1,9}))?"
    r"\s*([AaPp][Mm])?\s*([Zz]|UTC|GMT|[+-]\d{2}:?\d{2})?$"
)
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})(?:[T ].*)?$")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")
# Canonical spellings of the names seen so far (event, element and module names repeat endlessly);
# bounded, so that a stream of ever new names cannot grow them without limit.
_CACHE_LIMIT = 4096
_NAMES: dict[str, str] = {}
_MODULE_NAMES: dict[str, str] = {}
_SCOPE_DATES: dict[str, str] = {}  # scope date as sent -> as published (a few hundred dates repeat)
_CHAIN_CODES_SEEN: set[str] = set()
_SUBSCRIPTIONS_SEEN: set[str] = set()


class MalformedEvent(ValueError):
    """An OHIP event (or a relay message) that cannot be read. The message names the field and
    what is wrong with it, never the value, so it is safe to log."""

    def __init__(self, field: str, problem: str = "missing or invalid") -> None:
        super().__init__(f"malformed event: {field}: {problem}")
        self.field = field
        self.problem = problem


class DetailElement(NamedTuple):
    """One data element of the event. `old_value`/`new_value` are "" when OHIP sends none.

    A named tuple rather than a frozen dataclass: an event carries a dozen of them and a frozen
    dataclass pays one `object.__setattr__` per field (2.4 against 0.7 microseconds each here).
    """

    element_name: str
    old_value: str = ""
    new_value: str = ""
    scope_from: str | None = None
    scope_to: str | None = None
    element_sequence: str | None = None
    element_type: str | None = None
    element_role: str | None = None

    @property
    def changed(self) -> bool:
        return _comparable(self.old_value) != _comparable(self.new_value)

    def to_dict(self) -> dict[str, str]:
        out = {"elementName": self.element_name, "oldValue": self.old_value, "newValue": self.new_value}
        if self.scope_from is not None:
            out["scopeFrom"] = self.scope_from
        if self.scope_to is not None:
            out["scopeTo"] = self.scope_to
        if self.element_sequence is not None:
            out["elementSequence"] = self.element_sequence
        if self.element_type is not None:
            out["elementType"] = self.element_type
        if self.element_role is not None:
            out["elementRole"] = self.element_role
        return out


@dataclass(frozen=True)
class CanonicalEvent:
    """The SQS message body (schemaVersion 1). Times are UTC, truncated to milliseconds."""

    event_key: str
    event_id: str
    source: Source
    chain_code: str
    hotel_id: str | None
    module_name: str
    event_name: str
    primary_key: str
    offset: str | None  # stream only
    unique_event_id: str | None  # stream only, when OHIP sent one
    business_event_id: str | None  # poll only, when OHIP sent one
    publisher_id: str | None
    action_instance_id: str | None
    occurred_at: datetime
    relayed_at: datetime
    detail: tuple[DetailElement, ...] = ()
    schema_version: int = SCHEMA_VERSION
    # The registry subscription the event came through, only when its id is not `chain_code` (as
    # needed when one deployment serves one chain code in two OPERA environments); None otherwise.
    subscription_id: str | None = None

    @property
    def subscription(self) -> str:
        """The subscription the event came through: `subscription_id`, or else the chain code."""
        return self.chain_code if self.subscription_id is None else self.subscription_id

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schemaVersion": self.schema_version,
            "eventKey": self.event_key,
            "eventId": self.event_id,
            "source": self.source,
            "chainCode": self.chain_code,
            "hotelId": self.hotel_id,
            "moduleName": self.module_name,
            "eventName": self.event_name,
            "primaryKey": self.primary_key,
            "offset": self.offset,
            "uniqueEventId": self.unique_event_id,
            "businessEventId": self.business_event_id,
            "publisherId": self.publisher_id,
            "actionInstanceId": self.action_instance_id,
            "occurredAt": format_instant(self.occurred_at),
            "relayedAt": format_instant(self.relayed_at),
            "detail": [element.to_dict() for element in self.detail],
        }
        if self.subscription_id is None:
            return out
        # Only for a subscription whose id is not its chain code: right after `chainCode`.
        items = list(out.items())
        at = items.index(("chainCode", self.chain_code)) + 1
        return dict([*items[:at], ("subscriptionId", self.subscription_id), *items[at:]])

    def to_json(self) -> str:
        """Compact JSON, keys in the documented order, ASCII only (always a valid SQS body)."""
        return dumps_ascii(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> CanonicalEvent:
        """Read a message body written by `to_json`; raises `MalformedEvent`."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise MalformedEvent("body", "not JSON") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> CanonicalEvent:
        if not isinstance(data, Mapping):
            raise MalformedEvent("body", "not an object")
        if data.get("schemaVersion") != SCHEMA_VERSION:
            raise MalformedEvent("schemaVersion", "unsupported version")
        unknown = sorted(set(data) - _TOP_FIELDS)
        if unknown:
            raise MalformedEvent(str(unknown[0]), "unknown field")
        source = data.get("source")
        if source not in ("stream", "poll"):
            raise MalformedEvent("source")
        key = _text(data.get("eventKey"), "eventKey")
        if not _SQS_ID.match(key):
            raise MalformedEvent("eventKey")
        detail = data.get("detail")
        if not isinstance(detail, list):
            raise MalformedEvent("detail")
        chain_code = _text(data.get("chainCode"), "chainCode")
        subscription_id = _opt_text(data.get("subscriptionId"), "subscriptionId")
        if subscription_id is not None and not _SUBSCRIPTION_ID.fullmatch(subscription_id):
            raise MalformedEvent("subscriptionId")
        if subscription_id == chain_code:  # the same as leaving it out
            subscription_id = None
        scope = chain_code if subscription_id is None else subscription_id
        offset = _opt_text(data.get("offset"), "offset")
        unique_event_id = _opt_text(data.get("uniqueEventId"), "uniqueEventId")
        business_event_id = _opt_text(data.get("businessEventId"), "businessEventId")
        event_id = _opt_text(data.get("eventId"), "eventId")
        if event_id is None:  # a message of a relay from before `eventId`: derived the same way
            if source == "stream" and offset is not None:
                event_id = stream_event_id(scope, offset, unique_event_id)
            elif source == "poll" and business_event_id is not None:
                event_id = poll_event_id(scope, business_event_id)
            else:  # a poll message of an older relay carries no source id: its content key stands in
                event_id = f"{POLL_ID_PREFIX}{scope}:~{key}"
        return cls(
            event_key=key,
            event_id=event_id,
            source=cast(Source, source),
            chain_code=chain_code,
            hotel_id=_opt_text(data.get("hotelId"), "hotelId"),
            module_name=_text(data.get("moduleName"), "moduleName"),
            event_name=_text(data.get("eventName"), "eventName"),
            primary_key=_text(data.get("primaryKey"), "primaryKey"),
            offset=offset,
            unique_event_id=unique_event_id,
            business_event_id=business_event_id,
            publisher_id=_opt_text(data.get("publisherId"), "publisherId"),
            action_instance_id=_opt_text(data.get("actionInstanceId"), "actionInstanceId"),
            occurred_at=_instant_field(data.get("occurredAt"), "occurredAt"),
            relayed_at=_instant_field(data.get("relayedAt"), "relayedAt"),
            detail=tuple(_detail_from_dict(item, i) for i, item in enumerate(detail)),
            subscription_id=subscription_id,
        )

    def message_attributes(self) -> dict[str, dict[str, str]]:
        """SQS message attributes (boto3 shape) consumers can filter on. `hotelId` is left out
        for chain-level events: SQS does not accept empty attribute values."""
        return {
            name: {"DataType": "Number" if name == "schemaVersion" else "String", "StringValue": value}
            for name, value in self.attribute_values().items()
        }

    def attribute_values(self) -> dict[str, str]:
        """The values of `message_attributes()` by name (what `OutboundMessage.attributes` takes)."""
        attributes = {
            "eventName": self.event_name,
            "moduleName": self.module_name,
            "hotelId": self.hotel_id,
            "source": self.source,
        }
        out = {k: sqs_text(v) for k, v in attributes.items() if v}
        out["schemaVersion"] = str(self.schema_version)
        return out

    def message_group_id(self) -> str:
        """FIFO message group: the resource (hotel + primary key), so one resource stays in order.
        Chain-level events use "*" as hotel. Ids SQS would refuse become a hash of themselves."""
        group = f"{self.hotel_id or '*'}:{self.primary_key}"
        if _SQS_ID.match(group):
            return group
        return "h-" + hashlib.sha256(group.encode("utf-8", "surrogatepass")).hexdigest()

    def deduplication_id(self) -> str:
        """FIFO deduplication id and claim-check name: `i-` + SHA-256 (hex) of `event_id`, the
        event's identity (66 characters, within SQS's limits). Never the content key: two events
        that look alike are two messages."""
        return deduplication_id(self.event_id)

    def changed_detail(self) -> tuple[DetailElement, ...]:
        """The elements whose value changed (a delta=false stream frame also lists the others)."""
        return tuple(element for element in self.detail if element.changed)


_TOP_FIELDS = frozenset(
    {
        "schemaVersion",
        "eventKey",
        "eventId",
        "businessEventId",
        "source",
        "chainCode",
        "subscriptionId",
        "hotelId",
        "moduleName",
        "eventName",
        "primaryKey",
        "offset",
        "uniqueEventId",
        "publisherId",
        "actionInstanceId",
        "occurredAt",
        "relayedAt",
        "detail",
    }
)


# ---------------------------------------------------------------------------------------------
# Normalisers


def from_stream(
    new_event: Mapping[str, Any],
    chain_code: str,
    relayed_at: datetime,
    *,
    naive_tz: tzinfo = UTC,
    subscription: str | None = None,
) -> CanonicalEvent:
    """A Streaming API event as a canonical event.

    `new_event` is the `newEvent` object; a whole `next` frame or its `payload.data` is unwrapped.
    A timestamp without a zone is read in `naive_tz` (UTC unless told otherwise; use the same zone
    for both channels or the event keys of the two channels stop matching).
    `subscription` is the registry entry's id (None: the chain code, the single-chain shape); the
    event's identity is `stream:<subscription>:<offset>:<uniqueEventId>`.
    """
    event = _unwrap_stream(new_event)
    metadata = event.get("metadata")
    if type(metadata) is not dict and not isinstance(metadata, Mapping):  # dict first: an ABC check is slow
        raise MalformedEvent("metadata")
    offset = _id_text(metadata.get("offset"), "metadata.offset")
    if offset is None or not _DIGITS.match(offset):
        raise MalformedEvent("metadata.offset", "not a string of digits")
    if len(offset) > OFFSET_MAX_DIGITS:  # also keeps int() far from its 4,300-digit limit
        raise MalformedEvent("metadata.offset", f"longer than {OFFSET_MAX_DIGITS} digits")
    offset = str(int(offset))
    # Optional: the offset identifies the event within the chain; the id adds to it when sent.
    unique_event_id = _id_text(metadata.get("uniqueEventId"), "metadata.uniqueEventId")
    return _build(
        source="stream",
        chain_code=chain_code,
        relayed_at=relayed_at,
        hotel_id=event.get("hotelId"),
        module=event.get("moduleName"),
        event_name=event.get("eventName"),
        primary_key=event.get("primaryKey"),
        publisher_id=event.get("publisherId"),
        action_instance_id=event.get("actionInstanceId"),
        timestamp=event.get("timestamp"),
        timestamp_field="timestamp",
        detail=event.get("detail"),
        detail_field="detail",
        naive_tz=naive_tz,
        offset=offset,
        unique_event_id=unique_event_id,
        business_event_id=None,
        event_id=stream_event_id(
            chain_code if subscription is None else subscription, offset, unique_event_id
        ),
        subscription=subscription,
    )


def from_poll(
    business_event_data_item: Mapping[str, Any],
    chain_code: str,
    relayed_at: datetime,
    *,
    naive_tz: tzinfo = UTC,
    stand_in_id: str | None = None,
    subscription: str | None = None,
) -> CanonicalEvent:
    """One item of a Poll API `businessEventData` list as a canonical event.

    `createdDateTime` carries no zone; it is read in `naive_tz` (UTC unless told otherwise).
    The event's identity is its `businessEventId` (`{"id": "..."}`; a bare string or number is
    read too), as `poll:<subscription>:<businessEventId>`. An item without one is still an event
    the Poll API has dequeued: it is published under `stand_in_id` (the caller's unique token, for
    example a UUID, so that it can never be merged with another event), as
    `poll:<subscription>:~<stand_in_id>`, and is malformed only when no stand-in is given.
    `subscription` is the registry entry's id (None: the chain code, the single-chain shape).
    """
    item = business_event_data_item
    if not isinstance(item, Mapping):
        raise MalformedEvent("businessEventData[]", "not an object")
    business_event = item.get("businessEvent", item if "header" in item else None)
    if not isinstance(business_event, Mapping):
        raise MalformedEvent("businessEvent")
    header = business_event.get("header")
    if not isinstance(header, Mapping):
        raise MalformedEvent("businessEvent.header")
    business_event_id = business_event_id_of(item)
    scope = chain_code if subscription is None else subscription
    if business_event_id is not None:
        event_id = poll_event_id(scope, business_event_id)
    elif stand_in_id:
        event_id = f"{POLL_ID_PREFIX}{scope}:~{stand_in_id}"
    else:
        raise MalformedEvent("businessEventId")
    return _build(
        source="poll",
        chain_code=chain_code,
        relayed_at=relayed_at,
        hotel_id=header.get("hotelId"),
        module=header.get("moduleName"),
        event_name=header.get("actionType"),
        primary_key=header.get("primaryKey"),
        publisher_id=header.get("publisherId"),
        action_instance_id=header.get("actionId"),
        timestamp=header.get("createdDateTime"),
        timestamp_field="header.createdDateTime",
        detail=business_event.get("details"),
        detail_field="details",
        naive_tz=naive_tz,
        offset=None,
        unique_event_id=None,
        business_event_id=business_event_id,
        event_id=event_id,
        subscription=subscription,
    )


def business_event_id_of(item: Mapping[str, Any]) -> str | None:
    """The `businessEventId` of a Poll API item as text (None when absent or empty). Raises
    `MalformedEvent` for a value that is neither a string, an integer nor `{"id": ...}`."""
    value = item.get("businessEventId")
    if isinstance(value, Mapping):
        value = value.get("id")
    return _id_text(value, "businessEventId")


def stream_event_id(subscription: str, offset: str, unique_event_id: str | None) -> str:
    """A stream event's identity: `stream:<subscription>:<offset>:<uniqueEventId or nothing>`.
    `subscription` is the chain code in the single-chain shape (and for every registry entry whose
    id is its chain code). The offset identifies the event within the subscription's log (offsets
    of two OPERA environments overlap); `uniqueEventId` keeps two events apart if OHIP ever numbers
    its log again from a lower offset (a reset)."""
    return f"{STREAM_ID_PREFIX}{subscription}:{offset}:{unique_event_id or ''}"


def poll_event_id(subscription: str, business_event_id: str) -> str:
    """A Poll API event's identity: `poll:<subscription>:<businessEventId>` (`subscription` as for
    `stream_event_id`)."""
    return f"{POLL_ID_PREFIX}{subscription}:{business_event_id}"


def deduplication_id(event_id: str) -> str:
    """The SQS deduplication id (and claim-check name) of an event identity: `i-` + SHA-256 hex."""
    return "i-" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()


def sqs_text(value: str) -> str:
    """`value` with every character SQS refuses in an attribute value (control characters other
    than tab/newline/return, lone surrogates, U+FFFE/U+FFFF) replaced by U+FFFD."""
    if value.isascii() and value.isprintable():  # the common case, without a regex
        return value
    return _NOT_SQS_TEXT.sub("\ufffd", value)


def _unwrap_stream(value: object) -> Mapping[str, Any]:
    for _ in range(4):  # next frame -> payload -> data -> newEvent
        if type(value) is not dict and not isinstance(value, Mapping):
            break
        if "metadata" in value or "eventName" in value:
            return value
        value = value.get("newEvent", value.get("data", value.get("payload")))
    raise MalformedEvent("newEvent", "not an object")


def _build(
    *,
    source: Source,
    chain_code: str,
    relayed_at: datetime,
    hotel_id: object,
    module: object,
    event_name: object,
    primary_key: object,
    publisher_id: object,
    action_instance_id: object,
    timestamp: object,
    timestamp_field: str,
    detail: object,
    detail_field: str,
    naive_tz: tzinfo,
    offset: str | None,
    unique_event_id: str | None,
    business_event_id: str | None,
    event_id: str,
    subscription: str | None,
) -> CanonicalEvent:
    if type(chain_code) is not str or chain_code not in _CHAIN_CODES_SEEN:
        if not isinstance(chain_code, str) or not _CHAIN_CODE.match(chain_code):
            raise ValueError("chain_code must be 1-20 characters of A-Z a-z 0-9 space _ % # $ & -")
        if len(_CHAIN_CODES_SEEN) < _CACHE_LIMIT:
            _CHAIN_CODES_SEEN.add(chain_code)
    if subscription is not None and (
        type(subscription) is not str or subscription not in _SUBSCRIPTIONS_SEEN
    ):
        if not isinstance(subscription, str) or not _SUBSCRIPTION_ID.fullmatch(subscription):
            raise ValueError("subscription must be 1-40 characters of A-Z a-z 0-9 space _ % # $ & -")
        if len(_SUBSCRIPTIONS_SEEN) < _CACHE_LIMIT:
            _SUBSCRIPTIONS_SEEN.add(subscription)
    subscription_id = None if subscription == chain_code else subscription
    if relayed_at.tzinfo is None or relayed_at.utcoffset() is None:
        raise ValueError("relayed_at must be timezone-aware")
    stream = source == "stream"
    prefix = "" if stream else "header."
    hotel = _id_text(hotel_id, prefix + "hotelId")
    if hotel is not None and len(hotel) > 20:
        raise MalformedEvent(prefix + "hotelId", "longer than 20 characters")
    name = _NAMES.get(event_name) if type(event_name) is str else None
    if name is None:
        name = _cached_name(event_name, "eventName" if stream else "header.actionType")
    primary = _id_text(primary_key, prefix + "primaryKey")
    if primary is None:
        raise MalformedEvent(prefix + "primaryKey")
    publisher = _id_text(publisher_id, prefix + "publisherId")
    action = _id_text(action_instance_id, "actionInstanceId" if stream else "header.actionId")
    occurred_at = _millis(parse_timestamp(timestamp, timestamp_field, naive_tz=naive_tz))
    if detail is None:
        detail = []
    if not isinstance(detail, list):
        raise MalformedEvent(detail_field, "not a list")
    elements = tuple([_detail_from_ohip(item, detail_field, i) for i, item in enumerate(detail)])
    key = event_key(
        hotel_id=hotel,
        event_name=name,
        primary_key=primary,
        publisher_id=publisher,
        occurred_at=occurred_at,
        detail=elements,
        subscription_id=subscription_id,
    )
    return CanonicalEvent(
        event_key=key,
        event_id=event_id,
        source=source,
        chain_code=chain_code,
        hotel_id=hotel,
        module_name=canonical_module(module, prefix + "moduleName"),
        event_name=name,
        primary_key=primary,
        offset=offset,
        unique_event_id=unique_event_id,
        business_event_id=business_event_id,
        publisher_id=publisher,
        action_instance_id=action,
        occurred_at=occurred_at,
        relayed_at=_millis(relayed_at.astimezone(UTC)),
        detail=elements,
        subscription_id=subscription_id,
    )


def _detail_from_ohip(item: object, detail_field: str, index: int) -> DetailElement:
    # The hot path of both channels: field names for error messages are only built when needed,
    # and the common values (strings, nulls) skip the general converters.
    if type(item) is not dict and not isinstance(item, Mapping):  # dict first: an ABC check is slow
        raise MalformedEvent(f"{detail_field}[{index}]", "not an object")
    get = item.get
    name = get("elementName") if "elementName" in item else get("dataElement")
    element_name = _NAMES.get(name) if type(name) is str else None
    if element_name is None:
        element_name = _cached_name(name, f"{detail_field}[{index}].elementName")
    old, new = get("oldValue"), get("newValue")
    if type(old) is not str:
        old = _value_text(old, f"{detail_field}[{index}].oldValue")
    if type(new) is not str:
        new = _value_text(new, f"{detail_field}[{index}].newValue")
    scope_from, scope_to = get("scopeFrom"), get("scopeTo")
    sequence, kind, role = get("elementSequence"), get("elementType"), get("elementRole")
    # tuple.__new__ with the fields in order: what DetailElement(...) does, without its keyword call
    return _new_detail(
        DetailElement,
        (
            element_name,
            old,
            new,
            None if scope_from is None else _scope_date(scope_from, f"{detail_field}[{index}].scopeFrom"),
            None if scope_to is None else _scope_date(scope_to, f"{detail_field}[{index}].scopeTo"),
            None if sequence is None else _id_text(sequence, f"{detail_field}[{index}].elementSequence"),
            None if kind is None else _id_text(kind, f"{detail_field}[{index}].elementType"),
            None if role is None else _id_text(role, f"{detail_field}[{index}].elementRole"),
        ),
    )


_new_detail = tuple.__new__


def _cached_name(value: object, field: str) -> str:
    """`canonical_event_name`, remembered for string values."""
    name = canonical_event_name(value, field)
    if type(value) is str and len(_NAMES) < _CACHE_LIMIT:
        _NAMES[value] = name
    return name


def _detail_from_dict(item: object, index: int) -> DetailElement:
    where = f"detail[{index}]"
    if not isinstance(item, Mapping):
        raise MalformedEvent(where, "not an object")
    unknown = sorted(set(item) - _DETAIL_FIELDS)
    if unknown:
        raise MalformedEvent(f"{where}.{unknown[0]}", "unknown field")
    old, new = item.get("oldValue"), item.get("newValue")
    if not isinstance(old, str) or not isinstance(new, str):
        raise MalformedEvent(where + ".oldValue/newValue")
    return DetailElement(
        element_name=_text(item.get("elementName"), where + ".elementName"),
        old_value=old,
        new_value=new,
        scope_from=_opt_text(item.get("scopeFrom"), where + ".scopeFrom"),
        scope_to=_opt_text(item.get("scopeTo"), where + ".scopeTo"),
        element_sequence=_opt_text(item.get("elementSequence"), where + ".elementSequence"),
        element_type=_opt_text(item.get("elementType"), where + ".elementType"),
        element_role=_opt_text(item.get("elementRole"), where + ".elementRole"),
    )


_DETAIL_FIELDS = frozenset(
    {
        "elementName",
        "oldValue",
        "newValue",
        "scopeFrom",
        "scopeTo",
        "elementSequence",
        "elementType",
        "elementRole",
    }
)


# ---------------------------------------------------------------------------------------------
# Field normalisation


def canonical_module(value: object, field: str = "moduleName") -> str:
    """A module name or number in its one spelling: `"Reservation"`, `"RESERVATION"` and `16` all
    give `"RESERVATION"`; `"BlockOffsets"` gives `"BLOCK_OFFSETS"`. Unknown numbers stay as their
    digits (`"42"`); unknown names are upper-cased with words joined by "_"."""
    if type(value) is str:
        known = _MODULE_NAMES.get(value)
        if known is not None:
            return known
    number = _as_int(value)
    if number is not None:
        if number < 0:
            raise MalformedEvent(field)
        return MODULE_NUMBERS.get(number, str(number))
    if not isinstance(value, str):
        raise MalformedEvent(field)
    words = [w for w in _NON_WORD.split(_CAMEL.sub(" ", value.strip())) if w]
    if not words:
        raise MalformedEvent(field)
    spelled = "_".join(words).upper()
    if len(spelled) > 80:
        raise MalformedEvent(field, "longer than 80 characters")
    module = _MODULES_BY_LETTERS.get(spelled.replace("_", ""), spelled)
    if type(value) is str and len(_MODULE_NAMES) < _CACHE_LIMIT:
        _MODULE_NAMES[value] = module
    return module


def canonical_event_name(value: object, field: str = "eventName") -> str:
    """Upper case, single spaces: `"update  profile"` gives `"UPDATE PROFILE"`."""
    if not isinstance(value, str) or not value.split():
        raise MalformedEvent(field)
    name = " ".join(value.split()).upper()
    if len(name) > 200:
        raise MalformedEvent(field, "longer than 200 characters")
    return name


def canonical_element_name(value: object, field: str = "elementName") -> str:
    """Same rule as event names; both channels spell elements in upper case."""
    return canonical_event_name(value, field)


def parse_timestamp(value: object, field: str = "timestamp", *, naive_tz: tzinfo = UTC) -> datetime:
    """An OHIP timestamp as an aware UTC datetime.

    Accepts ISO 8601 (`T` or space, any fraction, `Z`/offset or none), Oracle's
    `28-APR-24 06.18.59.028027 AM` style, and epoch seconds or milliseconds as a number.
    A value without a zone is read in `naive_tz`.
    """
    number = None if isinstance(value, str) else _as_number(value)
    if number is not None:
        seconds = number / 1000 if abs(number) >= 100_000_000_000 else number
        try:
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
        except OverflowError:
            raise MalformedEvent(field, "out of range") from None
    if not isinstance(value, str):
        raise MalformedEvent(field)
    text = value.strip()
    iso = _ISO_TIME.match(text)
    oracle = None if iso else _ORACLE_TIME.match(text)
    try:
        if iso:
            year, month, day, hour, minute = (int(g) for g in iso.group(1, 2, 3, 4, 5))
            second, fraction, zone = int(iso.group(6) or 0), iso.group(7), iso.group(8)
        elif oracle:
            day, hour, minute, second = (int(g) for g in oracle.group(1, 4, 5, 6))
            month = _MONTHS.get(oracle.group(2).upper(), 0)
            year = int(oracle.group(3))
            if year < 100:  # Oracle's RR rule
                year += 2000 if year < 50 else 1900
            hour = _twelve_hour(hour, oracle.group(8))
            fraction, zone = oracle.group(7), oracle.group(9)
        else:
            raise MalformedEvent(field, "not a recognised timestamp format")
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        parsed = datetime(year, month, day, hour, minute, second, micro)
        zone_info = _zone(zone, naive_tz)
    except MalformedEvent:
        raise
    except ValueError:
        raise MalformedEvent(field, "not a valid date and time") from None
    return parsed.replace(tzinfo=zone_info).astimezone(UTC)


def format_instant(value: datetime) -> str:
    """`2026-11-25T10:15:38.123Z`: UTC, milliseconds, `Z`."""
    utc = value.astimezone(UTC)
    if utc.year >= 1000:  # isoformat is much cheaper than strftime and the same from year 1000 on
        return utc.isoformat(timespec="milliseconds")[:23] + "Z"
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def _twelve_hour(hour: int, meridiem: str | None) -> int:
    if meridiem is None:
        return hour
    if not 1 <= hour <= 12:
        raise ValueError("hour out of range for a 12-hour clock")
    return hour % 12 + (12 if meridiem.upper() == "PM" else 0)


def _zone(text: str | None, naive_tz: tzinfo) -> tzinfo:
    if text is None:
        return naive_tz
    if text.upper() in ("Z", "UTC", "GMT"):
        return UTC
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError("offset out of range")
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if text[0] == "-" else offset)


def _instant_field(value: object, field: str) -> datetime:
    if not isinstance(value, str) or not value.endswith("Z"):
        raise MalformedEvent(field, "not an ISO 8601 UTC time")
    return _millis(parse_timestamp(value, field))


def _millis(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _scope_date(value: object, field: str) -> str | None:
    """Scope dates as `YYYY-MM-DD` when recognisable (`2021-06-17`, `20210617`, with or without a
    time part); anything else is kept as sent rather than dropping the event."""
    if type(value) is str:
        known = _SCOPE_DATES.get(value)
        if known is not None:
            return known
    text = _id_text(value, field)
    if text is None:
        return None
    result = text
    match = _DATE.match(text)
    if match:
        with contextlib.suppress(ValueError):
            result = date(*(int(g) for g in match.groups())).isoformat()
    if type(value) is str and len(_SCOPE_DATES) < _CACHE_LIMIT:
        _SCOPE_DATES[value] = result
    return result


def _as_number(value: object) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return value


def _as_int(value: object) -> int | None:
    """An integer given as a JSON number (integral) or a string of digits; else None."""
    if isinstance(value, str):
        text = value.strip()
        return int(text) if _DIGITS.match(text) else None
    number = _as_number(value)
    if number is None or number != int(number):
        return None
    return int(number)


def _id_text(value: object, field: str) -> str | None:
    """Ids and codes: strings (trimmed) or integral numbers; None or "" means absent."""
    if isinstance(value, str):  # the common case first
        text = value.strip()
        if len(text) > 2000:
            raise MalformedEvent(field, "longer than 2000 characters")
        return text or None
    if value is None:
        return None
    number = _as_int(value)
    if number is None:
        raise MalformedEvent(field, "not a string or an integer")
    return str(number)


def _value_text(value: object, field: str) -> str:
    """Element values: strings as sent; numbers as their JSON text; absent or null as ""."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    number = _as_number(value)
    if number is None:
        raise MalformedEvent(field, "not a string or a number")
    return json.dumps(int(number) if number == int(number) else number)


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedEvent(field)
    return value


def _opt_text(value: object, field: str) -> str | None:
    return None if value is None else _text(value, field)


# ---------------------------------------------------------------------------------------------
# The event key


def _comparable(value: str) -> str:
    # The stream has been seen sending XML-escaped values (&amp;); compare the plain text.
    return html.unescape(value)


def event_key(
    *,
    hotel_id: str | None,
    event_name: str,
    primary_key: str,
    publisher_id: str | None,
    occurred_at: datetime,
    detail: Sequence[DetailElement],
    subscription_id: str | None = None,
) -> str:
    """`v1-` + SHA-256 (hex) of what both channels carry for one business change:

    hotel, event name, primary key, publisher, the instant in UTC truncated to the second, and the
    changed elements (name, scope from/to, old and new value) as a sorted set. Unchanged elements
    (listed by delta=false frames and by the Poll API) do not count. Module, offset,
    uniqueEventId and actionInstanceId/actionId are not used (see docs/event-format.md).
    `subscription_id` (the message's `subscriptionId`: given only when the subscription is not the
    chain code) is appended as an eighth item, so that the keys of two subscriptions never match;
    without it the key is the single-chain key.
    """
    changed_set: set[tuple[str, str, str, str, str]] = set()
    for e in detail:
        old, new = e.old_value, e.new_value
        # _comparable (html.unescape) leaves text without "&" as it is.
        if "&" in old:
            old = _comparable(old)
        if "&" in new:
            new = _comparable(new)
        if old != new:
            changed_set.add((e.element_name, e.scope_from or "", e.scope_to or "", old, new))
    changed = sorted(changed_set)
    utc = occurred_at.astimezone(UTC)
    instant = (
        utc.isoformat(timespec="seconds")[:19] + "Z" if utc.year >= 1000 else f"{utc:%Y-%m-%dT%H:%M:%SZ}"
    )
    material = [
        _KEY_DOMAIN,
        hotel_id or "",
        event_name,
        primary_key,
        publisher_id or "",
        instant,
        [list(element) for element in changed],
    ]
    if subscription_id is not None:
        material.append(subscription_id)
    encoded = dumps_ascii_bytes(material)
    return KEY_PREFIX + hashlib.sha256(encoded).hexdigest()


def load_schema() -> dict[str, Any]:
    """The JSON Schema of the message body, as shipped in the package."""
    text = resources.files("ohip_relay").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return cast(dict[str, Any], json.loads(text))
