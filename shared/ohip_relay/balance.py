"""The fleet's lease balancing, sans I/O: which chains this task takes, hands over, stops or asks for.

One deployment, many chains: N tasks (workers), each running many chain sessions, share the chains'
leases the way the Kinesis Client Library shares shards (docs/fleet-design.md). Every balancing pass
the task's scheduler reads a view of the fleet (the registry's enabled chains, the lease items, the
workers' heartbeats), calls `plan()`, and carries the `Plan` out with conditional writes. This module
owns the decisions only: no DynamoDB, no socket, no clock (`now` is passed in, as in protocol.py).

    watch = LeaseWatch()                                    # one per task, lives across passes
    now = time.time()
    leases = watch.observe(read_lease_items(), time.monotonic())
    workers = watch.observe_workers(read_heartbeats(), now)
    p = plan(enabled=registry_ids, leases=leases, workers=workers, me=worker_id, now=now,
             running=sessions, draining=leaving)
    for chain in p.take: acquire (and, for each one lost to a faster worker, try the next `p.spare`)
    for h in p.release: mark the lease handed to h.to, complete, drain, checkpoint, release
    for chain in p.stop: complete, drain, checkpoint, release (the chain left the registry)
    if p.request_handover: ask its holder for it (a write to the lease's handover fields only)

Rules (a test each in tests/unit/test_balance.py):

* **Alive**: a worker is alive while its heartbeat is younger than `worker_timeout`; `me` always is.
* **Fair share** = ceil(enabled / alive). Free chains are taken up to a per-worker *target*: the
  share's floor, plus one for the first (enabled mod alive) workers in id order, so that the targets
  add up to the number of chains and a cold start needs no handover at all.
* **Take** a chain that is free (no lease item, or released), expired (`lease_until <= now` and,
  when the `LeaseWatch` saw it, unchanged for a whole lease period), handed over to me, or still
  mine in the table but not running here. At most `max_takes_per_pass` free ones per pass (a task
  that starts first must not grab the whole registry, nor open hundreds of sockets at once); handed
  over ones are taken at once. Order: chains nobody took for `orphan_after` first (taken even above
  the target: a worker that looks alive but takes nothing must not strand them), then by a stable
  hash of (chain, me), so that workers spread over the free chains instead of racing for one;
  `spare` lists the next candidates, for takes lost to a faster worker.
* **Stop** every chain this task runs that is no longer enabled in the registry.
* **Hand over**, never take by force (KCL steals a live lease; here that would open a second
  connection while the holder's socket is still open). Balancing moves only happen while no chain
  is left free (free ones are taken first) and go one way, from a worker with at least two chains
  more than the receiver:
  - *honour* a handover request on a chain I hold if the move still evens the load, counting the
    moves already under way (else *decline* it, so that the requester asks elsewhere);
  - *push* my surplus above the share to the least loaded alive worker below the share;
  - *request* (pull): at most one chain per pass, from the most loaded worker, when I am below the
    share, it holds at least two more than I do, and nothing is already on its way to me.
  A released chain stays reserved for its receiver for `handover_timeout` (unless the receiver
  died); a request nobody acted on lapses after the same time. At most `max_releases_per_pass`
  handovers start per pass.
* Deterministic: the same view gives the same plan, whatever the order of the mappings.

**Never two connections for one chain**, by construction. A session of worker W for chain C runs
from W's successful acquire of lease#C until W's socket for C is closed. Then:

1. A session starts only after a successful acquire, a conditional write decided by DynamoDB:
   owner absent, or `leaseUntil <= now`, or owner = W, and the version the pass saw
   (fleet_state.FleetStore.acquire; the single-chain StateStore.acquire_lease without it). The core
   proposes only chains whose view meets that condition; the write checks it again on the item as
   it is, so a stale view can cost a failed write, never a second holder, and of workers racing for
   one chain exactly one wins (and the generation, the fencing token, goes up by one).
2. A handover or a stop writes the release (owner removed) only after the session's socket is
   closed: `complete`, read until the server closes it (or close it ourselves when the drain times
   out), checkpoint, release. The receiver acquires only once the owner is gone: the core never
   proposes a live lease held by another worker, whatever its handover fields say, and a request
   writes only those fields, never the owner.
3. A holder that cannot renew (killed, partitioned from DynamoDB, throttled) loses its lease only
   by expiry. Today's rule, kept by the fleet (stream.py `_lease_keeper`): a renewal sends `now`
   (`t`, the holder's clock) and stores `leaseUntil = t + D`; the holder closes its connection at
   `safe_until = t + D - I` (I = the renew interval, D/3) unless a later renewal has answered by
   then, and a renewal still hanging at `safe_until` is given up. Another worker's acquire
   succeeds only when *its* clock reads at least `t + D`. With a clock offset S (taker minus
   holder), the taker can connect at holder time `t + D - S`, the holder is closed by `t + D - I`:
   safe while **S < I** less the time to close a socket (10 s with the default 30 s lease; Fargate
   tasks are synchronised to the Amazon Time Sync Service, normally far below a second apart).
   Clock *rates* do not matter at this scale (ppm over 30 s).
4. The `LeaseWatch` (KCL's rule: judge expiry by how long the item has not changed on the taker's
   own monotonic clock, not by comparing wall clocks) makes the core propose an expiry take only
   once the item has stayed unchanged for a full lease period D since the taker saw it change. The
   holder's last renewal was written before the taker saw it, so the proposal comes D or more
   after that write, when the holder has been closed for I already, whatever the clock offset.
   The write itself still compares wall clocks (`leaseUntil <= now`), and a view is stale by the
   time the write lands: if another worker acquired (or the holder renewed) in between, the write
   still succeeds when the taker's clock is D or more ahead of the writer's. So with the watch,
   safe while **S < D** less the read-to-write delay. Conditioning the take on the version the
   pass saw (owner, generation and `leaseUntil` unchanged, as KCL's take checks its lease
   counter) closes that too: the last write to the item is then the one the taker watched for
   D, and no clock is compared at all (docs/fleet-design.md; bench/balance_sim.py shows both,
   clocks 80 s apart included). Liveness needs the same care: `LeaseWatch.observe_workers`
   restates heartbeats on the observer's clock, so a worker with a slow clock does not look dead.

What the lease cannot cover: a task that vanishes without closing its socket (a hard kill, a cut
network) leaves a connection that OHIP holds open until its own liveness rule drops it; the next
holder is refused with close code 4409 meanwhile and backs off (backoff.CONFLICT_LOCKOUT). OHIP
enforces the rule there, and the orphaned socket has no reader, so nothing is read twice.

The per-task heartbeat (`worker_items`): one item per task listing the chains it runs, each with
a short state, instead of one heartbeat item per chain. More items only past DynamoDB's 400 KB
item limit: some 3,500 chains at worst (40-character ids, every field at its longest), see
`max_chains_per_item`; docs/fleet-design.md has the layout and the cost.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from .protocol import RESUBSCRIBE_GAP

#: Key prefix of the worker items (one per task; `worker#<id>#<k>` for the rare further parts).
WORKER_PREFIX: Final = "worker#"
#: DynamoDB's item size limit (names and values together).
ITEM_LIMIT_BYTES: Final = 400 * 1024
#: What `worker_items` fills an item up to: the limit less headroom for the estimate's rounding.
WORKER_ITEM_BUDGET: Final = ITEM_LIMIT_BYTES - 4 * 1024
#: How many chains the worker item names in `worst` (for `ohip-relay status` and the alarms).
WORST_CHAINS: Final = 10

_SEPARATOR: Final = "|"


# -- inputs and outputs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseView:
    """One lease item as last read (`lease#<chain>`, state.py), with the fleet's handover fields.

    `owner` None: released (or never taken). `handover_to`: the worker this chain is being handed to
    (a request by that worker, or its holder's push), since `handover_at` (requester's or holder's
    clock). `unchanged_for`: seconds of this task's monotonic clock since it last saw the item change
    (`LeaseWatch`); None when not tracked, and then the wall clock alone judges expiry.
    """

    owner: str | None
    lease_until: float = 0.0
    generation: int = 0
    handover_to: str | None = None
    handover_at: float | None = None
    unchanged_for: float | None = None
    # When a holder last renewed it (its clock; `renewedAt`, kept by a release): since when the
    # chain has had no holder, for the poll fallback's judge (fleet_health.py). Not a version field.
    renewed_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class BalanceConfig:
    lease_seconds: float = 30.0  # D: a lease lasts this long after its last renewal
    worker_timeout: float = 20.0  # dead once its heartbeat is this old: two heartbeats (keep it < D)
    max_takes_per_pass: int = 10  # free chains taken per pass (handed-over ones are not counted)
    max_releases_per_pass: int = 5  # handovers started per pass (each drains for up to a minute)
    handover_timeout: float = 120.0  # a request, or a released chain's reservation, lapses after this
    orphan_after: float = 90.0  # a free chain nobody took for this long is taken above the target
    forget_after: float = 600.0  # a worker silent this long is dropped from the fleet's index

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0 or self.worker_timeout <= 0:
            raise ValueError("lease_seconds and worker_timeout must be positive")
        if self.max_takes_per_pass < 1 or self.max_releases_per_pass < 1:
            raise ValueError("max_takes_per_pass and max_releases_per_pass must be at least 1")
        if self.handover_timeout <= 0 or self.orphan_after <= 0:
            raise ValueError("handover_timeout and orphan_after must be positive")
        if self.forget_after < self.worker_timeout:
            raise ValueError("forget_after must not be shorter than worker_timeout")


@dataclass(frozen=True, slots=True)
class Handover:
    """Hand `chain` to worker `to`: mark the lease, complete, drain, checkpoint, release."""

    chain: str
    to: str


@dataclass(frozen=True, slots=True)
class HandoverRequest:
    """Ask `holder` for `chain`: write `handoverTo = me` on its lease, on condition that `holder`
    still owns it and no other request is pending. Never a write to the owner."""

    chain: str
    holder: str


@dataclass(frozen=True, slots=True)
class Plan:
    take: tuple[str, ...] = ()
    spare: tuple[str, ...] = ()  # further free chains, in order, for takes lost to another worker
    release: tuple[Handover, ...] = ()
    stop: tuple[str, ...] = ()
    request_handover: HandoverRequest | None = None
    decline: tuple[str, ...] = ()  # handover requests on my chains that would not even the load
    forget: tuple[str, ...] = ()  # workers silent for `forget_after`: drop them from the index
    alive: tuple[str, ...] = ()
    share: int = 0  # ceil(enabled / alive)
    target: int = 0  # how many free chains this worker takes up to
    load: int = 0  # the chains counted as this worker's before the plan

    @property
    def idle(self) -> bool:
        """Nothing to do this pass."""
        return not (
            self.take or self.release or self.stop or self.request_handover or self.decline or self.forget
        )


# -- the plan -----------------------------------------------------------------------------------


def plan(
    *,
    enabled: Iterable[str],
    leases: Mapping[str, LeaseView],
    workers: Mapping[str, float],
    me: str,
    now: float,
    running: Collection[str],
    draining: Collection[str] = (),
    config: BalanceConfig | None = None,
) -> Plan:
    """What worker `me` does this pass (see the module docstring for the rules).

    `enabled`: the registry's enabled chain ids. `leases`: the lease items by chain (a chain without
    one is free). `workers`: each worker's last heartbeat (`now`'s clock). `running`: the chains this
    worker has a session for, `draining` those of them on their way out (a handover or a stop that
    has started): they are not counted as mine any more, nor proposed again.
    """
    cfg = config or BalanceConfig()
    if not me:
        raise ValueError("me must not be empty")
    chains = frozenset(enabled)
    mine_running = frozenset(running)
    leaving = frozenset(draining) & mine_running
    active = mine_running - leaving

    alive = tuple(sorted({w for w, beat in workers.items() if now - beat < cfg.worker_timeout} | {me}))
    alive_set = frozenset(alive)
    forget = tuple(sorted(w for w, beat in workers.items() if w != me and now - beat >= cfg.forget_after))
    stop = tuple(sorted(active - chains))

    n, w = len(chains), len(alive)
    share = -(-n // w)
    floor, extra = divmod(n, w)
    target = floor + (1 if alive.index(me) < extra else 0)

    def valid_handover(lease: LeaseView) -> str | None:
        """The live receiver of a handover in progress on `lease`, or None."""
        to, at = lease.handover_to, lease.handover_at
        if to is None or at is None or to not in alive_set or now - at >= cfg.handover_timeout:
            return None
        return to

    def pending(lease: LeaseView | None) -> bool:
        return lease is not None and valid_handover(lease) not in (None, me)

    def expired(lease: LeaseView) -> bool:
        if lease.owner is None:
            return True
        if lease.lease_until > now:
            return False
        return lease.unchanged_for is None or lease.unchanged_for >= cfg.lease_seconds

    loads = dict.fromkeys(alive, 0)
    loads[me] = len(active & chains)
    ours: list[str] = []  # handed over to me, or mine in the table but not running here
    free: list[str] = []  # anyone's to take
    pending_to_me = False  # a handover to me is under way (requested, pushed, or released for me)
    held_by: dict[str, list[str]] = {}  # live chains of other alive workers, with no handover pending
    for chain in sorted(chains):
        lease = leases.get(chain)
        if chain in mine_running:
            continue
        if lease is None:
            free.append(chain)
            continue
        receiver = valid_handover(lease)
        if lease.owner == me:
            ours.append(chain)
            loads[me] += 1
        elif not expired(lease):
            # Held. A handover under way counts for its receiver already (the holder drains it).
            assert lease.owner is not None
            if receiver == me:
                pending_to_me = True
            elif receiver is not None:
                loads[receiver] += 1
            elif lease.owner in loads:
                loads[lease.owner] += 1
                held_by.setdefault(lease.owner, []).append(chain)
        elif receiver == me:
            ours.append(chain)
            loads[me] += 1
            pending_to_me = True
        elif receiver is not None:
            loads[receiver] += 1  # released (or lapsed) on its way to another worker: reserved
        else:
            free.append(chain)
    # My chains on their way out count for their receiver already (I know; the table shows me).
    for chain in sorted(leaving & chains):
        lease = leases.get(chain)
        receiver = valid_handover(lease) if lease is not None else None
        if receiver is not None and receiver != me:
            loads[receiver] += 1

    # Takes: ours at once; free ones up to the target, orphans first, then spread by hash.
    watched = {c: leases[c].unchanged_for for c in free if c in leases}
    orphans = {c for c in free if (watched.get(c) or 0.0) >= cfg.orphan_after}
    order = sorted(free, key=lambda c: (c not in orphans, _rank(c, me)))
    room = max(0, target - loads[me])
    quota = min(cfg.max_takes_per_pass, max(room, min(len(orphans), cfg.max_takes_per_pass)))
    chosen = order[:quota]
    spare = order[quota : quota + cfg.max_takes_per_pass]
    take = tuple(ours) + tuple(chosen)

    release: list[Handover] = []
    decline: list[str] = []
    request: HandoverRequest | None = None
    load_before = loads[me]
    if not free:
        my = loads[me]
        promised: set[str] = set()
        # Honour requests on my chains while each move still evens the load.
        for chain in sorted(active & chains):
            lease = leases.get(chain)
            if lease is None or lease.owner != me:
                continue
            receiver = valid_handover(lease)
            if receiver is None or receiver == me:
                continue
            if my > loads[receiver] + 1:
                if len(release) < cfg.max_releases_per_pass:
                    release.append(Handover(chain, receiver))
                    promised.add(chain)
                    my -= 1
                    loads[receiver] += 1
            else:
                decline.append(chain)
        # Push my surplus above the share to whoever is below it, least loaded first.
        spread = sorted(
            (c for c in active & chains if c not in promised and not pending(leases.get(c))),
            key=lambda c: _rank(c, me),
        )
        while my > share and spread and len(release) < cfg.max_releases_per_pass:
            others = [x for x in alive if x != me and loads[x] < share and loads[x] <= my - 2]
            if not others:
                break
            receiver = min(others, key=lambda x: (loads[x], _rank(x, me)))
            release.append(Handover(spread.pop(0), receiver))
            my -= 1
            loads[receiver] += 1
        # Pull one chain from the most loaded worker, if nothing is on its way to me yet.
        if not pending_to_me and not take and not release and my < share:
            donors = [x for x in held_by if x != me and loads[x] >= my + 2]
            if donors:
                donor = max(donors, key=lambda x: (loads[x], -_rank(x, me)))
                chain = min(held_by[donor], key=lambda c: _rank(c, me))
                request = HandoverRequest(chain, donor)

    return Plan(
        take=take,
        spare=tuple(spare),
        release=tuple(release),
        stop=stop,
        request_handover=request,
        decline=tuple(decline),
        forget=forget,
        alive=alive,
        share=share,
        target=target,
        load=load_before,
    )


def subscribe_after(completed_at: float | None, now: float, *, gap: float = RESUBSCRIBE_GAP) -> float:
    """When a new holder may subscribe: `gap` (OHIP's 10 s) after the previous holder's `complete`
    (stored with the release; None: no `complete` is known, a lapsed lease), never before `now`.

    Both times are wall-clock readings of two tasks: add the clock offset you allow for to `gap`.
    """
    if completed_at is None:
        return now
    return max(now, completed_at + gap)


def _rank(chain: str, worker: str) -> int:
    """A stable pseudo-random order (not Python's salted `hash`): the same on every task and run."""
    digest = hashlib.blake2b(f"{chain}\x00{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# -- expiry by observation (KCL's counter rule) -------------------------------------------------


class LeaseWatch:
    """Since when this task has seen each lease item, and each worker's heartbeat, unchanged.

    Leases (`observe`), on the task's monotonic clock: a lease's version is its owner, generation
    and `lease_until`; any renewal, acquire or release changes it. A version seen for the first time
    counts as just changed (for an owned lease: as if renewed at that moment, the conservative
    reading). Returns the views with `unchanged_for` filled in; chains gone from the table are
    forgotten.

    Heartbeats (`observe_workers`), on the task's wall clock: each worker's heartbeat restated as
    the time of the pass that saw its value change, so that liveness does not depend on the writers'
    clocks either (a worker whose clock runs 15 s behind would otherwise look dead to the others).
    A heartbeat seen for the first time is taken at its word (`min(now, heartbeat)`).
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[str | None, int, float], float]] = {}
        self._beats: dict[str, tuple[float, float]] = {}

    def observe_workers(self, heartbeats: Mapping[str, float], now: float) -> dict[str, float]:
        beats: dict[str, tuple[float, float]] = {}
        for worker, beat in heartbeats.items():
            previous = self._beats.get(worker)
            if previous is None:
                beats[worker] = (beat, min(now, beat))
            elif previous[0] != beat:
                beats[worker] = (beat, now)
            else:
                beats[worker] = previous
        self._beats = beats
        return {worker: seen for worker, (_, seen) in beats.items()}

    def observe(self, leases: Mapping[str, LeaseView], mono_now: float) -> dict[str, LeaseView]:
        seen: dict[str, tuple[tuple[str | None, int, float], float]] = {}
        out: dict[str, LeaseView] = {}
        for chain, lease in leases.items():
            version = (lease.owner, lease.generation, lease.lease_until)
            previous = self._seen.get(chain)
            since = previous[1] if previous is not None and previous[0] == version else mono_now
            seen[chain] = (version, since)
            out[chain] = replace(lease, unchanged_for=max(0.0, mono_now - since))
        self._seen = seen
        return out


# -- the per-task heartbeat -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainSummary:
    """What the worker item says about one chain it runs (in place of `heartbeat#<chain>`)."""

    state: str  # a state.StreamState value
    since: float  # when the chain entered `state`
    last_event_at: float | None = None
    checkpoint: int | None = None
    lag_seconds: float | None = None

    def encode(self) -> str:
        """`state|since|lastEventAt|checkpoint|lagSeconds`, empty where unknown."""
        if not self.state or _SEPARATOR in self.state:
            raise ValueError(f"state must be a non-empty word without {_SEPARATOR!r}")
        fields = (
            self.state,
            _fmt(self.since),
            _fmt(self.last_event_at),
            "" if self.checkpoint is None else str(self.checkpoint),
            _fmt(self.lag_seconds),
        )
        return _SEPARATOR.join(fields).rstrip(_SEPARATOR)

    @classmethod
    def decode(cls, text: str) -> ChainSummary:
        """The inverse of `encode`; fields a newer writer appended are ignored."""
        parts = (text.split(_SEPARATOR) + [""] * 5)[:5]
        if not parts[0] or not parts[1]:
            raise ValueError(f"not a chain summary: {text!r}")
        return cls(
            state=parts[0],
            since=float(parts[1]),
            last_event_at=float(parts[2]) if parts[2] else None,
            checkpoint=int(parts[3]) if parts[3] else None,
            lag_seconds=float(parts[4]) if parts[4] else None,
        )


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker item (all its parts) as read back."""

    worker: str
    heartbeat_at: float
    started_at: float
    chains: Mapping[str, ChainSummary] = field(default_factory=dict)
    complete: bool = True  # every part was found, all from the same heartbeat


def worker_items(
    worker: str,
    heartbeat_at: float,
    chains: Mapping[str, ChainSummary],
    *,
    started_at: float,
    max_item_bytes: int = WORKER_ITEM_BUDGET,
    expires_at: float | None = None,
) -> list[dict[str, Any]]:
    """The worker's heartbeat as DynamoDB items (attribute-value form), each at most
    `max_item_bytes` by DynamoDB's size rules: usually one, `worker#<id>`; the chains that do not
    fit go to `worker#<id>#1`, `#2`... Every part carries the heartbeat time and the part count;
    the first also `totals` (chains by state) and `worst` (the chains to look at first).
    `expires_at`: the table's TTL attribute (`expiresAt`, epoch seconds) on every part, so that
    DynamoDB removes what a worker that vanished left behind (a further part a forget missed).
    """
    if not worker:
        raise ValueError("worker must not be empty")
    totals: dict[str, int] = {}
    for summary in chains.values():
        totals[summary.state] = totals.get(summary.state, 0) + 1
    worst = worst_chains(chains)
    entries = [(chain, {"S": chains[chain].encode()}) for chain in sorted(chains)]

    def header(part: int, parts: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "pk": {"S": f"{WORKER_PREFIX}{worker}" + (f"#{part}" if part else "")},
            "kind": {"S": "worker"},
            "worker": {"S": worker},
            "part": {"N": str(part)},
            "parts": {"N": str(parts)},
            "heartbeatAt": {"N": _fmt(heartbeat_at)},
            "startedAt": {"N": _fmt(started_at)},
            "chains": {"M": {}},
        }
        if expires_at is not None:
            item["expiresAt"] = {"N": str(int(expires_at))}
        if part == 0:
            item["totals"] = {"M": {state: {"N": str(count)} for state, count in sorted(totals.items())}}
            item["worst"] = {"L": [{"S": chain} for chain in worst]}
        return item

    placeholder = 10**6  # sizes are computed with a part number this long: the real one is shorter
    groups: list[list[tuple[str, dict[str, str]]]] = [[]]
    size = item_size(header(0, placeholder))
    for chain, value in entries:
        grow = _entry_size(chain, value)
        if groups[-1] and size + grow > max_item_bytes:
            groups.append([])
            size = item_size(header(placeholder, placeholder))
        if size + grow > max_item_bytes:
            raise ValueError(f"chain {chain!r} alone does not fit in {max_item_bytes} bytes")
        groups[-1].append((chain, value))
        size += grow
    items = []
    for part, group in enumerate(groups):
        item = header(part, len(groups))
        item["chains"] = {"M": dict(group)}
        items.append(item)
    return items


def read_worker_items(items: Iterable[Mapping[str, Any]]) -> dict[str, WorkerRecord]:
    """Worker records from their items (any order, several workers mixed). A worker whose first
    part is missing is left out; one with a part missing or from another heartbeat (a torn write)
    has `complete` False, its heartbeat from the first part and the chains of every part found."""
    by_worker: dict[str, dict[int, Mapping[str, Any]]] = {}
    for item in items:
        if item.get("kind", {}).get("S") != "worker":
            continue
        by_worker.setdefault(item["worker"]["S"], {})[int(item["part"]["N"])] = item
    records: dict[str, WorkerRecord] = {}
    for worker, parts in by_worker.items():
        first = parts.get(0)
        if first is None:
            continue
        beat = float(first["heartbeatAt"]["N"])
        expected = int(first["parts"]["N"])
        complete = set(parts) == set(range(expected)) and all(
            float(p["heartbeatAt"]["N"]) == beat for p in parts.values()
        )
        summaries: dict[str, ChainSummary] = {}
        for _, part in sorted(parts.items()):
            for chain, value in part.get("chains", {}).get("M", {}).items():
                summaries[chain] = ChainSummary.decode(value["S"])
        records[worker] = WorkerRecord(
            worker=worker,
            heartbeat_at=beat,
            started_at=float(first["startedAt"]["N"]),
            chains=summaries,
            complete=complete,
        )
    return records


def worst_chains(chains: Mapping[str, ChainSummary], n: int = WORST_CHAINS) -> list[str]:
    """The `n` chains to look at first: not connected (longest first), then the largest lag."""

    def badness(chain: str) -> tuple[int, float, str]:
        summary = chains[chain]
        if summary.state != "connected":
            return (0, summary.since, chain)
        return (1, -(summary.lag_seconds or 0.0), chain)

    return sorted(chains, key=badness)[:n]


def max_chains_per_item(id_bytes: int = 40, max_item_bytes: int = WORKER_ITEM_BUDGET) -> int:
    """How many chains one worker item holds at worst: ids of `id_bytes` bytes (the registry allows
    40), every summary field present and at its longest (20-digit checkpoint)."""
    worst = ChainSummary(
        state="auth-failed",
        since=9_999_999_999.999,
        last_event_at=9_999_999_999.999,
        checkpoint=10**20 - 1,
        lag_seconds=999_999.999,
    )
    value = {"S": worst.encode()}
    grow = _entry_size("x" * id_bytes, value)
    fixed = item_size(worker_items("w" * 64, 9_999_999_999.999, {}, started_at=9_999_999_999.999)[0])
    fixed += 10 * (1 + id_bytes + 1)  # `worst`, full
    fixed += 9 * (1 + 12 + 3)  # `totals`, every state
    return (max_item_bytes - fixed) // grow


def item_size(item: Mapping[str, Any]) -> int:
    """An item's size by DynamoDB's rules (attribute names count; numbers a byte per two significant
    digits plus one; lists and maps 3 bytes plus a byte per element), rounded up where approximate."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _entry_size(name: str, value: Mapping[str, Any]) -> int:
    return len(name.encode()) + _value_size(value) + 1  # +1: the map element's own overhead


def _value_size(value: Mapping[str, Any]) -> int:
    ((kind, body),) = value.items()
    if kind == "S":
        return len(str(body).encode())
    if kind == "N":
        return _number_size(str(body))
    if kind == "B":
        return len(body)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(_entry_size(k, v) for k, v in body.items())
    if kind == "L":
        return 3 + sum(_value_size(v) + 1 for v in body)
    if kind == "SS":
        return sum(len(s.encode()) for s in body)
    if kind == "NS":
        return sum(_number_size(s) for s in body)
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def _number_size(text: str) -> int:
    try:
        digits = Decimal(text).as_tuple().digits
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {text!r}") from exc
    significant = "".join(map(str, digits)).strip("0") or "0"
    return math.ceil(len(significant) / 2) + 1


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
