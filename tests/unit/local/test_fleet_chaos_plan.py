"""Fleet chaos schedules (fleet_chaos.py): a seed is one plan, the plans cover every step kind, and
every step applies to the registry and the relays as they are at that point of the plan."""

from __future__ import annotations

from collections import Counter

import pytest

from ohip_local.chaos import ScheduleResult
from ohip_local.fleet_chaos import (
    FLEET_STEP_KINDS,
    MAX_RELAYS,
    TWIN,
    FleetSchedule,
    _chain_problems,
    gateway_config,
    generate_fleet_schedule,
)
from ohip_local.fleet_demo import ChainAccount, judge_fleet
from ohip_local.gateway import GatewayConfig, GatewayError
from ohip_local.generator import EventGenerator
from ohip_local.reconcile import emitted_event
from ohip_local.source import EventSource
from ohip_relay.balance import ChainSummary, WorkerRecord

SEEDS = range(1, 401)


@pytest.mark.parametrize("short", [False, True])
def test_the_same_seed_gives_the_same_plan(short: bool) -> None:
    for seed in (1, 17, 5001):
        assert generate_fleet_schedule(seed, short=short) == generate_fleet_schedule(seed, short=short)
        assert (
            generate_fleet_schedule(seed, short=short).describe()
            == generate_fleet_schedule(seed, short=short).describe()
        )


def test_different_seeds_give_different_plans() -> None:
    plans = {generate_fleet_schedule(seed).describe() for seed in range(1, 51)}
    assert len(plans) == 50


def test_every_step_kind_is_drawn_over_many_seeds() -> None:
    kinds = Counter(step.kind for seed in SEEDS for step in generate_fleet_schedule(seed).steps)
    assert set(kinds) == set(FLEET_STEP_KINDS), set(FLEET_STEP_KINDS) - set(kinds)
    assert all(kinds[kind] >= 20 for kind in FLEET_STEP_KINDS), kinds
    short = {step.kind for seed in SEEDS for step in generate_fleet_schedule(seed, short=True).steps}
    assert short == set(FLEET_STEP_KINDS) - {"pause"}


def test_faults_cover_renewal_outages_sqs_and_every_close_code() -> None:
    steps = [step for seed in SEEDS for step in generate_fleet_schedule(seed).steps]
    faults = [s.params for s in steps if s.kind == "aws_fault"]
    assert any(f["service"] == "sqs" for f in faults)
    renewals = [f for f in faults if f["operation"] == "UpdateItem" and f.get("duration", 0) >= 2.0]
    assert {f["error"] for f in renewals} >= {"unavailable", "slow"}
    assert {s.params["code"] for s in steps if s.kind == "close"} == {4401, 4409, 4500}
    short = [
        s for seed in SEEDS for s in generate_fleet_schedule(seed, short=True).steps if s.kind == "close"
    ]
    assert 4409 not in {s.params["code"] for s in short}  # the 10 s lockout: kept out of the CI cut
    emits = [s.params for s in steps if s.kind == "emit"]
    assert {e.get("adversarial") for e in emits} >= {None, "lookalike", "unicode", "missing", "all"}
    assert any("offset_jump" in e for e in emits)
    assert {s.params["via"] for s in steps if s.kind in ("add", "disable", "enable")} == {"cli", "store"}


def test_the_fleet_has_the_shape_the_issue_asks_for() -> None:
    twins = zero = huge = 0
    for seed in SEEDS:
        plan = generate_fleet_schedule(seed)
        assert plan.environments in (1, 2)
        assert 2 <= plan.relays <= 3
        assert 6 <= len(plan.steps) <= 12
        assert 4 <= len(generate_fleet_schedule(seed, short=True).steps) <= 6
        registered = [c for c in plan.chains if c.registered]
        assert 3 <= len(registered) <= 6
        assert len({c.subscription for c in plan.chains}) == len(plan.chains)
        assert len({(c.environment, c.system) for c in plan.chains}) == len(plan.chains)  # a queue each
        assert {c.environment for c in plan.chains if c.registered} == set(range(plan.environments))
        twins += sum(1 for c in plan.chains if c.chain == TWIN) == 2
        zero += any(c.first_offset == 0 for c in plan.chains)
        huge += any((c.first_offset or 0) > 10**18 for c in plan.chains)
        assert plan.steps[0].kind == "emit"
    assert twins > 40, twins
    assert zero > 40, zero
    assert huge > 40, huge


def _replay(plan: FleetSchedule) -> None:
    """Every step applies where the plan puts it: the registry and relays as the steps left them."""
    enabled = {c.subscription for c in plan.chains if c.registered}
    disabled: set[str] = set()
    unregistered = {c.subscription for c in plan.chains if not c.registered}
    running = plan.relays
    for step in plan.steps:
        p = step.params
        if step.kind in ("kill", "sigterm"):
            assert running >= 2
            running -= 1
        elif step.kind == "start":
            assert running < MAX_RELAYS
            running += 1
        elif step.kind == "disable":
            assert p["subscription"] in enabled
            assert len(enabled) >= 2
            enabled.remove(p["subscription"])
            disabled.add(p["subscription"])
        elif step.kind == "enable":
            disabled.remove(p["subscription"])
            enabled.add(p["subscription"])
        elif step.kind == "add":
            unregistered.remove(p["subscription"])
            enabled.add(p["subscription"])
        elif step.kind == "emit":
            assert set(p["chains"]) <= {c.subscription for c in plan.chains}
            assert 1 <= len(p["chains"]) <= 3
            assert p["count"] >= 5


def test_every_step_applies_to_the_fleet_as_the_plan_left_it() -> None:
    for seed in SEEDS:
        _replay(generate_fleet_schedule(seed))
        _replay(generate_fleet_schedule(seed, short=True))


def test_the_twin_chain_is_one_code_in_two_environments_under_two_ids() -> None:
    plan = next(p for p in map(generate_fleet_schedule, SEEDS) if any(c.chain == TWIN for c in p.chains))
    twins = sorted((c for c in plan.chains if c.chain == TWIN), key=lambda c: c.environment)
    assert [(c.subscription, c.environment) for c in twins] == [(TWIN, 0), (f"{TWIN}-ENV1", 1)]
    config = gateway_config(plan)
    assert TWIN in config.environment(0).chains
    assert TWIN in config.environment(1).chains


def test_the_gateway_gives_each_chain_its_own_poll_queue_and_first_offset() -> None:
    plan = next(p for p in map(generate_fleet_schedule, SEEDS) if p.environments == 2)
    config = gateway_config(plan)
    for chain in plan.chains:
        env = config.environment(chain.environment)
        assert chain.chain in env.chains
        assert (chain.system, chain.chain) in env.system_chains
        assert dict(env.first_offsets).get(chain.chain) == chain.first_offset
    assert config.environment(1).client_id != config.environment(0).client_id


def test_a_chain_row_reports_loss_unexpected_messages_and_two_live_subscriptions() -> None:
    clean = ChainAccount(
        "C1", 0, emitted=10, delivered=10, duplicates={"stream replay": 2}, lost=0, unexpected=0
    )
    assert _chain_problems(clean, live=1) == []
    bad = ChainAccount("C1", 0, emitted=10, delivered=8, duplicates={}, lost=2, unexpected=1)
    assert _chain_problems(bad, live=2) == [
        "C1: 2 lost",
        "C1: 1 unexpected",
        "C1: 2 live subscriptions at once",
    ]


def test_a_fleet_settles_without_even_loads_when_balance_is_not_asked() -> None:
    now = 1_000.0

    def worker(name: str, chains: list[str]) -> WorkerRecord:
        summaries = {c: ChainSummary(state="connected", since=now - 5) for c in chains}
        return WorkerRecord(worker=name, heartbeat_at=now - 1, started_at=now - 50, chains=summaries)

    records = {"a": worker("a", ["C1", "C2", "C3"]), "b": worker("b", [])}
    kw = {"workers": {"a", "b"}, "enabled": {"C1", "C2", "C3"}, "now": now, "worker_timeout": 4.0}
    assert not judge_fleet(records, **kw).settled  # type: ignore[arg-type]
    assert judge_fleet(records, balanced=False, **kw).settled  # type: ignore[arg-type]


def test_a_fleet_row_shows_the_events_held_for_disabled_chains() -> None:
    result = ScheduleResult(seed=3, steps=8, plan="", emitted=84, delivered=63, held=21)
    assert result.row().endswith("ok (21 held)")


def test_a_system_chain_pair_must_name_the_environment_s_own_system_and_chain() -> None:
    with pytest.raises(GatewayError, match="system chains pair 'SYS9' with 'LOCALCHAIN'"):
        GatewayConfig(system_chains=(("SYS9", "LOCALCHAIN"),))
    assert GatewayConfig(system_chains=(("RELAY", "LOCALCHAIN"),)).system_chains == (("RELAY", "LOCALCHAIN"),)


def test_the_emitted_events_of_a_subscription_carry_its_id_in_their_identity_and_key() -> None:
    source = EventSource((TWIN,), ("SYS",), clock=lambda: 1_795_601_738.0)
    stored = source.append(TWIN, EventGenerator(seed=3, hotels=("H1",)).next_draft())
    own, other = emitted_event(stored), emitted_event(stored, subscription=f"{TWIN}-ENV1")
    assert own == emitted_event(stored, subscription=TWIN)  # an id equal to the chain code: as before
    assert own.stream_id.startswith(f"stream:{TWIN}:")
    assert other.stream_id.startswith(f"stream:{TWIN}-ENV1:")
    assert other.poll_id == f"poll:{TWIN}-ENV1:{stored.business_event_id}"
    assert own.event_key != other.event_key
