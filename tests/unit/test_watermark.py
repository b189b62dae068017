"""OffsetWatermark: the checkpoint never passes an offset that SQS has not acknowledged."""

from __future__ import annotations

import random

import pytest

from ohip_relay.watermark import OffsetWatermark


def _reference(tracked: list[int], acked: set[int], start_after: int | None) -> int | None:
    """The definition, computed the slow way: the last offset of the fully acknowledged prefix."""
    value = start_after
    for offset in tracked:
        if offset not in acked:
            break
        value = offset
    return value


def test_empty_watermark_keeps_its_start() -> None:
    assert OffsetWatermark(None).value is None
    wm = OffsetWatermark(41)
    assert wm.value == 41
    assert wm.pending == 0
    assert wm.start_after == 41


def test_gap_holds_the_watermark_back() -> None:
    wm = OffsetWatermark(100)
    for offset in (101, 105, 230):
        wm.track(offset)
    assert wm.ack(105) == 100
    assert (wm.pending, wm.held_back) == (2, 1)
    assert wm.ack(101) == 105
    assert wm.ack(230) == 230
    assert (wm.pending, wm.held_back) == (0, 0)


def test_value_is_none_until_the_first_offset_is_acked() -> None:
    wm = OffsetWatermark()
    wm.track(7)
    wm.track(9)
    assert wm.ack(9) is None
    assert wm.ack(7) == 9


def test_tracking_resumes_after_the_watermark_caught_up() -> None:
    wm = OffsetWatermark(0)
    wm.track(1)
    wm.ack(1)
    wm.track(3)
    assert wm.value == 1
    assert wm.is_pending(3)
    wm.ack(3)
    assert wm.value == 3
    assert not wm.is_pending(3)


@pytest.mark.parametrize("offset", [5, 4, -1])
def test_offsets_must_increase(offset: int) -> None:
    wm = OffsetWatermark(3)
    wm.track(5)
    with pytest.raises(ValueError, match="offset"):
        wm.track(offset)


def test_offset_at_or_below_start_is_refused() -> None:
    wm = OffsetWatermark(10)
    with pytest.raises(ValueError, match="out of order"):
        wm.track(10)


def test_a_start_below_minus_one_is_refused() -> None:
    with pytest.raises(ValueError, match="-1"):
        OffsetWatermark(-2)


def test_a_log_read_from_offset_zero_starts_after_minus_one() -> None:
    # Finding 2 of issue 16: a stream whose first event is offset 0 anchors at -1, so 0 is tracked.
    wm = OffsetWatermark(-1)
    wm.track(0)
    assert wm.value == -1
    assert wm.ack(0) == 0
    with pytest.raises(ValueError, match="non-negative"):
        OffsetWatermark(-1).track(-1)


def test_unknown_or_double_ack_is_refused() -> None:
    wm = OffsetWatermark(None)
    wm.track(1)
    wm.track(3)
    with pytest.raises(ValueError, match="not pending"):
        wm.ack(2)  # never tracked, between two tracked offsets
    wm.ack(3)
    with pytest.raises(ValueError, match="not pending"):
        wm.ack(3)  # held back but already acknowledged
    wm.ack(1)
    with pytest.raises(ValueError, match="not pending"):
        wm.ack(1)  # already below the watermark
    assert wm.value == 3


@pytest.mark.parametrize("seed", range(40))
def test_random_ack_orders_match_the_definition(seed: int) -> None:
    """Property: after every operation, value equals the reference definition and never decreases."""
    rng = random.Random(seed)
    start_after = rng.choice([None, 0, rng.randrange(1, 10_000)])
    offset = start_after if start_after is not None else -1
    tracked: list[int] = []
    for _ in range(rng.randrange(1, 300)):
        offset += rng.randrange(1, 50)  # increasing, not contiguous
        tracked.append(offset)

    wm = OffsetWatermark(start_after)
    acked: set[int] = set()
    unacked: list[int] = []
    previous = start_after
    next_to_track = 0
    # Interleave tracking and acknowledging, acknowledging in a random order (like batches completing).
    while next_to_track < len(tracked) or unacked:
        if next_to_track < len(tracked) and (not unacked or rng.random() < 0.6):
            wm.track(tracked[next_to_track])
            unacked.append(tracked[next_to_track])
            next_to_track += 1
        else:
            chosen = unacked.pop(rng.randrange(len(unacked)))
            wm.ack(chosen)
            acked.add(chosen)
        expected = _reference(tracked[:next_to_track], acked, start_after)
        assert wm.value == expected
        assert wm.pending == len(unacked)
        if previous is not None:
            assert wm.value is not None
            assert wm.value >= previous
        previous = wm.value
    assert wm.value == tracked[-1]
    assert wm.held_back == 0


@pytest.mark.parametrize("seed", range(5))
def test_full_permutation_of_acks(seed: int) -> None:
    rng = random.Random(1000 + seed)
    offsets = sorted(rng.sample(range(1, 1_000_000), 2_000))
    wm = OffsetWatermark(0)
    for offset in offsets:
        wm.track(offset)
    order = offsets[:]
    rng.shuffle(order)
    for offset in order:
        wm.ack(offset)
    # Checked at the end only (the per-step property is the test above): everything passed.
    assert wm.value == offsets[-1]
    assert wm.pending == 0


def test_large_in_order_stream_is_linear() -> None:
    """A sanity bound on cost: 200k track+ack pairs with a moving gap stay fast (amortised O(1))."""
    wm = OffsetWatermark(None)
    window = 1_000
    for offset in range(200_000):
        wm.track(offset * 2)
        if offset >= window:
            wm.ack((offset - window) * 2)
    assert wm.pending == window
    assert wm.value == (200_000 - window - 1) * 2
