"""`ohip-relay status` in the fleet shape (`RELAY_FLEET=true`): every subscription of the registry in
one table, or one of them in detail (`--chain ID`).

Reads and rendering are apart, as for the single-chain status: `read_fleet_status` and
`read_chain_status` make the DynamoDB calls and return a `FleetReads`; `fleet_report` and
`chain_report` turn it into the object `--json` prints (numbers stay numbers, absent values are
null); `render_fleet` and `render_chain` turn that object into lines of text, in words where a
number alone would mislead, and never "None".

Where each column comes from:

- **state**: the `ChainSummary` in the worker item of the live worker that lists the subscription
  (a worker is alive while its heartbeat is younger than `BalanceConfig.worker_timeout`, 20 s);
  "no holder" for an enabled subscription no live worker lists; "disabled" for a disabled one.
  When two live workers list one chain (for the moment of a handover), the connected one counts,
  else the newer heartbeat, as for the poll fallback.
- **healthy** (JSON, and the `unhealthy` total): the poll fallback's own verdict
  (`fleet_health.judge_fleet` with the `RELAY_HEALTH_*` thresholds), the one the `chain-unhealthy`
  alarm counts.
- **lag**, **last event**: the same summary.
- **holder**: that worker's id, shortened to the shortest prefix of at least 12 characters that
  tells it from the other workers' (in full with `--json` and `--chain`).
- **checkpoint**: `checkpoint#<id>`, what a restart of the chain resumes from.
- **fallback**: `fallback#<id>`, active or inactive (inactive before its first tick).

Reads, all batched and never a Scan. For N subscriptions and W workers (BatchGetItem takes 100 keys):

- the registry, `RegistryStore.list_all`: 2 GetItems of its index and ceil(N / 100) BatchGetItems
  (once more if the registry changed while it was read; 1 GetItem when it is empty);
- the workers, `FleetStore.read_fleet`: 1 GetItem of the fleet index and ceil(W / 100) BatchGetItems
  (one more per hundred further parts of worker items past 400 KB, which need some 3,500 chains);
- the leases, `FleetStore.read_leases`: ceil(N / 100) BatchGetItems;
- checkpoints and fallback records, `state.batch_get_items`: ceil(2N / 100) BatchGetItems.

That is 3 + ceil(W / 100) + 2 ceil(N / 100) + ceil(2N / 100) requests: 7 for 3 chains on 2 workers,
44 for 1,000 chains on 10 workers. In read units about 2.5 N + W (an entry, a lease, a checkpoint
and a fallback record are each under 4 KB; the registry reads strongly consistent, the rest
eventually consistent): some 2,500 units, $0.0003, for 1,000 chains.
`--chain ID` reads 1 GetItem of the entry, the workers as above, and 1 BatchGetItem each for the
lease and for the checkpoint with the fallback record: 4 + ceil(W / 100) requests.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from .balance import BalanceConfig, ChainSummary, LeaseView
from .fleet_health import FleetPollOptions, judge_fleet, live_summaries
from .fleet_state import FleetStore, FleetView
from .health import HealthThresholds, StreamHealth
from .registry import RegistryError, RegistryStore, Subscription
from .state import (
    BATCH_GET_ROUNDS,
    CHECKPOINT_PREFIX,
    FALLBACK_PREFIX,
    Checkpoint,
    FallbackRecord,
    StateStoreError,
    StreamState,
    batch_get_items,
    decode_checkpoint,
    decode_fallback,
    describe_checkpoint,
    store_error,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

    from .config import Settings

WORKER_TIMEOUT: Final = BalanceConfig().worker_timeout
HOLDER_WIDTH: Final = 12  # the shortest prefix a holder is shown with
WORST_SHOWN: Final = 10  # chains in the report's `worst` (the worker item's `worst` has as many)
WORST_IN_TEXT: Final = 5
LAG_WORTH_SHOWING: Final = 5.0  # a connected chain is among the worst from this lag on (seconds)

NO_HOLDER: Final = "no holder"
DISABLED: Final = "disabled"


# -- what the reads found -------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetReads:
    """What the reads found at `now` (taken after the last read, so that no age is negative)."""

    table: str
    now: float
    subscriptions: tuple[Subscription, ...]
    fleet: FleetView
    leases: Mapping[str, LeaseView] = field(default_factory=dict)
    checkpoints: Mapping[str, Checkpoint] = field(default_factory=dict)
    fallbacks: Mapping[str, FallbackRecord] = field(default_factory=dict)
    problems: tuple[str, ...] = ()  # items that could not be read (status exits 1)


@dataclass(frozen=True)
class Holding:
    """A subscription as the live worker that runs it reports it."""

    worker: str
    heartbeat_at: float
    summary: ChainSummary


def live_holdings(
    fleet: FleetView, now: float, *, timeout: float = WORKER_TIMEOUT
) -> tuple[dict[str, Holding], list[str]]:
    """Each chain a live worker lists, with that worker's summary, and a note per chain that two
    live workers list (a handover under way, or a worker item a moment behind). Of those the poll
    fallback's choice counts (`fleet_health.live_summaries`: the connected one, else the newest
    heartbeat), so that status and the `chain-unhealthy` alarm judge the same summary."""
    live = live_summaries(fleet.workers, now, worker_timeout=timeout)
    holdings = {
        chain: Holding(worker.worker, worker.heartbeat_at, summary)
        for chain, (worker, summary) in live.items()
    }
    listed_by: dict[str, list[str]] = {}
    for record in fleet.workers.values():
        if now - record.heartbeat_at < timeout:
            for chain in record.chains:
                listed_by.setdefault(chain, []).append(record.worker)
    notes = [
        f"{chain!r} is listed by {len(workers)} live workers ({', '.join(sorted(workers))}): a handover "
        "under way, or a worker item a moment behind"
        for chain, workers in sorted(listed_by.items())
        if len(workers) > 1
    ]
    return holdings, notes


def judge(
    reads: FleetReads, thresholds: HealthThresholds, *, timeout: float = WORKER_TIMEOUT
) -> dict[str, StreamHealth]:
    """Every enabled chain's health as the poll fallback judges it (`fleet_health.judge_fleet`: the
    worker item's summary, the fallback record, today's thresholds), by id."""
    plan = judge_fleet(
        reads.subscriptions,
        reads.fleet.workers,
        reads.fallbacks,
        reads.now,
        thresholds,
        options=FleetPollOptions(worker_timeout=timeout),
    )
    return {chain: verdict.decision.health for chain, verdict in plan.verdicts.items()}


# -- the report (the JSON object) -----------------------------------------------------------------


def fleet_report(
    reads: FleetReads, thresholds: HealthThresholds | None = None, *, timeout: float = WORKER_TIMEOUT
) -> dict[str, Any]:
    """`ohip-relay status --json` in the fleet shape: totals, the worst chains, the workers and one
    row per subscription (enabled and disabled), ordered by id. `healthy` (null when disabled) and
    `chainsUnhealthy` are the poll fallback's verdict with `thresholds` (default: today's)."""
    now = reads.now
    holdings, notes = live_holdings(reads.fleet, now, timeout=timeout)
    health = judge(reads, thresholds or HealthThresholds(), timeout=timeout)
    rows = [_row(s, holdings.get(s.id), reads, now, health.get(s.id)) for s in reads.subscriptions]
    workers = _workers(reads.fleet, now, timeout)
    for worker in workers:
        if worker["heartbeatAgeSeconds"] is None:
            notes.append(
                f"worker {worker['worker']!r} is in the fleet index but has no worker item (it is "
                "forgotten at a next balancing pass)"
            )
        elif not worker["complete"]:
            notes.append(
                f"worker {worker['worker']!r}: its item was read incomplete (a part missing, or parts "
                "from two heartbeats); some of its chains may show no holder until its next heartbeat"
            )
    enabled = [r for r in rows if r["enabled"]]
    held = [r for r in enabled if r["holder"] is not None]
    alive = [w for w in workers if w["alive"]]
    totals = {
        "workersAlive": len(alive),
        "workersSilent": len(workers) - len(alive),
        "chainsEnabled": len(enabled),
        "chainsDisabled": len(rows) - len(enabled),
        "chainsHeld": len(held),
        "chainsConnected": sum(1 for r in held if r["state"] == StreamState.CONNECTED),
        "chainsWithoutHolder": len(enabled) - len(held),
        "chainsUnhealthy": sum(1 for r in enabled if r["healthy"] is False),
        "chainsFallbackActive": sum(1 for r in rows if r["fallbackActive"]),
    }
    return {
        "fleet": True,
        "table": reads.table,
        "totals": totals,
        "worst": worst_rows(enabled)[:WORST_SHOWN],
        "workers": workers,
        "subscriptions": rows,
        "problems": list(reads.problems) + list(reads.fleet.problems),
        "notes": notes,
    }


def worst_rows(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ids of the enabled chains to look at first: without a holder, then not connected (the
    longest first), then connected with a lag of `LAG_WORTH_SHOWING` or more (the largest first);
    the order of `balance.worst_chains`, with the chains no live worker lists in front."""

    def badness(row: Mapping[str, Any]) -> tuple[int, float, str]:
        if row["holder"] is None:
            return (0, 0.0, row["id"])
        if row["state"] != StreamState.CONNECTED:
            return (1, row["since"] if row["since"] is not None else 0.0, row["id"])
        return (2, -(row["lagSeconds"] or 0.0), row["id"])

    def notable(row: Mapping[str, Any]) -> bool:
        return (
            row["holder"] is None
            or row["state"] != StreamState.CONNECTED
            or (row["lagSeconds"] or 0.0) >= LAG_WORTH_SHOWING
        )

    return [row["id"] for row in sorted(filter(notable, rows), key=badness)]


def chain_report(
    reads: FleetReads,
    subscription: Subscription,
    thresholds: HealthThresholds,
    *,
    timeout: float = WORKER_TIMEOUT,
) -> dict[str, Any]:
    """`ohip-relay status --chain ID --json`: what the single-chain status shows, from the worker
    item instead of a heartbeat item, plus the registry entry and the lease's fields."""
    now = reads.now
    holdings, notes = live_holdings(reads.fleet, now, timeout=timeout)
    holding = holdings.get(subscription.id)
    verdict = judge(reads, thresholds, timeout=timeout).get(subscription.id)
    row = _row(subscription, holding, reads, now, verdict)
    checkpoint = reads.checkpoints.get(subscription.id)
    fallback = reads.fallbacks.get(subscription.id)
    lease = reads.leases.get(subscription.id)
    if verdict is None:
        healthy, health = False, "disabled in the registry"
    elif holding is None:
        healthy, health = False, "no live worker runs it"
    else:
        healthy, health = verdict.healthy, verdict.reason
    return {
        "fleet": True,
        "table": reads.table,
        "id": subscription.id,
        "chain": subscription.chain_code,
        "enabled": subscription.enabled,
        "state": row["state"],
        "stateAgeSeconds": row["stateAgeSeconds"],
        "healthy": healthy,
        "health": health,
        "holder": row["holder"],
        "holderHeartbeatAgeSeconds": _age(now, holding.heartbeat_at) if holding else None,
        "lagSeconds": row["lagSeconds"],
        "lastEventAgeSeconds": row["lastEventAgeSeconds"],
        "checkpoint": checkpoint.offset if checkpoint else None,
        "checkpointAgeSeconds": _age(now, checkpoint.updated_at) if checkpoint else None,
        "reportedCheckpoint": holding.summary.checkpoint if holding else None,
        "leaseOwner": lease.owner if lease else None,
        "leaseHeld": bool(lease and lease.owner and lease.lease_until > now),
        "leaseExpiresInSeconds": round(lease.lease_until - now, 1) if lease and lease.owner else None,
        "leaseGeneration": lease.generation if lease else None,
        "handoverTo": lease.handover_to if lease else None,
        "handoverAgeSeconds": (
            _age(now, lease.handover_at) if lease and lease.handover_to and lease.handover_at else None
        ),
        "fallbackActive": fallback.active if fallback else False,
        "fallbackSince": fallback.since if fallback and fallback.active else None,
        "fallbackLastTickAgeSeconds": (
            _age(now, fallback.last_tick_at) if fallback and fallback.last_tick_at else None
        ),
        "fallbackPublished": fallback.counter("published") if fallback else 0,
        "registry": {
            "gatewayUrl": subscription.gateway_url,
            "secretArn": subscription.secret_arn,
            "enterpriseId": subscription.enterprise_id or None,
            "oauthScope": subscription.oauth_scope or None,
            "externalSystem": subscription.external_system or None,
            "hotelIds": list(subscription.hotel_ids),
            "hotelCode": subscription.hotel_code,
            "delta": subscription.delta,
            "version": subscription.version,
            "updatedAt": subscription.updated_at,
        },
        "problems": list(reads.problems) + list(reads.fleet.problems),
        "notes": [n for n in notes if n.startswith(repr(subscription.id))],
    }


def _row(
    subscription: Subscription,
    holding: Holding | None,
    reads: FleetReads,
    now: float,
    health: StreamHealth | None,
) -> dict[str, Any]:
    summary = holding.summary if holding else None
    checkpoint = reads.checkpoints.get(subscription.id)
    fallback = reads.fallbacks.get(subscription.id)
    if not subscription.enabled:
        state = DISABLED
    elif summary is None:
        state = NO_HOLDER
    else:
        state = summary.state
    return {
        "id": subscription.id,
        "chain": subscription.chain_code,
        "enabled": subscription.enabled,
        "state": state,
        "healthy": health.healthy if health is not None and subscription.enabled else None,
        "since": summary.since if summary else None,
        "stateAgeSeconds": _age(now, summary.since) if summary else None,
        "lagSeconds": summary.lag_seconds if summary else None,
        "holder": holding.worker if holding else None,
        "lastEventAt": summary.last_event_at if summary else None,
        "lastEventAgeSeconds": (
            _age(now, summary.last_event_at) if summary and summary.last_event_at is not None else None
        ),
        "checkpoint": checkpoint.offset if checkpoint else None,
        "fallbackActive": fallback.active if fallback else False,
    }


def _workers(fleet: FleetView, now: float, timeout: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for worker in sorted(fleet.members):
        record = fleet.workers.get(worker)
        out.append(
            {
                "worker": worker,
                "alive": record is not None and now - record.heartbeat_at < timeout,
                "heartbeatAgeSeconds": _age(now, record.heartbeat_at) if record else None,
                "startedAt": record.started_at if record else None,
                "chains": len(record.chains) if record else 0,
                "complete": record.complete if record else False,
            }
        )
    return out


def _age(now: float, then: float) -> float:
    return round(now - then, 1)


# -- text -----------------------------------------------------------------------------------------


def render_fleet(report: Mapping[str, Any]) -> list[str]:
    """`ohip-relay status` in the fleet shape: a few lines of totals, then one row per subscription,
    then the notes and problems."""
    totals = report["totals"]
    rows: list[Mapping[str, Any]] = report["subscriptions"]
    workers: list[Mapping[str, Any]] = report["workers"]
    short = short_worker_ids(
        [str(w["worker"]) for w in workers] + [str(r["holder"]) for r in rows if r["holder"]]
    )
    silent = [w for w in workers if not w["alive"]]
    heard = [w["heartbeatAgeSeconds"] for w in silent if w["heartbeatAgeSeconds"] is not None]
    worker_line = f"{totals['workersAlive']} alive"
    if silent:
        worker_line += f", {len(silent)} silent"
        if heard:
            worker_line += f" (last heard {age_words(min(heard))})"
    chain_line = (
        f"{totals['chainsEnabled']} enabled, {totals['chainsDisabled']} disabled; "
        f"{totals['chainsHeld']} held, {totals['chainsConnected']} connected, "
        f"{totals['chainsWithoutHolder']} without a holder, {totals['chainsUnhealthy']} unhealthy; "
        f"fallback active for {totals['chainsFallbackActive']}"
    )
    by_id = {row["id"]: row for row in rows}
    worst = [_worst_words(by_id[i]) for i in report["worst"][:WORST_IN_TEXT] if i in by_id]
    more = len(report["worst"]) - len(worst)
    worst_line = ", ".join(worst) + (f" and {more} more" if more > 0 else "") if worst else "none"
    lines = [
        f"table     {report['table']}",
        f"workers   {worker_line}",
        f"chains    {chain_line}",
        f"worst     {worst_line}",
    ]
    if rows:
        header = ("ID", "CHAIN", "STATE", "LAG", "HOLDER", "LAST EVENT", "CHECKPOINT", "FALLBACK")
        cells = [header] + [
            (
                str(row["id"]),
                str(row["chain"]),
                str(row["state"]),
                duration_words(row["lagSeconds"]),
                short.get(str(row["holder"]), "-") if row["holder"] else "-",
                age_words(row["lastEventAgeSeconds"]),
                describe_checkpoint(row["checkpoint"]),
                "active" if row["fallbackActive"] else "inactive",
            )
            for row in rows
        ]
        lines.append("")
        lines += _table(cells)
    else:
        lines += ["", "no subscriptions in the registry: add one with `ohip-relay chains add`"]
    lines += [f"note: {note}" for note in report["notes"]]
    lines += [f"problem: {problem}" for problem in report["problems"]]
    return lines


def render_chain(report: Mapping[str, Any]) -> list[str]:
    """`ohip-relay status --chain ID`: one line per field, as the single-chain status."""
    registry = report["registry"]
    state = str(report["state"])
    if report["stateAgeSeconds"] is not None:
        state += f" (for {duration_words(report['stateAgeSeconds'])})"
    checkpoint = report["checkpoint"]
    written = report["checkpointAgeSeconds"]
    holder = report["holder"]
    lease_owner = report["leaseOwner"]
    if lease_owner is None:
        lease = "free (released, or never taken)"
    elif report["leaseHeld"]:
        lease = f"held by {lease_owner}, {duration_words(report['leaseExpiresInSeconds'])} left"
    else:
        lease = f"expired (last held by {lease_owner})"
    if report["leaseGeneration"] is not None:
        lease += f"; generation {report['leaseGeneration']}"
    if report["handoverTo"]:
        lease += f"; handover to {report['handoverTo']} ({age_words(report['handoverAgeSeconds'])})"
    fallback = (
        ("active since " + _utc(report["fallbackSince"]) if report["fallbackActive"] else "inactive")
        + f"; last tick {age_words(report['fallbackLastTickAgeSeconds'])}"
        + f"; published {report['fallbackPublished']} in all"
    )
    rows = [
        ("subscription", str(report["id"])),
        ("chain", str(report["chain"])),
        ("enabled", "yes" if report["enabled"] else "no"),
        ("state", state),
        ("health", f"{'healthy' if report['healthy'] else 'unhealthy'} ({report['health']})"),
        (
            "holder",
            f"{holder} (heartbeat {age_words(report['holderHeartbeatAgeSeconds'])})" if holder else "nobody",
        ),
        ("lag", duration_words(report["lagSeconds"]) if report["lagSeconds"] is not None else "unknown"),
        ("last event", age_words(report["lastEventAgeSeconds"])),
        (
            "checkpoint",
            describe_checkpoint(checkpoint)
            + (f" (written {age_words(written)})" if checkpoint is not None else ""),
        ),
        ("lease", lease),
        ("fallback", fallback),
        ("gateway", str(registry["gatewayUrl"])),
        ("secret", str(registry["secretArn"] or "-")),
        ("external system", str(registry["externalSystem"] or "-")),
        ("hotels", ", ".join(registry["hotelIds"]) or "the whole external system"),
        ("hotel code", str(registry["hotelCode"] or "every hotel")),
        ("delta", "on" if registry["delta"] else "off"),
        ("enterprise id", str(registry["enterpriseId"] or "-")),
        ("oauth scope", str(registry["oauthScope"] or "-")),
        ("registry", f"version {registry['version']}, changed {_utc(registry['updatedAt'])}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"note: {note}" for note in report["notes"]]
    lines += [f"problem: {problem}" for problem in report["problems"]]
    return lines


def short_worker_ids(workers: Iterable[str], width: int = HOLDER_WIDTH) -> dict[str, str]:
    """Each worker id as the table shows it: whole when it is short, else its shortest prefix of
    at least `width` characters that no other id starts with, and ".."."""
    ids = sorted(set(workers))
    out: dict[str, str] = {}
    for worker in ids:
        if len(worker) <= width + 2:
            out[worker] = worker
            continue
        n = width
        while n < len(worker) and any(other != worker and other.startswith(worker[:n]) for other in ids):
            n += 1
        out[worker] = worker if n >= len(worker) - 2 else worker[:n] + ".."
    return out


def duration_words(seconds: float | None) -> str:
    """A duration as a person reads it: "0.4 s", "12 s", "3 min", "5 h", "2 days"; "-" unknown."""
    if seconds is None or math.isnan(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 9.95:  # one decimal below 10 s ("10.0 s" would be odd)
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 2 * 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


def age_words(seconds: float | None) -> str:
    """How long ago: "just now", "12 s ago", "3 min ago"...; "never" when unknown."""
    if seconds is None or math.isnan(seconds):
        return "never"
    if seconds < 1:
        return "just now"
    if seconds < 10:
        return f"{int(seconds)} s ago"
    return f"{duration_words(seconds)} ago"


def _worst_words(row: Mapping[str, Any]) -> str:
    if row["holder"] is None:
        return f"{row['id']} ({NO_HOLDER})"
    if row["state"] != StreamState.CONNECTED:
        return f"{row['id']} ({row['state']} for {duration_words(row['stateAgeSeconds'])})"
    return f"{row['id']} (lag {duration_words(row['lagSeconds'])})"


def _table(cells: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def _utc(epoch: object) -> str:
    if not isinstance(epoch, int | float) or epoch <= 0:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


# -- the command ----------------------------------------------------------------------------------


def status_command(dynamodb: DynamoDBClient, settings: Settings, *, chain: str | None, as_json: bool) -> int:
    """`ohip-relay status [--chain ID] [--json]` with `RELAY_FLEET=true`: print the report; exit 0,
    or 1 when the registry is empty, the id is not in it, or an item could not be read."""
    table = settings.table_name
    thresholds = HealthThresholds(
        stale_seconds=settings.health_stale_seconds,
        grace_seconds=settings.health_grace_seconds,
        recover_seconds=settings.health_recover_seconds,
    )
    if chain is None:
        reads = read_fleet_status(dynamodb, table)
        report = fleet_report(reads, thresholds)
        print(json.dumps(report) if as_json else "\n".join(render_fleet(report)))
        if not reads.subscriptions:
            print(
                f"ohip-relay: status: the registry in table {table} has no subscriptions: add them with "
                "`ohip-relay chains add`, or check RELAY_TABLE_NAME",
                file=sys.stderr,
            )
            return 1
        return 1 if report["problems"] else 0
    found = read_chain_status(dynamodb, table, chain)
    if found is None:
        print(
            f"ohip-relay: status: no subscription {chain!r} in the registry of table {table}; "
            "`ohip-relay chains list` shows the ids",
            file=sys.stderr,
        )
        return 1
    subscription, reads = found
    detail = chain_report(reads, subscription, thresholds)
    print(json.dumps(detail) if as_json else "\n".join(render_chain(detail)))
    return 1 if detail["problems"] else 0


# -- the reads ------------------------------------------------------------------------------------


def read_fleet_status(
    dynamodb: DynamoDBClient, table: str, *, sleep: Any = time.sleep, clock: Any = time.time
) -> FleetReads:
    """Every subscription of the registry and its state (see the module docstring for the requests)."""
    listing = _registry(lambda: RegistryStore(dynamodb, table, sleep=sleep).list_all())
    fleet = FleetStore(dynamodb, table, sleep=sleep)
    view = fleet.read_fleet()
    ids = [s.id for s in listing.subscriptions]
    leases = fleet.read_leases(ids) if ids else {}
    checkpoints, fallbacks, problems = _state_items(dynamodb, table, ids, sleep)
    return FleetReads(
        table=table,
        now=clock(),
        subscriptions=listing.subscriptions,
        fleet=view,
        leases=leases,
        checkpoints=checkpoints,
        fallbacks=fallbacks,
        problems=tuple(listing.problems) + tuple(problems),
    )


def read_chain_status(
    dynamodb: DynamoDBClient,
    table: str,
    subscription_id: str,
    *,
    sleep: Any = time.sleep,
    clock: Any = time.time,
) -> tuple[Subscription, FleetReads] | None:
    """One subscription and its state; None when the registry has no such id."""
    subscription = _registry(lambda: RegistryStore(dynamodb, table, sleep=sleep).get(subscription_id))
    if subscription is None:
        return None
    fleet = FleetStore(dynamodb, table, sleep=sleep)
    view = fleet.read_fleet()
    leases = fleet.read_leases([subscription.id])
    checkpoints, fallbacks, problems = _state_items(dynamodb, table, [subscription.id], sleep)
    reads = FleetReads(
        table=table,
        now=clock(),
        subscriptions=(subscription,),
        fleet=view,
        leases=leases,
        checkpoints=checkpoints,
        fallbacks=fallbacks,
        problems=tuple(problems),
    )
    return subscription, reads


def _registry(call: Any) -> Any:
    """A registry read; its failure as a `StateStoreError`, which the command line explains (access
    denied, no such table...) as it does for the state items."""
    try:
        return call()
    except RegistryError as exc:
        raise StateStoreError(
            str(exc), operation=exc.operation, code=exc.code, retryable=exc.retryable
        ) from exc


def _state_items(
    dynamodb: DynamoDBClient, table: str, ids: Sequence[str], sleep: Any
) -> tuple[dict[str, Checkpoint], dict[str, FallbackRecord], list[str]]:
    """The checkpoint and fallback record of each id: one `batch_get_items` (eventually consistent);
    an item that cannot be read is a problem line, not an error."""
    keys = [f"{prefix}{i}" for i in ids for prefix in (CHECKPOINT_PREFIX, FALLBACK_PREFIX)]

    def failed(exc: ClientError | BotoCoreError, chunk: Sequence[str]) -> Exception:
        return store_error("ReadStatus", table, exc, subject=f"{len(chunk)} state items")

    def throttled(left: int, chunk: Sequence[str]) -> Exception:
        return StateStoreError(
            f"DynamoDB ReadStatus on table {table} failed ({left} keys left unprocessed after "
            f"{BATCH_GET_ROUNDS} requests: throttled)",
            operation="ReadStatus",
            code="UnprocessedKeys",
            retryable=True,
        )

    items = batch_get_items(
        dynamodb, table, keys, consistent=False, sleep=sleep, failed=failed, throttled=throttled
    )
    checkpoints: dict[str, Checkpoint] = {}
    fallbacks: dict[str, FallbackRecord] = {}
    problems: list[str] = []
    for subscription_id in ids:
        for prefix in (CHECKPOINT_PREFIX, FALLBACK_PREFIX):
            key = f"{prefix}{subscription_id}"
            try:
                if prefix == CHECKPOINT_PREFIX:
                    if (checkpoint := decode_checkpoint(items.get(key))) is not None:
                        checkpoints[subscription_id] = checkpoint
                elif (record := decode_fallback(items.get(key))) is not None:
                    fallbacks[subscription_id] = record
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                problems.append(f"{key} in table {table} is malformed ({exc}); correct or delete that item")
    return checkpoints, fallbacks, problems
