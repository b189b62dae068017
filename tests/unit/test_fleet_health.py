"""The fleet's poll fallback core (fleet_health.py): one rule per test, then properties.

Every chain's verdict comes from the live worker's summary as `health.decide` judges a heartbeat;
no live holder is "no heartbeat"; only the chain's own shard polls it; active chains are polled most
urgent first and at most `max_chains`; healthy ones are drained round robin, bounded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ohip_relay.balance import ChainSummary, LeaseView, WorkerRecord
from ohip_relay.config import ConfigError
from ohip_relay.fleet_health import (
    MAX_SHARDS,
    FleetPlan,
    FleetPollOptions,
    Shard,
    heartbeat_from_summary,
    judge_fleet,
    live_summaries,
    shard_from_input,
    shard_of,
)
from ohip_relay.health import HealthThresholds
from ohip_relay.registry import Subscription
from ohip_relay.state import FallbackRecord, StreamState

NOW = 1_800_000_000.0
T = HealthThresholds(stale_seconds=30.0, grace_seconds=60.0, recover_seconds=120.0)


def sub(chain_id: str, *, enabled: bool = True) -> Subscription:
    return Subscription(
        id=chain_id,
        gateway_url="https://ohip.example.com",
        chain_code="CHAIN",
        secret_arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:ohip/env-a",
        enabled=enabled,
    )


def worker(name: str, chains: Mapping[str, ChainSummary], *, age: float = 2.0) -> WorkerRecord:
    return WorkerRecord(worker=name, heartbeat_at=NOW - age, started_at=NOW - 3600, chains=dict(chains))


def connected(since_ago: float = 600.0) -> ChainSummary:
    return ChainSummary(StreamState.CONNECTED.value, NOW - since_ago)


def down(state: StreamState, since_ago: float) -> ChainSummary:
    return ChainSummary(state.value, NOW - since_ago)


def plan_of(
    ids: list[str],
    workers: list[WorkerRecord],
    records: Mapping[str, FallbackRecord] | None = None,
    *,
    shard: Shard | None = None,
    **options: float,
) -> FleetPlan:
    return judge_fleet(
        [sub(i) for i in ids],
        {w.worker: w for w in workers},
        records or {},
        NOW,
        T,
        shard=shard or Shard(),
        options=FleetPollOptions(**options),  # type: ignore[arg-type]
    )


# -- verdicts ------------------------------------------------------------------------------------


def test_a_connected_chain_of_a_live_worker_is_healthy_and_left_alone() -> None:
    plan = plan_of(["A"], [worker("w1", {"A": connected()})], healthy_drains=0)
    verdict = plan.verdicts["A"]
    assert verdict.healthy
    assert not verdict.active
    assert verdict.holder == "w1"
    assert (plan.poll, plan.deferred, plan.drain, plan.unhealthy, plan.without_holder) == ((), (), (), (), ())


def test_a_chain_no_worker_lists_has_no_heartbeat_unhealthy_at_once() -> None:
    plan = plan_of(["A", "B"], [worker("w1", {"A": connected()})])
    verdict = plan.verdicts["B"]
    assert not verdict.healthy
    assert verdict.active
    assert verdict.decision.started
    assert verdict.decision.health.reason == "no heartbeat"
    assert verdict.holder is None
    assert verdict.heartbeat is None
    assert plan.without_holder == ("B",)
    assert plan.poll == ("B",)


def test_a_chain_between_holders_is_judged_from_its_last_renewal_with_todays_grace() -> None:
    """A handover or a graceful stop leaves a chain unlisted for about 20 s: within the grace, as a
    single chain's deployment is; a dead holder's chain is down once the grace ran from its last
    renewal; a chain never held has no heartbeat at all."""
    leases = {
        "HANDED": LeaseView(owner=None, renewed_at=NOW - 15, handover_to="w2", handover_at=NOW - 8),
        "DEAD": LeaseView(owner="w9", lease_until=NOW - 60, renewed_at=NOW - 90),
    }
    plan = judge_fleet([sub("HANDED"), sub("DEAD"), sub("NEVER")], {}, {}, NOW, T, leases=leases)
    handed, dead, never = (plan.verdicts[c] for c in ("HANDED", "DEAD", "NEVER"))
    assert handed.healthy
    assert not handed.active
    assert "within grace" in handed.decision.health.reason
    assert not dead.healthy
    assert dead.decision.health.down_since == NOW - 90
    assert never.decision.health.reason == "no heartbeat"
    assert plan.without_holder == ("DEAD", "HANDED", "NEVER")  # the alarm still counts them
    assert set(plan.poll) == {"DEAD", "NEVER"}


def test_a_silent_worker_holds_nothing() -> None:
    plan = plan_of(["A"], [worker("w1", {"A": connected()}, age=20.0)])
    assert plan.without_holder == ("A",)
    assert plan.verdicts["A"].decision.health.reason == "no heartbeat"
    assert plan.poll == ("A",)


def test_not_connected_counts_from_since_with_todays_grace() -> None:
    plan = plan_of(
        ["A", "B"], [worker("w1", {"A": down(StreamState.BACKOFF, 120), "B": down(StreamState.BACKOFF, 30)})]
    )
    a, b = plan.verdicts["A"], plan.verdicts["B"]
    assert not a.healthy
    assert a.decision.health.reason == "backoff for 120s"
    assert a.decision.health.down_since == NOW - 120
    assert b.healthy
    assert "within grace" in b.decision.health.reason
    assert plan.poll == ("A",)


@pytest.mark.parametrize("state", [StreamState.FAILED, StreamState.REGRESSED, StreamState.AUTH_FAILED])
def test_states_without_a_successor_are_unhealthy_at_once(state: StreamState) -> None:
    plan = plan_of(["A"], [worker("w1", {"A": down(state, 1)})])
    assert not plan.verdicts["A"].healthy
    assert plan.without_holder == ()  # held, but down


def test_the_summary_becomes_the_heartbeat_decide_judges() -> None:
    w = worker(
        "w1", {"A": ChainSummary("backoff", NOW - 90, last_event_at=NOW - 95, checkpoint=7, lag_seconds=3.0)}
    )
    beat = heartbeat_from_summary(w, w.chains["A"])
    assert beat.state == StreamState.BACKOFF
    assert beat.owner == "w1"
    assert beat.updated_at == w.heartbeat_at
    assert beat.last_frame_at == NOW - 90  # since when it is not connected
    assert (beat.last_event_at, beat.checkpoint, beat.lag_seconds) == (NOW - 95, 7, 3.0)
    assert heartbeat_from_summary(w, connected()).last_frame_at is None
    assert heartbeat_from_summary(w, ChainSummary("newer-state", NOW)).state == "newer-state"


def test_of_two_live_workers_the_connected_one_counts() -> None:
    a = worker("w1", {"A": down(StreamState.DRAINING, 300)}, age=1.0)
    b = worker("w2", {"A": connected(5)}, age=8.0)
    assert live_summaries({"w1": a, "w2": b}, NOW, worker_timeout=20.0)["A"][0].worker == "w2"
    plan = plan_of(["A"], [a, b])
    assert plan.verdicts["A"].holder == "w2"
    assert plan.verdicts["A"].healthy
    # neither connected: the newest heartbeat
    c = worker("w3", {"A": down(StreamState.CONNECTING, 5)}, age=0.5)
    assert live_summaries({"w1": a, "w3": c}, NOW, worker_timeout=20.0)["A"][0].worker == "w3"


def test_disabled_subscriptions_are_not_judged() -> None:
    plan = judge_fleet([sub("A"), sub("B", enabled=False)], {}, {}, NOW, T)
    assert set(plan.verdicts) == {"A"}
    assert plan.poll == ("A",)


def test_a_fresh_record_keeps_since_when_the_fallback_saw_the_chain_down() -> None:
    # A new holder says "connecting since 10 s ago", but the fallback saw the chain down 2 minutes
    # ago, one tick earlier: not connected for 120 s, past the grace (today's rule).
    record = FallbackRecord(active=True, since=NOW - 60, stream_down_since=NOW - 120, last_tick_at=NOW - 60)
    plan = plan_of(["A"], [worker("w1", {"A": down(StreamState.CONNECTING, 10)})], {"A": record})
    verdict = plan.verdicts["A"]
    assert not verdict.healthy
    assert verdict.decision.health.down_since == NOW - 120
    assert not verdict.decision.started  # it was active already


def test_a_stale_record_does_not_make_a_new_blip_an_outage() -> None:
    # The record's streamDownSince is from a blip long ago (the chain was drained then, healthy,
    # within the grace); the chain has been connected in between. A new backoff of 10 s is not an
    # outage of 30 minutes.
    record = FallbackRecord(active=False, stream_down_since=NOW - 1800, last_tick_at=NOW - 1790)
    plan = plan_of(["A"], [worker("w1", {"A": down(StreamState.BACKOFF, 10)})], {"A": record})
    assert plan.verdicts["A"].healthy
    assert plan.verdicts["A"].decision.health.down_since == NOW - 10


# -- hysteresis --------------------------------------------------------------------------------


def test_a_recovering_chain_is_polled_as_active_after_the_unhealthy_ones() -> None:
    recovering = FallbackRecord(active=True, since=NOW - 600, healthy_since=NOW - 60, last_tick_at=NOW - 60)
    plan = plan_of(["A", "R"], [worker("w1", {"R": connected(60)})], {"R": recovering})
    r = plan.verdicts["R"]
    assert r.healthy
    assert r.active
    assert not r.decision.stopped
    assert plan.poll == ("A", "R")


def test_a_chain_healthy_for_the_recovery_period_stops_and_is_not_polled_as_active() -> None:
    recovered = FallbackRecord(active=True, since=NOW - 600, healthy_since=NOW - 120, last_tick_at=NOW - 60)
    plan = plan_of(["R"], [worker("w1", {"R": connected(130)})], {"R": recovered}, healthy_drains=0)
    r = plan.verdicts["R"]
    assert r.decision.stopped
    assert not r.active
    assert plan.poll == ()
    assert plan.drain == ()


# -- order and bounds ----------------------------------------------------------------------------


def test_most_urgent_first_and_at_most_max_chains() -> None:
    workers = [
        worker("w1", {c: down(StreamState.BACKOFF, age) for c, age in (("A", 300), ("B", 900), ("C", 120))})
    ]
    plan = plan_of(["A", "B", "C", "D"], workers, max_chains=3)
    # D has no holder: down since now (no earlier sign). The longest down first.
    assert plan.poll == ("B", "A", "C")
    assert plan.deferred == ("D",)
    assert set(plan.unhealthy) == {"A", "B", "C", "D"}


def test_a_chain_polled_at_the_last_tick_goes_to_the_back() -> None:
    # B is down longest but was polled a minute ago; A was never polled since it went down.
    records = {
        "B": FallbackRecord(active=True, since=NOW - 900, stream_down_since=NOW - 900, last_tick_at=NOW - 60)
    }
    workers = [worker("w1", {"A": down(StreamState.BACKOFF, 300), "B": down(StreamState.BACKOFF, 900)})]
    plan = plan_of(["A", "B"], workers, records, max_chains=1)
    assert plan.poll == ("A",)
    assert plan.deferred == ("B",)


def test_healthy_chains_are_drained_round_robin_and_bounded() -> None:
    healthy = {c: connected() for c in "ABCDE"}
    records = {
        "A": FallbackRecord(last_tick_at=NOW - 60),
        "B": FallbackRecord(last_tick_at=NOW - 300),
        "C": FallbackRecord(last_tick_at=NOW - 120),
    }  # D and E were never drained
    plan = plan_of(list("ABCDE"), [worker("w1", healthy)], records, healthy_drains=3)
    assert plan.drain == ("D", "E", "B")
    assert plan.poll == ()
    assert plan_of(list("ABCDE"), [worker("w1", healthy)], records, healthy_drains=0).drain == ()


# -- shards ------------------------------------------------------------------------------------


def test_shard_of_is_a_stable_hash() -> None:
    digest = hashlib.sha256(b"CHAIN-1").digest()
    assert shard_of("CHAIN-1", 7) == int.from_bytes(digest[:8], "big") % 7
    assert shard_of("CHAIN-1", 7) == 3  # pinned: a change would move every chain to another shard
    assert shard_of("anything", 1) == 0


def test_only_the_chains_own_shard_polls_it() -> None:
    ids = [f"C{i}" for i in range(20)]
    for k in range(3):
        plan = plan_of(ids, [], shard=Shard(k, 3), max_chains=100)
        assert set(plan.poll) == {i for i in ids if shard_of(i, 3) == k}
        assert set(plan.mine) == set(plan.poll)
        assert len(plan.unhealthy) == 20  # the counts are the whole fleet's


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({}, Shard(0, 1)),
        (None, Shard(0, 1)),
        ({"detail-type": "Scheduled Event", "source": "aws.events"}, Shard(0, 1)),
        ({"shard": 2, "shards": 3}, Shard(2, 3)),
    ],
)
def test_the_schedule_input_names_the_shard(event: object, expected: Shard) -> None:
    assert shard_from_input(event) == expected


@pytest.mark.parametrize(
    "event",
    [
        {"shard": 3, "shards": 3},
        {"shard": -1, "shards": 2},
        {"shard": 0, "shards": 0},
        {"shard": 0, "shards": MAX_SHARDS + 1},
        {"shard": "1", "shards": 2},
        {"shard": True, "shards": 2},
        {"shard": 1},
        {"shards": 2},
    ],
)
def test_a_bad_schedule_input_is_one_line(event: object) -> None:
    with pytest.raises(ConfigError, match=r"^poll schedule input: ") as info:
        shard_from_input(event)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "changes",
    [{"max_chains": 0}, {"healthy_drains": -1}, {"worker_timeout": 0.0}, {"down_memory_seconds": -1.0}],
)
def test_options_are_validated(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        FleetPollOptions(**changes)  # type: ignore[arg-type]


# -- properties --------------------------------------------------------------------------------

STATES = [s.value for s in StreamState]


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[str], list[WorkerRecord], dict[str, FallbackRecord]]:
    ids = draw(
        st.lists(st.from_regex(r"[A-Z][A-Z0-9]{0,5}", fullmatch=True), min_size=1, max_size=25, unique=True)
    )
    workers: list[WorkerRecord] = []
    for n in range(draw(st.integers(0, 3))):
        listed = draw(st.lists(st.sampled_from(ids), unique=True, max_size=len(ids)))
        chains = {
            c: ChainSummary(draw(st.sampled_from(STATES)), NOW - draw(st.floats(0, 900))) for c in listed
        }
        workers.append(worker(f"w{n}", chains, age=draw(st.floats(0, 40))))
    records: dict[str, FallbackRecord] = {}
    for chain in draw(st.lists(st.sampled_from(ids), unique=True, max_size=len(ids))):
        active = draw(st.booleans())
        records[chain] = FallbackRecord(
            active=active,
            since=NOW - 1000 if active else None,
            healthy_since=draw(st.one_of(st.none(), st.floats(NOW - 300, NOW))) if active else None,
            stream_down_since=draw(st.one_of(st.none(), st.floats(NOW - 2000, NOW))),
            last_tick_at=draw(st.one_of(st.none(), st.floats(NOW - 2000, NOW))),
        )
    return ids, workers, records


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), st.integers(1, MAX_SHARDS), st.integers(1, 6), st.integers(0, 4))
def test_every_unhealthy_chain_is_in_exactly_one_shard_and_healthy_ones_are_never_polled_as_active(
    fleet: tuple[list[str], list[WorkerRecord], dict[str, FallbackRecord]],
    shards: int,
    max_chains: int,
    healthy_drains: int,
) -> None:
    ids, workers, records = fleet
    plans = [
        plan_of(
            ids,
            workers,
            records,
            shard=Shard(k, shards),
            max_chains=max_chains,
            healthy_drains=healthy_drains,
        )
        for k in range(shards)
    ]
    verdicts = plans[0].verdicts
    for plan in plans[1:]:  # every shard judges the whole fleet alike
        assert {c: v.decision for c, v in plan.verdicts.items()} == {
            c: v.decision for c, v in verdicts.items()
        }
    for chain in plans[0].unhealthy:
        owners = [k for k, plan in enumerate(plans) if chain in plan.poll + plan.deferred]
        assert owners == [shard_of(chain, shards)]
    for k, plan in enumerate(plans):
        assert len(plan.poll) <= max_chains
        assert len(plan.drain) <= healthy_drains
        assert not set(plan.poll) & set(plan.deferred)
        assert not set(plan.drain) & set(plan.poll + plan.deferred)
        for chain in plan.poll + plan.deferred:
            verdict = plan.verdicts[chain]
            assert verdict.active
            assert verdict.shard == k
            prior = records.get(chain)
            # healthy and not in its recovery period: never polled as active
            assert not verdict.healthy or (prior is not None and prior.active)
        for chain in plan.drain:
            verdict = plan.verdicts[chain]
            assert verdict.healthy
            assert not verdict.active
            assert verdict.shard == k
        # the unhealthy come first
        kinds = [plan.verdicts[c].healthy for c in plan.poll + plan.deferred]
        assert kinds == sorted(kinds)
