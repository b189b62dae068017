"""The fleet demo's decisions: when a fleet has settled, and what a chain's row says."""

from __future__ import annotations

from ohip_local.fleet_demo import account_chain, judge_fleet, subscription_of
from ohip_local.reconcile import EmittedEvent
from ohip_relay.balance import ChainSummary, WorkerRecord

NOW = 1_000.0


def _worker(name: str, chains: dict[str, str], *, beat: float = NOW - 1) -> WorkerRecord:
    return WorkerRecord(
        worker=name,
        heartbeat_at=beat,
        started_at=NOW - 100,
        chains={chain: ChainSummary(state=state, since=NOW - 10) for chain, state in chains.items()},
    )


def _judge(*records: WorkerRecord, workers: set[str], enabled: set[str]) -> tuple[bool, str]:
    judgement = judge_fleet(
        {r.worker: r for r in records}, workers=workers, enabled=enabled, now=NOW, worker_timeout=4.0
    )
    return judgement.settled, judgement.problem


def test_a_fleet_is_settled_when_each_enabled_chain_is_connected_on_one_live_worker_and_loads_are_even() -> (
    None
):
    a = _worker("a", {"C1": "connected", "C2": "connected"})
    b = _worker("b", {"C3": "connected"})
    assert _judge(a, b, workers={"a", "b"}, enabled={"C1", "C2", "C3"}) == (True, "")


def test_a_fleet_is_not_settled_while_anything_is_on_its_way() -> None:
    enabled = {"C1", "C2", "C3"}
    a = _worker("a", {"C1": "connected", "C2": "connected"})
    b = _worker("b", {"C3": "connecting"})
    assert _judge(a, b, workers={"a", "b"}, enabled=enabled) == (False, "C3 is connecting on worker b")
    dead = _worker("b", {"C3": "connected"}, beat=NOW - 5)  # a killed worker's last item
    assert _judge(a, dead, workers={"a"}, enabled=enabled) == (False, "C3 is held by no live worker")
    assert _judge(a, dead, workers={"a", "b"}, enabled=enabled)[1] == "worker b is not live (yet)"
    twice = _worker("b", {"C2": "draining", "C3": "connected"})
    assert _judge(a, twice, workers={"a", "b"}, enabled=enabled) == (False, "C2 is listed by 2 live workers")
    disabled = _worker("b", {"C3": "connected", "C4": "connected"})
    problem = _judge(a, disabled, workers={"a", "b"}, enabled=enabled)[1]
    assert problem == "C4 is not enabled but still listed by worker b"
    heavy = _worker("a", {"C1": "connected", "C2": "connected", "C3": "connected"})
    idle = _worker("b", {})
    assert _judge(heavy, idle, workers={"a", "b"}, enabled=enabled) == (False, "loads 3/0 are not even yet")


def _events(chain: str, offsets: range) -> list[EmittedEvent]:
    return [EmittedEvent(chain, o, f"key-{o}", f"u{o}", str(o)) for o in offsets]


def _bodies(events: list[EmittedEvent], *, twice: int | None = None) -> list[dict[str, object]]:
    bodies: list[dict[str, object]] = [
        {
            "eventId": e.stream_id,
            "eventKey": e.event_key,
            "chainCode": e.chain,
            "offset": e.offset,
            "source": "stream",
        }
        for e in events
    ]
    return bodies + [b for b in bodies if b["offset"] == twice]


def test_a_chain_is_reconciled_by_identity_with_its_duplicates_by_kind() -> None:
    emitted = _events("C1", range(1001, 1011))
    account = account_chain("C1", 0, emitted, _bodies(emitted[:9], twice=1005))
    assert (account.emitted, account.delivered, account.lost, account.held) == (10, 9, 1, 0)
    assert account.duplicates["stream replay"] == 1


def test_a_disabled_chain_owes_only_what_its_checkpoint_covers() -> None:
    emitted = _events("C1", range(1001, 1011))
    at = {e.stream_id: 10.0 if e.offset <= 1006 else 20.0 for e in emitted}
    delivered = _bodies(emitted[:7])  # up to 1007: one event after the disable still came through
    account = account_chain("C1", 1, emitted, delivered, disabled_at=15.0, emitted_at=at, checkpoint=1007)
    assert (account.delivered, account.lost, account.held, account.emitted_after_disable) == (7, 0, 3, 4)
    short = account_chain("C1", 1, emitted, _bodies(emitted[:5]), disabled_at=15.0, checkpoint=1007)
    assert (short.lost, short.held) == (2, 3)  # 1006 and 1007 are behind the checkpoint: lost


def test_a_message_names_its_subscription_or_else_its_chain() -> None:
    assert subscription_of({"chainCode": "CHAIN1"}) == "CHAIN1"
    assert subscription_of({"chainCode": "CHAIN1", "subscriptionId": "CHAIN1-uat"}) == "CHAIN1-uat"
