"""The poll fallback for many chains, sans I/O: every enabled chain's verdict, the chains no live
worker holds, and which chains one invocation polls (docs/poll-fallback.md, "Many chains").

In fleet mode (`RELAY_FLEET=true`) no chain session writes `heartbeat#<id>`. Each stream task
writes one worker item listing the chains it runs, each with a `balance.ChainSummary` (state, since
when, last event, checkpoint, lag). One scheduled invocation reads the registry, the worker items
and every enabled chain's `fallback#<id>` record (batched reads, fleet_fallback.py), and
`judge_fleet` decides. No I/O, no clock: `now` is passed in.

Rules (a test each in tests/unit/test_fleet_health.py):

* **Per chain, today's verdict.** The summary of the live worker that lists the chain becomes the
  `Heartbeat` that `health.decide` judges, with today's thresholds and hysteresis: its state, the
  worker's heartbeat time, and `since` (when the chain entered that state) in place of
  `lastFrameAt`, so "not connected for longer than the grace" counts from `since`. A worker is
  live while its heartbeat is younger than `worker_timeout` (20 s, as for balancing). A chain that
  no live worker lists (none lists it, or its worker is silent) is **between holders** when its
  lease item shows a holder renewed it (`renewedAt`, kept by a release): it is judged as not
  connected since that renewal, with today's grace, as a single chain's `stopped` heartbeat is
  during a deployment. A handover (release, then the receiver's next pass and worker item: about
  20 s) or a task's graceful stop stays within the grace; a dead task's chains are unhealthy once
  the grace has run from its last renewal (the survivors take them within 40 s). A chain without a
  lease item (never held) has **no heartbeat**: unhealthy at once, as a missing heartbeat is
  today. When two live workers list one chain (a handover in flight), the connected one counts,
  else the newest heartbeat.
* **Since when down.** As today, "since when" is the earlier of `since` and the record's
  `streamDownSince`, but the record counts only while it is fresh (written within
  `down_memory_seconds`, about two ticks): a healthy chain's record is rewritten only now and
  then, and an old `streamDownSince` may predate a connected spell the fallback never saw.
* **Shards.** A chain belongs to shard `shard_of(id, shards)`: SHA-256 of its id, modulo the
  number of shards (stable across processes, unlike Python's salted `hash`). Only its shard polls
  it and writes its record, so each record has one writer.
* **Active polls** (publish what is polled): this shard's chains whose decision is active, that is
  unhealthy, or healthy but still in the recovery period (hysteresis, as today: both channels run
  until the stream has been healthy for `RELAY_HEALTH_RECOVER_SECONDS`). A chain judged healthy
  whose fallback is not active is never polled as active. Most urgent first: unhealthy before
  recovering; among the unhealthy, the longest uncovered first (down since, or polled last, if
  that is later), so a new outage goes first and a cap never starves a chain: one polled at this
  tick goes to the back. At most `max_chains`; the rest are `deferred` to the next tick.
* **Healthy drains.** Today's backlog rule (drain and discard while the stream is healthy, so that
  the next outage does not start with a flood of stale duplicates), bounded: at most
  `healthy_drains` of this shard's healthy, inactive chains per invocation, round robin (the one
  drained longest ago first, never drained first).
* **Counts** (`unhealthy`, `without_holder`, `fallback_active`) cover every enabled chain, every
  shard: each invocation reports the whole fleet (read them with the Maximum statistic).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, TypeGuard

from .balance import BalanceConfig, ChainSummary, LeaseView, WorkerRecord
from .config import ConfigError
from .health import FallbackDecision, HealthThresholds, decide
from .state import FallbackRecord, Heartbeat, StreamState

if TYPE_CHECKING:
    from .registry import Subscription

#: Most shards a schedule may name (the template creates at most this many schedules).
MAX_SHARDS: Final = 8
#: Chains one invocation polls as active at most (the rest wait for the next tick).
DEFAULT_MAX_CHAINS: Final = 40
#: Healthy chains one invocation drains (and discards) at most, round robin.
DEFAULT_HEALTHY_DRAINS: Final = 4
#: A record's `streamDownSince` counts this long after the record was written (about two ticks).
DEFAULT_DOWN_MEMORY_SECONDS: Final = 150.0


@dataclass(frozen=True, slots=True)
class Shard:
    """Which part of the registry one invocation covers: shard `index` of `count`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"the number of shards must be from 1 to {MAX_SHARDS}")
        if not 0 <= self.index < self.count:
            raise ValueError("the shard must be from 0 to the number of shards less one")

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"

    def owns(self, subscription_id: str) -> bool:
        return shard_of(subscription_id, self.count) == self.index


def shard_of(subscription_id: str, shards: int) -> int:
    """The shard a subscription belongs to: the first 8 bytes of SHA-256 of its id, modulo `shards`.
    The same in every process and Python version (Python's `hash` of a str is salted per process)."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    digest = hashlib.sha256(subscription_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_from_input(event: object) -> Shard:
    """The shard a scheduled invocation covers: its input `{"shard": k, "shards": n}` (the
    template's schedules pass it). Without those keys (an invocation by hand, EventBridge's own
    event, `{}`): shard 0 of 1. Anything else is a `ConfigError`, one line."""
    if not isinstance(event, Mapping) or ("shard" not in event and "shards" not in event):
        return Shard()
    index, count = event.get("shard"), event.get("shards")
    if _whole(index) and _whole(count):
        try:
            return Shard(index, count)
        except ValueError as exc:
            raise ConfigError(f"poll schedule input: {exc} (got shard={index}, shards={count})") from None
    raise ConfigError(
        'poll schedule input: expected {"shard": k, "shards": n} with whole numbers '
        f"(got shard={index!r}, shards={count!r})"
    )


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class FleetPollOptions:
    max_chains: int = DEFAULT_MAX_CHAINS
    healthy_drains: int = DEFAULT_HEALTHY_DRAINS
    worker_timeout: float = BalanceConfig().worker_timeout
    down_memory_seconds: float = DEFAULT_DOWN_MEMORY_SECONDS

    def __post_init__(self) -> None:
        if self.max_chains < 1:
            raise ValueError("max_chains must be at least 1")
        if self.healthy_drains < 0:
            raise ValueError("healthy_drains must not be negative")
        if self.worker_timeout <= 0 or self.down_memory_seconds < 0:
            raise ValueError("worker_timeout must be positive, down_memory_seconds not negative")


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """One enabled chain at this tick."""

    subscription_id: str
    shard: int
    holder: str | None  # the live worker whose summary was judged; None: no live worker lists it
    heartbeat: Heartbeat | None  # what `decide` judged (built from that summary)
    decision: FallbackDecision
    uncovered_since: float  # unhealthy: since when it is down and not polled; else its last tick

    @property
    def healthy(self) -> bool:
        return self.decision.health.healthy

    @property
    def active(self) -> bool:
        return self.decision.active


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """What one invocation does: the verdict of every enabled chain (all shards), and the chains
    of its own shard it polls as active (`poll`, most urgent first), defers, and drains."""

    shard: Shard
    verdicts: Mapping[str, ChainVerdict]
    poll: tuple[str, ...] = ()
    deferred: tuple[str, ...] = ()
    drain: tuple[str, ...] = ()

    @property
    def unhealthy(self) -> tuple[str, ...]:
        return tuple(sorted(c for c, v in self.verdicts.items() if not v.healthy))

    @property
    def without_holder(self) -> tuple[str, ...]:
        return tuple(sorted(c for c, v in self.verdicts.items() if v.holder is None))

    @property
    def fallback_active(self) -> tuple[str, ...]:
        return tuple(sorted(c for c, v in self.verdicts.items() if v.active))

    @property
    def mine(self) -> tuple[str, ...]:
        """This shard's enabled chains."""
        return tuple(sorted(c for c, v in self.verdicts.items() if v.shard == self.shard.index))


def heartbeat_from_summary(worker: WorkerRecord, summary: ChainSummary) -> Heartbeat:
    """A worker item's line about one chain as the `Heartbeat` `health.judge_stream` reads: its
    state, the worker's heartbeat time, and `since` standing in for the last frame when the chain
    is not connected (since when it is down)."""
    known = summary.state in StreamState._value2member_map_
    state: StreamState | str = StreamState(summary.state) if known else summary.state
    return Heartbeat(
        state=state,
        owner=worker.worker,
        updated_at=worker.heartbeat_at,
        last_frame_at=None if state == StreamState.CONNECTED else summary.since,
        last_event_at=summary.last_event_at,
        checkpoint=summary.checkpoint,
        lag_seconds=summary.lag_seconds,
    )


def live_summaries(
    workers: Mapping[str, WorkerRecord], now: float, *, worker_timeout: float
) -> dict[str, tuple[WorkerRecord, ChainSummary]]:
    """Per chain, the live worker that lists it and its summary. Several: the connected one first,
    then the newest heartbeat, then the worker id (deterministic)."""
    best: dict[str, tuple[WorkerRecord, ChainSummary]] = {}

    def rank(entry: tuple[WorkerRecord, ChainSummary]) -> tuple[bool, float, str]:
        worker, summary = entry
        return (summary.state == StreamState.CONNECTED, worker.heartbeat_at, worker.worker)

    for name in sorted(workers):
        worker = workers[name]
        if now - worker.heartbeat_at >= worker_timeout:
            continue
        for chain, summary in worker.chains.items():
            current = best.get(chain)
            if current is None or rank((worker, summary)) > rank(current):
                best[chain] = (worker, summary)
    return best


def between_holders(lease: LeaseView, now: float) -> Heartbeat | None:
    """A chain no live worker lists, as the `Heartbeat` `decide` judges: not connected since its
    last renewal (`renewedAt`), seen now. None when no holder ever renewed it."""
    if lease.renewed_at is None:
        return None
    return Heartbeat(
        state=StreamState.STANDBY,
        owner=lease.owner or "",
        updated_at=now,
        last_frame_at=min(lease.renewed_at, now),
    )


def judge_fleet(
    subscriptions: Iterable[Subscription],
    workers: Mapping[str, WorkerRecord],
    records: Mapping[str, FallbackRecord],
    now: float,
    thresholds: HealthThresholds,
    *,
    shard: Shard = Shard(),
    options: FleetPollOptions | None = None,
    leases: Mapping[str, LeaseView] | None = None,
) -> FleetPlan:
    """Judge every enabled subscription and plan this invocation (see the module docstring).
    `records`: the `fallback#<id>` records found, by subscription id (a missing one: never ticked).
    `leases`: the lease items found (for chains no live worker lists: since when without holder)."""
    opts = options or FleetPollOptions()
    live = live_summaries(workers, now, worker_timeout=opts.worker_timeout)
    verdicts: dict[str, ChainVerdict] = {}
    for subscription in subscriptions:
        if not subscription.enabled:
            continue
        chain = subscription.id
        prior = records.get(chain)
        judged = prior
        if prior is not None and prior.stream_down_since is not None:
            written = prior.last_tick_at
            if written is None or now - written > opts.down_memory_seconds:
                judged = replace(prior, stream_down_since=None)  # may predate a spell it never saw
        holder: str | None = None
        heartbeat: Heartbeat | None = None
        if chain in live:
            worker, summary = live[chain]
            holder, heartbeat = worker.worker, heartbeat_from_summary(worker, summary)
        elif leases is not None and chain in leases:
            heartbeat = between_holders(leases[chain], now)
        decision = decide(judged, heartbeat, now, thresholds)
        last_tick = prior.last_tick_at if prior is not None and prior.last_tick_at is not None else -math.inf
        if decision.health.healthy:
            uncovered = last_tick
        else:
            down = decision.health.down_since if decision.health.down_since is not None else now
            uncovered = max(down, last_tick)
        verdicts[chain] = ChainVerdict(
            subscription_id=chain,
            shard=shard_of(chain, shard.count),
            holder=holder,
            heartbeat=heartbeat,
            decision=decision,
            uncovered_since=uncovered,
        )
    mine = [v for v in verdicts.values() if v.shard == shard.index]
    unhealthy = sorted(
        (v for v in mine if not v.healthy), key=lambda v: (v.uncovered_since, v.subscription_id)
    )
    recovering = sorted(
        (v for v in mine if v.healthy and v.active), key=lambda v: (v.uncovered_since, v.subscription_id)
    )
    active = [v.subscription_id for v in unhealthy + recovering]
    resting = sorted(
        (v for v in mine if v.healthy and not v.active), key=lambda v: (v.uncovered_since, v.subscription_id)
    )
    return FleetPlan(
        shard=shard,
        verdicts=verdicts,
        poll=tuple(active[: opts.max_chains]),
        deferred=tuple(active[opts.max_chains :]),
        drain=tuple(v.subscription_id for v in resting[: opts.healthy_drains]),
    )
