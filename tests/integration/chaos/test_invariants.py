"""The chaos suite's pure parts: schedules from seeds, and the invariant checks on hand-made data.

Each violation the suite must catch is built by hand and checked to be reported: a lost event, an
undocumented duplicate, a checkpoint moving backward, two gateway connections at once, personal
data in a log line, a relay exiting non-zero after SIGTERM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ohip_local.chaos import (
    STEP_KINDS,
    UNDOCUMENTED,
    Verdict,
    check_invariants,
    checkpoint_regressions,
    classify_duplicates,
    generate_schedule,
    personal_data_hits,
)

EMITTED = {1001: "k1", 1002: "k2", 1003: "k3"}


def stream(key: str, offset: int) -> dict[str, Any]:
    return {"eventKey": key, "source": "stream", "offset": offset}


def poll(key: str) -> dict[str, Any]:
    return {"eventKey": key, "source": "poll", "offset": None}


CLEAN = [stream("k1", 1001), stream("k2", 1002), stream("k3", 1003)]


def verdict(
    *,
    emitted: Mapping[int, str] = EMITTED,
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
    """Replaying a seed from a report must run what the report ran: the generator is pinned."""
    assert generate_schedule(4, short=True).describe() == (
        "emit(count=24, rate=0); kill_restart(delay=0.96); emit(count=6, rate=1000); "
        "aws_fault(service=dynamodb, error=internal, operation=None, phase=after, count=3); "
        "emit(count=21, rate=50)"
    )


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


def test_documented_duplicates_are_not_problems() -> None:
    # k1 replayed by the stream, k2 by both channels, k4 published twice by the fallback alone
    bodies = [*CLEAN, stream("k1", 1001), poll("k2"), poll("k4"), poll("k4")]
    result = verdict(emitted={**EMITTED, 1004: "k4"}, bodies=bodies)
    assert result.ok, result.problems()
    assert result.duplicates == {"stream replay": 1, "channel overlap": 1, "poll repeat": 1}


def test_a_lost_event_is_reported() -> None:
    result = verdict(bodies=CLEAN[:2])
    assert result.lost == ["k3"]
    assert "1 lost" in result.problems()


def test_an_unexpected_message_is_reported() -> None:
    result = verdict(bodies=[*CLEAN, stream("k9", 1009)])
    assert result.unexpected == ["k9"]
    assert not result.ok


def test_an_undocumented_duplicate_is_reported() -> None:
    # one key on the stream at two offsets, though the gateway emitted it once
    result = verdict(bodies=[*CLEAN, stream("k1", 1003)])
    assert result.duplicates[UNDOCUMENTED] == 1
    assert "1 undocumented duplicates" in result.problems()


def test_a_key_emitted_twice_is_not_a_duplicate() -> None:
    emitted = {1001: "k1", 1002: "k1"}
    assert classify_duplicates([stream("k1", 1001), stream("k1", 1002)], {"k1": [1001, 1002]}) == {}
    result = verdict(emitted=emitted, bodies=[stream("k1", 1001), stream("k1", 1002), poll("k1")])
    assert result.ok, result.problems()
    assert result.duplicates == {"two changes one key": 1}


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


def test_a_non_zero_exit_after_sigterm_is_reported() -> None:
    result = verdict(exits=(0, 1))
    assert result.bad_exits == [1]
    assert "relay exit status after SIGTERM [1]" in result.problems()
