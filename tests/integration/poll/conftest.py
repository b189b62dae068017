"""A rig for the poll fallback: the local OHIP gateway on its own thread (real sockets), the
template's resources on the moto server, and the fallback wired as `ohip-relay poll` wires it, with
an injected clock (health, hysteresis) and remaining time."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from ohip_local.aws import ProvisionedStack
from ohip_local.gateway import GatewayConfig, LocalGateway
from ohip_local.source import StoredEvent
from ohip_local.stack import environment_for
from ohip_local.threaded import call_in_gateway, running_gateway
from ohip_relay.config import Need, Settings
from ohip_relay.fallback import FallbackOptions, PollFallback, TickReport, open_fallback
from ohip_relay.seen import SeenSet
from ohip_relay.state import Heartbeat, StateStore, StreamState
from ohip_relay.telemetry import Telemetry

START = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class PollRig:
    gateway: LocalGateway
    stack: ProvisionedStack
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        kw: dict[str, Any] = {"endpoint_url": self.stack.endpoint_url, "region_name": self.stack.region}
        self.sqs = boto3.client("sqs", **kw)
        self.s3 = boto3.client("s3", **kw)
        self.dynamodb = boto3.client("dynamodb", **kw)
        self.state = StateStore(self.dynamodb, self.stack.table_name, self.chain)
        self.seen = SeenSet(self.dynamodb, self.stack.table_name, clock=self.clock)
        self.telemetry = Telemetry(service="poll")

    @property
    def chain(self) -> str:
        return self.gateway.config.chains[0]

    def env(self, **changes: str) -> dict[str, str]:
        cfg = self.gateway.config
        env = {
            **environment_for(self.stack),
            "OHIP_GATEWAY_URL": self.gateway.url,
            "OHIP_CLIENT_ID": cfg.client_id,
            "OHIP_CLIENT_SECRET": cfg.client_secret,
            "OHIP_APP_KEY": cfg.app_key,
            "OHIP_ENTERPRISE_ID": cfg.enterprise_id,
            "OHIP_CHAIN_CODE": self.chain,
            "OHIP_EXTERNAL_SYSTEM": cfg.external_systems[0],
        }
        env.update(changes)
        return {k: v for k, v in env.items() if v}

    def settings(self, **changes: str) -> Settings:
        return Settings.from_env(self.env(**changes), Need.OHIP, Need.POLL, Need.AWS)

    @contextmanager
    def fallback(self, options: FallbackOptions | None = None, **env: str) -> Iterator[PollFallback]:
        with open_fallback(self.settings(**env), self.telemetry, options=options, clock=self.clock) as fb:
            yield fb

    def tick(self, remaining: Callable[[], float] = lambda: 60.0, **env: str) -> TickReport:
        with self.fallback(**env) as fb:
            return fb.tick(remaining)

    # -- the gateway ---------------------------------------------------------------------------

    def emit(self, count: int, **kw: Any) -> list[StoredEvent]:
        return call_in_gateway(self.gateway, lambda: self.gateway.emit(count, **kw))

    def queued(self) -> int:
        system = self.gateway.config.external_systems[0]
        return call_in_gateway(self.gateway, lambda: self.gateway.source.queued(system))

    def poll_requests(self) -> int:
        return call_in_gateway(self.gateway, lambda: self.gateway.poll.requests)

    def set_fault(self, mode: str, **kw: Any) -> None:
        call_in_gateway(self.gateway, lambda: self.gateway.poll.set_fault(mode, **kw))

    # -- the stream, simulated -------------------------------------------------------------------

    def heartbeat(self, state: StreamState = StreamState.CONNECTED, *, age: float = 1.0, **kw: Any) -> None:
        self.state.put_heartbeat(
            Heartbeat(state=state, owner="stream-task", updated_at=self.clock.now - age, **kw)
        )

    # -- AWS -------------------------------------------------------------------------------------

    def receive(self, queue_url: str | None = None) -> list[dict[str, Any]]:
        """Every message on the queue (received and deleted), bodies parsed, attributes attached."""
        url = queue_url or self.stack.queue_url
        out: list[dict[str, Any]] = []
        while True:
            response = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
                AttributeNames=["All"],
            )
            messages = response.get("Messages", [])
            if not messages:
                return out
            for message in messages:
                body = json.loads(message["Body"])
                body["_attributes"] = {
                    k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()
                }
                body["_attribute_types"] = {
                    k: v["DataType"] for k, v in message.get("MessageAttributes", {}).items()
                }
                body["_group"] = message.get("Attributes", {}).get("MessageGroupId")
                out.append(body)
            self.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )

    def objects(self, prefix: str) -> list[str]:
        response = self.s3.list_objects_v2(Bucket=self.stack.bucket_name, Prefix=prefix)
        return sorted(o["Key"] for o in response.get("Contents", []))


@pytest.fixture
def gateway() -> Iterator[LocalGateway]:
    with running_gateway(GatewayConfig()) as gw:
        yield gw


@pytest.fixture
def rig(gateway: LocalGateway, aws_stack: ProvisionedStack) -> PollRig:
    return PollRig(gateway, aws_stack)
