"""The poll fallback: one tick of the scheduled Lambda (`ohip-relay poll` runs the same tick).

A tick:

1. reads the stream's heartbeat and its own record (`fallback#<chain>`), decides with
   `health.decide` (staleness, grace, hysteresis) and persists the decision;
2. re-delivers the pages that earlier ticks parked in S3 (`spill/<chain>/`) because SQS failed,
   oldest first, deleting each one once SQS acknowledged all of it (whatever the stream's health:
   these events were taken off OHIP's queue and exist nowhere else);
3. **fallback active** (stream unhealthy): drains the Poll API page by page (per hotel, round robin,
   when OHIP_HOTEL_IDS is set; else the external system's chain-wide queue) until it is empty or the
   remaining time falls below the safety margin. The Poll API removes what it returns, so every page
   is handed on durably before the next one is requested: valid items are normalised, claimed in
   the seen-set (known keys are duplicates and skipped), the fallback's mark
   (`last_polled_occurred_at`) is raised, and the events are sent to SQS. What SQS does not
   acknowledge is written to S3 as raw items (`spill/`) and the tick stops; malformed items are
   reported, parked under `malformed/<chain>/` and skipped, their valid neighbours go on;
4. **fallback inactive** (stream healthy): drains the Poll API the same way and discards what it
   fetched (counts only). The stream delivers those changes and replays from its checkpoint after
   any outage; an undrained backlog would be published as a flood of stale duplicates at the
   start of the next outage. Bounded by `max_discard_pages` and the remaining time.

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .events import CanonicalEvent, MalformedEvent, from_poll
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
    sqs_attributes,
)
from .seen import SeenSet, SeenSetUnavailable
from .state import FallbackRecord, StateStore, StateStoreError
from .telemetry import Metric, Telemetry

if TYPE_CHECKING:
    import httpx
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

    from .config import Settings

log = logging.getLogger("ohip_relay.fallback")

SPILL_PREFIX = "spill/"
MALFORMED_PREFIX = "malformed/"
SPILL_SCHEMA_VERSION = 1


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

    def summary(self) -> str:
        health = "healthy" if self.healthy else "unhealthy"
        mode = "active" if self.active else "inactive"
        change = " (started)" if self.started else " (stopped)" if self.stopped else ""
        text = (
            f"stream {health} ({self.reason}); fallback {mode}{change}; pages {self.pages}, "
            f"fetched {self.fetched}, published {self.published}, discarded {self.discarded}, "
            f"duplicates {self.duplicates}, malformed {self.malformed}, spilled {self.spilled}, "
            f"redelivered {self.redelivered}; ended: {self.ended or '-'}"
        )
        if self.errors:
            text += f"; errors: {'; '.join(self.errors)}"
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


@dataclass(frozen=True)
class SendResult:
    acknowledged: list[int]  # indexes into the messages given, acknowledged by SQS
    unsent: list[int]  # not acknowledged (failed retryably, or not tried after a failure)
    code: str = ""  # the error that stopped the sending
    rejected: list[int] = field(default_factory=list)  # refused for good (sender fault): never send again

    @property
    def complete(self) -> bool:
        return not self.unsent


class SqsBatchSender:
    """Sends messages in order, 10 per SendMessageBatch, stopping at the first batch SQS does not
    fully acknowledge after `attempts` tries (later messages are left unsent so that the caller can
    park them in order). Oversize messages go to S3 as claim checks, as `SqsPublisher` does."""

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
        acknowledged: list[int] = []
        try:
            max_message, max_batch = self._limits()
            entries = [self._entry(i, m, max_message) for i, m in enumerate(messages)]
        except Exception as exc:
            _, code, _ = classify_error(exc)
            log.error("SQS unavailable before sending %d message(s): %s", len(messages), code)
            return SendResult([], list(range(len(messages))), code)
        batches: list[list[tuple[int, SendMessageBatchRequestEntryTypeDef, int]]] = []
        for index, entry, size in entries:
            current = batches[-1] if batches else None
            if (
                current is None
                or len(current) >= SQS_MAX_BATCH_ENTRIES
                or sum(s for _, _, s in current) + size > max_batch
            ):
                batches.append([(index, entry, size)])
            else:
                current.append((index, entry, size))
        rejected: list[int] = []
        for position, batch in enumerate(batches):
            ok, refused, code = self._send_batch(batch)
            acknowledged.extend(ok)
            rejected.extend(refused)
            if len(ok) + len(refused) < len(batch):
                done = set(acknowledged) | set(rejected)
                rest = [i for b in batches[position:] for i, _, _ in b if i not in done]
                return SendResult(acknowledged, rest, code, rejected)
        return SendResult(acknowledged, [], "", rejected)

    def _entry(
        self, index: int, message: OutboundMessage, max_message: int
    ) -> tuple[int, SendMessageBatchRequestEntryTypeDef, int]:
        body = message.body
        size = message_size(body, message.attributes)
        if size > max_message:
            if self._s3 is None or not self._bucket:
                raise ValueError("message too large and no claim-check bucket")
            payload = body.encode()
            key = claim_check_key(self._prefix, message.dedup_id)
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=payload, ContentType="application/json")
            body = claim_check_pointer(message.dedup_id, self._bucket, key, len(payload))
            size = message_size(body, message.attributes)
        item: SendMessageBatchRequestEntryTypeDef = {"Id": str(index), "MessageBody": body}
        if message.attributes:
            item["MessageAttributes"] = sqs_attributes(message.attributes)
        if self._fifo:
            item["MessageGroupId"] = message.group_id
            item["MessageDeduplicationId"] = message.dedup_id
        return index, item, size

    def _send_batch(
        self, batch: list[tuple[int, SendMessageBatchRequestEntryTypeDef, int]]
    ) -> tuple[list[int], list[int], str]:
        """(acknowledged, rejected for good, last error code) for one batch, with retries."""
        pending = {str(index): entry for index, entry, _ in batch}
        acknowledged: list[int] = []
        rejected: list[int] = []
        code = ""
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._retry_delay * 2 ** (attempt - 1))
            try:
                response = self._sqs.send_message_batch(
                    QueueUrl=self._queue_url, Entries=list(pending.values())
                )
            except Exception as exc:
                retryable, code, _ = classify_error(exc)
                log.warning("SendMessageBatch of %d entries failed (%s)", len(pending), code)
                if not retryable:
                    break
                continue
            for ok in response.get("Successful", []):
                if pending.pop(ok["Id"], None) is not None:
                    acknowledged.append(int(ok["Id"]))
            for bad in response.get("Failed", []):
                code = bad.get("Code") or "Unknown"
                if bad.get("SenderFault") and code not in RETRYABLE_CODES and bad["Id"] in pending:
                    del pending[bad["Id"]]
                    log.error("SQS refused a message for good (%s)", code)
                    rejected.append(int(bad["Id"]))
            if not pending:
                break
            log.warning("SendMessageBatch: %d entries not acknowledged (%s)", len(pending), code or "missing")
        if pending and not code:
            code = "NotAcknowledged"
        return sorted(acknowledged), sorted(rejected), code


# ---------------------------------------------------------------------------------------------
# S3: spilled pages and parked malformed items


class SpillStore:
    """Raw Poll API items parked in S3 (`spill/<chain>/`, `malformed/<chain>/`). Keys sort by time."""

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

    def _put(self, key: str, items: Sequence[Any], reason: str) -> None:
        document = {
            "schemaVersion": SPILL_SCHEMA_VERSION,
            "chainCode": self._chain,
            "writtenAt": datetime.fromtimestamp(self._clock(), UTC).isoformat(),
            "reason": reason,
            "items": list(items),
        }
        self._s3.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=json.dumps(document, separators=(",", ":")).encode(),
            ContentType="application/json",
        )

    def spill(self, items: Sequence[Any], reason: str) -> str:
        key = self._new_key(self.spill_prefix)
        self._put(key, items, reason)
        return key

    def rewrite(self, key: str, items: Sequence[Any], reason: str) -> None:
        self._put(key, items, reason)

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

    def load(self, key: str) -> list[Any]:
        body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        document = json.loads(body)
        items = document.get("items") if isinstance(document, dict) else None
        if not isinstance(items, list):
            raise ValueError(f"spill object {key} has no items list")
        return items

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self._bucket, Key=key)


# ---------------------------------------------------------------------------------------------
# The tick


def outbound(event: CanonicalEvent) -> OutboundMessage:
    """The SQS message for an event: body, attributes, FIFO ids, exactly as the stream sends them."""
    return OutboundMessage(
        body=event.to_json(),
        attributes=event.attribute_values(),
        group_id=event.message_group_id(),
        dedup_id=event.deduplication_id(),
    )


class _StopTick(Exception):
    def __init__(self, ended: str) -> None:
        super().__init__(ended)
        self.ended = ended


@dataclass
class _Page:
    events: list[tuple[Any, CanonicalEvent]]  # (raw item, event), valid ones
    malformed: list[tuple[Any, str]]  # (raw item, field)


class PollFallback:
    """One chain's poll fallback. `tick(remaining)` runs one tick; `remaining()` returns the seconds
    left before the invocation must end (the Lambda context's remaining time)."""

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
    ) -> None:
        self.chain_code = chain_code
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

    def tick(self, remaining: Callable[[], float]) -> TickReport:
        report = TickReport()
        now = self.clock()
        try:
            decision = decide(self.state.get_fallback(), self.state.get_heartbeat(), now, self.thresholds)
        except StateStoreError as exc:
            # Without the heartbeat there is no verdict; the stream needs the same table, so the
            # likeliest cause is ours. Poll nothing: OHIP keeps the events queued.
            self._error(report, f"state table unreadable ({exc.code})")
            report.ended = "state-error"
            return report
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
        log.info("poll tick: %s", report.summary())
        return report

    def _note_decision(self, report: TickReport, decision: FallbackDecision) -> None:
        report.healthy = decision.health.healthy
        report.active = decision.active
        report.started = decision.started
        report.stopped = decision.stopped
        report.reason = decision.health.reason
        self.telemetry.gauge(Metric.STREAM_HEALTHY, 1.0 if report.healthy else 0.0)
        self.telemetry.gauge(Metric.FALLBACK_ACTIVE, 1.0 if report.active else 0.0)
        if decision.started:
            log.warning("poll fallback activated: stream %s", decision.health.reason)
        elif decision.stopped:
            log.info("poll fallback deactivated: stream healthy for %.0fs", self.thresholds.recover_seconds)

    def _save(self, record: FallbackRecord, report: TickReport, now: float, *, counters: bool) -> None:
        try:
            self.state.save_fallback(record, add=report.counters() if counters else None, now=now)
        except StateStoreError as exc:
            self._error(report, f"cannot save the fallback state ({exc.code})")

    def _error(self, report: TickReport, text: str) -> None:
        report.errors.append(text)
        self.telemetry.count(Metric.POLL_ERRORS)
        log.error("poll tick: %s", text)

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
                items = self.spill.load(key)
            except (ClientError, BotoCoreError, ValueError) as exc:
                self._error(report, f"cannot read spilled page {key} ({type(exc).__name__})")
                raise _StopTick("spill-store-error") from exc
            page = self._normalise(items)
            self._report_malformed(report, page, key)
            # Already claimed when first fetched: no seen-set here, or they would be suppressed.
            result = self.sender.send([outbound(event) for _, event in page.events])
            self._park_rejected(report, [page.events[i][0] for i in result.rejected], result.code)
            delivered = len(result.acknowledged)
            report.published += delivered
            report.redelivered += delivered
            self.telemetry.count(Metric.POLL_EVENTS_PUBLISHED, delivered)
            try:
                if result.complete:
                    self.spill.delete(key)
                    report.spills_pending -= 1
                    log.info("spilled page %s re-delivered (%d events)", key, delivered)
                    continue
                left = [page.events[i][0] for i in result.unsent]
                self.spill.rewrite(key, left, result.code)
            except (ClientError, BotoCoreError) as exc:
                # The object still holds (a superset of) what is not delivered: duplicates, not loss.
                self._error(report, f"cannot update spilled page {key} ({classify_error(exc)[1]})")
                raise _StopTick("spill-store-error") from exc
            self._error(report, f"SQS did not take spilled page {key} ({result.code}); {len(left)} left")
            raise _StopTick("sqs-error")

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
                    log.info(
                        "stream healthy: discarded %d polled events (delivered by the stream)", len(items)
                    )
        report.ended = "empty"

    def _normalise(self, items: Sequence[Any]) -> _Page:
        relayed_at = datetime.fromtimestamp(self.clock(), UTC)
        page = _Page([], [])
        for item in items:
            try:
                page.events.append((item, from_poll(item, self.chain_code, relayed_at)))
            except MalformedEvent as exc:
                page.malformed.append((item, exc.field))
        return page

    def _report_malformed(self, report: TickReport, page: _Page, where: str) -> None:
        if not page.malformed:
            return
        report.malformed += len(page.malformed)
        self.telemetry.count(Metric.MALFORMED_EVENTS, len(page.malformed))
        fields = sorted({name for _, name in page.malformed})
        log.warning(
            "skipped %d malformed poll item(s) (fields: %s) from %s",
            len(page.malformed),
            ", ".join(fields),
            where,
        )
        try:
            key = self.spill.park_malformed(
                [raw for raw, _ in page.malformed], "malformed: " + ", ".join(fields)
            )
            log.warning("malformed poll items parked in s3 %s", key)
        except (ClientError, BotoCoreError) as exc:
            self._error(
                report, f"cannot park {len(page.malformed)} malformed item(s) ({classify_error(exc)[1]})"
            )

    def _park_body(self, report: TickReport, body: bytes, reason: str) -> None:
        report.malformed += 1
        self.telemetry.count(Metric.MALFORMED_EVENTS)
        self._error(report, reason)
        try:
            key = self.spill.park_malformed([body.decode("utf-8", "replace")], reason)
            log.warning("malformed Poll API answer parked in s3 %s", key)
        except (ClientError, BotoCoreError) as exc:
            self._error(report, f"cannot park a malformed Poll API answer ({classify_error(exc)[1]})")

    def _park_rejected(self, report: TickReport, items: list[Any], code: str) -> None:
        """Events SQS refused for good (a sender fault): parked beside the malformed ones, so that
        they neither block the spill nor vanish."""
        if not items:
            return
        self._error(report, f"SQS refused {len(items)} event(s) for good ({code})")
        try:
            key = self.spill.park_malformed(items, f"refused by SQS: {code}")
            log.error("events refused by SQS parked in s3 %s", key)
        except (ClientError, BotoCoreError) as exc:
            self._error(report, f"cannot park {len(items)} refused event(s) ({classify_error(exc)[1]})")

    def _hand_on(self, report: TickReport, items: Sequence[Any]) -> None:
        """Make one fetched page durable: on the queue, or in the spill. Raises `_StopTick`."""
        page = self._normalise(items)
        self._report_malformed(report, page, "the Poll API")
        # One event per key within the page, then the seen-set decides.
        unique: dict[str, tuple[Any, CanonicalEvent]] = {}
        for raw, event in page.events:
            unique.setdefault(event.event_key, (raw, event))
        repeated = len(page.events) - len(unique)
        try:
            new = self.seen.claim(unique)
        except SeenSetUnavailable as exc:
            log.warning(
                "seen-set unavailable (%s) for %d of %d events: publishing them anyway",
                exc.code,
                len(exc.unknown),
                len(unique),
            )
            new = exc.claimed | exc.unknown
        fresh = [pair for key, pair in unique.items() if key in new]
        duplicates = repeated + len(unique) - len(fresh)
        if duplicates:
            report.duplicates += duplicates
            self.telemetry.count(Metric.DUPLICATES_SUPPRESSED, duplicates)
        if not fresh:
            return
        newest = max(event.occurred_at for _, event in fresh)
        try:
            self.state.advance_fallback_mark(newest)
        except StateStoreError as exc:
            # The stream may then not look these up in the seen-set: duplicates, never loss.
            log.warning("cannot raise the fallback mark (%s)", exc.code)
        result = self.sender.send([outbound(event) for _, event in fresh])
        self._park_rejected(report, [fresh[i][0] for i in result.rejected], result.code)
        report.published += len(result.acknowledged)
        self.telemetry.count(Metric.POLL_EVENTS_PUBLISHED, len(result.acknowledged))
        if result.complete:
            return
        left = [fresh[i][0] for i in result.unsent]
        try:
            key = self.spill.spill(left, result.code)
        except (ClientError, BotoCoreError) as exc:
            keys = ", ".join(fresh[i][1].event_key for i in result.unsent)
            log.critical(
                "%d polled events could be neither sent to SQS (%s) nor spilled to S3 (%s): event keys %s",
                len(left),
                result.code,
                classify_error(exc)[1],
                keys,
            )
            self._error(report, "spill failed")
            raise FallbackError(f"{len(left)} polled events could be neither sent nor spilled") from exc
        report.spilled += len(left)
        report.spills_pending += 1
        self.telemetry.count(Metric.POLL_SPILLED, len(left))
        self._error(report, f"SQS did not take {len(left)} event(s) ({result.code}); spilled to {key}")
        raise _StopTick("sqs-error")


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
        yield PollFallback(
            chain_code=settings.chain_code,
            hotel_ids=settings.hotel_ids,
            poll=PollClient(
                client,
                tokens,
                gateway_url=settings.gateway_url,
                app_key=settings.app_key,
                external_system=settings.external_system,
                chain_code=settings.chain_code,
            ),
            state=StateStore(dynamodb, settings.table_name, settings.chain_code),
            seen=SeenSet(dynamodb, settings.table_name, ttl_days=settings.seen_ttl_days, clock=clock),
            sender=SqsBatchSender(
                sqs,
                settings.queue_url,
                s3=s3,
                claim_check_bucket=settings.bucket_name,
                claim_check_prefix=opts.claim_check_prefix,
                attempts=opts.send_attempts,
                retry_delay_s=opts.retry_delay_s,
            ),
            spill=SpillStore(s3, settings.bucket_name, settings.chain_code, clock=clock),
            telemetry=telemetry,
            thresholds=HealthThresholds(
                stale_seconds=settings.health_stale_seconds,
                grace_seconds=settings.health_grace_seconds,
                recover_seconds=settings.health_recover_seconds,
            ),
            options=opts,
            clock=clock,
        )
    finally:
        if http is None:
            client.close()


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
