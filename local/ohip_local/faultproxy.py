"""A fault-injecting reverse proxy in front of the local AWS endpoint (moto), for the chaos suite.

The relay (and a poll tick) point `AWS_ENDPOINT_URL` at the proxy; everything else (the queue reader,
the checkpoint sampler) talks to moto directly. Each request is matched against the active rules
by service (from `X-Amz-Target`: `AmazonSQS.*` is SQS, `DynamoDB_20120810.*` is DynamoDB; anything
else, S3 for example, is `s3`) and operation; a matching rule answers in the AWS JSON protocol shape
boto3 parses (`__type`, `message`, and for SQS the `x-amzn-query-error` header of its
query-compatible JSON protocol):

    error        HTTP  SQS code (JSON __type / query code)        DynamoDB code
    internal     500   InternalError                               InternalServerError
    unavailable  503   ServiceUnavailable                          ServiceUnavailable (503)
    throttle     400   ThrottlingException / RequestThrottled      ProvisionedThroughputExceededException
    slow         -     forwarded after `delay` seconds             forwarded after `delay` seconds
    partial      200   SendMessageBatch only: entries moto accepted are reported as failed (InternalError)
    refuse       200   SendMessageBatch only, not forwarded: every entry refused for its content
                       (InvalidMessageContents, a sender fault: never worth retrying), as SQS refuses a
                       body with characters it does not accept

`phase`: `before` refuses without forwarding (nothing happened); `after` forwards first and then
answers with the error: the write happened but the client cannot know (an ambiguous failure, as a
lost response or a 500 after commit are in AWS). botocore's own retries (the relay's clients: standard
mode, up to 5 retries) see these errors too, so a burst of `count` >= 6 reaches the relay's own
retry logic.

    with running_fault_proxy(moto_endpoint) as proxy:
        proxy.add(FaultRule("sqs", error="throttle", count=8))
        env["AWS_ENDPOINT_URL"] = proxy.url
        ...
        proxy.stats()  # injections per rule and per (service, operation)

Rules are changed from any thread; the proxy runs on its own thread and event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

log = logging.getLogger(__name__)

SERVICES = ("sqs", "dynamodb", "s3", "*")
ERRORS = ("internal", "unavailable", "throttle", "slow", "partial", "refuse")
_BATCH_ONLY = ("partial", "refuse")
PHASES = ("before", "after")

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}

# (status, JSON __type, SQS query-compatible code "Code;Fault") per service and error.
_SHAPES: dict[tuple[str, str], tuple[int, str, str | None]] = {
    ("sqs", "internal"): (500, "com.amazonaws.sqs#InternalError", "InternalError;Receiver"),
    ("sqs", "unavailable"): (503, "com.amazonaws.sqs#ServiceUnavailable", "ServiceUnavailable;Receiver"),
    ("sqs", "throttle"): (400, "com.amazonaws.sqs#ThrottlingException", "RequestThrottled;Sender"),
    ("dynamodb", "internal"): (500, "com.amazon.coral.service#InternalServerError", None),
    ("dynamodb", "unavailable"): (503, "com.amazon.coral.availability#ServiceUnavailableException", None),
    (
        "dynamodb",
        "throttle",
    ): (400, "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException", None),
}
_MESSAGES = {
    "internal": "We encountered an internal error. Please try again.",
    "unavailable": "The service is unavailable. Please try again shortly.",
    "throttle": "Rate exceeded",
}


@dataclass
class FaultRule:
    """One fault: which requests it hits and what they get. See the module docstring."""

    service: str = "*"
    error: str = "internal"
    operation: str | None = None  # e.g. "SendMessageBatch", "UpdateItem"; None: every operation
    phase: str = "before"
    count: int | None = None  # how many injections are left; None: until removed or expired
    probability: float = 1.0
    delay: float = 0.0  # seconds (error "slow"; also added before any other error)
    duration: float | None = None  # seconds from when it is added; None: no expiry
    injected: int = 0
    expires_at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.service not in SERVICES:
            raise ValueError(f"service must be one of {', '.join(SERVICES)}")
        if self.error not in ERRORS:
            raise ValueError(f"error must be one of {', '.join(ERRORS)}")
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be from 0 to 1")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1")
        if self.error in _BATCH_ONLY and self.service not in ("sqs", "*"):
            raise ValueError(f"{self.error} applies to SQS SendMessageBatch only")

    def describe(self) -> str:
        scope = f"{self.service}{'.' + self.operation if self.operation else ''}"
        limit = f" x{self.count}" if self.count is not None else ""
        window = f" for {self.duration:g}s" if self.duration is not None else ""
        chance = f" p={self.probability:.2f}" if self.probability < 1 else ""
        delay = f" delay={self.delay:.2f}s" if self.delay else ""
        return f"{scope} {self.error}/{self.phase}{limit}{window}{chance}{delay}"

    def live(self, now: float) -> bool:
        if self.count is not None and self.injected >= self.count:
            return False
        return self.expires_at is None or now < self.expires_at

    def matches(self, service: str, operation: str) -> bool:
        if self.service not in ("*", service):
            return False
        if self.operation is not None and self.operation != operation:
            return False
        if self.error in _BATCH_ONLY:
            return service == "sqs" and operation == "SendMessageBatch"
        return True


def classify_request(headers: Any) -> tuple[str, str]:
    """(service, operation) of a request from its `X-Amz-Target` header (S3 has none)."""
    target = str(headers.get("X-Amz-Target", ""))
    prefix, _, operation = target.partition(".")
    if prefix == "AmazonSQS":
        return "sqs", operation
    if prefix.startswith("DynamoDB_"):
        return "dynamodb", operation
    return "s3", ""


def error_response(service: str, error: str) -> web.Response:
    """The error answer boto3 parses as AWS's own (see the module docstring)."""
    status, error_type, query_code = _SHAPES[(service if service in ("sqs", "dynamodb") else "sqs", error)]
    body = json.dumps({"__type": error_type, "message": _MESSAGES[error]})
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "chaos-fault"}
    if query_code is not None:
        headers["x-amzn-query-error"] = query_code
    return web.Response(status=status, body=body.encode(), headers=headers)


def partial_batch(body: bytes, rng: random.Random) -> bytes | None:
    """A SendMessageBatch answer with some accepted entries reported as failed (None: nothing to
    rewrite). The entries are on the queue: a client that retries them sends duplicates."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    ok = list(data.get("Successful") or [])
    if not ok:
        return None
    failed = rng.sample(ok, rng.randint(1, len(ok)))
    ids = {entry["Id"] for entry in failed}
    data["Successful"] = [entry for entry in ok if entry["Id"] not in ids]
    data["Failed"] = list(data.get("Failed") or []) + [
        {
            "Id": entry["Id"],
            "SenderFault": False,
            "Code": "InternalError",
            "Message": "chaos: partial failure",
        }
        for entry in failed
    ]
    return json.dumps(data).encode()


def refused_batch(body: bytes) -> web.Response:
    """A SendMessageBatch answer refusing every entry of the request for its content."""
    try:
        entries = json.loads(body).get("Entries") or []
    except (ValueError, AttributeError):
        entries = []
    failed = [
        {
            "Id": str(entry.get("Id")),
            "SenderFault": True,
            "Code": "InvalidMessageContents",
            "Message": "chaos: refused for its content",
        }
        for entry in entries
        if isinstance(entry, dict)
    ]
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "chaos-fault"}
    return web.Response(
        status=200, body=json.dumps({"Successful": [], "Failed": failed}).encode(), headers=headers
    )


class FaultProxy:
    """The proxy's state: rules (thread-safe) and what it injected."""

    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.injected: Counter[str] = Counter()  # "service.operation error/phase"
        self.requests: Counter[str] = Counter()  # "service.operation"
        self._session: aiohttp.ClientSession | None = None

    # -- rules (any thread) -------------------------------------------------------------------

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            if rule.duration is not None:
                rule.expires_at = time.monotonic() + rule.duration
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def active(self) -> list[FaultRule]:
        now = time.monotonic()
        with self._lock:
            return [r for r in self._rules if r.live(now)]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"injected": dict(self.injected), "requests": dict(self.requests)}

    def _pick(self, service: str, operation: str) -> FaultRule | None:
        now = time.monotonic()
        with self._lock:
            self._rules = [r for r in self._rules if r.live(now)]
            for rule in self._rules:
                if rule.matches(service, operation) and self._rng.random() < rule.probability:
                    rule.injected += 1
                    self.injected[f"{service}.{operation or '-'} {rule.error}/{rule.phase}"] += 1
                    return rule
            self.requests[f"{service}.{operation or '-'}"] += 1
        return None

    # -- the proxy (its own loop) -------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        service, operation = classify_request(request.headers)
        try:
            body = await request.read()
        except ConnectionResetError:  # the client went away mid-request (a relay killed with -9)
            return web.Response(status=400, text="client gone")
        rule = self._pick(service, operation)
        if rule is not None and rule.delay:
            await asyncio.sleep(rule.delay)
        if rule is not None and rule.error == "refuse":
            return refused_batch(body)
        if rule is not None and rule.phase == "before" and rule.error not in ("slow", "partial"):
            return error_response(service, rule.error)
        status, headers, payload = await self._forward(request, body)
        if rule is None or rule.error == "slow":
            return web.Response(status=status, body=payload, headers=headers)
        if rule.error == "partial":
            rewritten = partial_batch(payload, self._rng) if status == 200 else None
            if rewritten is None:
                return web.Response(status=status, body=payload, headers=headers)
            headers.pop("x-amz-crc32", None)
            return web.Response(status=status, body=rewritten, headers=headers)
        return error_response(service, rule.error)  # phase "after": it happened, the client is told not

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        # The request is forwarded as signed: the client's Host header and the raw (still encoded)
        # path and query, or moto, which checks SigV4 signatures, would refuse it.
        headers["Host"] = request.headers.get("Host", request.host)
        url = URL(self.upstream + request.raw_path, encoded=True)
        async with self._session.request(request.method, url, data=body, headers=headers) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            return upstream.status, out, payload

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> web.AppRunner:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120), skip_auto_headers={"User-Agent"}
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        port = runner.addresses[0][1]  # (host, port) of the socket just bound
        self.url = f"http://{host}:{port}"
        return runner

    async def stop(self, runner: web.AppRunner) -> None:
        await runner.cleanup()
        if self._session is not None:
            await self._session.close()


@contextmanager
def running_fault_proxy(upstream: str, *, seed: int = 0, host: str = "127.0.0.1") -> Iterator[FaultProxy]:
    """Run a `FaultProxy` in front of `upstream` on its own thread; yields it once it listens."""
    proxy = FaultProxy(upstream, seed=seed)
    started: Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = Future()

    async def main() -> None:
        runner = await proxy.start(host)
        stop = asyncio.Event()
        started.set_result((asyncio.get_running_loop(), stop))
        try:
            await stop.wait()
        finally:
            await proxy.stop(runner)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - start failures surface in the caller
            if not started.done():
                started.set_exception(exc)
            else:
                log.exception("fault proxy stopped with an error")

    thread = threading.Thread(target=run, name="chaos-fault-proxy", daemon=True)
    thread.start()
    loop, stop = started.result(30)
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
