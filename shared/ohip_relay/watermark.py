"""The checkpoint watermark: which stream offset is safe to store.

The stream delivers events with increasing (not contiguous) offsets; the publisher acknowledges them
in any order (batches complete out of order, entries are retried). The checkpoint may only name an
offset once that event *and every event delivered before it* has been acknowledged by SQS, so that a
crash replays from the checkpoint without losing anything in between.

`OffsetWatermark` is pure (no I/O, no clock, no locks: use it from one thread / one event loop):

    wm = OffsetWatermark(start_after=checkpoint)   # None when nothing is stored yet; -1: before 0
    wm.track(101); wm.track(105); wm.track(230)    # in the order the stream delivers them
    wm.ack(105)                                    # value still the checkpoint: 101 is pending
    wm.ack(101)                                    # value == 105
    wm.ack(230)                                    # value == 230

Cost: `track` and `value` are O(1); `ack` is amortised O(1) (every offset enters and leaves the
internal queue once). Memory is proportional to the tracked offsets above the watermark.
"""

from __future__ import annotations

from collections import deque


class OffsetWatermark:
    """The highest offset such that it and every tracked offset below it are acknowledged.

    `start_after` is the stored checkpoint: None when there is none, -1 when the log is read from offset 0
    and nothing is handled yet (offsets start at 0). `track(offset)` must be called in delivery order with
    strictly increasing non-negative offsets, each above `start_after`; anything else is a caller bug and
    raises `ValueError` (after a reconnect that replays offsets, drain the publisher and start a new
    watermark from the stored checkpoint).
    `ack(offset)` accepts tracked, not yet acknowledged offsets in any order; anything else raises
    `ValueError` (acknowledging twice would hide a lost message).
    """

    __slots__ = ("_last_tracked", "_pending", "_start_after", "_unresolved", "_value")

    def __init__(self, start_after: int | None = None) -> None:
        if start_after is not None and start_after < -1:
            raise ValueError(f"start_after must be an offset or -1 (nothing before 0), not {start_after}")
        self._start_after = start_after
        self._value = start_after
        self._last_tracked = start_after
        # Tracked offsets above the watermark, increasing; the head is the oldest one not yet passed.
        self._unresolved: deque[int] = deque()
        # Tracked offsets not acknowledged yet (a subset of `_unresolved`).
        self._pending: set[int] = set()

    @property
    def value(self) -> int | None:
        """The offset to checkpoint, or `start_after` (possibly None) while nothing new is safe."""
        return self._value

    @property
    def start_after(self) -> int | None:
        return self._start_after

    @property
    def pending(self) -> int:
        """Tracked offsets not yet acknowledged."""
        return len(self._pending)

    @property
    def held_back(self) -> int:
        """Acknowledged offsets the watermark cannot pass yet because an older one is pending."""
        return len(self._unresolved) - len(self._pending)

    @property
    def last_tracked(self) -> int | None:
        """The newest offset tracked (or `start_after`)."""
        return self._last_tracked

    def is_pending(self, offset: int) -> bool:
        """True when `offset` was tracked and has not been acknowledged yet."""
        return offset in self._pending

    def track(self, offset: int) -> None:
        """Record an event the stream delivered; it holds the watermark back until acknowledged."""
        if offset < 0:
            raise ValueError(f"offset must be non-negative, not {offset}")
        if self._last_tracked is not None and offset <= self._last_tracked:
            raise ValueError(
                f"offset {offset} tracked out of order: offsets must increase (last was {self._last_tracked})"
            )
        self._unresolved.append(offset)
        self._pending.add(offset)
        self._last_tracked = offset

    def ack(self, offset: int) -> int | None:
        """Record that SQS acknowledged `offset`; returns the (possibly advanced) watermark."""
        try:
            self._pending.remove(offset)
        except KeyError:
            raise ValueError(f"offset {offset} acknowledged but it is not pending") from None
        unresolved, pending = self._unresolved, self._pending
        while unresolved and unresolved[0] not in pending:
            self._value = unresolved.popleft()
        return self._value
