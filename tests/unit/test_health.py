"""The stream health rule and the fallback's hysteresis (pure: time is passed in)."""

from __future__ import annotations

import pytest

from ohip_relay.health import FallbackDecision, HealthThresholds, decide, judge_stream
from ohip_relay.state import FallbackRecord, Heartbeat, StreamState

T = HealthThresholds(stale_seconds=30, grace_seconds=60, recover_seconds=120)
NOW = 1_800_000_000.0


def beat(state: StreamState | str = StreamState.CONNECTED, *, age: float = 1.0, **kw: float) -> Heartbeat:
    return Heartbeat(state=state, owner="task-1", updated_at=NOW - age, **kw)  # type: ignore[arg-type]


def test_missing_heartbeat_is_unhealthy_at_once() -> None:
    health = judge_stream(None, NOW, T)
    assert not health.healthy
    assert health.reason == "no heartbeat"


def test_connected_and_fresh_is_healthy() -> None:
    health = judge_stream(beat(age=29), NOW, T)
    assert health.healthy
    assert health.down_since is None


def test_stale_heartbeat_is_unhealthy_whatever_its_state() -> None:
    health = judge_stream(beat(age=31), NOW, T)
    assert not health.healthy
    assert "stale" in health.reason


def test_heartbeat_from_the_future_counts_as_fresh() -> None:
    assert judge_stream(beat(age=-5), NOW, T).healthy


@pytest.mark.parametrize("state", [StreamState.BACKOFF, StreamState.CONNECTING, "some-new-state"])
def test_not_connected_within_grace_is_healthy_beyond_it_unhealthy(state: StreamState | str) -> None:
    # since when: the last frame the consumer received
    within = judge_stream(beat(state, last_frame_at=NOW - 60), NOW, T)
    assert within.healthy
    assert within.down_since == NOW - 60
    beyond = judge_stream(beat(state, last_frame_at=NOW - 61), NOW, T)
    assert not beyond.healthy
    assert str(state) in beyond.reason


def test_not_connected_without_frames_counts_from_the_fallbacks_own_observation() -> None:
    first = judge_stream(beat(StreamState.CONNECTING), NOW, T)
    assert first.healthy
    assert first.down_since == NOW
    later = judge_stream(beat(StreamState.CONNECTING), NOW + 61, T, seen_down_since=first.down_since)
    assert not later.healthy
    # the earlier of the two clues wins
    both = judge_stream(beat(StreamState.BACKOFF, last_frame_at=NOW - 10), NOW, T, seen_down_since=NOW - 100)
    assert not both.healthy
    assert both.down_since == NOW - 100


def run(ticks: list[tuple[float, Heartbeat | None]]) -> list[FallbackDecision]:
    record: FallbackRecord | None = None
    out = []
    for now, heartbeat in ticks:
        decision = decide(record, heartbeat, now, T)
        record = decision.record
        out.append(decision)
    return out


def fresh(now: float, state: StreamState = StreamState.CONNECTED, **kw: float) -> Heartbeat:
    return Heartbeat(state=state, owner="task-1", updated_at=now - 1, **kw)


def test_fallback_starts_at_the_first_unhealthy_tick() -> None:
    d = run([(NOW, fresh(NOW)), (NOW + 60, None)])
    assert [x.active for x in d] == [False, True]
    assert d[1].started
    assert not d[1].stopped
    assert d[1].record.since == NOW + 60


def test_hysteresis_keeps_the_fallback_until_healthy_for_the_recover_period() -> None:
    t = NOW
    d = run(
        [
            (t, None),  # unhealthy: start
            (t + 60, fresh(t + 60)),  # healthy since t+60
            (t + 120, fresh(t + 120)),  # 60 s healthy: still active
            (t + 179, fresh(t + 179)),  # 119 s: still active
            (t + 180, fresh(t + 180)),  # 120 s: stop
            (t + 240, fresh(t + 240)),
        ]
    )
    assert [x.active for x in d] == [True, True, True, True, False, False]
    assert d[1].record.healthy_since == t + 60
    assert d[4].stopped
    assert d[4].record.since == t + 180
    assert d[4].record.healthy_since is None


def test_an_unhealthy_tick_during_recovery_restarts_the_count() -> None:
    t = NOW
    d = run(
        [
            (t, None),
            (t + 60, fresh(t + 60)),
            (t + 120, fresh(t + 120, StreamState.BACKOFF, last_frame_at=t)),  # down since t: unhealthy
            (t + 180, fresh(t + 180)),
            (t + 299, fresh(t + 299)),
            (t + 300, fresh(t + 300)),
        ]
    )
    assert [x.active for x in d] == [True, True, True, True, True, False]
    assert not any(x.started for x in d[1:])
    assert d[3].record.healthy_since == t + 180


def test_a_short_blip_within_grace_never_starts_the_fallback() -> None:
    t = NOW
    d = run(
        [
            (t, fresh(t)),
            (t + 60, fresh(t + 60, StreamState.BACKOFF, last_frame_at=t + 50)),
            (t + 120, fresh(t + 120)),
        ]
    )
    assert not any(x.active for x in d)
    assert d[1].record.stream_down_since == t + 50
    assert d[2].record.stream_down_since is None


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="stale"):
        HealthThresholds(stale_seconds=0)
    with pytest.raises(ValueError, match="negative"):
        HealthThresholds(recover_seconds=-1)
