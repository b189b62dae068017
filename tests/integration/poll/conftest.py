"""A rig for the poll fallback: the local OHIP gateway on its own thread (real sockets), the
template's resources on the moto server, and the fallback wired as `ohip-relay poll` wires it, with
an injected clock (health, hysteresis) and remaining time.

For crash and fault tests the rig also builds a fallback whose AWS clients are wrapped (`Wrapped`:
a `CrashPlan` kills the "process" at a chosen call, an `intercept` answers for the service) and whose
Poll API traffic goes through a `PollTap` (which records every item the gateway dequeued and may
rewrite a page on its way, to serve what the local gateway cannot: a missing or repeated
businessEventId)."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import httpx
import pytest

from ohip_local.aws import POLL_ROLE, ProvisionedStack
from ohip_local.gateway import GatewayConfig, LocalGateway
from ohip_local.source import EventDraft, StoredEvent
from ohip_local.stack import credentials_in_environment, environment_for
from ohip_local.threaded import call_in_gateway, running_gateway
from ohip_relay.config import Need, Settings
from ohip_relay.events import MalformedEvent, from_poll, poll_event_id, stream_event_id
from ohip_relay.fallback import (
    FallbackOptions,
    PollFallback,
    SpillStore,
    SqsBatchSender,
    TickReport,
    open_fallback,
)
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
            **environment_for(self.stack, role=POLL_ROLE),
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
        """The fallback of `ohip-relay poll`, its AWS clients signed with the poll role's credentials."""
        with contextlib.ExitStack() as opened:
            with credentials_in_environment(self.env(**env)):
                fb = opened.enter_context(
                    open_fallback(self.settings(**env), self.telemetry, options=options, clock=self.clock)
                )
            yield fb

    def tick(self, remaining: Callable[[], float] = lambda: 60.0, **env: str) -> TickReport:
        with self.fallback(**env) as fb:
            return fb.tick(remaining)

    @contextmanager
    def built(
        self,
        *,
        sqs: Any = None,
        s3: Any = None,
        dynamodb: Any = None,
        tap: PollTap | None = None,
        options: FallbackOptions | None = None,
        claim_check: bool = True,
        **env: str,
    ) -> Iterator[PollFallback]:
        """The fallback of `ohip-relay poll` with these AWS clients (the rig's own by default) and
        Poll API transport. `claim_check=False`: a sender without a claim-check bucket."""
        settings = self.settings(**env)
        opts = options or FallbackOptions(page_limit=settings.poll_page_limit, retry_delay_s=0.0)
        client = httpx.Client(transport=tap, trust_env=False) if tap is not None else None
        sqs, s3, dynamodb = sqs or self.sqs, s3 or self.s3, dynamodb or self.dynamodb
        bucket, table = self.stack.bucket_name, self.stack.table_name
        try:
            with contextlib.ExitStack() as opened:
                with credentials_in_environment(self.env(**env)):
                    fb = opened.enter_context(
                        open_fallback(settings, self.telemetry, options=opts, clock=self.clock, http=client)
                    )
                fb.state = StateStore(dynamodb, table, self.chain)
                fb.seen = SeenSet(dynamodb, table, ttl_days=settings.seen_ttl_days, clock=self.clock)
                fb.sender = SqsBatchSender(
                    sqs,
                    settings.queue_url,
                    s3=s3 if claim_check else None,
                    claim_check_bucket=bucket if claim_check else "",
                    claim_check_prefix=opts.claim_check_prefix,
                    attempts=opts.send_attempts,
                    retry_delay_s=opts.retry_delay_s,
                )
                fb.spill = SpillStore(s3, bucket, self.chain, clock=self.clock)
                yield fb
        finally:
            if client is not None:
                client.close()

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

    def append(self, draft: EventDraft, *, at: float | None = None) -> StoredEvent:
        """One event from `draft`; `at` fixes its createdDateTime (the source's clock, for that call)."""
        source = self.gateway.source

        def run() -> StoredEvent:
            saved = source.clock
            if at is not None:
                source.clock = lambda: at
            try:
                return source.append(self.chain, draft)
            finally:
                source.clock = saved

        return call_in_gateway(self.gateway, run)

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

    def document(self, key: str) -> dict[str, Any]:
        return dict(json.loads(self.s3.get_object(Bucket=self.stack.bucket_name, Key=key)["Body"].read()))

    def spilled(self) -> list[tuple[Any, str | None]]:
        """Every spilled item with its stand-in id, as the next tick would re-deliver them."""
        store = SpillStore(self.s3, self.stack.bucket_name, self.chain)
        return [entry for key in store.pending() for entry in store.load(key)]

    def parked(self) -> list[Any]:
        return [
            item for key in self.objects(f"malformed/{self.chain}/") for item in self.document(key)["items"]
        ]

    def recorded(self) -> dict[str, set[str]]:
        """The seen-set: content key -> the eventIds of the poll copies recorded under it."""
        out: dict[str, set[str]] = {}
        pages = self.dynamodb.get_paginator("scan").paginate(TableName=self.stack.table_name)
        for page in pages:
            for item in page.get("Items", []):
                pk = item["pk"]["S"]
                if pk.startswith("seen#") and "polled" in item:
                    out[pk.removeprefix("seen#")] = set(item["polled"]["SS"])
        return out

    def reset(self) -> None:
        """Empty the queue, the bucket and the table (the stack is reused by the next run)."""
        self.receive()
        bucket = self.stack.bucket_name
        for key in self.objects(""):
            self.s3.delete_object(Bucket=bucket, Key=key)
        for page in self.dynamodb.get_paginator("scan").paginate(TableName=self.stack.table_name):
            for item in page.get("Items", []):
                self.dynamodb.delete_item(TableName=self.stack.table_name, Key={"pk": item["pk"]})


def poll_id(chain: str, item: Any, stand_in: str | None = None) -> str:
    """The eventId the fallback publishes a Poll API item under."""
    bid = item.get("businessEventId")
    bid = bid.get("id") if isinstance(bid, dict) else bid
    return poll_event_id(chain, str(bid)) if bid not in (None, "") else f"poll:{chain}:~{stand_in}"


def stream_id(event: StoredEvent) -> str:
    """The eventId of the stream's copy of a stored event."""
    return stream_event_id(event.chain, str(event.offset), event.unique_event_id)


# -- crashes and faults --------------------------------------------------------------------------


class Crash(BaseException):
    """The Lambda killed at a chosen point. Not an Exception: nothing in the tick may catch it."""


class CrashPlan:
    """Counts the calls made through `Wrapped` clients and a `PollTap` (labels as `call_label`).
    At call number `at` (None: never; counting only calls labelled `only`, when given) it crashes,
    `phase` "before" the call reaches the service or "after" it went through; every later call
    crashes too (a killed process does nothing more)."""

    def __init__(self, at: int | None = None, phase: str = "before", *, only: str | None = None) -> None:
        assert phase in ("before", "after")
        self.at = at
        self.phase = phase
        self.only = only
        self.calls: list[str] = []
        self.crashed = ""
        self._counted = 0
        self._lock = threading.Lock()

    def __call__(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self.crashed:
                raise Crash(f"after the crash: {label}")
            number = len(self.calls)
            self.calls.append(label)
            hit = False
            if self.only is None or label == self.only:
                hit = self._counted == self.at
                self._counted += 1
            if hit and self.phase == "before":
                self.crashed = f"before {label} (call {number})"
                raise Crash(self.crashed)
        if not hit:
            return fn(*args, **kwargs)
        with contextlib.suppress(Exception):  # whatever it answered, the process dies before reading it
            fn(*args, **kwargs)
        with self._lock:
            self.crashed = f"after {label} (call {number})"
        raise Crash(self.crashed)


def call_label(service: str, operation: str, kwargs: dict[str, Any]) -> str:
    """`sqs.send_message_batch`, `s3.put_object(spill)`, `dynamodb.update_item(seen)`, ..."""
    detail = ""
    if service == "s3" and "Key" in kwargs:
        detail = str(kwargs["Key"]).split("/", 1)[0]
    elif service == "dynamodb" and "Key" in kwargs:
        detail = str(kwargs["Key"]["pk"]["S"]).split("#", 1)[0]
        if detail == "fallback" and operation == "update_item":
            names = kwargs.get("ExpressionAttributeNames", {}).values()
            detail = "mark" if "lastPolledOccurredAt" in names else "save"
    return f"{service}.{operation}" + (f"({detail})" if detail else "")


Intercept = Callable[[str, dict[str, Any]], None]
"""Called with (operation, kwargs) before a wrapped call; may raise what the service would."""


class Wrapped:
    """A boto3 client whose calls go through a `CrashPlan` and an `Intercept`."""

    def __init__(
        self, client: Any, service: str, plan: CrashPlan | None = None, intercept: Intercept | None = None
    ) -> None:
        self._client = client
        self._service = service
        self._plan = plan
        self._intercept = intercept

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or name in ("meta", "exceptions", "get_paginator") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            def run() -> Any:
                if self._intercept is not None:
                    self._intercept(name, kwargs)
                return attr(*args, **kwargs)

            if self._plan is None:
                return run()
            return self._plan(call_label(self._service, name, kwargs), run)

        return call


def client_error(code: str, status: int, *, operation: str = "SendMessageBatch") -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


class PollTap(httpx.BaseTransport):
    """The fallback's HTTP transport to the local gateway. Records every item the Poll API served
    (`served`: what it dequeued, after `rewrite`), lets `rewrite` change a page, and runs each
    businessEvents request through `plan` (label `poll.GET`)."""

    def __init__(
        self,
        rewrite: Callable[[list[Any]], list[Any]] | None = None,
        plan: CrashPlan | None = None,
    ) -> None:
        self._inner = httpx.HTTPTransport()
        self.rewrite = rewrite
        self.plan = plan
        self.served: list[Any] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/businessEvents"):
            return self._inner.handle_request(request)
        if self.plan is not None:
            return self.plan("poll.GET", self._poll, request)  # type: ignore[no-any-return]
        return self._poll(request)

    def _poll(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        response.read()
        response.close()
        if response.status_code != 200:
            return httpx.Response(response.status_code, headers=response.headers, content=response.content)
        items = list(json.loads(response.content)["businessEventData"])
        if self.rewrite is not None:
            items = self.rewrite(items)
        self.served.extend(copy.deepcopy(items))
        return httpx.Response(200, json={"businessEventData": items}, request=request)

    def close(self) -> None:
        self._inner.close()


def assert_nothing_lost(
    rig: PollRig, served: list[Any], streamed: dict[str, StoredEvent], on_queue: set[str], where: str
) -> None:
    """The fallback's promise after any crash: each item the Poll API served is on the queue, in
    the spill, or not recorded (the stream's copy is not matched, so the stream publishes it); and
    nothing is recorded that is not on the queue. `streamed`: the stream's copy of each poll
    eventId; `on_queue`: the eventIds on the queue so far."""
    spilled = {poll_id(rig.chain, raw, stand_in) for raw, stand_in in rig.spilled()}
    recorded = rig.recorded()
    everything = set().union(*recorded.values()) if recorded else set()
    assert everything <= on_queue, f"{where}: recorded but not on the queue: {everything - on_queue}"
    newest_on_queue = None
    for raw in served:
        event_id = poll_id(rig.chain, raw)
        try:
            event = from_poll(raw, rig.chain, datetime.now(UTC))
        except MalformedEvent:  # no content key: nothing can record or match it
            continue
        if event_id in on_queue:
            newest_on_queue = max(newest_on_queue or event.occurred_at, event.occurred_at)
        if event_id in on_queue or event_id in spilled:
            continue
        assert not rig.seen.match(event.event_key, stream_id(streamed[event_id])), f"{where}: {event_id} lost"
    # The mark covers only what is on the queue (the stream looks up nothing newer).
    record = rig.state.get_fallback()
    mark = record.last_polled_occurred_at if record else None
    if mark is not None:
        assert newest_on_queue is not None, f"{where}: the mark was raised, but nothing is on the queue"
        assert mark <= newest_on_queue, f"{where}: the mark passed what is on the queue"


@pytest.fixture
def gateway() -> Iterator[LocalGateway]:
    with running_gateway(GatewayConfig()) as gw:
        yield gw


@pytest.fixture
def rig(gateway: LocalGateway, aws_stack: ProvisionedStack) -> PollRig:
    return PollRig(gateway, aws_stack)
