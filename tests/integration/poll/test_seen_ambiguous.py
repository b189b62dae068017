"""The seen-set when DynamoDB answers an error after the write went through (an ambiguous failure:
a 5xx after commit, a lost response), through the chaos suite's fault proxy in front of moto, with
the poll fallback's own client configuration (one retry) and real boto3 clients over HTTP.

Both writes are idempotent, so a retry that meets its own first write changes nothing: `record`
ADDs an eventId to a set, `match` succeeds again for a stream event it had matched. Chaos seed 487
once lost an event to a retried conditional write that did not recognise its own first attempt.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ohip_local.aws import ProvisionedStack, local_client
from ohip_local.faultproxy import FaultProxy, FaultRule, running_fault_proxy
from ohip_relay.fallback import POLL_BOTO_CONFIG
from ohip_relay.seen import SeenSet, SeenSetUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KEY = "v1-k"


@pytest.fixture
def proxy(aws_endpoint: str) -> Iterator[FaultProxy]:
    with running_fault_proxy(aws_endpoint, seed=11) as running:
        yield running


def seen_sets(proxy: FaultProxy, stack: ProvisionedStack) -> tuple[SeenSet, SeenSet]:
    """(through the proxy, straight to moto)."""
    return (
        SeenSet(local_client("dynamodb", proxy.url, config=POLL_BOTO_CONFIG), stack.table_name),
        SeenSet(local_client("dynamodb", stack.endpoint_url, config=POLL_BOTO_CONFIG), stack.table_name),
    )


@pytest.mark.parametrize("error", ["unavailable", "internal"])
def test_a_retried_record_that_had_gone_through_records_one_copy(
    proxy: FaultProxy, aws_stack: ProvisionedStack, error: str
) -> None:
    faulty, direct = seen_sets(proxy, aws_stack)
    proxy.add(FaultRule("dynamodb", error=error, operation="UpdateItem", phase="after", count=1))
    faulty.record([(KEY, "poll:C:1")])
    assert proxy.stats()["injected"] == {f"dynamodb.UpdateItem {error}/after": 1}
    # Written twice, one copy: it cancels one stream copy, not two.
    assert direct.match(KEY, "stream:C:1:a")
    assert not direct.match(KEY, "stream:C:2:b")


def test_a_record_whose_every_attempt_errs_after_the_write_is_unknown(
    proxy: FaultProxy, aws_stack: ProvisionedStack
) -> None:
    faulty, direct = seen_sets(proxy, aws_stack)
    proxy.add(FaultRule("dynamodb", error="unavailable", operation="UpdateItem", phase="after", count=2))
    with pytest.raises(SeenSetUnavailable) as raised:
        faulty.record([(KEY, "poll:C:1")])
    assert raised.value.unknown == {KEY}
    # It was written: the copy is on the queue (record follows SQS's acknowledgement), so the
    # stream's copy is rightly suppressed, once.
    assert direct.match(KEY, "stream:C:1:a")
    assert not direct.match(KEY, "stream:C:2:b")


def test_a_retried_match_that_had_gone_through_still_matches(
    proxy: FaultProxy, aws_stack: ProvisionedStack
) -> None:
    faulty, direct = seen_sets(proxy, aws_stack)
    direct.record([(KEY, "poll:C:1")])
    proxy.add(FaultRule("dynamodb", error="internal", operation="UpdateItem", phase="after", count=1))
    # The retry meets its own first write (the stream event is among the matched): True, not a
    # failed condition that would publish a duplicate...
    assert faulty.match(KEY, "stream:C:1:a")
    assert proxy.stats()["injected"] == {"dynamodb.UpdateItem internal/after": 1}
    # ...and the copy is taken: a lookalike stream event is published.
    assert not direct.match(KEY, "stream:C:2:b")


def test_a_match_whose_every_attempt_errs_after_the_write_is_unavailable(
    proxy: FaultProxy, aws_stack: ProvisionedStack
) -> None:
    faulty, direct = seen_sets(proxy, aws_stack)
    direct.record([(KEY, "poll:C:1")])
    proxy.add(FaultRule("dynamodb", error="unavailable", operation="UpdateItem", phase="after", count=2))
    with pytest.raises(SeenSetUnavailable) as raised:
        faulty.match(KEY, "stream:C:1:a")  # the stream publishes its copy then: a duplicate
    assert raised.value.unknown == {KEY}
    # The write went through: that stream event holds the copy, no other can take it.
    assert direct.match(KEY, "stream:C:1:a")
    assert not direct.match(KEY, "stream:C:2:b")
