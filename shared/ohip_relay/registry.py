"""The chain registry: the OHIP subscriptions one deployment relays, one DynamoDB item each.

A subscription is what one streaming connection needs: an OPERA environment's gateway, a chain
code, the Secrets Manager secret holding that environment's OAuth client and application key, and
the subscription's own options (`delta`, `hotelCode`). The single-chain environment variables
(`OHIP_CHAIN_CODE` and the others) describe a registry of one: `subscription_from_settings`.

Identity: `Subscription.id`, unique in the deployment. It defaults to the chain code, but a
partner may have two OPERA environments with the same chain code (test and production, say): two
subscriptions, two ids. State that belongs to a subscription (checkpoint, heartbeat, lease,
fallback) is to be keyed on the id. Every chain code is a valid id, so a single-chain deployment's
id is its chain code and its state items keep their keys.

Secrets: the registry holds none. Each entry names a secret by ARN (`secretArn`): a JSON object
with `clientId`, `clientSecret` and `appKey` (see `runtime.resolve_secrets`), one secret per OPERA
environment. An ARN is not a secret; commands print it.

Items, in the state table (see state.py; DynamoDB types in brackets, times in epoch seconds with
millisecond precision):

``registry#<id>`` (one per subscription)
    ``kind`` [S]            "registry"
    ``id`` [S]              the subscription id: 1-40 letters, digits, spaces or _%#$&-
    ``chain`` [S]           the chain code (the state items carry it under the same name)
    ``gatewayUrl`` [S]      the OHIP gateway's base URL (https)
    ``secretArn`` [S]       the ARN of the environment's secret
    ``enterpriseId`` [S], ``oauthScope`` [S], ``externalSystem`` [S], ``hotelCode`` [S]
                            absent when empty. `hotelCode` is the subscription's filter
                            (comma-separated hotel codes, at most 50 characters); absent: every
                            hotel of the chain.
    ``hotelIds`` [L of S]   the hotels the poll fallback polls; absent: the whole chain
    ``enabled`` [BOOL]      whether the subscription is to be relayed
    ``delta`` [BOOL]        the subscription's `delta`: only changed elements in `detail`
    ``createdAt`` [N], ``updatedAt`` [N]
    ``version`` [N]         1 when added, one more with every change: `expected_version` writes
                            succeed only on the version the caller read. A removed id added again
                            starts at 1 again.

``registry-index`` (one per table)
    ``kind`` [S]            "registry-index"
    ``ids`` [SS]            every subscription id; absent when there is none
    ``revision`` [N]        one more with every registry write: reading the same revision twice
                            means reading the same registry
    ``updatedAt`` [N]

Listing, and what it costs. The state table holds more than five state items per chain: the poll
fallback's seen-set (seen.py) adds one item per event it published, kept `RELAY_SEEN_TTL_DAYS`
(8 by default), so after a long stream outage of a busy chain the table holds hundreds of thousands
of items. A Scan reads every item whatever its filter (read units count what is read, not what is
returned): half a read request unit per 4 KB of table (eventually consistent), so a table of
500,000 seen items of about 300 bytes costs about 19,000 units, in some 150 sequential 1 MB pages,
for every list. So `list_all` does not scan: it reads the index (a strongly consistent GetItem,
1 unit per 4 KB, which holds 100-200 ids), then the entries by BatchGetItem (100 keys a request;
an entry is under 1 KB, 1 unit), then the index again to make sure nothing changed in between:
N + 2 units for N subscriptions (plus one per further 4 KB of index), whatever else the table
holds. Hundreds of chains listed once a minute stay under a million units a day. A caller that
only needs to know whether anything changed (a fleet task, every minute) reads `revision()`, one
unit, and lists only when it moved.

Writes. Every write is one TransactWriteItems of the entry, under its condition, and of the index,
so the two never disagree: `add` only if the id is new, `set_enabled` and `remove` only on the
version just read (or `expected_version`), so two operators' changes are never silently merged,
and an `enable` racing a `remove` never brings a half entry back. botocore gives every transaction
a ClientRequestToken, so its own retries of a transaction that went through change nothing. Writes
are rare (an operator's commands) and cost 2 write units per item of under 1 KB (the index: one
per further KB).

Errors: a missing or duplicate id, or a version that moved, raises the matching `RegistryError`
subclass; a malformed item raises `RegistryError` from `get` and is reported, not raised, by
`list_all` (one bad entry must not hide the others); any other DynamoDB failure raises
`RegistryError`, one line naming the operation, the table and the subscription. Entries are written
only through `RegistryStore` (`ohip-relay chains`): an item written by hand is not in the index
and is not listed. `RegistryStore` is synchronous and keeps no mutable state of its own.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .config import ConfigError, Reader, Settings
from .state import BATCH_GET_ROUNDS, batch_get_items, error_code

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        TransactWriteItemTypeDef,
        UniversalAttributeValueTypeDef,
    )

REGISTRY_PREFIX = "registry#"
REGISTRY_KIND = "registry"
INDEX_KEY = "registry-index"
INDEX_KIND = "registry-index"

#: The chain code's characters (config.py, the streaming schema's chainCode), up to 40 of them:
#: every chain code is an id, with room for a suffix that tells two environments apart.
SUBSCRIPTION_ID = re.compile(r"^[A-Za-z0-9 _%#$&-]{1,40}$")
SUBSCRIPTION_ID_EXPECTED = "1-40 letters, digits, spaces or _%#$&-"
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@!-]+$")
_ARN_FORM = "a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)"

#: Each text field's attribute in the item; validation messages about a stored entry name these.
ATTRIBUTES: Mapping[str, str] = {
    "id": "id",
    "gateway_url": "gatewayUrl",
    "chain_code": "chain",
    "secret_arn": "secretArn",
    "enterprise_id": "enterpriseId",
    "oauth_scope": "oauthScope",
    "external_system": "externalSystem",
    "hotel_ids": "hotelIds",
    "hotel_code": "hotelCode",
}
#: The single-chain environment variable behind each field.
VARIABLES: Mapping[str, str] = {
    "id": "OHIP_CHAIN_CODE",
    "gateway_url": "OHIP_GATEWAY_URL",
    "chain_code": "OHIP_CHAIN_CODE",
    "secret_arn": "OHIP_SECRET_ARN",
    "enterprise_id": "OHIP_ENTERPRISE_ID",
    "oauth_scope": "OHIP_OAUTH_SCOPE",
    "external_system": "OHIP_EXTERNAL_SYSTEM",
    "hotel_ids": "OHIP_HOTEL_IDS",
    "hotel_code": "OHIP_HOTEL_CODE",
}

_CONDITION_FAILED = "ConditionalCheckFailedException"
_TRANSACTION_CANCELED = "TransactionCanceledException"
_RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ThrottlingException",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
        "TransactionConflict",
        "TransactionInProgressException",
    }
)
_LIST_ATTEMPTS = 3  # a list that saw the registry change starts over at most this often
_WRITE_ATTEMPTS = 5  # a write whose entry changed after it was read is tried again this often


class RegistryError(Exception):
    """A registry operation failed. `str(error)` is one line naming the table and, where there is
    one, the subscription; `retryable` is True when trying again later may help."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        code: str,
        retryable: bool,
        table: str,
        subscription_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.code = code
        self.retryable = retryable
        self.table = table
        self.subscription_id = subscription_id


class SubscriptionExists(RegistryError):
    """`add` of an id the registry already holds."""


class SubscriptionNotFound(RegistryError):
    """The registry holds no entry with this id."""


class VersionConflict(RegistryError):
    """The entry is not at the version the caller expected: somebody else changed it."""

    def __init__(self, message: str, *, current_version: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.current_version = current_version


@dataclass(frozen=True, kw_only=True)
class Subscription:
    """One registry entry, validated on construction by the environment variables' rules
    (`ConfigError` naming the item attribute). Values must be in their normal form, as the
    readers return them: no surrounding spaces, no trailing `/` on the gateway URL.

    `secret_arn` may be empty only in the single-chain shape (credentials in the environment);
    a registry entry needs it (`check_entry`). `created_at`, `updated_at` and `version` are set by
    `RegistryStore`; 0 means "not stored".
    """

    id: str = ""  # "" becomes the chain code
    gateway_url: str
    chain_code: str
    secret_arn: str = ""
    enterprise_id: str = ""
    oauth_scope: str = ""
    external_system: str = ""
    hotel_ids: tuple[str, ...] = ()
    enabled: bool = True
    delta: bool = False
    hotel_code: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0

    def __post_init__(self) -> None:
        if self.id == "" and isinstance(self.chain_code, str):
            object.__setattr__(self, "id", self.chain_code)
        _check_kinds(self)
        normal = _read_fields(Reader(_texts(self, ATTRIBUTES)), ATTRIBUTES, entry=False)
        for name, value in normal.items():
            if value != getattr(self, name):
                raise ConfigError(
                    f"{ATTRIBUTES[name]}: not in normal form (surrounding spaces, an empty hotel code "
                    "rather than None, or a trailing / on a URL)"
                )


@dataclass(frozen=True, slots=True)
class RegistryListing:
    """What `list_all` read: every readable entry (by id), and one line per entry it could not read."""

    revision: int
    subscriptions: tuple[Subscription, ...]
    problems: tuple[str, ...] = ()


def read_subscription(
    reader: Reader, names: Mapping[str, str], *, enabled: bool = True, delta: bool = False
) -> Subscription:
    """A registry entry from `reader`'s values, each field under `names[field]` (the command's
    flags, say): the environment variables' rules and messages, and a secret ARN is required."""
    return Subscription(**_read_fields(reader, names, entry=True), enabled=enabled, delta=delta)


def check_entry(subscription: Subscription) -> None:
    """Raise `ConfigError` unless `subscription` may be stored: it needs a secret ARN."""
    _read_fields(Reader(_texts(subscription, ATTRIBUTES)), ATTRIBUTES, entry=True)


def subscription_from_settings(settings: Settings) -> Subscription:
    """The registry of one that the single-chain environment variables describe (pure: nothing is
    read or stored). The id is the chain code; enabled; not stored (version 0)."""
    for name in ("gateway_url", "chain_code"):
        if not getattr(settings, name):
            raise ConfigError(f"{VARIABLES[name]}: missing")
    return Subscription(
        id=settings.chain_code,
        gateway_url=settings.gateway_url,
        chain_code=settings.chain_code,
        secret_arn=settings.secret_arn,
        enterprise_id=settings.enterprise_id,
        oauth_scope=settings.oauth_scope,
        external_system=settings.external_system,
        hotel_ids=settings.hotel_ids,
        delta=settings.stream_delta,
        hotel_code=settings.hotel_code or None,
    )


def settings_for_subscription(base: Settings, subscription: Subscription) -> Settings:
    """The deployment's settings for one subscription (the inverse of `subscription_from_settings`):
    its OHIP fields, and no credentials yet (`runtime.resolve_secrets` reads its secret's)."""
    return replace(
        base,
        gateway_url=subscription.gateway_url,
        chain_code=subscription.chain_code,
        secret_arn=subscription.secret_arn,
        enterprise_id=subscription.enterprise_id,
        oauth_scope=subscription.oauth_scope,
        external_system=subscription.external_system,
        hotel_ids=subscription.hotel_ids,
        stream_delta=subscription.delta,
        hotel_code=subscription.hotel_code or "",
        client_id="",
        client_secret="",
        app_key="",
    )


# -- item encoding ------------------------------------------------------------------------------


def entry_key(subscription_id: str) -> str:
    return f"{REGISTRY_PREFIX}{subscription_id}"


def encode_item(subscription: Subscription) -> dict[str, AttributeValueTypeDef]:
    """The `registry#<id>` item (see the module docstring); empty optional fields are left out."""
    item: dict[str, AttributeValueTypeDef] = {
        "pk": {"S": entry_key(subscription.id)},
        "kind": {"S": REGISTRY_KIND},
        "id": {"S": subscription.id},
        "chain": {"S": subscription.chain_code},
        "gatewayUrl": {"S": subscription.gateway_url},
        "enabled": {"BOOL": subscription.enabled},
        "delta": {"BOOL": subscription.delta},
        "createdAt": _num(subscription.created_at),
        "updatedAt": _num(subscription.updated_at),
        "version": {"N": str(subscription.version)},
    }
    for name in ("secret_arn", "enterprise_id", "oauth_scope", "external_system", "hotel_code"):
        value = getattr(subscription, name)
        if value:
            item[ATTRIBUTES[name]] = {"S": value}
    if subscription.hotel_ids:
        item["hotelIds"] = {"L": [{"S": hotel} for hotel in subscription.hotel_ids]}
    return item


def decode_item(item: Mapping[str, Any]) -> Subscription:
    """The registry entry an item holds; `ConfigError` naming the attribute if it is malformed
    (a registry entry's rules, a secret ARN included)."""
    hotels = item.get("hotelIds")
    if hotels is not None and not (
        isinstance(hotels, Mapping)
        and isinstance(hotels.get("L"), list)
        and all(isinstance(h, Mapping) and isinstance(h.get("S"), str) for h in hotels["L"])
    ):
        raise ConfigError("hotelIds: expected a list of strings")
    subscription = Subscription(
        id=_item_str(item, "id", required=True),
        gateway_url=_item_str(item, "gatewayUrl", required=True),
        chain_code=_item_str(item, "chain", required=True),
        secret_arn=_item_str(item, "secretArn"),
        enterprise_id=_item_str(item, "enterpriseId"),
        oauth_scope=_item_str(item, "oauthScope"),
        external_system=_item_str(item, "externalSystem"),
        hotel_ids=tuple(h["S"] for h in hotels["L"]) if hotels is not None else (),
        enabled=_item_bool(item, "enabled"),
        delta=_item_bool(item, "delta"),
        hotel_code=_item_str(item, "hotelCode") or None,
        created_at=_item_number(item, "createdAt"),
        updated_at=_item_number(item, "updatedAt"),
        version=_item_version(item),
    )
    check_entry(subscription)
    return subscription


# -- the store ----------------------------------------------------------------------------------


class RegistryStore:
    """The registry's entries in the state table (see the module docstring)."""

    def __init__(
        self,
        dynamodb_client: DynamoDBClient,
        table_name: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not table_name:
            raise ValueError("table_name must not be empty")
        self._ddb = dynamodb_client
        self._table = table_name
        self._sleep = sleep

    @property
    def table_name(self) -> str:
        return self._table

    def add(self, subscription: Subscription, *, now: float | None = None) -> Subscription:
        """Store a new entry at version 1 and return it as stored; `SubscriptionExists` if the id
        is taken (decided by DynamoDB: of two racing adds of one id, one fails)."""
        check_entry(subscription)
        stamp = _stamp(now)
        stored = replace(subscription, created_at=stamp, updated_at=stamp, version=1)
        put: TransactWriteItemTypeDef = {
            "Put": {
                "TableName": self._table,
                "Item": encode_item(stored),
                "ConditionExpression": "attribute_not_exists(#pk)",
                "ExpressionAttributeNames": {"#pk": "pk"},
            }
        }
        index = self._index_update(stamp, add_id=stored.id)
        if not self._transact("AddSubscription", stored.id, [put, index]):
            raise SubscriptionExists(
                f"subscription {stored.id!r} already exists in table {self._table}",
                **self._context("AddSubscription", stored.id, "AlreadyExists"),
            )
        return stored

    def get(self, subscription_id: str) -> Subscription | None:
        """The entry (strongly consistent read), or None; `RegistryError` if it is malformed."""
        item = self._get_item("GetSubscription", entry_key(_checked_id(subscription_id)), subscription_id)
        return None if item is None else self._decode(item, "GetSubscription", subscription_id)

    def list_all(self) -> RegistryListing:
        """Every entry, ordered by id, as one consistent snapshot (see "Listing" above)."""
        for _ in range(_LIST_ATTEMPTS):
            revision, ids = self._read_index("ListRegistry")
            items = self._batch_get([entry_key(i) for i in sorted(ids)])
            if not ids or self._read_index("ListRegistry")[0] == revision:
                break
        else:
            raise RegistryError(
                f"the registry in table {self._table} kept changing while it was read; try again",
                **self._context("ListRegistry", None, "KeptChanging", retryable=True),
            )
        subscriptions: list[Subscription] = []
        problems: list[str] = []
        for subscription_id in sorted(ids):
            key = entry_key(subscription_id)
            item = items.get(key)
            if item is None:
                problems.append(
                    f"{INDEX_KEY} in table {self._table} lists {subscription_id!r} but {key} is missing "
                    "(`ohip-relay chains remove` of that id drops it from the index)"
                )
                continue
            try:
                subscription = decode_item(item)
            except ConfigError as exc:
                problems.append(self._malformed(key, exc))
                continue
            if subscription.id != subscription_id:
                problems.append(f"{key} in table {self._table} holds id {subscription.id!r}")
                continue
            subscriptions.append(subscription)
        return RegistryListing(revision, tuple(subscriptions), tuple(problems))

    def revision(self) -> int:
        """The registry's revision: it moves with every write (0 before the first)."""
        return self._read_index("GetRegistryRevision")[0]

    def set_enabled(
        self,
        subscription_id: str,
        enabled: bool,
        expected_version: int | None = None,
        *,
        now: float | None = None,
    ) -> Subscription:
        """Enable or disable an entry and return it as stored (one version further).

        `SubscriptionNotFound` if there is none (also when it is removed between this call's read
        and its write: nothing is written then); `VersionConflict` if `expected_version` is given
        and the entry is at another one. Without `expected_version`, a change by somebody else
        between the read and the write makes this call read and try again.
        """
        for _ in range(_WRITE_ATTEMPTS):
            current = self.get(subscription_id)
            if current is None:
                raise self._not_found("SetEnabled", subscription_id)
            self._check_version("SetEnabled", current, expected_version)
            updated = replace(current, enabled=enabled, updated_at=_stamp(now), version=current.version + 1)
            entry: TransactWriteItemTypeDef = {
                "Update": {
                    "TableName": self._table,
                    "Key": {"pk": {"S": entry_key(subscription_id)}},
                    "UpdateExpression": "SET #enabled = :enabled, #updatedAt = :now, #version = :new",
                    "ConditionExpression": "attribute_exists(#pk) AND #version = :old",
                    "ExpressionAttributeNames": {
                        "#pk": "pk",
                        "#enabled": "enabled",
                        "#updatedAt": "updatedAt",
                        "#version": "version",
                    },
                    "ExpressionAttributeValues": {
                        ":enabled": {"BOOL": enabled},
                        ":now": _num(updated.updated_at),
                        ":new": {"N": str(updated.version)},
                        ":old": {"N": str(current.version)},
                    },
                }
            }
            index = self._index_update(updated.updated_at)
            if self._transact("SetEnabled", subscription_id, [entry, index]):
                return updated
        raise self._kept_changing("SetEnabled", subscription_id)

    def remove(self, subscription_id: str, expected_version: int | None = None) -> Subscription | None:
        """Delete an entry and drop its id from the index; returns what was removed (None if the
        item was malformed, which `remove` is the way out of).

        `SubscriptionNotFound` if there is none (an id the index still lists is dropped from it
        first); `VersionConflict` as for `set_enabled`. The subscription's state items
        (checkpoint, heartbeat, lease, fallback) are left in place.
        """
        key = entry_key(_checked_id(subscription_id))
        for _ in range(_WRITE_ATTEMPTS):
            item = self._get_item("RemoveSubscription", key, subscription_id)
            if item is None:
                dropped = self._drop_from_index(subscription_id)
                raise self._not_found("RemoveSubscription", subscription_id, dropped=dropped)
            try:
                current: Subscription | None = decode_item(item)
            except ConfigError:
                current = None  # malformed: removed all the same, on its version if it has one
            version = current.version if current is not None else _raw_version(item)
            if current is not None:
                self._check_version("RemoveSubscription", current, expected_version)
            elif expected_version is not None and version != expected_version:
                raise self._conflict("RemoveSubscription", subscription_id, version, expected_version)
            condition, names = "attribute_exists(#pk)", {"#pk": "pk"}
            values: dict[str, UniversalAttributeValueTypeDef] = {}
            if version is not None:
                condition += " AND #version = :old"
                names["#version"] = "version"
                values[":old"] = {"N": str(version)}
            delete: TransactWriteItemTypeDef = {
                "Delete": {
                    "TableName": self._table,
                    "Key": {"pk": {"S": key}},
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                }
            }
            if values:
                delete["Delete"]["ExpressionAttributeValues"] = values
            index = self._index_update(_stamp(None), drop_id=subscription_id)
            if self._transact("RemoveSubscription", subscription_id, [delete, index]):
                return current
        raise self._kept_changing("RemoveSubscription", subscription_id)

    # -- plumbing -----------------------------------------------------------------------------

    def _index_update(
        self, now: float, *, add_id: str | None = None, drop_id: str | None = None
    ) -> TransactWriteItemTypeDef:
        update = "SET #kind = :kind, #updatedAt = :now ADD #revision :one"
        names = {"#kind": "kind", "#updatedAt": "updatedAt", "#revision": "revision"}
        values: dict[str, UniversalAttributeValueTypeDef] = {
            ":kind": {"S": INDEX_KIND},
            ":now": _num(now),
            ":one": {"N": "1"},
        }
        if add_id is not None:
            update += ", #ids :id"
            names["#ids"] = "ids"
            values[":id"] = {"SS": [add_id]}
        if drop_id is not None:
            update += " DELETE #ids :id"
            names["#ids"] = "ids"
            values[":id"] = {"SS": [drop_id]}
        return {
            "Update": {
                "TableName": self._table,
                "Key": {"pk": {"S": INDEX_KEY}},
                "UpdateExpression": update,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

    def _drop_from_index(self, subscription_id: str) -> bool:
        """Drop an id whose entry is gone from the index; False if the index does not list it."""
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key={"pk": {"S": INDEX_KEY}},
                UpdateExpression="SET #updatedAt = :now DELETE #ids :id ADD #revision :one",
                ConditionExpression="contains(#ids, :member)",
                ExpressionAttributeNames={"#ids": "ids", "#revision": "revision", "#updatedAt": "updatedAt"},
                ExpressionAttributeValues={
                    ":id": {"SS": [subscription_id]},
                    ":member": {"S": subscription_id},
                    ":one": {"N": "1"},
                    ":now": _num(_stamp(None)),
                },
            )
        except ClientError as exc:
            if error_code(exc) == _CONDITION_FAILED:
                return False
            raise self._error("RemoveSubscription", subscription_id, exc) from exc
        except BotoCoreError as exc:
            raise self._error("RemoveSubscription", subscription_id, exc) from exc
        return True

    def _transact(self, operation: str, subscription_id: str, items: list[TransactWriteItemTypeDef]) -> bool:
        """Run one transaction; False when the first item's condition did not hold."""
        try:
            self._ddb.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if error_code(exc) == _TRANSACTION_CANCELED:
                reasons = exc.response.get("CancellationReasons") or []
                codes = [str(reason.get("Code", "")) for reason in reasons]
                if codes and codes[0] == "ConditionalCheckFailed":
                    return False
                conflict = "TransactionConflict" in codes
                why = ", ".join(c for c in codes if c and c != "None") or "no reason given"
                raise RegistryError(
                    f"DynamoDB {operation} on table {self._table} for subscription {subscription_id!r} "
                    f"was cancelled ({why})",
                    **self._context(
                        operation,
                        subscription_id,
                        "TransactionConflict" if conflict else _TRANSACTION_CANCELED,
                    ),
                    retryable=conflict,
                ) from exc
            raise self._error(operation, subscription_id, exc) from exc
        except BotoCoreError as exc:
            raise self._error(operation, subscription_id, exc) from exc
        return True

    def _get_item(self, operation: str, key: str, subscription_id: str | None) -> Mapping[str, Any] | None:
        try:
            response = self._ddb.get_item(TableName=self._table, Key={"pk": {"S": key}}, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(operation, subscription_id, exc) from exc
        return response.get("Item")

    def _read_index(self, operation: str) -> tuple[int, frozenset[str]]:
        item = self._get_item(operation, INDEX_KEY, None)
        if item is None:
            return 0, frozenset()
        try:
            revision = int(item["revision"]["N"]) if "revision" in item else 0
            ids = frozenset(str(i) for i in item["ids"]["SS"]) if "ids" in item else frozenset()
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(
                f"{INDEX_KEY} in table {self._table} is malformed ({type(exc).__name__}); "
                "correct or delete that item",
                **self._context(operation, None, "InvalidItem"),
            ) from exc
        return revision, ids

    def _batch_get(self, keys: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        """The items of `keys` that exist, by `pk` (`state.batch_get_items`, strongly consistent)."""

        def failed(exc: ClientError | BotoCoreError, _chunk: Sequence[str]) -> Exception:
            return self._error("ListRegistry", None, exc)

        def throttled(left: int, _chunk: Sequence[str]) -> Exception:
            return RegistryError(
                f"DynamoDB ListRegistry on table {self._table} failed ({left} entries "
                f"left unprocessed after {BATCH_GET_ROUNDS} requests: throttled)",
                **self._context("ListRegistry", None, "UnprocessedKeys", retryable=True),
            )

        return batch_get_items(
            self._ddb,
            self._table,
            keys,
            consistent=True,
            sleep=self._sleep,
            failed=failed,
            throttled=throttled,
        )

    def _decode(self, item: Mapping[str, Any], operation: str, subscription_id: str) -> Subscription:
        try:
            subscription = decode_item(item)
            if subscription.id != subscription_id:
                raise ConfigError(f"id: {subscription.id!r}, not the id of its key")
            return subscription
        except ConfigError as exc:
            raise RegistryError(
                self._malformed(entry_key(subscription_id), exc),
                **self._context(operation, subscription_id, "InvalidItem"),
            ) from exc

    def _malformed(self, key: str, exc: ConfigError) -> str:
        return f"{key} in table {self._table} is malformed ({exc}); correct or remove that item"

    def _check_version(self, operation: str, current: Subscription, expected: int | None) -> None:
        if expected is not None and current.version != expected:
            raise self._conflict(operation, current.id, current.version, expected)

    def _conflict(
        self, operation: str, subscription_id: str, current: int | None, expected: int
    ) -> VersionConflict:
        return VersionConflict(
            f"subscription {subscription_id!r} in table {self._table} is at version "
            f"{'(none)' if current is None else current}, not {expected}: somebody changed it; read it again",
            current_version=-1 if current is None else current,
            **self._context(operation, subscription_id, "VersionConflict"),
        )

    def _not_found(
        self, operation: str, subscription_id: str, *, dropped: bool = False
    ) -> SubscriptionNotFound:
        note = " (the registry index still listed it; dropped now)" if dropped else ""
        return SubscriptionNotFound(
            f"no subscription {subscription_id!r} in table {self._table}{note}",
            **self._context(operation, subscription_id, "NotFound"),
        )

    def _kept_changing(self, operation: str, subscription_id: str) -> RegistryError:
        return RegistryError(
            f"subscription {subscription_id!r} in table {self._table} changed {_WRITE_ATTEMPTS} times "
            "while it was being written; try again",
            **self._context(operation, subscription_id, "KeptChanging", retryable=True),
        )

    def _context(
        self, operation: str, subscription_id: str | None, code: str, *, retryable: bool = False
    ) -> dict[str, Any]:
        return {
            "operation": operation,
            "code": code,
            "retryable": retryable,
            "table": self._table,
            "subscription_id": subscription_id,
        }

    def _error(
        self, operation: str, subscription_id: str | None, exc: ClientError | BotoCoreError
    ) -> RegistryError:
        if isinstance(exc, ClientError):
            code = error_code(exc)
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            retryable = code in _RETRYABLE_CODES or status >= 500
            detail = f"{code}: {exc.response.get('Error', {}).get('Message', '')}".rstrip(": ")
        else:
            code = type(exc).__name__
            retryable = True  # connection-level: the endpoint may come back
            detail = code
        which = f" for subscription {subscription_id!r}" if subscription_id is not None else ""
        return RegistryError(
            f"DynamoDB {operation} on table {self._table}{which} failed ({detail})",
            operation=operation,
            code=code,
            retryable=retryable,
            table=self._table,
            subscription_id=subscription_id,
        )


# -- validation helpers -------------------------------------------------------------------------


def _read_fields(reader: Reader, names: Mapping[str, str], *, entry: bool) -> dict[str, Any]:
    """Every text field, read and validated under `names[field]`; `entry`: a registry entry's rules
    (a secret ARN required, in ARN form)."""
    chain_code = reader.chain_code(names["chain_code"], required=True)
    return {
        "id": reader.pattern(names["id"], SUBSCRIPTION_ID, SUBSCRIPTION_ID_EXPECTED) or chain_code,
        "gateway_url": reader.url(names["gateway_url"], required=True, https_only=True),
        "chain_code": chain_code,
        "secret_arn": _secret_arn(reader, names["secret_arn"], entry=entry),
        "enterprise_id": reader.text(names["enterprise_id"]),
        "oauth_scope": reader.text(names["oauth_scope"]),
        "external_system": reader.external_system(names["external_system"]),
        "hotel_ids": reader.hotel_ids(names["hotel_ids"]),
        "hotel_code": reader.hotel_code(names["hotel_code"]) or None,
    }


def _secret_arn(reader: Reader, name: str, *, entry: bool) -> str:
    # `secret=True` and no value in any message: what was typed may be the secret itself.
    value = reader.text(name, secret=True)
    if not entry:
        return value
    if not value:
        raise ConfigError(
            f"{name}: missing (the ARN of the OPERA environment's Secrets Manager secret, "
            "a JSON object with clientId, clientSecret and appKey)"
        )
    if not _SECRET_ARN.fullmatch(value):
        raise ConfigError(f"{name}: expected {_ARN_FORM}; the value is not shown, in case it is a secret")
    return value


def _texts(subscription: Subscription, names: Mapping[str, str]) -> dict[str, str]:
    """The text fields as a reader's mapping (hotel ids joined by commas, as the variable has them)."""
    values = {name: getattr(subscription, name) for name in names}
    values["hotel_ids"] = ",".join(subscription.hotel_ids)
    values["hotel_code"] = subscription.hotel_code if subscription.hotel_code is not None else ""
    return {names[name]: value for name, value in values.items()}


def _check_kinds(subscription: Subscription) -> None:
    for name in ATTRIBUTES:
        if name in ("hotel_ids", "hotel_code"):
            continue
        if not isinstance(getattr(subscription, name), str):
            raise ConfigError(f"{ATTRIBUTES[name]}: expected a string")
    if not isinstance(subscription.hotel_ids, tuple) or not all(
        isinstance(h, str) for h in subscription.hotel_ids
    ):
        raise ConfigError("hotelIds: expected a tuple of strings")
    if subscription.hotel_code is not None and not isinstance(subscription.hotel_code, str):
        raise ConfigError("hotelCode: expected a string or None")
    for flag in ("enabled", "delta"):
        if not isinstance(getattr(subscription, flag), bool):
            raise ConfigError(f"{flag}: expected true or false")
    for name, attribute in (("created_at", "createdAt"), ("updated_at", "updatedAt")):
        value = getattr(subscription, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigError(f"{attribute}: expected epoch seconds")
    if (
        isinstance(subscription.version, bool)
        or not isinstance(subscription.version, int)
        or subscription.version < 0
    ):
        raise ConfigError("version: expected a whole number")


def _checked_id(subscription_id: str) -> str:
    if not isinstance(subscription_id, str) or not subscription_id:
        raise ValueError("subscription_id must be a non-empty string")
    return subscription_id


def _stamp(now: float | None) -> float:
    """Epoch seconds with the item's millisecond precision, so that what `add` returns equals what
    `get` reads back."""
    return round(time.time() if now is None else now, 3)


def _num(value: float) -> AttributeValueTypeDef:
    return {"N": f"{value:.3f}"}


def _item_str(item: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = item.get(name)
    if value is None:
        if required:
            raise ConfigError(f"{name}: missing")
        return ""
    if not isinstance(value, Mapping) or not isinstance(value.get("S"), str):
        raise ConfigError(f"{name}: expected a string")
    return str(value["S"])


def _item_bool(item: Mapping[str, Any], name: str) -> bool:
    value = item.get(name)
    if not isinstance(value, Mapping) or not isinstance(value.get("BOOL"), bool):
        raise ConfigError(f"{name}: expected a boolean")
    return bool(value["BOOL"])


def _item_number(item: Mapping[str, Any], name: str) -> float:
    value = item.get(name)
    try:
        number = float(value["N"]) if isinstance(value, Mapping) else math.nan
    except (KeyError, TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{name}: expected epoch seconds")
    return number


def _item_version(item: Mapping[str, Any]) -> int:
    version = _raw_version(item)
    if version is None or version < 1:
        raise ConfigError("version: expected a whole number from 1")
    return version


def _raw_version(item: Mapping[str, Any]) -> int | None:
    value = item.get("version")
    text = value.get("N") if isinstance(value, Mapping) else None
    if not isinstance(text, str) or not text.isdigit():
        return None
    return int(text)
