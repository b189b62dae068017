"""A rig for the optional enricher: the local OHIP gateway on its own thread (real sockets), the
template's resources with `EnableEnricher=true` on the moto server, and the enricher's Lambda
handler driven the way Lambda's SQS poller drives it (`ohip_local.eventsource`, with the function's
role, EnricherRole, as in AWS: receive a batch from the relay queue, invoke the handler, delete what
it did not report as failed; failed records become visible again, as they would once their
visibility timeout ends, and the queue's redrive policy moves them to the dead-letter queue after
maxReceiveCount receives). The handler runs with the role's credentials too.

Waits (429 Retry-After, 5xx backoff) go through a fake clock: the test sees what the enricher
asked to wait, and never waits."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from ohip_local.aws import ENRICHER_ROLE, ProvisionedStack, provision
from ohip_local.control import ControlClient
from ohip_local.eventsource import SqsEventSource
from ohip_local.gateway import GatewayConfig, LocalGateway
from ohip_local.poll import business_event_data
from ohip_local.source import StoredEvent
from ohip_local.stack import environment_for
from ohip_local.threaded import call_in_gateway, running_gateway
from ohip_relay.config import Need, Settings
from ohip_relay.enrich import EnrichOptions, open_enricher
from ohip_relay.events import CanonicalEvent, from_poll
from ohip_relay.fallback import SqsBatchSender
from ohip_relay.publish import OutboundMessage
from ohip_relay.telemetry import Telemetry

from ...conftest import TEMPLATE

FUNCTIONS = Path(__file__).resolve().parents[3] / "functions"
_stacks = itertools.count(1)
_seeds = itertools.count(101)
_modules = itertools.count(1)


class FakeTime:
    """Monotonic and wall clocks that only move when the enricher sleeps."""

    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.wall = 1_800_000_000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.monotonic += seconds
        self.wall += seconds


class RecordingTelemetry(Telemetry):
    """Telemetry that remembers what each flush wrote (the handler flushes once per invocation)."""

    def __init__(self) -> None:
        super().__init__(service="enricher")
        self.flushed: Counter[str] = Counter()

    def flush(self) -> None:
        self.flushed.update(self.totals())
        super().flush()


@dataclass
class FakeContext:
    remaining_ms: int = 45_000
    function_name: str = "enricher"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:enricher"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class Delivery:
    """What one poller round did: the records handed to the handler and those it failed."""

    received: list[str]
    failed: list[str]


@dataclass
class EnrichRig:
    gateway: LocalGateway
    stack: ProvisionedStack
    monkeypatch: pytest.MonkeyPatch
    time: FakeTime = field(default_factory=FakeTime)

    def __post_init__(self) -> None:
        kw: dict[str, Any] = {"endpoint_url": self.stack.endpoint_url, "region_name": self.stack.region}
        self.sqs = boto3.client("sqs", **kw)
        self.s3 = boto3.client("s3", **kw)
        self.control = ControlClient(self.gateway.control_url)
        self.telemetry = RecordingTelemetry()
        self.relay_url = self.stack.queue_url
        self.enriched_url = self.stack.outputs["EnrichedQueueUrl"]
        self.relay_arn = f"arn:aws:sqs:{self.stack.region}:123456789012:{self.relay_url.rsplit('/', 1)[1]}"
        self._app: ModuleType | None = None
        # Lambda's SQS poller, with the function's role.
        role = self.stack.credentials(ENRICHER_ROLE).session(self.stack.region)
        self.source = SqsEventSource(
            role.client("sqs", endpoint_url=self.stack.endpoint_url), self.relay_url, region=self.stack.region
        )

    @property
    def chain(self) -> str:
        return self.gateway.config.chains[0]

    # -- configuration -------------------------------------------------------------------------

    def env(self, **changes: str) -> dict[str, str]:
        cfg = self.gateway.config
        env = {
            **environment_for(self.stack, role=ENRICHER_ROLE),
            "OHIP_GATEWAY_URL": self.gateway.url,
            "OHIP_CLIENT_ID": cfg.client_id,
            "OHIP_CLIENT_SECRET": cfg.client_secret,
            "OHIP_APP_KEY": cfg.oauth_app_key or cfg.app_key,
            "OHIP_ENTERPRISE_ID": cfg.enterprise_id,
            "RELAY_ENRICHED_QUEUE_URL": self.enriched_url,
        }
        env.update(changes)
        return {k: v for k, v in env.items() if v}

    def settings(self, **changes: str) -> Settings:
        return Settings.from_env(self.env(**changes), Need.OHIP, Need.ENRICH)

    def handler_module(self, options: EnrichOptions | None = None) -> ModuleType:
        """A fresh copy of functions/enricher/app.py, its enricher built with the fake clock."""
        if self._app is None:
            for key, value in self.env().items():
                self.monkeypatch.setenv(key, value)
            name = f"_fn_enricher_{next(_modules)}"
            spec = importlib.util.spec_from_file_location(name, FUNCTIONS / "enricher" / "app.py")
            assert spec is not None
            assert spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            enricher = open_enricher(
                self.settings(),
                self.telemetry,
                options=options,
                sleep=self.time.sleep,
                clock=lambda: self.time.monotonic,
                wall_clock=lambda: self.time.wall,
            )
            # What the handler builds on its first invocation, built here with the fake clock.
            vars(module).update(telemetry=self.telemetry, _enricher=enricher)
            self._app = module
        return self._app

    # -- the gateway ---------------------------------------------------------------------------

    def emit(self, count: int, **kw: Any) -> list[StoredEvent]:
        return call_in_gateway(self.gateway, lambda: self.gateway.emit(count, **kw))

    def canonical(self, stored: list[StoredEvent]) -> list[CanonicalEvent]:
        relayed = datetime.now(UTC)
        return [from_poll(business_event_data(e), self.chain, relayed) for e in stored]

    def reservation(self, hotel: str, key: str) -> dict[str, Any] | None:
        return call_in_gateway(self.gateway, lambda: self.gateway.rest.store.reservation(hotel, key))

    def profile(self, key: str) -> dict[str, Any] | None:
        return call_in_gateway(self.gateway, lambda: self.gateway.rest.store.profile(key))

    def rest_state(self) -> dict[str, Any]:
        return self.control.state()["rest"]  # type: ignore[no-any-return]

    # -- the relay queue -----------------------------------------------------------------------

    def publish(self, events: list[CanonicalEvent]) -> None:
        """Put events on the relay queue the way the relay does."""
        sender = SqsBatchSender(
            self.sqs, self.relay_url, s3=self.s3, claim_check_bucket=self.stack.bucket_name
        )
        messages = [
            OutboundMessage(
                body=e.to_json(),
                attributes=e.attribute_values(),
                group_id=e.message_group_id(),
                dedup_id=e.deduplication_id(),
            )
            for e in events
        ]
        result = sender.send(messages)
        assert result.complete, result

    def publish_raw(self, body: str, group: str = "poison") -> None:
        extra: dict[str, Any] = {}
        if self.relay_url.endswith(".fifo"):
            extra = {"MessageGroupId": group, "MessageDeduplicationId": f"raw-{group}"}
        self.sqs.send_message(QueueUrl=self.relay_url, MessageBody=body, **extra)

    # -- Lambda's SQS poller ---------------------------------------------------------------------

    def deliver(self, *, remaining_ms: int = 45_000, options: EnrichOptions | None = None) -> Delivery | None:
        """One poller round: receive up to 10 relay messages, invoke the handler, delete the records
        it did not fail and make the failed ones visible again. None when nothing was received."""
        batch = self.source.receive()
        if batch is None:
            return None
        app = self.handler_module(options)
        result = app.handler(batch.event, FakeContext(remaining_ms=remaining_ms))
        failed = self.source.complete(batch, result)
        for message_id in failed:  # the visibility timeout passing (the harness's doing, not Lambda's)
            self.sqs.change_message_visibility(
                QueueUrl=self.relay_url, ReceiptHandle=batch.handles[message_id], VisibilityTimeout=0
            )
        return Delivery(batch.message_ids, failed)

    def drain(self, *, rounds: int = 20, **kw: Any) -> list[Delivery]:
        """Poller rounds until the relay queue gives nothing (bounded)."""
        out: list[Delivery] = []
        for _ in range(rounds):
            delivery = self.deliver(**kw)
            if delivery is None:
                return out
            out.append(delivery)
        raise AssertionError(f"the relay queue was not drained in {rounds} rounds")

    def messages(self, queue_url: str) -> list[dict[str, Any]]:
        """Every message on a queue (received and deleted), bodies parsed."""
        out: list[dict[str, Any]] = []
        while True:
            response = self.sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
            )
            batch = response.get("Messages", [])
            if not batch:
                return out
            for message in batch:
                try:
                    body = json.loads(message["Body"])
                except ValueError:
                    body = {"_raw": message["Body"]}
                body["_attributes"] = {
                    k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()
                }
                out.append(body)
            self.sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
            )

    def enriched(self) -> list[dict[str, Any]]:
        return self.messages(self.enriched_url)


def enricher_stack(aws_endpoint: str, **parameters: str) -> ProvisionedStack:
    return provision(
        aws_endpoint,
        TEMPLATE,
        stack_name=f"enr{next(_stacks)}",
        parameters={"EnableEnricher": "true", "MaxReceiveCount": "2", **parameters},
    )


@pytest.fixture(scope="module")
def enricher_aws(aws_endpoint: str) -> ProvisionedStack:
    """The template's resources with the enricher on, shared by a module's tests (queues emptied)."""
    return enricher_stack(aws_endpoint)


@pytest.fixture
def gateway_config() -> GatewayConfig:
    # A seed of its own per test: event keys differ, so FIFO deduplication never links two tests.
    return GatewayConfig(seed=next(_seeds))


@pytest.fixture
def gateway(gateway_config: GatewayConfig) -> Iterator[LocalGateway]:
    with running_gateway(gateway_config) as gw:
        yield gw


@pytest.fixture
def rig(gateway: LocalGateway, enricher_aws: ProvisionedStack, monkeypatch: pytest.MonkeyPatch) -> EnrichRig:
    rig = EnrichRig(gateway, enricher_aws, monkeypatch)
    enriched_dlq = enricher_aws.outputs["EnrichedDeadLetterQueueUrl"]
    for url in (rig.relay_url, rig.stack.dlq_url, rig.enriched_url, enriched_dlq):
        rig.messages(url)  # what an earlier test left (PurgeQueue allows one call a minute)
    return rig
