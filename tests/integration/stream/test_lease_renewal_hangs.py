"""A lease renewal that hangs ends the connection before the lease can pass to another task.

DynamoDB holds the lease until the last successful renewal plus `lease_duration`; from then on a
standby task takes it and connects. If the holder waited for a renewal that DynamoDB (or the
network, or botocore's retries) keeps hanging, it would still be reading when its successor
subscribes: two connections, a 4409 for one of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time

import pytest

from ohip_local.faultproxy import FaultRule, running_fault_proxy
from ohip_relay.state import StreamState

from .conftest import FAST, Rig, eventually

pytestmark = pytest.mark.integration

SHORT_LEASE = dataclasses.replace(FAST, lease_duration=1.5, lease_renew_interval=0.3)


async def test_a_hanging_renewal_closes_the_connection_before_the_lease_ends(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    hang = 5.0  # each UpdateItem (lease renewal, checkpoint) answers after this long: > 3 leases
    with running_fault_proxy(rig.stack.endpoint_url) as proxy, caplog.at_level(logging.INFO):
        async with rig.consumer(SHORT_LEASE, owner="task-a", AWS_ENDPOINT_URL=proxy.url) as first:
            await eventually(lambda: first.consumer.status is StreamState.CONNECTED, what="first connected")
            async with rig.consumer(SHORT_LEASE, owner="task-b") as second:
                await eventually(
                    lambda: second.consumer.status is StreamState.STANDBY, what="second on standby"
                )
                rule = proxy.add(
                    FaultRule(
                        service="dynamodb", operation="UpdateItem", error="slow", delay=hang, duration=hang
                    )
                )
                await eventually(
                    lambda: second.consumer.status is StreamState.CONNECTED,
                    within=hang + 10,
                    what="the successor took the lease and connected",
                )
                assert not first.consumer.holding_lease
                assert first.consumer.status is not StreamState.CONNECTED
                assert rule.injected >= 1
                rig.gateway.emit(5)
                await rig.receive_offsets(set(rig.emitted_offsets()))
                assert await second.stop() == 0
            assert await first.stop() == 0
    assert rig.gateway.streaming.snapshot()["conflicts"] == 0, "two connections at once"
    lost = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lease lost")]
    assert any("no lease renewal succeeded for" in m for m in lost), lost


async def test_renewals_do_not_wait_behind_other_blocking_calls(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # Every thread of the loop's shared pool busy (as with blocking calls retrying through
    # throttling) for longer than a lease: the consumer's calls, in threads of its own, keep the
    # lease all the same.
    busy = 4 * SHORT_LEASE.lease_duration
    release = threading.Event()
    with caplog.at_level(logging.INFO):
        async with rig.consumer(SHORT_LEASE, owner="task-a") as first:
            await eventually(lambda: first.consumer.status is StreamState.CONNECTED, what="connected")
            loop = asyncio.get_running_loop()
            blocked_at = time.time()
            blockers = [loop.run_in_executor(None, release.wait, busy) for _ in range(64)]
            try:
                # Renewed, in DynamoDB, more than two leases after the pool filled up.
                await eventually(
                    lambda: renewed_at(rig) > blocked_at + 2 * SHORT_LEASE.lease_duration,
                    within=busy,
                    what="renewals while the shared pool is busy",
                )
                assert first.consumer.holding_lease
                assert first.consumer.status is StreamState.CONNECTED
            finally:
                release.set()
                await asyncio.gather(*blockers)
            assert await first.stop() == 0
    assert not [r.getMessage() for r in caplog.records if r.getMessage().startswith("lease lost")]


def renewed_at(rig: Rig) -> float:
    lease = rig.state.get_lease()  # the rig's own client, in this thread: not the shared pool
    return lease.renewed_at if lease is not None else 0.0
