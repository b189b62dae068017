"""One event source feeding both channels, as OPERA does for an environment set up for streaming
and polling.

Every business change appended here gets the next offset of its chain (the Streaming API's
`metadata.offset`, a string of digits compared as an integer) and is also put on the poll queue of
every external system configured for that chain (the Poll API dequeues from there). Events older
than the retention (7 days) are no longer replayed. Time comes from an injectable clock so that
retention can be tested without waiting a week.
"""

from __future__ import annotations

import bisect
import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

Clock = Callable[[], float]
Listener = Callable[["StoredEvent"], None]

RETENTION_SECONDS = 7 * 24 * 3600.0
FIRST_OFFSET = 1001


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
    """A business change before the source numbers it."""

    hotel: str
    module: str  # "RESERVATION", "PROFILE"
    event_name: str  # "NEW RESERVATION", "UPDATE PROFILE", ...
    primary_key: str
    publisher_id: str
    details: tuple[Detail, ...]


@dataclass(frozen=True)
class StoredEvent:
    """A business change as the gateway keeps it: numbered, stamped, ready for either channel."""

    chain: str
    offset: int
    unique_event_id: str
    action_instance_id: int
    parent_action_id: int
    business_event_id: int
    created_at: float  # epoch seconds (the source's clock)
    hotel: str
    module: str
    event_name: str
    primary_key: str
    publisher_id: str
    details: tuple[Detail, ...]

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
    offsets: list[int] = field(default_factory=list)
    events: list[StoredEvent] = field(default_factory=list)
    next_offset: int = FIRST_OFFSET


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
    ) -> None:
        self._logs = {chain: _ChainLog() for chain in chains}
        self._poll: dict[str, deque[StoredEvent]] = {code: deque() for code in external_systems}
        self._listeners: dict[str, list[Listener]] = {chain: [] for chain in chains}
        self.retention = retention
        self.clock = clock
        self._ids = itertools.count(3_310_000 + seed * 1000)
        self._uuid_seed = seed

    @property
    def chains(self) -> tuple[str, ...]:
        return tuple(self._logs)

    @property
    def external_systems(self) -> tuple[str, ...]:
        return tuple(self._poll)

    def _log(self, chain: str) -> _ChainLog:
        try:
            return self._logs[chain]
        except KeyError:
            raise UnknownChain(chain) from None

    def append(self, chain: str, draft: EventDraft) -> StoredEvent:
        """Number and store one change, queue it for polling, tell the live subscribers."""
        log = self._log(chain)
        offset = log.next_offset
        log.next_offset += 1
        action = next(self._ids)
        event = StoredEvent(
            chain=chain,
            offset=offset,
            unique_event_id=str(uuid.UUID(int=(self._uuid_seed << 64) + action, version=4)),
            action_instance_id=action,
            parent_action_id=action - 1,
            business_event_id=action + 4_000_000,
            created_at=self.clock(),
            hotel=draft.hotel,
            module=draft.module,
            event_name=draft.event_name,
            primary_key=draft.primary_key,
            publisher_id=draft.publisher_id,
            details=draft.details,
        )
        log.offsets.append(offset)
        log.events.append(event)
        for queue in self._poll.values():
            queue.append(event)
        for listener in list(self._listeners[chain]):
            listener(event)
        return event

    def extend(self, chain: str, drafts: Iterable[EventDraft]) -> list[StoredEvent]:
        return [self.append(chain, draft) for draft in drafts]

    # -- streaming side ------------------------------------------------------------------------

    def listen(self, chain: str, listener: Listener) -> Callable[[], None]:
        """Call `listener` for each event appended to `chain` from now on; returns the remover."""
        self._log(chain)
        listeners = self._listeners[chain]
        listeners.append(listener)

        def remove() -> None:
            if listener in listeners:
                listeners.remove(listener)

        return remove

    def retained_floor(self, chain: str) -> int:
        """The smallest offset still retained (the next offset when nothing is)."""
        log = self._log(chain)
        horizon = self.clock() - self.retention
        for event in log.events:
            if event.created_at >= horizon:
                return event.offset
        return log.next_offset

    def since(self, chain: str, offset: int) -> list[StoredEvent]:
        """Events with offset >= `offset` (inclusive replay), never older than the retention."""
        log = self._log(chain)
        start = max(offset, self.retained_floor(chain))
        return log.events[bisect.bisect_left(log.offsets, start) :]

    def highest(self, chain: str) -> int | None:
        """The offset of the latest event of the chain, None when there is none."""
        log = self._log(chain)
        return log.offsets[-1] if log.offsets else None

    def next_offset(self, chain: str) -> int:
        return self._log(chain).next_offset

    def all_events(self, chain: str) -> list[StoredEvent]:
        return list(self._log(chain).events)

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
