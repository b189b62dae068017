"""The relay's state in DynamoDB: checkpoint, heartbeat and lease, one item each per chain.

All items live in the single state table (`template.yaml`: hash key `pk`, a string; TTL attribute
`expiresAt`, which none of these items set: they live as long as the deployment). Every item
carries `kind` and `chain` so that a scan of the table is readable by a human.

Item layout (DynamoDB types in brackets; times are epoch seconds with millisecond precision):

``checkpoint#<chain>``
    ``offset`` [N]      the highest OHIP offset such that it and every event before it were
                        acknowledged by SQS; a restart subscribes from here. Only ever increases.
                        -1: the log is read from offset 0 and nothing is handled yet (a stream
                        whose first event is offset 0). At most 20 digits.
    ``owner`` [S]       who wrote it (task id / function name), for `ohip-relay status`.
    ``updatedAt`` [N]   when it was written.

``heartbeat#<chain>``
    ``state`` [S]       standby | connecting | connected | backoff | draining | stopped | failed |
                        regressed | auth-failed (`StreamState`)
    ``owner`` [S]       the consumer that wrote it.
    ``updatedAt`` [N]   when it was written; a heartbeat older than a few intervals means the
                        consumer is gone, whatever `state` says.
    ``lastFrameAt`` [N], ``lastEventAt`` [N], ``lastOffset`` [N], ``checkpoint`` [N],
    ``lagSeconds`` [N], ``detail`` [S]
                        optional: the last frame of any kind, the last event, its offset, the offset
                        the consumer last checkpointed, how far behind OHIP's event timestamps it is,
                        and a short free text (a close code, a reason for `failed`). Absent when
                        unknown.

``lease#<chain>``
    ``owner`` [S]       the holder; absent after a release.
    ``leaseUntil`` [N]  the lease is held while ``now < leaseUntil``.
    ``renewedAt`` [N]   when it was last acquired or renewed.
    ``generation`` [N]  incremented by every successful acquire: a fencing token that tells two
                        holders apart across time.

``fallback#<chain>`` (written by the poll fallback, read by the stream consumer and `status`)
    ``active`` [BOOL]   the fallback is publishing what it polls (else it drains and discards).
    ``since`` [N]       when `active` last changed (absent before the first change).
    ``healthySince`` [N]        while active: since when the stream has been judged healthy at
                                every tick (hysteresis); absent otherwise.
    ``streamDownSince`` [N]     since when the stream has been seen not `connected`; absent while
                                it is connected.
    ``lastTickAt`` [N], ``lastReason`` [S]      the last tick and its health verdict (free text).
    ``lastPolledOccurredAt`` [N]        the newest `occurredAt` (epoch seconds) of any event the
                                fallback has claimed for publishing: every event the fallback
                                published or may still publish (from a spill) is at or before it.
                                Only ever increases.
    ``activations``, ``fetched``, ``published``, ``discarded``, ``spilled``, ``malformed``,
    ``duplicates`` [N]  counters since the item was created.

Guarantees: every write that can race is a conditional write evaluated by DynamoDB, so
`advance_checkpoint` never moves the stored offset backward and, of two owners acquiring the lease at
the same time, exactly one succeeds. A condition that does not hold is an ordinary `False` result.
Any other DynamoDB failure raises `StateStoreError`, naming the operation and the table. Time is
always passed in by the caller (`now`), so the rules can be tested with a moving clock.

`StateStore` is synchronous (the Lambda uses it directly); the asyncio consumer calls it through
`asyncio.to_thread`. It keeps no mutable state of its own, so one instance may be shared by threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .events import OFFSET_MAX_DIGITS

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, UniversalAttributeValueTypeDef

CHECKPOINT_PREFIX = "checkpoint#"
HEARTBEAT_PREFIX = "heartbeat#"
LEASE_PREFIX = "lease#"
FALLBACK_PREFIX = "fallback#"
FALLBACK_COUNTERS = ("activations", "fetched", "published", "discarded", "spilled", "malformed", "duplicates")

#: -1 stands for "nothing handled, read from offset 0"; offsets have at most 20 digits.
CHECKPOINT_MIN = -1
CHECKPOINT_MAX = 10**OFFSET_MAX_DIGITS - 1
_CONDITION_FAILED = "ConditionalCheckFailedException"
_RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ThrottlingException",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
    }
)


class StateStoreError(Exception):
    """A DynamoDB call failed for a reason other than an unmet condition.

    The message names the operation, the table and the error code; `retryable` is True for
    throttling, server-side and connection errors (worth trying again later).
    """

    def __init__(self, message: str, *, operation: str, code: str, retryable: bool) -> None:
        super().__init__(message)
        self.operation = operation
        self.code = code
        self.retryable = retryable


class StreamState(StrEnum):
    STANDBY = "standby"  # another task holds the lease
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    DRAINING = "draining"
    STOPPED = "stopped"  # a planned stop (SIGTERM): a successor is expected within the grace period
    FAILED = "failed"  # the consumer ended on an error: unhealthy at once
    REGRESSED = "regressed"  # OHIP's offsets went backwards: streaming stopped until they move on
    AUTH_FAILED = "auth-failed"  # OHIP refused the credentials: retried on a slow schedule, unhealthy


def describe_checkpoint(offset: int | None) -> str:
    """A checkpoint as a person reads it: never "None", and -1 said in words."""
    if offset is None:
        return "none yet"
    if offset == CHECKPOINT_MIN:
        return "before offset 0"
    return str(offset)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    offset: int
    updated_at: float
    owner: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What the stream consumer says about itself every few seconds.

    `state` is a `StreamState` when the value is one this version knows, else the raw string (a newer
    writer), so that readers never fail on it.
    """

    state: StreamState | str
    owner: str
    updated_at: float
    last_frame_at: float | None = None
    last_event_at: float | None = None
    last_offset: int | None = None
    checkpoint: int | None = None
    lag_seconds: float | None = None
    detail: str | None = None

    def age(self, now: float) -> float:
        """Seconds since the heartbeat was written."""
        return now - self.updated_at


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str
    lease_until: float
    renewed_at: float
    generation: int

    def is_held(self, now: float) -> bool:
        return now < self.lease_until

    def held_by(self, owner: str, now: float) -> bool:
        return self.owner == owner and self.is_held(now)


@dataclass(frozen=True, slots=True)
class FallbackRecord:
    """The poll fallback's own state (item `fallback#<chain>`, see the module docstring).

    The stream consumer reads `last_polled_occurred_at`: a replayed stream event that occurred at or
    before it may already have been published by the fallback (ask the seen-set); a later one
    cannot have been.
    """

    active: bool = False
    since: float | None = None
    healthy_since: float | None = None
    stream_down_since: float | None = None
    last_tick_at: float | None = None
    last_reason: str = ""
    last_polled_occurred_at: datetime | None = None
    counters: Mapping[str, int] = field(default_factory=dict)

    def counter(self, name: str) -> int:
        return int(self.counters.get(name, 0))


def decode_checkpoint(item: Mapping[str, Any] | None) -> Checkpoint | None:
    """A `checkpoint#<chain>` item as read (`GetItem` or `batch_get_items`); None when there is
    none. `ValueError` for an offset outside the documented form."""
    if item is None or "offset" not in item:
        return None
    try:
        offset = _int(item["offset"])
    except (ValueError, OverflowError):  # more digits than int() reads, say
        offset = CHECKPOINT_MAX + 1
    if not CHECKPOINT_MIN <= offset <= CHECKPOINT_MAX:
        raise ValueError("an offset outside the documented form (-1, or up to 20 digits)")
    return Checkpoint(
        offset=offset,
        updated_at=_float(item.get("updatedAt")) or 0.0,
        owner=_str(item, "owner"),
    )


def decode_fallback(item: Mapping[str, Any] | None) -> FallbackRecord | None:
    """A `fallback#<chain>` item as read (`GetItem` or `batch_get_items`); None before the
    fallback's first tick."""
    if item is None:
        return None
    mark = _float(item.get("lastPolledOccurredAt"))
    active = item.get("active")
    return FallbackRecord(
        active=bool(active.get("BOOL")) if active is not None else False,
        since=_float(item.get("since")),
        healthy_since=_float(item.get("healthySince")),
        stream_down_since=_float(item.get("streamDownSince")),
        last_tick_at=_float(item.get("lastTickAt")),
        last_reason=_str(item, "lastReason"),
        last_polled_occurred_at=datetime.fromtimestamp(mark, UTC) if mark is not None else None,
        counters={name: _int(item[name]) for name in FALLBACK_COUNTERS if name in item},
    )


class StateStore:
    """Checkpoint, heartbeat and lease of one chain in the state table (see the module docstring)."""

    def __init__(self, dynamodb_client: DynamoDBClient, table_name: str, chain_code: str) -> None:
        if not chain_code:
            raise ValueError("chain_code must not be empty")
        self._ddb = dynamodb_client
        self._table = table_name
        self._chain = chain_code

    @property
    def table_name(self) -> str:
        return self._table

    @property
    def chain_code(self) -> str:
        return self._chain

    def key(self, prefix: str) -> str:
        return f"{prefix}{self._chain}"

    # -- checkpoint ---------------------------------------------------------------------------

    def get_checkpoint(self) -> Checkpoint | None:
        item = self._get("GetCheckpoint", CHECKPOINT_PREFIX)
        try:
            return decode_checkpoint(item)
        except ValueError as exc:
            raise StateStoreError(
                f"{self.key(CHECKPOINT_PREFIX)} in {self._table} holds {exc}; correct or delete that item",
                operation="GetCheckpoint",
                code="InvalidCheckpoint",
                retryable=False,
            ) from exc

    def advance_checkpoint(self, offset: int, owner: str, *, now: float | None = None) -> bool:
        """Store `offset` if it is higher than the stored one; False (nothing written) otherwise.

        The comparison happens in DynamoDB (a conditional write on the Number `offset`), so two
        writers can never move the checkpoint backward, whatever order their writes arrive in.
        """
        if not CHECKPOINT_MIN <= offset <= CHECKPOINT_MAX:
            raise ValueError(f"offset must be from -1 to 20 digits, not {offset}")
        written_at = time.time() if now is None else now
        return self._conditional_update(
            "AdvanceCheckpoint",
            CHECKPOINT_PREFIX,
            update=(
                "SET #offset = :offset, #owner = :owner, #updatedAt = :now, #kind = :kind, #chain = :chain"
            ),
            condition="attribute_not_exists(#pk) OR #offset < :offset",
            names={
                "#pk": "pk",
                "#offset": "offset",
                "#owner": "owner",
                "#updatedAt": "updatedAt",
                "#kind": "kind",
                "#chain": "chain",
            },
            values={
                ":offset": {"N": str(offset)},
                ":owner": {"S": owner},
                ":now": _num(written_at),
                ":kind": {"S": "checkpoint"},
                ":chain": {"S": self._chain},
            },
        )

    # -- heartbeat ----------------------------------------------------------------------------

    def put_heartbeat(self, heartbeat: Heartbeat) -> None:
        """Replace the heartbeat item (last writer wins: it is a report, not a decision)."""
        item: dict[str, AttributeValueTypeDef] = {
            "pk": {"S": self.key(HEARTBEAT_PREFIX)},
            "kind": {"S": "heartbeat"},
            "chain": {"S": self._chain},
            "state": {"S": str(heartbeat.state)},
            "owner": {"S": heartbeat.owner},
            "updatedAt": _num(heartbeat.updated_at),
        }
        optional: dict[str, float | int | None] = {
            "lastFrameAt": heartbeat.last_frame_at,
            "lastEventAt": heartbeat.last_event_at,
            "lastOffset": heartbeat.last_offset,
            "checkpoint": heartbeat.checkpoint,
            "lagSeconds": heartbeat.lag_seconds,
        }
        for name, value in optional.items():
            if value is not None:
                item[name] = {"N": str(value)} if isinstance(value, int) else _num(value)
        if heartbeat.detail:
            item["detail"] = {"S": heartbeat.detail}
        try:
            self._ddb.put_item(TableName=self._table, Item=item)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("PutHeartbeat", exc) from exc

    def get_heartbeat(self) -> Heartbeat | None:
        item = self._get("GetHeartbeat", HEARTBEAT_PREFIX)
        if item is None:
            return None
        raw_state = _str(item, "state")
        state: StreamState | str = (
            StreamState(raw_state) if raw_state in StreamState._value2member_map_ else raw_state
        )
        last_offset, checkpoint = item.get("lastOffset"), item.get("checkpoint")
        return Heartbeat(
            state=state,
            owner=_str(item, "owner"),
            updated_at=_float(item.get("updatedAt")) or 0.0,
            last_frame_at=_float(item.get("lastFrameAt")),
            last_event_at=_float(item.get("lastEventAt")),
            last_offset=_int(last_offset) if last_offset is not None else None,
            checkpoint=_int(checkpoint) if checkpoint is not None else None,
            lag_seconds=_float(item.get("lagSeconds")),
            detail=_str(item, "detail") or None,
        )

    # -- lease --------------------------------------------------------------------------------

    def acquire_lease(self, owner: str, duration_s: float, now: float) -> bool:
        """Take the lease until `now + duration_s` if it is free, expired, or already `owner`'s.

        Decided by DynamoDB in one conditional write: of several owners racing, exactly one wins.
        """
        _check_owner(owner)
        if duration_s <= 0:
            raise ValueError(f"duration_s must be positive, not {duration_s}")
        return self._conditional_update(
            "AcquireLease",
            LEASE_PREFIX,
            update=(
                "SET #owner = :owner, #until = :until, #renewedAt = :now, #kind = :kind, #chain = :chain "
                "ADD #generation :one"
            ),
            condition="attribute_not_exists(#owner) OR #until <= :now OR #owner = :owner",
            names={
                "#owner": "owner",
                "#until": "leaseUntil",
                "#renewedAt": "renewedAt",
                "#kind": "kind",
                "#chain": "chain",
                "#generation": "generation",
            },
            values={
                ":owner": {"S": owner},
                ":until": _num(now + duration_s),
                ":now": _num(now),
                ":kind": {"S": "lease"},
                ":chain": {"S": self._chain},
                ":one": {"N": "1"},
            },
        )

    def renew_lease(self, owner: str, duration_s: float, now: float) -> bool:
        """Extend `owner`'s lease to `now + duration_s`; False when someone else holds it (or nobody).

        A lease that lapsed but was not taken by anyone else is still `owner`'s and can be renewed:
        nobody else can have connected in between, because taking it would have changed the owner.
        """
        _check_owner(owner)
        if duration_s <= 0:
            raise ValueError(f"duration_s must be positive, not {duration_s}")
        return self._conditional_update(
            "RenewLease",
            LEASE_PREFIX,
            update="SET #until = :until, #renewedAt = :now",
            condition="#owner = :owner",
            names={"#owner": "owner", "#until": "leaseUntil", "#renewedAt": "renewedAt"},
            values={":owner": {"S": owner}, ":until": _num(now + duration_s), ":now": _num(now)},
        )

    def release_lease(self, owner: str) -> bool:
        """Give the lease up if `owner` holds it (the item stays, keeping its generation)."""
        _check_owner(owner)
        return self._conditional_update(
            "ReleaseLease",
            LEASE_PREFIX,
            update="SET #until = :zero REMOVE #owner",
            condition="#owner = :owner",
            names={"#owner": "owner", "#until": "leaseUntil"},
            values={":owner": {"S": owner}, ":zero": {"N": "0"}},
        )

    def get_lease(self) -> Lease | None:
        """The current lease, expired or not (`Lease.is_held(now)` tells); None if nobody holds it."""
        item = self._get("GetLease", LEASE_PREFIX)
        if item is None or "owner" not in item:
            return None
        return Lease(
            owner=_str(item, "owner"),
            lease_until=_float(item.get("leaseUntil")) or 0.0,
            renewed_at=_float(item.get("renewedAt")) or 0.0,
            generation=_int(item["generation"]) if "generation" in item else 0,
        )

    # -- poll fallback ------------------------------------------------------------------------

    def get_fallback(self) -> FallbackRecord | None:
        """The poll fallback's state; None before its first tick."""
        return decode_fallback(self._get("GetFallback", FALLBACK_PREFIX))

    def save_fallback(
        self, record: FallbackRecord, *, add: Mapping[str, int] | None = None, now: float | None = None
    ) -> None:
        """Write the fallback's decision fields (`active`, `since`, `healthy_since`,
        `stream_down_since`, `last_reason`; `last_tick_at` is `now`) and add `add` to its counters.

        `last_polled_occurred_at` and `counters` of `record` are ignored: the mark moves only through
        `advance_fallback_mark`, counters only by addition (so overlapping ticks cannot undo each
        other's counts).
        """
        written_at = time.time() if now is None else now
        names = {
            "#kind": "kind",
            "#chain": "chain",
            "#active": "active",
            "#lastTickAt": "lastTickAt",
            "#lastReason": "lastReason",
        }
        values: dict[str, UniversalAttributeValueTypeDef] = {
            ":kind": {"S": "fallback"},
            ":chain": {"S": self._chain},
            ":active": {"BOOL": record.active},
            ":now": _num(written_at),
            ":reason": {"S": record.last_reason or "-"},
        }
        sets = [
            "#kind = :kind",
            "#chain = :chain",
            "#active = :active",
            "#lastTickAt = :now",
            "#lastReason = :reason",
        ]
        removes: list[str] = []
        for attribute, value in (
            ("since", record.since),
            ("healthySince", record.healthy_since),
            ("streamDownSince", record.stream_down_since),
        ):
            names[f"#{attribute}"] = attribute
            if value is None:
                removes.append(f"#{attribute}")
            else:
                sets.append(f"#{attribute} = :{attribute}")
                values[f":{attribute}"] = _num(value)
        adds: list[str] = []
        for name, amount in (add or {}).items():
            if name not in FALLBACK_COUNTERS:
                raise ValueError(f"unknown fallback counter {name!r}")
            if amount:
                names[f"#{name}"] = name
                values[f":{name}"] = {"N": str(int(amount))}
                adds.append(f"#{name} :{name}")
        update = "SET " + ", ".join(sets)
        if removes:
            update += " REMOVE " + ", ".join(removes)
        if adds:
            update += " ADD " + ", ".join(adds)
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": self.key(FALLBACK_PREFIX)}},
                UpdateExpression=update,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("SaveFallback", exc) from exc

    def advance_fallback_mark(self, occurred_at: datetime) -> bool:
        """Raise `last_polled_occurred_at` to `occurred_at` if that is later; False otherwise.

        Decided by DynamoDB (a conditional write), so the mark never moves backward.
        """
        if occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")
        return self._conditional_update(
            "AdvanceFallbackMark",
            FALLBACK_PREFIX,
            update="SET #mark = :mark, #kind = :kind, #chain = :chain",
            condition="attribute_not_exists(#mark) OR #mark < :mark",
            names={"#mark": "lastPolledOccurredAt", "#kind": "kind", "#chain": "chain"},
            values={
                ":mark": _num(occurred_at.timestamp()),
                ":kind": {"S": "fallback"},
                ":chain": {"S": self._chain},
            },
        )

    # -- plumbing -----------------------------------------------------------------------------

    def _get(self, operation: str, prefix: str) -> Mapping[str, Any] | None:
        try:
            response = self._ddb.get_item(
                TableName=self._table, Key={"pk": {"S": self.key(prefix)}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(operation, exc) from exc
        return response.get("Item")

    def _conditional_update(
        self,
        operation: str,
        prefix: str,
        *,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, UniversalAttributeValueTypeDef],
    ) -> bool:
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": self.key(prefix)}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if error_code(exc) == _CONDITION_FAILED:
                return False
            raise self._error(operation, exc) from exc
        except BotoCoreError as exc:
            raise self._error(operation, exc) from exc
        return True

    def _error(self, operation: str, exc: ClientError | BotoCoreError) -> StateStoreError:
        return store_error(operation, self._table, exc)


def store_error(
    operation: str, table: str, exc: ClientError | BotoCoreError, *, subject: str = ""
) -> StateStoreError:
    """The `StateStoreError` for a failed DynamoDB call: one line naming the operation, the table
    and, if given, what it was about (`subject`, e.g. "chain 'C1'"), with the error code."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        retryable = code in _RETRYABLE_CODES or status >= 500
        detail = f"{code}: {exc.response.get('Error', {}).get('Message', '')}".rstrip(": ")
    else:
        code = type(exc).__name__
        retryable = True  # connection-level: the endpoint may come back
        detail = code
    which = f" for {subject}" if subject else ""
    return StateStoreError(
        f"DynamoDB {operation} on table {table}{which} failed ({detail})",
        operation=operation,
        code=code,
        retryable=retryable,
    )


def _check_owner(owner: str) -> None:
    if not owner:
        raise ValueError("owner must not be empty")


def error_code(exc: ClientError) -> str:
    """The error code DynamoDB answered with ("Unknown" if none)."""
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


BATCH_GET_KEYS = 100  # BatchGetItem's limit per request
BATCH_GET_ROUNDS = 8  # unprocessed keys asked for again at most this often, with backoff


def batch_get_items(
    ddb: Any,
    table: str,
    keys: Sequence[str],
    *,
    consistent: bool,
    sleep: Callable[[float], None],
    failed: Callable[[ClientError | BotoCoreError, Sequence[str]], Exception],
    throttled: Callable[[int, Sequence[str]], Exception],
) -> dict[str, Mapping[str, Any]]:
    """The items of `keys` (distinct) that exist in `table`, by `pk`: BatchGetItem, BATCH_GET_KEYS
    a request; unprocessed keys (throttling, or the 16 MB response limit) asked for again with
    backoff, at most BATCH_GET_ROUNDS times. A failed request raises `failed(exc, chunk)`; keys
    still unprocessed after the last round raise `throttled(how_many, chunk)`."""
    found: dict[str, Mapping[str, Any]] = {}
    for start in range(0, len(keys), BATCH_GET_KEYS):
        chunk = keys[start : start + BATCH_GET_KEYS]
        pending: list[Mapping[str, Any]] = [{"pk": {"S": k}} for k in chunk]
        for attempt in range(BATCH_GET_ROUNDS):
            try:
                response = ddb.batch_get_item(
                    RequestItems={table: {"Keys": pending, "ConsistentRead": consistent}}
                )
            except (ClientError, BotoCoreError) as exc:
                raise failed(exc, chunk) from exc
            for item in (response.get("Responses") or {}).get(table) or []:
                found[str(item["pk"]["S"])] = item
            unprocessed = (response.get("UnprocessedKeys") or {}).get(table)
            pending = list(unprocessed["Keys"]) if unprocessed else []
            if not pending:
                break
            sleep(min(1.0, 0.05 * 2**attempt))  # DynamoDB asks for these later (throttled)
        else:
            raise throttled(len(pending), chunk)
    return found


def _num(value: float) -> AttributeValueTypeDef:
    return {"N": f"{value:.3f}"}


def _int(value: Any) -> int:
    text = str(value["N"])
    return int(text) if text.lstrip("-").isdigit() else int(float(text))


def _float(value: Any) -> float | None:
    if value is None or "N" not in value:
        return None
    return float(value["N"])


def _str(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name)
    if value is None or "S" not in value:
        return ""
    return str(value["S"])
