"""DynamoDB failing while the consumer starts or takes over: it says so and tries again, instead of crashing.

The relay's own clients retry throttling five times (botocore's standard mode, seconds of backoff);
what still fails reaches the consumer. Here the state store's client has botocore's retries off
and talks to moto through the fault proxy, so each injected fault is one failed read. Two tests
differ: the standby's lease read fails once in the store itself, and the hung call goes through the
relay's own client, as shipped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import pytest
from botocore.config import Config

from ohip_local.aws import local_client
from ohip_local.faultproxy import FaultRule, running_fault_proxy
from ohip_relay.state import Lease, StateStore, StateStoreError, StreamState

from .conftest import Rig, eventually

pytestmark = pytest.mark.integration


async def test_state_reads_failing_at_start_up_are_tried_again(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    with running_fault_proxy(rig.stack.endpoint_url) as proxy:
        state = _proxied_state(rig, proxy.url)
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


@contextlib.contextmanager
def _released(rig: Rig, owner: str) -> Iterator[None]:
    """`owner`'s lease given up at the end, even if the test fails before it does (the next test
    shares the table)."""
    try:
        yield
    finally:
        rig.state.release_lease(owner)


def _proxied_state(rig: Rig, url: str) -> StateStore:
    """The rig's state store, through the fault proxy and with botocore's retries off."""
    no_retries = Config(retries={"mode": "standard", "total_max_attempts": 1})
    client = local_client("dynamodb", url, rig.stack.region, config=no_retries)
    return StateStore(client, rig.stack.table_name, rig.chain)


async def test_a_take_over_that_cannot_read_the_state_stands_by_instead_of_exiting(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # Another task holds the lease; this one stands by, then takes the lease over (released)
    # while every DynamoDB read fails. It gives up on the take-over (it must not connect past a
    # lease nobody renews) and tries again, instead of ending the process.
    rig.state.acquire_lease("task-x", 60.0, time.time())
    with (
        _released(rig, "task-x"),
        running_fault_proxy(rig.stack.endpoint_url) as proxy,
        caplog.at_level(logging.INFO, logger="ohip_relay.stream"),
    ):
        async with rig.consumer(owner="task-b", state=_proxied_state(rig, proxy.url)) as running:
            await eventually(lambda: running.consumer.status is StreamState.STANDBY, what="standing by")
            proxy.add(FaultRule("dynamodb", error="throttle", operation="GetItem"))
            rig.state.release_lease("task-x")
            await eventually(
                lambda: any("standing by and trying again" in r.getMessage() for r in caplog.records),
                what="the take-over given up",
            )
            assert not running.task.done(), "the consumer ended instead of standing by"
            proxy.clear()
            await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
            rig.gateway.emit(10)
            await rig.receive_offsets(set(rig.emitted_offsets()))
            assert await running.stop() == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "could not read the stream's state (ProvisionedThroughputExceededException)" in m for m in messages
    ), messages
    await rig.drain_queue()
    assert sorted(set(rig.offsets())) == rig.emitted_offsets()


class _LeaseReadFailsOnce(StateStore):
    """The rig's table, with the first lease read failing as a throttled one does."""

    failed = False

    def get_lease(self) -> Lease | None:
        if not self.failed:
            self.failed = True
            raise StateStoreError("throttled", operation="GetLease", code="Throttling", retryable=True)
        return super().get_lease()


async def test_a_failing_lease_read_on_standby_is_tried_again(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.state.acquire_lease("task-x", 60.0, time.time())
    client = local_client("dynamodb", rig.stack.endpoint_url, rig.stack.region)
    state = _LeaseReadFailsOnce(client, rig.stack.table_name, rig.chain)
    with _released(rig, "task-x"), caplog.at_level(logging.INFO, logger="ohip_relay.stream"):
        async with rig.consumer(owner="task-b", state=state) as running:
            await eventually(lambda: state.failed, what="the lease read")
            rig.state.release_lease("task-x")
            await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
            assert await running.stop() == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "cannot read the lease (StateStoreError); trying again" in messages, messages


async def test_a_dynamodb_call_that_hangs_is_given_up_in_seconds(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # The relay's own DynamoDB client (timeouts and retries as shipped). Its first call, the
    # checkpoint read at start-up, hangs for longer than the test waits: it is given up after the
    # read timeout and tried again, instead of botocore's 60 s.
    hang = 30.0
    with (
        running_fault_proxy(rig.stack.endpoint_url) as proxy,
        caplog.at_level(logging.INFO, logger="ohip_relay"),
    ):
        rule = proxy.add(FaultRule("dynamodb", error="slow", operation="GetItem", delay=hang, count=1))
        async with rig.consumer(AWS_ENDPOINT_URL=proxy.url) as running:
            await eventually(
                lambda: running.consumer.status is StreamState.CONNECTED, within=hang / 2, what="connected"
            )
            assert await running.stop() == 0
    assert rule.injected == 1
    retried = [r.getMessage() for r in caplog.records if r.name == "ohip_relay.aws"]
    assert any("DynamoDB GetItem failed (ReadTimeoutError), attempt 1 of" in m for m in retried), retried
