"""SqsPublisher against the moto server over HTTP.

Faults are injected on the real boto3 client with botocore event hooks: entries stripped from a
request before it is built and reported under `Failed` in the response (a partial batch failure),
canned error responses returned at `before-send` (throttling, 5xx), connection errors raised there,
and a `before-send` hook that holds the request until the test lets it go (a paused sender). Every
call that is not faulted is real HTTP to moto. botocore's own retries are off in these clients so
that the publisher's retry layer is what gets exercised.

Each test gets a fresh queue cloned from the template's queue (same FIFO, deduplication and size
attributes), which is ~50x faster than provisioning a whole stack per test.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

from ohip_local.aws import ProvisionedStack, provision
from ohip_local.faultproxy import FaultRule, running_fault_proxy
from ohip_relay.publish import (
    OutboundMessage,
    PublisherClosed,
    PublisherConfig,
    PublishError,
    PublishFailure,
    SqsPublisher,
)
from ohip_relay.sqs_http import SqsHttpTransport

from ..conftest import TEMPLATE

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

pytestmark = pytest.mark.integration

_CLONED_ATTRIBUTES = (
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "MaximumMessageSize",
    "VisibilityTimeout",
    "MessageRetentionPeriod",
)


# -- fixtures and helpers -----------------------------------------------------------------------


def _config() -> Config:
    return Config(retries={"mode": "standard", "total_max_attempts": 1})


def _sqs(stack: ProvisionedStack) -> SQSClient:
    return boto3.client("sqs", endpoint_url=stack.endpoint_url, region_name=stack.region, config=_config())


def _s3(stack: ProvisionedStack) -> S3Client:
    return boto3.client("s3", endpoint_url=stack.endpoint_url, region_name=stack.region, config=_config())


@pytest.fixture(scope="module")
def fifo_stack(aws_endpoint: str) -> ProvisionedStack:
    return provision(aws_endpoint, TEMPLATE, stack_name=f"pf{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def standard_stack(aws_endpoint: str) -> ProvisionedStack:
    return provision(
        aws_endpoint, TEMPLATE, stack_name=f"ps{uuid.uuid4().hex[:8]}", parameters={"QueueType": "standard"}
    )


def _fresh_queue(stack: ProvisionedStack, **overrides: str) -> str:
    """A new queue with the template queue's attributes (plus `overrides`)."""
    sqs = _sqs(stack)
    template = sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["All"])["Attributes"]
    attributes: dict[Any, str] = {name: template[name] for name in _CLONED_ATTRIBUTES if name in template}
    attributes.update(overrides)
    name = f"q{uuid.uuid4().hex[:12]}" + (".fifo" if stack.queue_url.endswith(".fifo") else "")
    return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]


@dataclass
class Outcomes:
    acked: list[Any] = field(default_factory=list)
    failures: list[PublishFailure] = field(default_factory=list)

    def on_ack(self, token: Any) -> None:
        self.acked.append(token)

    def on_failure(self, failure: PublishFailure) -> None:
        self.failures.append(failure)


def _publisher(
    client: SQSClient,
    queue_url: str,
    outcomes: Outcomes,
    *,
    s3: S3Client | None = None,
    http: bool = False,
    **config: Any,
) -> SqsPublisher:
    """`http`: SendMessageBatch through `SqsHttpTransport` (the stream consumer's) instead of boto3."""
    settings: dict[str, Any] = {"batch_window_s": 0.0, "retry_base_s": 0.001, "retry_max_s": 0.004}
    settings.update(config)
    transport = SqsHttpTransport(client, boto3.session.Session().get_credentials()) if http else None
    return SqsPublisher(
        client,
        queue_url,
        on_ack=outcomes.on_ack,
        on_failure=outcomes.on_failure,
        config=PublisherConfig(**settings),
        s3_client=s3,
        rng=random.Random(0),
        transport=transport,
    )


def _message(n: int, group: str = "HOTEL1-1", *, body: str | None = None, tag: str = "") -> OutboundMessage:
    key = f"{tag}evt-{n:05d}"
    return OutboundMessage(
        body=body if body is not None else json.dumps({"eventKey": key, "n": n, "group": group}),
        attributes={"eventName": "UPDATE RESERVATION", "hotelId": group.split("-")[0], "n": str(n)},
        group_id=group,
        dedup_id=key,
        ack_token=n,
    )


def _receive_all(client: SQSClient, queue_url: str, expected: int) -> list[MessageTypeDef]:
    """Everything in the queue, in receive order (deleting as it goes, so FIFO groups advance).

    Stops after one empty poll once `expected` messages arrived (so extras would be seen), or after
    a few empty polls in a row if they never do (the assertion on the count then fails).
    """
    received: list[MessageTypeDef] = []
    empty_in_a_row = 0
    while empty_in_a_row < (1 if len(received) >= expected else 3):
        response = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        messages = response.get("Messages", [])
        if not messages:
            empty_in_a_row += 1
            continue
        empty_in_a_row = 0
        received.extend(messages)
        client.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return received


def _canned_response(status: int, error_type: str, message: str = "injected") -> AWSResponse:
    class _Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield json.dumps({"__type": f"com.amazonaws.sqs#{error_type}", "message": message}).encode()

    headers = HTTPHeaders()
    headers["x-amzn-requestid"] = "injected"
    return AWSResponse("http://injected", status, headers, _Raw())


class EntryFaults:
    """Partial batch failures on a real client.

    `verdict(entry, attempt)` returns None to send the entry (real HTTP), or (code, sender_fault)
    to strip it from the request and report it under `Failed`, as SQS does for a failed entry.
    """

    def __init__(self, client: SQSClient, verdict: Callable[[dict[str, Any], int], tuple[str, bool] | None]):
        self._verdict = verdict
        self._lock = threading.Lock()
        self.attempts: defaultdict[str, int] = defaultdict(int)
        self.injected = 0
        events = client.meta.events
        events.register("before-parameter-build.sqs.SendMessageBatch", self._strip)
        events.register("before-call.sqs.SendMessageBatch", self._short_circuit)
        events.register("after-call.sqs.SendMessageBatch", self._report)

    def _strip(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        keep, failed = [], []
        for entry in params["Entries"]:
            with self._lock:
                key = entry.get("MessageDeduplicationId") or entry["MessageBody"]
                self.attempts[key] += 1
                verdict = self._verdict(entry, self.attempts[key])
            if verdict is None:
                keep.append(entry)
            else:
                code, sender_fault = verdict
                failed.append(
                    {"Id": entry["Id"], "SenderFault": sender_fault, "Code": code, "Message": "injected"}
                )
        with self._lock:
            self.injected += len(failed)
        context["injected_failed"] = failed
        if keep:
            params["Entries"] = keep
        else:
            context["injected_all"] = True  # an empty request is invalid: answer without sending

    def _short_circuit(self, context: dict[str, Any], **_: Any) -> Any:
        if not context.get("injected_all"):
            return None
        http = AWSResponse("http://injected", 200, HTTPHeaders(), None)
        return http, {"Successful": [], "Failed": [], "ResponseMetadata": {"HTTPStatusCode": 200}}

    def _report(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        parsed.setdefault("Failed", []).extend(context.get("injected_failed", []))


class PausedSender:
    """Holds every SendMessageBatch request in its worker thread until `release()`."""

    def __init__(self, client: SQSClient) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        client.meta.events.register("before-send.sqs.SendMessageBatch", self._hold)

    def _hold(self, **_: Any) -> None:
        self.entered.set()
        self.gate.wait(timeout=30)  # a safety net only; tests always release

    async def wait_until_sending(self) -> None:
        await asyncio.to_thread(self.entered.wait, 30)
        assert self.entered.is_set()

    def release(self) -> None:
        self.gate.set()


async def _yield_to_loop(times: int = 20) -> None:
    """Let every ready task run a few steps (no wall-clock waiting involved)."""
    for _ in range(times):
        await asyncio.sleep(0)


# -- order, attributes, ids ---------------------------------------------------------------------


@pytest.mark.parametrize("http", [False, True], ids=["boto3", "http"])
async def test_fifo_keeps_order_per_group_and_sets_ids(fifo_stack: ProvisionedStack, http: bool) -> None:
    sqs = _sqs(fifo_stack)
    queue = _fresh_queue(fifo_stack)
    outcomes = Outcomes()
    groups = [f"HOTEL{h}-{r}" for h in (1, 2) for r in (100, 200, 300)]
    rng = random.Random(3)
    messages = [_message(n, rng.choice(groups)) for n in range(30)]
    async with _publisher(sqs, queue, outcomes, http=http) as publisher:
        assert publisher.is_fifo
        for message in messages:
            await publisher.submit(message)
        await publisher.flush()
        stats = publisher.stats
    assert sorted(outcomes.acked) == list(range(30))
    assert outcomes.failures == []
    assert stats.published == 30
    assert 1 < stats.batches < 30  # batched: several groups per request

    received = _receive_all(sqs, queue, 30)
    assert len(received) == 30
    by_group: defaultdict[str, list[int]] = defaultdict(list)
    for item in received:
        body = json.loads(item["Body"])
        system = item.get("Attributes", {})
        assert system["MessageGroupId"] == body["group"]
        assert system["MessageDeduplicationId"] == body["eventKey"]
        attributes = item["MessageAttributes"]
        assert attributes["eventName"] == {"StringValue": "UPDATE RESERVATION", "DataType": "String"}
        assert attributes["n"]["StringValue"] == str(body["n"])
        by_group[body["group"]].append(body["n"])
    for group, numbers in by_group.items():
        assert numbers == [m.ack_token for m in messages if m.group_id == group]


@pytest.mark.parametrize("http", [False, True], ids=["boto3", "http"])
async def test_standard_queue_batches_without_group_or_dedup(
    standard_stack: ProvisionedStack, http: bool
) -> None:
    sqs = _sqs(standard_stack)
    queue = _fresh_queue(standard_stack)
    outcomes = Outcomes()
    async with _publisher(sqs, queue, outcomes, http=http) as publisher:
        assert not publisher.is_fifo
        for n in range(25):  # submitted without yielding: all 25 are ready together
            await publisher.submit(_message(n, f"HOTEL1-{n % 3}"))
        await publisher.flush()
        assert publisher.stats.batches == 3  # 10 + 10 + 5
    assert sorted(outcomes.acked) == list(range(25))
    received = _receive_all(sqs, queue, 25)
    assert sorted(json.loads(m["Body"])["n"] for m in received) == list(range(25))
    for item in received:
        system = item.get("Attributes", {})
        assert "MessageGroupId" not in system
        assert "MessageDeduplicationId" not in system
        assert item["MessageAttributes"]["hotelId"]["StringValue"] == "HOTEL1"


# -- retries ------------------------------------------------------------------------------------


async def test_partial_batch_failures_are_retried_in_group_order(fifo_stack: ProvisionedStack) -> None:
    sqs = _sqs(fifo_stack)
    queue = _fresh_queue(fifo_stack)
    doomed = {f"evt-{n:05d}" for n in random.Random(11).sample(range(24), 9)}

    def verdict(entry: dict[str, Any], attempt: int) -> tuple[str, bool] | None:
        # First attempt of a chosen entry fails (some twice), as a server-side fault would.
        key = entry["MessageDeduplicationId"]
        if key in doomed and attempt <= (2 if key.endswith("3") else 1):
            return ("InternalError", False)
        return None

    faults = EntryFaults(sqs, verdict)
    outcomes = Outcomes()
    groups = ["HOTEL1-A", "HOTEL1-B", "HOTEL2-A"]
    messages = [_message(n, groups[n % 3]) for n in range(24)]
    async with _publisher(sqs, queue, outcomes) as publisher:
        for message in messages:
            await publisher.submit(message)
        await publisher.flush()
        stats = publisher.stats
    assert faults.injected >= len(doomed)
    assert stats.retried == faults.injected
    assert sorted(outcomes.acked) == list(range(24))  # each acknowledged once
    assert outcomes.failures == []
    received = _receive_all(sqs, queue, 24)
    assert len(received) == 24  # stripped entries never reached SQS: no duplicates either
    by_group: defaultdict[str, list[int]] = defaultdict(list)
    for item in received:
        body = json.loads(item["Body"])
        by_group[body["group"]].append(body["n"])
    for group in groups:
        assert by_group[group] == [m.ack_token for m in messages if m.group_id == group]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda: _canned_response(400, "ThrottlingException", "Rate exceeded"), id="throttled"),
        pytest.param(lambda: _canned_response(500, "InternalError"), id="server-error"),
        pytest.param(lambda: EndpointConnectionError(endpoint_url="http://sqs"), id="connection-error"),
    ],
)
async def test_failed_requests_are_retried(fifo_stack: ProvisionedStack, fault: Callable[[], Any]) -> None:
    sqs = _sqs(fifo_stack)
    queue = _fresh_queue(fifo_stack)
    calls = {"n": 0}

    def first_two_fail(**_: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 2:
            return None  # real HTTP from here on
        outcome = fault()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    sqs.meta.events.register("before-send.sqs.SendMessageBatch", first_two_fail)
    outcomes = Outcomes()
    async with _publisher(sqs, queue, outcomes, max_batches_in_flight=1) as publisher:
        for n in range(5):
            await publisher.submit(_message(n, f"G-{n}"))
        await publisher.flush()
        stats = publisher.stats
    assert sorted(outcomes.acked) == list(range(5))
    assert stats.retried == 10  # 5 entries, twice each
    assert len(_receive_all(sqs, queue, 5)) == 5


async def test_lost_response_is_resent_and_deduplicated(fifo_stack: ProvisionedStack) -> None:
    """The request reached SQS but the response was lost: not acknowledged, sent again, and the
    FIFO deduplication id keeps a single copy in the queue."""
    sqs = _sqs(fifo_stack)
    queue = _fresh_queue(fifo_stack)
    calls = {"n": 0}

    def lose_first_response(**_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionClosedError(endpoint_url="http://sqs")

    sqs.meta.events.register("after-call.sqs.SendMessageBatch", lose_first_response)
    outcomes = Outcomes()
    async with _publisher(sqs, queue, outcomes) as publisher:
        for n in range(3):
            await publisher.submit(_message(n, f"G-{n}"))
        await publisher.flush()
        assert publisher.stats.retried == 3
    assert sorted(outcomes.acked) == [0, 1, 2]
    received = _receive_all(sqs, queue, 3)
    assert sorted(json.loads(m["Body"])["n"] for m in received) == [0, 1, 2]


async def test_sender_fault_is_reported_not_retried(fifo_stack: ProvisionedStack) -> None:
    sqs = _sqs(fifo_stack)
    queue = _fresh_queue(fifo_stack)

    def verdict(entry: dict[str, Any], attempt: int) -> tuple[str, bool] | None:
        return ("InvalidMessageContents", True) if entry["MessageDeduplicationId"] == "evt-00002" else None

    faults = EntryFaults(sqs, verdict)
    outcomes = Outcomes()
    async with _publisher(sqs, queue, outcomes) as publisher:
        for n in range(5):
            await publisher.submit(_message(n, "G-same"))  # one group: the failure must not block it
        await publisher.flush()
        stats = publisher.stats
    assert outcomes.acked == [0, 1, 3, 4]
    assert [(f.ack_token, f.code, f.attempts) for f in outcomes.failures] == [
        (2, "InvalidMessageContents", 1)
    ]
    assert (stats.failed, stats.retried, faults.attempts["evt-00002"]) == (1, 0, 1)
    assert "body" not in repr(outcomes.failures[0]).lower()
    received = _receive_all(sqs, queue, 4)
    assert [json.loads(m["Body"])["n"] for m in received] == [0, 1, 3, 4]


async def test_request_rejected_for_one_entry_is_split_to_find_it(fifo_stack: ProvisionedStack) -> None:
    """moto rejects a whole SendMessageBatch when one entry exceeds the queue's size: the publisher
    (told a wrong, larger limit) resends the entries one by one and only the oversize one fails."""
    sqs = _sqs(fifo_stack)
    queue = _fresh_queue(fifo_stack, MaximumMessageSize="1024")
    outcomes = Outcomes()
    async with _publisher(sqs, queue, outcomes, max_message_bytes=8192) as publisher:
        await publisher.submit(_message(0, "G-0"))
        await publisher.submit(_message(1, "G-1", body="x" * 3000))
        await publisher.submit(_message(2, "G-2"))
        await publisher.flush()
        stats = publisher.stats
    assert sorted(outcomes.acked) == [0, 2]
    assert [(f.ack_token, f.code) for f in outcomes.failures] == [(1, "InvalidParameterValue")]
    assert stats.batches == 4  # the rejected one, then three single-entry requests


async def test_max_attempts_turns_endless_throttling_into_a_failure(fifo_stack: ProvisionedStack) -> None:
    sqs = _sqs(fifo_stack)
    queue = _fresh_queue(fifo_stack)

    def always_throttled(**_: Any) -> Any:
        return _canned_response(400, "ThrottlingException")

    sqs.meta.events.register("before-send.sqs.SendMessageBatch", always_throttled)
    outcomes = Outcomes()
    async with _publisher(sqs, queue, outcomes, max_attempts=3) as publisher:
        await publisher.submit(_message(7))
        await publisher.flush()
        stats = publisher.stats
    assert outcomes.acked == []
    assert [(f.ack_token, f.code, f.attempts) for f in outcomes.failures] == [(7, "ThrottlingException", 3)]
    assert (stats.retried, stats.failed, stats.batches) == (2, 1, 3)


# -- claim check --------------------------------------------------------------------------------


async def test_oversize_message_goes_to_s3_with_a_pointer(fifo_stack: ProvisionedStack) -> None:
    sqs, s3 = _sqs(fifo_stack), _s3(fifo_stack)
    queue = _fresh_queue(fifo_stack, MaximumMessageSize="2048")  # read by start()
    outcomes = Outcomes()
    big_body = json.dumps({"eventKey": "c-evt-00001", "detail": "é" * 3000})  # 2-byte characters
    async with _publisher(
        sqs, queue, outcomes, s3=s3, claim_check_bucket=fifo_stack.bucket_name, claim_check_prefix="oversize/"
    ) as publisher:
        assert publisher.max_message_bytes == 2048
        await publisher.submit(_message(0, "G-1", tag="c-"))
        await publisher.submit(_message(1, "G-1", body=big_body, tag="c-"))
        await publisher.flush()
        assert publisher.stats.claim_checks == 1
    assert outcomes.acked == [0, 1]

    received = _receive_all(sqs, queue, 2)
    assert [json.loads(m["Body"]).get("n") for m in received] == [0, None]
    pointer = json.loads(received[1]["Body"])
    expected_bytes = len(big_body.encode())
    assert pointer == {
        "schemaVersion": 1,
        "eventKey": "c-evt-00001",
        "claimCheck": {
            "bucket": fifo_stack.bucket_name,
            "key": "oversize/c-evt-00001.json",
            "bytes": expected_bytes,
        },
    }
    assert received[1]["MessageAttributes"]["n"]["StringValue"] == "1"
    stored = s3.get_object(Bucket=fifo_stack.bucket_name, Key="oversize/c-evt-00001.json")
    assert stored["ContentType"] == "application/json"
    assert stored["Body"].read() == big_body.encode()


async def test_oversize_without_bucket_is_a_clear_failure(fifo_stack: ProvisionedStack) -> None:
    sqs = _sqs(fifo_stack)
    queue = _fresh_queue(fifo_stack, MaximumMessageSize="1024")
    outcomes = Outcomes()
    async with _publisher(sqs, queue, outcomes) as publisher:
        await publisher.submit(_message(0, "G-1", body="y" * 2000))
        await publisher.submit(_message(1, "G-1"))
        await publisher.flush()
        assert publisher.stats.failed == 1
    assert outcomes.acked == [1]
    (failure,) = outcomes.failures
    assert failure.code == "MessageTooLarge"
    assert "no claim-check bucket" in failure.reason
    assert "yyyy" not in failure.reason


async def test_claim_check_upload_failure_is_reported(fifo_stack: ProvisionedStack) -> None:
    sqs, s3 = _sqs(fifo_stack), _s3(fifo_stack)
    queue = _fresh_queue(fifo_stack, MaximumMessageSize="1024")
    outcomes = Outcomes()
    async with _publisher(sqs, queue, outcomes, s3=s3, claim_check_bucket="no-such-bucket-here") as publisher:
        await publisher.submit(_message(0, "G-1", body="z" * 2000))
        await publisher.flush()
    (failure,) = outcomes.failures
    assert failure.code == "NoSuchBucket"
    assert "s3://no-such-bucket-here" in failure.reason
    assert outcomes.acked == []


# -- backpressure, flush, close -----------------------------------------------------------------


async def test_submit_waits_while_the_buffer_is_full(fifo_stack: ProvisionedStack) -> None:
    sqs = _sqs(fifo_stack)
    queue = _fresh_queue(fifo_stack)
    paused = PausedSender(sqs)
    outcomes = Outcomes()
    publisher = _publisher(sqs, queue, outcomes, max_buffered=3)
    await publisher.start()
    try:
        for n in range(3):
            await publisher.submit(_message(n, f"G-{n}"))  # returns at once: there is room
        await paused.wait_until_sending()
        fourth = asyncio.create_task(publisher.submit(_message(3, "G-3")))
        await _yield_to_loop()
        assert not fourth.done()  # blocked: 3 owned, none acknowledged while SQS is held
        assert publisher.buffered == 3
        paused.release()
        await fourth  # room appears once SQS acknowledges
        await publisher.flush()
    finally:
        paused.release()
        await publisher.close()
    assert sorted(outcomes.acked) == [0, 1, 2, 3]
    assert publisher.stats.buffered == 0


async def test_close_with_a_deadline_abandons_without_acknowledging(fifo_stack: ProvisionedStack) -> None:
    sqs = _sqs(fifo_stack)
    queue = _fresh_queue(fifo_stack)
    paused = PausedSender(sqs)
    outcomes = Outcomes()
    publisher = _publisher(sqs, queue, outcomes)
    await publisher.start()
    try:
        for n in range(4):
            await publisher.submit(_message(n, "G-1"))
        await paused.wait_until_sending()
        abandoned = await publisher.close(drain_timeout=0)
    finally:
        paused.release()
    assert abandoned == 4
    assert outcomes.acked == []  # whatever SQS did with the held request, nothing was acknowledged
    assert outcomes.failures == []
    assert publisher.stats.abandoned == 4
    with pytest.raises(PublisherClosed):
        await publisher.submit(_message(9))
    assert await publisher.close() == 0


async def test_stats_and_latency_samples(standard_stack: ProvisionedStack) -> None:
    sqs = _sqs(standard_stack)
    queue = _fresh_queue(standard_stack)
    outcomes = Outcomes()
    async with _publisher(sqs, queue, outcomes) as publisher:
        for n in range(12):
            await publisher.submit(_message(n))
        await publisher.flush()
        samples = publisher.take_latency_samples()
        stats = publisher.stats
        assert publisher.take_latency_samples() == []
    assert len(samples) == 12
    assert all(sample >= 0 for sample in samples)
    assert (stats.submitted, stats.published, stats.failed, stats.buffered, stats.batches) == (
        12,
        12,
        0,
        0,
        2,
    )


async def test_window_gathers_a_batch_and_flush_cuts_it_short(standard_stack: ProvisionedStack) -> None:
    """With a long window, messages submitted while the loop runs other work still share one batch;
    `flush()` sends at once instead of waiting the window out."""
    sqs = _sqs(standard_stack)
    queue = _fresh_queue(standard_stack)
    outcomes = Outcomes()
    async with _publisher(sqs, queue, outcomes, batch_window_s=30.0) as publisher:
        for n in range(3):
            await publisher.submit(_message(n))
            await _yield_to_loop()  # the dispatcher runs, sees one ready entry, and waits for more
        assert publisher.stats.batches == 0
        async with asyncio.timeout(10):  # a safety net: without the flush rule this would take 30 s
            await publisher.flush()
        assert publisher.stats.batches == 1
    assert sorted(outcomes.acked) == [0, 1, 2]


async def test_a_failing_callback_does_not_stop_the_publisher(standard_stack: ProvisionedStack) -> None:
    sqs = _sqs(standard_stack)
    queue = _fresh_queue(standard_stack)
    acked: list[int] = []

    def on_ack(token: int) -> None:
        if token == 1:
            raise RuntimeError("consumer bug")
        acked.append(token)

    publisher = SqsPublisher(
        sqs, queue, on_ack=on_ack, on_failure=Outcomes().on_failure, config=PublisherConfig(batch_window_s=0)
    )
    async with publisher:
        for n in range(3):
            await publisher.submit(_message(n))
        await publisher.flush()
        for n in range(3, 5):
            await publisher.submit(_message(n))
        await publisher.flush()
    assert sorted(acked) == [0, 2, 3, 4]
    assert publisher.stats.published == 5


async def test_start_fails_clearly_without_the_queue(fifo_stack: ProvisionedStack) -> None:
    sqs = _sqs(fifo_stack)
    missing = fifo_stack.queue_url.rsplit("/", 1)[0] + "/does-not-exist.fifo"
    publisher = _publisher(sqs, missing, Outcomes())
    with pytest.raises(PublishError, match=r"GetQueueAttributes on .*does-not-exist\.fifo failed"):
        await publisher.start()
    with pytest.raises(PublishError, match="start"):
        await publisher.submit(_message(0))


async def test_start_waits_out_sqs_being_unavailable(fifo_stack: ProvisionedStack) -> None:
    """Found by the chaos suite (seed 119): a 503 burst at start-up made the relay exit as if its
    configuration were wrong. Retryable errors are tried again for `start_timeout_s`."""
    with running_fault_proxy(fifo_stack.endpoint_url) as proxy:
        sqs = boto3.client("sqs", endpoint_url=proxy.url, region_name=fifo_stack.region, config=_config())
        rule = proxy.add(FaultRule("sqs", error="unavailable", operation="GetQueueAttributes", count=3))
        outcomes = Outcomes()
        async with _publisher(sqs, _fresh_queue(fifo_stack), outcomes, retry_base_s=0.01) as publisher:
            assert rule.injected == 3
            assert publisher.max_message_bytes > 0
            await publisher.submit(_message(1))
            await publisher.flush()
        assert outcomes.acked == [1]

        proxy.add(FaultRule("sqs", error="throttle", operation="GetQueueAttributes"))  # for ever
        stuck = _publisher(sqs, _fresh_queue(fifo_stack), Outcomes(), retry_base_s=0.01, start_timeout_s=0.5)
        with pytest.raises(PublishError, match=r"still failing \(RequestThrottled\) after 0\.5s; SQS or the"):
            await stuck.start()
