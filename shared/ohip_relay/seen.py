"""The seen-set: which changes the poll fallback published, so that the stream's replay of the same
changes can be recognised, each poll copy cancelling at most one stream copy ("match once").

One item per content key (`events.CanonicalEvent.event_key`), ``seen#<eventKey>``, or in fleet
mode, where many subscriptions share the table, ``seen#<subscription id>#<eventKey>``:

``polled`` [SS]     the `eventId`s of the poll copies the fallback published with this key: added
                    by `record` only after SQS acknowledged them (never before: an event the
                    fallback dequeued but could not hand on must reach the queue by the stream).
``matched`` [SS]    the `eventId`s of the stream events suppressed against them (`match`).
``expiresAt`` [N]   the table's TTL attribute, `ttl_days` after the last `record`; `ttl_days` must
                    exceed OHIP's 7-day retention, so that no replay can bring an event back after
                    its entry expired. DynamoDB deletes expired items within a day or two; until then
                    an expired item matches nothing.

Why sets, and not one flag per key: the content key is the same for two changes that look alike
(the same field set, cleared and set again within one second). A flag would let one poll copy
suppress both stream copies, and the second change would be lost. With the sets, a stream event
is suppressed only while the key has more poll copies than matched stream events, or when this
very stream event was matched before (a second replay of it): `|matched| <= |polled|` always, so
the queue carries at least as many copies of each content as OHIP produced events with it.

* `record(copies)` (the poll fallback, after SQS acknowledged): one UpdateItem per key, ``ADD``
  to ``polled`` (idempotent: a retried request adds nothing twice), run in parallel on a small
  thread pool.
* `match(key, stream_event_id)` (the stream consumer, for replayed events the fallback may have
  published): one conditional UpdateItem that adds the stream event to ``matched`` only if the
  rule above allows it; True means "suppress". Idempotent too: botocore retrying a write that went
  through finds the stream event in ``matched`` and still answers True.

Cost: a record is one write request unit per published poll event (items stay well under 1 KB);
a match is one write request unit per replayed stream event that occurred at or before the
fallback's mark (`state.FallbackRecord.last_polled_occurred_at`), and nothing otherwise.

Scope: the content key leaves the chain code out (docs/event-format.md, "The event key"), so
two chains of one deployment can produce one key (the same hotel code, primary key, publisher,
second and changed values in two OPERA environments). A seen-set shared by them would let one
chain's poll copy suppress the other chain's stream copy: a loss. In fleet mode every seen-set is
therefore given its subscription id (`subscription=`), for every subscription, whether or not its
id is its chain code. Without it (the single-chain shape) the items are named as they always were.
A stream consumer and a fallback that disagree on the scope never match: duplicates, never a loss.

Errors: `SeenSetUnavailable` when DynamoDB cannot answer; `unknown` holds the keys whose fate is
unknown, so that callers choose a duplicate (publish anyway; record later) over a loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

SEEN_PREFIX = "seen#"
TTL_ATTRIBUTE = "expiresAt"
DEFAULT_TTL_DAYS = 8.0
_CONDITION_FAILED = "ConditionalCheckFailedException"


class SeenSetUnavailable(Exception):
    """DynamoDB did not answer for some keys. `unknown`: the keys whose outcome is unknown."""

    def __init__(self, message: str, *, unknown: set[str], code: str) -> None:
        super().__init__(message)
        self.unknown = unknown
        self.code = code


class SeenSet:
    """Poll copies published and stream copies matched, per content key (see the module
    docstring). Thread-safe."""

    def __init__(
        self,
        dynamodb_client: DynamoDBClient,
        table_name: str,
        *,
        ttl_days: float = DEFAULT_TTL_DAYS,
        clock: Callable[[], float] = time.time,
        max_workers: int = 8,
        subscription: str | None = None,
    ) -> None:
        if subscription is not None and not subscription:
            raise ValueError("subscription must not be empty")
        if ttl_days <= 7:
            raise ValueError("ttl_days must exceed OHIP's 7-day retention")
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._ddb = dynamodb_client
        self._table = table_name
        self._ttl = ttl_days * 86400.0
        self._clock = clock
        self._max_workers = max_workers
        self._prefix = SEEN_PREFIX if subscription is None else f"{SEEN_PREFIX}{subscription}#"

    def item_key(self, event_key: str) -> str:
        """`seen#<eventKey>`, or `seen#<subscription>#<eventKey>` for a scoped seen-set (content
        keys hold no "#", so the two forms never name one item)."""
        return f"{self._prefix}{event_key}"

    def record(self, copies: Iterable[tuple[str, str]]) -> None:
        """Record poll copies SQS acknowledged: (content key, poll `eventId`) pairs.

        Raises `SeenSetUnavailable` naming the keys that may not be recorded (their stream copies
        are then published too: a duplicate, never a loss).
        """
        by_key: dict[str, set[str]] = {}
        for key, event_id in copies:
            by_key.setdefault(key, set()).add(event_id)
        if not by_key:
            return
        now = self._clock()
        expires = f"{int(now + self._ttl)}"

        def one(item: tuple[str, set[str]]) -> ClientError | BotoCoreError | None:
            key, ids = item
            try:
                self._ddb.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": self.item_key(key)}},
                    UpdateExpression="ADD #polled :ids SET #ttl = :expires, #kind = :kind",
                    ExpressionAttributeNames={"#polled": "polled", "#ttl": TTL_ATTRIBUTE, "#kind": "kind"},
                    ExpressionAttributeValues={
                        ":ids": {"SS": sorted(ids)},
                        ":expires": {"N": expires},
                        ":kind": {"S": "seen"},
                    },
                )
            except (ClientError, BotoCoreError) as exc:
                return exc
            return None

        items = list(by_key.items())
        if len(items) == 1:
            outcomes = [one(items[0])]
        else:
            with ThreadPoolExecutor(
                max_workers=min(self._max_workers, len(items)), thread_name_prefix="seen-record"
            ) as pool:
                outcomes = list(pool.map(one, items))
        errors = [(key, exc) for (key, _), exc in zip(items, outcomes, strict=True) if exc is not None]
        if errors:
            code = _describe(errors[0][1])
            raise SeenSetUnavailable(
                f"DynamoDB UpdateItem on {self._table} failed for {len(errors)} of {len(items)} keys "
                f"({code})",
                unknown={key for key, _ in errors},
                code=code,
            )

    def match(self, event_key: str, stream_event_id: str) -> int:
        """Whether the stream event `stream_event_id` with content key `event_key` is a copy of
        one the fallback published, and may be suppressed: it may when it was matched before, or
        when the key has a poll copy not matched yet (which it now takes). Returns 0 when it may
        not, else how many stream events are matched under the key (more than 1: lookalikes).
        Raises `SeenSetUnavailable`."""
        now = self._clock()
        try:
            response = self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": self.item_key(event_key)}},
                UpdateExpression="ADD #matched :ids",
                ConditionExpression=(
                    "attribute_exists(#polled) AND #ttl > :now AND (contains(#matched, :id) OR "
                    "attribute_not_exists(#matched) OR size(#polled) > size(#matched))"
                ),
                ExpressionAttributeNames={"#polled": "polled", "#matched": "matched", "#ttl": TTL_ATTRIBUTE},
                ExpressionAttributeValues={
                    ":ids": {"SS": [stream_event_id]},
                    ":id": {"S": stream_event_id},
                    ":now": {"N": f"{int(now)}"},
                },
                ReturnValues="ALL_NEW",  # the whole (small) item: the matched set as stored
            )
        except ClientError as exc:
            if _code(exc) == _CONDITION_FAILED:
                return 0
            raise self._unavailable(event_key, exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(event_key, exc) from exc
        matched = response.get("Attributes", {}).get("matched", {}).get("SS") or [stream_event_id]
        return len(matched)

    def _unavailable(self, key: str, exc: ClientError | BotoCoreError) -> SeenSetUnavailable:
        code = _describe(exc)
        return SeenSetUnavailable(
            f"DynamoDB UpdateItem on {self._table} failed ({code})", unknown={key}, code=code
        )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _describe(exc: ClientError | BotoCoreError) -> str:
    return _code(exc) if isinstance(exc, ClientError) else type(exc).__name__
