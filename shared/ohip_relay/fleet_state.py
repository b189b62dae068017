"""The fleet's items in the state table: chain leases with their handover fields, the workers'
heartbeat items and the fleet index (docs/fleet-design.md, section 2).

`balance.plan()` decides; this module writes what it decided, each write under the condition that
makes it safe whatever the view it was decided on. A condition that does not hold is an ordinary
outcome (`None` or `False`), never an error; any other DynamoDB failure raises `StateStoreError`
(state.py), one line naming the operation, the table and the chain or worker. Time is always passed
in (`now`). `FleetStore` is synchronous and keeps no mutable state: one instance may be shared by
threads (the scheduler calls it through `asyncio.to_thread`).

Items (DynamoDB types in brackets; times are epoch seconds with millisecond precision):

``lease#<chain>``: today's lease item (state.py: `owner`, `leaseUntil`, `renewedAt`, `generation`,
`kind`, `chain`), so `StateStore.acquire_lease/renew_lease/release_lease` and this module read and
write the same item under the same rules, plus:

    ``handoverTo`` [S]      the worker the chain is being handed to: a request by that worker (pull),
                            or its holder's push or acceptance; kept by a handover's release, which
                            reserves the chain for it.
    ``handoverAt`` [N]      when that was written (the writer's clock); a request or a reservation
                            lapses `handover_timeout` after it.
    ``completedAt`` [N]     when the last holder sent `complete` before its release: the next holder
                            subscribes 10 s after it (`balance.subscribe_after`). Removed by acquire.

``worker#<worker>`` (and, past 400 KB, ``worker#<worker>#1``...): `balance.worker_items()`.

``fleet-index``: ``kind`` [S] "fleet-index", ``workers`` [SS] every worker that joined and was not
forgotten (absent when none), ``updatedAt`` [N]. The worker items are found through it, never by a
Scan: the table also holds the poll fallback's seen-set, hundreds of thousands of items after a long
outage (registry.py, "Listing").

Write conditions (section 2 of the design):

- **acquire**: the base rule of today (no owner, or `leaseUntil <= now`, or the owner is me) *and*
  the version the pass saw: the same owner (or none), `generation` and `leaseUntil`, or no item at
  all when the pass saw none (KCL's take checks its lease counter the same way). The last write to
  the item is then the one the taker's `LeaseWatch` watched, so no clock comparison decides safety
  (docs/fleet-design.md, section 4). Sets owner, `leaseUntil`, `renewedAt`, adds one to
  `generation` (the fencing token), removes `handoverTo`, `handoverAt` and `completedAt`, and
  returns the old item (`ReturnValues=ALL_OLD`, free): the new generation is the old one plus one,
  and the old `completedAt` is the previous holder's `complete`.
- **renew**: owner is me (today's rule), `ReturnValues=ALL_NEW` (free): the holder sees handover
  requests on its own leases without reading them.
- **request**: `handoverTo = me, handoverAt = now` if the owner is still the holder the pass saw and
  no handover is pending (none, or one older than the timeout). Never a write to the owner.
- **accept / push**: `handoverTo = to, handoverAt = now` if the owner is me.
- **decline**: remove `handoverTo`, `handoverAt` if the owner is me and the request is `requester`'s.
- **release**: remove the owner, `leaseUntil = 0`, `completedAt` set (or removed when unknown), if
  the owner is me. A handover keeps `handoverTo` and sets `handoverAt = now` (the reservation runs
  from the release); a stop removes both.
- **worker items**: written by their worker only (PutItem, no condition); `forget_worker` deletes a
  silent worker's items, on condition that its heartbeat is still the one judged silent, then
  drops it from the index.

Reads are eventually consistent where the write conditions are the authority: `read_leases` and the
worker items. A view is stale by the time a write lands anyway; a read that is staler still (a
replica a moment behind) can only make a conditional write fail, never succeed where it should not:
acquire requires the version the read showed, request the owner it showed, and the others the
writer's own ownership. `LeaseWatch` restarts its clock on any version it has not seen, so a lagging
replica delays a take, it does not hasten it. The fleet index is read strongly consistent (one item,
a unit), so that a worker sees itself as soon as it joined.

Cost per call (on-demand: a write unit per KB written, billed on the larger of the item before and
after; a read unit per 4 KB strongly consistent, half that eventually consistent; a write whose
condition fails is billed too; `ReturnValues` is free):

- `acquire`, `request_handover`, `accept`, `push`, `decline`, `release`: one UpdateItem, 1 WRU
  (a lease item is under 1 KB).
- `renew_many(n)`: n UpdateItems, `max_workers` at a time: n WRU. Per idle chain every 10 s:
  262,800 WRU a month, $0.164 (the largest per-chain item, docs/fleet-design.md section 7).
- `read_leases(n)`: ceil(n / 100) BatchGetItems, 0.5 RRU per key (found or not, each item rounded
  up to 4 KB): every 10 s, $0.016 per chain-month per reading task.
- `put_worker`: one PutItem per part, ceil(size / 1 KB) WRU each: about 7 for 100 chains.
- `join`: one UpdateItem of the index, 1 WRU per KB of index (about 50 workers per KB).
- `read_workers` (w workers): one GetItem of the index (1 RRU per 4 KB, strongly consistent) and
  ceil(w / 100) BatchGetItems (0.5 RRU per 4 KB of each worker item; one more request for split
  items).
- `forget_worker`: one DeleteItem per part (ceil(size / 1 KB) WRU each) and one UpdateItem of the
  index (1 WRU).

`renew_many` runs its UpdateItems on a pool of 8 threads (`max_workers`), created per call:
botocore clients are thread-safe, and a renewal is a network round trip (a few milliseconds in a
region) plus about 1.7 ms of client CPU. Measured (bench/fleet_renew.py, 1000 leases, 5 ms simulated
round trip): 14.4 s sequentially, longer than the 10 s renewal interval, and 5.1 s with 8 threads,
where the client's CPU and moto's own time bound it; more threads only add contention.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from .balance import WORKER_PREFIX, LeaseView, WorkerRecord, read_worker_items
from .state import (
    BATCH_GET_KEYS,
    BATCH_GET_ROUNDS,
    LEASE_PREFIX,
    StateStoreError,
    batch_get_items,
    error_code,
    store_error,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, UniversalAttributeValueTypeDef

FLEET_INDEX_KEY: Final = "fleet-index"
FLEET_INDEX_KIND: Final = "fleet-index"
LEASE_KIND: Final = "lease"

BATCH_KEYS: Final = BATCH_GET_KEYS  # BatchGetItem's limit per request
BATCH_ROUNDS: Final = BATCH_GET_ROUNDS  # unprocessed keys asked for again, with backoff
DEFAULT_RENEW_WORKERS: Final = 8  # below botocore's default connection pool (10)

_CONDITION_FAILED: Final = "ConditionalCheckFailedException"

#: The attribute names every expression here uses (unused ones are left out of each call).
_NAMES: Final[Mapping[str, str]] = {
    "#pk": "pk",
    "#kind": "kind",
    "#chain": "chain",
    "#owner": "owner",
    "#until": "leaseUntil",
    "#renewedAt": "renewedAt",
    "#generation": "generation",
    "#handoverTo": "handoverTo",
    "#handoverAt": "handoverAt",
    "#completedAt": "completedAt",
    "#workers": "workers",
    "#updatedAt": "updatedAt",
    "#heartbeatAt": "heartbeatAt",
}


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquired:
    """A successful acquire: the lease as written, and what the item said before."""

    chain: str
    lease: LeaseView  # owner me, `lease_until` now + D, the new generation
    previous_owner: str | None  # the holder before (None: released or never taken)
    completed_at: float | None  # the previous holder's `complete` (None: not released by a handover
    # or stop: a lapsed lease, a first take): `balance.subscribe_after(completed_at, now)`

    @property
    def generation(self) -> int:
        return self.lease.generation


@dataclass(frozen=True, slots=True)
class Renewal:
    """One lease's renewal: renewed (`lease` as written, handover fields included), lost (the owner
    is no longer me: someone took it, or it was released), or failed (`error`: unknown whether it
    was written; the lease keeper's `safe_until` rule decides)."""

    chain: str
    lease: LeaseView | None = None
    error: StateStoreError | None = None

    @property
    def renewed(self) -> bool:
        return self.lease is not None

    @property
    def lost(self) -> bool:
        return self.lease is None and self.error is None


@dataclass(frozen=True, slots=True)
class FleetView:
    """What `read_fleet` found: the index's members and the records of those with a worker item.

    `missing`: members without a readable first part (forgotten half-way, or an item deleted by
    hand): feed them to the plan as silent so that `Plan.forget` names them. `problems`: one line
    per worker item that could not be read."""

    members: frozenset[str]
    workers: Mapping[str, WorkerRecord] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def missing(self) -> frozenset[str]:
        return self.members - frozenset(self.workers)


# -- pure encoding helpers -------------------------------------------------------------------------


def lease_key(chain: str) -> str:
    return f"{LEASE_PREFIX}{chain}"


def worker_key(worker: str, part: int = 0) -> str:
    """The key of a worker item's part, as `balance.worker_items` writes it."""
    return f"{WORKER_PREFIX}{worker}" + (f"#{part}" if part else "")


def check_worker_id(worker: str) -> str:
    """A worker id as the items need it: not empty, no `#` (a part's key would be ambiguous:
    worker `a#1` and the second part of worker `a` would share `worker#a#1`)."""
    if not isinstance(worker, str) or not worker:
        raise ValueError("a worker id must be a non-empty string")
    if "#" in worker:
        raise ValueError(f"a worker id must not contain '#': {worker!r}")
    return worker


def decode_lease(item: Mapping[str, Any], *, strict: bool = True) -> LeaseView:
    """A lease item as `balance.LeaseView` (`unchanged_for` None: `LeaseWatch` fills it in).

    `strict`: `ValueError` naming the first attribute that is not of its documented type. Not
    strict (what a write that went through returned: it must not look failed), such an attribute
    reads as absent."""

    def read(parse: Callable[[Mapping[str, Any], str], Any], name: str) -> Any:
        try:
            return parse(item, name)
        except ValueError:
            if strict:
                raise
            return None

    generation = read(_opt_generation, "generation") or 0
    return LeaseView(
        owner=read(_opt_str, "owner") or None,
        lease_until=read(_opt_num, "leaseUntil") or 0.0,
        generation=generation,
        handover_to=read(_opt_str, "handoverTo") or None,
        handover_at=read(_opt_num, "handoverAt"),
        renewed_at=read(_opt_num, "renewedAt"),
    )


def acquire_condition(
    me: str, now: float, expected: LeaseView | None
) -> tuple[str, dict[str, str], dict[str, UniversalAttributeValueTypeDef]]:
    """The versioned acquire's condition, its names and values (see the module docstring).

    `expected`: the lease as the pass read it (None: no item). The version is its owner (or none),
    its generation (0 also matches an item without one) and its `leaseUntil` (0 also matches an item
    without one), compared as numbers: every writer stores them with the same 3 decimals, and a
    value read back as a float prints back to the same digits.
    """
    if expected is None:
        return "attribute_not_exists(#pk)", {"#pk": "pk"}, {}
    names = {"#pk": "pk", "#owner": "owner", "#until": "leaseUntil", "#generation": "generation"}
    values: dict[str, UniversalAttributeValueTypeDef] = {
        ":me": {"S": me},
        ":now": _num(now),
        ":seenGeneration": {"N": str(expected.generation)},
        ":seenUntil": _num(expected.lease_until),
    }
    parts = [
        "attribute_exists(#pk)",
        "(attribute_not_exists(#owner) OR #until <= :now OR #owner = :me)",
    ]
    if expected.owner is None:
        parts.append("attribute_not_exists(#owner)")
    else:
        parts.append("#owner = :seenOwner")
        values[":seenOwner"] = {"S": expected.owner}
    if expected.generation == 0:
        parts.append("(attribute_not_exists(#generation) OR #generation = :seenGeneration)")
    else:
        parts.append("#generation = :seenGeneration")
    if expected.lease_until == 0:
        parts.append("(attribute_not_exists(#until) OR #until = :seenUntil)")
    else:
        parts.append("#until = :seenUntil")
    return " AND ".join(parts), names, values


def expression_names(*expressions: str) -> dict[str, str]:
    """The `ExpressionAttributeNames` the expressions use (DynamoDB refuses unused ones)."""
    text = " ".join(expressions)
    return {name: attribute for name, attribute in _NAMES.items() if _uses(text, name)}


# -- the store ----------------------------------------------------------------------------------


class FleetStore:
    """Leases, worker items and the fleet index in the state table (see the module docstring)."""

    def __init__(
        self,
        dynamodb_client: DynamoDBClient,
        table_name: str,
        *,
        max_workers: int = DEFAULT_RENEW_WORKERS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not table_name:
            raise ValueError("table_name must not be empty")
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._ddb = dynamodb_client
        self._table = table_name
        self._max_workers = max_workers
        self._sleep = sleep

    @property
    def table_name(self) -> str:
        return self._table

    # -- leases -------------------------------------------------------------------------------

    def acquire(
        self, chain: str, me: str, now: float, lease_seconds: float, expected: LeaseView | None
    ) -> Acquired | None:
        """Take `chain`'s lease until `now + lease_seconds` if it is still as `expected` (the
        pass's view; None: no item) and free, expired or mine; None when that no longer holds.

        Of workers racing for one chain on one view, exactly one wins: DynamoDB serialises the
        writes, and the first changes the version the others require. A released chain's
        reservation for its receiver (`handoverTo`) is the plan's rule, not the write's: it ends
        when the receiver is judged dead, which only the view knows.
        """
        _check_chain(chain)
        _check_owner(me)
        _check_positive("lease_seconds", lease_seconds)
        condition, _, values = acquire_condition(me, now, expected)
        update = (
            "SET #owner = :me, #until = :until, #renewedAt = :now, #kind = :kind, #chain = :chain "
            "ADD #generation :one REMOVE #handoverTo, #handoverAt, #completedAt"
        )
        values = {
            **values,
            ":me": {"S": me},
            ":now": _num(now),
            ":until": _num(now + lease_seconds),
            ":kind": {"S": LEASE_KIND},
            ":chain": {"S": chain},
            ":one": {"N": "1"},
        }
        old = self._update("AcquireLease", chain, update, condition, values, returns="ALL_OLD")
        if old is None:
            return None
        before = decode_lease(old, strict=False)  # {}: there was no item
        try:
            completed_at = _opt_num(old, "completedAt")
        except ValueError:
            completed_at = None
        lease = LeaseView(owner=me, lease_until=_round(now + lease_seconds), generation=before.generation + 1)
        return Acquired(chain=chain, lease=lease, previous_owner=before.owner, completed_at=completed_at)

    def renew_many(
        self, chains: Iterable[str], me: str, now: float, lease_seconds: float
    ) -> dict[str, Renewal]:
        """Renew each of `chains` (owner me) until `now + lease_seconds`: one conditional UpdateItem
        per lease, `max_workers` at a time. Never raises for one lease's failure: each chain's
        `Renewal` says renewed, lost or failed."""
        _check_owner(me)
        _check_positive("lease_seconds", lease_seconds)
        wanted = list(dict.fromkeys(chains))
        for chain in wanted:
            _check_chain(chain)
        values: dict[str, UniversalAttributeValueTypeDef] = {
            ":me": {"S": me},
            ":now": _num(now),
            ":until": _num(now + lease_seconds),
        }

        def renew(chain: str) -> Renewal:
            try:
                new = self._update(
                    "RenewLease",
                    chain,
                    "SET #until = :until, #renewedAt = :now",
                    "#owner = :me",
                    values,
                    returns="ALL_NEW",
                )
                if new is None:
                    return Renewal(chain)
                return Renewal(chain, lease=decode_lease(new, strict=False))
            except StateStoreError as exc:
                return Renewal(chain, error=exc)

        if len(wanted) <= 1:
            renewals = [renew(chain) for chain in wanted]
        else:
            with ThreadPoolExecutor(
                max_workers=min(self._max_workers, len(wanted)), thread_name_prefix="lease-renew"
            ) as pool:
                renewals = list(pool.map(renew, wanted))
        return {renewal.chain: renewal for renewal in renewals}

    def request_handover(self, chain: str, holder: str, me: str, now: float, timeout: float) -> bool:
        """Ask `holder` for `chain` (pull): `handoverTo = me` if `holder` still owns it and no other
        handover is pending (none, or one older than `timeout`). False otherwise."""
        _check_chain(chain)
        _check_owner(holder)
        _check_owner(me)
        _check_positive("timeout", timeout)
        if holder == me:
            raise ValueError("a worker does not request its own chain")
        return (
            self._update(
                "RequestHandover",
                chain,
                "SET #handoverTo = :me, #handoverAt = :now",
                "#owner = :holder AND (attribute_not_exists(#handoverTo) OR "
                "attribute_not_exists(#handoverAt) OR #handoverAt < :stale)",
                {
                    ":me": {"S": me},
                    ":holder": {"S": holder},
                    ":now": _num(now),
                    ":stale": _num(now - timeout),
                },
            )
            is not None
        )

    def accept(self, chain: str, me: str, to: str, now: float) -> bool:
        """Honour a request: mark `chain` as being handed to `to` (`handoverTo = to`) if I own it."""
        return self._hand_over("AcceptHandover", chain, me, to, now)

    def push(self, chain: str, me: str, to: str, now: float) -> bool:
        """Hand my surplus `chain` to `to` unasked: the same write as `accept`."""
        return self._hand_over("PushHandover", chain, me, to, now)

    def decline(self, chain: str, me: str, requester: str) -> bool:
        """Refuse `requester`'s request on my `chain` (so that it asks elsewhere); False if I do not
        own it or the pending handover is not `requester`'s."""
        _check_chain(chain)
        _check_owner(me)
        _check_owner(requester)
        return (
            self._update(
                "DeclineHandover",
                chain,
                "REMOVE #handoverTo, #handoverAt",
                "#owner = :me AND #handoverTo = :requester",
                {":me": {"S": me}, ":requester": {"S": requester}},
            )
            is not None
        )

    def release(
        self, chain: str, me: str, now: float, completed_at: float | None, *, keep_handover: bool
    ) -> bool:
        """Give `chain` up once its socket is closed, if I own it: the owner removed, `leaseUntil`
        0, `completedAt` when `complete` was sent (None: not sent; removed). `keep_handover`: a
        handover, `handoverTo` stays and `handoverAt = now` starts the reservation; else a stop,
        both are removed. False when I no longer own it."""
        _check_chain(chain)
        _check_owner(me)
        sets = ["#until = :zero"]
        removes = ["#owner"]
        values: dict[str, UniversalAttributeValueTypeDef] = {":me": {"S": me}, ":zero": {"N": "0"}}
        if keep_handover:
            sets.append("#handoverAt = :now")
            values[":now"] = _num(now)
        else:
            removes += ["#handoverTo", "#handoverAt"]
        if completed_at is None:
            removes.append("#completedAt")
        else:
            sets.append("#completedAt = :completedAt")
            values[":completedAt"] = _num(completed_at)
        update = "SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes)
        return self._update("ReleaseLease", chain, update, "#owner = :me", values) is not None

    def read_leases(self, chains: Iterable[str]) -> dict[str, LeaseView]:
        """The lease items of `chains` that exist (a chain without one is free), by chain:
        BatchGetItem, 100 keys a request, eventually consistent (see the module docstring)."""
        wanted = list(dict.fromkeys(chains))
        for chain in wanted:
            _check_chain(chain)
        keys = {lease_key(chain): chain for chain in wanted}
        found = self._batch_get("ReadLeases", list(keys), consistent=False)
        leases: dict[str, LeaseView] = {}
        for key, item in found.items():
            chain = keys[key]
            try:
                leases[chain] = decode_lease(item)
            except ValueError as exc:
                raise self._malformed("ReadLeases", chain, exc) from exc
        return leases

    # -- workers ------------------------------------------------------------------------------

    def join(self, worker: str, now: float) -> None:
        """Add `worker` to the fleet index (idempotent: a string set). Write the worker item first
        (`put_worker`), so that every member the others read has one."""
        check_worker_id(worker)
        self._update(
            "JoinFleet",
            None,
            "SET #kind = :kind, #updatedAt = :now ADD #workers :worker",
            None,
            {":kind": {"S": FLEET_INDEX_KIND}, ":now": _num(now), ":worker": {"SS": [worker]}},
            key=FLEET_INDEX_KEY,
            subject=f"worker {worker!r}",
        )

    def put_worker(self, items: Sequence[Mapping[str, Any]]) -> None:
        """Write a worker's heartbeat items (`balance.worker_items(...)`), the further parts first
        and the first part last, so that a reader never finds a first part newer than the rest it
        announces (a torn write shows as `WorkerRecord.complete` False, never as lost chains)."""
        if not items:
            raise ValueError("put_worker needs the items of balance.worker_items")
        worker = _item_worker(items[0])
        parts: dict[int, Mapping[str, Any]] = {}
        for item in items:
            if _item_worker(item) != worker:
                raise ValueError("put_worker writes one worker's items at a time")
            part = int(item["part"]["N"])
            if item["pk"] != {"S": worker_key(worker, part)}:
                raise ValueError(f"part {part} of worker {worker!r} has key {item['pk']!r}")
            parts[part] = item
        announced = {int(item["parts"]["N"]) for item in items}
        if sorted(parts) != list(range(len(items))) or announced != {len(items)}:
            raise ValueError(f"worker {worker!r}: parts must be 0..n-1, each once, n as each item says")
        for part in sorted(parts, reverse=True):
            written: Any = parts[part]
            try:
                self._ddb.put_item(TableName=self._table, Item=written)
            except (ClientError, BotoCoreError) as exc:
                raise store_error("PutWorker", self._table, exc, subject=f"worker {worker!r}") from exc

    def read_fleet(self) -> FleetView:
        """The fleet index and every member's worker item (all parts), never a Scan."""
        index = self._get_index("ReadWorkers")
        members = _index_members(index)
        if not members:
            return FleetView(frozenset())
        items = self._batch_get("ReadWorkers", [worker_key(m) for m in sorted(members)], consistent=False)
        more: list[str] = []
        for item in items.values():
            try:
                worker, parts = _item_worker(item), int(item["parts"]["N"])
            except (KeyError, TypeError, ValueError):
                continue  # reported below
            if worker in members and parts > 1:
                more += [worker_key(worker, part) for part in range(1, parts)]
        if more:
            items.update(self._batch_get("ReadWorkers", more, consistent=False))
        by_worker: dict[str, list[Mapping[str, Any]]] = {}
        for key, item in items.items():
            by_worker.setdefault(key[len(WORKER_PREFIX) :].split("#", 1)[0], []).append(item)
        workers: dict[str, WorkerRecord] = {}
        problems: list[str] = []
        for worker in sorted(members):
            try:
                record = read_worker_items(by_worker.get(worker, ())).get(worker)
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(
                    f"{worker_key(worker)} in table {self._table} is malformed ({type(exc).__name__}: "
                    f"{exc}); it is rewritten with the worker's next heartbeat, or forgotten"
                )
                continue
            if record is not None:
                workers[worker] = record
        return FleetView(members, workers, tuple(problems))

    def read_workers(self) -> dict[str, WorkerRecord]:
        """Every member's worker record, by worker (`read_fleet().workers`)."""
        return dict(self.read_fleet().workers)

    def forget_worker(self, worker: str, now: float, *, heartbeat_at: float | None = None) -> bool:
        """Delete a silent worker's items and drop it from the index (`Plan.forget`).

        `heartbeat_at`: the heartbeat it was judged silent on; the first part is deleted only while
        its heartbeat is no later (False, nothing changed, if the worker wrote again meanwhile).
        The items go first (the first part's old value says how many there are) and the index entry
        last, so that a forget cut short leaves a member without an item (`FleetView.missing`,
        forgotten again at a next pass) rather than an item nobody lists; only a split item's
        further parts can be left behind, by a cut between its deletes. Idempotent."""
        check_worker_id(worker)
        subject = f"worker {worker!r}"
        condition = None
        values: dict[str, UniversalAttributeValueTypeDef] = {}
        if heartbeat_at is not None:
            condition = "attribute_not_exists(#pk) OR #heartbeatAt <= :seen"
            values[":seen"] = _num(heartbeat_at)
        old = self._delete("ForgetWorker", worker_key(worker), subject, condition, values)
        if old is None:
            return False
        try:
            parts = int(old["parts"]["N"]) if old else 1
        except (KeyError, TypeError, ValueError):
            parts = 1  # not a worker item as written: nothing further to find
        for part in range(1, parts):
            self._delete("ForgetWorker", worker_key(worker, part), subject, None, {})
        self._update(
            "ForgetWorker",
            None,
            "SET #updatedAt = :now DELETE #workers :worker",
            None,
            {":now": _num(now), ":worker": {"SS": [worker]}},
            key=FLEET_INDEX_KEY,
            subject=subject,
        )
        return True

    # -- plumbing -----------------------------------------------------------------------------

    def _hand_over(self, operation: str, chain: str, me: str, to: str, now: float) -> bool:
        _check_chain(chain)
        _check_owner(me)
        _check_owner(to)
        if to == me:
            raise ValueError("a worker does not hand a chain to itself")
        return (
            self._update(
                operation,
                chain,
                "SET #handoverTo = :to, #handoverAt = :now",
                "#owner = :me",
                {":me": {"S": me}, ":to": {"S": to}, ":now": _num(now)},
            )
            is not None
        )

    def _update(
        self,
        operation: str,
        chain: str | None,
        update: str,
        condition: str | None,
        values: Mapping[str, UniversalAttributeValueTypeDef],
        *,
        returns: str = "NONE",
        key: str | None = None,
        subject: str | None = None,
    ) -> Mapping[str, Any] | None:
        """One UpdateItem of `lease#<chain>` (or of `key`): the item `returns` asks for ({} for
        NONE, or when there was none), or None when the condition did not hold."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": key if key is not None else lease_key(str(chain))}},
            "UpdateExpression": update,
            "ExpressionAttributeNames": expression_names(update, condition or ""),
            "ExpressionAttributeValues": dict(values),
            "ReturnValues": returns,
        }
        if condition is not None:
            request["ConditionExpression"] = condition
        about = subject if subject is not None else f"chain {chain!r}"
        try:
            response = self._ddb.update_item(**request)
        except ClientError as exc:
            if condition is not None and error_code(exc) == _CONDITION_FAILED:
                return None
            raise store_error(operation, self._table, exc, subject=about) from exc
        except BotoCoreError as exc:
            raise store_error(operation, self._table, exc, subject=about) from exc
        return response.get("Attributes") or {}

    def _delete(
        self,
        operation: str,
        key: str,
        subject: str,
        condition: str | None,
        values: Mapping[str, UniversalAttributeValueTypeDef],
    ) -> Mapping[str, Any] | None:
        """One DeleteItem: the old item ({} when there was none), None when the condition failed."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": key}},
            "ReturnValues": "ALL_OLD",
        }
        if condition is not None:
            request["ConditionExpression"] = condition
            request["ExpressionAttributeNames"] = expression_names(condition)
            request["ExpressionAttributeValues"] = dict(values)
        try:
            response = self._ddb.delete_item(**request)
        except ClientError as exc:
            if condition is not None and error_code(exc) == _CONDITION_FAILED:
                return None
            raise store_error(operation, self._table, exc, subject=subject) from exc
        except BotoCoreError as exc:
            raise store_error(operation, self._table, exc, subject=subject) from exc
        return response.get("Attributes") or {}

    def _get_index(self, operation: str) -> Mapping[str, Any] | None:
        try:
            response = self._ddb.get_item(
                TableName=self._table, Key={"pk": {"S": FLEET_INDEX_KEY}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise store_error(operation, self._table, exc, subject=FLEET_INDEX_KEY) from exc
        return response.get("Item")

    def _batch_get(
        self, operation: str, keys: Sequence[str], *, consistent: bool
    ) -> dict[str, Mapping[str, Any]]:
        """The items of `keys` (distinct) that exist, by `pk` (`state.batch_get_items`)."""

        def failed(exc: ClientError | BotoCoreError, chunk: Sequence[str]) -> Exception:
            return store_error(operation, self._table, exc, subject=_keys_subject(chunk))

        def throttled(left: int, chunk: Sequence[str]) -> Exception:
            return StateStoreError(
                f"DynamoDB {operation} on table {self._table} for {_keys_subject(chunk)} failed "
                f"({left} keys left unprocessed after {BATCH_ROUNDS} requests: throttled)",
                operation=operation,
                code="UnprocessedKeys",
                retryable=True,
            )

        return batch_get_items(
            self._ddb,
            self._table,
            keys,
            consistent=consistent,
            sleep=self._sleep,
            failed=failed,
            throttled=throttled,
        )

    def _malformed(self, operation: str, chain: str, exc: ValueError) -> StateStoreError:
        return StateStoreError(
            f"{lease_key(chain)} in table {self._table} is malformed ({exc}); correct or delete that item",
            operation=operation,
            code="InvalidItem",
            retryable=False,
        )


# -- helpers ------------------------------------------------------------------------------------


def _uses(text: str, name: str) -> bool:
    start = 0
    while (at := text.find(name, start)) >= 0:
        end = at + len(name)
        if end == len(text) or not (text[end].isalnum() or text[end] == "_"):
            return True
        start = end
    return False


def _index_members(index: Mapping[str, Any] | None) -> frozenset[str]:
    if index is None or "workers" not in index:
        return frozenset()
    return frozenset(str(w) for w in index["workers"].get("SS") or ())


def _item_worker(item: Mapping[str, Any]) -> str:
    try:
        kind, worker = item["kind"]["S"], item["worker"]["S"]
    except (KeyError, TypeError) as exc:
        raise ValueError("not a worker item (kind and worker missing)") from exc
    if kind != "worker":
        raise ValueError(f"not a worker item (kind {kind!r})")
    return check_worker_id(str(worker))


def _keys_subject(keys: Sequence[str]) -> str:
    first = keys[0] if keys else ""
    return f"{len(keys)} keys from {first!r}" if len(keys) > 1 else repr(first)


def _check_owner(owner: str) -> None:
    """A lease's owner, requester or receiver: any non-empty string (a worker id in the fleet; the
    single-chain consumer's `host:pid` on leases it holds)."""
    if not isinstance(owner, str) or not owner:
        raise ValueError("an owner (worker id) must be a non-empty string")


def _check_chain(chain: str) -> None:
    if not isinstance(chain, str) or not chain:
        raise ValueError("a chain id must be a non-empty string")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, not {value}")


def _round(value: float) -> float:
    """`value` as the item stores it (3 decimals), as a float."""
    return float(f"{value:.3f}")


def _num(value: float) -> AttributeValueTypeDef:
    return {"N": f"{value:.3f}"}


def _opt_num(item: Mapping[str, Any], name: str) -> float | None:
    value = item.get(name)
    if value is None:
        return None
    try:
        return float(value["N"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a number") from exc


def _opt_generation(item: Mapping[str, Any], name: str) -> int | None:
    number = _opt_num(item, name)
    if number is None:
        return None
    if not number.is_integer() or number < 0:
        raise ValueError(f"{name}: expected a whole number")
    return int(number)


def _opt_str(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("S"), str):
        raise ValueError(f"{name}: expected a string")
    return str(value["S"])
