"""DynamoDB failing while the consumer starts: it says so and tries again, instead of crashing.

The relay's own clients retry throttling five times (botocore's standard mode, seconds of backoff);
what still fails reaches the consumer. Here the state store's client has botocore's retries off
and talks to moto through the fault proxy, so each injected fault is one failed read.
"""

from __future__ import annotations

import logging

import boto3
import pytest
from botocore.config import Config

from ohip_local.faultproxy import FaultRule, running_fault_proxy
from ohip_relay.state import StateStore, StreamState

from .conftest import Rig, eventually

pytestmark = pytest.mark.integration


async def test_state_reads_failing_at_start_up_are_tried_again(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    with running_fault_proxy(rig.stack.endpoint_url) as proxy:
        client = boto3.client(
            "dynamodb",
            endpoint_url=proxy.url,
            region_name=rig.stack.region,
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )
        state = StateStore(client, rig.stack.table_name, rig.chain)
        # The first three GetItems fail: the checkpoint read at start-up, then its first retry, ...
        rule = proxy.add(FaultRule("dynamodb", error="throttle", operation="GetItem", count=3))
        with caplog.at_level(logging.WARNING, logger="ohip_relay.stream"):
            async with rig.consumer(state=state) as running:
                await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
                rig.gateway.emit(10)
                await rig.receive_offsets(set(rig.emitted_offsets()))
                assert await running.stop() == 0
    assert rule.injected == 3
    warnings = [r.getMessage() for r in caplog.records if "cannot read the" in r.getMessage()]
    assert any(
        "cannot read the checkpoint (ProvisionedThroughputExceededException); trying again" in w
        for w in warnings
    ), warnings
    await rig.drain_queue()
    assert sorted(rig.offsets()) == rig.emitted_offsets()
