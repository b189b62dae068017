"""The event source's offsets: configurable first offset (0, 19-20 digits), forward jumps, and the
explicit (adversarial) reset that makes them go backwards."""

from __future__ import annotations

import pytest

from ohip_local.gateway import (
    FIRST_OFFSET_ENV,
    GatewayConfig,
    GatewayError,
    LocalGateway,
    config_from_environment,
)
from ohip_local.source import FIRST_OFFSET, MAX_OFFSET, Detail, EventDraft, EventSource


def draft(key: str = "2240001") -> EventDraft:
    return EventDraft(
        "H1", "RESERVATION", "NEW RESERVATION", key, "57489", (Detail("ROOM TYPE", "", "DLXK"),)
    )


def make_source(**kw: object) -> EventSource:
    return EventSource(("C1", "C2"), ("SYS",), clock=lambda: 1_795_601_738.0, **kw)  # type: ignore[arg-type]


def test_the_default_first_offset_is_unchanged() -> None:
    assert FIRST_OFFSET == 1001
    assert make_source().append("C1", draft()).offset == 1001


def test_a_log_can_start_at_zero_and_replays_offset_zero() -> None:
    source = make_source(first_offset=0)
    events = source.extend("C1", [draft(), draft(), draft()])
    assert [e.offset for e in events] == [0, 1, 2]
    assert source.highest("C1") == 2
    assert [e.offset for e in source.since("C1", 0)] == [0, 1, 2]
    assert source.retained_floor("C1") == 0


def test_first_offsets_per_chain() -> None:
    source = make_source(first_offset=5, first_offsets={"C2": 0})
    assert source.append("C1", draft()).offset == 5
    assert source.append("C2", draft()).offset == 0
    with pytest.raises(ValueError, match="unknown chain"):
        make_source(first_offsets={"C9": 0})


def test_nineteen_and_twenty_digit_offsets() -> None:
    source = make_source(first_offset=10**19 - 2)
    offsets = [e.offset for e in source.extend("C1", [draft()] * 4)]
    assert offsets == [10**19 - 2, 10**19 - 1, 10**19, 10**19 + 1]
    assert [len(str(o)) for o in offsets] == [19, 19, 20, 20]
    assert [e.offset for e in source.since("C1", 10**19)] == [10**19, 10**19 + 1]
    top = make_source(first_offset=MAX_OFFSET)
    assert top.append("C1", draft()).offset == MAX_OFFSET == 10**20 - 1
    with pytest.raises(ValueError, match="20 digits"):
        top.append("C1", draft())
    for bad in (-1, MAX_OFFSET + 1, True, "1001"):
        with pytest.raises(ValueError, match="first_offset"):
            make_source(first_offset=bad)


def test_a_jump_moves_the_next_offset_forward_only() -> None:
    source = make_source()
    source.append("C1", draft())
    assert source.jump_offset("C1", 5000) == 1002
    assert source.append("C1", draft()).offset == 5000
    assert source.jump_offset("C1", 5001) == 5001  # to where it was: allowed, nothing changes
    with pytest.raises(ValueError, match="offsets only increase"):
        source.jump_offset("C1", 4999)
    assert [e.offset for e in source.since("C1", 0)] == [1001, 5000]
    assert [e.offset for e in source.since("C1", 1002)] == [5000]


def test_a_reset_numbers_the_log_again_and_is_told_to_listeners() -> None:
    source = make_source()
    resets: list[tuple[str, int]] = []
    source.on_reset(lambda chain, offset: resets.append((chain, offset)))
    before = source.extend("C1", [draft(), draft(), draft()])
    assert source.reset_offset("C1", 1001) == 1004
    after = source.extend("C1", [draft(), draft()])
    assert resets == [("C1", 1001)]
    assert [e.offset for e in after] == [1001, 1002]  # the same offsets again: backwards
    assert {e.unique_event_id for e in after}.isdisjoint({e.unique_event_id for e in before})
    assert source.since("C1", 0) == after  # the old log is no longer replayed
    assert source.highest("C1") == 1002
    assert source.all_events("C1") == before + after  # but it is still on record
    assert source.resets("C1") == 1
    assert source.resets("C2") == 0
    assert source.queued("SYS") == 5  # and the poll queue has every event


def test_drafts_can_omit_fields_and_share_an_instant() -> None:
    source = make_source()
    plain = source.append("C1", draft())
    bare = source.append(
        "C1", EventDraft(None, "PROFILE", "UPDATE PROFILE", "9", None, (), frozenset({"uniqueEventId"}))
    )
    assert plain.unique_event_id is not None
    assert (bare.unique_event_id, bare.hotel, bare.publisher_id) == (None, None, None)
    assert source.append("C1", draft(), created_at=12.5).created_at == 12.5
    with pytest.raises(ValueError, match="cannot omit"):
        EventDraft("H1", "PROFILE", "UPDATE PROFILE", "9", "1", (), frozenset({"eventName"}))
    with pytest.raises(ValueError, match="missing_as"):
        EventDraft("H1", "PROFILE", "UPDATE PROFILE", "9", "1", (), missing_as="nothing")  # type: ignore[arg-type]


def test_gateway_config_first_offsets() -> None:
    gateway = LocalGateway(GatewayConfig(chains=("A", "B"), first_offset=0, first_offsets=(("B", 10**19),)))
    assert gateway.source.next_offset("A") == 0
    assert gateway.source.next_offset("B") == 10**19
    assert GatewayConfig(chains=("A", "B"), first_offsets=(("B", 7),)).first_offset_of("A") == FIRST_OFFSET
    with pytest.raises(GatewayError, match="first offset"):
        GatewayConfig(first_offset=10**20)
    with pytest.raises(GatewayError, match="unknown chain"):
        GatewayConfig(first_offsets=(("NOPE", 0),))


def test_first_offset_from_the_environment() -> None:
    config = GatewayConfig()
    assert config_from_environment(config, {}) is config
    assert config_from_environment(config, {FIRST_OFFSET_ENV: "0"}).first_offset == 0
    assert (
        config_from_environment(config, {FIRST_OFFSET_ENV: " 99999999999999999999 "}).first_offset
        == MAX_OFFSET
    )
    for bad in ("-1", "1e3", "123456789012345678901", "١٢"):
        with pytest.raises(GatewayError, match=FIRST_OFFSET_ENV):
            config_from_environment(config, {FIRST_OFFSET_ENV: bad})
