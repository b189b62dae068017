"""The chaos suite's pure parts: schedules from seeds, and the invariant checks on hand-made data.

Each violation the suite must catch is built by hand and checked to be reported: a lost event, two
lookalike events merged into one, an unexpected message, a checkpoint moving backward, two gateway
connections at once, personal data in a log line, a relay exiting non-zero after SIGTERM. And what
must not be reported: documented duplicates, lookalikes delivered as distinct events, a stream copy
suppressed against a lookalike's poll copy (match once), bodies of older relays without eventId.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ohip_local.chaos import (
    ADVERSARIAL_EMITS,
    STEP_KINDS,
    EmittedEvent,
    Verdict,
    check_invariants,
    checkpoint_regressions,
    classify_duplicates,
    generate_schedule,
    personal_data_hits,
)
from ohip_local.reconcile import body_event_id, reconcile

CHAIN = "LOCALCHAIN"


def event(offset: int, key: str, *, unique: str | None = "", bid: str = "") -> EmittedEvent:
    """An emitted event; its uniqueEventId is u<offset> and its businessEventId b<offset> unless given."""
    return EmittedEvent(CHAIN, offset, key, f"u{offset}" if unique == "" else unique, bid or f"b{offset}")


E1, E2, E3 = event(1001, "k1"), event(1002, "k2"), event(1003, "k3")
EMITTED = [E1, E2, E3]
# Two lookalikes (the same change twice within one second: one content key) and a third event.
L1, L2, L3 = event(2001, "kL"), event(2002, "kL"), event(2003, "kX")
LOOKALIKES = [L1, L2, L3]


def stream(e: EmittedEvent, *, key: str | None = None) -> dict[str, Any]:
    return {
        "eventId": e.stream_id,
        "eventKey": key or e.event_key,
        "source": "stream",
        "chainCode": CHAIN,
        "offset": str(e.offset),
        "uniqueEventId": e.unique_event_id,
        "businessEventId": None,
    }


def poll(e: EmittedEvent, *, key: str | None = None) -> dict[str, Any]:
    return {
        "eventId": e.poll_id,
        "eventKey": key or e.event_key,
        "source": "poll",
        "chainCode": CHAIN,
        "offset": None,
        "uniqueEventId": None,
        "businessEventId": e.business_event_id,
    }


def old_stream(key: str, offset: int) -> dict[str, Any]:
    """A stream message of a relay from before eventId (no eventId, no businessEventId)."""
    return {"eventKey": key, "source": "stream", "offset": str(offset)}


def old_poll(key: str) -> dict[str, Any]:
    return {"eventKey": key, "source": "poll", "offset": None}


CLEAN = [stream(E1), stream(E2), stream(E3)]


def verdict(
    *,
    emitted: Sequence[EmittedEvent] = EMITTED,
    bodies: Sequence[Mapping[str, Any]] = CLEAN,
    checkpoints: Sequence[int | None] = (None, 1000, 1002, 1003),
    live: Sequence[int] = (0, 1, 1, 0),
    conflicts: int = 0,
    personal: Sequence[str] = ("Jane Roe", "jane@example.test"),
    lines: Sequence[str] = ("INFO stream: subscribed", "INFO stream: stopped at checkpoint 1003"),
    exits: Sequence[int] = (0,),
) -> Verdict:
    return check_invariants(
        emitted=emitted,
        bodies=bodies,
        checkpoints=checkpoints,
        live_connections=live,
        conflicts=conflicts,
        personal_values=personal,
        log_lines=lines,
        sigterm_exits=exits,
    )


# -- schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("short", [False, True])
def test_the_same_seed_gives_the_same_schedule(short: bool) -> None:
    for seed in range(1, 60):
        assert generate_schedule(seed, short=short) == generate_schedule(seed, short=short)


def test_different_seeds_give_different_schedules() -> None:
    plans = {generate_schedule(seed).describe() for seed in range(1, 60)}
    assert len(plans) == 59


def test_a_known_seed_keeps_its_schedule() -> None:
    """Replaying a seed from a report must run what the report ran: the generator is pinned, and
    the adversarial draws leave a seed's base plan (faults, emits) as it was before they existed."""
    base = (
        "emit(count=24, rate=0); kill_restart(delay=0.96); emit(count=6, rate=1000); "
        "aws_fault(service=dynamodb, error=internal, operation=None, phase=after, count=3); "
        "emit(count=21, rate=50)"
    )
    assert generate_schedule(4, short=True, adversarial=False).describe() == base
    assert generate_schedule(4, short=True).describe() == (
        "emit(count=24, rate=0, adversarial=lookalike); kill_restart(delay=0.96); "
        "emit(count=6, rate=1000, adversarial=missing); "
        "aws_fault(service=dynamodb, error=internal, operation=None, phase=after, count=3); "
        "emit(count=21, rate=50)"
    )
    assert generate_schedule(7, short=True).describe().startswith("offsets from 9999999999999999606; ")


@pytest.mark.parametrize("short", [False, True])
def test_adversarial_draws_only_add_to_the_base_plan(short: bool) -> None:
    for seed in range(1, 100):
        plain = generate_schedule(seed, short=short, adversarial=False)
        drawn = generate_schedule(seed, short=short)
        assert plain.first_offset is None
        assert [s.kind for s in drawn.steps] == [s.kind for s in plain.steps]
        for before, after in zip(plain.steps, drawn.steps, strict=True):
            extra = {k: v for k, v in after.params.items() if k not in before.params}
            assert {k: after.params[k] for k in before.params} == before.params
            assert set(extra) <= ({"adversarial", "offset_jump"} if after.kind == "emit" else set())
        assert drawn.emitted_by_plan() == plain.emitted_by_plan()


def test_schedules_draw_adversarial_emits_jumps_and_unusual_first_offsets_but_never_a_reset() -> None:
    kinds: set[str] = set()
    jumps = 0
    starts: list[int | None] = []
    for seed in range(1, 200):
        schedule = generate_schedule(seed)
        starts.append(schedule.first_offset)
        for step in schedule.steps:
            assert "reset" not in step.kind
            assert not any("reset" in k for k in step.params)
            if "adversarial" in step.params:
                kinds.add(step.params["adversarial"])
            if "offset_jump" in step.params:
                jumps += 1
                assert step.params["offset_jump"] > 0  # forward only
    assert kinds == set(ADVERSARIAL_EMITS)
    assert jumps >= 10
    assert starts.count(0) >= 10
    huge = [s for s in starts if s is not None and s > 0]
    assert len(huge) >= 10
    # 19 digits at the start, 20 once a few hundred events went by
    assert all(len(str(s)) == 19 and s + 400 >= 10**19 for s in huge)
    assert starts.count(None) > len(starts) // 2  # most seeds keep the default


def test_schedules_start_and_end_with_traffic_and_draw_every_kind() -> None:
    seen: set[str] = set()
    for seed in range(1, 200):
        schedule = generate_schedule(seed)
        assert schedule.steps[0].kind == "emit"
        assert schedule.steps[-1].kind == "emit"
        assert schedule.emitted_by_plan() > 0
        seen |= {step.kind for step in schedule.steps}
    assert seen == set(STEP_KINDS)


def test_the_short_cut_leaves_out_slow_steps() -> None:
    for seed in range(1, 200):
        schedule = generate_schedule(seed, short=True)
        assert len(schedule.steps) <= 7
        for step in schedule.steps:
            assert step.kind != "deploy"
            assert step.params.get("code") not in (4403, 4409)


# -- invariants: a clean run, then each violation -------------------------------------------------


def test_a_clean_run_has_no_problems() -> None:
    result = verdict()
    assert result.ok, result.problems()
    assert (result.emitted, result.messages, result.delivered) == (3, 3, 3)
    assert result.missing == []
    assert result.covered == []


def test_documented_duplicates_are_not_problems() -> None:
    # E1 replayed by the stream, E2 by both channels, E4 published twice by the fallback alone
    e4 = event(1004, "k4")
    bodies = [*CLEAN, stream(E1), poll(E2), poll(e4), poll(e4)]
    result = verdict(emitted=[*EMITTED, e4], bodies=bodies)
    assert result.ok, result.problems()
    assert result.delivered == 4
    assert result.duplicates == {"stream replay": 1, "channel overlap": 1, "poll repeat": 1}
    assert classify_duplicates(bodies, [*EMITTED, e4]) == result.duplicates


def test_a_lost_event_is_reported_by_its_identity() -> None:
    result = verdict(bodies=CLEAN[:2])
    assert result.lost == [E3.stream_id]
    assert result.missing == [E3.stream_id]
    assert result.delivered == 2
    assert "1 lost" in result.problems()


def test_a_poll_copy_alone_delivers_the_event() -> None:
    result = verdict(bodies=[stream(E1), poll(E2), stream(E3)])
    assert result.ok, result.problems()
    assert result.duplicates == {}


def test_lookalikes_delivered_as_two_events_pass() -> None:
    result = verdict(emitted=LOOKALIKES, bodies=[stream(L1), stream(L2), stream(L3)])
    assert result.ok, result.problems()
    assert result.delivered == 3
    assert result.duplicates == {}  # two events with one key are not a duplicate


def test_two_lookalikes_merged_into_one_are_a_loss() -> None:
    """The old rule: both replayed stream copies suppressed against the one poll copy of L1 (by
    content key). One change reached the consumer where OPERA made two: d(kL) = 1 < n(kL) = 2."""
    result = verdict(emitted=LOOKALIKES, bodies=[poll(L1), stream(L3)])
    assert result.lost == [L2.stream_id]
    assert result.missing == [L2.stream_id]
    assert result.delivered == 2
    assert "1 lost" in result.problems()
    # the same with the stream copy of one and nothing of the other
    merged = verdict(emitted=LOOKALIKES, bodies=[stream(L1), stream(L1), stream(L3)])
    assert merged.lost == [L2.stream_id]
    assert merged.duplicates == {"stream replay": 1}


def test_match_once_suppression_against_a_lookalikes_poll_copy_passes() -> None:
    """The new rule: the fallback published L1 from the Poll API; the stream replays L1 and L2 and
    suppresses one of them against that one poll copy (match once). Whichever it suppressed, two
    distinct events of key kL are on the queue."""
    suppressed_l2 = verdict(emitted=LOOKALIKES, bodies=[poll(L1), stream(L1), stream(L3)])
    assert suppressed_l2.ok, suppressed_l2.problems()
    assert suppressed_l2.lost == []
    assert suppressed_l2.missing == [L2.stream_id]  # by identity: reported, not counted as loss
    assert suppressed_l2.covered == [L2.stream_id]
    assert suppressed_l2.delivered == 3
    assert suppressed_l2.duplicates == {}

    suppressed_l1 = verdict(emitted=LOOKALIKES, bodies=[poll(L1), stream(L2), stream(L3)])
    assert suppressed_l1.ok, suppressed_l1.problems()
    assert suppressed_l1.missing == []
    assert suppressed_l1.duplicates == {}


def test_three_lookalikes_two_merged() -> None:
    trio = [event(3001, "kT"), event(3002, "kT"), event(3003, "kT")]
    accounts = reconcile(trio, [stream(trio[0]), poll(trio[0])])  # one event on both channels
    assert accounts.counts == {"kT": (3, 2)}
    assert accounts.lost == [trio[2].stream_id]  # one short: the highest missing offset
    assert accounts.missing == [trio[1].stream_id, trio[2].stream_id]


def test_unexpected_messages_are_reported() -> None:
    stranger = event(1009, "k9")
    result = verdict(bodies=[*CLEAN, stream(stranger)])
    assert result.unexpected == [stranger.stream_id + " (key k9)"]
    assert "1 unexpected" in result.problems()
    # a known key under an identity the gateway never emitted (another uniqueEventId)
    forged = {**stream(E1), "eventId": f"stream:{CHAIN}:1001:other"}
    assert verdict(bodies=[*CLEAN, forged]).unexpected == [f"stream:{CHAIN}:1001:other"]
    # a known identity with another content key than the event was emitted with
    wrong_key = verdict(bodies=[stream(E1), stream(E2), stream(E3, key="k1")])
    assert wrong_key.unexpected == [f"{E3.stream_id} (key k1, emitted with key k3)"]
    assert wrong_key.lost == [E3.stream_id]  # and E3 is not delivered


def test_a_bogus_message_cannot_stand_in_for_a_lost_lookalike() -> None:
    forged = {**stream(L2), "eventId": f"stream:{CHAIN}:2002:forged"}
    result = verdict(emitted=LOOKALIKES, bodies=[stream(L1), forged, stream(L3)])
    assert result.lost == [L2.stream_id]
    assert len(result.unexpected) == 1


def test_bodies_of_an_older_relay_without_event_id() -> None:
    bodies = [old_stream("k1", 1001), old_stream("k1", 1001), old_poll("k2"), old_stream("k3", 1003)]
    result = verdict(bodies=bodies)
    assert result.ok, result.problems()
    assert result.duplicates == {"stream replay": 1}
    assert result.missing == [E2.stream_id]  # a poll copy without businessEventId names no event
    # old and new bodies of one event are one identity
    mixed = verdict(bodies=[old_stream("k1", 1001), stream(E1), stream(E2), stream(E3)])
    assert mixed.duplicates == {"stream replay": 1}
    # an old body that is lost is still reported, and odd bodies do not crash the checker
    assert verdict(bodies=[old_stream("k1", 1001), old_stream("k2", 1002)]).lost == [E3.stream_id]
    odd = verdict(
        bodies=[*CLEAN, {"source": "stream"}, {"eventKey": "k1"}, {"offset": "x", "source": "stream"}]
    )
    assert odd.unexpected == ["poll::~None (key None)"]  # the two bodies without a key
    assert odd.duplicates == {"channel overlap": 1}  # a bare known key stands in for a k1 poll copy
    assert odd.lost == []
    assert body_event_id(old_stream("k1", 1001)) == "stream::1001:"
    assert body_event_id(old_poll("k2")) == "poll::~k2"


def test_older_relays_poll_copies_of_lookalikes_count_once() -> None:
    """Without a businessEventId two lookalikes' poll copies are indistinguishable: counted as one
    event, the check errs on the side of reporting a loss."""
    result = verdict(emitted=LOOKALIKES, bodies=[old_poll("kL"), old_poll("kL"), stream(L3)])
    assert result.duplicates == {"poll repeat": 1}
    assert result.lost == [L2.stream_id]


def test_offset_zero_and_twenty_digit_offsets() -> None:
    zero = event(0, "kz", unique=None)
    huge = event(10**19 + 7, "kh")
    assert zero.stream_id == f"stream:{CHAIN}:0:"
    assert huge.stream_id == f"stream:{CHAIN}:10000000000000000007:u10000000000000000007"
    result = verdict(emitted=[zero, huge], bodies=[old_stream("kz", 0), stream(huge)])
    assert result.ok, result.problems()
    assert result.missing == []
    assert not verdict(emitted=[zero, huge], bodies=[stream(huge)]).ok


def test_a_checkpoint_moving_backward_is_reported() -> None:
    assert checkpoint_regressions([None, 1000, 1005, None, 1003, 1006]) == [(1005, 1003)]
    result = verdict(checkpoints=[1000, 1003, 1001])
    assert result.regressions == [(1003, 1001)]
    assert not result.ok


def test_two_gateway_connections_at_once_are_reported() -> None:
    assert not verdict(live=(0, 1, 2, 1)).ok
    assert "1 gateway conflicts (4409 for a second subscriber)" in verdict(conflicts=1).problems()


def test_personal_data_in_a_log_line_is_reported() -> None:
    line = "WARNING publish: rejected event for Jane Roe"
    result = verdict(lines=["INFO ok", line])
    assert result.pii_lines == [line]
    assert "personal data in 1 log lines" in result.problems()


def test_personal_values_match_whole_words_only() -> None:
    values = ["Roe", "jane@example.test"]
    assert personal_data_hits(["Roebuck hotel", "x@jane@example.test.org"], values) == []
    assert personal_data_hits(["guest Roe,", "to jane@example.test"], values) == [
        "guest Roe,",
        "to jane@example.test",
    ]
    assert personal_data_hits(["anything"], ["", " "]) == []


def test_personal_values_with_odd_characters_are_found_by_their_readable_parts() -> None:
    values = ["Testperson\x00", "\ud83dSam", "Zo\u00eb\U0001f600Fictional", "\ud800", "\x00\x07", "\ufffe"]
    lines = [
        "WARNING rejected Testperson\\x00 (escaped by the log)",
        "INFO for Sam",
        "INFO about Fictional",
        "INFO Zo\u00eb\U0001f600Fictional verbatim",
        "INFO nothing here \x00 \ufffe",
    ]
    assert personal_data_hits(lines, values) == lines[:4]
    assert personal_data_hits(["anything \ud800"], ["\ud800", "\x00"]) == []  # no readable part


def test_a_non_zero_exit_after_sigterm_is_reported() -> None:
    result = verdict(exits=(0, 1))
    assert result.bad_exits == [1]
    assert "relay exit status after SIGTERM [1]" in result.problems()
