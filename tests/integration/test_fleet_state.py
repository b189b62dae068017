"""FleetStore against the moto server over HTTP: the fleet's write conditions decide, not the client.

Races are played as the interleavings DynamoDB would impose (it serialises writes to an item; moto
does not): a botocore hook runs the other party's call at the exact moment between one call's read
of the view and its write (as in test_registry.py). No sleeps.

The template's resources are provisioned once for the module; each test gets its own copy of the
state table (the fleet index is one per table).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from ohip_local.aws import ProvisionedStack, provision
from ohip_relay.balance import ChainSummary, LeaseView, LeaseWatch, plan, worker_items
from ohip_relay.fleet_state import FLEET_INDEX_KEY, Acquired, FleetStore
from ohip_relay.state import StateStore, StateStoreError

from ..conftest import TEMPLATE
from .dynamo import client as _client
from .dynamo import once as _once
from .dynamo import raw_item as _raw
from .dynamo import with_fresh_table

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.integration

T0 = 1_764_000_000.0
D = 30.0  # the lease period


@pytest.fixture(scope="module")
def stack(aws_endpoint: str) -> ProvisionedStack:
    return provision(aws_endpoint, TEMPLATE, stack_name=f"fleet-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def aws_stack(stack: ProvisionedStack) -> ProvisionedStack:
    """The module's stack with a fresh copy of its state table as `table_name`."""
    return with_fresh_table(stack)


def _store(stack: ProvisionedStack, **kwargs: Any) -> FleetStore:
    """A store with a client of its own (each party of a race has its own hooks)."""
    return FleetStore(_client(stack), stack.table_name, **kwargs)


@pytest.fixture
def store(aws_stack: ProvisionedStack) -> FleetStore:
    return _store(aws_stack)


def _view(store: FleetStore, chain: str) -> LeaseView | None:
    return store.read_leases([chain]).get(chain)


# -- acquire --------------------------------------------------------------------------------------


def test_acquire_a_free_chain_and_the_item_layout(store: FleetStore, aws_stack: ProvisionedStack) -> None:
    taken = store.acquire("C1", "A", T0, D, None)
    assert taken == Acquired(
        chain="C1",
        lease=LeaseView(owner="A", lease_until=T0 + D, generation=1),
        previous_owner=None,
        completed_at=None,
    )
    item = _raw(aws_stack, "lease#C1")
    assert item is not None
    assert {k: v for k, v in item.items() if k != "pk"} == {
        "kind": {"S": "lease"},
        "chain": {"S": "C1"},
        "owner": {"S": "A"},
        "leaseUntil": {"N": f"{T0 + D:.3f}"},
        "renewedAt": {"N": f"{T0:.3f}"},
        "generation": {"N": "1"},
    }
    assert _view(store, "C1") == taken.lease
    # The pass saw no item: once there is one, that view takes nothing, even from the same worker.
    assert store.acquire("C1", "B", T0 + 100, D, None) is None
    assert store.acquire("C1", "A", T0 + 1, D, None) is None


def test_acquire_an_expired_lease_on_the_view_that_watched_it(store: FleetStore) -> None:
    store.acquire("C1", "A", T0, D, None)
    seen = _view(store, "C1")
    assert seen is not None
    assert store.acquire("C1", "B", T0 + D - 1, D, seen) is None  # still A's
    taken = store.acquire("C1", "B", T0 + D, D, seen)
    assert taken is not None
    assert (taken.generation, taken.previous_owner, taken.completed_at) == (2, "A", None)
    assert _view(store, "C1") == LeaseView(owner="B", lease_until=T0 + 2 * D, generation=2)


def test_acquire_my_own_lease_again(store: FleetStore) -> None:
    """Still mine in the table but not running here (a session that ended): taken again at once."""
    store.acquire("C1", "A", T0, D, None)
    mine = _view(store, "C1")
    taken = store.acquire("C1", "A", T0 + 1, D, mine)
    assert taken is not None
    assert (taken.generation, taken.previous_owner) == (2, "A")


def test_acquire_a_chain_handed_over_and_released(store: FleetStore, aws_stack: ProvisionedStack) -> None:
    store.acquire("C1", "A", T0, D, None)
    assert store.push("C1", "A", "B", T0 + 1)
    assert store.release("C1", "A", T0 + 5, T0 + 2.5, keep_handover=True)
    released = _view(store, "C1")
    assert released == LeaseView(
        owner=None, lease_until=0.0, generation=1, handover_to="B", handover_at=T0 + 5
    )
    taken = store.acquire("C1", "B", T0 + 6, D, released)
    assert taken is not None
    assert (taken.generation, taken.previous_owner, taken.completed_at) == (2, None, T0 + 2.5)
    item = _raw(aws_stack, "lease#C1")
    assert item is not None
    assert not {"handoverTo", "handoverAt", "completedAt"} & set(item)
    # A lease that lapses next (B killed) tells its taker of no `complete`.
    lapsed = _view(store, "C1")
    again = store.acquire("C1", "C", T0 + 6 + D, D, lapsed)
    assert again is not None
    assert (again.previous_owner, again.completed_at) == ("B", None)


def test_a_stale_view_is_refused_whatever_the_clocks_say(store: FleetStore) -> None:
    """B's view shows A's expired lease. C takes it first. B's clock runs far ahead, so the
    wall-clock rule alone (`leaseUntil <= now`) would let B take C's live lease: the version B saw
    (owner A, generation 1) is gone, and the write is refused."""
    store.acquire("C1", "A", T0, D, None)
    seen_by_b = _view(store, "C1")
    assert seen_by_b is not None
    assert store.acquire("C1", "C", T0 + D, D, _view(store, "C1")) is not None
    assert store.acquire("C1", "B", T0 + 10 * D, D, seen_by_b) is None
    assert _view(store, "C1") == LeaseView(owner="C", lease_until=T0 + 2 * D, generation=2)
    # A late renewal changes the version too (leaseUntil), so the view before it takes nothing.
    before_renewal = _view(store, "C1")
    assert store.renew_many(["C1"], "C", T0 + D + 5, D)["C1"].renewed
    assert store.acquire("C1", "B", T0 + 10 * D, D, before_renewal) is None
    # And a release followed by another take and release leaves an equal-looking but newer item.
    current = _view(store, "C1")
    assert current is not None
    assert store.release("C1", "C", T0 + 40, None, keep_handover=False)
    free_gen2 = _view(store, "C1")
    assert store.acquire("C1", "D", T0 + 41, D, free_gen2) is not None
    assert store.release("C1", "D", T0 + 42, None, keep_handover=False)
    assert store.acquire("C1", "B", T0 + 43, D, free_gen2) is None
    assert store.acquire("C1", "B", T0 + 43, D, _view(store, "C1")) is not None


@pytest.mark.parametrize("seen_item", [False, True], ids=["no-item", "expired"])
def test_racing_acquires_on_one_view_exactly_one_wins(aws_stack: ProvisionedStack, seen_item: bool) -> None:
    """B's acquire lands between A's read of the view and A's write (the hook runs it there)."""
    a, b = _store(aws_stack), _store(aws_stack)
    if seen_item:
        assert a.acquire("C1", "OLD", T0, D, None) is not None
    view = _view(a, "C1")
    now = T0 + D if seen_item else T0
    results: dict[str, Acquired | None] = {}
    a._ddb.meta.events.register(
        "before-call.dynamodb.UpdateItem", _once(lambda: results.update(B=b.acquire("C1", "B", now, D, view)))
    )
    results["A"] = a.acquire("C1", "A", now, D, view)
    winner = results["B"]
    assert winner is not None
    assert results["A"] is None
    first = 1 if seen_item else 0
    assert winner.generation == first + 1
    assert _view(a, "C1") == LeaseView(owner="B", lease_until=now + D, generation=first + 1)


def test_a_take_racing_the_holders_late_renewal_loses_whatever_its_clock(aws_stack: ProvisionedStack) -> None:
    """B watched A's lease expire; A's late renewal lands between B's read and B's write. B's clock
    is far ahead, so `leaseUntil <= now` still holds for B: the version it saw is what refuses it."""
    a, b = _store(aws_stack), _store(aws_stack)
    a.acquire("C1", "A", T0, D, None)
    view = _view(b, "C1")
    renewed: list[bool] = []
    b._ddb.meta.events.register(
        "before-call.dynamodb.UpdateItem",
        _once(lambda: renewed.append(a.renew_many(["C1"], "A", T0 + D + 1, D)["C1"].renewed)),
    )
    assert b.acquire("C1", "B", T0 + 10 * D, D, view) is None
    assert renewed == [True]
    assert _view(a, "C1") == LeaseView(owner="A", lease_until=T0 + 2 * D + 1, generation=1)


def test_two_requests_racing_for_one_chain_exactly_one_lands(aws_stack: ProvisionedStack) -> None:
    b, c = _store(aws_stack), _store(aws_stack)
    b.acquire("C1", "A", T0, D, None)
    results: dict[str, bool] = {}
    b._ddb.meta.events.register(
        "before-call.dynamodb.UpdateItem",
        _once(lambda: results.update(C=c.request_handover("C1", "A", "C", T0 + 1, 120.0))),
    )
    results["B"] = b.request_handover("C1", "A", "B", T0 + 1, 120.0)
    assert results == {"C": True, "B": False}
    view = _view(b, "C1")
    assert view is not None
    assert (view.owner, view.handover_to) == ("A", "C")


def test_leases_are_compatible_with_the_single_chain_state_store(
    store: FleetStore, aws_stack: ProvisionedStack
) -> None:
    single = StateStore(_client(aws_stack), aws_stack.table_name, "C1")
    assert single.acquire_lease("task-a", D, T0)
    taken = store.acquire("C1", "B", T0 + D, D, _view(store, "C1"))
    assert taken is not None
    assert taken.generation == 2
    lease = single.get_lease()
    assert lease is not None
    assert (lease.owner, lease.generation, lease.lease_until) == ("B", 2, T0 + 2 * D)
    assert single.renew_lease("B", D, T0 + D + 10)
    assert single.release_lease("B")
    assert store.acquire("C1", "A", T0 + 50, D, _view(store, "C1")) is not None


# -- renewals -----------------------------------------------------------------------------------


def test_renew_many_with_a_lost_lease_a_request_and_an_error(aws_stack: ProvisionedStack) -> None:
    a, b = _store(aws_stack, max_workers=3), _store(aws_stack)
    chains = [f"C{i}" for i in range(6)]
    for chain in chains:
        assert a.acquire(chain, "A", T0, D, None) is not None
    # B takes C3 after it expired (A's renewals did not get through), and asks A for C1.
    assert b.acquire("C3", "B", T0 + D, D, _view(b, "C3")) is not None
    assert b.request_handover("C1", "A", "B", T0 + D, 120.0)

    def broken_table(params: dict[str, Any], **_: Any) -> None:
        if params["Key"]["pk"]["S"] == "lease#C5":
            params["TableName"] = "no-such-table"

    a._ddb.meta.events.register("before-parameter-build.dynamodb.UpdateItem", broken_table)
    out = a.renew_many([*chains, "C0", "NONE"], "A", T0 + D + 1, D)
    assert list(out) == [*chains, "NONE"]
    renewed = {c for c, r in out.items() if r.renewed}
    assert renewed == {"C0", "C1", "C2", "C4"}
    assert out["C3"].lost
    assert out["NONE"].lost  # no item: nothing to renew, nothing created
    assert _raw(aws_stack, "lease#NONE") is None
    error = out["C5"].error
    assert error is not None
    assert not out["C5"].lost
    assert str(error).startswith(
        f"DynamoDB RenewLease on table {aws_stack.table_name} for chain 'C5' failed (ResourceNotFound"
    )
    assert error.code == "ResourceNotFoundException"
    assert out["C0"].lease == LeaseView(owner="A", lease_until=T0 + 2 * D + 1, generation=1)
    # The holder sees the request on its own lease in the renewal's answer.
    assert out["C1"].lease == LeaseView(
        owner="A", lease_until=T0 + 2 * D + 1, generation=1, handover_to="B", handover_at=T0 + D
    )
    assert out["C2"].lease is not None
    assert out["C2"].lease.handover_to is None


def test_a_late_renewal_of_a_lease_nobody_took_is_still_mine(store: FleetStore) -> None:
    store.acquire("C1", "A", T0, D, None)
    assert store.renew_many(["C1"], "A", T0 + D + 5, D)["C1"].renewed


# -- handover -------------------------------------------------------------------------------------


def test_handover_round_trip_request_decline_accept_release_take(
    store: FleetStore, aws_stack: ProvisionedStack
) -> None:
    timeout = 120.0
    store.acquire("C1", "A", T0, D, None)
    assert not store.request_handover("C1", "X", "B", T0 + 1, timeout)  # not X's
    assert store.request_handover("C1", "A", "B", T0 + 1, timeout)
    assert not store.request_handover("C1", "A", "C", T0 + 2, timeout)  # B's is pending
    assert store.request_handover("C1", "A", "C", T0 + 1 + timeout + 1, timeout)  # B's lapsed
    view = _view(store, "C1")
    assert view is not None
    assert (view.owner, view.handover_to, view.handover_at) == ("A", "C", T0 + timeout + 2)
    # Declines: only the owner, only the pending requester's.
    assert not store.decline("C1", "A", "B")
    assert not store.decline("C1", "Z", "C")
    assert store.decline("C1", "A", "C")
    item = _raw(aws_stack, "lease#C1")
    assert item is not None
    assert not {"handoverTo", "handoverAt"} & set(item)
    assert item["owner"] == {"S": "A"}  # a request or decline never writes the owner
    # B asks again; A honours it; a non-owner can neither accept nor push nor release.
    now = T0 + 200
    assert store.request_handover("C1", "A", "B", now, timeout)
    assert not store.accept("C1", "Z", "B", now)
    assert not store.push("C1", "Z", "B", now)
    assert store.accept("C1", "A", "B", now + 1)
    renewal = store.renew_many(["C1"], "A", now + 2, D)["C1"]
    assert renewal.lease is not None
    assert (renewal.lease.handover_to, renewal.lease.handover_at) == ("B", now + 1)
    assert not store.release("C1", "Z", now + 20, now + 3, keep_handover=True)
    # B's view while A drains: A's live lease, on its way to B. B must not take it yet.
    assert store.acquire("C1", "B", now + 10, D, _view(store, "C1")) is None
    assert store.release("C1", "A", now + 20, now + 3, keep_handover=True)
    assert not store.release("C1", "A", now + 21, now + 3, keep_handover=True)  # not mine any more
    released = _view(store, "C1")
    assert released == LeaseView(
        owner=None, lease_until=0.0, generation=1, handover_to="B", handover_at=now + 20
    )
    # B's pass: the plan takes it (handed to B), the acquire returns A's `complete`.
    watch = LeaseWatch()
    leases = watch.observe({"C1": released}, 0.0)
    p = plan(
        enabled=["C1"],
        leases=leases,
        workers={"A": now + 20, "B": now + 20},
        me="B",
        now=now + 21,
        running=(),
    )
    assert p.take == ("C1",)
    taken = store.acquire("C1", "B", now + 21, D, released)
    assert taken is not None
    assert (taken.generation, taken.completed_at) == (2, now + 3)


def test_a_stop_releases_without_reservation(store: FleetStore, aws_stack: ProvisionedStack) -> None:
    store.acquire("C1", "A", T0, D, None)
    assert store.request_handover("C1", "A", "B", T0 + 1, 120.0)
    assert store.release("C1", "A", T0 + 5, T0 + 4, keep_handover=False)
    item = _raw(aws_stack, "lease#C1")
    assert item is not None
    assert {k: v for k, v in item.items() if k in ("leaseUntil", "completedAt", "generation")} == {
        "leaseUntil": {"N": "0"},
        "completedAt": {"N": f"{T0 + 4:.3f}"},
        "generation": {"N": "1"},
    }
    assert not {"owner", "handoverTo", "handoverAt"} & set(item)
    # A release without a `complete` removes any older one.
    store.acquire("C1", "A", T0 + 6, D, _view(store, "C1"))
    store.release("C1", "A", T0 + 7, T0 + 6.5, keep_handover=False)
    store.acquire("C1", "A", T0 + 8, D, _view(store, "C1"))
    assert store.release("C1", "A", T0 + 9, None, keep_handover=False)
    item = _raw(aws_stack, "lease#C1")
    assert item is not None
    assert "completedAt" not in item


def test_handover_writes_never_create_an_item(store: FleetStore, aws_stack: ProvisionedStack) -> None:
    assert not store.request_handover("C9", "A", "B", T0, 120.0)
    assert not store.accept("C9", "A", "B", T0)
    assert not store.push("C9", "A", "B", T0)
    assert not store.decline("C9", "A", "B")
    assert not store.release("C9", "A", T0, T0, keep_handover=True)
    assert _raw(aws_stack, "lease#C9") is None


# -- reading leases -------------------------------------------------------------------------------


def test_read_leases_pages_over_more_than_100_chains_eventually_consistent(
    store: FleetStore,
) -> None:
    chains = [f"P{i:03d}" for i in range(230)]
    for chain in chains[:205]:
        store.acquire(chain, "A", T0, D, None)
    requests: list[dict[str, Any]] = []
    store._ddb.meta.events.register(
        "provide-client-params.dynamodb.BatchGetItem", lambda params, **_: requests.append(params)
    )
    leases = store.read_leases([*chains, *chains[:10]])  # repeats asked for once
    assert sorted(leases) == chains[:205]
    assert all(v == LeaseView(owner="A", lease_until=T0 + D, generation=1) for v in leases.values())
    sizes = [len(next(iter(r["RequestItems"].values()))["Keys"]) for r in requests]
    assert sizes == [100, 100, 30]
    assert all(next(iter(r["RequestItems"].values()))["ConsistentRead"] is False for r in requests)
    assert store.read_leases([]) == {}


def test_read_leases_asks_again_for_unprocessed_keys(aws_stack: ProvisionedStack) -> None:
    slept: list[float] = []
    store = _store(aws_stack, sleep=slept.append)
    for chain in ("A", "B", "C"):
        store.acquire(chain, "W", T0, D, None)
    calls: list[int] = []

    def hold_back(parsed: dict[str, Any], **_: Any) -> None:
        calls.append(len(calls))
        if len(calls) <= 2:
            items = parsed["Responses"][aws_stack.table_name]
            kept, held = items[:1], items[1:]
            parsed["Responses"][aws_stack.table_name] = kept
            parsed["UnprocessedKeys"] = {aws_stack.table_name: {"Keys": [{"pk": i["pk"]} for i in held]}}

    store._ddb.meta.events.register("after-call.dynamodb.BatchGetItem", hold_back)
    assert sorted(store.read_leases(["A", "B", "C"])) == ["A", "B", "C"]
    assert len(calls) == 3
    assert slept == [0.05, 0.1]


def test_read_leases_gives_up_on_keys_left_unprocessed(aws_stack: ProvisionedStack) -> None:
    store = _store(aws_stack, sleep=lambda _: None)
    store.acquire("A", "W", T0, D, None)

    def hold_all(parsed: dict[str, Any], **_: Any) -> None:
        items = parsed["Responses"].get(aws_stack.table_name, [])
        parsed["Responses"][aws_stack.table_name] = []
        parsed["UnprocessedKeys"] = {aws_stack.table_name: {"Keys": [{"pk": i["pk"]} for i in items]}}

    store._ddb.meta.events.register("after-call.dynamodb.BatchGetItem", hold_all)
    with pytest.raises(
        StateStoreError, match=r"^DynamoDB ReadLeases on table \S+ for 'lease#A' failed \(1 keys"
    ):
        store.read_leases(["A"])


def test_a_malformed_lease_item_is_named(store: FleetStore, aws_stack: ProvisionedStack) -> None:
    _client(aws_stack).put_item(
        TableName=aws_stack.table_name, Item={"pk": {"S": "lease#BAD"}, "owner": {"N": "1"}}
    )
    with pytest.raises(
        StateStoreError, match=r"^lease#BAD in table \S+ is malformed \(owner: expected a string\)"
    ):
        store.read_leases(["BAD"])


# -- workers and the fleet index --------------------------------------------------------------------


def _summaries(n: int) -> dict[str, ChainSummary]:
    return {f"CHAIN-{i:04d}": ChainSummary("connected", T0 - i, T0, i, 0.5) for i in range(n)}


def test_worker_items_round_trip_through_the_index_split_included(
    store: FleetStore, aws_stack: ProvisionedStack
) -> None:
    big = worker_items("task-big", T0, _summaries(300), started_at=T0 - 60, max_item_bytes=4096)
    assert len(big) > 2
    small = worker_items("task-small", T0 + 1, _summaries(3), started_at=T0 - 5)
    client = store._ddb

    def no_scan(**_: Any) -> None:
        raise AssertionError("the fleet must not Scan the state table (it holds the seen-set)")

    client.meta.events.register("before-call.dynamodb.Scan", no_scan)
    assert store.read_workers() == {}
    for items, worker in ((big, "task-big"), (small, "task-small")):
        store.put_worker(items)
        store.join(worker, T0)
    store.join("task-small", T0 + 1)  # idempotent
    index = _raw(aws_stack, FLEET_INDEX_KEY)
    assert index is not None
    assert sorted(index["workers"]["SS"]) == ["task-big", "task-small"]
    assert index["kind"] == {"S": "fleet-index"}
    workers = store.read_workers()
    assert sorted(workers) == ["task-big", "task-small"]
    assert dict(workers["task-big"].chains) == _summaries(300)
    assert workers["task-big"].complete
    assert (workers["task-big"].heartbeat_at, workers["task-big"].started_at) == (T0, T0 - 60)
    assert dict(workers["task-small"].chains) == _summaries(3)
    # An item written but not yet in the index is not read; a member without an item is `missing`.
    store.put_worker(worker_items("task-new", T0, {}, started_at=T0))
    store.join("task-gone", T0)
    fleet = store.read_fleet()
    assert sorted(fleet.workers) == ["task-big", "task-small"]
    assert fleet.missing == {"task-gone"}
    assert fleet.problems == ()


def test_a_torn_worker_write_reads_as_incomplete(store: FleetStore, aws_stack: ProvisionedStack) -> None:
    first = worker_items("w", T0, _summaries(300), started_at=T0, max_item_bytes=4096)
    store.put_worker(first)
    store.join("w", T0)
    later = worker_items("w", T0 + 10, _summaries(300), started_at=T0, max_item_bytes=4096)
    # Only the new first part landed (put_worker writes it last, so this is a hand-made tear).
    _client(aws_stack).put_item(TableName=aws_stack.table_name, Item=later[0])
    record = store.read_workers()["w"]
    assert not record.complete
    assert record.heartbeat_at == T0 + 10


def test_put_worker_writes_the_first_part_last_and_checks_its_items(store: FleetStore) -> None:
    items = worker_items("w", T0, _summaries(300), started_at=T0, max_item_bytes=4096)
    written: list[str] = []
    store._ddb.meta.events.register(
        "provide-client-params.dynamodb.PutItem",
        lambda params, **_: written.append(params["Item"]["pk"]["S"]),
    )
    store.put_worker(items)
    assert written[-1] == "worker#w"
    assert sorted(written) == sorted(i["pk"]["S"] for i in items)
    with pytest.raises(ValueError, match="one worker"):
        store.put_worker([*items, *worker_items("v", T0, {}, started_at=T0)])
    with pytest.raises(ValueError, match="parts must be"):
        store.put_worker(items[1:])
    with pytest.raises(ValueError, match="must not contain '#'"):
        store.put_worker(worker_items("a#1", T0, {}, started_at=T0))


def test_forget_worker_deletes_every_part_then_the_membership(
    store: FleetStore, aws_stack: ProvisionedStack
) -> None:
    big = worker_items("old", T0, _summaries(300), started_at=T0, max_item_bytes=4096)
    store.put_worker(big)
    store.join("old", T0)
    store.put_worker(worker_items("alive", T0, {}, started_at=T0))
    store.join("alive", T0)
    # It wrote again after it was judged silent: not forgotten.
    assert not store.forget_worker("old", T0 + 600, heartbeat_at=T0 - 10)
    assert "old" in store.read_workers()
    assert store.forget_worker("old", T0 + 600, heartbeat_at=T0)
    for item in big:
        assert _raw(aws_stack, item["pk"]["S"]) is None
    fleet = store.read_fleet()
    assert fleet.members == {"alive"}
    assert store.forget_worker("old", T0 + 601)  # idempotent
    assert store.forget_worker("alive", T0 + 602)
    index = _raw(aws_stack, FLEET_INDEX_KEY)
    assert index is not None
    assert "workers" not in index  # the set's last member gone: DynamoDB drops the attribute
    assert store.read_fleet().members == frozenset()
    store.join("alive", T0 + 603)  # back (the scheduler rejoins when it finds itself missing)
    assert store.read_fleet().members == {"alive"}


def test_a_malformed_worker_item_is_reported_not_raised(
    store: FleetStore, aws_stack: ProvisionedStack
) -> None:
    store.put_worker(worker_items("good", T0, _summaries(2), started_at=T0))
    store.join("good", T0)
    bad = worker_items("bad", T0, _summaries(2), started_at=T0)[0]
    bad["chains"]["M"]["CHAIN-0000"] = {"S": "connected|not-a-time"}
    _client(aws_stack).put_item(TableName=aws_stack.table_name, Item=bad)
    store.join("bad", T0)
    fleet = store.read_fleet()
    assert sorted(fleet.workers) == ["good"]
    (problem,) = fleet.problems
    assert problem.startswith(f"worker#bad in table {aws_stack.table_name} is malformed (ValueError")
    assert fleet.missing == {"bad"}


# -- errors ---------------------------------------------------------------------------------------


def test_failures_are_one_line_naming_operation_table_and_chain_or_worker(
    aws_stack: ProvisionedStack,
) -> None:
    store = FleetStore(_client(aws_stack), "no-such-table")
    calls: list[tuple[Callable[[], Any], str]] = [
        (lambda: store.acquire("C1", "A", T0, D, None), "AcquireLease on table no-such-table for chain 'C1'"),
        (
            lambda: store.request_handover("C1", "A", "B", T0, 1.0),
            "RequestHandover on table no-such-table for chain 'C1'",
        ),
        (lambda: store.accept("C1", "A", "B", T0), "AcceptHandover on table no-such-table for chain 'C1'"),
        (lambda: store.push("C1", "A", "B", T0), "PushHandover on table no-such-table for chain 'C1'"),
        (lambda: store.decline("C1", "A", "B"), "DeclineHandover on table no-such-table for chain 'C1'"),
        (
            lambda: store.release("C1", "A", T0, None, keep_handover=False),
            "ReleaseLease on table no-such-table for chain 'C1'",
        ),
        (
            lambda: store.read_leases(["C1", "C2"]),
            "ReadLeases on table no-such-table for 2 keys from 'lease#C1'",
        ),
        (lambda: store.join("w1", T0), "JoinFleet on table no-such-table for worker 'w1'"),
        (
            lambda: store.put_worker(worker_items("w1", T0, {}, started_at=T0)),
            "PutWorker on table no-such-table for worker 'w1'",
        ),
        (lambda: store.read_workers(), "ReadWorkers on table no-such-table for fleet-index"),
        (lambda: store.forget_worker("w1", T0), "ForgetWorker on table no-such-table for worker 'w1'"),
    ]
    for call, named in calls:
        with pytest.raises(StateStoreError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"DynamoDB {named} failed (ResourceNotFoundException"), message
        assert "\n" not in message
        assert info.value.code == "ResourceNotFoundException"
        assert info.value.retryable is False


def test_arguments_are_checked(store: FleetStore) -> None:
    with pytest.raises(ValueError, match="lease_seconds must be positive"):
        store.acquire("C1", "A", T0, 0.0, None)
    with pytest.raises(ValueError, match="non-empty"):
        store.acquire("", "A", T0, D, None)
    with pytest.raises(ValueError, match="its own chain"):
        store.request_handover("C1", "A", "A", T0, 1.0)
    with pytest.raises(ValueError, match="to itself"):
        store.push("C1", "A", "A", T0)
    with pytest.raises(ValueError, match="must not contain '#'"):
        store.join("a#b", T0)
    with pytest.raises(ValueError, match="max_workers"):
        FleetStore(store._ddb, "t", max_workers=0)
