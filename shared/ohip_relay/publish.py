"""Publishing events to SQS: batching, per-resource order, retries, backpressure and claim checks.

What is acknowledged when
-------------------------
`SqsPublisher.submit()` hands a message over; the publisher then owns it until exactly one of three
things happens to it:

* **acknowledged**: SQS listed the entry under `Successful` in a SendMessageBatch response. Only
  then is `on_ack(message.ack_token)` called. Nothing else counts: an entry that a response does not
  mention, a request whose response was lost, a connection that broke mid-request, all mean "not
  acknowledged" and the entry is sent again (on a FIFO queue the deduplication id makes the resend
  harmless for 5 minutes; on a standard queue it may become a duplicate, which at-least-once allows).
* **failed**: SQS refused the entry for a reason that retrying cannot fix (a sender fault such as
  invalid characters), the message cannot be sent at all (too large and no claim-check bucket), or
  `max_attempts` was reached. `on_failure(PublishFailure)` is called; the message is not in SQS.
  What to do next (stop, park it elsewhere and move on) is the caller's decision; until it decides,
  a checkpoint built on acknowledgements (`OffsetWatermark`) stays below that message. The
  message's FIFO group is not held up: its next message is sent.
* **abandoned**: `close(drain_timeout)` ran out of time first. Neither callback is called; the caller's
  checkpoint therefore does not pass it, and it is replayed after a restart.

Retryable errors (throttling, 5xx, connection errors, entries failed without sender fault) are
retried with exponential backoff and jitter, for ever unless `max_attempts` is set: the stream
consumer would rather stop reading (backpressure) than lose an event. botocore's own retries may stay
on; this layer handles whatever still failed after them. After a request failed as a whole
(throttled, 5xx, unreachable), no new request starts until its backoff is over, so an outage costs
one request per backoff interval rather than one per ready batch. A request-level error that is
not retryable (for example one malformed entry making the whole request invalid) splits the batch:
every entry is sent again on its own, so that only the faulty one fails.

Order and batching
------------------
Up to 10 entries per SendMessageBatch, within the batch payload limit, sent when 10 are ready, when
the next entry would not fit, or `batch_window_s` after the oldest ready entry became ready (20 ms by
default; skipped while a backlog exists or a `flush()` is waiting). Several batches are in flight at
once (`max_batches_in_flight`). Each goes out either as a boto3 call in a private thread pool of
that size, or, given a `BatchTransport` (the stream consumer gives `sqs_http.SqsHttpTransport`), as
one signed HTTP request from the event loop; both raise botocore's exceptions, classified alike.

On a FIFO queue (URL ending in `.fifo`) a message group has at most one message on its way at any
time: the next message of the group is sent only after the previous one was acknowledged or failed.
That keeps the group in submit order through concurrent batches and through retries (a retried
entry cannot be overtaken by a later entry of its group, which a batch containing both could do on a
partial failure). Different groups go out in parallel, oldest first. The price: one group moves at
one message per round trip, which suits OHIP (a reservation changes a few times in a burst, not
hundreds). A standard queue has no order to keep; every entry is independent.

Backpressure: at most `max_buffered` messages are owned by the publisher (submitted, not yet
acknowledged or failed); `submit()` waits for room beyond that, so memory stays bounded and the
stream consumer stops reading its socket, letting TCP push back on the server.

Claim check: a message larger than the queue's maximum message size (body plus attributes, as SQS
counts them; read from the queue's `MaximumMessageSize` at start unless overridden) is stored in S3
(`<prefix><dedup_id>.json`, content type application/json) before its batch is sent, and the SQS body
becomes `{"schemaVersion": 1, "eventKey": <dedup_id>, "claimCheck": {"bucket", "key", "bytes"}}`
with the original attributes. The upload is part of sending that entry, so it keeps its place in
its group.

Message bodies carry personal data: nothing here logs a body or puts one in an exception; logs name
the deduplication id (the event key) and the error code.

Callbacks run on the event loop thread, synchronously; they must not block. A callback that raises is
logged and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from .events import CanonicalEvent
from .watermark import OffsetWatermark

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import (
        MessageAttributeValueTypeDef,
        SendMessageBatchRequestEntryTypeDef,
        SendMessageBatchResultTypeDef,
    )

log = logging.getLogger(__name__)

SQS_MAX_BATCH_ENTRIES = 10
SQS_MAX_ATTRIBUTES = 10
# The batch payload limit: 1 MiB since SQS raised it (together with the largest message size) in
# 2025; queues that still say 256 KiB or less are treated with the older 256 KiB batch limit.
SQS_MAX_PAYLOAD_BYTES = 1_048_576
SQS_LEGACY_PAYLOAD_BYTES = 262_144
CLAIM_CHECK_SCHEMA_VERSION = 1
# Message attributes are Strings, except these (docs/event-format.md: `schemaVersion` is a Number).
NUMBER_ATTRIBUTES = frozenset({"schemaVersion"})


def attribute_type(name: str) -> str:
    """The SQS DataType an attribute of this name is sent with."""
    return "Number" if name in NUMBER_ATTRIBUTES else "String"


# Error codes worth retrying even when SQS, S3 or botocore calls them a sender/client fault.
RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
        "KmsThrottled",
        "KMS.ThrottlingException",
        "AWS.SimpleQueueService.InternalError",
    }
)

_T = TypeVar("_T")
_CallbackArg = TypeVar("_CallbackArg")


class BatchTransport(Protocol):
    """Sends one SendMessageBatch without blocking the loop; returns and raises what boto3 would."""

    async def start(self) -> None: ...

    async def send_message_batch(
        self, queue_url: str, entries: Sequence[SendMessageBatchRequestEntryTypeDef]
    ) -> SendMessageBatchResultTypeDef: ...

    async def close(self) -> None: ...


class PublishError(Exception):
    """The publisher cannot work at all (the queue cannot be read at start, it was used wrongly)."""


class PublisherClosed(PublishError):
    """`submit()` or `flush()` after `close()` began."""


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One event on its way to SQS.

    `group_id` and `dedup_id` become MessageGroupId and MessageDeduplicationId on a FIFO queue (both
    required there) and are not sent to a standard queue; `dedup_id` also names the claim-check
    object. `attributes` become message attributes (at most 10, non-empty values), of DataType
    String except the names in `NUMBER_ATTRIBUTES` (Number).
    `ack_token` is handed back to `on_ack` / in `PublishFailure` untouched (for example the offset).
    `event_key` and `event_id` go into a claim-check pointer, so that a consumer can tell events
    apart without reading the object.
    """

    body: str = field(repr=False)
    attributes: Mapping[str, str]
    group_id: str
    dedup_id: str
    ack_token: Any = None
    event_key: str = ""
    event_id: str = ""


def outbound_message(event: CanonicalEvent, ack_token: Any = None) -> OutboundMessage:
    """The SQS message for a relay event, the same from either channel: body, attributes, FIFO
    ids (deduplication by the event's identity), and the keys a claim-check pointer carries."""
    return OutboundMessage(
        body=event.to_json(),
        attributes=event.attribute_values(),
        group_id=event.message_group_id(),
        dedup_id=event.deduplication_id(),
        ack_token=ack_token,
        event_key=event.event_key,
        event_id=event.event_id,
    )


@dataclass(frozen=True, slots=True)
class PublishFailure:
    """A message that is not in SQS and will not be retried. `body` is there to be parked, never
    to be logged (it is left out of the repr)."""

    ack_token: Any
    dedup_id: str
    group_id: str
    code: str
    reason: str
    attempts: int
    body: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    max_buffered: int = 1_000
    """Messages owned by the publisher (not yet acknowledged or failed) before `submit()` waits."""
    batch_window_s: float = 0.020
    """How long a ready entry may wait for companions before its batch is sent."""
    max_batches_in_flight: int = 4
    """Concurrent SendMessageBatch calls (and the size of the private thread pool)."""
    max_batch_entries: int = SQS_MAX_BATCH_ENTRIES
    max_message_bytes: int | None = None
    """Override of the queue's MaximumMessageSize (the claim-check threshold)."""
    max_batch_bytes: int | None = None
    """Override of the batch payload limit (see SQS_MAX_PAYLOAD_BYTES)."""
    claim_check_bucket: str | None = None
    claim_check_prefix: str = "oversize/"
    retry_base_s: float = 0.05
    retry_max_s: float = 5.0
    max_attempts: int | None = None
    """Send attempts per message before a retryable error becomes a failure; None: no limit."""
    start_timeout_s: float = 60.0
    """How long `start()` keeps trying to read the queue's attributes while SQS answers with a
    retryable error (throttling, 5xx, no connection); other errors fail at once."""

    def __post_init__(self) -> None:
        if self.max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        if self.max_batches_in_flight < 1:
            raise ValueError("max_batches_in_flight must be at least 1")
        if not 1 <= self.max_batch_entries <= SQS_MAX_BATCH_ENTRIES:
            raise ValueError(f"max_batch_entries must be between 1 and {SQS_MAX_BATCH_ENTRIES}")
        if self.batch_window_s < 0 or self.retry_base_s < 0 or self.retry_max_s < 0:
            raise ValueError("batch_window_s, retry_base_s and retry_max_s must not be negative")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")
        if self.start_timeout_s < 0:
            raise ValueError("start_timeout_s must not be negative")


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Cumulative counters since the publisher was created (diff two snapshots for a rate)."""

    submitted: int
    published: int
    failed: int
    retried: int
    batches: int
    claim_checks: int
    abandoned: int
    buffered: int
    batches_in_flight: int


# --------------------------------------------------------------------------------------------
# Pure helpers: sizes, claim-check pointer, the scheduling of entries into batches.
# --------------------------------------------------------------------------------------------


def attributes_size(attributes: Mapping[str, str]) -> int:
    """Bytes SQS counts for the attributes: name, data type and value of each."""
    return sum(
        len(name.encode()) + len(attribute_type(name)) + len(value.encode())
        for name, value in attributes.items()
    )


def sqs_attributes(attributes: Mapping[str, str]) -> dict[str, MessageAttributeValueTypeDef]:
    """The MessageAttributes of a request entry (boto3 shape) for `OutboundMessage.attributes`."""
    return {
        name: {"DataType": attribute_type(name), "StringValue": value} for name, value in attributes.items()
    }


def message_size(body: str, attributes: Mapping[str, str]) -> int:
    """The size SQS compares with MaximumMessageSize: UTF-8 body plus attributes."""
    return len(body.encode()) + attributes_size(attributes)


def batch_payload_limit(max_message_bytes: int) -> int:
    """The SendMessageBatch payload limit that goes with a queue's MaximumMessageSize."""
    return (
        SQS_LEGACY_PAYLOAD_BYTES if max_message_bytes <= SQS_LEGACY_PAYLOAD_BYTES else SQS_MAX_PAYLOAD_BYTES
    )


def claim_check_key(prefix: str, dedup_id: str) -> str:
    return f"{prefix}{dedup_id}.json"


def claim_check_pointer(
    dedup_id: str, bucket: str, key: str, size: int, *, event_key: str = "", event_id: str = ""
) -> str:
    """The SQS body that stands for a payload stored in S3: the event's `eventKey` and `eventId`
    (the deduplication id where they are not known) and where the payload is."""
    document: dict[str, Any] = {
        "schemaVersion": CLAIM_CHECK_SCHEMA_VERSION,
        "eventKey": event_key or dedup_id,
    }
    if event_id:
        document["eventId"] = event_id
    document["claimCheck"] = {"bucket": bucket, "key": key, "bytes": size}
    return json.dumps(document, separators=(",", ":"))


@dataclass(slots=True, eq=False)
class Entry:
    """A submitted message with what the scheduler needs to know about it."""

    seq: int
    message: OutboundMessage
    wire_body: str = field(repr=False)
    size: int
    group: str | None
    submitted_at: float = 0.0
    ready_at: float = 0.0
    claim_payload: bytes | None = field(default=None, repr=False)
    claim_key: str | None = None
    uploaded: bool = False
    attempts: int = 0
    solo: bool = False
    done: bool = False


class BatchScheduler:
    """Which entries go into the next batch; no I/O, no clock.

    Entries are offered oldest first (by `seq`). With groups (FIFO), at most one entry per group is
    "active" (ready, in a batch, or waiting for a retry) at a time; the rest wait behind it in
    submit order and the next one becomes ready when `finish()` is called for the active one.
    """

    def __init__(self) -> None:
        self._ready: list[tuple[int, Entry]] = []
        self._ready_bytes = 0
        self._active_groups: set[str] = set()
        self._waiting: dict[str, deque[Entry]] = {}
        self._waiting_count = 0

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    @property
    def ready_bytes(self) -> int:
        return self._ready_bytes

    @property
    def waiting_count(self) -> int:
        """Entries held back behind an active entry of their group."""
        return self._waiting_count

    def oldest_ready(self) -> Entry | None:
        return self._ready[0][1] if self._ready else None

    def add(self, entry: Entry, now: float = 0.0) -> None:
        """A new entry: ready at once unless its group already has an active entry."""
        group = entry.group
        if group is not None:
            if group in self._active_groups:
                self._waiting.setdefault(group, deque()).append(entry)
                self._waiting_count += 1
                return
            self._active_groups.add(group)
        self._push(entry, now)

    def requeue(self, entry: Entry, now: float = 0.0) -> None:
        """An entry taken earlier goes back (retry after backoff, or split out of a batch)."""
        self._push(entry, now)

    def finish(self, entry: Entry, now: float = 0.0) -> None:
        """The entry is acknowledged or failed: its group's next entry becomes ready."""
        group = entry.group
        if group is None:
            return
        waiting = self._waiting.get(group)
        if waiting:
            following = waiting.popleft()
            self._waiting_count -= 1
            if not waiting:
                del self._waiting[group]
            self._push(following, now)
        else:
            self._active_groups.discard(group)

    def take_batch(self, max_entries: int, max_bytes: int) -> list[Entry]:
        """The oldest ready entries that fit in one request; an entry marked `solo` goes alone."""
        batch: list[Entry] = []
        total = 0
        while self._ready and len(batch) < max_entries:
            entry = self._ready[0][1]
            if batch and (entry.solo or total + entry.size > max_bytes):
                break
            heapq.heappop(self._ready)
            self._ready_bytes -= entry.size
            batch.append(entry)
            total += entry.size
            if entry.solo:
                break
        return batch

    def drain(self) -> list[Entry]:
        """Remove and return every ready and waiting entry (used when abandoning on close)."""
        entries = [entry for _, entry in self._ready]
        for waiting in self._waiting.values():
            entries.extend(waiting)
        self._ready.clear()
        self._waiting.clear()
        self._active_groups.clear()
        self._ready_bytes = 0
        self._waiting_count = 0
        return entries

    def _push(self, entry: Entry, now: float) -> None:
        entry.ready_at = now
        heapq.heappush(self._ready, (entry.seq, entry))
        self._ready_bytes += entry.size


def classify_error(exc: BaseException) -> tuple[bool, str, str]:
    """(retryable, code, short reason) for an exception raised by a boto3 call."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        retryable = code in RETRYABLE_CODES or status >= 500 or status == 429
        return retryable, code, str(error.get("Message") or code)
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return True, type(exc).__name__, "connection error"
    if isinstance(exc, BotoCoreError):
        return False, type(exc).__name__, str(exc)
    return False, type(exc).__name__, "unexpected error"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": between half and all of min(cap, base * 2**(n-1))."""
    ceiling = min(cap, base * (2.0 ** max(0, attempt - 1)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


# --------------------------------------------------------------------------------------------
# The publisher.
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Runtime:
    """What exists only between `start()` and `close()`: the loop and its primitives."""

    loop: asyncio.AbstractEventLoop
    executor: ThreadPoolExecutor
    wakeup: asyncio.Event  # something changed for the dispatcher (ready entry, free slot, flush...)
    space: asyncio.Event  # a buffered message was settled (or the publisher is closing)
    slots: asyncio.Semaphore  # batches in flight


class SqsPublisher:
    """Batches messages into SQS; see the module docstring for the guarantees.

    Typical use::

        publisher = SqsPublisher(sqs, queue_url, on_ack=..., on_failure=..., s3_client=s3,
                                 config=PublisherConfig(claim_check_bucket=bucket))
        await publisher.start()
        await publisher.submit(OutboundMessage(...))   # waits only while the buffer is full
        await publisher.flush()                        # everything submitted so far is settled
        abandoned = await publisher.close(drain_timeout=10)

    Give the boto3 client `max_pool_connections` >= `max_batches_in_flight` (botocore's default 10
    covers the default 4). boto3 clients are thread-safe; the publisher calls them from its own pool.
    With a `transport`, SendMessageBatch goes through it instead (the boto3 client still reads the
    queue's attributes at start); the publisher starts and closes it.
    """

    def __init__(
        self,
        sqs_client: SQSClient,
        queue_url: str,
        *,
        on_ack: Callable[[Any], None],
        on_failure: Callable[[PublishFailure], None],
        config: PublisherConfig | None = None,
        s3_client: S3Client | None = None,
        rng: random.Random | None = None,
        transport: BatchTransport | None = None,
    ) -> None:
        self._config = config or PublisherConfig()
        self._transport = transport
        if self._config.claim_check_bucket and s3_client is None:
            raise ValueError("claim_check_bucket is set but no s3_client was given")
        self._sqs = sqs_client
        self._s3 = s3_client
        self._queue_url = queue_url
        self._fifo = queue_url.endswith(".fifo")
        self._on_ack = on_ack
        self._on_failure = on_failure
        self._rng = rng or random.Random()

        self._max_message_bytes = self._config.max_message_bytes or 0
        self._max_batch_bytes = self._config.max_batch_bytes or 0
        self._scheduler = BatchScheduler()
        self._next_seq = 0
        self._settled = OffsetWatermark(None)  # seq numbers acknowledged, failed or abandoned
        self._in_flight: dict[int, Entry] = {}  # in a batch being sent
        self._backing_off: dict[int, tuple[Entry, asyncio.TimerHandle]] = {}
        self._paused_until = 0.0  # loop time before which no new request starts (after a failed one)
        self._outstanding = 0
        self._queued = 0  # owned and not in a batch being sent: ready, waiting or backing off
        self._batches_in_flight = 0
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._counters = {
            "submitted": 0,
            "published": 0,
            "failed": 0,
            "retried": 0,
            "batches": 0,
            "claim_checks": 0,
            "abandoned": 0,
        }
        self._latency_ms: deque[float] = deque(maxlen=10_000)

        self._runtime: _Runtime | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._fatal: BaseException | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def queue_url(self) -> str:
        return self._queue_url

    @property
    def is_fifo(self) -> bool:
        return self._fifo

    @property
    def max_message_bytes(self) -> int:
        """The claim-check threshold in force (known after `start()`)."""
        return self._max_message_bytes

    @property
    def max_batch_bytes(self) -> int:
        return self._max_batch_bytes

    @property
    def has_room(self) -> bool:
        """Whether `submit()` would return without waiting for room."""
        return self._outstanding < self._config.max_buffered

    @property
    def buffered(self) -> int:
        """Messages submitted and not yet acknowledged, failed or abandoned."""
        return self._outstanding

    @property
    def stats(self) -> PublisherStats:
        return PublisherStats(
            **self._counters, buffered=self._outstanding, batches_in_flight=self._batches_in_flight
        )

    def take_latency_samples(self) -> list[float]:
        """Milliseconds from `submit()` to acknowledgement, one per acknowledged message since the
        last call (the most recent 10,000 at most)."""
        samples = list(self._latency_ms)
        self._latency_ms.clear()
        return samples

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the queue's limits (unless overridden) and start sending. Raises `PublishError`."""
        if self._closing:
            raise PublisherClosed("the publisher is closed")
        if self._runtime is not None:
            raise PublishError("the publisher was already started")
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(
            max_workers=self._config.max_batches_in_flight, thread_name_prefix="sqs-publish"
        )
        if not self._max_message_bytes:
            try:
                self._max_message_bytes = await self._read_max_message_bytes(loop, executor)
            except BaseException:
                executor.shutdown(wait=False)
                raise
        if not self._max_batch_bytes:
            self._max_batch_bytes = batch_payload_limit(self._max_message_bytes)
        if self._transport is not None:
            try:
                await self._transport.start()
            except Exception as exc:
                executor.shutdown(wait=False)
                _, code, _ = classify_error(exc)
                raise PublishError(f"the SQS transport cannot start ({code})") from exc
        self._runtime = _Runtime(
            loop=loop,
            executor=executor,
            wakeup=asyncio.Event(),
            space=asyncio.Event(),
            slots=asyncio.Semaphore(self._config.max_batches_in_flight),
        )
        self._dispatcher = asyncio.create_task(self._dispatch(self._runtime), name="sqs-publisher-dispatch")
        self._dispatcher.add_done_callback(self._dispatcher_done)
        log.info(
            "publisher started: queue=%s fifo=%s max_message_bytes=%d max_batch_bytes=%d",
            self._queue_url,
            self._fifo,
            self._max_message_bytes,
            self._max_batch_bytes,
        )

    async def _read_max_message_bytes(
        self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor
    ) -> int:
        """The queue's MaximumMessageSize; retryable errors are tried again for `start_timeout_s`."""
        read = partial(
            self._sqs.get_queue_attributes, QueueUrl=self._queue_url, AttributeNames=["MaximumMessageSize"]
        )
        deadline = loop.time() + self._config.start_timeout_s
        attempt = 0
        while True:
            try:
                response = await loop.run_in_executor(executor, read)
                return int(response["Attributes"]["MaximumMessageSize"])
            except Exception as exc:
                retryable, code, _ = classify_error(exc)
                if not retryable:
                    raise PublishError(
                        f"SQS GetQueueAttributes on {self._queue_url} failed ({code}); "
                        "check RELAY_QUEUE_URL and the task's permissions"
                    ) from exc
                attempt += 1
                delay = backoff_delay(attempt, max(self._config.retry_base_s, 0.1), 5.0, self._rng)
                if loop.time() + delay > deadline:
                    raise PublishError(
                        f"SQS GetQueueAttributes on {self._queue_url} still failing ({code}) after "
                        f"{self._config.start_timeout_s:g}s; SQS or the network is unavailable"
                    ) from exc
                log.warning("SQS GetQueueAttributes failed (%s); trying again in %.1fs", code, delay)
            await asyncio.sleep(delay)

    async def __aenter__(self) -> SqsPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def submit(self, message: OutboundMessage) -> None:
        """Hand a message over. Returns once it is buffered; waits while `max_buffered` are owned.

        A message that can never be sent (too large without a claim-check bucket, too many
        attributes) is reported through `on_failure` before this returns. Raises `ValueError` for
        a FIFO message without group or deduplication id, `PublisherClosed` after `close()`.
        """
        runtime = self._usable()
        if self._fifo and (not message.group_id or not message.dedup_id):
            raise ValueError("a FIFO queue needs both group_id and dedup_id on every message")
        while self._outstanding >= self._config.max_buffered:
            runtime.space.clear()
            await runtime.space.wait()
            self._usable()
        seq = self._next_seq
        self._next_seq += 1
        self._counters["submitted"] += 1
        self._settled.track(seq)
        prepared = self._prepare(seq, message)
        if isinstance(prepared, PublishFailure):
            self._counters["failed"] += 1
            self._settled.ack(seq)
            log.error("publish refused: event_key=%s code=%s", message.dedup_id, prepared.code)
            self._call(self._on_failure, prepared)
            self._resolve_flush_waiters()
            return
        now = runtime.loop.time()
        prepared.submitted_at = now
        self._outstanding += 1
        self._queued += 1
        self._scheduler.add(prepared, now)
        runtime.wakeup.set()

    async def flush(self) -> None:
        """Wait until every message submitted before this call is acknowledged or failed.

        Skips the batching window meanwhile. Raises `PublisherClosed` if `close()` abandons some.
        """
        runtime = self._usable(allow_closing=True)
        target = self._next_seq - 1
        if target < 0 or self._is_settled(target):
            return
        future: asyncio.Future[None] = runtime.loop.create_future()
        self._flush_waiters.append((target, future))
        runtime.wakeup.set()
        await future

    async def close(self, drain_timeout: float | None = None) -> int:
        """Stop accepting messages, send what is buffered, stop. Returns how many were abandoned.

        With `drain_timeout` (seconds), messages not settled by then are abandoned: neither
        acknowledged nor failed (see the module docstring). Safe to call more than once.
        """
        if self._closed:
            return 0
        self._closing = True
        runtime = self._runtime
        if runtime is not None:
            runtime.space.set()  # blocked submitters wake up and see the publisher closing
            if self._fatal is None:
                try:
                    async with asyncio.timeout(drain_timeout):
                        await self.flush()
                except (TimeoutError, PublishError):
                    pass
        abandoned = self._abandon_all()
        pending: list[asyncio.Task[None]] = [*self._tasks]
        if self._dispatcher is not None:
            pending.append(self._dispatcher)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if runtime is not None:
            runtime.executor.shutdown(wait=False, cancel_futures=True)
        if self._transport is not None:
            await self._transport.close()
        self._closed = True
        if abandoned:
            log.warning("publisher closed: %d message(s) abandoned (not acknowledged)", abandoned)
        return abandoned

    # -- submit helpers -----------------------------------------------------------------------

    def _usable(self, *, allow_closing: bool = False) -> _Runtime:
        if self._fatal is not None:
            raise PublishError("the publisher stopped after an internal error") from self._fatal
        if self._closed or (self._closing and not allow_closing):
            raise PublisherClosed("the publisher is closed")
        if self._runtime is None:
            raise PublishError("call start() before submit() or flush()")
        return self._runtime

    @property
    def _rt(self) -> _Runtime:
        """The runtime, for code that only runs between start() and close()."""
        if self._runtime is None:
            raise PublishError("the publisher is not started")
        return self._runtime

    def _prepare(self, seq: int, message: OutboundMessage) -> Entry | PublishFailure:
        def refuse(code: str, reason: str) -> PublishFailure:
            return PublishFailure(
                message.ack_token, message.dedup_id, message.group_id, code, reason, 0, message.body
            )

        attributes = message.attributes
        if len(attributes) > SQS_MAX_ATTRIBUTES:
            return refuse(
                "TooManyAttributes", f"{len(attributes)} attributes, SQS allows {SQS_MAX_ATTRIBUTES}"
            )
        empty = sorted(name for name, value in attributes.items() if not name or not value)
        if empty:
            return refuse("InvalidAttributeValue", f"empty attribute name or value: {', '.join(empty)}")
        group = message.group_id if self._fifo else None
        size = message_size(message.body, attributes)
        if size <= self._max_message_bytes:
            return Entry(seq=seq, message=message, wire_body=message.body, size=size, group=group)
        bucket = self._config.claim_check_bucket
        if not bucket:
            return refuse(
                "MessageTooLarge",
                f"{size} bytes, over the queue's {self._max_message_bytes}, and no claim-check bucket is set",
            )
        payload = message.body.encode()
        key = claim_check_key(self._config.claim_check_prefix, message.dedup_id)
        pointer = claim_check_pointer(
            message.dedup_id,
            bucket,
            key,
            len(payload),
            event_key=message.event_key,
            event_id=message.event_id,
        )
        pointer_size = message_size(pointer, attributes)
        if pointer_size > self._max_message_bytes:
            return refuse("MessageTooLarge", f"the claim-check message itself is {pointer_size} bytes")
        return Entry(
            seq=seq,
            message=message,
            wire_body=pointer,
            size=pointer_size,
            group=group,
            claim_payload=payload,
            claim_key=key,
        )

    # -- dispatching --------------------------------------------------------------------------

    async def _dispatch(self, runtime: _Runtime) -> None:
        wakeup, slots, loop = runtime.wakeup, runtime.slots, runtime.loop
        while True:
            while self._scheduler.ready_count == 0:
                wakeup.clear()
                await wakeup.wait()
            await slots.acquire()
            try:
                pause = self._paused_until - loop.time()
                if pause > 0:  # the last request failed as a whole: give SQS (or the network) a rest
                    await asyncio.sleep(pause)
                await self._batch_window(loop, wakeup)
                batch = self._scheduler.take_batch(self._config.max_batch_entries, self._max_batch_bytes)
            except BaseException:
                slots.release()
                raise
            if not batch:
                slots.release()
                continue
            for entry in batch:
                self._in_flight[entry.seq] = entry
            self._queued -= len(batch)
            self._batches_in_flight += 1
            task = asyncio.create_task(self._send(batch, slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _send_now(self) -> bool:
        scheduler, config = self._scheduler, self._config
        return (
            scheduler.ready_count >= config.max_batch_entries
            or scheduler.ready_bytes >= self._max_batch_bytes
            or self._queued >= config.max_batch_entries  # a backlog: batching longer gains nothing
            or bool(self._flush_waiters)
            or self._closing
        )

    async def _batch_window(self, loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event) -> None:
        while not self._send_now():
            oldest = self._scheduler.oldest_ready()
            if oldest is None:
                return
            remaining = oldest.ready_at + self._config.batch_window_s - loop.time()
            if remaining <= 0:
                return
            wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await wakeup.wait()
            except TimeoutError:
                return

    async def _send(self, batch: list[Entry], slots: asyncio.Semaphore) -> None:
        try:
            for entry in batch:
                entry.attempts += 1
            to_send: list[Entry] = []
            for entry in batch:
                if entry.claim_payload is not None and not entry.uploaded:
                    try:
                        await self._run(partial(self._put_claim_check, entry))
                    except Exception as exc:
                        self._entry_error(entry, exc, "S3 PutObject")
                        continue
                    entry.uploaded = True
                    self._counters["claim_checks"] += 1
                to_send.append(entry)
            if not to_send:
                return
            self._counters["batches"] += 1
            request = self._batch_request(to_send)
            try:
                if self._transport is not None:
                    response = await self._transport.send_message_batch(self._queue_url, request)
                else:
                    response = await self._run(
                        partial(self._sqs.send_message_batch, QueueUrl=self._queue_url, Entries=request)
                    )
            except Exception as exc:
                self._batch_error(to_send, exc)
            else:
                self._batch_result(to_send, response)
        finally:
            self._batches_in_flight -= 1
            slots.release()
            self._rt.wakeup.set()

    def _batch_request(self, entries: list[Entry]) -> list[SendMessageBatchRequestEntryTypeDef]:
        request: list[SendMessageBatchRequestEntryTypeDef] = []
        for entry in entries:
            message = entry.message
            item: SendMessageBatchRequestEntryTypeDef = {"Id": str(entry.seq), "MessageBody": entry.wire_body}
            if message.attributes:
                item["MessageAttributes"] = sqs_attributes(message.attributes)
            if self._fifo:
                item["MessageGroupId"] = message.group_id
                item["MessageDeduplicationId"] = message.dedup_id
            request.append(item)
        return request

    def _put_claim_check(self, entry: Entry) -> None:
        bucket, key, payload = self._config.claim_check_bucket, entry.claim_key, entry.claim_payload
        if self._s3 is None or bucket is None or key is None or payload is None:
            raise PublishError("claim check without bucket, key or S3 client")  # prevented in _prepare
        self._s3.put_object(Bucket=bucket, Key=key, Body=payload, ContentType="application/json")

    # -- outcomes -----------------------------------------------------------------------------

    def _batch_result(self, entries: list[Entry], response: SendMessageBatchResultTypeDef) -> None:
        by_id = {str(entry.seq): entry for entry in entries}
        for ok in response.get("Successful", []):
            entry = by_id.pop(ok["Id"], None)
            if entry is not None:
                self._acknowledged(entry)
        retry: list[Entry] = []
        codes: set[str] = set()
        for bad in response.get("Failed", []):
            entry = by_id.pop(bad["Id"], None)
            if entry is None:
                continue
            code = bad.get("Code") or "Unknown"
            reason = bad.get("Message") or code
            if bad.get("SenderFault") and code not in RETRYABLE_CODES:
                self._failed(entry, code, reason)
            else:
                retry.append(entry)
                codes.add(code)
        if by_id:  # not mentioned at all: not acknowledged
            retry.extend(by_id.values())
            codes.add("MissingFromResponse")
        if retry:
            log.warning(
                "SendMessageBatch: %d of %d entries failed (%s); retrying",
                len(retry),
                len(entries),
                ",".join(sorted(codes)),
            )
            self._retry(retry, ",".join(sorted(codes)))

    def _batch_error(self, entries: list[Entry], exc: BaseException) -> None:
        retryable, code, reason = classify_error(exc)
        if retryable:
            log.warning("SendMessageBatch of %d entries failed (%s); retrying", len(entries), code)
            delay = self._retry(entries, code)
            self._paused_until = max(self._paused_until, self._rt.loop.time() + delay)
        elif len(entries) > 1:
            # One bad entry can make the whole request invalid: send each alone to find it.
            log.warning(
                "SendMessageBatch of %d entries refused (%s); sending them one by one", len(entries), code
            )
            for entry in entries:
                entry.solo = True
                self._requeue(entry)
        else:
            self._failed(entries[0], code, reason)

    def _entry_error(self, entry: Entry, exc: BaseException, operation: str) -> None:
        retryable, code, reason = classify_error(exc)
        if retryable:
            log.warning("%s for event_key=%s failed (%s); retrying", operation, entry.message.dedup_id, code)
            self._retry([entry], code)
        else:
            self._failed(
                entry, code, f"{operation} to s3://{self._config.claim_check_bucket} failed: {reason}"
            )

    def _retry(self, entries: list[Entry], code: str) -> float:
        """Send `entries` again after one shared backoff (so they can share a batch again); entries
        that reached `max_attempts` fail instead. Returns the delay."""
        limit = self._config.max_attempts
        again: list[Entry] = []
        for entry in entries:
            if entry.done:
                continue
            self._in_flight.pop(entry.seq, None)
            if limit is not None and entry.attempts >= limit:
                self._failed(entry, code, f"still failing after {entry.attempts} attempts")
            else:
                again.append(entry)
        if not again:
            return 0.0
        attempts = max(entry.attempts for entry in again)
        delay = backoff_delay(attempts, self._config.retry_base_s, self._config.retry_max_s, self._rng)
        self._counters["retried"] += len(again)
        self._queued += len(again)
        handle = self._rt.loop.call_later(delay, self._backoff_over, again)
        for entry in again:
            self._backing_off[entry.seq] = (entry, handle)
        return delay

    def _backoff_over(self, entries: list[Entry]) -> None:
        for entry in entries:
            if self._backing_off.pop(entry.seq, None) is None or entry.done:
                continue
            self._queued -= 1
            self._requeue(entry)

    def _requeue(self, entry: Entry) -> None:
        runtime = self._rt
        self._in_flight.pop(entry.seq, None)
        self._queued += 1
        self._scheduler.requeue(entry, runtime.loop.time())
        runtime.wakeup.set()

    def _acknowledged(self, entry: Entry) -> None:
        if entry.done:
            return
        self._counters["published"] += 1
        self._latency_ms.append((self._rt.loop.time() - entry.submitted_at) * 1000.0)
        self._call(self._on_ack, entry.message.ack_token)
        self._settle(entry)

    def _failed(self, entry: Entry, code: str, reason: str) -> None:
        if entry.done:
            return
        message = entry.message
        self._counters["failed"] += 1
        log.error("publish failed: dedup_id=%s code=%s attempts=%d", message.dedup_id, code, entry.attempts)
        failure = PublishFailure(
            message.ack_token, message.dedup_id, message.group_id, code, reason, entry.attempts, message.body
        )
        self._call(self._on_failure, failure)
        self._settle(entry)

    def _settle(self, entry: Entry) -> None:
        runtime = self._rt
        entry.done = True
        self._in_flight.pop(entry.seq, None)
        self._outstanding -= 1
        self._settled.ack(entry.seq)
        self._scheduler.finish(entry, runtime.loop.time())
        runtime.space.set()
        runtime.wakeup.set()
        self._resolve_flush_waiters()

    def _abandon_all(self) -> int:
        entries = self._scheduler.drain()
        entries.extend(self._in_flight.values())
        for entry, handle in self._backing_off.values():
            handle.cancel()
            entries.append(entry)
        self._in_flight.clear()
        self._backing_off.clear()
        count = 0
        for entry in entries:
            if entry.done:
                continue
            entry.done = True
            count += 1
            self._outstanding -= 1
            self._settled.ack(entry.seq)
        self._queued = 0
        self._counters["abandoned"] += count
        for _, future in self._flush_waiters:
            if not future.done():
                future.set_exception(PublisherClosed(f"closed with {count} message(s) abandoned"))
        self._flush_waiters.clear()
        return count

    def _is_settled(self, seq: int) -> bool:
        value = self._settled.value
        return value is not None and value >= seq

    def _resolve_flush_waiters(self) -> None:
        if not self._flush_waiters:
            return
        still_waiting = []
        for target, future in self._flush_waiters:
            if future.done():
                continue
            if self._is_settled(target):
                future.set_result(None)
            else:
                still_waiting.append((target, future))
        self._flush_waiters = still_waiting

    # -- plumbing -----------------------------------------------------------------------------

    async def _run(self, call: Callable[[], _T]) -> _T:
        runtime = self._rt
        return await runtime.loop.run_in_executor(runtime.executor, call)

    def _call(self, callback: Callable[[_CallbackArg], None], argument: _CallbackArg) -> None:
        try:
            callback(argument)
        except Exception:
            log.exception("publisher callback %s raised; continuing", getattr(callback, "__name__", callback))

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        self._fatal = exc
        log.critical("publisher dispatcher stopped: %r", exc)
        for _, future in self._flush_waiters:
            if not future.done():
                future.set_exception(PublishError("the publisher stopped after an internal error"))
        self._flush_waiters.clear()
        if self._runtime is not None:
            self._runtime.space.set()
