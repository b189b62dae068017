"""The seen-set's claim when DynamoDB answers an error after the write went through (chaos seed 487).

botocore retries such a PutItem; before claims carried a token, the retry met its own first
write, failed its condition and the key counted as already claimed: the poll fallback dropped an
event that nobody had published, and the stream skipped it on replay as "published by the
fallback". Real boto3 clients, the chaos suite's fault proxy in front of moto, over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ohip_local.aws import ProvisionedStack, local_client
from ohip_local.faultproxy import FaultProxy, FaultRule, running_fault_proxy
from ohip_relay.fallback import POLL_BOTO_CONFIG
from ohip_relay.seen import SeenSet, SeenSetUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def proxy(aws_endpoint: str) -> Iterator[FaultProxy]:
    with running_fault_proxy(aws_endpoint, seed=11) as running:
        yield running


@pytest.mark.parametrize("error", ["unavailable", "internal"])
def test_a_retried_claim_that_had_gone_through_is_still_new(
    proxy: FaultProxy, aws_stack: ProvisionedStack, error: str
) -> None:
    # The poll fallback's own client configuration: one retry.
    seen = SeenSet(local_client("dynamodb", proxy.url, config=POLL_BOTO_CONFIG), aws_stack.table_name)
    proxy.add(FaultRule("dynamodb", error=error, operation="PutItem", phase="after", count=1))
    assert seen.claim(["k-1"]) == {"k-1"}
    assert proxy.stats()["injected"] == {f"dynamodb.PutItem {error}/after": 1}
    # The key is claimed for everyone else: another claim (another tick) sees a duplicate,
    # and the stream's lookup finds it.
    assert seen.claim(["k-1"]) == set()
    assert seen.contains(["k-1", "k-2"]) == {"k-1"}


def test_a_claim_whose_every_attempt_errs_after_the_write_is_unknown_not_a_duplicate(
    proxy: FaultProxy, aws_stack: ProvisionedStack
) -> None:
    seen = SeenSet(local_client("dynamodb", proxy.url, config=POLL_BOTO_CONFIG), aws_stack.table_name)
    proxy.add(FaultRule("dynamodb", error="unavailable", operation="PutItem", phase="after", count=2))
    with pytest.raises(SeenSetUnavailable) as raised:
        seen.claim(["k-1"])
    # Both attempts wrote and were told they had not: unknown, so the caller publishes it (at
    # least once), never a duplicate.
    assert raised.value.unknown == {"k-1"}
    assert raised.value.claimed == set()
    assert seen.claim(["k-1"]) == set()  # it was written: for the next tick, a duplicate


def test_claims_of_two_calls_still_exclude_each_other(aws_stack: ProvisionedStack) -> None:
    seen = SeenSet(
        local_client("dynamodb", aws_stack.endpoint_url, config=POLL_BOTO_CONFIG), aws_stack.table_name
    )
    assert seen.claim(["a", "b"]) == {"a", "b"}
    assert seen.claim(["b", "c"]) == {"c"}
