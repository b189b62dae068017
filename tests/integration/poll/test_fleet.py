"""The poll fallback for many chains (fleet_fallback.py) against the real local stack: a gateway
serving two OPERA environments over real sockets, moto with IAM enforced, the tick under PollRole.

A registry of three subscriptions over the two environments; the worker items are written by
hand, as a stream task writes them (`FleetStore.put_worker`): one chain connected, one in backoff
since two minutes ago, one that no worker lists. Subscription ids differ from chain codes, so that
everything keyed by the subscription shows it.

Environment 0 holds two of the chains. The local gateway keeps one Poll API queue per external
system for all the chains of an environment, so those two are polled per hotel (HOTEL1 for the
connected one, HOTEL2 for the other), and each one's events are emitted for its hotel.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from ohip_local.aws import POLL_ROLE, ProvisionedStack, local_client
from ohip_local.gateway import LocalGateway, fleet_config
from ohip_local.lambdas import load_function
from ohip_local.source import StoredEvent
from ohip_local.stack import credentials_in_environment, environment_for
from ohip_local.threaded import call_in_gateway, running_gateway
from ohip_relay.balance import ChainSummary, worker_items
from ohip_relay.cli import main
from ohip_relay.config import Need, Settings
from ohip_relay.fleet_fallback import FleetOptions, FleetReport, open_fleet_fallback
from ohip_relay.fleet_health import FleetPollOptions, Shard, shard_of
from ohip_relay.fleet_state import FleetStore
from ohip_relay.registry import RegistryStore, Subscription
from ohip_relay.state import FallbackRecord, StateStore
from ohip_relay.telemetry import Telemetry

from .conftest import START, Clock

pytestmark = pytest.mark.integration

OK, DOWN, LOST = "sub-ok", "sub-down", "sub-lost"
# subscription -> (environment, chain, hotels it is polled for)
LAYOUT: dict[str, tuple[int, str, tuple[str, ...]]] = {
    OK: (0, "ENV0CHAIN001", ("HOTEL1",)),
    DOWN: (1, "ENV1CHAIN001", ()),
    LOST: (0, "ENV0CHAIN002", ("HOTEL2",)),
}
SYSTEM = "RELAY"
NO_DRAINS = FleetOptions(plan=FleetPollOptions(healthy_drains=0))


@dataclass
class FleetRig:
    gateway: LocalGateway
    stack: ProvisionedStack
    clock: Callable[[], float] = field(default_factory=Clock)

    def __post_init__(self) -> None:
        kw: dict[str, Any] = {"endpoint_url": self.stack.endpoint_url, "region_name": self.stack.region}
        self.sqs = boto3.client("sqs", **kw)
        self.dynamodb = boto3.client("dynamodb", **kw)
        self.s3 = boto3.client("s3", **kw)
        self.telemetry = Telemetry(service="poll", emit=False)
        self.secrets = [self._secret(i) for i in range(2)]

    def _secret(self, index: int) -> str:
        """Environment `index`'s credentials in a secret under the template's default pattern."""
        env = self.gateway.environment(index).config
        value = {"clientId": env.client_id, "clientSecret": env.client_secret, "appKey": env.app_key}
        client = local_client("secretsmanager", self.stack.endpoint_url, self.stack.region)
        name = f"ohip/{self.stack.stack_name}/env{index}"
        return str(client.create_secret(Name=name, SecretString=json.dumps(value))["ARN"])

    def register(self, *ids: str) -> None:
        """`ohip-relay chains add` of these subscriptions (as the operator: the administrator)."""
        registry = RegistryStore(self.dynamodb, self.stack.table_name)
        for sub_id in ids:
            index, chain, hotels = LAYOUT[sub_id]
            env = self.gateway.environment(index)
            registry.add(
                Subscription(
                    id=sub_id,
                    gateway_url=env.url,
                    chain_code=chain,
                    secret_arn=self.secrets[index],
                    enterprise_id=env.config.enterprise_id,
                    external_system=SYSTEM,
                    hotel_ids=hotels,
                )
            )

    def worker(self, name: str, chains: dict[str, ChainSummary], now: float) -> None:
        """A stream task's worker item, as its scheduler writes it every 10 s."""
        fleet = FleetStore(self.dynamodb, self.stack.table_name)
        fleet.put_worker(worker_items(name, now - 2.0, chains, started_at=now - 3600.0))
        fleet.join(name, now)

    def env(self) -> dict[str, str]:
        return {**environment_for(self.stack, role=POLL_ROLE), "RELAY_FLEET": "true"}

    def tick(self, shard: Shard | None = None, options: FleetOptions | None = None) -> FleetReport:
        env = self.env()
        settings = Settings.from_env(env, Need.OHIP, Need.POLL, Need.AWS)
        with (
            credentials_in_environment(env),
            open_fleet_fallback(settings, self.telemetry, options=options, clock=self.clock) as fleet,
        ):
            return fleet.tick(lambda: 60.0, shard)

    def emit(self, sub_id: str, count: int, hotel: str | None = None) -> list[StoredEvent]:
        index, chain, hotels = LAYOUT[sub_id]
        env = self.gateway.environment(index)
        return call_in_gateway(
            self.gateway, lambda: env.emit(count, chain=chain, hotel=hotel or (hotels or (None,))[0])
        )

    def queued(self, index: int) -> int:
        env = self.gateway.environment(index)
        return call_in_gateway(self.gateway, lambda: env.source.queued(SYSTEM))

    def record(self, sub_id: str) -> FallbackRecord | None:
        return StateStore(self.dynamodb, self.stack.table_name, sub_id).get_fallback()

    def receive(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while messages := self.sqs.receive_message(
            QueueUrl=self.stack.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", []):
            out += [json.loads(m["Body"]) for m in messages]
            self.sqs.delete_message_batch(
                QueueUrl=self.stack.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        return out

    def seen_keys(self) -> list[str]:
        pages = self.dynamodb.get_paginator("scan").paginate(TableName=self.stack.table_name)
        return [
            i["pk"]["S"] for page in pages for i in page.get("Items", []) if i["pk"]["S"].startswith("seen#")
        ]


@pytest.fixture
def fleet_gateway() -> Iterator[LocalGateway]:
    with running_gateway(fleet_config(2, 2)) as gw:
        yield gw


@pytest.fixture
def rig(fleet_gateway: LocalGateway, aws_stack: ProvisionedStack) -> FleetRig:
    return FleetRig(fleet_gateway, aws_stack)


def the_fleet(rig: FleetRig, now: float) -> None:
    """Three chains: OK connected, DOWN in backoff since 2 minutes ago, LOST listed by nobody."""
    rig.register(OK, DOWN, LOST)
    rig.worker(
        "task-1", {OK: ChainSummary("connected", now - 600), DOWN: ChainSummary("backoff", now - 120)}, now
    )


def test_the_tick_polls_exactly_the_unhealthy_chains(rig: FleetRig, caplog: pytest.LogCaptureFixture) -> None:
    the_fleet(rig, START)
    kept = rig.emit(OK, 2)  # the healthy chain's backlog: not this tick's business
    down = rig.emit(DOWN, 2)
    lost = rig.emit(LOST, 3)

    with caplog.at_level(logging.INFO, logger="ohip_relay"):
        report = rig.tick(options=NO_DRAINS)

    assert (report.judged, report.unhealthy, report.without_holder, report.fallback_active) == (3, 2, 1, 2)
    assert (report.polled, report.drained, report.deferred, report.error_count) == (2, 0, [], 0)
    assert set(report.chains) == {DOWN, LOST}
    assert report.total("published") == 5
    bodies = rig.receive()
    expected = {f"poll:{DOWN}:{e.business_event_id}" for e in down} | {
        f"poll:{LOST}:{e.business_event_id}" for e in lost
    }
    assert {b["eventId"] for b in bodies} == expected
    for body in bodies:  # each under its own subscription and chain
        sub_id = body["eventId"].split(":")[1]
        assert body["subscriptionId"] == sub_id
        assert body["chainCode"] == LAYOUT[sub_id][1]
    for sub_id, reason in ((DOWN, "backoff for 120s"), (LOST, "no heartbeat")):
        record = rig.record(sub_id)
        assert record is not None
        assert record.active
        assert record.since == START
        assert record.last_reason == reason
        assert record.counter("published") == (2 if sub_id == DOWN else 3)
        assert record.last_polled_occurred_at is not None
    # The seen-set is each subscription's own.
    assert {k.split("#")[1] for k in rig.seen_keys()} == {DOWN, LOST}
    # The healthy chain: no record, nothing dequeued (its two events still wait in environment 0).
    assert rig.record(OK) is None
    assert rig.queued(0) == len(kept)
    assert rig.queued(1) == 0
    assert rig.telemetry.totals()["PollEventsPublished"] == 5
    # Per chain, one line each: the fallback activated, naming the subscription.
    lines = [
        (r.getMessage(), getattr(r, "subscription", None))
        for r in caplog.records
        if r.name.startswith("ohip_relay")
    ]
    assert sorted(lines) == [
        (f"[{DOWN}] poll fallback activated: stream backoff for 120s", DOWN),
        (f"[{LOST}] poll fallback activated: stream no heartbeat", LOST),
    ]


def test_healthy_chains_are_drained_and_discarded_and_never_published(rig: FleetRig) -> None:
    rig.register(OK)
    rig.worker("task-1", {OK: ChainSummary("connected", START - 600)}, START)
    rig.emit(OK, 4)
    report = rig.tick()
    assert (report.unhealthy, report.polled, report.drained) == (0, 0, 1)
    assert report.total("discarded") == 4
    assert rig.receive() == []
    assert rig.queued(0) == 0
    record = rig.record(OK)
    assert record is not None
    assert not record.active
    assert record.counter("discarded") == 4


def test_each_shard_polls_its_own_chains_and_writes_only_their_records(rig: FleetRig) -> None:
    assert (shard_of(OK, 2), shard_of(DOWN, 2), shard_of(LOST, 2)) == (1, 1, 0)
    the_fleet(rig, START)
    rig.emit(DOWN, 1)
    rig.emit(LOST, 2)

    first = rig.tick(Shard(0, 2), NO_DRAINS)
    assert (first.judged, first.unhealthy) == (3, 2)  # every shard judges the whole fleet
    assert set(first.chains) == {LOST}
    assert rig.record(LOST) is not None
    assert rig.record(DOWN) is None
    assert {b["eventId"].split(":")[1] for b in rig.receive()} == {LOST}

    second = rig.tick(Shard(1, 2), NO_DRAINS)
    assert set(second.chains) == {DOWN}
    assert rig.record(DOWN) is not None
    assert rig.record(OK) is None
    assert {b["eventId"].split(":")[1] for b in rig.receive()} == {DOWN}


def test_a_chain_whose_secret_cannot_be_read_fails_alone(rig: FleetRig) -> None:
    the_fleet(rig, START)
    rig.emit(DOWN, 1)
    local_client("secretsmanager", rig.stack.endpoint_url, rig.stack.region).put_secret_value(
        SecretId=rig.secrets[0], SecretString="not json"
    )
    report = rig.tick(options=NO_DRAINS)
    assert report.chains[LOST].report is None
    assert "secret" in report.chains[LOST].error
    assert report.chains[DOWN].report is not None
    assert report.total("published") == 1
    assert report.error_count == 1


# -- the entry points ------------------------------------------------------------------------------


@pytest.fixture
def fleet_env(rig: FleetRig, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The process environment of the fleet's poll fallback (no OHIP_* variable), and the fleet
    as it is now (real time: the entry points read the clock themselves)."""
    values = rig.env()
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for name in ("OHIP_CHAIN_CODE", "OHIP_GATEWAY_URL", "OHIP_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    the_fleet(rig, time.time())
    rig.emit(DOWN, 2)
    rig.emit(LOST, 1)
    return values


def test_cli_poll_in_fleet_mode_prints_the_summary(
    rig: FleetRig, fleet_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(["poll"]) == 0
    finally:  # main() points the root logger at this test's captured stderr: put it back
        root.handlers[:] = handlers
        root.setLevel(level)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith(
        "fleet poll, shard 0 of 1: judged 3 chains, unhealthy 2, without holder 1, fallback active 2; "
        "polled 2"
    )
    assert "published 3" in out[0]
    assert out[0].endswith("errors 0")


def test_poll_lambda_in_fleet_mode_covers_the_shard_of_its_input(
    rig: FleetRig, fleet_env: dict[str, str]
) -> None:
    @dataclass
    class Context:
        function_name: str = "poll"
        memory_limit_in_mb: int = 512
        invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:poll"
        aws_request_id: str = "req-1"

        def get_remaining_time_in_millis(self) -> int:
            return 45_000

    app = load_function("poll_fallback")
    result = app.handler({"shard": 1, "shards": 2}, Context())
    assert (result["shard"], result["shards"], result["judged"], result["polled"]) == (1, 2, 3, 1)
    assert result["published"] == 2  # DOWN, shard 1
    result = app.handler({"shard": 0, "shards": 2}, Context())
    assert (result["polled"], result["published"], result["errors"]) == (1, 1, 0)  # LOST
