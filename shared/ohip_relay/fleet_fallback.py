"""The poll fallback for many chains (fleet mode, `RELAY_FLEET=true`): one scheduled invocation
judges every enabled chain's health from batched reads and polls only the unhealthy ones, in
parallel and bounded per invocation (docs/poll-fallback.md, "Many chains").

One tick, `FleetFallback.tick(remaining, shard)`:

1. **Reads**, a few requests whatever the number of chains, never a Scan and never a GetItem per
   chain: the registry (`RegistryStore.list_all`: its index, then the entries by BatchGetItem), the
   fleet (`FleetStore.read_fleet`: the fleet index, then the worker items by BatchGetItem) and every
   enabled chain's `fallback#<id>` (`state.batch_get_items`, 100 keys a request, strongly
   consistent as today's GetItem). If one of them fails nothing is polled: without the worker
   items every chain would look down, without the records the hysteresis is unknown. OHIP keeps
   the events queued for the next tick.
2. **Judge**: `fleet_health.judge_fleet` gives every chain's verdict and this shard's work: the
   chains to poll as active (most urgent first, at most `max_chains`) and the healthy ones to drain.
3. **Poll**: each of them runs today's per-chain tick (`PollFallback.tick` with the verdict given:
   spill re-delivery, drain, publish, seen-set record, mark, the backlog-drain rule, the hysteresis
   record), `concurrency` chains at a time on a thread pool, the active ones first. Each has its own
   settings (its subscription's gateway, chain, external system and hotels, with the credentials of
   its secret), its own `StateStore(dynamodb, table, id)`, seen-set scope and spill prefix
   (`spill/<id>/`). A chain is not started once less than the safety margin of the invocation is
   left (it is deferred to the next tick); a started one stops requesting pages then, as today.
4. **Report**: one summary line (`FleetReport.summary()`), the fleet-wide gauges `ChainsUnhealthy`,
   `ChainsWithoutHolder` and `ChainsFallbackActive`, and today's poll counters summed over the
   chains. Per chain only activation, deactivation and errors are logged, each naming the
   subscription.

Shared by the chains of one invocation: the AWS clients (thread-safe), the SQS sender, one HTTP
client, one OAuth token provider per OAuth client (one token request per environment and tick), and
each secret, read once per ARN: a secret that cannot be read fails the chains that name it, and only
them. `FallbackError` (events neither sent nor spilled) of one chain does not stop the others; the
report lists it in `at_risk` and the entry point fails the invocation after the summary.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .auth import OAuthParams, SyncTokenProvider
from .config import ConfigError, Settings
from .fallback import (
    POLL_BOTO_CONFIG,
    FallbackError,
    FallbackOptions,
    TickReport,
    batch_sender,
    build_fallback,
    health_thresholds,
)
from .fleet_health import FleetPlan, FleetPollOptions, Shard, judge_fleet
from .fleet_state import FleetStore
from .health import FallbackDecision
from .registry import RegistryError, RegistryStore, Subscription, settings_for_subscription
from .state import (
    BATCH_GET_ROUNDS,
    FALLBACK_PREFIX,
    FallbackRecord,
    StateStoreError,
    batch_get_items,
    decode_fallback,
    store_error,
)
from .telemetry import Metric, Telemetry

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("ohip_relay.fleet_fallback")

#: The counts of `TickReport` the fleet's summary adds up over its chains.
_COUNTS = ("fetched", "published", "discarded", "spilled", "malformed", "duplicates", "redelivered")


@dataclass(frozen=True)
class FleetOptions:
    concurrency: int = 4  # chains ticked at once (RELAY_POLL_CONCURRENCY)
    plan: FleetPollOptions = field(default_factory=FleetPollOptions)
    fallback: FallbackOptions = field(default_factory=FallbackOptions)  # each chain's tick

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


@dataclass
class ChainResult:
    """What happened to one chain this invocation picked."""

    subscription_id: str
    publish: bool  # polled as active (True) or drained and discarded (False)
    report: TickReport | None = None  # None: not ticked
    deferred: bool = False  # not started: less than the safety margin was left
    error: str = ""  # why it could not be ticked at all (its secret, say): one line
    at_risk: str = ""  # FallbackError: polled events could be neither sent nor spilled


@dataclass
class FleetReport:
    """What one invocation did (counts and subscription ids only: safe to log)."""

    shard: Shard
    judged: int = 0  # enabled chains, every shard
    unhealthy: int = 0
    without_holder: int = 0
    fallback_active: int = 0
    chains: dict[str, ChainResult] = field(default_factory=dict)
    over_limit: list[str] = field(default_factory=list)  # active chains past `max_chains`
    errors: list[str] = field(default_factory=list)  # the invocation's own (reads): one line each
    ended: str = ""  # "" when the plan ran; "registry-error" or "state-error" when nothing was judged

    @property
    def polled(self) -> int:
        return sum(1 for r in self.chains.values() if r.publish and r.report is not None)

    @property
    def drained(self) -> int:
        return sum(1 for r in self.chains.values() if not r.publish and r.report is not None)

    @property
    def deferred(self) -> list[str]:
        """Active chains this invocation did not poll (past `max_chains`, or no time left)."""
        late = [r.subscription_id for r in self.chains.values() if r.publish and r.deferred]
        return sorted(self.over_limit + late)

    @property
    def at_risk(self) -> list[str]:
        return [f"{r.subscription_id}: {r.at_risk}" for r in self.chains.values() if r.at_risk]

    @property
    def error_count(self) -> int:
        per_chain = sum(
            (len(r.report.errors) if r.report is not None else 0) + int(bool(r.error or r.at_risk))
            for r in self.chains.values()
        )
        return len(self.errors) + per_chain

    def total(self, name: str) -> int:
        """A `TickReport` count summed over the chains ticked."""
        return sum(int(getattr(r.report, name)) for r in self.chains.values() if r.report is not None)

    def fields(self) -> dict[str, int | str]:
        """The summary as fields: the Lambda's structured log and its return value."""
        out: dict[str, int | str] = {
            "shard": self.shard.index,
            "shards": self.shard.count,
            "judged": self.judged,
            "unhealthy": self.unhealthy,
            "withoutHolder": self.without_holder,
            "fallbackActive": self.fallback_active,
            "polled": self.polled,
            "drained": self.drained,
            "deferred": len(self.deferred),
        }
        out.update({name: self.total(name) for name in _COUNTS})
        out["errors"] = self.error_count
        out["ended"] = self.ended or "done"
        return out

    def summary(self) -> str:
        counts = ", ".join(f"{name} {self.total(name)}" for name in _COUNTS)
        text = (
            f"fleet poll, {self.shard}: judged {self.judged} chains, unhealthy {self.unhealthy}, "
            f"without holder {self.without_holder}, fallback active {self.fallback_active}; "
            f"polled {self.polled}, drained {self.drained}, deferred {len(self.deferred)}; {counts}; "
            f"errors {self.error_count}"
        )
        if self.ended:
            text += f"; ended: {self.ended}"
        return text


class _SecretUnreadable(Exception):
    """A secret that could not be read (cached: read once per invocation and ARN)."""


class FleetFallback:
    """The fleet's poll fallback: `tick(remaining, shard)` runs one invocation (see the module
    docstring). One instance serves one invocation: secrets and tokens are read afresh by the next."""

    def __init__(
        self,
        settings: Settings,
        telemetry: Telemetry,
        *,
        s3: Any,
        dynamodb: Any,
        sqs: Any,
        http: httpx.Client,
        read_secret: Callable[[Settings], Settings] | None = None,
        options: FleetOptions | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not settings.table_name or not settings.bucket_name:
            raise ValueError("the settings need the state table and the bucket")
        self.settings = settings
        self.telemetry = telemetry
        self.options = options or FleetOptions(fallback=FallbackOptions(page_limit=settings.poll_page_limit))
        self.clock = clock
        self._s3 = s3
        self._ddb = dynamodb
        self._http = http
        self._sleep = sleep
        self._sender = batch_sender(settings, sqs, s3, self.options.fallback)
        self._registry = RegistryStore(dynamodb, settings.table_name, sleep=sleep)
        self._fleet = FleetStore(dynamodb, settings.table_name, sleep=sleep)
        self._thresholds = health_thresholds(settings)
        if read_secret is None:
            from .runtime import resolve_secrets

            read_secret = resolve_secrets
        self._read_secret = read_secret
        self._lock = threading.Lock()
        self._secret_locks: dict[str, threading.Lock] = {}
        self._secrets: dict[str, Settings | _SecretUnreadable] = {}
        self._tokens: dict[OAuthParams, SyncTokenProvider] = {}

    # -- the tick -------------------------------------------------------------------------------

    def tick(self, remaining: Callable[[], float], shard: Shard | None = None) -> FleetReport:
        shard = shard or Shard()
        report = FleetReport(shard)
        plan, enabled = self._judge(report, shard)
        if plan is None:
            return report
        report.judged = len(plan.verdicts)
        report.unhealthy = len(plan.unhealthy)
        report.without_holder = len(plan.without_holder)
        report.fallback_active = len(plan.fallback_active)
        report.over_limit = list(plan.deferred)
        self.telemetry.gauge(Metric.CHAINS_UNHEALTHY, float(report.unhealthy))
        self.telemetry.gauge(Metric.CHAINS_WITHOUT_HOLDER, float(report.without_holder))
        self.telemetry.gauge(Metric.CHAINS_FALLBACK_ACTIVE, float(report.fallback_active))
        if plan.deferred:
            log.warning(
                "%d chain(s) of %s to poll wait for the next tick (at most %d are polled per "
                "invocation): add shards (PollShards) if this persists",
                len(plan.deferred),
                shard,
                self.options.plan.max_chains,
            )
        jobs = [(chain, True) for chain in plan.poll] + [(chain, False) for chain in plan.drain]
        if not jobs:
            return report
        workers = min(self.options.concurrency, len(jobs))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poll-chain") as pool:
            futures = [
                pool.submit(
                    self._run_chain, enabled[chain], plan.verdicts[chain].decision, publish, remaining
                )
                for chain, publish in jobs
            ]
            for future in futures:
                result = future.result()
                report.chains[result.subscription_id] = result
        return report

    def _judge(self, report: FleetReport, shard: Shard) -> tuple[FleetPlan | None, dict[str, Subscription]]:
        now = self.clock()
        try:
            listing = self._registry.list_all()
        except RegistryError as exc:
            self._error(report, f"cannot list the registry ({exc})")
            report.ended = "registry-error"
            return None, {}
        for problem in listing.problems:
            log.warning("registry: %s", problem)
        enabled = {s.id: s for s in listing.subscriptions if s.enabled}
        try:
            view = self._fleet.read_fleet()
            records = self.read_records(sorted(enabled))
            leases = self._fleet.read_leases(sorted(enabled))
        except StateStoreError as exc:
            # Without the worker items every chain would look down (a flood of polls and
            # duplicates); without the records the hysteresis is unknown. Poll nothing.
            self._error(report, f"state table unreadable ({exc})")
            report.ended = "state-error"
            return None, enabled
        for problem in view.problems:
            log.warning("fleet: %s", problem)
        plan = judge_fleet(
            enabled.values(),
            view.workers,
            records,
            now,
            self._thresholds,
            shard=shard,
            options=self.options.plan,
            leases=leases,
        )
        return plan, enabled

    def read_records(self, subscription_ids: Sequence[str]) -> dict[str, FallbackRecord]:
        """The `fallback#<id>` records that exist, by id: BatchGetItem, 100 keys a request. A record
        that cannot be read counts as none (logged): its chain is judged as never ticked."""
        table = self.settings.table_name

        def failed(exc: ClientError | BotoCoreError, chunk: Sequence[str]) -> Exception:
            return store_error("ReadFallbackRecords", table, exc, subject=f"{len(chunk)} fallback records")

        def throttled(left: int, chunk: Sequence[str]) -> Exception:
            return StateStoreError(
                f"DynamoDB ReadFallbackRecords on table {table} failed ({left} of {len(chunk)} keys left "
                f"unprocessed after {BATCH_GET_ROUNDS} requests: throttled)",
                operation="ReadFallbackRecords",
                code="UnprocessedKeys",
                retryable=True,
            )

        items = batch_get_items(
            self._ddb,
            table,
            [f"{FALLBACK_PREFIX}{i}" for i in subscription_ids],
            consistent=True,
            sleep=self._sleep,
            failed=failed,
            throttled=throttled,
        )
        records: dict[str, FallbackRecord] = {}
        for key, item in items.items():
            try:
                record = decode_fallback(item)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s in table %s is malformed (%s): judged as never ticked", key, table, exc)
                continue
            if record is not None:
                records[key.removeprefix(FALLBACK_PREFIX)] = record
        return records

    # -- one chain (on the pool) -------------------------------------------------------------------

    def _run_chain(
        self,
        subscription: Subscription,
        decision: FallbackDecision,
        publish: bool,
        remaining: Callable[[], float],
    ) -> ChainResult:
        result = ChainResult(subscription.id, publish)
        if remaining() < self.options.fallback.safety_margin_s:
            result.deferred = True
            return result
        try:
            settings = self.settings_for(subscription)
            fallback = build_fallback(
                settings,
                self.telemetry,
                s3=self._s3,
                dynamodb=self._ddb,
                sender=self._sender,
                http=self._http,
                tokens=self._tokens_for(settings),
                options=self.options.fallback,
                clock=self.clock,
                subscription_id=subscription.id,
                in_fleet=True,
            )
            result.report = fallback.tick(remaining, decision=decision)
        except ConfigError as exc:
            result.error = str(exc)
            self._chain_error(subscription.id, result.error)
        except FallbackError as exc:
            result.at_risk = str(exc)  # the tick logged the event ids and counted the error
        except Exception as exc:  # a defect must not stop the other chains; the type says enough
            result.error = f"the tick failed ({type(exc).__name__})"
            self._chain_error(subscription.id, result.error)
            log.debug("[%s] tick failure", subscription.id, exc_info=True)
        return result

    def settings_for(self, subscription: Subscription) -> Settings:
        """The settings of one subscription: the deployment's, with the subscription's OHIP fields
        and the credentials of its secret (read once per invocation and ARN)."""
        base = settings_for_subscription(self.settings, subscription)
        credentials = self._credentials(subscription, base)
        return dataclasses.replace(
            base,
            client_id=credentials.client_id,
            client_secret=credentials.client_secret,
            app_key=credentials.app_key,
        )

    def _credentials(self, subscription: Subscription, base: Settings) -> Settings:
        arn = subscription.secret_arn
        if not arn:
            raise ConfigError(f"subscription {subscription.id!r}: no secretArn in its registry entry")
        with self._lock:
            lock = self._secret_locks.setdefault(arn, threading.Lock())
        with lock:
            cached = self._secrets.get(arn)
            if cached is None:
                try:
                    cached = self._read_secret(base)
                except ConfigError as exc:
                    cached = _SecretUnreadable(str(exc).removeprefix("OHIP_SECRET_ARN: "))
                self._secrets[arn] = cached
        if isinstance(cached, _SecretUnreadable):
            raise ConfigError(f"subscription {subscription.id!r}: secret {arn}: {cached}")
        return cached

    def _tokens_for(self, settings: Settings) -> SyncTokenProvider:
        params = OAuthParams.from_settings(settings)
        with self._lock:
            tokens = self._tokens.get(params)
            if tokens is None:
                tokens = SyncTokenProvider(params, self._http, clock=time.time)
                self._tokens[params] = tokens
        return tokens

    def _error(self, report: FleetReport, text: str) -> None:
        report.errors.append(text)
        self.telemetry.count(Metric.POLL_ERRORS)
        log.error("fleet poll: %s", text)

    def _chain_error(self, subscription_id: str, text: str) -> None:
        self.telemetry.count(Metric.POLL_ERRORS)
        log.error("[%s] poll tick: %s", subscription_id, text, extra={"subscription": subscription_id})


# ---------------------------------------------------------------------------------------------
# Wiring


@contextmanager
def open_fleet_fallback(
    settings: Settings,
    telemetry: Telemetry,
    *,
    options: FleetOptions | None = None,
    clock: Callable[[], float] = time.time,
    http: httpx.Client | None = None,
    read_secret: Callable[[Settings], Settings] | None = None,
) -> Iterator[FleetFallback]:
    """The fleet's fallback wired from settings (`RELAY_FLEET=true`, Need.AWS): the registry, the
    worker items and the records in the state table, the chains' credentials in their secrets."""
    import httpx

    if not settings.fleet:
        raise ConfigError("RELAY_FLEET: the poll fallback for many chains needs RELAY_FLEET=true")
    if not settings.bucket_name:
        raise ConfigError("RELAY_BUCKET_NAME: missing (the poll fallback parks events there when SQS fails)")
    opts = options or FleetOptions(
        concurrency=settings.poll_concurrency,
        fallback=FallbackOptions(page_limit=settings.poll_page_limit),
    )
    s3, dynamodb, sqs = _fleet_clients(settings, opts.concurrency)
    client = http or httpx.Client(
        timeout=httpx.Timeout(opts.fallback.request_timeout_s),
        limits=httpx.Limits(max_connections=max(10, 2 * opts.concurrency)),
        trust_env=False,
    )
    try:
        yield FleetFallback(
            settings,
            telemetry,
            s3=s3,
            dynamodb=dynamodb,
            sqs=sqs,
            http=client,
            read_secret=read_secret,
            options=opts,
            clock=clock,
        )
    finally:
        if http is None:
            client.close()


@functools.lru_cache(maxsize=4)
def _fleet_clients(settings: Settings, concurrency: int) -> tuple[Any, Any, Any]:
    """S3, DynamoDB and SQS clients for `concurrency` chains at once (each chain's seen-set record
    runs 8 UpdateItems in parallel), created once per settings: warm invocations reuse them."""
    from .runtime import aws_client

    config = POLL_BOTO_CONFIG.merge(Config(max_pool_connections=max(20, 10 * concurrency)))
    return (
        aws_client(settings, "s3", config=config),
        aws_client(settings, "dynamodb", config=config),
        aws_client(settings, "sqs", config=config),
    )
