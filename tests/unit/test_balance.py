"""The fleet's lease balancing (pure): a test per rule of `balance.plan`, properties over random
views, the per-task heartbeat item, and a simulated fleet (bench/balance_sim.py) checked for the
issue's promises: never two sessions of one chain, even loads once settled, a dead worker's chains
moved within a lease period and a pass, little churn when a worker joins."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from bench.balance_sim import SimConfig, Simulation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ohip_relay.balance import (
    ITEM_LIMIT_BYTES,
    BalanceConfig,
    ChainSummary,
    Handover,
    LeaseView,
    LeaseWatch,
    Plan,
    item_size,
    max_chains_per_item,
    plan,
    read_worker_items,
    subscribe_after,
    worker_items,
    worst_chains,
)
from ohip_relay.protocol import RESUBSCRIBE_GAP
from ohip_relay.state import StreamState

NOW = 1_800_000_000.0
CFG = BalanceConfig()
D = CFG.lease_seconds


def held(owner: str, *, left: float = 20.0, **kw: object) -> LeaseView:
    """A lease of `owner` with `left` seconds to run."""
    return LeaseView(owner, NOW + left, **kw)  # type: ignore[arg-type]


def chains(n: int, prefix: str = "C") -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(n)]


def fresh(*workers: str) -> dict[str, float]:
    return dict.fromkeys(workers, NOW - 1.0)


def run(
    *,
    enabled: list[str],
    leases: Mapping[str, LeaseView] | None = None,
    workers: Mapping[str, float] | None = None,
    me: str = "A",
    running: list[str] | None = None,
    draining: list[str] | None = None,
    config: BalanceConfig = CFG,
) -> Plan:
    return plan(
        enabled=enabled,
        leases=leases or {},
        workers=workers if workers is not None else fresh("A", "B"),
        me=me,
        now=NOW,
        running=running or [],
        draining=draining or [],
        config=config,
    )


# -- who is alive, shares and targets -----------------------------------------------------------


def test_a_worker_is_alive_while_its_heartbeat_is_younger_than_the_timeout() -> None:
    workers = {"A": NOW - 5, "B": NOW - (CFG.worker_timeout - 0.1), "C": NOW - CFG.worker_timeout}
    assert run(enabled=chains(3), workers=workers).alive == ("A", "B")


def test_me_is_alive_even_before_my_first_heartbeat() -> None:
    assert run(enabled=chains(2), workers={}, me="Z").alive == ("Z",)


def test_share_is_the_ceiling_and_targets_add_up_to_the_chains() -> None:
    workers = fresh("A", "B", "C")
    plans = [run(enabled=chains(10), workers=workers, me=me) for me in "ABC"]
    assert {p.share for p in plans} == {4}
    assert [p.target for p in plans] == [4, 3, 3]  # the extra chain goes to the first ids


def test_an_empty_registry_asks_nothing() -> None:
    p = run(enabled=[])
    assert p.idle
    assert (p.share, p.target) == (0, 0)


# -- takes ----------------------------------------------------------------------------------------


def test_free_chains_are_taken_up_to_the_target() -> None:
    p = run(enabled=chains(6))
    assert len(p.take) == 3
    assert set(p.take) | set(p.spare) == set(chains(6))
    assert not set(p.take) & set(p.spare)


def test_takes_per_pass_are_limited() -> None:
    p = run(enabled=chains(40), workers=fresh("A"), config=BalanceConfig(max_takes_per_pass=4))
    assert len(p.take) == 4
    assert len(p.spare) == 4  # replacements for takes lost to a faster worker


def test_nothing_is_taken_at_the_target() -> None:
    p = run(enabled=chains(4), running=["C00", "C01"])
    assert p.take == ()


@pytest.mark.parametrize(
    "lease",
    [
        LeaseView(None, 0.0, 3),  # released
        LeaseView("B", NOW - 0.001, 3),  # expired
        LeaseView("B", NOW, 3),  # expires now: the write's `leaseUntil <= now` agrees
        LeaseView("gone", NOW - 100, 3),  # expired, of a worker nobody knows
    ],
    ids=["released", "expired", "expiring-now", "unknown-owner"],
)
def test_free_and_expired_leases_are_takeable(lease: LeaseView) -> None:
    assert run(enabled=["C00"], leases={"C00": lease}).take == ("C00",)


def test_a_live_lease_of_another_worker_is_never_taken() -> None:
    p = run(enabled=chains(2), leases={"C00": held("B", left=0.001), "C01": held("B")})
    assert p.take == ()


def test_a_live_lease_handed_to_me_is_not_taken_before_its_holder_releases_it() -> None:
    lease = held("B", handover_to="A", handover_at=NOW - 1)
    p = run(enabled=["C00", "C01"], leases={"C00": lease, "C01": held("B")})
    assert "C00" not in p.take
    assert p.request_handover is None  # one handover to me at a time


def test_a_chain_released_to_me_is_taken_whatever_the_limit_and_target() -> None:
    config = BalanceConfig(max_takes_per_pass=1)
    leases = {c: LeaseView(None, 0.0, 1, handover_to="A", handover_at=NOW - 1) for c in chains(3)}
    p = run(enabled=chains(3), leases=leases, workers=fresh("A", "B", "C"), running=[], config=config)
    assert set(p.take) == set(chains(3))


def test_a_chain_released_to_another_live_worker_is_left_to_it() -> None:
    lease = LeaseView(None, 0.0, 4, handover_to="B", handover_at=NOW - 1)
    assert run(enabled=["C00"], leases={"C00": lease}).take == ()


@pytest.mark.parametrize(
    ("workers", "handover_at"),
    [(fresh("A"), NOW - 1), (fresh("A", "B"), NOW - CFG.handover_timeout)],
    ids=["receiver-dead", "reservation-lapsed"],
)
def test_a_reservation_ends_with_its_receiver_or_its_time(
    workers: dict[str, float], handover_at: float
) -> None:
    lease = LeaseView(None, 0.0, 4, handover_to="B", handover_at=handover_at)
    assert run(enabled=["C00"], leases={"C00": lease}, workers=workers).take == ("C00",)


def test_a_lease_still_mine_in_the_table_but_not_running_is_taken_back_first() -> None:
    leases = {"C00": held("A"), "C01": LeaseView(None)}
    p = run(enabled=["C00", "C01"], leases=leases, workers=fresh("A", "B"))
    assert p.take[0] == "C00"


def test_the_watch_holds_an_expiry_take_back_until_a_whole_lease_period_passed() -> None:
    early = LeaseView("B", NOW - 5, 7, unchanged_for=D - 1)
    late = LeaseView("B", NOW - 5, 7, unchanged_for=D)
    assert run(enabled=["C00"], leases={"C00": early}).take == ()
    assert run(enabled=["C00"], leases={"C00": late}).take == ("C00",)


def test_orphans_are_taken_first_and_above_the_target() -> None:
    leases = {
        "C00": LeaseView(None, unchanged_for=CFG.orphan_after),
        "C01": LeaseView(None, unchanged_for=1.0),
    }
    p = run(enabled=["C00", "C01", "C02"], leases=leases, running=["C02"], workers=fresh("A", "B", "C"))
    assert p.target == 1
    assert p.take == ("C00",)


def test_workers_spread_over_the_free_chains_instead_of_racing_for_one() -> None:
    workers = fresh(*(f"w{i}" for i in range(8)))
    firsts = {run(enabled=chains(64), workers=workers, me=me).take[0] for me in workers}
    assert len(firsts) >= 6


def test_the_order_of_takes_is_stable_across_passes() -> None:
    assert run(enabled=chains(30)).take == run(enabled=list(reversed(chains(30)))).take


# -- stops ----------------------------------------------------------------------------------------


def test_a_chain_gone_from_the_registry_is_stopped() -> None:
    p = run(enabled=["C00"], running=["C00", "C01", "C02"], draining=["C02"])
    assert p.stop == ("C01",)  # C02 is on its way out already


def test_draining_chains_are_not_proposed_again() -> None:
    leases = {"C00": held("A", handover_to="B", handover_at=NOW - 1)}
    p = run(enabled=["C00"], leases=leases, running=["C00"], draining=["C00"])
    assert p.idle


# -- handovers ----------------------------------------------------------------------------------


def test_a_request_is_honoured_when_the_move_evens_the_load() -> None:
    mine = chains(4)
    leases = {c: held("A") for c in mine} | {"C00": held("A", handover_to="B", handover_at=NOW - 1)}
    p = run(enabled=[*mine, "X"], leases=leases | {"X": held("B")}, running=mine)
    assert p.release == (Handover("C00", "B"),)


def test_a_request_that_would_not_even_the_load_is_declined() -> None:
    leases = {"C00": held("A", handover_to="B", handover_at=NOW - 1), "C01": held("A"), "X": held("B")}
    p = run(enabled=["C00", "C01", "X"], leases=leases, running=["C00", "C01"])
    assert p.release == ()
    assert p.decline == ("C00",)


def test_a_lapsed_request_is_neither_honoured_nor_declined() -> None:
    lapsed = held("A", handover_to="B", handover_at=NOW - CFG.handover_timeout)
    leases = {"C00": lapsed, "C01": held("A"), "X": held("B")}
    p = run(enabled=list(leases), leases=leases, running=["C00", "C01"])
    assert p.idle


def test_surplus_above_the_share_is_pushed_to_the_least_loaded() -> None:
    mine = chains(6)
    leases = {c: held("A") for c in mine} | {"X": held("B"), "Y": held("B")}
    workers = fresh("A", "B", "C")
    p = run(enabled=[*mine, "X", "Y"], leases=leases, workers=workers, running=mine)
    assert p.share == 3
    assert [h.to for h in p.release][:2] == ["C", "C"]  # C had none; then B and C are level
    assert len(p.release) == 3  # down to the share, and no further


def test_no_push_while_nobody_is_below_the_share() -> None:
    leases = {c: held("A") for c in chains(3)} | {c: held("B") for c in chains(2, "X")}
    p = run(enabled=[*chains(3), *chains(2, "X")], leases=leases, running=chains(3))
    assert p.release == ()
    assert p.share == 3


def test_no_balancing_while_free_chains_remain() -> None:
    mine = chains(6)
    leases = {c: held("A") for c in mine}
    p = run(enabled=[*mine, "F"], leases=leases, workers=fresh("A", "B"), running=mine)
    assert p.release == ()
    assert p.request_handover is None


def test_releases_per_pass_are_limited() -> None:
    mine = chains(20)
    p = run(enabled=mine, leases={c: held("A") for c in mine}, running=mine)
    assert len(p.release) == CFG.max_releases_per_pass


def test_an_underloaded_worker_asks_the_most_loaded_for_one_chain() -> None:
    leases = {c: held("B") for c in chains(5, "B")} | {c: held("C") for c in chains(3, "C")}
    enabled = [*leases, "A0"]
    p = run(enabled=enabled, leases=leases | {"A0": held("A")}, workers=fresh("A", "B", "C"), running=["A0"])
    assert p.request_handover is not None
    assert p.request_handover.holder == "B"
    assert p.request_handover.chain in chains(5, "B")


def test_no_request_when_the_loads_differ_by_one() -> None:
    leases = {c: held("B") for c in chains(3, "B")} | {c: held("A") for c in chains(2, "A")}
    p = run(enabled=list(leases), leases=leases, running=chains(2, "A"))
    assert p.request_handover is None


def test_no_request_for_a_chain_with_a_handover_pending_or_of_a_dead_worker() -> None:
    leases = {
        "B0": held("B", handover_to="C", handover_at=NOW - 1),
        "B1": held("B", handover_to="C", handover_at=NOW - 1),
        "B2": held("B", handover_to="C", handover_at=NOW - 1),
        "D0": held("D"),
        "D1": held("D"),
        "D2": held("D"),
    }
    workers = fresh("A", "B", "C") | {"D": NOW - 100}
    p = run(enabled=list(leases), leases=leases, workers=workers)
    assert p.request_handover is None


def test_my_draining_chains_count_for_their_receiver() -> None:
    # A runs 5, 2 of them already on their way to B: A counts 3, B 2, so nothing more moves.
    mine = chains(5)
    going = {c: held("A", handover_to="B", handover_at=NOW - 1) for c in mine[:2]}
    leases = {c: held("A") for c in mine} | going
    p = run(enabled=mine, leases=leases, running=mine, draining=mine[:2])
    assert p.load == 3
    assert p.release == ()


def test_silent_workers_are_forgotten_but_never_me() -> None:
    workers = {"A": NOW - 10_000, "B": NOW - CFG.forget_after, "C": NOW - 1}
    assert run(enabled=[], workers=workers).forget == ("B",)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lease_seconds": 0},
        {"max_takes_per_pass": 0},
        {"max_releases_per_pass": 0},
        {"handover_timeout": 0},
        {"forget_after": 1, "worker_timeout": 5},
    ],
)
def test_nonsense_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        BalanceConfig(**kwargs)  # type: ignore[arg-type]


def test_the_subscribe_waits_ten_seconds_after_the_previous_complete() -> None:
    assert subscribe_after(None, NOW) == NOW
    assert subscribe_after(NOW - 3, NOW) == NOW - 3 + RESUBSCRIBE_GAP
    assert subscribe_after(NOW - 30, NOW) == NOW
    assert subscribe_after(NOW - 3, NOW, gap=RESUBSCRIBE_GAP + 2) == NOW + 9


# -- the watch --------------------------------------------------------------------------------------


def test_the_watch_counts_how_long_a_lease_stayed_the_same() -> None:
    watch = LeaseWatch()
    v1 = {"C": LeaseView("B", NOW + 30, 5)}
    assert watch.observe(v1, 100.0)["C"].unchanged_for == 0.0  # first sight: as if just renewed
    assert watch.observe(v1, 112.5)["C"].unchanged_for == 12.5
    renewed = {"C": LeaseView("B", NOW + 40, 5)}
    assert watch.observe(renewed, 120.0)["C"].unchanged_for == 0.0
    assert watch.observe(renewed, 150.0)["C"].unchanged_for == 30.0
    assert watch.observe({}, 151.0) == {}
    assert watch.observe(renewed, 152.0)["C"].unchanged_for == 0.0  # forgotten, seen anew


def test_a_handover_request_does_not_reset_the_watch() -> None:
    watch = LeaseWatch()
    watch.observe({"C": LeaseView("B", NOW, 5)}, 0.0)
    asked = {"C": LeaseView("B", NOW, 5, handover_to="A", handover_at=NOW)}
    assert watch.observe(asked, 31.0)["C"].unchanged_for == 31.0


# -- properties of plan() over random views -----------------------------------------------------

WORKERS = ("A", "B", "C", "D")
CHAINS = tuple(chains(10))


@st.composite
def views(draw: st.DrawFn) -> dict[str, object]:
    enabled = draw(st.lists(st.sampled_from(CHAINS), unique=True))
    ages = st.floats(min_value=0, max_value=CFG.forget_after * 1.5)
    workers = {w: NOW - age for w, age in draw(st.dictionaries(st.sampled_from(WORKERS), ages)).items()}
    offsets = st.floats(min_value=-60, max_value=60)
    leases = draw(
        st.dictionaries(
            st.sampled_from(CHAINS),
            st.builds(
                LeaseView,
                owner=st.one_of(st.none(), st.sampled_from((*WORKERS, "ghost"))),
                lease_until=offsets.map(lambda o: NOW + o),
                generation=st.integers(min_value=0, max_value=9),
                handover_to=st.one_of(st.none(), st.sampled_from(WORKERS)),
                handover_at=st.one_of(st.none(), offsets.map(lambda o: NOW - abs(o) * 3)),
                unchanged_for=st.one_of(st.none(), st.floats(min_value=0, max_value=200)),
            ),
        )
    )
    me = draw(st.sampled_from(WORKERS))
    running = draw(st.lists(st.sampled_from(CHAINS), unique=True))
    draining = draw(st.lists(st.sampled_from(running), unique=True)) if running else []
    config = BalanceConfig(
        max_takes_per_pass=draw(st.integers(min_value=1, max_value=4)),
        max_releases_per_pass=draw(st.integers(min_value=1, max_value=3)),
    )
    return {
        "enabled": enabled,
        "workers": workers,
        "leases": leases,
        "me": me,
        "running": running,
        "draining": draining,
        "config": config,
    }


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def takeable_by(me: str, lease: LeaseView | None) -> bool:
    """The acquire's own condition (state.acquire_lease), on the view: what a take may propose."""
    return lease is None or lease.owner is None or lease.lease_until <= NOW or lease.owner == me


@PROPERTY
@given(view=views())
def test_property_the_plan_proposes_only_what_the_conditional_write_allows(view: dict[str, object]) -> None:
    p = plan(now=NOW, **view)  # type: ignore[arg-type]
    me, enabled = view["me"], set(view["enabled"])  # type: ignore[call-overload]
    running, draining = set(view["running"]), set(view["draining"])  # type: ignore[call-overload]
    leases: Mapping[str, LeaseView] = view["leases"]  # type: ignore[assignment]
    config: BalanceConfig = view["config"]  # type: ignore[assignment]
    assert me in p.alive
    for chain in (*p.take, *p.spare):
        assert chain in enabled
        assert chain not in running
        assert takeable_by(str(me), leases.get(chain))
    assert len(set(p.take) | set(p.spare)) == len(p.take) + len(p.spare)
    ours = [
        c for c in p.take if (lease := leases.get(c)) is not None and me in (lease.owner, lease.handover_to)
    ]
    assert len(p.take) - len(ours) <= config.max_takes_per_pass
    active = running - draining
    assert set(p.stop) == active - enabled
    released = [h.chain for h in p.release]
    assert len(released) == len(set(released)) <= config.max_releases_per_pass
    for handover in p.release:
        assert handover.chain in active & enabled
        assert handover.to != me
        assert handover.to in p.alive
    assert set(p.decline) <= active & enabled
    assert not set(p.decline) & set(released)
    if p.request_handover is not None:
        request = p.request_handover
        lease = leases[request.chain]
        assert request.chain in enabled
        assert request.chain not in running
        assert lease.owner == request.holder != me
        assert request.holder in p.alive
        assert lease.lease_until > NOW  # a live lease: requested, never taken
        assert p.take == ()
        assert p.release == ()


@PROPERTY
@given(view=views(), seed=st.integers(min_value=0, max_value=2**32))
def test_property_the_plan_does_not_depend_on_the_order_of_its_inputs(
    view: dict[str, object], seed: int
) -> None:
    rng = random.Random(seed)

    def shuffled(value: object) -> object:
        if isinstance(value, dict):
            items = list(value.items())
            rng.shuffle(items)
            return dict(items)
        if isinstance(value, list):
            copy = list(value)
            rng.shuffle(copy)
            return copy
        return value

    again = {key: shuffled(value) for key, value in view.items()}
    assert plan(now=NOW, **view) == plan(now=NOW, **again)  # type: ignore[arg-type]


# -- the worker item ----------------------------------------------------------------------------


def summaries(n: int, *, id_len: int = 8) -> dict[str, ChainSummary]:
    return {
        f"{i:0{id_len}d}": ChainSummary(
            state=StreamState.CONNECTED if i % 7 else StreamState.BACKOFF,
            since=NOW - i,
            last_event_at=NOW - 2 * i,
            checkpoint=10**12 + i,
            lag_seconds=i / 10,
        )
        for i in range(n)
    }


def test_one_worker_item_lists_every_chain_with_its_state() -> None:
    chains_run = summaries(100)
    items = worker_items("task-1", NOW, chains_run, started_at=NOW - 3600)
    assert len(items) == 1
    item = items[0]
    assert item["pk"] == {"S": "worker#task-1"}
    assert item["totals"]["M"] == {"backoff": {"N": "15"}, "connected": {"N": "85"}}
    records = read_worker_items(items)
    record = records["task-1"]
    assert (record.heartbeat_at, record.started_at, record.complete) == (NOW, NOW - 3600, True)
    assert dict(record.chains) == chains_run
    assert item_size(item) < 8 * 1024  # 100 idle chains: about 7 write units a heartbeat


def test_the_worker_item_is_split_when_it_would_pass_the_budget() -> None:
    chains_run = summaries(300)
    items = worker_items("task-1", NOW, chains_run, started_at=NOW, max_item_bytes=4096)
    assert len(items) > 1
    assert all(item_size(item) <= 4096 for item in items)
    assert [item["pk"]["S"] for item in items][:2] == ["worker#task-1", "worker#task-1#1"]
    assert {item["parts"]["N"] for item in items} == {str(len(items))}
    assert "totals" in items[0]
    assert "totals" not in items[1]
    assert dict(read_worker_items(reversed(items))["task-1"].chains) == chains_run


def test_every_part_of_a_worker_item_carries_the_ttl_and_still_fits() -> None:
    chains_run = summaries(300)
    items = worker_items(
        "task-1", NOW, chains_run, started_at=NOW, max_item_bytes=4096, expires_at=NOW + 86400.7
    )
    assert len(items) > 1
    assert {item["expiresAt"]["N"] for item in items} == {str(int(NOW + 86400.7))}
    assert all(item_size(item) <= 4096 for item in items)
    assert dict(read_worker_items(items)["task-1"].chains) == chains_run
    assert "expiresAt" not in worker_items("task-1", NOW, chains_run, started_at=NOW)[0]


def test_a_torn_or_partial_worker_item_is_read_as_incomplete() -> None:
    items = worker_items("w", NOW, summaries(300), started_at=NOW, max_item_bytes=4096)
    assert not read_worker_items(items[:-1])["w"].complete
    later = worker_items("w", NOW + 10, summaries(300), started_at=NOW, max_item_bytes=4096)
    assert not read_worker_items([later[0], *items[1:]])["w"].complete
    assert read_worker_items(items[1:]) == {}  # no first part: no heartbeat to go by


def test_about_three_and_a_half_thousand_chains_fit_one_item_at_worst() -> None:
    fit = max_chains_per_item(id_bytes=40)
    assert 3000 <= fit <= 4000
    assert max_chains_per_item(id_bytes=8) > 4500
    worst = ChainSummary("auth-failed", 9_999_999_999.999, 9_999_999_999.999, 10**20 - 1, 999_999.999)
    many = {f"{i:040d}": worst for i in range(fit)}
    items = worker_items("w" * 64, 9_999_999_999.999, many, started_at=9_999_999_999.999)
    assert len(items) == 1
    assert item_size(items[0]) <= ITEM_LIMIT_BYTES
    assert len(worker_items("w", NOW, many | {"x" * 40: worst}, started_at=NOW)) <= 2


def test_item_size_follows_dynamodbs_rules() -> None:
    assert item_size({"pk": {"S": "abc"}}) == 5
    assert item_size({"n": {"N": "123"}}) == 1 + 3  # two bytes for three digits, plus one
    assert item_size({"n": {"N": "1000"}}) == 1 + 2  # trailing zeros trimmed
    assert item_size({"b": {"BOOL": True}}) == 2
    assert item_size({"m": {"M": {"k": {"S": "v"}}}}) == 1 + 3 + (1 + 1 + 1)
    assert item_size({"l": {"L": [{"S": "ab"}, {"N": "7"}]}}) == 1 + 3 + (2 + 1) + (2 + 1)
    with pytest.raises(ValueError, match="unknown DynamoDB type"):
        item_size({"x": {"Q": "?"}})


@given(
    summary=st.builds(
        ChainSummary,
        state=st.sampled_from([s.value for s in StreamState]),
        since=st.floats(min_value=0, max_value=1e10).map(lambda t: round(t, 3)),
        last_event_at=st.one_of(st.none(), st.floats(min_value=0, max_value=1e10).map(lambda t: round(t, 3))),
        checkpoint=st.one_of(st.none(), st.integers(min_value=-1, max_value=10**20 - 1)),
        lag_seconds=st.one_of(st.none(), st.floats(min_value=0, max_value=1e6).map(lambda t: round(t, 3))),
    )
)
def test_property_a_chain_summary_survives_its_encoding(summary: ChainSummary) -> None:
    assert ChainSummary.decode(summary.encode()) == summary


def test_a_summary_from_a_newer_writer_is_read_and_a_bad_one_refused() -> None:
    newer = ChainSummary.decode("connected|12.5|||0.25|extra|fields")
    assert newer == ChainSummary("connected", 12.5, lag_seconds=0.25)
    with pytest.raises(ValueError, match="not a chain summary"):
        ChainSummary.decode("|12.5")
    with pytest.raises(ValueError, match="state must be"):
        ChainSummary("a|b", 1.0).encode()


def test_worst_chains_puts_the_longest_down_first_then_the_largest_lag() -> None:
    summary = {
        "ok": ChainSummary("connected", 0, lag_seconds=0.1),
        "slow": ChainSummary("connected", 0, lag_seconds=30),
        "down-late": ChainSummary("backoff", 200),
        "down-early": ChainSummary("failed", 100),
    }
    assert worst_chains(summary, 3) == ["down-early", "down-late", "slow"]


# -- the simulated fleet ------------------------------------------------------------------------

P = SimConfig().pass_interval


def assert_safe(sim: Simulation) -> None:
    """(a): never two sessions of one chain at once; each session's generation is new; OHIP's 10 s."""
    sim.finish()
    assert sim.overlaps() == []
    by_chain: dict[str, list[tuple[float, int]]] = {}
    for interval in sim.intervals:
        by_chain.setdefault(interval.chain, []).append((interval.start, interval.generation))
    for sessions in by_chain.values():
        generations = [g for _, g in sorted(sessions)]
        assert generations == sorted(set(generations))
    assert all(gap >= RESUBSCRIBE_GAP - 1e-6 for _, gap in sim.gaps)


def settle(sim: Simulation, within: float) -> float:
    """Run until the fleet is settled (b); how long that took."""
    start = sim.now
    while not sim.settled():
        assert sim.now - start < within, f"not settled after {within:.0f}s: {sim.loads()}"
        sim.run_until(sim.now + 1)
    return sim.now - start


def fleet(n_chains: int, workers: int, *, config: SimConfig | None = None) -> Simulation:
    sim = Simulation(chains(n_chains), config=config)
    for i in range(workers):
        sim.join(f"w{i}", phase=(i * 3.3) % P)
    return sim


def test_simulation_cold_start_spreads_the_chains_evenly() -> None:
    sim = fleet(40, 4)
    settle(sim, 120)
    assert sorted(sim.loads().values()) == [10, 10, 10, 10]
    assert sim.handovers == []  # the targets add up: nobody had to hand anything over
    assert_safe(sim)


def test_simulation_workers_racing_in_the_same_instant_still_share_safely() -> None:
    sim = Simulation(chains(30))
    for i in range(5):
        sim.join(f"w{i}", phase=0.0)  # every pass at the same instant, on the same view
    settle(sim, 120)
    assert sim.table.failed_writes > 0  # they did race
    assert_safe(sim)


def test_simulation_a_join_moves_about_a_fair_share() -> None:
    sim = fleet(40, 4)
    settle(sim, 120)
    sim.join("w9", phase=5.0)
    took = settle(sim, 180)
    assert sorted(sim.loads().values()) == [8, 8, 8, 8, 8]
    assert len(sim.handovers) <= 8 + 1  # (d): the newcomer's share, not a reshuffle
    assert all(to == "w9" for _, _, _, to in sim.handovers)
    assert took <= 6 * P
    assert_safe(sim)


def test_simulation_a_dead_workers_chains_move_within_a_lease_and_a_pass() -> None:
    sim = fleet(24, 4)
    settle(sim, 120)
    sim.run_until(sim.now + 7.3)
    killed_at = sim.now
    victims = {c for c, ws in sim.running().items() if ws == ["w2"]}
    sim.kill("w2")
    settle(sim, 120)
    moved = {m.chain: m.at for m in sim.moves if m.at >= killed_at and m.chain in victims}
    assert set(moved) == victims
    assert max(moved.values()) - killed_at <= D + P + SimConfig().dt  # (c)
    assert sorted(sim.loads().values()) == [8, 8, 8]
    assert_safe(sim)


def test_simulation_a_partitioned_worker_stops_before_its_chains_are_taken() -> None:
    sim = fleet(24, 4)
    settle(sim, 120)
    victims = {c for c, ws in sim.running().items() if ws == ["w1"]}
    sim.partition("w1", 120)
    sim.run_until(sim.now + 60)
    assert all(ws != ["w1"] for c, ws in sim.running().items() if c in victims)
    sim.run_until(sim.now + 61)
    settle(sim, 200)  # healed: w1 is back and gets its share again
    assert sorted(sim.loads().values()) == [6, 6, 6, 6]
    assert_safe(sim)


def partitioned_holder_with_fast_taker(*, use_watch: bool) -> Simulation:
    """w0 holds every chain; w1's clock runs 25 s ahead (far past the 10 s margin); w0 is cut off."""
    sim = Simulation(chains(6), config=SimConfig(use_watch=use_watch))
    sim.join("w0")
    sim.run_until(15)
    sim.join("w1", skew=25.0, phase=1.0)
    sim.partition("w0", 200)
    sim.run_until(120)
    return sim


def test_simulation_clock_skew_beyond_the_renew_interval_breaks_the_wall_clock_rule() -> None:
    sim = partitioned_holder_with_fast_taker(use_watch=False)
    sim.finish()
    assert sim.overlaps()  # the checker bites: the rule S < I is real


def test_simulation_the_watch_keeps_expiry_takes_safe_past_the_renew_interval() -> None:
    sim = partitioned_holder_with_fast_taker(use_watch=True)
    assert {c for c, ws in sim.running().items() if ws == ["w1"]} == set(chains(6))
    assert_safe(sim)


def racing_on_one_view_with_a_clock_a_lease_ahead(*, versioned: bool) -> Simulation:
    """Two workers pass at the same instant on the same view; w1's clock is 35 s (> D) ahead."""
    sim = Simulation(chains(20), config=SimConfig(versioned_takes=versioned))
    sim.join("w0")
    sim.join("w1", skew=35.0)
    sim.run_until(5)
    return sim


def test_simulation_a_stale_view_and_a_clock_a_lease_ahead_defeat_the_wall_clock_write() -> None:
    sim = racing_on_one_view_with_a_clock_a_lease_ahead(versioned=False)
    sim.finish()
    assert sim.overlaps()  # w1's `leaseUntil <= now` passes on the lease w0 has just taken


def test_simulation_a_take_conditioned_on_the_version_seen_needs_no_clock() -> None:
    sim = racing_on_one_view_with_a_clock_a_lease_ahead(versioned=True)
    assert sim.table.failed_writes > 0
    assert_safe(sim)


def test_simulation_registry_changes_are_picked_up_within_a_minute() -> None:
    sim = fleet(12, 3)
    settle(sim, 120)
    sim.enable("NEW")
    sim.disable("C03")
    changed_at = sim.now
    settle(sim, 60)
    assert "NEW" in sim.running()
    assert "C03" not in sim.running()
    assert sim.now - changed_at <= 2 * P + SimConfig().drain_seconds + 1
    assert_safe(sim)


CLOCKS = {
    # Clocks within 2 s of each other (Fargate keeps them within milliseconds), today's writes.
    "synced": (2.0, SimConfig(resubscribe_gap=RESUBSCRIBE_GAP + 2 * 2.0)),
    # Clocks up to 80 s apart, far past the lease: safe only with the versioned take.
    "wild": (40.0, SimConfig(resubscribe_gap=RESUBSCRIBE_GAP + 2 * 40.0, versioned_takes=True)),
}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    clocks=st.sampled_from(sorted(CLOCKS)),
    n_chains=st.integers(min_value=1, max_value=24),
    start=st.lists(st.floats(min_value=0, max_value=9.5), min_size=1, max_size=4),
    events=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=150),
            st.sampled_from(["join", "kill", "partition", "add", "disable"]),
            st.integers(min_value=0, max_value=20),
        ),
        max_size=12,
    ),
    skews=st.lists(st.floats(min_value=-1, max_value=1), min_size=6, max_size=6),
)
def test_property_random_fleets_never_run_a_chain_twice_and_settle(
    clocks: str,
    n_chains: int,
    start: list[float],
    events: list[tuple[float, str, int]],
    skews: list[float],
) -> None:
    """Workers join, die, lose DynamoDB for a while; chains come and go. Whatever happens, (a) holds
    at every instant, and once the events are over the fleet settles (b). The 10 s after a
    `complete` are counted with the clocks' largest difference added."""
    spread, config = CLOCKS[clocks]
    offsets = [skew * spread for skew in skews]
    sim = Simulation(chains(n_chains), config=config)
    names = [f"w{i}" for i in range(len(start))]
    for name, phase, skew in zip(names, start, offsets, strict=False):
        sim.join(name, phase=phase, skew=skew)
    counter = [len(names)]

    def act(kind: int, pick: int) -> None:
        alive = sorted(w for w in sim.workers if sim.workers[w].alive)
        if kind == 0:
            name = f"w{counter[0]}"
            counter[0] += 1
            sim.join(name, phase=pick % 10, skew=offsets[pick % len(offsets)])
        elif kind == 1 and len(alive) > 1:
            sim.kill(alive[pick % len(alive)])
        elif kind == 2 and alive:
            sim.partition(alive[pick % len(alive)], 5 + pick * 3)
        elif kind == 3:
            sim.enable(f"N{pick:02d}")
        elif kind == 4 and sim.enabled:
            sim.disable(sorted(sim.enabled)[pick % len(sim.enabled)])

    kinds = {"join": 0, "kill": 1, "partition": 2, "add": 3, "disable": 4}
    for at, kind, pick in events:
        sim.at(at, lambda k=kinds[kind], p=pick: act(k, p))
    sim.run_until(160)
    settle(sim, 600)
    assert_safe(sim)
