"""The fleet: schedulers sharing chains' leases, each running many chain sessions in one event loop.

Real parts only: the local gateway with two OPERA environments (each its own port, credentials and
event logs; the same chain code in both), the template's resources on the moto server with IAM
enforced, the scheduler under StreamTaskRole, the registry written as `ohip-relay chains` writes it,
and each environment's credentials in a Secrets Manager secret of its own. The invariants checked
are the fleet's: every event emitted reaches the queue under its own subscription's identity, and
the gateway's connection detector never saw two live subscriptions of one chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from ohip_local.aws import STREAM_ROLE, ProvisionedStack
from ohip_local.gateway import EnvironmentConfig, GatewayConfig, LocalGateway
from ohip_local.stack import credentials_in_environment, environment_for
from ohip_relay.balance import BalanceConfig
from ohip_relay.config import Need, Settings
from ohip_relay.registry import RegistryStore, Subscription
from ohip_relay.scheduler import Scheduler, SchedulerOptions, open_scheduler
from ohip_relay.state import StreamState

from .conftest import FAST, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# A lease of 3 s renewed every second, a pass twice a second, workers dead after 2 s of silence.
FLEET = SchedulerOptions(
    lease_seconds=3.0,
    renew_interval=1.0,
    pass_interval=0.5,
    metrics_interval=60.0,
    summary_interval=60.0,
    guard_interval=0.1,
    retake_after_failure=2.0,
    balance=BalanceConfig(lease_seconds=3.0, worker_timeout=2.0, forget_after=30.0),
)

ENV1 = EnvironmentConfig(
    client_id="client-one",
    client_secret="secret-one",
    app_key="app-key-one",
    enterprise_id="ENTONE",
    chains=("CHAINA",),  # the same chain code as environment 0's first chain
    hotels=("H1", "H2"),
)


@dataclass
class Fleet:
    gateway: LocalGateway
    stack: ProvisionedStack
    env: dict[str, str]
    subscriptions: list[Subscription]
    received: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        kw: dict[str, Any] = {"endpoint_url": self.stack.endpoint_url, "region_name": self.stack.region}
        self.sqs = boto3.client("sqs", **kw)
        self.registry = RegistryStore(boto3.client("dynamodb", **kw), self.stack.table_name)

    def settings(self) -> Settings:
        return Settings.from_env(self.env, Need.OHIP, Need.STREAM, Need.AWS)

    @contextlib.asynccontextmanager
    async def worker(self, name: str, options: SchedulerOptions = FLEET) -> AsyncIterator[Running]:
        async with contextlib.AsyncExitStack() as opened:
            with credentials_in_environment(self.env):
                scheduler = await opened.enter_async_context(
                    open_scheduler(self.settings(), options=options, stream_options=FAST, worker_id=name)
                )
            running = Running(scheduler, asyncio.create_task(scheduler.run()))
            try:
                yield running
            finally:
                if not running.task.done():
                    scheduler.request_stop()
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(30):
                            await running.task

    def emit(self, environment: int, chain: str, count: int) -> list[int]:
        events = self.gateway.environment(environment).emit(count, chain=chain)
        return [e.offset for e in events]

    async def drain(self) -> None:
        def receive() -> list[dict[str, Any]]:
            response = self.sqs.receive_message(QueueUrl=self.stack.queue_url, MaxNumberOfMessages=10)
            messages = response.get("Messages", [])
            if messages:
                self.sqs.delete_message_batch(
                    QueueUrl=self.stack.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
                    ],
                )
            return [json.loads(m["Body"]) for m in messages]

        for _ in range(100):
            batch = await asyncio.to_thread(receive)
            if not batch:
                return
            self.received.extend(batch)

    def delivered(self, subscription: str) -> set[int]:
        return {int(b["offset"]) for b in self.received if _subscription_of(b) == subscription}

    async def receive(self, expected: dict[str, set[int]], *, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while True:
            await self.drain()
            missing = {s: sorted(want - self.delivered(s)) for s, want in expected.items()}
            if not any(missing.values()):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"never reached the queue: { {s: m[:5] for s, m in missing.items() if m} }")
            await asyncio.sleep(0.1)

    def connections(self) -> list[dict[str, Any]]:
        out = []
        for env in self.gateway.environments:
            for chain, report in env.streaming.connection_report().items():
                out.append({"environment": env.index, "chain": chain, **report})
        return out

    def assert_never_two_connections(self) -> None:
        doubled = [c for c in self.connections() if c["max_concurrent_subscribed"] > 1]
        assert not doubled, f"chains with two live subscriptions at once: {doubled}"


def _subscription_of(body: dict[str, Any]) -> str:
    """The subscription a message came from: `subscriptionId` when present, else its chain code."""
    return str(body.get("subscriptionId") or body["chainCode"])


@dataclass
class Running:
    scheduler: Scheduler
    task: asyncio.Task[int]

    def holds(self) -> set[str]:
        return {
            chain
            for chain, held in self.scheduler.held.items()
            if held.session is not None and held.session.status is StreamState.CONNECTED and not held.leaving
        }

    async def stop(self, within: float = 30.0) -> int:
        self.scheduler.request_stop()
        async with asyncio.timeout(within):
            return await self.task


def _secret(stack: ProvisionedStack, name: str, environment: EnvironmentConfig | GatewayConfig) -> str:
    client = boto3.client("secretsmanager", endpoint_url=stack.endpoint_url, region_name=stack.region)
    value = json.dumps(
        {
            "clientId": environment.client_id,
            "clientSecret": environment.client_secret,
            "appKey": environment.app_key,
        }
    )
    return str(client.create_secret(Name=name, SecretString=value)["ARN"])


@pytest.fixture
async def fleet(aws_stack: ProvisionedStack, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fleet]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    config = GatewayConfig(chains=("CHAINA", "CHAINB", "CHAINC"), environments=(ENV1,), resubscribe_gap=10.0)
    async with LocalGateway(config) as gateway:
        prefix = aws_stack.stack_name
        arn0 = _secret(aws_stack, f"ohip/{prefix}/env0", config)
        arn1 = _secret(aws_stack, f"ohip/{prefix}/env1", ENV1)
        subscriptions = [
            Subscription(
                id="CHAINA",
                gateway_url=gateway.environment(0).url,
                chain_code="CHAINA",
                secret_arn=arn0,
                enterprise_id=config.enterprise_id,
                external_system="RELAY",
            ),
            Subscription(
                id="CHAINB",
                gateway_url=gateway.environment(0).url,
                chain_code="CHAINB",
                secret_arn=arn0,
                enterprise_id=config.enterprise_id,
                external_system="RELAY",
            ),
            Subscription(
                id="one-CHAINA",
                gateway_url=gateway.environment(1).url,
                chain_code="CHAINA",
                secret_arn=arn1,
                enterprise_id=ENV1.enterprise_id,
                external_system="RELAY",
            ),
        ]
        env = {
            **environment_for(aws_stack, role=STREAM_ROLE),
            "RELAY_FLEET": "true",
            "RELAY_START_POSITION": "earliest",
            "POWERTOOLS_METRICS_DISABLED": "true",
        }
        f = Fleet(gateway, aws_stack, env, subscriptions)
        for subscription in subscriptions:
            await asyncio.to_thread(f.registry.add, subscription)
        yield f


def _env_of(fleet: Fleet, subscription: str) -> tuple[int, str]:
    s = next(s for s in fleet.subscriptions if s.id == subscription)
    return (0 if s.gateway_url == fleet.gateway.environment(0).url else 1), s.chain_code


async def test_one_worker_streams_every_chain_of_the_registry_under_its_own_identity(
    fleet: Fleet, tmp_path: Path
) -> None:
    expected: dict[str, set[int]] = {}
    for s in fleet.subscriptions:
        env, chain = _env_of(fleet, s.id)
        expected[s.id] = set(fleet.emit(env, chain, 5))
    alive = tmp_path / "alive"
    async with fleet.worker("w1", dataclasses.replace(FLEET, alive_file=str(alive))) as w1:
        await eventually(alive.exists, within=10, what="the health check's file")
        await eventually(
            lambda: w1.holds() == {s.id for s in fleet.subscriptions}, within=20, what="3 chains held"
        )
        await fleet.receive(expected)
        for s in fleet.subscriptions:  # more while connected
            env, chain = _env_of(fleet, s.id)
            expected[s.id] |= set(fleet.emit(env, chain, 3))
        await fleet.receive(expected)
        assert await w1.stop() == 0
    ids = [b["eventId"] for b in fleet.received]
    # One chain code in two environments: offsets overlap, identities must not.
    assert len(set(ids)) == len({(_subscription_of(b), b["offset"]) for b in fleet.received})
    fleet.assert_never_two_connections()


async def test_a_second_worker_receives_its_share_by_handover_and_takes_all_when_the_first_stops(
    fleet: Fleet,
) -> None:
    ids = {s.id for s in fleet.subscriptions}
    expected: dict[str, set[int]] = {s: set() for s in ids}

    def emit_all(n: int) -> None:
        for s in ids:
            env, chain = _env_of(fleet, s)
            expected[s] |= set(fleet.emit(env, chain, n))

    emit_all(4)
    async with fleet.worker("w1") as w1:
        await eventually(lambda: w1.holds() == ids, within=20, what="w1 holds every chain")
        async with fleet.worker("w2") as w2:
            # 3 chains over 2 workers: w1 hands one over (complete, drain, release; 10 s gap).
            await eventually(
                lambda: len(w2.holds()) == 1 and len(w1.holds()) == 2,
                within=40,
                what="one chain handed to w2",
            )
            emit_all(3)
            await fleet.receive(expected)
            assert await w1.stop() == 0  # graceful: releases its chains at once
            await eventually(lambda: w2.holds() == ids, within=40, what="w2 takes every chain")
            emit_all(2)
            await fleet.receive(expected)
    fleet.assert_never_two_connections()


async def test_registry_changes_are_picked_up_without_a_restart(fleet: Fleet) -> None:
    """A chain disabled in the registry is stopped gracefully (its lease released, no owner left);
    one added is taken; both within a few passes, by the running worker."""
    async with fleet.worker("w1") as w1:
        await eventually(lambda: w1.holds() == {"CHAINA", "CHAINB", "one-CHAINA"}, within=20, what="3 held")
        await asyncio.to_thread(fleet.registry.set_enabled, "CHAINB", False)
        await eventually(lambda: "CHAINB" not in w1.scheduler.held, within=20, what="CHAINB stopped")
        lease = await asyncio.to_thread(w1.scheduler.parts.fleet.read_leases, ["CHAINB"])
        assert lease["CHAINB"].owner is None  # released, not left to lapse
        assert (
            fleet.gateway.environment(0).streaming.connection_report(("CHAINB",))["CHAINB"]["connections"]
            == 0
        )
        added = Subscription(
            id="CHAINC",
            gateway_url=fleet.gateway.environment(0).url,
            chain_code="CHAINC",
            secret_arn=fleet.subscriptions[0].secret_arn,
            enterprise_id=fleet.subscriptions[0].enterprise_id,
            external_system="RELAY",
        )
        await asyncio.to_thread(fleet.registry.add, added)
        offsets = set(fleet.emit(0, "CHAINC", 3))
        await eventually(lambda: "CHAINC" in w1.holds(), within=20, what="CHAINC taken")
        await fleet.receive({"CHAINC": offsets})
    fleet.assert_never_two_connections()


async def test_a_lease_taken_by_another_worker_closes_the_session_at_once(fleet: Fleet) -> None:
    """Whatever the session is doing, a renewal that finds another owner closes its socket; the
    chain is not taken back while the other owner's lease runs, and is once it is released."""
    async with fleet.worker("w1") as w1:
        await eventually(lambda: "CHAINA" in w1.holds(), within=20, what="CHAINA held")
        ddb = boto3.client("dynamodb", endpoint_url=fleet.stack.endpoint_url, region_name=fleet.stack.region)
        key = {"pk": {"S": "lease#CHAINA"}}
        until = time.time() + 3600
        await asyncio.to_thread(
            ddb.update_item,
            TableName=fleet.stack.table_name,
            Key=key,
            UpdateExpression="SET #o = :o, leaseUntil = :u",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":o": {"S": "intruder"}, ":u": {"N": f"{until:.3f}"}},
        )
        report = fleet.gateway.environment(0).streaming.connection_report
        await eventually(lambda: "CHAINA" not in w1.scheduler.held, within=10, what="session closed")
        await eventually(
            lambda: report(("CHAINA",))["CHAINA"]["connections"] == 0, within=5, what="socket closed"
        )
        assert {"CHAINB", "one-CHAINA"} <= w1.holds()  # the others are untouched
        await asyncio.to_thread(
            ddb.update_item,
            TableName=fleet.stack.table_name,
            Key=key,
            UpdateExpression="REMOVE #o SET leaseUntil = :z",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":z": {"N": "0"}},
        )
        await eventually(lambda: "CHAINA" in w1.holds(), within=20, what="CHAINA taken back")
    fleet.assert_never_two_connections()


async def test_a_chain_whose_secret_cannot_be_read_is_released_and_the_others_stream(fleet: Fleet) -> None:
    broken = Subscription(
        id="BROKEN",
        gateway_url=fleet.gateway.environment(0).url,
        chain_code="CHAINB",
        secret_arn=f"arn:aws:secretsmanager:{fleet.stack.region}:123456789012:secret:ohip/{fleet.stack.stack_name}/nope",
        external_system="RELAY",
    )
    await asyncio.to_thread(fleet.registry.set_enabled, "CHAINB", False)
    await asyncio.to_thread(fleet.registry.add, broken)
    async with fleet.worker("w1") as w1:
        await eventually(
            lambda: w1.holds() == {"CHAINA", "one-CHAINA"}, within=20, what="the two good chains"
        )
        await eventually(lambda: "BROKEN" in w1.scheduler._secret_problems, within=20, what="secret refused")
        lease = await asyncio.to_thread(w1.scheduler.parts.fleet.read_leases, ["BROKEN"])
        assert lease.get("BROKEN") is None or lease["BROKEN"].owner is None


async def test_a_lease_acquired_too_late_to_be_safe_starts_no_session(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # DynamoDB answers the first acquires after 2.5 s, past the lease's safe period (a 3 s lease
    # renewed every second: the session must be closed 2 s after the acquire's `now`). Such a
    # session could connect after safe_until (fleet chaos, seed 5222): none may start. The leases
    # are given back and taken at a later pass, when DynamoDB answers in time.
    from ohip_relay.fleet_state import FleetStore

    real = FleetStore.acquire
    late = {"left": len(fleet.subscriptions)}

    def slow_acquire(self: FleetStore, *args: Any, **kwargs: Any) -> Any:
        acquired = real(self, *args, **kwargs)
        if acquired is not None and late["left"] > 0:
            late["left"] -= 1
            time.sleep(2.5)  # the answer is late: the write happened
        return acquired

    monkeypatch.setattr(FleetStore, "acquire", slow_acquire)
    ids = {s.id for s in fleet.subscriptions}
    # The guard looks twice a second, as in production (the default options): time enough for a
    # session started late to connect before the guard closes it.
    async with fleet.worker("w1", dataclasses.replace(FLEET, guard_interval=0.5)) as w1:
        await eventually(
            lambda: w1.holds() == ids, within=30, what="every chain held after the slow acquires"
        )
        assert await w1.stop() == 0
    assert late["left"] == 0
    # Only the sessions of the timely acquires ever subscribed: one subscription per chain.
    assert all(c["total_connections"] == 1 for c in fleet.connections() if c["total_connections"]), (
        fleet.connections()
    )
    warned = [r.getMessage() for r in caplog.records if "released, not started" in r.getMessage()]
    assert len(warned) == len(ids), warned
    fleet.assert_never_two_connections()


async def test_a_registry_written_while_it_is_read_skips_a_pass_not_the_task(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`chains add` racing the scheduler's listing (the fleet demo's start): the listing gives up
    with a retryable RegistryError, and the next pass lists again; the task does not end."""
    from ohip_relay.registry import RegistryError, RegistryStore

    real = RegistryStore.list_all
    failures = {"left": 2}

    def racing_list_all(self: RegistryStore) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RegistryError(
                "the registry kept changing while it was read; try again",
                operation="ListRegistry",
                code="KeptChanging",
                retryable=True,
                table=fleet.stack.table_name,
            )
        return real(self)

    monkeypatch.setattr(RegistryStore, "list_all", racing_list_all)
    ids = {s.id for s in fleet.subscriptions}
    async with fleet.worker("w1") as w1:
        await eventually(lambda: w1.holds() == ids, within=20, what="every chain held after the races")
        assert not w1.task.done()
        assert await w1.stop() == 0
    assert failures["left"] == 0
