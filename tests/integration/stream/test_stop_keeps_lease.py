"""A stopping consumer keeps its lease until its last checkpoint, however long SQS takes to answer.

An ECS deployment starts the new task before it stops the old one: if the old task stopped renewing
its lease as soon as it closed the connection, a slow drain would let the new task subscribe (from
an older checkpoint) while the old one is still publishing and checkpointing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from ohip_local.faultproxy import FaultRule, running_fault_proxy
from ohip_relay.state import StreamState

from .conftest import FAST, Rig, eventually

pytestmark = pytest.mark.integration


# Short, so that the drain below outlasts several leases; not shorter: a renewal must answer within
# lease - renew interval (1.75 s), or the consumer gives the lease up (test_lease_renewal_hangs.py);
# a 1 s lease left a renewal 0.8 s, the tightest margin in the suite on a loaded machine.
SHORT_LEASE = dataclasses.replace(FAST, lease_duration=2.0, lease_renew_interval=0.25)


async def test_a_successor_waits_until_the_stopping_consumer_has_drained(rig: Rig) -> None:
    slow = 3 * SHORT_LEASE.lease_duration  # the SendMessageBatch answers after longer than a lease lasts
    with running_fault_proxy(rig.stack.endpoint_url) as proxy:
        async with rig.consumer(SHORT_LEASE, owner="task-a", AWS_ENDPOINT_URL=proxy.url) as first:
            await eventually(lambda: first.consumer.status is StreamState.CONNECTED, what="first connected")
            proxy.add(
                FaultRule(service="sqs", operation="SendMessageBatch", error="slow", delay=slow, count=1)
            )
            rig.gateway.emit(5)
            await eventually(lambda: first.consumer.publisher.buffered >= 5, what="five events read")
            first.consumer.request_stop()
            async with rig.consumer(SHORT_LEASE, owner="task-b") as second:
                started = time.monotonic()
                while not first.task.done():
                    assert second.consumer.connections == 0, "the successor connected during the drain"
                    assert time.monotonic() - started < 30, "the first consumer never finished"
                    await asyncio.sleep(0.05)  # sampling the successor's state, not synchronising
                assert first.task.result() == 0
                assert time.monotonic() - started >= slow / 2, "the drain did wait for SQS"
                # (the takeover itself, after the 10 s gap, is test_stream_consumer's business)
                assert await second.stop() == 0
    assert rig.gateway.streaming.snapshot()["conflicts"] == 0
    await rig.drain_queue()
    assert set(rig.offsets()) == set(rig.emitted_offsets())
