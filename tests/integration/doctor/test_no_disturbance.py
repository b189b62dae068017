"""Doctor never takes anything from the relay: no stream event consumed, no Poll API event dequeued,
no second connection next to a running relay, and the 10 s gap after a relay's `complete` kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import boto3
import httpx
import pytest

from ohip_local.aws import STREAM_ROLE, ProvisionedStack
from ohip_local.stack import credentials_in_environment
from ohip_relay.auth import OAuthParams, SyncTokenProvider
from ohip_relay.config import Need, Settings
from ohip_relay.doctor import STREAM_CHECKS, DoctorOptions, run_doctor
from ohip_relay.poll import PollClient
from ohip_relay.stream import open_consumer

from ..stream.conftest import FAST
from .conftest import Setup, by_name, eventually

pytestmark = pytest.mark.integration

SetupFactory = Callable[..., AbstractAsyncContextManager[Setup]]


@pytest.fixture
def doctor_stack(aws_stack: ProvisionedStack) -> ProvisionedStack:
    """These tests run the relay, which writes: a fresh stack each."""
    return aws_stack


@pytest.fixture(autouse=True)
def _no_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")


@contextlib.asynccontextmanager
async def relay(setup: Setup) -> AsyncIterator[asyncio.Task[int]]:
    """`ohip-relay stream` wired as in production (fast timers), from the oldest retained event."""
    env = setup.environment(RELAY_START_POSITION="earliest")
    settings = Settings.from_env(env, Need.OHIP, Need.STREAM, Need.AWS)
    async with contextlib.AsyncExitStack() as opened:
        with credentials_in_environment(setup.stack.credentials(STREAM_ROLE).environment()):
            consumer = await opened.enter_async_context(open_consumer(settings, FAST))
        task = asyncio.create_task(consumer.run())
        try:
            yield task
        finally:
            consumer.request_stop()
            async with asyncio.timeout(15):
                await task


def queued_offsets(stack: ProvisionedStack) -> set[int]:
    """Receive and delete everything on the queue; the offsets of the stream's messages."""
    sqs = boto3.client("sqs", endpoint_url=stack.endpoint_url, region_name=stack.region)
    offsets: set[int] = set()
    while True:
        messages = sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return offsets
        for message in messages:
            offsets.add(int(json.loads(message["Body"])["offset"]))
            sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])


def poll_everything(setup: Setup) -> list[Any]:
    """Dequeue the external system's whole queue through the relay's own Poll API client."""
    env = setup.env
    with httpx.Client() as http:
        tokens = SyncTokenProvider(
            OAuthParams(
                gateway_url=env["OHIP_GATEWAY_URL"],
                client_id=env["OHIP_CLIENT_ID"],
                client_secret=env["OHIP_CLIENT_SECRET"],
                app_key=env["OHIP_APP_KEY"],
                enterprise_id=env["OHIP_ENTERPRISE_ID"],
            ),
            http,
            clock=time.time,
        )
        client = PollClient(
            http,
            tokens,
            gateway_url=env["OHIP_GATEWAY_URL"],
            app_key=env["OHIP_APP_KEY"],
            external_system=env["OHIP_EXTERNAL_SYSTEM"],
            chain_code=env["OHIP_CHAIN_CODE"],
        )
        items: list[Any] = []
        while page := client.fetch(None, 100):
            items.extend(page)
        return items


async def test_doctor_neither_consumes_nor_dequeues(setup: Setup) -> None:
    emitted = {e.offset for e in setup.gateway.emit(25)}
    system = setup.env["OHIP_EXTERNAL_SYSTEM"]

    report = await setup.doctor()
    assert report.ok, report.to_text()
    assert not any(c["status"] == "skipped" for c in report.to_dict()["checks"])

    streaming = setup.gateway.streaming.snapshot()
    assert streaming["events_delivered"] == 0
    assert streaming["delivered_offsets"] == {}  # no server-side position moved
    assert setup.gateway.poll.events_served == 0
    assert setup.gateway.source.queued(system) == len(emitted)

    # The relay, started after the documented 10 s gap, replays every event from the oldest...
    setup.clock.advance(10.0)
    async with relay(setup):
        got: set[int] = set()
        deadline = time.monotonic() + 20.0
        while not emitted <= got:
            assert time.monotonic() < deadline, f"never on the queue: {sorted(emitted - got)[:10]}"
            got |= await asyncio.to_thread(queued_offsets, setup.stack)
            await asyncio.sleep(0.05)  # pace the polling of the queue
    assert setup.gateway.streaming.resubscribe_gap_violations == 0
    # ...and the Poll API still holds every event for the fallback.
    assert len(await asyncio.to_thread(poll_everything, setup)) == len(emitted)


async def test_a_running_relay_is_left_alone(setup: Setup) -> None:
    setup.gateway.emit(5)
    async with relay(setup):
        await eventually(
            lambda: setup.gateway.streaming.snapshot()["events_delivered"] == 5, what="the relay's replay"
        )
        connections = setup.gateway.streaming.connections

        report = await setup.doctor()

        assert report.ok, report.to_text()
        checks = by_name(report)
        assert "holds the stream" in checks["stream_lease"]["detail"]
        for name in STREAM_CHECKS:
            assert checks[name]["status"] == "skipped"
            assert "stop the relay" in checks[name]["next_step"]
        assert checks["poll_api"]["status"] == "ok"
        # no second connection, no 4409, and the relay goes on receiving
        assert setup.gateway.streaming.connections == connections
        assert setup.gateway.streaming.conflicts == 0
        setup.gateway.emit(5)
        await eventually(
            lambda: setup.gateway.streaming.snapshot()["events_delivered"] == 10, what="the relay's events"
        )

    # The relay has just stopped (sent complete): doctor waits out the 10 s gap before subscribing.
    waited: list[float] = []

    async def sleep(seconds: float) -> None:  # the gap passes on the gateway's clock at once
        waited.append(seconds)
        setup.clock.advance(seconds)

    with credentials_in_environment(setup.env):  # the operator's role
        report = await run_doctor(setup.env, DoctorOptions(timeout=5.0, sleep=sleep))
    assert report.ok, report.to_text()
    assert all(by_name(report)[name]["status"] == "ok" for name in STREAM_CHECKS)
    assert len(waited) == 1
    assert 0 < waited[0] <= 10.0
    assert setup.gateway.streaming.resubscribe_gap_violations == 0
