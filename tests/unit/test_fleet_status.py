"""`ohip-relay status` in the fleet shape, rendering only (fleet_status.py): the report built from
hand-made reads, and its text. The reads themselves run against moto in
tests/integration/test_fleet_status.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ohip_relay.balance import ChainSummary, LeaseView, WorkerRecord
from ohip_relay.fleet_state import FleetView
from ohip_relay.fleet_status import (
    FleetReads,
    age_words,
    chain_report,
    duration_words,
    fleet_report,
    render_chain,
    render_fleet,
    short_worker_ids,
)
from ohip_relay.health import HealthThresholds
from ohip_relay.registry import Subscription
from ohip_relay.state import CHECKPOINT_MAX, CHECKPOINT_MIN, Checkpoint, FallbackRecord

NOW = 1_764_000_000.0
SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ohip/prod-AbCdEf"
W1 = "3f2a9c1b7d0e4c5f8a9b0c1d2e3f4a5b-1a2b"  # an ECS task id and a start nonce
W2 = "3f2a9c1b7d0eFFFF8a9b0c1d2e3f4a5b-9z9z"  # the same first 12 characters
THRESHOLDS = HealthThresholds()


def _sub(subscription_id: str, *, enabled: bool = True, chain: str = "") -> Subscription:
    return Subscription(
        id=subscription_id,
        gateway_url="https://ohip.example.com",
        chain_code=chain or subscription_id[:20],
        secret_arn=SECRET,
        enabled=enabled,
        version=2,
        updated_at=NOW - 86_400,
    )


def _worker(
    worker: str, chains: dict[str, ChainSummary], *, age: float = 3.0, complete: bool = True
) -> WorkerRecord:
    return WorkerRecord(worker, NOW - age, NOW - 3600, chains, complete)


def _reads(
    subscriptions: list[Subscription],
    workers: list[WorkerRecord],
    *,
    members: set[str] | None = None,
    **kwargs: Any,
) -> FleetReads:
    view = FleetView(
        frozenset(members if members is not None else {w.worker for w in workers}),
        {w.worker: w for w in workers},
    )
    return FleetReads("ohip-relay-state", NOW, tuple(subscriptions), view, **kwargs)


def _text(lines: list[str]) -> str:
    text = "\n".join(lines)
    assert "None" not in text, text
    return text


@pytest.fixture
def fleet() -> FleetReads:
    """C1 connected on W1, C2 backing off on W2, C3 enabled but listed by no live worker (W3 is
    silent), C4 disabled."""
    return _reads(
        [_sub("C1"), _sub("C2"), _sub("C3"), _sub("C4", enabled=False)],
        [
            _worker(W1, {"C1": ChainSummary("connected", NOW - 600, NOW - 12, 1234, 0.4)}),
            _worker(W2, {"C2": ChainSummary("backoff", NOW - 45, None, None, None)}),
            _worker("w3", {"C3": ChainSummary("connected", NOW - 900)}, age=185.0),
        ],
        leases={"C1": LeaseView(W1, NOW + 25, 7)},
        checkpoints={"C1": Checkpoint(1234, NOW - 1, W1), "C2": Checkpoint(CHECKPOINT_MIN, NOW - 50, W2)},
        fallbacks={"C3": FallbackRecord(active=True, since=NOW - 120)},
    )


def test_one_row_per_subscription_with_the_totals_above(fleet: FleetReads) -> None:
    report = fleet_report(fleet)
    rows = {row["id"]: row for row in report["subscriptions"]}
    assert [row["id"] for row in report["subscriptions"]] == ["C1", "C2", "C3", "C4"]
    assert {i: row["state"] for i, row in rows.items()} == {
        "C1": "connected",
        "C2": "backoff",
        "C3": "no holder",
        "C4": "disabled",
    }
    assert rows["C1"]["holder"] == W1
    assert rows["C3"]["holder"] is None  # w3 lists it, but w3 is silent
    assert report["totals"] == {
        "workersAlive": 2,
        "workersSilent": 1,
        "chainsEnabled": 3,
        "chainsDisabled": 1,
        "chainsHeld": 2,
        "chainsConnected": 1,
        "chainsWithoutHolder": 1,
        "chainsUnhealthy": 1,  # C3; C2 is within the grace period
        "chainsFallbackActive": 1,
    }
    assert {i: row["healthy"] for i, row in rows.items()} == {"C1": True, "C2": True, "C3": False, "C4": None}
    # No holder first, then not connected; C1 is connected with a small lag: not among the worst.
    assert report["worst"] == ["C3", "C2"]
    text = _text(render_fleet(report))
    assert "workers   2 alive, 1 silent (last heard 3 min ago)" in text
    assert "chains    3 enabled, 1 disabled; 2 held, 1 connected, 1 without a holder, 1 unhealthy; " in text
    assert "; fallback active for 1" in text
    assert "worst     C3 (no holder), C2 (backoff for 45 s)" in text
    table = text.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == [
        "ID",
        "CHAIN",
        "STATE",
        "LAG",
        "HOLDER",
        "LAST",
        "EVENT",
        "CHECKPOINT",
        "FALLBACK",
    ]
    c1 = next(line for line in table if line.startswith("C1 "))
    assert "connected" in c1
    assert "0.4 s" in c1
    assert "12 s ago" in c1
    assert "1234" in c1
    assert "inactive" in c1
    assert "3f2a9c1b7d0e4.." in c1  # W1 and W2 share 12 characters: one more tells them apart
    c2 = next(line for line in table if line.startswith("C2 "))
    assert "before offset 0" in c2
    assert "never" in c2
    c3 = next(line for line in table if line.startswith("C3 "))
    assert "no holder" in c3
    assert " active" in c3


def test_json_keeps_numbers_and_nulls(fleet: FleetReads) -> None:
    report = json.loads(json.dumps(fleet_report(fleet)))
    rows = {row["id"]: row for row in report["subscriptions"]}
    assert rows["C1"]["lagSeconds"] == 0.4
    assert rows["C1"]["checkpoint"] == 1234
    assert rows["C1"]["lastEventAgeSeconds"] == 12.0
    assert rows["C2"]["checkpoint"] == CHECKPOINT_MIN
    assert rows["C2"]["lagSeconds"] is None
    assert rows["C4"]["checkpoint"] is None
    assert rows["C3"]["fallbackActive"] is True
    silent = next(w for w in report["workers"] if w["worker"] == "w3")
    assert silent == {
        "worker": "w3",
        "alive": False,
        "heartbeatAgeSeconds": 185.0,
        "startedAt": NOW - 3600,
        "chains": 1,
        "complete": True,
    }


def test_odd_ids_keep_their_characters_and_the_columns_line_up() -> None:
    odd = ["A B", "x%y#z", "$&-_", "L" * 40]
    reads = _reads(
        [_sub(i, chain="CHAIN 1") for i in odd],
        [_worker(W1, {i: ChainSummary("connected", NOW - 5, None, CHECKPOINT_MAX, 1.0) for i in odd})],
        checkpoints={i: Checkpoint(CHECKPOINT_MAX, NOW, W1) for i in odd},
    )
    lines = render_fleet(fleet_report(reads))
    _text(lines)
    table = lines[lines.index("") + 1 :]
    state_at = table[0].index("STATE")
    for subscription_id in odd:
        (line,) = [line for line in table if line.startswith(subscription_id + " ")]
        assert line[state_at:].startswith("connected"), line
        assert str(CHECKPOINT_MAX) in line


def test_an_empty_registry_and_no_workers() -> None:
    report = fleet_report(_reads([], []))
    assert report["totals"] == dict.fromkeys(report["totals"], 0)
    assert report["subscriptions"] == []
    assert report["worst"] == []
    assert report["workers"] == []
    text = _text(render_fleet(report))
    assert "worst     none" in text
    assert "no subscriptions in the registry: add one with `ohip-relay chains add`" in text


def test_an_incomplete_worker_item_is_shown_with_a_note() -> None:
    reads = _reads(
        [_sub("C1"), _sub("C2")],
        [_worker(W1, {"C1": ChainSummary("connected", NOW - 5)}, complete=False)],
        members={W1, "gone"},  # "gone" is in the index without an item
    )
    report = fleet_report(reads)
    assert [row["state"] for row in report["subscriptions"]] == ["connected", "no holder"]
    text = _text(render_fleet(report))
    assert f"note: worker {W1!r}: its item was read incomplete" in text
    assert "note: worker 'gone' is in the fleet index but has no worker item" in text
    assert "1 alive, 1 silent" in text  # a member without an item has no heartbeat at all


def test_two_live_workers_listing_one_chain_count_as_for_the_poll_fallback() -> None:
    """A handover, or a worker item a moment behind: the connected one counts, else the newer
    heartbeat (fleet_health.live_summaries), so that status judges what the alarm judges."""
    draining = ChainSummary("draining", NOW - 2)
    for other, holder, state in (
        (ChainSummary("connecting", NOW - 1), W1, "draining"),  # W1's heartbeat is the newer
        (ChainSummary("connected", NOW - 1), W2, "connected"),
    ):
        reads = _reads(
            [_sub("C1")],
            [_worker(W1, {"C1": draining}, age=1.0), _worker(W2, {"C1": other}, age=2.0)],
            leases={"C1": LeaseView(W2, NOW + 20, 4)},
        )
        report = fleet_report(reads)
        assert report["subscriptions"][0]["holder"] == holder
        assert report["subscriptions"][0]["state"] == state
        assert any("listed by 2 live workers" in note for note in report["notes"])


def test_a_lagging_connected_chain_counts_among_the_worst() -> None:
    reads = _reads(
        [_sub("C1"), _sub("C2")],
        [
            _worker(
                W1,
                {
                    "C1": ChainSummary("connected", NOW - 5, lag_seconds=9.5),
                    "C2": ChainSummary("connected", NOW),
                },
            )
        ],
    )
    report = fleet_report(reads)
    assert report["worst"] == ["C1"]
    assert "worst     C1 (lag 9.5 s)" in _text(render_fleet(report))


def test_problems_are_listed() -> None:
    reads = _reads([_sub("C1")], [], problems=("checkpoint#C1 in table t is malformed (x)",))
    assert "problem: checkpoint#C1 in table t is malformed (x)" in _text(render_fleet(fleet_report(reads)))


# -- one subscription in detail ---------------------------------------------------------------------


def test_chain_detail_of_a_connected_chain(fleet: FleetReads) -> None:
    report = json.loads(json.dumps(chain_report(fleet, fleet.subscriptions[0], THRESHOLDS)))
    assert report["state"] == "connected"
    assert report["healthy"] is True
    assert report["health"] == "connected"
    assert report["holder"] == W1
    assert report["holderHeartbeatAgeSeconds"] == 3.0
    assert report["checkpoint"] == 1234
    assert report["checkpointAgeSeconds"] == 1.0
    assert report["leaseOwner"] == W1
    assert report["leaseHeld"] is True
    assert report["leaseExpiresInSeconds"] == 25.0
    assert report["leaseGeneration"] == 7
    assert report["handoverTo"] is None
    assert report["fallbackActive"] is False
    assert report["registry"]["secretArn"] == SECRET
    assert report["registry"]["hotelIds"] == []
    text = _text(render_chain(report))
    assert f"holder           {W1} (heartbeat 3 s ago)" in text
    assert f"lease            held by {W1}, 25 s left; generation 7" in text
    assert "hotels           the whole external system" in text


def test_chain_detail_of_a_chain_without_holder_and_every_value_absent() -> None:
    reads = _reads([_sub("C1")], [])
    report = chain_report(reads, reads.subscriptions[0], THRESHOLDS)
    assert report["state"] == "no holder"
    assert report["healthy"] is False
    assert report["health"] == "no live worker runs it"
    for name in ("holder", "lagSeconds", "checkpoint", "leaseOwner", "leaseGeneration", "fallbackSince"):
        assert report[name] is None, name
    text = _text(render_chain(report))
    assert "holder           nobody" in text
    assert "lease            free (released, or never taken)" in text
    assert "checkpoint       none yet" in text
    assert "fallback         inactive; last tick never; published 0 in all" in text


def test_chain_detail_judges_health_from_the_worker_item() -> None:
    reads = _reads(
        [_sub("C1"), _sub("C2", enabled=False)],
        [_worker(W1, {"C1": ChainSummary("backoff", NOW - 90)})],
        leases={"C1": LeaseView(W1, NOW - 1, 3, handover_to=W2, handover_at=NOW - 4)},
        fallbacks={"C1": FallbackRecord(active=True, since=NOW - 30, last_tick_at=NOW - 20)},
    )
    report = chain_report(reads, reads.subscriptions[0], THRESHOLDS)
    assert report["healthy"] is False
    assert report["health"] == "backoff for 90s"
    assert report["leaseHeld"] is False
    text = _text(render_chain(report))
    assert f"lease            expired (last held by {W1}); generation 3; handover to {W2} (4 s ago)" in text
    assert "fallback         active since 2025-11-24 15:59:30 UTC; last tick 20 s ago" in text
    disabled = chain_report(reads, reads.subscriptions[1], THRESHOLDS)
    assert disabled["state"] == "disabled"
    assert disabled["health"] == "disabled in the registry"


# -- words ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "duration", "age"),
    [
        (None, "-", "never"),
        (-3.0, "0.0 s", "just now"),  # another machine's clock, a little ahead
        (0.4, "0.4 s", "just now"),
        (9.96, "9 s", "9 s ago"),
        (12.7, "12 s", "12 s ago"),
        (185.0, "3 min", "3 min ago"),
        (7_300.0, "2 h", "2 h ago"),
        (200_000.0, "2 days", "2 days ago"),
    ],
)
def test_durations_and_ages_in_words(seconds: float | None, duration: str, age: str) -> None:
    assert duration_words(seconds) == duration
    assert age_words(seconds) == age


def test_worker_ids_are_shortened_to_what_tells_them_apart() -> None:
    short = short_worker_ids([W1, W2, "w3", "task-012345678", "task-0123456789ab"])
    assert short["w3"] == "w3"
    assert short["task-012345678"] == "task-012345678"  # 14 characters: not worth cutting
    # "task-012345678" starts the same: 15 of 17 characters are needed, so it is shown whole.
    assert short["task-0123456789ab"] == "task-0123456789ab"
    assert short[W1] == "3f2a9c1b7d0e4.."
    assert short[W2] == "3f2a9c1b7d0eF.."
    assert short_worker_ids([W1])[W1] == "3f2a9c1b7d0e.."
