"""Permissions proven by use (issue #19): each grant of each role in template.yaml is needed by a
call the product makes (or the AWS service that runs it makes for it), and nothing else is granted.

A grant is one (role, Sid, action, resource) of the template. For each, the scenario of the component
that needs it runs on the local stack, IAM enforced, with temporary credentials of the role (STS):

- with the role's policies as template.yaml writes them, it completes and moto denies nothing;
- with that one grant taken out (the rest of the statement stays), moto denies exactly that action
  on that resource.

A scenario is the component's own code path: the stream's publisher over its HTTP transport, its
state store and seen-set, `park_frame`; the poll fallback's sender, state, seen-set and spill store;
the example consumer's and the enricher's Lambda handlers fed by `ohip_local.eventsource` (the
calls Lambda's SQS poller makes with the function's role); `resolve_secrets`; `ohip-relay status`
and the whole `ohip-relay doctor` run against a local gateway.

A grant no local scenario can exercise (CloudWatch Logs, ECR, KMS through Secrets Manager) is listed
in docs/permissions.md with the AWS behaviour that needs it. The first test fails for a grant that is
neither proven here nor listed there, for a listed or proven grant the template no longer has, and
when the docs' table of proven grants drifts from `NEEDS` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import io
import itertools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from types import ModuleType
from typing import Any

import pytest

from ohip_local.aws import (
    CONSUMER_ROLE,
    ENRICHER_ROLE,
    OPERATOR_ROLE,
    POLL_ROLE,
    STREAM_ROLE,
    ProvisionedStack,
    load_template,
    local_client,
    provision,
    written_resource,
)
from ohip_local.eventsource import SqsEventSource
from ohip_local.gateway import GatewayConfig, LocalGateway, fleet_config
from ohip_local.iam import Denial, denials, journal_mark
from ohip_local.lambdas import load_function
from ohip_local.stack import credentials_in_environment
from ohip_local.threaded import call_in_gateway, running_gateway
from ohip_relay.balance import BalanceConfig, ChainSummary, worker_items
from ohip_relay.cli import main as cli_main
from ohip_relay.config import Settings
from ohip_relay.doctor import DoctorOptions, run_doctor
from ohip_relay.events import CanonicalEvent, from_poll
from ohip_relay.fallback import POLL_BOTO_CONFIG, SpillStore, SqsBatchSender
from ohip_relay.fleet_fallback import FleetOptions, FleetReport, open_fleet_fallback
from ohip_relay.fleet_health import FleetPollOptions
from ohip_relay.fleet_state import FleetStore
from ohip_relay.park import park_frame
from ohip_relay.publish import PublisherConfig, PublishFailure, SqsPublisher, outbound_message
from ohip_relay.registry import RegistryStore, Subscription, SubscriptionExists, SubscriptionNotFound
from ohip_relay.runtime import resolve_secrets
from ohip_relay.scheduler import SchedulerOptions, open_scheduler
from ohip_relay.seen import SeenSet
from ohip_relay.sqs_http import SqsHttpTransport
from ohip_relay.state import FallbackRecord, Heartbeat, StateStore, StreamState
from ohip_relay.stream import PUBLISHER_BOTO_CONFIG, STATE_BOTO_CONFIG
from ohip_relay.telemetry import Telemetry

from ..conftest import REPO_ROOT, TEMPLATE

# Every test here provokes denials on purpose and checks them itself.
pytestmark = [pytest.mark.integration, pytest.mark.denials_expected]

DOCS = REPO_ROOT / "docs" / "permissions.md"
FUNCTIONS = REPO_ROOT / "functions"
CHAIN = "PERMCHAIN"
FLEET_CHAIN = "PERMFLEET"
STREAM_FLEET = "PERMSTREAM"  # the scheduler's own run: one subscription on a local gateway
POLL_FLEET = "PERMPOLL"  # the poll fallback's fleet scenario: subscriptions PERMPOLL-0 and PERMPOLL-1
BIG = 1_100_000  # over the queue's MaximumMessageSize (1 MiB, the default): a claim check


class ScenarioFailed(AssertionError):
    """The scenario did not do what the component does (with every grant, it must)."""


# --------------------------------------------------------------------------------------------
# The grants of template.yaml
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Grant:
    role: str
    sid: str
    action: str
    resource: str  # as template.yaml writes it (aws.written_resource)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.role, self.action, self.resource)

    def __str__(self) -> str:
        return f"{self.role}.{self.sid}:{self.action}:{self.resource}"


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def template_grants() -> list[Grant]:
    """Every grant of every role of template.yaml, optional (`Fn::If`) statements included."""
    out: list[Grant] = []
    for role, spec in load_template(TEMPLATE)["Resources"].items():
        if spec["Type"] != "AWS::IAM::Role":
            continue
        for policy in spec["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                if "Fn::If" in statement:
                    _, statement, otherwise = statement["Fn::If"]
                    assert otherwise == {"Ref": "AWS::NoValue"}, f"{role}: an If with two statements"
                for action in _listed(statement["Action"]):
                    for resource in _listed(statement["Resource"]):
                        out.append(Grant(role, statement["Sid"], action, written_resource(resource)))
    return sorted(out)


GRANTS = template_grants()


# --------------------------------------------------------------------------------------------
# The world the scenarios run in: one stack (enricher on), clients per role
# --------------------------------------------------------------------------------------------


@dataclass
class FakeContext:
    remaining_ms: int = 30_000
    function_name: str = "permissions"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:permissions"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`os.environ` with `values` for the block (a Lambda module reads its settings on import)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class World:
    stack: ProvisionedStack
    gateway_config: GatewayConfig = field(default_factory=GatewayConfig)
    _clients: dict[tuple[str, str], Any] = field(default_factory=dict)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def endpoint(self) -> str:
        return self.stack.endpoint_url

    def env(self, role: str) -> dict[str, str]:
        """What the component's environment holds: the stack, the secret, the role's credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.stack.region,
            "RELAY_QUEUE_URL": self.stack.queue_url,
            "RELAY_TABLE_NAME": self.stack.table_name,
            "RELAY_BUCKET_NAME": self.stack.bucket_name,
            "OHIP_SECRET_ARN": self.stack.secret_arn,
            **self.stack.credentials(role).environment(),
        }

    def client(self, role: str, service: str, config: Any = None) -> Any:
        """A boto3 client signed with the role's temporary credentials (cached: moto applies a
        changed policy from the next request on)."""
        if (role, service) not in self._clients:
            session = self.stack.credentials(role).session(self.stack.region)
            self._clients[(role, service)] = session.client(
                service,  # type: ignore[call-overload]
                endpoint_url=self.endpoint,
                config=config,
            )
        return self._clients[(role, service)]

    def admin(self, service: str) -> Any:
        return local_client(service, self.endpoint, self.stack.region)

    def event(self, *, big: bool = False, module: str = "BLOCK") -> CanonicalEvent:
        """A new event (its own message group); `big`: over SQS's size limit. BLOCK events have no
        enrichment route, so the enricher passes them on without an OHIP call."""
        n = next(self._numbers)
        item = {
            "businessEventId": {"id": f"{n}{uuid.uuid4().int % 10**9}"},
            "businessEvent": {
                "header": {
                    "moduleName": module,
                    "actionType": "UPDATE BLOCK",
                    "primaryKey": f"pk-{uuid.uuid4().hex[:12]}",
                    "createdDateTime": "2026-01-01 10:00:00.000",
                    "hotelId": "HOTEL1",
                    "publisherId": "1",
                    "actionId": str(n),
                },
                "details": [{"elementName": "Note", "oldValue": "", "newValue": "x" * (BIG if big else 8)}],
            },
        }
        return from_poll(item, CHAIN, datetime.now(UTC))

    def claim_check(self, event: CanonicalEvent) -> str:
        """The body of a claim-checked message for `event`, its payload put by the harness."""
        key = f"oversize/permissions/{uuid.uuid4().hex}.json"
        payload = event.to_json().encode()
        self.admin("s3").put_object(Bucket=self.stack.bucket_name, Key=key, Body=payload)
        return json.dumps(
            {
                "schemaVersion": 1,
                "eventKey": event.event_key,
                "eventId": event.event_id,
                "claimCheck": {"bucket": self.stack.bucket_name, "key": key, "bytes": len(payload)},
            }
        )

    def put_on_relay_queue(self, event: CanonicalEvent, body: str | None = None) -> None:
        self.admin("sqs").send_message(
            QueueUrl=self.stack.queue_url,
            MessageBody=body or event.to_json(),
            MessageGroupId=event.message_group_id(),
            MessageDeduplicationId=uuid.uuid4().hex,
        )

    def drain(self, queue_url: str) -> int:
        """Receive and delete what a queue shows (the harness's, between scenarios)."""
        sqs, count = self.admin("sqs"), 0
        while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
            count += len(messages)
        return count

    def lambda_environment(self, role: str, extra: dict[str, str]) -> contextlib.AbstractContextManager[None]:
        """The function's environment in Lambda: its role's credentials and its settings."""
        return environment({**self.env(role), **extra, "POWERTOOLS_METRICS_DISABLED": "true"})

    def load_function(self, name: str) -> ModuleType:
        """A fresh copy of functions/<name>/app.py (inside `lambda_environment`: it builds its
        clients on import, as a Lambda execution environment starts)."""
        return load_function(name, functions=FUNCTIONS)


@pytest.fixture(scope="module")
def world(aws_endpoint: str) -> World:
    stack = provision(
        aws_endpoint,
        TEMPLATE,
        stack_name=f"perm-{uuid.uuid4().hex[:6]}",
        parameters={"EnableEnricher": "true"},
    )
    config = GatewayConfig()
    stack.store_ohip_credentials(
        client_id=config.client_id, client_secret=config.client_secret, app_key=config.app_key
    )
    return World(stack, config)


# --------------------------------------------------------------------------------------------
# Scenarios: what each component does, with its role
# --------------------------------------------------------------------------------------------


def stream_publishes(world: World) -> None:
    """The stream's publisher (`ohip-relay stream`): the queue's MaximumMessageSize at start,
    SendMessageBatch over its own SigV4 HTTP transport (temporary credentials: the session token
    must be sent), and a claim check for an event over the size limit."""
    sqs = world.client(STREAM_ROLE, "sqs", PUBLISHER_BOTO_CONFIG)
    s3 = world.client(STREAM_ROLE, "s3")
    credentials = world.stack.credentials(STREAM_ROLE).session(world.stack.region).get_credentials()
    failures: list[PublishFailure] = []

    async def run() -> None:
        publisher = SqsPublisher(
            sqs,
            world.stack.queue_url,
            transport=SqsHttpTransport(sqs, credentials),
            on_ack=lambda _token: None,
            on_failure=failures.append,
            config=PublisherConfig(
                claim_check_bucket=world.stack.bucket_name, batch_window_s=0.0, start_timeout_s=0.0
            ),
            s3_client=s3,
        )
        async with publisher:
            await publisher.submit(outbound_message(world.event(), 1))
            await publisher.submit(outbound_message(world.event(big=True), 2))
            await publisher.flush()

    asyncio.run(run())
    if failures:
        raise ScenarioFailed(f"not published: {[f.code for f in failures]}")


_offsets = itertools.count(1000)


def stream_keeps_state(world: World) -> None:
    """The stream's checkpoint, lease, heartbeat and seen-set lookups."""
    dynamodb = world.client(STREAM_ROLE, "dynamodb", STATE_BOTO_CONFIG)
    state = StateStore(dynamodb, world.stack.table_name, CHAIN)
    owner, now = f"task-{uuid.uuid4().hex[:8]}", time.time()
    state.get_checkpoint()
    if not state.acquire_lease(owner, 30.0, now):
        raise ScenarioFailed("the lease was not acquired")
    state.put_heartbeat(Heartbeat(state=StreamState.CONNECTED, owner=owner, updated_at=now))
    state.advance_checkpoint(next(_offsets), owner)
    state.get_fallback()
    event = world.event()
    SeenSet(dynamodb, world.stack.table_name).match(event.event_key, event.event_id)
    state.release_lease(owner)


def stream_parks(world: World) -> None:
    """A frame the stream cannot publish, parked under malformed/."""
    park_frame(
        world.client(STREAM_ROLE, "s3"),
        world.stack.bucket_name,
        CHAIN,
        "{not json",
        "frame: not JSON",
        "7",
        0.0,
    )


def stream_fleet(world: World) -> None:
    """The fleet's scheduler under the stream task's role (issue #18, docs/fleet-design.md; not
    wired into `ohip-relay stream` yet, so its own calls, run here as the fleet task will run them):
    the registry's revision and listing, its worker item and the fleet index, the lease view, takes,
    the renewal batch, a handover request and its decline, a push and the release that keeps it, a
    stop, and forgetting a silent worker."""
    with contextlib.suppress(SubscriptionExists):  # `ohip-relay chains add`: the administrator here
        RegistryStore(world.admin("dynamodb"), world.stack.table_name).add(
            Subscription(
                id=FLEET_CHAIN,
                gateway_url="https://ohip.example.com",
                chain_code=FLEET_CHAIN,
                secret_arn=world.stack.secret_arn,
            )
        )
    dynamodb = world.client(STREAM_ROLE, "dynamodb", STATE_BOTO_CONFIG)
    registry = RegistryStore(dynamodb, world.stack.table_name)
    registry.revision()
    if FLEET_CHAIN not in {s.id for s in registry.list_all().subscriptions}:
        raise ScenarioFailed("the registry did not list its entry")
    fleet = FleetStore(dynamodb, world.stack.table_name)
    me, other, now = f"task-{uuid.uuid4().hex[:8]}", f"task-{uuid.uuid4().hex[:8]}", time.time()
    chains = [f"{FLEET_CHAIN}-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    for worker in (me, other):
        summaries = {chain: ChainSummary("connected", now) for chain in chains} if worker == me else {}
        fleet.put_worker(worker_items(worker, now, summaries, started_at=now))
        fleet.join(worker, now)
    if not {me, other} <= set(fleet.read_workers()):
        raise ScenarioFailed("the workers are not in the fleet")
    view = fleet.read_leases(chains)
    if any(fleet.acquire(chain, me, now, 30.0, view.get(chain)) is None for chain in chains):
        raise ScenarioFailed("a free chain was not taken")
    if not all(r.renewed for r in fleet.renew_many(chains, me, now + 1, 30.0).values()):
        raise ScenarioFailed("a lease was not renewed")
    # `other` asks for the first chain and is declined; the second is pushed to it and released.
    if not fleet.request_handover(chains[0], me, other, now + 2, 120.0):
        raise ScenarioFailed("the handover request did not land")
    handover = (
        fleet.decline(chains[0], me, other)
        and fleet.push(chains[1], me, other, now + 3)
        and fleet.release(chains[1], me, now + 4, now + 3.5, keep_handover=True)
        and fleet.release(chains[0], me, now + 4, now + 3.5, keep_handover=False)
    )
    if not handover:
        raise ScenarioFailed("a handover write did not land")
    for worker in (other, me):
        if not fleet.forget_worker(worker, now + 5, heartbeat_at=now):
            raise ScenarioFailed(f"worker {worker} was not forgotten")


def stream_fleet_runs(world: World) -> None:
    """The fleet's scheduler itself (`ohip-relay stream` with RELAY_FLEET=true, scheduler.py) under
    the task's role, over a registry of one subscription on a local gateway: it joins, takes the
    lease, reads the entry's secret (named under the template's default `RegistrySecretArnPattern`,
    ohip/*), connects the chain's session, then stops gracefully (release, leave). Other enabled
    entries (other scenarios') are disabled for the run and enabled again after it."""
    registry = RegistryStore(world.admin("dynamodb"), world.stack.table_name)
    secrets = local_client("secretsmanager", world.endpoint, world.stack.region)
    config = GatewayConfig(chains=(STREAM_FLEET,))
    with running_gateway(config) as gateway:
        name = f"ohip/{world.stack.stack_name}/{STREAM_FLEET}"
        value = json.dumps(
            {"clientId": config.client_id, "clientSecret": config.client_secret, "appKey": config.app_key}
        )
        try:
            arn = secrets.create_secret(Name=name, SecretString=value)["ARN"]
        except secrets.exceptions.ResourceExistsException:
            arn = secrets.put_secret_value(SecretId=name, SecretString=value)["ARN"]
        with contextlib.suppress(SubscriptionNotFound):  # a run that ended half-way
            registry.remove(STREAM_FLEET)
        registry.add(
            Subscription(
                id=STREAM_FLEET,
                gateway_url=gateway.url,
                chain_code=STREAM_FLEET,
                secret_arn=arn,
                enterprise_id=config.enterprise_id,
            )
        )
        others = [s.id for s in registry.list_all().subscriptions if s.enabled and s.id != STREAM_FLEET]
        for other in others:
            registry.set_enabled(other, False)
        try:
            asyncio.run(_run_scheduler_until_connected(world))
        finally:
            for other in others:
                registry.set_enabled(other, True)
            registry.remove(STREAM_FLEET)


async def _run_scheduler_until_connected(world: World) -> None:
    env = {**world.env(STREAM_ROLE), "RELAY_FLEET": "true", "POWERTOOLS_METRICS_DISABLED": "true"}
    env.pop("OHIP_SECRET_ARN")
    settings = Settings.from_env(env)
    options = SchedulerOptions(
        lease_seconds=3.0,
        renew_interval=1.0,
        pass_interval=0.3,
        balance=BalanceConfig(lease_seconds=3.0, worker_timeout=2.0),
    )
    with credentials_in_environment(env):
        opened = open_scheduler(settings, options=options, worker_id=f"perm-{uuid.uuid4().hex[:8]}")
        scheduler = await opened.__aenter__()
    try:
        task = asyncio.create_task(scheduler.run())

        def outcome() -> str | None:
            if STREAM_FLEET in scheduler._secret_problems:
                return scheduler._secret_problems[STREAM_FLEET]
            held = scheduler.held.get(STREAM_FLEET)
            if held is not None and held.session is not None and held.session.status is StreamState.CONNECTED:
                return "connected"
            return None

        for _ in range(400):  # polled for at most 20 s
            if outcome() is not None or task.done():
                break
            await asyncio.sleep(0.05)
        result = outcome()
        scheduler.request_stop()
        if await asyncio.wait_for(task, 30.0) != 0:
            raise ScenarioFailed("the scheduler did not stop cleanly")
    finally:
        await opened.__aexit__(None, None, None)
    if result != "connected":
        raise ScenarioFailed(f"the chain's session did not connect: {result}")


def status(world: World, role: str) -> None:
    """`ohip-relay status --json`: the ECS health check (StreamTaskRole) or an operator."""
    now = time.time()  # a chain the relay has seen (the harness writes its heartbeat)
    heartbeat = Heartbeat(state=StreamState.CONNECTED, owner="permissions", updated_at=now)
    StateStore(world.admin("dynamodb"), world.stack.table_name, CHAIN).put_heartbeat(heartbeat)
    env = {**world.env(role), "OHIP_CHAIN_CODE": CHAIN}
    env.pop("OHIP_SECRET_ARN")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    try:
        with environment(env), contextlib.redirect_stdout(out):
            code = cli_main(["status", "--json"])
    finally:  # main() points the root logger at stderr: put it back
        root.handlers[:] = handlers
        root.setLevel(level)
    if code != 0 or "heartbeatAgeSeconds" not in json.loads(out.getvalue() or "{}"):
        raise ScenarioFailed(f"status exited {code}: {out.getvalue()!r}")


def operator_fleet_status(world: World) -> None:
    """`ohip-relay status --json` with RELAY_FLEET=true (fleet_status.py): the registry, the worker
    items through the fleet index, the leases, checkpoints and fallback records, all batched."""
    admin, now = world.admin("dynamodb"), time.time()
    with contextlib.suppress(SubscriptionExists):  # `ohip-relay chains add`: the administrator here
        RegistryStore(admin, world.stack.table_name).add(
            Subscription(
                id=FLEET_CHAIN,
                gateway_url="https://ohip.example.com",
                chain_code=FLEET_CHAIN,
                secret_arn=world.stack.secret_arn,
            )
        )
    worker = f"task-{uuid.uuid4().hex[:8]}"  # a fleet task's heartbeat, written by the harness
    fleet = FleetStore(admin, world.stack.table_name)
    fleet.put_worker(worker_items(worker, now, {FLEET_CHAIN: ChainSummary("connected", now)}, started_at=now))
    fleet.join(worker, now)
    env = {**world.env(OPERATOR_ROLE), "RELAY_FLEET": "true"}
    env.pop("OHIP_SECRET_ARN")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    try:
        with environment(env), contextlib.redirect_stdout(out):
            code = cli_main(["status", "--json"])
    finally:  # main() points the root logger at stderr: put it back
        root.handlers[:] = handlers
        root.setLevel(level)
    report = json.loads(out.getvalue() or "{}")
    if code != 0 or FLEET_CHAIN not in {row["id"] for row in report.get("subscriptions", [])}:
        raise ScenarioFailed(f"fleet status exited {code}: {out.getvalue()!r}")


def reads_secret(world: World, role: str) -> None:
    """`resolve_secrets`: OHIP_SECRET_ARN read from Secrets Manager at start-up."""
    settings = Settings.from_env(world.env(role))
    with credentials_in_environment(world.env(role)):
        resolved = resolve_secrets(settings)
    if resolved.client_id != world.gateway_config.client_id:
        raise ScenarioFailed("the secret did not give the client id")


def poll_publishes(world: World) -> None:
    """The poll fallback's sender: MaximumMessageSize, SendMessageBatch, a claim check."""
    sender = SqsBatchSender(
        world.client(POLL_ROLE, "sqs", POLL_BOTO_CONFIG),
        world.stack.queue_url,
        s3=world.client(POLL_ROLE, "s3"),
        claim_check_bucket=world.stack.bucket_name,
        attempts=1,
        retry_delay_s=0.0,
    )
    result = sender.send([outbound_message(world.event()), outbound_message(world.event(big=True))])
    if not result.complete:
        raise ScenarioFailed(f"not sent: {result.code}")


def poll_keeps_state(world: World) -> None:
    """The fallback's health decision (reads), its record and mark, and the seen-set record."""
    dynamodb = world.client(POLL_ROLE, "dynamodb", POLL_BOTO_CONFIG)
    state = StateStore(dynamodb, world.stack.table_name, CHAIN)
    state.get_fallback()
    state.get_heartbeat()
    state.save_fallback(
        FallbackRecord(active=True, since=time.time(), last_reason="permissions"), add={"fetched": 1}
    )
    state.advance_fallback_mark(datetime.now(UTC))
    event = world.event()
    SeenSet(dynamodb, world.stack.table_name).record([(event.event_key, event.event_id)])


def poll_spills(world: World) -> None:
    """A page SQS did not take: spilled, found again, read back, deleted once published."""
    store = SpillStore(world.client(POLL_ROLE, "s3"), world.stack.bucket_name, CHAIN)
    key = store.spill([({"businessEventId": {"id": "1"}}, None)], "sqs-error")
    if key not in store.pending():
        raise ScenarioFailed("the spilled page is not listed")
    store.load(key)
    store.delete(key)


def poll_parks(world: World) -> None:
    """Poll API items that are no event, parked under malformed/."""
    SpillStore(world.client(POLL_ROLE, "s3"), world.stack.bucket_name, CHAIN).park_malformed(
        [{"not": "an event"}], "businessEvent: missing"
    )


def poll_fleet(world: World) -> None:
    """The poll fallback in fleet mode (`RELAY_FLEET=true`, fleet_fallback.py) over a registry of two
    subscriptions, one per environment of a local gateway: the registry, the worker items and the
    chains' fallback records read in batches, each environment's secret (under the template's
    default `RegistrySecretArnPattern`, ohip/*) read once, and a tick of both chains (no worker
    lists them, so both are polled and their events published). Other enabled entries of the
    registry (other scenarios') are disabled for the tick and enabled again after it."""
    registry = RegistryStore(world.admin("dynamodb"), world.stack.table_name)
    secrets = local_client("secretsmanager", world.endpoint, world.stack.region)
    mine = [f"{POLL_FLEET}-{i}" for i in range(2)]
    with running_gateway(fleet_config(2, 1)) as gateway:
        for index, sub_id in enumerate(mine):
            env = gateway.environment(index)
            name = f"ohip/{world.stack.stack_name}/{sub_id}"
            cfg = env.config
            value = json.dumps(
                {"clientId": cfg.client_id, "clientSecret": cfg.client_secret, "appKey": cfg.app_key}
            )
            try:
                arn = secrets.create_secret(Name=name, SecretString=value)["ARN"]
            except secrets.exceptions.ResourceExistsException:
                arn = secrets.put_secret_value(SecretId=name, SecretString=value)["ARN"]
            with contextlib.suppress(SubscriptionNotFound):  # a run that ended half-way
                registry.remove(sub_id)
            registry.add(
                Subscription(
                    id=sub_id,
                    gateway_url=env.url,
                    chain_code=env.config.chains[0],
                    secret_arn=arn,
                    enterprise_id=env.config.enterprise_id,
                    external_system=env.config.external_systems[0],
                )
            )
            call_in_gateway(gateway, partial(env.emit, 1))
        others = [s.id for s in registry.list_all().subscriptions if s.enabled and s.id not in mine]
        for other in others:
            registry.set_enabled(other, False)
        try:
            report = _fleet_tick(world)
        finally:
            for other in others:
                registry.set_enabled(other, True)
            for sub_id in mine:
                registry.remove(sub_id)
    if report.error_count or report.polled != 2 or report.total("published") != 2:
        raise ScenarioFailed(report.summary())


def _fleet_tick(world: World) -> FleetReport:
    env = {**world.env(POLL_ROLE), "RELAY_FLEET": "true"}
    env.pop("OHIP_SECRET_ARN")
    settings = Settings.from_env(env)
    options = FleetOptions(plan=FleetPollOptions(healthy_drains=0))
    with (
        credentials_in_environment(env),
        open_fleet_fallback(settings, Telemetry(service="poll", emit=False), options=options) as fleet,
    ):
        return fleet.tick(lambda: 30.0)


def consumer_consumes(world: World) -> None:
    """The example consumer as its SQS event source runs it: Lambda's poller (ReceiveMessage,
    DeleteMessageBatch, GetQueueAttributes) and the handler (a claim check read from S3, the
    idempotency records written, completed, deleted after a failure, found on a redelivery)."""
    world.drain(world.stack.queue_url)
    plain, big, failing = world.event(), world.event(big=True), world.event()
    world.put_on_relay_queue(plain)
    world.put_on_relay_queue(big, world.claim_check(big))
    world.put_on_relay_queue(failing)
    world.put_on_relay_queue(plain)  # a redelivery: processed once
    source = SqsEventSource(
        world.client(CONSUMER_ROLE, "sqs"), world.stack.queue_url, region=world.stack.region
    )
    failed: list[str] = []
    with world.lambda_environment(
        CONSUMER_ROLE, {"IDEMPOTENCY_TABLE_NAME": world.stack.refs["IdempotencyTable"]}
    ):
        app = world.load_function("example_consumer")
        app.handle_event = lambda event: _fail_if(event["eventId"] == failing.event_id)
        source.start()
        while batch := source.receive():
            failed += source.complete(batch, app.handler(batch.event, FakeContext()))
    if len(failed) != 1:
        raise ScenarioFailed(f"{len(failed)} records failed, expected only the one the handler refused")


def _fail_if(condition: bool) -> None:
    if condition:
        raise RuntimeError("the handler refused this event (on purpose)")


def enricher_enriches(world: World) -> None:
    """The enricher as its SQS event source runs it: Lambda's poller, the handler reading a claim
    check, publishing to the enriched queue and claim-checking what is over the size limit there."""
    world.drain(world.stack.queue_url)
    enriched_url = world.stack.outputs["EnrichedQueueUrl"]
    world.drain(enriched_url)
    big = world.event(big=True)
    world.put_on_relay_queue(big, world.claim_check(big))
    source = SqsEventSource(
        world.client(ENRICHER_ROLE, "sqs"), world.stack.queue_url, region=world.stack.region
    )
    settings = {"OHIP_GATEWAY_URL": "http://127.0.0.1:9", "RELAY_ENRICHED_QUEUE_URL": enriched_url}
    with world.lambda_environment(ENRICHER_ROLE, settings):
        app = world.load_function("enricher")
        source.start()
        batch = source.receive()
        if batch is None:
            raise ScenarioFailed("nothing received")
        failed = source.complete(batch, app.handler(batch.event, FakeContext()))
    if failed:
        raise ScenarioFailed(f"records not enriched: {failed}")
    if world.drain(enriched_url) != 1:
        raise ScenarioFailed("the enriched queue did not get the event")


def operator_doctor(world: World) -> None:
    """`ohip-relay doctor` against a local gateway, every check: the secret, the state table (lease,
    heartbeat, probe), the queue and the bucket."""
    config = world.gateway_config

    async def run() -> str | None:
        async with LocalGateway(config) as gateway:
            env = {
                **world.env(OPERATOR_ROLE),
                "OHIP_GATEWAY_URL": gateway.url,
                "OHIP_ENTERPRISE_ID": config.enterprise_id,
                "OHIP_CHAIN_CODE": config.chains[0],
                "OHIP_EXTERNAL_SYSTEM": config.external_systems[0],
            }
            with credentials_in_environment(env):
                report = await run_doctor(env, DoctorOptions(timeout=5.0))
            return None if report.ok else report.to_text()

    problem = asyncio.run(run())
    if problem:
        raise ScenarioFailed(problem)


SCENARIOS: dict[str, Callable[[World], None]] = {
    "stream-publishes": stream_publishes,
    "stream-keeps-state": stream_keeps_state,
    "stream-parks": stream_parks,
    "stream-health-check": partial(status, role=STREAM_ROLE),
    "stream-fleet": stream_fleet,
    "stream-fleet-runs": stream_fleet_runs,
    "stream-reads-secret": partial(reads_secret, role=STREAM_ROLE),
    "poll-publishes": poll_publishes,
    "poll-keeps-state": poll_keeps_state,
    "poll-spills": poll_spills,
    "poll-parks": poll_parks,
    "poll-fleet": poll_fleet,
    "poll-reads-secret": partial(reads_secret, role=POLL_ROLE),
    "consumer-consumes": consumer_consumes,
    "enricher-enriches": enricher_enriches,
    "enricher-reads-secret": partial(reads_secret, role=ENRICHER_ROLE),
    "operator-status": partial(status, role=OPERATOR_ROLE),
    "operator-fleet-status": operator_fleet_status,
    "operator-doctor": operator_doctor,
}

# Which scenarios need each grant (role, action, resource as written): all of them are denied
# without it. docs/permissions.md lists the same, with what in the code makes the call.
_Q, _T, _B, _S = "EventsQueue", "StateTable", "OversizeBucket", "OhipSecretArn"
# The registry's secrets (RegistrySecretArnPattern), as template.yaml writes the resource.
_RS = (
    "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${RegistrySecretArnPattern}"
)
NEEDS: dict[tuple[str, str, str], tuple[str, ...]] = {
    (STREAM_ROLE, "sqs:SendMessage", _Q): ("stream-publishes",),
    (STREAM_ROLE, "sqs:GetQueueAttributes", _Q): ("stream-publishes",),
    (STREAM_ROLE, "dynamodb:GetItem", _T): ("stream-keeps-state", "stream-health-check", "stream-fleet"),
    (STREAM_ROLE, "dynamodb:PutItem", _T): ("stream-keeps-state", "stream-fleet"),
    (STREAM_ROLE, "dynamodb:UpdateItem", _T): ("stream-keeps-state", "stream-fleet"),
    (STREAM_ROLE, "dynamodb:BatchGetItem", _T): ("stream-fleet",),
    (STREAM_ROLE, "dynamodb:DeleteItem", _T): ("stream-fleet",),
    (STREAM_ROLE, "s3:PutObject", f"{_B}/oversize/*"): ("stream-publishes",),
    (STREAM_ROLE, "s3:PutObject", f"{_B}/malformed/*"): ("stream-parks",),
    (STREAM_ROLE, "secretsmanager:GetSecretValue", _S): ("stream-reads-secret",),
    (STREAM_ROLE, "secretsmanager:GetSecretValue", _RS): ("stream-fleet-runs",),
    (POLL_ROLE, "sqs:SendMessage", _Q): ("poll-publishes",),
    (POLL_ROLE, "sqs:GetQueueAttributes", _Q): ("poll-publishes",),
    (POLL_ROLE, "dynamodb:GetItem", _T): ("poll-keeps-state", "poll-fleet"),
    (POLL_ROLE, "dynamodb:UpdateItem", _T): ("poll-keeps-state", "poll-fleet"),
    (POLL_ROLE, "dynamodb:BatchGetItem", _T): ("poll-fleet",),
    (POLL_ROLE, "s3:PutObject", f"{_B}/oversize/*"): ("poll-publishes",),
    (POLL_ROLE, "s3:PutObject", f"{_B}/spill/*"): ("poll-spills",),
    (POLL_ROLE, "s3:PutObject", f"{_B}/malformed/*"): ("poll-parks",),
    (POLL_ROLE, "s3:GetObject", f"{_B}/spill/*"): ("poll-spills",),
    (POLL_ROLE, "s3:DeleteObject", f"{_B}/spill/*"): ("poll-spills",),
    (POLL_ROLE, "s3:ListBucket", _B): ("poll-spills",),
    (POLL_ROLE, "secretsmanager:GetSecretValue", _S): ("poll-reads-secret",),
    (POLL_ROLE, "secretsmanager:GetSecretValue", _RS): ("poll-fleet",),
    (CONSUMER_ROLE, "sqs:ReceiveMessage", _Q): ("consumer-consumes",),
    (CONSUMER_ROLE, "sqs:DeleteMessage", _Q): ("consumer-consumes",),
    (CONSUMER_ROLE, "sqs:GetQueueAttributes", _Q): ("consumer-consumes",),
    (CONSUMER_ROLE, "s3:GetObject", f"{_B}/oversize/*"): ("consumer-consumes",),
    (CONSUMER_ROLE, "dynamodb:PutItem", "IdempotencyTable"): ("consumer-consumes",),
    (CONSUMER_ROLE, "dynamodb:UpdateItem", "IdempotencyTable"): ("consumer-consumes",),
    (CONSUMER_ROLE, "dynamodb:DeleteItem", "IdempotencyTable"): ("consumer-consumes",),
    (ENRICHER_ROLE, "sqs:ReceiveMessage", _Q): ("enricher-enriches",),
    (ENRICHER_ROLE, "sqs:DeleteMessage", _Q): ("enricher-enriches",),
    (ENRICHER_ROLE, "sqs:GetQueueAttributes", _Q): ("enricher-enriches",),
    (ENRICHER_ROLE, "sqs:SendMessage", "EnrichedQueue"): ("enricher-enriches",),
    (ENRICHER_ROLE, "sqs:GetQueueAttributes", "EnrichedQueue"): ("enricher-enriches",),
    (ENRICHER_ROLE, "s3:GetObject", f"{_B}/oversize/*"): ("enricher-enriches",),
    (ENRICHER_ROLE, "s3:PutObject", f"{_B}/oversize/enriched/*"): ("enricher-enriches",),
    (ENRICHER_ROLE, "secretsmanager:GetSecretValue", _S): ("enricher-reads-secret",),
    (OPERATOR_ROLE, "dynamodb:GetItem", _T): ("operator-status", "operator-doctor", "operator-fleet-status"),
    (OPERATOR_ROLE, "dynamodb:BatchGetItem", _T): ("operator-fleet-status",),
    (OPERATOR_ROLE, "sqs:GetQueueAttributes", _Q): ("operator-doctor",),
    (OPERATOR_ROLE, "s3:ListBucket", _B): ("operator-doctor",),
    (OPERATOR_ROLE, "secretsmanager:GetSecretValue", _S): ("operator-doctor",),
}

PROVEN = [g for g in GRANTS if g.key in NEEDS]


# --------------------------------------------------------------------------------------------
# docs/permissions.md
# --------------------------------------------------------------------------------------------


def _docs_table(heading: str) -> list[list[str]]:
    """The rows of the first table under `## heading`, cells without backticks."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)
    assert len(section) == 2, f"docs/permissions.md has no section '## {heading}'"
    rows: list[list[str]] = []
    for line in section[1].split("\n## ", 1)[0].splitlines():
        if not line.startswith("|") or re.match(r"^\|[\s:|-]+\|$", line):
            continue
        cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
        rows.append(cells)
    return rows[1:]  # the header row


def _documented(heading: str) -> dict[Grant, list[str]]:
    """Grant -> the rest of its row, for the tables whose first four columns are Role, Sid,
    Action(s), Resource(s) (several actions or resources in one cell: comma-separated)."""
    out: dict[Grant, list[str]] = {}
    for role, sid, actions, resources, *rest in _docs_table(heading):
        for action in actions.split(","):
            for resource in resources.split(","):
                out[Grant(role, sid, action.strip(), resource.strip())] = rest
    return out


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


def test_every_grant_is_proven_or_documented_as_not_exercisable() -> None:
    proven_docs = _documented("Every grant and what uses it")
    elsewhere = _documented("Grants no local scenario exercises")
    template = set(GRANTS)
    assert set(NEEDS) <= {g.key for g in GRANTS}, (
        f"scenarios for grants template.yaml does not have: {sorted(set(NEEDS) - {g.key for g in GRANTS})}"
    )
    assert set(proven_docs) == set(PROVEN), (
        "docs/permissions.md 'Every grant and what uses it' differs from NEEDS: "
        f"missing {sorted(map(str, set(PROVEN) - set(proven_docs)))}, "
        f"extra {sorted(map(str, set(proven_docs) - set(PROVEN)))}"
    )
    for grant, rest in proven_docs.items():
        named = {s.strip() for s in rest[-1].split(",")}
        assert named == set(NEEDS[grant.key]), f"docs/permissions.md names other scenarios for {grant}"
    unexercised = template - set(PROVEN)
    assert set(elsewhere) == unexercised, (
        "docs/permissions.md 'Grants no local scenario exercises' differs from the grants without a "
        f"scenario: missing {sorted(map(str, unexercised - set(elsewhere)))}, "
        f"extra {sorted(map(str, set(elsewhere) - unexercised))}"
    )
    for grant, rest in elsewhere.items():
        assert all(len(cell) >= 20 for cell in rest[:2]), f"{grant}: say what needs it and why not locally"


def _restore(world: World, role: str) -> None:
    world.stack.put_role_policies(role, world.stack.role(role).policies())


def _run(world: World, scenario: str) -> tuple[BaseException | None, list[Denial]]:
    mark = journal_mark(world.endpoint)
    try:
        SCENARIOS[scenario](world)
    except Exception as exc:
        return exc, denials(world.endpoint, since=mark)
    return None, denials(world.endpoint, since=mark)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_succeeds_with_the_template_policies(world: World, scenario: str) -> None:
    for role in world.stack.roles:
        if world.stack.role(role).statements:
            _restore(world, role)
    error, denied = _run(world, scenario)
    assert not denied, "\n".join(d.describe() for d in denied)
    assert error is None, f"{scenario}: {error!r}"


@pytest.mark.parametrize("grant", PROVEN, ids=str)
def test_grant_is_needed(world: World, grant: Grant) -> None:
    spec = world.stack.role(grant.role)
    (statement,) = [s for s in spec.statements if s.sid == grant.sid]
    resource = statement.resources[statement.written.index(grant.resource)]
    world.stack.put_role_policies(grant.role, spec.policies(without=(grant.sid, grant.action, resource)))
    try:
        for scenario in NEEDS[grant.key]:
            error, denied = _run(world, scenario)
            ours = [
                d for d in denied if d.action == grant.action and fnmatch.fnmatchcase(d.resource, resource)
            ]
            assert ours, (
                f"{scenario} ran without {grant} and it was not denied: the grant is not needed"
                f" (the scenario {'raised ' + repr(error) if error else 'completed'})"
            )
            others = [d.describe() for d in denied if d not in ours]
            assert not others, f"{scenario} without {grant} was denied more: {others}"
            assert all(d.role == spec.name for d in ours)
    finally:
        _restore(world, grant.role)
