"""Delivery accounting by event identity: what the chaos suite and the demo check on the queue.

Every relay message names the event it carries: `eventId` is `stream:<chain>:<offset>:<uniqueEventId
or empty>` for a stream copy and `poll:<chain>:<businessEventId>` for a poll copy; replays of one
event share it, distinct events never do. `eventKey` is a content key: equal for one change on both
channels, and also equal for two lookalike changes (the same change twice within one second), so
counting distinct keys would hide two lookalikes merged into one.

The rule, per content key K: n(K) = events the gateway emitted with key K, d(K) = distinct eventIds
on the queue whose body has key K and that the gateway emitted (with that key). d(K) >= n(K):
nothing merged, nothing lost. (The relay may suppress a replayed stream copy against a poll copy of
a lookalike that the fallback published, each poll copy cancelling one stream copy: the count
still holds, so that is no loss.)

By identity, an emitted event is `missing` when the queue has neither its stream copy (its offset)
nor its poll copy (its businessEventId). A missing event counts as lost only when its key's count
fails too; the others are `covered` (suppressed against a lookalike's poll copy).

Duplicates, by identity: `stream replay` (one stream eventId more than once), `poll repeat` (one
poll eventId more than once), `channel overlap` (distinct eventIds of one key beyond n(K): stream
and poll copies of the same events). A message whose eventId the gateway never emitted, or whose
key is not the one its event was emitted with, is `unexpected` rather than a duplicate.

Bodies of relays from before `eventId` are read by their offset (stream), their businessEventId if
any, or else their key (`poll:<chain>:~<eventKey>`, as the relay itself reads them): such poll
copies of two lookalikes count as one event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ohip_relay.events import from_poll

from .poll import business_event_data
from .source import StoredEvent

STREAM_REPLAY = "stream replay"
POLL_REPEAT = "poll repeat"
CHANNEL_OVERLAP = "channel overlap"
UNDOCUMENTED = "undocumented"  # the kind older runs reported; by identity, such copies are unexpected
DOCUMENTED_KINDS = (STREAM_REPLAY, CHANNEL_OVERLAP, POLL_REPEAT)

STREAM_PREFIX = "stream:"
POLL_PREFIX = "poll:"
KEY_STAND_IN = "~"  # poll:<chain>:~<eventKey>: a poll copy that carries no source id


def stream_event_id(chain: str, offset: int | str, unique_event_id: str | None) -> str:
    return f"{STREAM_PREFIX}{chain}:{int(offset)}:{unique_event_id or ''}"


def poll_event_id(chain: str, business_event_id: str) -> str:
    return f"{POLL_PREFIX}{chain}:{business_event_id}"


@dataclass(frozen=True)
class EmittedEvent:
    """What the gateway emitted, as the accounting needs it."""

    chain: str
    offset: int
    event_key: str
    unique_event_id: str | None = None
    business_event_id: str = ""

    @property
    def stream_id(self) -> str:
        return stream_event_id(self.chain, self.offset, self.unique_event_id)

    @property
    def poll_id(self) -> str:
        return poll_event_id(self.chain, self.business_event_id)


def emitted_event(
    event: StoredEvent, relayed_at: datetime | None = None, *, subscription: str | None = None
) -> EmittedEvent:
    """`event` with its content key, computed by the relay's own code from its Poll API item.
    `subscription`: the registry id the relay serves the chain under when it is not the chain
    code (its eventIds and keys are scoped by it: docs/event-format.md); None: the chain code."""
    at = relayed_at or datetime.now(UTC)
    scope = None if subscription == event.chain else subscription
    key = from_poll(business_event_data(event), event.chain, at, subscription=scope).event_key
    return EmittedEvent(
        scope or event.chain, event.offset, key, event.unique_event_id, str(event.business_event_id)
    )


def emitted_events(events: Iterable[StoredEvent], *, subscription: str | None = None) -> list[EmittedEvent]:
    at = datetime.now(UTC)
    return [emitted_event(event, at, subscription=subscription) for event in events]


def body_event_id(body: Mapping[str, Any]) -> str:
    """The eventId of a message body; for a body without one (an older relay) the id it would
    have had, or its key stand-in (`poll:<chain>:~<eventKey>`)."""
    event_id = body.get("eventId")
    if isinstance(event_id, str) and event_id:
        return event_id
    chain = str(body.get("chainCode") or "")
    offset = body.get("offset")
    if body.get("source") == "stream" and offset is not None and str(offset).isdigit():
        return stream_event_id(chain, str(offset), _text(body.get("uniqueEventId")))
    business_event_id = _text(body.get("businessEventId"))
    if body.get("source") == "poll" and business_event_id:
        return poll_event_id(chain, business_event_id)
    return f"{POLL_PREFIX}{chain}:{KEY_STAND_IN}{body.get('eventKey')}"


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


@dataclass
class Reconciliation:
    emitted: int
    messages: int
    delivered: int  # distinct emitted events accounted for: the sum over keys of min(d, n)
    lost: list[str] = field(default_factory=list)  # stream eventIds of the events counted lost
    missing: list[str] = field(default_factory=list)  # on the queue by neither identity
    unexpected: list[str] = field(default_factory=list)  # eventIds the gateway never emitted so
    duplicates: Counter[str] = field(default_factory=Counter)
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (n, d)

    @property
    def covered(self) -> list[str]:
        """Missing by identity, yet no loss: a stream copy suppressed against a lookalike's poll copy."""
        lost = set(self.lost)
        return [event_id for event_id in self.missing if event_id not in lost]

    @property
    def short_keys(self) -> list[str]:
        """Keys with fewer distinct events on the queue than emitted."""
        return sorted(key for key, (n, d) in self.counts.items() if d < n)


class _Index:
    def __init__(self, emitted: Sequence[EmittedEvent]) -> None:
        self.by_id: dict[str, EmittedEvent] = {}
        self.by_offset: dict[int, list[EmittedEvent]] = {}
        self.by_business_id: dict[str, EmittedEvent] = {}
        self.keys: Counter[str] = Counter()
        for event in emitted:
            self.by_id[event.stream_id] = event
            self.by_offset.setdefault(event.offset, []).append(event)
            if event.business_event_id:
                self.by_id[event.poll_id] = event
                self.by_business_id[event.business_event_id] = event
            self.keys[event.event_key] += 1

    def identify(self, body: Mapping[str, Any]) -> tuple[str, EmittedEvent | None]:
        """(eventId, the emitted event it names or None)."""
        event_id = body.get("eventId")
        if isinstance(event_id, str) and event_id:
            return event_id, self.by_id.get(event_id)
        # an older relay's body: by offset (and uniqueEventId), by businessEventId, or by key only
        offset = body.get("offset")
        if body.get("source") == "stream" and offset is not None and str(offset).isdigit():
            unique = _text(body.get("uniqueEventId"))
            candidates = self.by_offset.get(int(str(offset)), [])
            matched = [e for e in candidates if unique is None or e.unique_event_id == unique]
            if matched:
                return matched[0].stream_id, matched[0]
        business_event_id = _text(body.get("businessEventId"))
        if body.get("source") == "poll" and business_event_id in self.by_business_id:
            event = self.by_business_id[str(business_event_id)]
            return event.poll_id, event
        return body_event_id(body), None


def _is_stand_in(event_id: str) -> bool:
    return event_id.startswith(POLL_PREFIX) and f":{KEY_STAND_IN}" in event_id


def reconcile(emitted: Sequence[EmittedEvent], bodies: Sequence[Mapping[str, Any]]) -> Reconciliation:
    """Account for every emitted event on the queue by identity (see the module docstring)."""
    index = _Index(emitted)
    copies: Counter[str] = Counter()
    ids_of_key: dict[str, set[str]] = {}
    present: set[EmittedEvent] = set()
    unexpected: set[str] = set()
    for body in bodies:
        key = str(body.get("eventKey"))
        event_id, event = index.identify(body)
        if event is not None and event.event_key == key:
            present.add(event)
        elif event is not None:
            unexpected.add(f"{event_id} (key {key}, emitted with key {event.event_key})")
            continue
        elif not (_is_stand_in(event_id) and key in index.keys):
            unexpected.add(event_id if key in index.keys else f"{event_id} (key {key})")
            continue
        copies[event_id] += 1
        ids_of_key.setdefault(key, set()).add(event_id)

    duplicates: Counter[str] = Counter()
    for event_id, n in copies.items():
        if n > 1:
            duplicates[STREAM_REPLAY if event_id.startswith(STREAM_PREFIX) else POLL_REPEAT] += n - 1
    counts: dict[str, tuple[int, int]] = {}
    for key, n in index.keys.items():
        d = len(ids_of_key.get(key, ()))
        counts[key] = (n, d)
        if d > n:
            duplicates[CHANNEL_OVERLAP] += d - n

    missing_events = [e for e in emitted if e not in present]
    missing_by_key: dict[str, list[EmittedEvent]] = {}
    for event in missing_events:
        missing_by_key.setdefault(event.event_key, []).append(event)
    lost: list[str] = []
    for key, (n, d) in counts.items():
        if d < n:
            candidates = sorted(missing_by_key.get(key, []), key=lambda e: e.offset)
            shortfall = n - d
            chosen = candidates[-shortfall:] if len(candidates) >= shortfall else candidates
            lost += [e.stream_id for e in chosen]
            lost += [f"{key}: an event without a missing identity"] * (shortfall - len(chosen))
    return Reconciliation(
        emitted=len(emitted),
        messages=len(bodies),
        delivered=sum(min(n, d) for n, d in counts.values()),
        lost=sorted(lost),
        missing=[e.stream_id for e in missing_events],
        unexpected=sorted(unexpected),
        duplicates=duplicates,
        counts=counts,
    )
