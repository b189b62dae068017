"""The seen-set per subscription (moto server): in fleet mode many subscriptions share the state
table, and a content key leaves the chain code out, so one chain's poll copy must never suppress
another chain's stream copy. Without a subscription the items are named as they always were."""

from __future__ import annotations

import pytest

from ohip_relay.seen import SeenSet

from .conftest import PollRig

pytestmark = pytest.mark.integration

KEY = "v1-lookalike"  # one content key in two OPERA environments (copied data, say)


def scoped(rig: PollRig, subscription: str) -> SeenSet:
    return SeenSet(rig.dynamodb, rig.stack.table_name, clock=rig.clock, subscription=subscription)


def test_a_poll_copy_of_one_subscription_never_suppresses_another_subscriptions_stream_copy(
    rig: PollRig,
) -> None:
    prod, uat, other = scoped(rig, "ACME"), scoped(rig, "ACME-UAT"), scoped(rig, "ZETA")
    prod.record([(KEY, "poll:ACME:1")])
    assert not uat.match(KEY, "stream:ACME-UAT:1:a")  # published: it is another environment's event
    assert not other.match(KEY, "stream:ZETA:1:a")  # another chain code, the same content key
    assert not rig.seen.match(KEY, "stream:ACME:1:a")  # the unscoped seen-set is another one again
    assert prod.match(KEY, "stream:ACME:1:a")  # within the subscription: matched as before
    uat.record([(KEY, "poll:ACME-UAT:1")])
    assert uat.match(KEY, "stream:ACME-UAT:1:a")
    assert not uat.match(KEY, "stream:ACME-UAT:2:b")  # one poll copy cancels one stream copy
    assert rig.recorded() == {"ACME#" + KEY: {"poll:ACME:1"}, "ACME-UAT#" + KEY: {"poll:ACME-UAT:1"}}


def test_the_single_chain_item_names_are_unchanged(rig: PollRig) -> None:
    rig.seen.record([(KEY, "poll:C:1")])
    assert rig.recorded() == {KEY: {"poll:C:1"}}  # `seen#<eventKey>`
    assert rig.seen.item_key(KEY) == "seen#" + KEY
    assert scoped(rig, "C").item_key(KEY) == "seen#C#" + KEY
    with pytest.raises(ValueError, match="subscription"):
        scoped(rig, "")
