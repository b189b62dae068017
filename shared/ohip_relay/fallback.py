"""The poll fallback: one tick of the scheduled Lambda (`ohip-relay poll` runs the same tick).

A tick:

1. reads the stream's heartbeat and its own record (`fallback#<chain>`), decides with
   `health.decide` (staleness, grace, hysteresis) and persists the decision;
2. re-delivers the pages that earlier ticks parked in S3 (`spill/<chain>/`) because SQS failed,
   oldest first, whatever the stream's health (these events were taken off OHIP's queue and exist
   nowhere else). A spilled page is deleted once each of its items is on the queue or parked, and
   rewritten with what SQS did not take; only that (retryable SQS trouble) stops the tick;
3. **fallback active** (stream unhealthy): drains the Poll API page by page (per hotel, round robin,
   when OHIP_HOTEL_IDS is set; else the external system's chain-wide queue) until it is empty or the
   remaining time falls below the safety margin. The Poll API removes what it returns, so every page
   is handed on before the next one is requested, in this order:
   a. normalise: each item becomes an event whose identity is its `businessEventId`
      (`poll:<chain>:<id>`); an item without one gets a fresh stand-in id, which travels with it
      into the spill. Items with the same identity within a page are sent once; nothing else is
      ever merged (two items that look alike are two events). Items that cannot be read are
      parked raw under `malformed/<chain>/` and counted;
   b. send to SQS. An item refused for good (it cannot be encoded, it is too large without a
      claim-check bucket, SQS answers a sender fault such as InvalidMessageContents) is parked
      under `malformed/` too and counted; the rest of the page goes on;
   c. what SQS did not take (retryable trouble) is written to the spill and the tick stops;
   d. only then are the acknowledged events, and nothing else, recorded: `SeenSet.record` (the
      poll copies the stream's replayed copies are matched against, once each) and the mark
      `last_polled_occurred_at` (the stream looks up only events at or before it). Either failing is
      a warning: the stream then publishes its copy too, a duplicate and never a loss;
4. **fallback inactive** (stream healthy): drains the Poll API the same way and discards what it
   fetched (counts only). The stream delivers those changes and replays from its checkpoint after
   any outage; an undrained backlog would be published as a flood of stale duplicates at the
   start of the next outage. Bounded by `max_discard_pages` and the remaining time.

A crash (the Lambda killed) at any point leaves each event a tick dequeued on the queue, in the
spill, or unrecorded in the seen-set, so that `SeenSet.match` answers False for its stream copy
and the stream publishes it on replay. Repeats of one poll event (a spill re-delivered after a
crash) carry the same eventId, hence the same FIFO deduplication id, and record the same eventId
again, which adds nothing: they never cancel a second stream copy.

Any Poll API error (429, 5xx, timeouts, 4xx) ends the tick's polling: nothing was dequeued that we
know of, and the next tick tries again. A tick never requests a page it could not hand on in time.
`FallbackError` is raised only when fetched events could be neither sent nor spilled.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .events import CanonicalEvent, MalformedEvent, business_event_id_of, from_poll
from .health import FallbackDecision, HealthThresholds, decide
from .poll import PollClient, PollError, PollResponseMalformed
from .publish import (
    RETRYABLE_CODES,
    SQS_MAX_BATCH_ENTRIES,
    OutboundMessage,
    batch_payload_limit,
    claim_check_key,
    claim_check_pointer,
    classify_error,
    message_size,
    outbound_message,
    sqs_attributes,
)
from .seen import SeenSet, SeenSetUnavailable
from .state import FallbackRecord, StateStore, StateStoreError
from .telemetry import Metric, Telemetry

if TYPE_CHECKING:
    import httpx
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

    from .auth import SyncTokenProvider
    from .config import Settings

log = logging.getLogger("ohip_relay.fallback")

SPILL_PREFIX = "spill/"
MALFORMED_PREFIX = "malformed/"
SPILL_SCHEMA_VERSION = 2  # 2 added `standInIds`; version 1 documents are still read


class FallbackError(Exception):
    """Fetched events could be neither sent to SQS nor parked in S3: they are at risk."""


@dataclass(frozen=True)
class FallbackOptions:
    page_limit: int = 100
    safety_margin_s: float = 10.0
    """No page is requested once less than this remains."""
    handoff_reserve_s: float = 5.0
    """Of the margin, the part a Poll API request may never eat into (time to publish or spill)."""
    request_timeout_s: float = 20.0
    max_discard_pages: int = 50
    """Pages drained and discarded per tick while the stream is healthy."""
    send_attempts: int = 3
    """SendMessageBatch attempts for entries that failed retryably, before they are spilled."""
    retry_delay_s: float = 0.2
    claim_check_prefix: str = "oversize/"

    def __post_init__(self) -> None:
        if not 1 <= self.page_limit <= 100:
            raise ValueError("page_limit must be from 1 to 100")
        if not 0 <= self.handoff_reserve_s <= self.safety_margin_s:
            raise ValueError("handoff_reserve_s must be from 0 to safety_margin_s")
        if self.send_attempts < 1 or self.max_discard_pages < 0:
            raise ValueError("send_attempts must be at least 1, max_discard_pages not negative")


@dataclass
class TickReport:
    """What one tick did (counts only: safe to log)."""

    healthy: bool = False
    active: bool = False
    started: bool = False
    stopped: bool = False
    reason: str = ""
    pages: int = 0
    fetched: int = 0
    published: int = 0
    discarded: int = 0
    duplicates: int = 0
    malformed: int = 0
    spilled: int = 0
    redelivered: int = 0
    spills_pending: int = 0
    ended: str = ""  # why polling ended: empty, time, poll-error, sqs-error, ...
    errors: list[str] = field(default_factory=list)
    never_seen: bool = False  # no heartbeat and no earlier tick for this chain in the table

    def summary(self) -> str:
        health = "healthy" if self.healthy else "unhealthy"
        mode = "active" if self.active else "inactive"
        change = " (started)" if self.started else " (stopped)" if self.stopped else ""
        text = (
            f"stream {health} ({self.reason or 'not judged'}); fallback {mode}{change}; pages {self.pages}, "
            f"fetched {self.fetched}, published {self.published}, discarded {self.discarded}, "
            f"duplicates {self.duplicates}, malformed {self.malformed}, spilled {self.spilled}, "
            f"redelivered {self.redelivered}; ended: {self.ended or '-'}"
        )
        if self.errors:
            text += f"; errors {len(self.errors)} (each logged when it happened)"
        return text

    def counters(self) -> dict[str, int]:
        return {
            "activations": int(self.started),
            "fetched": self.fetched,
            "published": self.published,
            "discarded": self.discarded,
            "spilled": self.spilled,
            "malformed": self.malformed,
            "duplicates": self.duplicates,
        }


# ---------------------------------------------------------------------------------------------
# SQS: a small synchronous batch sender (the asyncio SqsPublisher's rules, without its loop)

# Codes with which SQS refuses a request because of one message's content, never because of the
# queue: such a request is sent again one message at a time, to find the message and let the rest go.
MESSAGE_FAULT_CODES = frozenset({"InvalidMessageContents", "MessageTooLong", "BatchRequestTooLong"})


@dataclass(frozen=True)
class SendResult:
    acknowledged: list[int]  # indexes into the messages given, acknowledged by SQS
    unsent: list[int]  # not acknowledged (failed retryably, or not tried after a failure)
    code: str = ""  # the error that stopped the sending
    rejected: list[int] = field(default_factory=list)  # refused for good: never send again
    reasons: dict[int, str] = field(default_factory=dict)  # why each rejected message was refused

    @property
    def complete(self) -> bool:
        return not self.unsent


class _Refused(Exception):
    """One message can never be sent (its own fault): `code` says why."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


_Prepared = tuple[int, "SendMessageBatchRequestEntryTypeDef", int]  # (index, entry, size)


@dataclass
class _BatchOutcome:
    acknowledged: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    unsent: list[int] = field(default_factory=list)
    code: str = ""


class SqsBatchSender:
    """Sends messages in order, 10 per SendMessageBatch, stopping at the first batch SQS does not
    fully acknowledge after `attempts` tries (later messages are left unsent so that the caller can
    park them in order). Oversize messages go to S3 as claim checks, as `SqsPublisher` does.

    A message that can never be sent (it cannot be encoded, it is too large and there is no
    claim-check bucket, SQS refuses it for good) is `rejected` on its own: the others go on. Only
    trouble that may pass (SQS or S3 unavailable, throttled, the queue missing) leaves messages
    `unsent`."""

    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        *,
        s3: S3Client | None = None,
        claim_check_bucket: str = "",
        claim_check_prefix: str = "oversize/",
        attempts: int = 3,
        retry_delay_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._sqs = sqs
        self._s3 = s3
        self._queue_url = queue_url
        self._fifo = queue_url.endswith(".fifo")
        self._bucket = claim_check_bucket
        self._prefix = claim_check_prefix
        self._attempts = attempts
        self._retry_delay = retry_delay_s
        self._sleep = sleep
        self._max_message_bytes = 0

    def _limits(self) -> tuple[int, int]:
        if not self._max_message_bytes:
            response = self._sqs.get_queue_attributes(
                QueueUrl=self._queue_url, AttributeNames=["MaximumMessageSize"]
            )
            self._max_message_bytes = int(response["Attributes"]["MaximumMessageSize"])
        return self._max_message_bytes, batch_payload_limit(self._max_message_bytes)

    def send(self, messages: Sequence[OutboundMessage]) -> SendResult:
        if not messages:
            return SendResult([], [])
        try:
            max_message, max_batch = self._limits()
        except Exception as exc:
            _, code, _ = classify_error(exc)
            log.error("SQS unavailable before sending %d message(s): %s", len(messages), code)
            return SendResult([], list(range(len(messages))), code)
        reasons: dict[int, str] = {}
        prepared: list[_Prepared] = []
        held: list[int] = []  # from the first message whose claim check S3 did not take, in order
        code = ""
        for index, message in enumerate(messages):
            try:
                prepared.append(self._entry(index, message, max_message))
            except _Refused as exc:
                log.error("message %d can never be sent (%s)", index, exc.code)
                reasons[index] = exc.code
            except (ClientError, BotoCoreError) as exc:  # the claim-check upload: S3's trouble
                _, code, _ = classify_error(exc)
                log.warning("claim check not stored (%s): %d message(s) held", code, len(messages) - index)
                held = list(range(index, len(messages)))
                break
            except Exception as exc:  # the message's own fault (a value that cannot be encoded...)
                log.error("message %d cannot be prepared (%s)", index, type(exc).__name__)
                reasons[index] = type(exc).__name__
        batches: list[list[_Prepared]] = []
        for index, entry, size in prepared:
            current = batches[-1] if batches else None
            if (
                current is None
                or len(current) >= SQS_MAX_BATCH_ENTRIES
                or sum(s for _, _, s in current) + size > max_batch
            ):
                batches.append([(index, entry, size)])
            else:
                current.append((index, entry, size))
        acknowledged: list[int] = []
        for position, batch in enumerate(batches):
            outcome = self._send_batch(batch)
            acknowledged.extend(outcome.acknowledged)
            reasons.update(outcome.refused)
            if outcome.unsent:
                rest = outcome.unsent + [i for b in batches[position + 1 :] for i, _, _ in b] + held
                return SendResult(sorted(acknowledged), sorted(rest), outcome.code, sorted(reasons), reasons)
        return SendResult(sorted(acknowledged), held, code, sorted(reasons), reasons)

    def _entry(self, index: int, message: OutboundMessage, max_message: int) -> _Prepared:
        body = message.body
        size = message_size(body, message.attributes)
        if size > max_message:
            if self._s3 is None or not self._bucket:
                raise _Refused("MessageTooLarge")
            payload = body.encode()
            key = claim_check_key(self._prefix, message.dedup_id)
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=payload, ContentType="application/json")
            body = claim_check_pointer(
                message.dedup_id,
                self._bucket,
                key,
                len(payload),
                event_key=message.event_key,
                event_id=message.event_id,
            )
            size = message_size(body, message.attributes)
        item: SendMessageBatchRequestEntryTypeDef = {"Id": str(index), "MessageBody": body}
        if message.attributes:
            item["MessageAttributes"] = sqs_attributes(message.attributes)
        if self._fifo:
            item["MessageGroupId"] = message.group_id
            item["MessageDeduplicationId"] = message.dedup_id
        return index, item, size

    def _send_batch(self, batch: list[_Prepared]) -> _BatchOutcome:
        """One batch, with retries: what SQS acknowledged, refused for good, and left unsent."""
        pending = {str(prepared[0]): prepared for prepared in batch}
        out = _BatchOutcome()
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._retry_delay * 2 ** (attempt - 1))
            try:
                response = self._sqs.send_message_batch(
                    QueueUrl=self._queue_url, Entries=[entry for _, entry, _ in pending.values()]
                )
            except Exception as exc:
                retryable, out.code, _ = classify_error(exc)
                log.warning("SendMessageBatch of %d entries failed (%s)", len(pending), out.code)
                if retryable:
                    continue
                if out.code in MESSAGE_FAULT_CODES:
                    if len(pending) > 1:  # one of them spoilt the request: find it, send the others
                        alone = self._one_by_one(list(pending.values()))
                        out.acknowledged.extend(alone.acknowledged)
                        out.refused.update(alone.refused)
                        out.unsent, out.code = alone.unsent, alone.code
                        return out
                    log.error("SQS refused a message for good (%s)", out.code)
                    out.refused.update((p[0], out.code) for p in pending.values())
                    pending.clear()
                break  # the queue's fault (missing, access denied...): not the messages'
            for ok in response.get("Successful", []):
                if pending.pop(ok["Id"], None) is not None:
                    out.acknowledged.append(int(ok["Id"]))
            for bad in response.get("Failed", []):
                out.code = bad.get("Code") or "Unknown"
                if bad.get("SenderFault") and out.code not in RETRYABLE_CODES and bad["Id"] in pending:
                    del pending[bad["Id"]]
                    log.error("SQS refused a message for good (%s)", out.code)
                    out.refused[int(bad["Id"])] = out.code
            if not pending:
                break
            log.warning(
                "SendMessageBatch: %d entries not acknowledged (%s)", len(pending), out.code or "missing"
            )
        out.unsent = [index for index, _, _ in pending.values()]
        if out.unsent and not out.code:
            out.code = "NotAcknowledged"
        return out

    def _one_by_one(self, entries: list[_Prepared]) -> _BatchOutcome:
        out = _BatchOutcome()
        for position, prepared in enumerate(entries):
            single = self._send_batch([prepared])
            out.acknowledged.extend(single.acknowledged)
            out.refused.update(single.refused)
            if single.unsent:  # trouble that may pass: this one and the rest wait, in order
                out.unsent = single.unsent + [index for index, _, _ in entries[position + 1 :]]
                out.code = single.code
                break
        return out


# ---------------------------------------------------------------------------------------------
# S3: spilled pages and parked malformed items

SpillEntry = tuple[Any, str | None]
"""A spilled Poll API item and the stand-in id it is published under if it has no businessEventId."""


class SpillUnreadable(ValueError):
    """A spill object that is not a spill document. `body`: what it holds (park it, never log it)."""

    def __init__(self, message: str, body: bytes) -> None:
        super().__init__(message)
        self.body = body


def spill_stand_in(key: str, position: int) -> str:
    """The stand-in id of the item at `position` of a spill document that recorded none (schema
    version 1): derived from the object's key, so that every re-delivery of it uses the same."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"ohip-relay-spill:{key}#{position}").hex


class SpillStore:
    """Raw Poll API items parked in S3 (`spill/<chain>/`, `malformed/<chain>/`). Keys sort by time.

    A document: `{"schemaVersion": 2, "chainCode", "writtenAt", "reason", "items": [raw items],
    "standInIds": [null or the stand-in id of the item at the same position]}`; version 1 (and a
    parked document) has no `standInIds`."""

    def __init__(self, s3: S3Client, bucket: str, chain_code: str, *, clock: Callable[[], float] = time.time):
        self._s3 = s3
        self._bucket = bucket
        self._chain = chain_code
        self._clock = clock

    @property
    def spill_prefix(self) -> str:
        return f"{SPILL_PREFIX}{self._chain}/"

    def _new_key(self, prefix: str) -> str:
        return f"{prefix}{int(self._clock() * 1000):015d}-{uuid.uuid4().hex}.json"

    def _put(
        self, key: str, items: Sequence[Any], reason: str, stand_ins: Sequence[str | None] | None = None
    ) -> None:
        document: dict[str, Any] = {
            "schemaVersion": SPILL_SCHEMA_VERSION,
            "chainCode": self._chain,
            "writtenAt": datetime.fromtimestamp(self._clock(), UTC).isoformat(),
            "reason": reason,
            "items": list(items),
        }
        if stand_ins is not None:
            document["standInIds"] = list(stand_ins)
        self._s3.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=json.dumps(document, separators=(",", ":")).encode(),
            ContentType="application/json",
        )

    def spill(self, entries: Sequence[SpillEntry], reason: str) -> str:
        key = self._new_key(self.spill_prefix)
        self.rewrite(key, entries, reason)
        return key

    def rewrite(self, key: str, entries: Sequence[SpillEntry], reason: str) -> None:
        self._put(key, [raw for raw, _ in entries], reason, [stand_in for _, stand_in in entries])

    def park_malformed(self, items: Sequence[Any], reason: str) -> str:
        key = self._new_key(f"{MALFORMED_PREFIX}{self._chain}/")
        self._put(key, items, reason)
        return key

    def pending(self) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self.spill_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            response = self._s3.list_objects_v2(**kwargs)
            keys.extend(obj["Key"] for obj in response.get("Contents", []) if "Key" in obj)
            if not response.get("IsTruncated"):
                return sorted(keys)
            token = response.get("NextContinuationToken")

    def load(self, key: str) -> list[SpillEntry]:
        """The items of a spill document, each with the stand-in id to publish it under if it has no
        businessEventId. Raises `SpillUnreadable` for an object that is not a spill document."""
        body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        try:
            document = json.loads(body)
        except ValueError:
            raise SpillUnreadable(f"spill object {key} is not JSON", body) from None
        items = document.get("items") if isinstance(document, dict) else None
        if not isinstance(items, list):
            raise SpillUnreadable(f"spill object {key} has no items list", body)
        stored = document.get("standInIds")
        if not isinstance(stored, list) or len(stored) != len(items):
            stored = [None] * len(items)
        return [
            (item, given if isinstance(given, str) and given else spill_stand_in(key, position))
            for position, (item, given) in enumerate(zip(items, stored, strict=True))
        ]

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self._bucket, Key=key)


# ---------------------------------------------------------------------------------------------
# The tick


def _lacks_business_event_id(item: object) -> bool:
    """An item that `from_poll` can publish only under a stand-in id (a bad id stays malformed)."""
    if not isinstance(item, Mapping):
        return False
    try:
        return business_event_id_of(item) is None
    except MalformedEvent:
        return False


class _StopTick(Exception):
    def __init__(self, ended: str) -> None:
        super().__init__(ended)
        self.ended = ended


@dataclass(frozen=True)
class _Item:
    raw: Any
    stand_in: str | None  # the stand-in id it is published under (no businessEventId), else None
    event: CanonicalEvent


@dataclass
class _Page:
    events: list[_Item]  # valid, one per eventId, in page order
    malformed: list[tuple[Any, str]]  # (raw item, field or reason)
    repeats: int = 0  # items whose eventId an earlier item of the page had


@dataclass
class _Delivery:
    acknowledged: list[_Item]  # on the queue
    unsent: list[_Item]  # SQS failed retryably: for the spill
    code: str  # why they are unsent
    unparked: list[SpillEntry]  # to be parked, but S3 refused: kept in the spill instead


class PollFallback:
    """One chain's poll fallback. `tick(remaining)` runs one tick; `remaining()` returns the seconds
    left before the invocation must end (the Lambda context's remaining time).

    `subscription_id`: the registry entry this chain is polled for (None: the chain code, the
    single-chain shape); its events carry it (`events.from_poll(subscription=...)`).
    `in_fleet`: one of many chains of one invocation (fleet_fallback.py). The fleet judged the
    chain already and gives the decision to `tick`; it reports health as fleet-wide counts, so the
    tick sets no per-chain gauge, and it logs only the lines that matter per chain (the fallback
    activated or deactivated, errors), each naming the subscription (text and field
    `subscription`); the rest goes to debug."""

    def __init__(
        self,
        *,
        chain_code: str,
        hotel_ids: Sequence[str],
        poll: PollClient,
        state: StateStore,
        seen: SeenSet,
        sender: SqsBatchSender,
        spill: SpillStore,
        telemetry: Telemetry,
        thresholds: HealthThresholds | None = None,
        options: FallbackOptions | None = None,
        clock: Callable[[], float] = time.time,
        subscription_id: str | None = None,
        in_fleet: bool = False,
    ) -> None:
        self.chain_code = chain_code
        self.subscription_id = subscription_id
        self.in_fleet = in_fleet
        self.targets: tuple[str | None, ...] = tuple(hotel_ids) or (None,)
        self.poll = poll
        self.state = state
        self.seen = seen
        self.sender = sender
        self.spill = spill
        self.telemetry = telemetry
        self.thresholds = thresholds or HealthThresholds()
        self.options = options or FallbackOptions()
        self.clock = clock

    # -- the tick -------------------------------------------------------------------------------

    def tick(self, remaining: Callable[[], float], *, decision: FallbackDecision | None = None) -> TickReport:
        """One tick. `decision`: the verdict someone already reached at this tick (the fleet judged
        every chain from batched reads, fleet_health.py); None: read `heartbeat#<chain>` and
        `fallback#<chain>` and decide here."""
        report = TickReport()
        now = self.clock()
        if decision is None:
            try:
                record, heartbeat = self.state.get_fallback(), self.state.get_heartbeat()
                decision = decide(record, heartbeat, now, self.thresholds)
            except StateStoreError as exc:
                # Without the heartbeat there is no verdict; the stream needs the same table, so the
                # likeliest cause is ours. Poll nothing: OHIP keeps the events queued.
                self._error(report, f"state table unreadable ({exc.code})")
                report.ended = "state-error"
                return report
            report.never_seen = record is None and heartbeat is None
        self._note_decision(report, decision)
        self._save(decision.record, report, now, counters=False)
        try:
            self._redeliver_spills(report, remaining)
            if decision.active:
                self._drain(report, remaining, publish=True)
            else:
                self._drain(report, remaining, publish=False)
        except _StopTick as stop:
            report.ended = stop.ended
        finally:
            self._save(decision.record, report, self.clock(), counters=True)
        return report

    def _note_decision(self, report: TickReport, decision: FallbackDecision) -> None:
        report.healthy = decision.health.healthy
        report.active = decision.active
        report.started = decision.started
        report.stopped = decision.stopped
        report.reason = decision.health.reason
        if not self.in_fleet:
            self.telemetry.gauge(Metric.STREAM_HEALTHY, 1.0 if report.healthy else 0.0)
            self.telemetry.gauge(Metric.FALLBACK_ACTIVE, 1.0 if report.active else 0.0)
        if decision.started:
            self._log(logging.WARNING, "poll fallback activated: stream %s", decision.health.reason)
        elif decision.stopped:
            self._log(
                logging.INFO,
                "poll fallback deactivated: stream healthy for %.0fs",
                self.thresholds.recover_seconds,
            )

    def _save(self, record: FallbackRecord, report: TickReport, now: float, *, counters: bool) -> None:
        try:
            self.state.save_fallback(record, add=report.counters() if counters else None, now=now)
        except StateStoreError as exc:
            self._error(report, f"cannot save the fallback state ({exc.code})")

    def _error(self, report: TickReport, text: str) -> None:
        report.errors.append(text)
        self.telemetry.count(Metric.POLL_ERRORS)
        self._log(logging.ERROR, "poll tick: %s", text)

    def _log(self, level: int, message: str, *args: object, chatter: bool = False) -> None:
        """A line about this chain. In a fleet it names the subscription, and `chatter` (what every
        tick says, page by page) goes to debug: per chain only changes and errors are logged."""
        if not self.in_fleet:
            log.log(level, message, *args)
            return
        subscription = self.subscription_id or self.chain_code
        log.log(
            logging.DEBUG if chatter else level,
            "[%s] " + message,
            subscription,
            *args,
            extra={"subscription": subscription},
        )

    def _time_left(self, remaining: Callable[[], float]) -> float:
        """Seconds a new step may use; raises `_StopTick("time")` under the safety margin."""
        left = remaining()
        if left < self.options.safety_margin_s:
            raise _StopTick("time")
        return left

    # -- spills -----------------------------------------------------------------------------------

    def _redeliver_spills(self, report: TickReport, remaining: Callable[[], float]) -> None:
        try:
            keys = self.spill.pending()
        except (ClientError, BotoCoreError) as exc:
            # Without the spill store nothing fetched could be parked if SQS failed: fetch nothing.
            self._error(report, f"cannot list spilled pages ({classify_error(exc)[1]})")
            raise _StopTick("spill-store-error") from exc
        report.spills_pending = len(keys)
        for key in keys:
            self._time_left(remaining)
            try:
                entries = self.spill.load(key)
            except SpillUnreadable as exc:
                # Poison at the document level: parked as it is, so that it never blocks the spill.
                if not self._park_body(report, exc.body, str(exc)):
                    raise _StopTick("spill-store-error") from exc
                entries = []
            except (ClientError, BotoCoreError) as exc:
                self._error(report, f"cannot read spilled page {key} ({classify_error(exc)[1]})")
                raise _StopTick("spill-store-error") from exc
            delivery = self._deliver(report, entries, key)
            report.redelivered += len(delivery.acknowledged)
            left = [(item.raw, item.stand_in) for item in delivery.unsent] + delivery.unparked
            try:
                if left:
                    self.spill.rewrite(key, left, delivery.code if delivery.unsent else "not parked")
                else:
                    self.spill.delete(key)
                    report.spills_pending -= 1
            except (ClientError, BotoCoreError) as exc:
                # The object still holds (a superset of) what is not delivered: duplicates, not loss.
                self._record(delivery.acknowledged)
                self._error(report, f"cannot update spilled page {key} ({classify_error(exc)[1]})")
                raise _StopTick("spill-store-error") from exc
            self._record(delivery.acknowledged)
            if delivery.unsent:
                self._error(
                    report, f"SQS did not take spilled page {key} ({delivery.code}); {len(left)} left"
                )
                raise _StopTick("sqs-error")
            if delivery.unparked:
                self._error(report, f"spilled page {key}: {len(left)} item(s) could not be parked")
                raise _StopTick("spill-store-error")
            self._log(
                logging.INFO,
                "spilled page %s re-delivered (%d events)",
                key,
                len(delivery.acknowledged),
                chatter=True,
            )

    # -- draining ---------------------------------------------------------------------------------

    def _drain(self, report: TickReport, remaining: Callable[[], float], *, publish: bool) -> None:
        opts = self.options
        targets = list(self.targets)
        while targets:
            for target in list(targets):
                if not publish and report.pages >= opts.max_discard_pages:
                    raise _StopTick("discard-limit")
                left = self._time_left(remaining)
                timeout = max(0.5, min(opts.request_timeout_s, left - opts.handoff_reserve_s))
                try:
                    items = self.poll.fetch(target, opts.page_limit, timeout=timeout)
                except PollResponseMalformed as exc:
                    self._park_body(report, exc.body, str(exc))
                    raise _StopTick("poll-error") from exc
                except PollError as exc:
                    self._error(report, str(exc))
                    raise _StopTick("poll-error") from exc
                if not items:
                    targets.remove(target)
                    continue
                report.pages += 1
                report.fetched += len(items)
                self.telemetry.count(Metric.POLL_EVENTS_FETCHED, len(items))
                if publish:
                    self._hand_on(report, items)
                else:
                    report.discarded += len(items)
                    self._log(
                        logging.INFO,
                        "discarded %d polled events: the stream is judged healthy (%s) and delivers them "
                        "itself, live or by replay from its checkpoint",
                        len(items),
                        report.reason,
                        chatter=True,
                    )
        report.ended = "empty"

    def _hand_on(self, report: TickReport, items: Sequence[Any]) -> None:
        """Make one fetched page durable (on the queue, parked, or in the spill), then record what
        SQS acknowledged. Raises `_StopTick` when something had to be spilled."""
        delivery = self._deliver(report, [(raw, None) for raw in items], "the Poll API")
        left = [(item.raw, item.stand_in) for item in delivery.unsent] + delivery.unparked
        key = ""
        failure: Exception | None = None
        if left:
            try:
                key = self.spill.spill(left, delivery.code if delivery.unsent else "not parked")
            except (ClientError, BotoCoreError) as exc:
                failure = exc
        self._record(delivery.acknowledged)  # last: nothing is recorded before SQS has it
        if failure is not None:
            ids = ", ".join(item.event.event_id for item in delivery.unsent)
            self._log(
                logging.CRITICAL,
                "%d polled items could be neither sent to SQS (%s) nor spilled to S3 (%s): event ids %s",
                len(left),
                delivery.code or "-",
                classify_error(failure)[1],
                ids or "-",
            )
            self._error(report, "spill failed")
            raise FallbackError(f"{len(left)} polled items could be neither sent nor spilled") from failure
        if not left:
            return
        report.spilled += len(left)
        report.spills_pending += 1
        self.telemetry.count(Metric.POLL_SPILLED, len(left))
        if delivery.unsent:
            self._error(report, f"SQS did not take {len(left)} item(s) ({delivery.code}); spilled to {key}")
            raise _StopTick("sqs-error")
        self._error(report, f"{len(left)} item(s) could not be parked; spilled to {key}")
        raise _StopTick("spill-store-error")

    # -- one page ---------------------------------------------------------------------------------

    def _normalise(self, entries: Sequence[SpillEntry]) -> _Page:
        relayed_at = datetime.fromtimestamp(self.clock(), UTC)
        page = _Page([], [])
        ids: set[str] = set()
        for raw, given in entries:
            # The identity of an item without businessEventId: its spilled stand-in, else a new one.
            stand_in = (given or uuid.uuid4().hex) if _lacks_business_event_id(raw) else None
            try:
                event = from_poll(
                    raw, self.chain_code, relayed_at, stand_in_id=stand_in, subscription=self.subscription_id
                )
            except MalformedEvent as exc:
                page.malformed.append((raw, exc.field))
                continue
            except Exception as exc:  # anything else the item can make go wrong: never fatal
                page.malformed.append((raw, f"unreadable ({type(exc).__name__})"))
                continue
            if event.event_id in ids:
                page.repeats += 1  # the same event twice: sent once (identity, never content)
                continue
            ids.add(event.event_id)
            page.events.append(_Item(raw, stand_in, event))
        return page

    def _deliver(self, report: TickReport, entries: Sequence[SpillEntry], where: str) -> _Delivery:
        """Normalise a page, park what is malformed, send the rest, park what SQS refused for good.
        Records nothing: the caller first makes the unsent part durable."""
        page = self._normalise(entries)
        unparked: list[SpillEntry] = []
        if page.malformed:
            fields = sorted({name for _, name in page.malformed})
            raws = [raw for raw, _ in page.malformed]
            if not self._park(report, raws, "malformed: " + ", ".join(fields), where):
                unparked.extend((raw, None) for raw in raws)
        if page.repeats:
            report.duplicates += page.repeats
            self.telemetry.count(Metric.DUPLICATES_SUPPRESSED, page.repeats)
        ready: list[_Item] = []
        messages: list[OutboundMessage] = []
        refused: list[tuple[_Item, str]] = []
        for item in page.events:
            try:
                messages.append(outbound_message(item.event))
            except Exception as exc:  # a value the message cannot carry: poison, never fatal
                refused.append((item, type(exc).__name__))
                continue
            ready.append(item)
        result = self.sender.send(messages)
        refused.extend((ready[i], result.reasons.get(i) or result.code or "Refused") for i in result.rejected)
        if refused:
            codes = sorted({code for _, code in refused})
            self._error(report, f"{len(refused)} event(s) can never be sent ({', '.join(codes)})")
            raws = [item.raw for item, _ in refused]
            if not self._park(report, raws, "refused: " + ", ".join(codes), where):
                unparked.extend((item.raw, item.stand_in) for item, _ in refused)
        acknowledged = [ready[i] for i in result.acknowledged]
        report.published += len(acknowledged)
        self.telemetry.count(Metric.POLL_EVENTS_PUBLISHED, len(acknowledged))
        return _Delivery(acknowledged, [ready[i] for i in result.unsent], result.code, unparked)

    def _record(self, acknowledged: Sequence[_Item]) -> None:
        """Tell the stream what is on the queue: the seen-set, then the mark. Failures are warnings
        (the stream then publishes its copies too: duplicates, never a loss)."""
        if not acknowledged:
            return
        try:
            self.seen.record((item.event.event_key, item.event.event_id) for item in acknowledged)
        except SeenSetUnavailable as exc:
            self._log(
                logging.WARNING,
                "seen-set unavailable (%s): %d of %d published event(s) may not be recorded; "
                "the stream publishes its copies too",
                exc.code,
                len(exc.unknown),
                len(acknowledged),
            )
        newest = max(item.event.occurred_at for item in acknowledged)
        try:
            self.state.advance_fallback_mark(newest)
        except StateStoreError as exc:
            # The stream may then not look these up in the seen-set: duplicates, never loss.
            self._log(logging.WARNING, "cannot raise the fallback mark (%s)", exc.code)

    def _park(self, report: TickReport, items: list[Any], reason: str, where: str) -> bool:
        """Park raw items under `malformed/` and count them; False when S3 did not take them."""
        report.malformed += len(items)
        self.telemetry.count(Metric.MALFORMED_EVENTS, len(items))
        self._log(
            logging.WARNING, "%d poll item(s) from %s cannot be published (%s)", len(items), where, reason
        )
        try:
            key = self.spill.park_malformed(items, reason)
        except (ClientError, BotoCoreError) as exc:
            self._error(report, f"cannot park {len(items)} item(s) ({classify_error(exc)[1]})")
            return False
        self._log(logging.WARNING, "poll item(s) parked in s3 %s", key)
        return True

    def _park_body(self, report: TickReport, body: bytes, reason: str) -> bool:
        """Park a Poll API answer or a spill object that is not what it should be."""
        self._error(report, reason)
        return self._park(report, [body.decode("utf-8", "replace")], reason, "an unreadable document")


# ---------------------------------------------------------------------------------------------
# Wiring


@contextmanager
def open_fallback(
    settings: Settings,
    telemetry: Telemetry,
    *,
    options: FallbackOptions | None = None,
    clock: Callable[[], float] = time.time,
    http: httpx.Client | None = None,
) -> Iterator[PollFallback]:
    """A fallback wired from settings (Need.OHIP, Need.POLL, Need.AWS, secrets resolved)."""
    import httpx

    from .auth import OAuthParams, SyncTokenProvider
    from .config import ConfigError

    if not settings.bucket_name:
        raise ConfigError("RELAY_BUCKET_NAME: missing (the poll fallback parks events there when SQS fails)")
    opts = options or FallbackOptions(page_limit=settings.poll_page_limit)
    s3, dynamodb, sqs = _aws_clients(settings)
    client = http or httpx.Client(timeout=httpx.Timeout(opts.request_timeout_s), trust_env=False)
    try:
        tokens = SyncTokenProvider(OAuthParams.from_settings(settings), client, clock=time.time)
        yield build_fallback(
            settings,
            telemetry,
            s3=s3,
            dynamodb=dynamodb,
            sender=batch_sender(settings, sqs, s3, opts),
            http=client,
            tokens=tokens,
            options=opts,
            clock=clock,
        )
    finally:
        if http is None:
            client.close()


def build_fallback(
    settings: Settings,
    telemetry: Telemetry,
    *,
    s3: S3Client,
    dynamodb: DynamoDBClient,
    sender: SqsBatchSender,
    http: httpx.Client,
    tokens: SyncTokenProvider,
    options: FallbackOptions,
    clock: Callable[[], float] = time.time,
    subscription_id: str | None = None,
    in_fleet: bool = False,
) -> PollFallback:
    """One chain's fallback from its settings (secrets resolved) and parts that several chains of
    one invocation may share (AWS clients, the sender, the HTTP client, a token provider per OAuth
    client). With `subscription_id` (fleet mode) its state items, seen-set entries and spill are
    the subscription's (`fallback#<id>`, `seen#<id>#...`, `spill/<id>/`); without, the chain
    code's, as they always were."""
    scope = subscription_id or settings.chain_code
    return PollFallback(
        chain_code=settings.chain_code,
        hotel_ids=settings.hotel_ids,
        poll=PollClient(
            http,
            tokens,
            gateway_url=settings.gateway_url,
            app_key=settings.app_key,
            external_system=settings.external_system,
            chain_code=settings.chain_code,
        ),
        state=StateStore(dynamodb, settings.table_name, scope),
        seen=SeenSet(
            dynamodb,
            settings.table_name,
            ttl_days=settings.seen_ttl_days,
            clock=clock,
            subscription=subscription_id,
        ),
        sender=sender,
        spill=SpillStore(s3, settings.bucket_name, scope, clock=clock),
        telemetry=telemetry,
        thresholds=health_thresholds(settings),
        options=options,
        clock=clock,
        subscription_id=subscription_id,
        in_fleet=in_fleet,
    )


def batch_sender(
    settings: Settings, sqs: SQSClient, s3: S3Client, options: FallbackOptions
) -> SqsBatchSender:
    """The fallback's sender to the relay queue, claim checks in the bucket (thread-safe: the chains
    of one fleet invocation share one)."""
    return SqsBatchSender(
        sqs,
        settings.queue_url,
        s3=s3,
        claim_check_bucket=settings.bucket_name,
        claim_check_prefix=options.claim_check_prefix,
        attempts=options.send_attempts,
        retry_delay_s=options.retry_delay_s,
    )


def health_thresholds(settings: Settings) -> HealthThresholds:
    return HealthThresholds(
        stale_seconds=settings.health_stale_seconds,
        grace_seconds=settings.health_grace_seconds,
        recover_seconds=settings.health_recover_seconds,
    )


# A tick holds events the Poll API has already removed until SQS or S3 took them, inside a Lambda
# that is killed at its timeout: no AWS call may hang for botocore's default 60 s (x 5 attempts).
# Worst case per call: 2 x (3 + 8) s plus backoff, inside the tick's safety margin plus the page.
POLL_BOTO_CONFIG = Config(
    connect_timeout=3, read_timeout=8, retries={"mode": "standard", "total_max_attempts": 2}
)


@functools.lru_cache(maxsize=4)
def _aws_clients(settings: Settings) -> tuple[Any, Any, Any]:
    """S3, DynamoDB and SQS clients, created once per settings (warm Lambda invocations reuse them)."""
    from .runtime import aws_client

    return (
        aws_client(settings, "s3", config=POLL_BOTO_CONFIG),
        aws_client(settings, "dynamodb", config=POLL_BOTO_CONFIG),
        aws_client(settings, "sqs", config=POLL_BOTO_CONFIG),
    )


def deadline_after(seconds: float, *, clock: Callable[[], float] = time.monotonic) -> Callable[[], float]:
    """A `remaining()` for the command line: seconds left until `seconds` from now."""
    end = clock() + seconds
    return lambda: end - clock()
