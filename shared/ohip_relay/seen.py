"""The seen-set: which event keys have already been handed to SQS, in the state table.

One item per event key, ``seen#<eventKey>``, with ``expiresAt`` (the table's TTL attribute) set to
`ttl_days` after the claim; `ttl_days` must exceed OHIP's 7-day retention, so that no replay can
bring an event back after its entry expired. DynamoDB deletes expired items within a day or two;
until then an expired item is treated as absent.

* `claim(keys)` (the poll fallback, before publishing): one conditional PutItem per key
  (`attribute_not_exists`), run in parallel on a small thread pool; returns the keys that were new.
  A key already present was claimed before: its event is a duplicate. Each call writes a token of
  its own into its items and its condition also passes on that token, so that botocore retrying
  a write that went through but answered with an error (a 5xx after the write, a lost response)
  finds its own claim and still counts the key as new. Without it the retry's
  ConditionalCheckFailed made the fallback drop an event that nobody had published (chaos seed
  487), and the stream then skipped it too, as "already published by the fallback".
* `contains(keys)` (the stream consumer, for replayed events the fallback may have published):
  BatchGetItem, 100 keys per call, strongly consistent; returns the keys present.

Cost per event: a claim is one write request unit (the item is well under 1 KB); a lookup is one
read request unit per key (strongly consistent, under 4 KB). Nothing here runs on the stream's hot
path unless the stream asks.

Errors: `SeenSetUnavailable` when DynamoDB cannot answer for some keys; it carries what is known
(`claimed`: keys confirmed new, `unknown`: keys whose fate is unknown) so that the caller can choose
at-least-once (publish them anyway) over loss.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import KeysAndAttributesTypeDef

SEEN_PREFIX = "seen#"
TTL_ATTRIBUTE = "expiresAt"
DEFAULT_TTL_DAYS = 8.0
BATCH_GET_LIMIT = 100
_CONDITION_FAILED = "ConditionalCheckFailedException"
_MAX_UNPROCESSED_ROUNDS = 5


class SeenSetUnavailable(Exception):
    """DynamoDB did not answer for some keys. `claimed`: keys known to be new (claimed now);
    `unknown`: keys that may or may not have been seen before."""

    def __init__(self, message: str, *, claimed: set[str], unknown: set[str], code: str) -> None:
        super().__init__(message)
        self.claimed = claimed
        self.unknown = unknown
        self.code = code


class SeenSet:
    """Event keys already handed on, with a TTL (see the module docstring). Thread-safe."""

    def __init__(
        self,
        dynamodb_client: DynamoDBClient,
        table_name: str,
        *,
        ttl_days: float = DEFAULT_TTL_DAYS,
        clock: Callable[[], float] = time.time,
        max_workers: int = 8,
    ) -> None:
        if ttl_days <= 7:
            raise ValueError("ttl_days must exceed OHIP's 7-day retention")
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._ddb = dynamodb_client
        self._table = table_name
        self._ttl = ttl_days * 86400.0
        self._clock = clock
        self._max_workers = max_workers

    @staticmethod
    def item_key(event_key: str) -> str:
        return f"{SEEN_PREFIX}{event_key}"

    def claim(self, keys: Iterable[str]) -> set[str]:
        """Record `keys` as seen; return those that were not seen before (their events are new).

        Raises `SeenSetUnavailable` when some keys could not be decided (see its attributes).
        """
        unique = list(dict.fromkeys(keys))
        if not unique:
            return set()
        now = self._clock()
        expires = f"{int(now + self._ttl)}"
        claimed_at = f"{now:.3f}"
        token = uuid.uuid4().hex  # this call's: a retried request of this call passes the condition

        def one(key: str) -> bool | ClientError | BotoCoreError:
            try:
                self._ddb.put_item(
                    TableName=self._table,
                    Item={
                        "pk": {"S": self.item_key(key)},
                        "kind": {"S": "seen"},
                        TTL_ATTRIBUTE: {"N": expires},
                        "claimedAt": {"N": claimed_at},
                        "claimToken": {"S": token},
                    },
                    # An expired item that DynamoDB has not deleted yet counts as absent; an item
                    # holding this call's token is this call's own earlier attempt.
                    ConditionExpression="attribute_not_exists(pk) OR #ttl < :now OR #token = :token",
                    ExpressionAttributeNames={"#ttl": TTL_ATTRIBUTE, "#token": "claimToken"},
                    ExpressionAttributeValues={":now": {"N": f"{int(now)}"}, ":token": {"S": token}},
                )
            except ClientError as exc:
                if _code(exc) == _CONDITION_FAILED:
                    return False
                return exc
            except BotoCoreError as exc:
                return exc
            return True

        if len(unique) == 1:
            outcomes = [one(unique[0])]
        else:
            with ThreadPoolExecutor(
                max_workers=min(self._max_workers, len(unique)), thread_name_prefix="seen-claim"
            ) as pool:
                outcomes = list(pool.map(one, unique))
        new = {key for key, outcome in zip(unique, outcomes, strict=True) if outcome is True}
        errors = [(key, o) for key, o in zip(unique, outcomes, strict=True) if not isinstance(o, bool)]
        if errors:
            code = _describe(errors[0][1])
            raise SeenSetUnavailable(
                f"DynamoDB PutItem on {self._table} failed for {len(errors)} of {len(unique)} keys ({code})",
                claimed=new,
                unknown={key for key, _ in errors},
                code=code,
            )
        return new

    def contains(self, keys: Iterable[str]) -> set[str]:
        """The keys among `keys` that were claimed and have not expired. Raises `SeenSetUnavailable`
        (with `unknown` = the keys not answered) when DynamoDB cannot answer."""
        unique = list(dict.fromkeys(keys))
        found: set[str] = set()
        now = self._clock()
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            todo = unique[start : start + BATCH_GET_LIMIT]
            for round_ in range(_MAX_UNPROCESSED_ROUNDS):
                if round_:
                    time.sleep(0.05 * 2**round_)  # unprocessed keys: DynamoDB asks us to slow down
                request: dict[str, KeysAndAttributesTypeDef] = {
                    self._table: {
                        "Keys": [{"pk": {"S": self.item_key(key)}} for key in todo],
                        "ConsistentRead": True,
                        "ProjectionExpression": "pk, #ttl",
                        "ExpressionAttributeNames": {"#ttl": TTL_ATTRIBUTE},
                    }
                }
                try:
                    response = self._ddb.batch_get_item(RequestItems=request)
                except (ClientError, BotoCoreError) as exc:
                    code = _describe(exc)
                    raise SeenSetUnavailable(
                        f"DynamoDB BatchGetItem on {self._table} failed ({code})",
                        claimed=set(),
                        unknown=set(todo) | set(unique[start + BATCH_GET_LIMIT :]),
                        code=code,
                    ) from exc
                for item in response.get("Responses", {}).get(self._table, []):
                    if not _expired(item, now):
                        found.add(str(item["pk"]["S"])[len(SEEN_PREFIX) :])
                unprocessed: Any = response.get("UnprocessedKeys") or {}
                left: Any = (unprocessed.get(self._table) or {}).get("Keys", [])
                todo = [str(k["pk"]["S"])[len(SEEN_PREFIX) :] for k in left]
                if not todo:
                    break
            else:
                raise SeenSetUnavailable(
                    f"DynamoDB BatchGetItem on {self._table} left keys unprocessed",
                    claimed=set(),
                    unknown=set(todo) | set(unique[start + BATCH_GET_LIMIT :]),
                    code="UnprocessedKeys",
                )
        return found


def _expired(item: dict[str, Any], now: float) -> bool:
    value = item.get(TTL_ATTRIBUTE)
    if not value or "N" not in value:
        return False
    return float(value["N"]) < now


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _describe(exc: ClientError | BotoCoreError) -> str:
    return _code(exc) if isinstance(exc, ClientError) else type(exc).__name__
