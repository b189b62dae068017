"""One event source feeding both channels, as OPERA does for an environment set up for streaming
and polling.

Every business change appended here gets the next offset of its chain (the Streaming API's
`metadata.offset`, a string of digits compared as an integer) and is also put on the poll queue of
every external system configured for that chain (the Poll API dequeues from there). Events older
than the retention (7 days) are no longer replayed. Time comes from an injectable clock so that
retention can be tested without waiting a week.

Offsets start at `first_offset` (1001 unless configured; per chain when `first_offsets` says so;
0 and 19-20 digit offsets are legal: a Kafka-like log is 64-bit and may start at 0). Offsets
always increase: `jump_offset` makes the next event skip ahead, never back. `reset_offset` is
the one way back and is adversarial: it simulates a reset on OHIP's side (the chain's log is
numbered again from a lower offset; events from before the reset are no longer replayed, though
`all_events` and the poll queues keep them). A relay is right to stop streaming on it.

Many chains cost little: a chain's log is created on its first append or offset change; listening
to an idle chain or reading it (its next offset, its events) creates nothing.
"""

from __future__ import annotations

import bisect
import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

Clock = Callable[[], float]
Listener = Callable[["StoredEvent"], None]
ResetListener = Callable[[str, int], None]  # (chain, the offset the log now restarts from)

RETENTION_SECONDS = 7 * 24 * 3600.0
FIRST_OFFSET = 1001
MAX_OFFSET = 10**20 - 1  # 20 digits: the longest offset the schema's scalar type allows

# How a channel shows a field the event lacks. The Streaming API always answers a selected field
# (GraphQL), with null when there is no value; the Poll API leaves it out ("absent") or sends null.
MissingAs = Literal["absent", "null"]
MISSING_STYLES: tuple[MissingAs, ...] = ("absent", "null")
# Fields an event can lack although the source would normally fill them in (see EventDraft.omit).
OMITTABLE = frozenset({"uniqueEventId", "actionInstanceId", "detail"})


def check_offset(value: object, what: str = "offset") -> int:
    """`value` as an offset (0 to MAX_OFFSET), or ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_OFFSET:
        raise ValueError(f"{what} must be an integer from 0 to {MAX_OFFSET} (at most 20 digits)")
    return value


@dataclass(frozen=True)
class Detail:
    """One changed data element of an event (`detail` on the stream, `details` on the Poll API)."""

    element_name: str
    old_value: str | None = None
    new_value: str | None = None
    scope_from: str | None = None
    scope_to: str | None = None
    element_sequence: str | None = None
    element_type: str | None = None
    element_role: str | None = None
    personal: bool = False  # carries personal data (names, e-mail, phone): tests check masking


@dataclass(frozen=True)
class EventDraft:
    """A business change before the source numbers it.

    The fields after `details` describe adversarial shapes (`adversarial.py`); their defaults give
    the generator's friendly events. `hotel` None is a chain-level event (no hotelId), and
    `publisher_id` None an event without publisherId. `omit` names fields of OMITTABLE the event
    lacks: "uniqueEventId" (stream metadata), "actionInstanceId" (stream; the Poll API's actionId),
    "detail" (no detail list at all, unlike an empty one). `missing_as` is how the Poll API shows a
    missing field (header field, details list, detail value or scope). `null_values`: a detail
    value that is None goes out on the stream as null rather than "".
    """

    hotel: str | None
    module: str  # "RESERVATION", "PROFILE"
    event_name: str  # "NEW RESERVATION", "UPDATE PROFILE", ...
    primary_key: str
    publisher_id: str | None
    details: tuple[Detail, ...]
    omit: frozenset[str] = frozenset()
    missing_as: MissingAs = "absent"
    null_values: bool = False

    def __post_init__(self) -> None:
        unknown = self.omit - OMITTABLE
        if unknown:
            raise ValueError(f"cannot omit {', '.join(sorted(unknown))}: only {', '.join(sorted(OMITTABLE))}")
        if self.missing_as not in MISSING_STYLES:
            raise ValueError(f"missing_as must be one of {', '.join(MISSING_STYLES)}")


@dataclass(frozen=True)
class StoredEvent:
    """A business change as the gateway keeps it: numbered, stamped, ready for either channel."""

    chain: str
    offset: int
    unique_event_id: str | None  # None: the stream sends no uniqueEventId (EventDraft.omit)
    action_instance_id: int  # always numbered (ids and Poll API variants derive from it)
    parent_action_id: int
    business_event_id: int
    created_at: float  # epoch seconds (the source's clock)
    hotel: str | None
    module: str
    event_name: str
    primary_key: str
    publisher_id: str | None
    details: tuple[Detail, ...]
    omit: frozenset[str] = frozenset()
    missing_as: MissingAs = "absent"
    null_values: bool = False

    @property
    def has_action_id(self) -> bool:
        """False when the event is sent without actionInstanceId / actionId."""
        return "actionInstanceId" not in self.omit

    @property
    def has_detail(self) -> bool:
        """False when the event is sent without any detail list (not even an empty one)."""
        return "detail" not in self.omit

    @property
    def created_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.created_at, UTC)

    def personal_values(self) -> set[str]:
        """The personal data values this event carries (what must never appear in a log)."""
        values: set[str] = set()
        for d in self.details:
            if d.personal:
                values.update(v for v in (d.old_value, d.new_value) if v)
        return values


@dataclass
class _ChainLog:
    next_offset: int = FIRST_OFFSET
    # the log since the last reset (what the stream replays): offsets strictly increasing
    offsets: list[int] = field(default_factory=list)
    events: list[StoredEvent] = field(default_factory=list)
    history: list[StoredEvent] = field(default_factory=list)  # every event ever appended, in order
    resets: int = 0


class UnknownChain(KeyError):
    pass


class EventSource:
    """The ordered event log of each chain, plus one poll queue per external system."""

    def __init__(
        self,
        chains: Sequence[str],
        external_systems: Sequence[str],
        *,
        retention: float = RETENTION_SECONDS,
        clock: Clock = time.time,
        seed: int = 1,
        first_offset: int = FIRST_OFFSET,
        first_offsets: Mapping[str, int] | None = None,
        system_chains: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        """`first_offset`: where every chain's log starts; `first_offsets`: per chain, overriding it.
        `system_chains`: the chains an external system belongs to (in OPERA an external system is
        configured for a chain): its poll queue gets only their events. A system not named gets
        every chain's events."""
        check_offset(first_offset, "first_offset")
        starts = dict(first_offsets or {})
        unknown = set(starts) - set(chains)
        if unknown:
            raise ValueError(f"first_offsets names an unknown chain: {sorted(unknown)[0]}")
        for chain, offset in starts.items():
            check_offset(offset, f"first offset of chain {chain}")
        self._chains = tuple(dict.fromkeys(chains))
        self._known = frozenset(self._chains)
        self._first_offset = first_offset
        self._starts = starts
        # Created on a chain's first write (append, offset jump or reset): an idle chain, even one
        # with subscribers waiting, costs a set entry.
        self._logs: dict[str, _ChainLog] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._all_listeners: list[Listener] = []
        self._poll: dict[str, deque[StoredEvent]] = {code: deque() for code in external_systems}
        self._system_chains = {code: frozenset(chains) for code, chains in (system_chains or {}).items()}
        strays = sorted(set(self._system_chains) - set(self._poll))
        if strays:
            raise ValueError(f"system_chains names an unknown external system: {strays[0]}")
        for code, members in sorted(self._system_chains.items()):
            if members - self._known:
                raise ValueError(
                    f"system_chains of {code} names an unknown chain: {sorted(members - self._known)[0]}"
                )
        self._reset_listeners: list[ResetListener] = []
        self.retention = retention
        self.clock = clock
        self._ids = itertools.count(3_310_000 + seed * 1000)
        self._uuid_seed = seed

    @property
    def chains(self) -> tuple[str, ...]:
        return self._chains

    @property
    def active_chains(self) -> tuple[str, ...]:
        """The chains whose log exists: appended to, or their offsets moved, at least once."""
        return tuple(self._logs)

    @property
    def external_systems(self) -> tuple[str, ...]:
        return tuple(self._poll)

    def _log(self, chain: str) -> _ChainLog:
        """The chain's log, created on first use (UnknownChain for a chain not configured)."""
        log = self._logs.get(chain)
        if log is None:
            if chain not in self._known:
                raise UnknownChain(chain)
            log = self._logs[chain] = _ChainLog(next_offset=self._starts.get(chain, self._first_offset))
        return log

    def _view(self, chain: str) -> _ChainLog:
        """The chain's log for reading: an empty one, not kept, when nothing has created it yet."""
        log = self._logs.get(chain)
        if log is not None:
            return log
        if chain not in self._known:
            raise UnknownChain(chain)
        return _ChainLog(next_offset=self._starts.get(chain, self._first_offset))

    def append(self, chain: str, draft: EventDraft, *, created_at: float | None = None) -> StoredEvent:
        """Number and store one change, queue it for polling, tell the live subscribers.
        `created_at` (epoch seconds) overrides the clock: lookalike events share a second."""
        log = self._log(chain)
        offset = log.next_offset
        if offset > MAX_OFFSET:
            raise ValueError(f"chain {chain}: the offset would pass {MAX_OFFSET} (20 digits)")
        log.next_offset += 1
        action = next(self._ids)
        unique_event_id = str(uuid.UUID(int=(self._uuid_seed << 64) + action, version=4))
        event = StoredEvent(
            chain=chain,
            offset=offset,
            unique_event_id=None if "uniqueEventId" in draft.omit else unique_event_id,
            action_instance_id=action,
            parent_action_id=action - 1,
            business_event_id=action + 4_000_000,
            created_at=self.clock() if created_at is None else created_at,
            hotel=draft.hotel,
            module=draft.module,
            event_name=draft.event_name,
            primary_key=draft.primary_key,
            publisher_id=draft.publisher_id,
            details=draft.details,
            omit=draft.omit,
            missing_as=draft.missing_as,
            null_values=draft.null_values,
        )
        log.offsets.append(offset)
        log.events.append(event)
        log.history.append(event)
        for code, queue in self._poll.items():
            members = self._system_chains.get(code)
            if members is None or chain in members:
                queue.append(event)
        for listener in [*self._all_listeners, *self._listeners.get(chain, ())]:
            listener(event)
        return event

    def extend(self, chain: str, drafts: Iterable[EventDraft]) -> list[StoredEvent]:
        return [self.append(chain, draft) for draft in drafts]

    # -- offsets ---------------------------------------------------------------------------------

    def jump_offset(self, chain: str, next_offset: int) -> int:
        """The next event of `chain` gets `next_offset`, which must not be below the next offset
        it would have had (offsets never go back without an explicit reset). Returns the old one."""
        log = self._log(chain)
        check_offset(next_offset, "next offset")
        if next_offset < log.next_offset:
            raise ValueError(
                f"next offset {next_offset} is below {log.next_offset}: offsets only increase "
                "(an offset reset must be asked for explicitly)"
            )
        previous, log.next_offset = log.next_offset, next_offset
        return previous

    def reset_offset(self, chain: str, next_offset: int) -> int:
        """Adversarial: number `chain`'s log again from `next_offset` (usually lower than before),
        as a reset on OHIP's side would. Events from before the reset are no longer replayed;
        `all_events` and the poll queues keep them. Returns the next offset before the reset."""
        log = self._log(chain)
        check_offset(next_offset, "next offset")
        previous = log.next_offset
        log.next_offset = next_offset
        log.offsets = []
        log.events = []
        log.resets += 1
        for listener in list(self._reset_listeners):
            listener(chain, next_offset)
        return previous

    def resets(self, chain: str) -> int:
        return self._view(chain).resets

    def on_reset(self, listener: ResetListener) -> Callable[[], None]:
        """Call `listener(chain, next_offset)` on every offset reset; returns the remover."""
        self._reset_listeners.append(listener)

        def remove() -> None:
            if listener in self._reset_listeners:
                self._reset_listeners.remove(listener)

        return remove

    # -- streaming side ------------------------------------------------------------------------

    def listen(self, chain: str, listener: Listener) -> Callable[[], None]:
        """Call `listener` for each event appended to `chain` from now on; returns the remover."""
        if chain not in self._known:
            raise UnknownChain(chain)
        listeners = self._listeners.setdefault(chain, [])
        listeners.append(listener)

        def remove() -> None:
            if listener in listeners:
                listeners.remove(listener)

        return remove

    def listen_all(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` for each event appended to any chain from now on; returns the remover."""
        self._all_listeners.append(listener)

        def remove() -> None:
            if listener in self._all_listeners:
                self._all_listeners.remove(listener)

        return remove

    def retained_floor(self, chain: str) -> int:
        """The smallest offset still retained (the next offset when nothing is)."""
        log = self._view(chain)
        horizon = self.clock() - self.retention
        for event in log.events:
            if event.created_at >= horizon:
                return event.offset
        return log.next_offset

    def since(self, chain: str, offset: int) -> list[StoredEvent]:
        """Events with offset >= `offset` (inclusive replay), never older than the retention."""
        log = self._view(chain)
        start = max(offset, self.retained_floor(chain))
        return log.events[bisect.bisect_left(log.offsets, start) :]

    def highest(self, chain: str) -> int | None:
        """The offset of the latest event of the chain, None when there is none."""
        log = self._view(chain)
        return log.offsets[-1] if log.offsets else None

    def next_offset(self, chain: str) -> int:
        return self._view(chain).next_offset

    def event_count(self, chain: str) -> int:
        """How many events were ever appended to `chain` (across offset resets)."""
        return len(self._view(chain).history)

    def all_events(self, chain: str) -> list[StoredEvent]:
        """Every event ever appended to `chain`, in order (across offset resets)."""
        return list(self._view(chain).history)

    # -- poll side -------------------------------------------------------------------------------

    def has_external_system(self, code: str) -> bool:
        return code in self._poll

    def dequeue(self, external_system: str, limit: int, hotel: str | None = None) -> list[StoredEvent]:
        """Remove and return up to `limit` queued events (of one hotel when `hotel` is given)."""
        queue = self._poll[external_system]
        taken: list[StoredEvent] = []
        if hotel is None:
            while queue and len(taken) < limit:
                taken.append(queue.popleft())
            return taken
        keep: deque[StoredEvent] = deque()
        while queue:
            event = queue.popleft()
            if event.hotel == hotel and len(taken) < limit:
                taken.append(event)
            else:
                keep.append(event)
        queue.extend(keep)
        return taken

    def queued(self, external_system: str) -> int:
        return len(self._poll[external_system])
