"""StateStore against the moto server over HTTP: conditional writes decide, not the client."""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from ohip_local.aws import ProvisionedStack, provision
from ohip_relay.state import (
    CHECKPOINT_PREFIX,
    Checkpoint,
    Heartbeat,
    StateStore,
    StateStoreError,
    StreamState,
)

from ..conftest import TEMPLATE

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

pytestmark = pytest.mark.integration

T0 = 1_764_000_000.0  # a fixed "now"; tests move it by hand


def _client(stack: ProvisionedStack) -> DynamoDBClient:
    return boto3.client(
        "dynamodb",
        endpoint_url=stack.endpoint_url,
        region_name=stack.region,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def stack(aws_endpoint: str) -> ProvisionedStack:
    """One table for the module (provisioning costs ~0.4 s); tests are kept apart by chain code."""
    return provision(aws_endpoint, TEMPLATE, stack_name=f"state-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def chain() -> str:
    return f"C{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(stack: ProvisionedStack, chain: str) -> StateStore:
    return StateStore(_client(stack), stack.table_name, chain)


# -- checkpoint ---------------------------------------------------------------------------------


def test_no_checkpoint_yet(store: StateStore) -> None:
    assert store.get_checkpoint() is None


def test_checkpoint_round_trip_and_item_layout(
    store: StateStore, stack: ProvisionedStack, chain: str
) -> None:
    assert store.advance_checkpoint(1_234_567_890, "task-a", now=T0) is True
    assert store.get_checkpoint() == Checkpoint(offset=1_234_567_890, updated_at=T0, owner="task-a")
    raw = _client(stack).get_item(TableName=stack.table_name, Key={"pk": {"S": f"checkpoint#{chain}"}})
    item = raw["Item"]
    assert item["offset"] == {"N": "1234567890"}  # a Number, so DynamoDB compares it as one
    assert item["kind"] == {"S": "checkpoint"}
    assert item["chain"] == {"S": chain}
    assert "expiresAt" not in item


def test_checkpoint_never_moves_backward(store: StateStore) -> None:
    assert store.advance_checkpoint(100, "a", now=T0)
    assert store.advance_checkpoint(99, "b", now=T0 + 1) is False  # stale: no exception
    assert store.advance_checkpoint(100, "b", now=T0 + 2) is False  # equal is not an advance
    assert store.get_checkpoint() == Checkpoint(offset=100, updated_at=T0, owner="a")
    # Numeric, not lexicographic: "1000" < "999" as strings.
    assert store.advance_checkpoint(999, "a", now=T0 + 3)
    assert store.advance_checkpoint(1000, "a", now=T0 + 4)
    assert store.advance_checkpoint(999, "a", now=T0 + 5) is False
    checkpoint = store.get_checkpoint()
    assert checkpoint is not None
    assert checkpoint.offset == 1000


@pytest.mark.parametrize("seed", range(2))
def test_checkpoint_is_the_running_maximum_of_any_write_order(store: StateStore, seed: int) -> None:
    """Writers whose writes arrive in any order (a restarted task, a slow one): the stored offset is the
    maximum written so far, and a write succeeds exactly when it raises that maximum."""
    rng = random.Random(seed)
    offsets = rng.sample(range(1, 10_000), 15)
    highest = 0
    for offset in offsets:
        owner = rng.choice(["old-task", "new-task"])
        assert store.advance_checkpoint(offset, owner, now=T0) is (offset > highest)
        highest = max(highest, offset)
        checkpoint = store.get_checkpoint()
        assert checkpoint is not None
        assert checkpoint.offset == highest


def test_chains_are_separate(stack: ProvisionedStack, chain: str) -> None:
    client = _client(stack)
    one = StateStore(client, stack.table_name, chain)
    two = StateStore(client, stack.table_name, chain + "-2")
    one.advance_checkpoint(5, "a", now=T0)
    one.acquire_lease("a", 30, now=T0)
    assert two.get_checkpoint() is None
    assert two.acquire_lease("b", 30, now=T0)
    assert one.key(CHECKPOINT_PREFIX) == f"checkpoint#{chain}"


# -- heartbeat ----------------------------------------------------------------------------------


def test_heartbeat_round_trip(store: StateStore) -> None:
    assert store.get_heartbeat() is None
    beat = Heartbeat(
        state=StreamState.CONNECTED,
        owner="task-a",
        updated_at=T0,
        last_frame_at=T0 - 0.25,
        last_event_at=T0 - 3.5,
        last_offset=9_876_543_210,
        checkpoint=9_876_543_200,
        lag_seconds=1.75,
        detail="subscribed",
    )
    store.put_heartbeat(beat)
    assert store.get_heartbeat() == beat
    later = Heartbeat(state=StreamState.BACKOFF, owner="task-a", updated_at=T0 + 5, detail="close 4504")
    store.put_heartbeat(later)
    got = store.get_heartbeat()
    assert got == later  # optional fields from the previous beat are gone, not merged
    assert got is not None
    assert got.age(T0 + 8) == pytest.approx(3.0)


def test_heartbeat_with_an_unknown_state_is_still_readable(store: StateStore) -> None:
    store.put_heartbeat(Heartbeat(state="paused-by-newer-version", owner="x", updated_at=T0))
    got = store.get_heartbeat()
    assert got is not None
    assert got.state == "paused-by-newer-version"


# -- lease --------------------------------------------------------------------------------------


def test_lease_is_exclusive_until_it_expires(store: StateStore) -> None:
    assert store.get_lease() is None
    assert store.acquire_lease("a", 30, now=T0)
    assert store.acquire_lease("b", 30, now=T0 + 10) is False
    lease = store.get_lease()
    assert lease is not None
    assert lease.owner == "a"
    assert lease.held_by("a", T0 + 29.9)
    assert not lease.is_held(T0 + 30)
    # Exactly at expiry the lease is free.
    assert store.acquire_lease("b", 30, now=T0 + 30)
    assert store.renew_lease("a", 30, now=T0 + 31) is False
    lease = store.get_lease()
    assert lease is not None
    assert (lease.owner, lease.lease_until) == ("b", T0 + 60)


def test_acquire_is_reentrant_and_counts_generations(store: StateStore) -> None:
    assert store.acquire_lease("a", 30, now=T0)
    assert store.acquire_lease("a", 30, now=T0 + 5)  # already ours
    first = store.get_lease()
    assert first is not None
    assert store.acquire_lease("b", 30, now=T0 + 40)
    second = store.get_lease()
    assert second is not None
    assert second.generation > first.generation


def test_renew_extends_only_our_lease(store: StateStore) -> None:
    assert store.renew_lease("a", 30, now=T0) is False  # no lease at all
    assert store.acquire_lease("a", 30, now=T0)
    assert store.renew_lease("a", 30, now=T0 + 20)
    assert store.acquire_lease("b", 30, now=T0 + 40) is False  # renewed: still held until T0 + 50
    lease = store.get_lease()
    assert lease is not None
    assert (lease.lease_until, lease.renewed_at) == (T0 + 50, T0 + 20)
    assert store.renew_lease("b", 30, now=T0 + 41) is False


def test_release_only_by_the_owner(store: StateStore) -> None:
    assert store.acquire_lease("a", 30, now=T0)
    assert store.release_lease("b") is False
    assert store.get_lease() is not None
    assert store.release_lease("a")
    assert store.get_lease() is None
    assert store.release_lease("a") is False
    # Free again at once, without waiting for the old expiry.
    assert store.acquire_lease("b", 30, now=T0 + 1)


def test_two_owners_racing_exactly_one_wins(stack: ProvisionedStack, chain: str) -> None:
    """Owners that all saw the lease free (or expired) and all try to take it at the same instant.

    Each acquire is one conditional write with no client-side read, so the outcome is decided by the
    condition alone: the first write to land wins and every other one fails. DynamoDB serialises
    writes to an item; moto does not (two threads can both pass a condition), so the writes are
    issued one after the other here: the interleaving DynamoDB would impose.
    """
    owners = ["a", "b", "c"]
    stores = {owner: StateStore(_client(stack), stack.table_name, chain) for owner in owners}
    rng = random.Random(7)
    for round_number in range(4):
        now = T0 + round_number * 100  # every round starts after the previous lease expired
        lease = stores["a"].get_lease()
        assert lease is None or not lease.is_held(now)  # everybody sees it free
        order = owners[:]
        rng.shuffle(order)
        results = {owner: stores[owner].acquire_lease(owner, 30, now=now) for owner in order}
        assert [owner for owner, won in results.items() if won] == [order[0]]
        lease = stores["a"].get_lease()
        assert lease is not None
        assert lease.owner == order[0]


# -- errors -------------------------------------------------------------------------------------


def test_other_errors_name_the_operation_and_table(stack: ProvisionedStack) -> None:
    store = StateStore(_client(stack), "no-such-table", "C1")
    with pytest.raises(StateStoreError, match=r"DynamoDB AdvanceCheckpoint on table no-such-table") as info:
        store.advance_checkpoint(1, "a", now=T0)
    assert info.value.code == "ResourceNotFoundException"
    assert info.value.retryable is False
    with pytest.raises(StateStoreError, match="GetLease on table no-such-table"):
        store.get_lease()
    with pytest.raises(StateStoreError, match="PutHeartbeat"):
        store.put_heartbeat(Heartbeat(state=StreamState.STOPPED, owner="a", updated_at=T0))


def test_throttling_is_retryable(stack: ProvisionedStack) -> None:
    """A throttling response injected before the request is sent (botocore's own retries are off)."""
    client = _client(stack)

    def throttle(**_: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        from botocore.compat import HTTPHeaders

        class _Raw:
            def stream(self, **_: Any) -> Any:
                yield b'{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"slow"}'

        headers = HTTPHeaders()
        headers["x-amzn-requestid"] = "1"
        return AWSResponse("http://x", 400, headers, _Raw())

    client.meta.events.register("before-send.dynamodb.GetItem", throttle)
    with pytest.raises(StateStoreError, match="ThrottlingException") as info:
        StateStore(client, stack.table_name, "C1").get_checkpoint()
    assert info.value.retryable is True


def test_connection_error_is_wrapped(stack: ProvisionedStack) -> None:
    client = _client(stack)

    def unreachable(**_: Any) -> Any:
        raise EndpointConnectionError(endpoint_url=stack.endpoint_url)

    client.meta.events.register("before-send.dynamodb.GetItem", unreachable)
    with pytest.raises(StateStoreError, match="GetHeartbeat on table") as info:
        StateStore(client, stack.table_name, "C1").get_heartbeat()
    assert info.value.retryable is True
    assert info.value.code == "EndpointConnectionError"


def test_empty_owner_or_chain_is_refused(store: StateStore, stack: ProvisionedStack) -> None:
    with pytest.raises(ValueError, match="owner"):
        store.acquire_lease("", 30, now=T0)
    with pytest.raises(ValueError, match="chain_code"):
        StateStore(_client(stack), stack.table_name, "")
