"""The fleet store's pure encoding helpers: lease items as views, the versioned acquire's condition,
the expressions' attribute names, worker keys and ids (no DynamoDB; the writes themselves are
tested against moto in tests/integration/test_fleet_state.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ohip_relay.balance import LeaseView, worker_items
from ohip_relay.fleet_state import (
    Renewal,
    acquire_condition,
    check_worker_id,
    decode_lease,
    expression_names,
    lease_key,
    worker_key,
)
from ohip_relay.state import StateStoreError

T0 = 1_764_000_000.0


def test_decode_a_lease_item_of_today_and_of_the_fleet() -> None:
    today = {
        "pk": {"S": "lease#C1"},
        "kind": {"S": "lease"},
        "chain": {"S": "C1"},
        "owner": {"S": "task-a"},
        "leaseUntil": {"N": "1764000030.000"},
        "renewedAt": {"N": "1764000000.000"},
        "generation": {"N": "3"},
    }
    assert decode_lease(today) == LeaseView(owner="task-a", lease_until=T0 + 30, generation=3)
    released = {
        **{k: v for k, v in today.items() if k != "owner"},
        "leaseUntil": {"N": "0"},
        "handoverTo": {"S": "task-b"},
        "handoverAt": {"N": "1764000005.5"},
        "completedAt": {"N": "1764000004.25"},
    }
    assert decode_lease(released) == LeaseView(
        owner=None, lease_until=0.0, generation=3, handover_to="task-b", handover_at=T0 + 5.5
    )
    assert decode_lease({"pk": {"S": "lease#C1"}}) == LeaseView(owner=None)


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("owner", {"N": "1"}, "owner: expected a string"),
        ("leaseUntil", {"S": "soon"}, "leaseUntil: expected a number"),
        ("generation", {"N": "1.5"}, "generation: expected a whole number"),
        ("handoverTo", {"SS": ["a"]}, "handoverTo: expected a string"),
        ("handoverAt", {"N": "x"}, "handoverAt: expected a number"),
    ],
)
def test_decode_names_a_malformed_attribute(attribute: str, value: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_lease({"pk": {"S": "lease#C1"}, attribute: value})


def test_acquire_condition_when_the_pass_saw_no_item() -> None:
    assert acquire_condition("me", T0, None) == ("attribute_not_exists(#pk)", {"#pk": "pk"}, {})


def test_acquire_condition_requires_the_version_seen_and_todays_rule() -> None:
    condition, names, values = acquire_condition(
        "me", T0, LeaseView(owner="A", lease_until=T0 - 1, generation=4)
    )
    assert condition == (
        "attribute_exists(#pk) AND (attribute_not_exists(#owner) OR #until <= :now OR #owner = :me) "
        "AND #owner = :seenOwner AND #generation = :seenGeneration AND #until = :seenUntil"
    )
    assert names == {"#pk": "pk", "#owner": "owner", "#until": "leaseUntil", "#generation": "generation"}
    assert values == {
        ":me": {"S": "me"},
        ":now": {"N": "1764000000.000"},
        ":seenOwner": {"S": "A"},
        ":seenGeneration": {"N": "4"},
        ":seenUntil": {"N": "1763999999.000"},
    }


def test_acquire_condition_of_a_released_lease_and_of_an_item_without_a_version() -> None:
    condition, _, values = acquire_condition("me", T0, LeaseView(owner=None, lease_until=0.0, generation=2))
    assert "attribute_not_exists(#owner) AND #generation = :seenGeneration" in condition
    assert condition.endswith("(attribute_not_exists(#until) OR #until = :seenUntil)")
    assert ":seenOwner" not in values
    condition, _, values = acquire_condition("me", T0, LeaseView(owner=None))
    assert "(attribute_not_exists(#generation) OR #generation = :seenGeneration)" in condition
    assert values[":seenGeneration"] == {"N": "0"}


@given(st.floats(min_value=1e9, max_value=4e9, allow_nan=False).map(lambda x: round(x, 3)))
def test_a_lease_until_read_back_prints_back_to_the_stored_digits(until: float) -> None:
    """The version check compares `leaseUntil` as written ("%.3f") with the float read back."""
    stored = {"N": f"{until:.3f}"}
    view = decode_lease(
        {"pk": {"S": "lease#C"}, "owner": {"S": "A"}, "leaseUntil": stored, "generation": {"N": "1"}}
    )
    assert acquire_condition("me", T0, view)[2][":seenUntil"] == stored


def test_expression_names_are_exactly_those_used() -> None:
    assert expression_names("SET #until = :until, #renewedAt = :now", "#owner = :me") == {
        "#owner": "owner",
        "#until": "leaseUntil",
        "#renewedAt": "renewedAt",
    }
    # A name that is a prefix of another is not taken for it.
    assert expression_names("SET #handoverAt = :now") == {"#handoverAt": "handoverAt"}
    assert expression_names("REMOVE #handoverTo, #handoverAt") == {
        "#handoverTo": "handoverTo",
        "#handoverAt": "handoverAt",
    }


def test_keys_match_the_balancing_cores_worker_items() -> None:
    assert lease_key("CHAIN 1") == "lease#CHAIN 1"
    items = worker_items("task-1", T0, {}, started_at=T0, max_item_bytes=600)
    assert items[0]["pk"] == {"S": worker_key("task-1")}
    assert worker_key("task-1", 2) == "worker#task-1#2"


@pytest.mark.parametrize("bad", ["", "a#1"])
def test_worker_ids_are_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="worker id"):
        check_worker_id(bad)
    assert check_worker_id("0123abcd-nonce") == "0123abcd-nonce"


def test_renewal_outcomes() -> None:
    assert Renewal("C1").lost
    assert not Renewal("C1").renewed
    assert Renewal("C1", lease=LeaseView(owner="A")).renewed
    failed = Renewal("C1", error=StateStoreError("x", operation="RenewLease", code="E", retryable=True))
    assert not failed.lost
    assert not failed.renewed


def test_a_written_items_malformed_attribute_reads_as_absent_when_not_strict() -> None:
    """What a renewal or an acquire returns is decoded leniently: the write went through, and a
    hand-written attribute of the wrong type must not make it look failed."""
    item = {
        "pk": {"S": "lease#C1"},
        "owner": {"S": "A"},
        "leaseUntil": {"N": "1764000030"},
        "generation": {"N": "2"},
        "handoverTo": {"N": "7"},
        "handoverAt": {"S": "yesterday"},
    }
    assert decode_lease(item, strict=False) == LeaseView(owner="A", lease_until=T0 + 30, generation=2)
    with pytest.raises(ValueError, match="handoverTo"):
        decode_lease(item)
