"""Is the stream healthy, and should the poll fallback be active? Pure code: time is passed in.

The stream consumer writes a heartbeat every few seconds (`state.Heartbeat`); the poll fallback reads
it once per tick and decides with `decide()`:

* the stream is **unhealthy** when its heartbeat is missing, older than `stale_seconds`, says `failed` (the
  consumer ended on an error), `regressed` (it stopped streaming because OHIP's offsets went backwards)
  or `auth-failed` (OHIP refuses its credentials),
  or its state has not been `connected` for longer than `grace_seconds`. "Since when" comes from the
  heartbeat's `last_frame_at` (the last sign of life on a connection) and from the fallback's own record of
  the first tick that saw the stream not connected, whichever is earlier;
* **hysteresis**: the fallback becomes active at the first tick that judges the stream unhealthy,
  and stays active until the stream has been judged healthy at every tick for `recover_seconds`.
  A single unhealthy tick during that period starts the count again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .state import FallbackRecord, Heartbeat, StreamState

_UNHEALTHY_AT_ONCE = frozenset({StreamState.FAILED, StreamState.REGRESSED, StreamState.AUTH_FAILED})


@dataclass(frozen=True)
class HealthThresholds:
    stale_seconds: float = 30.0
    grace_seconds: float = 60.0
    recover_seconds: float = 120.0

    def __post_init__(self) -> None:
        if self.stale_seconds <= 0:
            raise ValueError("stale_seconds must be positive")
        if self.grace_seconds < 0 or self.recover_seconds < 0:
            raise ValueError("grace_seconds and recover_seconds must not be negative")


@dataclass(frozen=True)
class StreamHealth:
    """The verdict on one observation of the heartbeat."""

    healthy: bool
    reason: str  # short, for logs and the fallback item: "connected", "heartbeat stale (45s)"...
    down_since: float | None  # since when the stream is known not to be connected; None if it is


def judge_stream(
    heartbeat: Heartbeat | None,
    now: float,
    thresholds: HealthThresholds,
    *,
    seen_down_since: float | None = None,
) -> StreamHealth:
    """Judge one heartbeat. `seen_down_since` is the fallback's own record of since when it has seen
    the stream not connected (None if it saw it connected last time)."""
    if heartbeat is None:
        return StreamHealth(False, "no heartbeat", seen_down_since if seen_down_since is not None else now)
    age = heartbeat.age(now)
    connected = heartbeat.state == StreamState.CONNECTED
    if connected:
        down_since = None
    else:
        candidates = [t for t in (heartbeat.last_frame_at, seen_down_since) if t is not None]
        down_since = min(candidates) if candidates else now
        down_since = min(down_since, now)
    if age > thresholds.stale_seconds:
        return StreamHealth(False, f"heartbeat stale ({age:.0f}s)", down_since)
    if connected:
        return StreamHealth(True, "connected", None)
    assert down_since is not None
    if heartbeat.state in _UNHEALTHY_AT_ONCE:  # no successor is on its way: no grace
        return StreamHealth(False, str(heartbeat.state), down_since)
    down_for = now - down_since
    state = str(heartbeat.state)
    if down_for > thresholds.grace_seconds:
        return StreamHealth(False, f"{state} for {down_for:.0f}s", down_since)
    return StreamHealth(True, f"{state} for {down_for:.0f}s (within grace)", down_since)


@dataclass(frozen=True)
class FallbackDecision:
    health: StreamHealth
    record: FallbackRecord  # the new state to persist (decision fields only)
    started: bool  # the fallback became active at this tick
    stopped: bool  # the fallback became inactive at this tick

    @property
    def active(self) -> bool:
        return self.record.active


def decide(
    previous: FallbackRecord | None,
    heartbeat: Heartbeat | None,
    now: float,
    thresholds: HealthThresholds,
) -> FallbackDecision:
    """The fallback's state after a tick at `now` that read `heartbeat` (see the module docstring)."""
    prior = previous or FallbackRecord()
    health = judge_stream(heartbeat, now, thresholds, seen_down_since=prior.stream_down_since)
    active, since, healthy_since = prior.active, prior.since, prior.healthy_since
    started = stopped = False
    if not health.healthy:
        healthy_since = None
        if not active:
            active, since, started = True, now, True
    elif active:
        healthy_since = healthy_since if healthy_since is not None else now
        if now - healthy_since >= thresholds.recover_seconds:
            active, since, healthy_since, stopped = False, now, None, True
    else:
        healthy_since = None
    record = replace(
        prior,
        active=active,
        since=since,
        healthy_since=healthy_since,
        stream_down_since=health.down_since,
        last_tick_at=now,
        last_reason=health.reason,
    )
    return FallbackDecision(health=health, record=record, started=started, stopped=stopped)
