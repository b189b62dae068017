"""SqsHttpTransport on the wire, over real sockets.

moto accepts any signature and answers only what it implements, so here a small recording endpoint
(aiohttp, loopback) plays SQS: it keeps each request's exact bytes and headers, checks the SigV4
signature against what was actually sent, and answers what a test tells it to (acknowledgements,
partial failures, AWS's JSON error shapes, silence, a dropped connection). The same answers go to a
real boto3 client as a reference: the transport must send what boto3 sends and return or raise what
boto3 returns or raises. End-to-end runs against moto are in test_publish.py (the `http` cases) and
in the stream consumer's tests, which use this transport by default.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import pytest
import pytest_asyncio
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from ohip_relay.publish import OutboundMessage, PublisherConfig, PublishError, SqsPublisher, classify_error
from ohip_relay.sqs_http import SqsHttpTransport

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

REGION = "eu-west-1"
QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/relay-events.fifo"
TIMEOUT = 10.0


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = Callable[[Received], web.StreamResponse | None]


class Endpoint:
    """A loopback HTTP endpoint that records requests and answers with `answer` (default: all OK)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answer: Answer = acknowledge_all
        self.release = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.method, request.path_qs, dict(request.headers), await request.read())
        self.requests.append(received)
        response = self.answer(received)
        if response is None:  # hold the request until the test releases it
            await self.release.wait()
            return web.Response(status=503)
        if response.status == 599:  # drop the connection without an answer
            assert request.transport is not None
            request.transport.close()
            await self.release.wait()
        return response


def acknowledge_all(received: Received, failed: frozenset[str] = frozenset()) -> web.Response:
    entries = json.loads(received.body)["Entries"]
    document: dict[str, Any] = {
        "Successful": [
            {"Id": e["Id"], "MessageId": f"m-{e['Id']}", "MD5OfMessageBody": "0" * 32, "SequenceNumber": "1"}
            for e in entries
            if e["Id"] not in failed
        ]
    }
    if failed:
        document["Failed"] = [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
            for e in entries
            if e["Id"] in failed
        ]
    return web.Response(
        body=json.dumps(document).encode(),
        content_type="application/x-amz-json-1.0",
        headers={"x-amzn-RequestId": "req-1"},
    )


def aws_error(status: int, json_type: str, query_code: str, message: str) -> Answer:
    def answer(received: Received) -> web.Response:
        return web.Response(
            status=status,
            body=json.dumps({"__type": json_type, "message": message}).encode(),
            content_type="application/x-amz-json-1.0",
            headers={"x-amzn-query-error": query_code, "x-amzn-RequestId": "req-2"},
        )

    return answer


def signature_verifies(received: Received, secret_key: str) -> bool:
    """Recompute the SigV4 signature from what arrived on the wire (signed headers, path, body)."""
    scheme, _, fields = received.headers["Authorization"].partition(" ")
    assert scheme == "AWS4-HMAC-SHA256"
    parts = dict(item.strip().split("=", 1) for item in fields.split(","))
    access_key, day, region, service, terminator = parts["Credential"].split("/")
    assert terminator == "aws4_request"
    signed = parts["SignedHeaders"].split(";")
    lower = {name.lower(): value for name, value in received.headers.items()}
    request = AWSRequest(
        method=received.method,
        url=f"http://{lower['host']}{received.path}",
        data=received.body,
        headers={name: lower[name] for name in signed},
    )
    request.context["timestamp"] = lower["x-amz-date"]
    assert lower["x-amz-date"].startswith(day)
    token = lower.get("x-amz-security-token")
    signer = SigV4Auth(Credentials(access_key, secret_key, token), service, region)
    if sorted(signer.headers_to_sign(request)) != sorted(signed):
        return False
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return hmac.compare_digest(expected, parts["Signature"])


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    server = Endpoint()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _client(url: str) -> SQSClient:
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=2, read_timeout=5)
    return boto3.client("sqs", endpoint_url=url, region_name=REGION, config=config)


def _credentials() -> Credentials:
    return Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])


def _entries(count: int = 4) -> list[SendMessageBatchRequestEntryTypeDef]:
    return [
        {
            "Id": str(n),
            "MessageBody": json.dumps({"eventKey": f"k{n}", "note": 'quotes " and \\ and é and 😀'}),
            "MessageAttributes": {"eventName": {"DataType": "String", "StringValue": "NEW RESERVATION"}},
            "MessageGroupId": f"HOTEL1-{n}",
            "MessageDeduplicationId": f"k{n}",
        }
        for n in range(count)
    ]


async def _via_boto3(client: SQSClient, entries: list[SendMessageBatchRequestEntryTypeDef]) -> Any:
    return await asyncio.to_thread(client.send_message_batch, QueueUrl=QUEUE, Entries=entries)


async def _transport(url: str, credentials: Credentials | None = None, **options: Any) -> SqsHttpTransport:
    transport = SqsHttpTransport(_client(url), credentials or _credentials(), **options)
    await transport.start()
    return transport


_E = TypeVar("_E", bound=BaseException)


async def _failure(transport: SqsHttpTransport, expected: type[_E]) -> _E:
    """Send one entry; the exception it must raise."""
    with pytest.raises(expected) as raised:
        async with asyncio.timeout(TIMEOUT):
            await transport.send_message_batch(QUEUE, _entries(1))
    return raised.value


async def test_the_request_is_boto3s_and_its_signature_covers_what_was_sent(endpoint: Endpoint) -> None:
    endpoint.answer = lambda received: acknowledge_all(received, failed=frozenset({"2"}))
    entries = _entries()
    reference = await _via_boto3(_client(endpoint.url), entries)
    transport = await _transport(endpoint.url)
    try:
        async with asyncio.timeout(TIMEOUT):
            result = await transport.send_message_batch(QUEUE, entries)
    finally:
        await transport.close()

    boto_request, ours = endpoint.requests
    for name in ("X-Amz-Target", "Content-Type"):
        assert ours.headers[name] == boto_request.headers[name]
    assert (ours.method, ours.path) == (boto_request.method, boto_request.path) == ("POST", "/")
    assert json.loads(ours.body) == json.loads(boto_request.body) == {"QueueUrl": QUEUE, "Entries": entries}
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert signature_verifies(boto_request, secret)  # the checker itself agrees with botocore's client
    assert signature_verifies(ours, secret)
    assert not signature_verifies(ours, secret + "x")
    tampered = Received(ours.method, ours.path, ours.headers, ours.body.replace(b"k1", b"k9"))
    assert not signature_verifies(tampered, secret)

    assert result["Successful"] == reference["Successful"]
    assert (
        result["Failed"]
        == reference["Failed"]
        == [{"Id": "2", "SenderFault": False, "Code": "InternalError", "Message": "try again"}]
    )
    assert result["ResponseMetadata"]["HTTPStatusCode"] == 200


@pytest.mark.parametrize(
    ("status", "json_type", "query_code", "retryable"),
    [
        (400, "com.amazonaws.sqs#QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue;Sender", False),
        (400, "com.amazonaws.sqs#RequestThrottled", "RequestThrottled;Sender", True),
        (400, "com.amazonaws.sqs#InvalidParameterValue", "InvalidParameterValue;Sender", False),
        (500, "com.amazonaws.sqs#InternalError", "InternalError;Receiver", True),
        (503, "com.amazonaws.sqs#ServiceUnavailable", "ServiceUnavailable;Receiver", True),
    ],
    ids=["no-queue", "throttled", "invalid", "internal", "unavailable"],
)
async def test_errors_come_out_as_boto3_raises_them(
    endpoint: Endpoint, status: int, json_type: str, query_code: str, retryable: bool
) -> None:
    endpoint.answer = aws_error(status, json_type, query_code, "said the server")
    with pytest.raises(ClientError) as reference:
        await _via_boto3(_client(endpoint.url), _entries(1))
    transport = await _transport(endpoint.url)
    try:
        raised = await _failure(transport, ClientError)
    finally:
        await transport.close()
    assert raised.response["Error"] == reference.value.response["Error"]
    assert raised.response["Error"]["Code"] == query_code.split(";")[0]
    assert raised.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert classify_error(raised) == classify_error(reference.value)
    assert classify_error(raised)[0] is retryable


async def test_a_closed_port_is_a_retryable_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = await _transport(f"http://127.0.0.1:{port}", connect_timeout=2.0)
    try:
        refused = await _failure(transport, EndpointConnectionError)
    finally:
        await transport.close()
    assert classify_error(refused)[0] is True


async def test_a_silent_endpoint_times_out_and_a_dropped_one_is_closed(endpoint: Endpoint) -> None:
    transport = await _transport(endpoint.url, read_timeout=0.3)
    try:
        endpoint.answer = lambda received: None
        silent = await _failure(transport, ReadTimeoutError)
        endpoint.answer = lambda received: web.Response(status=599)
        dropped = await _failure(transport, ConnectionClosedError)
    finally:
        endpoint.release.set()
        await transport.close()
    assert classify_error(silent)[0] is True
    assert classify_error(dropped)[0] is True


async def test_credentials_are_refreshed_off_the_event_loop(endpoint: Endpoint) -> None:
    refreshed_on: list[int] = []

    def metadata(secret: str, token: str, valid_for: timedelta) -> dict[str, str]:
        expiry = (datetime.now(UTC) + valid_for).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"access_key": "AKIDREFRESHED", "secret_key": secret, "token": token, "expiry_time": expiry}

    def refresh() -> dict[str, str]:
        refreshed_on.append(threading.get_ident())
        return metadata("new-secret", "new-token", timedelta(hours=1))

    # Expiring within botocore's advisory window: the next request needs a refresh first.
    credentials = RefreshableCredentials.create_from_metadata(
        metadata("old-secret", "old-token", timedelta(minutes=5)), refresh, "test"
    )
    transport = await _transport(endpoint.url, credentials)
    try:
        async with asyncio.timeout(TIMEOUT):
            await transport.send_message_batch(QUEUE, _entries(1))
    finally:
        await transport.close()
    assert refreshed_on
    assert refreshed_on[0] != threading.get_ident()
    (received,) = endpoint.requests
    assert received.headers["X-Amz-Security-Token"] == "new-token"
    assert signature_verifies(received, "new-secret")


async def test_without_credentials_the_publisher_does_not_start(endpoint: Endpoint) -> None:
    with pytest.raises(NoCredentialsError):
        await SqsHttpTransport(_client(endpoint.url), None).start()
    publisher = SqsPublisher(
        _client(endpoint.url),
        QUEUE,
        on_ack=lambda token: None,
        on_failure=lambda failure: None,
        config=PublisherConfig(max_message_bytes=262_144),
        transport=SqsHttpTransport(_client(endpoint.url), None),
    )
    with pytest.raises(PublishError, match=r"the SQS transport cannot start \(NoCredentialsError\)"):
        await publisher.start()
    with pytest.raises(PublishError):
        await publisher.submit(OutboundMessage(body="{}", attributes={}, group_id="g", dedup_id="d"))
    assert endpoint.requests == []
