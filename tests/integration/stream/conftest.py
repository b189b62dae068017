"""A rig for the stream consumer's integration tests: the local OHIP gateway on a real socket, the
template's resources on the moto server, and the consumer wired exactly as `ohip-relay stream`
wires it (only the timers are shortened), under the task's role (StreamTaskRole): `env` carries
its temporary credentials, for the consumer in-process and for `ohip-relay` processes alike."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from ohip_local.aws import STREAM_ROLE, ProvisionedStack
from ohip_local.gateway import GatewayConfig, LocalGateway
from ohip_local.stack import credentials_in_environment, environment_for
from ohip_relay.config import Need, Settings
from ohip_relay.state import StateStore
from ohip_relay.stream import StreamConsumer, StreamOptions, open_consumer

FAST = StreamOptions(
    checkpoint_interval=0.1,
    heartbeat_interval=0.2,
    metrics_interval=60.0,
    lease_duration=3.0,
    lease_renew_interval=0.5,
    backoff_base=0.05,
    backoff_cap=0.3,
    drain_timeout=5.0,
)


async def eventually(condition: Callable[[], bool], *, within: float = 10.0, what: str = "condition") -> None:
    """Poll `condition` until it holds, failing the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Running:
    consumer: StreamConsumer
    task: asyncio.Task[int]

    async def stop(self, within: float = 15.0) -> int:
        self.consumer.request_stop()
        async with asyncio.timeout(within):
            return await self.task


@dataclass
class Rig:
    gateway: LocalGateway
    stack: ProvisionedStack
    env: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)
    attributes: list[dict[str, tuple[str, str]]] = field(default_factory=list)  # per message, as received

    def __post_init__(self) -> None:
        kw: dict[str, Any] = {"endpoint_url": self.stack.endpoint_url, "region_name": self.stack.region}
        self.sqs = boto3.client("sqs", **kw)
        self.state = StateStore(boto3.client("dynamodb", **kw), self.stack.table_name, self.chain)

    @property
    def chain(self) -> str:
        return self.gateway.config.chains[0]

    def settings(self, **changes: str) -> Settings:
        return Settings.from_env({**self.env, **changes}, Need.OHIP, Need.STREAM, Need.AWS)

    @contextlib.asynccontextmanager
    async def consumer(
        self,
        options: StreamOptions = FAST,
        *,
        owner: str | None = None,
        state: StateStore | None = None,
        **env: str,
    ) -> AsyncIterator[Running]:
        """`state`: the consumer's state store instead of the one `open_consumer` wires. Its AWS
        clients are built with the role's credentials (those of `env`)."""
        async with contextlib.AsyncExitStack() as opened:
            with credentials_in_environment({**self.env, **env}):
                consumer = await opened.enter_async_context(
                    open_consumer(self.settings(**env), options, owner=owner)
                )
            if state is not None:
                consumer.state = state
            running = Running(consumer, asyncio.create_task(consumer.run()))
            try:
                yield running
            finally:
                if not running.task.done():
                    consumer.request_stop()
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(15):
                            await running.task

    def emitted_offsets(self) -> list[int]:
        return [e.offset for e in self.gateway.source.all_events(self.chain)]

    async def drain_queue(self, max_batches: int = 50) -> list[dict[str, Any]]:
        """Receive and delete what the queue holds (up to `max_batches` receives of 10); returns the
        new bodies, which are also appended to `received` as they arrive."""

        def receive() -> list[dict[str, Any]]:
            response = self.sqs.receive_message(
                QueueUrl=self.stack.queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
            )
            messages = response.get("Messages", [])
            if messages:
                self.sqs.delete_message_batch(
                    QueueUrl=self.stack.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
                    ],
                )
            for m in messages:
                self.attributes.append(
                    {k: (v["DataType"], v["StringValue"]) for k, v in m.get("MessageAttributes", {}).items()}
                )
            return [json.loads(m["Body"]) for m in messages]

        new: list[dict[str, Any]] = []
        for _ in range(max_batches):
            batch = await asyncio.to_thread(receive)
            if not batch:
                break
            new.extend(batch)
            self.received.extend(batch)
        return new

    async def receive_offsets(self, expected: set[int], *, within: float = 20.0) -> list[int]:
        """Drain the queue until every expected offset arrived; returns every offset received, in order."""
        deadline = time.monotonic() + within
        while True:
            await self.drain_queue()
            got = self.offsets()
            if expected <= set(got):
                return got
            if time.monotonic() > deadline:
                missing = sorted(expected - set(got))
                pytest.fail(f"{len(missing)} offsets never reached the queue, first {missing[:10]}")
            await asyncio.sleep(0.05)

    def offsets(self) -> list[int]:
        return [int(b["offset"]) for b in self.received]


@pytest.fixture
async def make_rig(
    aws_stack: ProvisionedStack,
) -> AsyncIterator[Callable[..., contextlib.AbstractAsyncContextManager[Rig]]]:
    @contextlib.asynccontextmanager
    async def factory(**gateway_changes: Any) -> AsyncIterator[Rig]:
        config = dataclasses.replace(GatewayConfig(), **gateway_changes)
        async with LocalGateway(config) as gateway:
            env = {
                **environment_for(aws_stack, role=STREAM_ROLE),
                "OHIP_GATEWAY_URL": gateway.url,
                "OHIP_CLIENT_ID": config.client_id,
                "OHIP_CLIENT_SECRET": config.client_secret,
                "OHIP_APP_KEY": config.app_key,
                "OHIP_ENTERPRISE_ID": config.enterprise_id,
                "OHIP_CHAIN_CODE": config.chains[0],
                "RELAY_START_POSITION": "earliest",
                "POWERTOOLS_METRICS_DISABLED": "true",
            }
            yield Rig(gateway, aws_stack, env)

    return factory


@pytest.fixture
async def rig(
    make_rig: Callable[..., contextlib.AbstractAsyncContextManager[Rig]], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    async with make_rig() as r:
        yield r
