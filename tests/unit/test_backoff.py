"""Close-code classification and reconnect backoff: pure, deterministic, one test per rule."""

from __future__ import annotations

import random

import pytest

from ohip_relay.backoff import (
    AUTH_RETRY_CAP,
    AUTH_RETRY_FIRST,
    CONFLICT_LOCKOUT,
    Backoff,
    CloseKind,
    CloseOutcome,
    auth_retry_floor,
    classify_close,
    classify_handshake_status,
    full_jitter,
)


class FixedRandom(random.Random):
    """A Random whose draws are all `value`: pins the jitter to a known point."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# -- classification -----------------------------------------------------------------------------


def test_4401_renews_the_token_and_retries() -> None:
    outcome = classify_close(4401, "token expired")
    assert outcome.kind is CloseKind.RENEW_TOKEN
    assert outcome.renew_token
    assert not outcome.alarm


def test_4403_is_permanent_alarms_and_retries_only_slowly() -> None:
    outcome = classify_close(4403)
    assert outcome.permanent
    assert outcome.alarm
    assert not outcome.renew_token
    assert 300.0 <= outcome.min_delay <= 900.0


def test_4409_waits_out_the_lockout() -> None:
    outcome = classify_close(4409)
    assert outcome.kind is CloseKind.CONFLICT
    assert outcome.min_delay >= 10.0
    assert not outcome.alarm


@pytest.mark.parametrize("code", [4400, 4406, 4408, 4429, 4500, 4504, 1000, 1001, 1006, 1011, 1012])
def test_other_documented_codes_are_transient(code: int) -> None:
    outcome = classify_close(code)
    assert outcome.kind is CloseKind.TRANSIENT
    assert not outcome.renew_token
    assert outcome.min_delay < 60.0


def test_a_clean_close_after_our_complete_is_expected() -> None:
    assert classify_close(1000, after_complete=True).expected
    assert classify_close(1006, after_complete=True).kind is CloseKind.TRANSIENT


@pytest.mark.parametrize("code", [3000, 4001, 4999, 1015])
def test_unknown_codes_are_transient(code: int) -> None:
    outcome = classify_close(code)
    assert outcome.kind is CloseKind.TRANSIENT
    assert str(code) in outcome.reason


def test_no_close_code_counts_as_an_abnormal_close() -> None:
    outcome = classify_close(None)
    assert (outcome.code, outcome.kind) == (1006, CloseKind.TRANSIENT)


def test_throttling_codes_have_a_floor() -> None:
    assert classify_close(4429).min_delay >= 10.0
    assert classify_close(1013).min_delay >= 10.0


def test_oversized_frames_alarm_because_replay_repeats_them() -> None:
    outcome = classify_close(1009)
    assert outcome.kind is CloseKind.TRANSIENT
    assert outcome.alarm


def test_the_peer_reason_is_one_trimmed_printable_line() -> None:
    outcome = classify_close(4500, "boom\r\nInjected: line\x00" + "x" * 500)
    assert outcome.peer_reason.startswith("boom  Injected: line")
    assert outcome.peer_reason.isprintable()
    assert len(outcome.peer_reason) <= 123


@pytest.mark.parametrize(
    ("status", "kind", "renew"),
    [
        (401, CloseKind.RENEW_TOKEN, True),
        (403, CloseKind.PERMANENT, False),
        (404, CloseKind.PERMANENT, False),
        (409, CloseKind.CONFLICT, False),
        (429, CloseKind.TRANSIENT, False),
        (502, CloseKind.TRANSIENT, False),
    ],
)
def test_handshake_statuses_mirror_the_close_codes(status: int, kind: CloseKind, renew: bool) -> None:
    outcome = classify_handshake_status(status)
    assert (outcome.code, outcome.kind, outcome.renew_token) == (status, kind, renew)
    assert CloseOutcome.for_handshake_status(status) == outcome


def test_token_endpoint_failures_are_permanent_only_when_told() -> None:
    permanent = CloseOutcome.for_auth_failure(permanent=True)
    assert permanent.permanent
    assert permanent.alarm
    assert permanent.min_delay == AUTH_RETRY_FIRST
    assert CloseOutcome.for_auth_failure(permanent=False).kind is CloseKind.TRANSIENT


def test_refused_credentials_are_retried_on_a_doubling_schedule_with_a_cap() -> None:
    floors = [CloseOutcome.for_auth_failure(permanent=True, refusals=n).min_delay for n in range(1, 8)]
    assert floors == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0, 300.0]
    assert auth_retry_floor(10_000) == AUTH_RETRY_CAP
    with pytest.raises(ValueError, match="from 1"):
        auth_retry_floor(0)


# -- backoff ------------------------------------------------------------------------------------


def test_full_jitter_draws_below_the_exponential_ceiling() -> None:
    assert full_jitter(0, 1.0, 60.0, 0.5) == 0.5
    assert full_jitter(3, 1.0, 60.0, 0.5) == 4.0
    assert full_jitter(10, 1.0, 60.0, 0.5) == 30.0  # capped at 60
    assert full_jitter(10_000, 1.0, 60.0, 0.5) == 30.0  # no overflow
    with pytest.raises(ValueError, match="u must be"):
        full_jitter(0, 1.0, 60.0, 1.0)


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=20.0, rng=FixedRandom(0.999))
    delays = [backoff.next_delay() for _ in range(7)]
    assert delays == pytest.approx([0.999, 1.998, 3.996, 7.992, 15.984, 19.98, 19.98])
    assert backoff.attempt == 7


def test_delays_are_deterministic_for_a_seeded_rng() -> None:
    one = Backoff(base=0.5, cap=30.0, rng=random.Random(42))
    two = Backoff(base=0.5, cap=30.0, rng=random.Random(42))
    first = [one.next_delay() for _ in range(20)]
    assert first == [two.next_delay() for _ in range(20)]
    assert all(0.0 <= d <= 30.0 for d in first)
    assert len(set(first)) > 1  # jittered, not constant


def test_the_outcome_floor_is_added_to_the_jitter() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=FixedRandom(0.0))
    assert backoff.next_delay(classify_close(4409)) == CONFLICT_LOCKOUT
    jittered = Backoff(base=1.0, cap=60.0, rng=FixedRandom(0.5))
    for _ in range(10):
        jittered.next_delay()
    assert jittered.next_delay(classify_close(4409)) == CONFLICT_LOCKOUT + 30.0


def test_a_forbidden_stream_is_never_retried_hot() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    delays = [backoff.next_delay(classify_close(4403)) for _ in range(50)]
    assert min(delays) >= 300.0
    assert max(delays) <= 900.0


def test_a_healthy_connection_resets_the_backoff() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=FixedRandom(0.5), healthy_after=120.0)
    for _ in range(6):
        backoff.next_delay()
    assert backoff.next_delay(healthy_for=30.0) == 30.0  # short-lived: keeps climbing
    assert backoff.next_delay(healthy_for=120.0) == 0.5  # healthy long enough: back to base
    assert backoff.attempt == 1
    backoff.reset()
    assert backoff.attempt == 0


@pytest.mark.parametrize(
    ("base", "cap", "healthy_after"),
    [(0.0, 10.0, 1.0), (5.0, 1.0, 1.0), (1.0, 10.0, -1.0)],
)
def test_backoff_parameters_are_validated(base: float, cap: float, healthy_after: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Backoff(base=base, cap=cap, rng=random.Random(0), healthy_after=healthy_after)


def test_the_protocol_module_re_exports_the_policy() -> None:
    from ohip_relay import protocol

    assert protocol.Backoff is Backoff
    assert protocol.classify_close is classify_close
