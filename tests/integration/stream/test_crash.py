"""kill -9 in the middle of a burst, then a restart: nothing is lost (the relay as a real process)."""

from __future__ import annotations

import asyncio

import pytest

from ohip_local.control import AsyncControlClient
from ohip_local.harness import RelayProcess

from .conftest import Rig, eventually

pytestmark = pytest.mark.integration

BURST = 150


async def test_kill_9_mid_burst_then_restart_loses_nothing(rig: Rig) -> None:
    env = {**rig.env, "RELAY_LEASE_SECONDS": "3"}
    relay = RelayProcess(["stream"], env).start()
    try:
        await eventually(lambda: relay.saw("subscribed"), within=30, what="the relay to subscribe")
        # A burst over about three seconds, emitted by the gateway in the background: the kill
        # below lands while it is still going.
        await AsyncControlClient(rig.gateway.control_url).emit(BURST, rate=50, wait=False)

        def queued() -> int:
            attrs = rig.sqs.get_queue_attributes(
                QueueUrl=rig.stack.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )
            return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

        await eventually(lambda: queued() >= 20, within=30, what="the first events on the queue")
        assert await asyncio.to_thread(relay.kill) == -9
        assert len(rig.emitted_offsets()) < BURST, "the kill must land mid-burst"
        relay = RelayProcess(["stream"], env).start()
        await eventually(lambda: len(rig.emitted_offsets()) == BURST, within=30, what="the burst to end")
        await rig.receive_offsets(set(rig.emitted_offsets()), within=60)
        assert await asyncio.to_thread(relay.terminate, 30) == 0, relay.log()[-2000:]
    finally:
        if relay.returncode is None:
            relay.kill()
    assert set(rig.offsets()) == set(rig.emitted_offsets())
    assert relay.saw("from offset"), "the restart resumed from the checkpoint"
