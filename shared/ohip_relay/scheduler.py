"""The fleet: one task runs many chain sessions and shares the chains' leases with the other tasks.

`Scheduler` is the task's worker, as the Kinesis Client Library's `Scheduler` is: it reads the chain
registry, balances leases with the other tasks (`balance.plan`, written by `fleet_state.FleetStore`),
renews every lease it holds in one batch, writes its worker item (the heartbeat of all its chains)
and starts and stops one chain session per chain it holds. A chain session is the single-chain
`StreamConsumer` (stream.py) in its managed shape (`ManagedLease`), as KCL's `ShardConsumer`: it
runs the protocol, the socket, the watermark and the checkpoint of one chain, and nothing per task.

Per task, shared by the sessions: the SQS publisher (`ChainPublisher` routes each acknowledgement
back to its session), the DynamoDB client and a thread pool for the sessions' calls, one OAuth
token provider per OHIP environment (client id), the S3 client, the seen-set and the metrics.

Timing (docs/fleet-design.md): every `renew_interval` I (10 s) one renewal batch for all held
leases, then the worker item; a session whose lease has not been confirmed for `D - I` (20 s) is
closed (`StreamConsumer.lose_lease`), whatever the batch is doing, by a guard that looks twice a
second; every `pass_interval` P (10 s) one balancing pass. On SIGTERM no chain is taken any more,
every session is stopped gracefully (complete, drain, flush, checkpoint) and its lease released
with when `complete` was sent, so the other tasks take the chains at their next pass; the task
then leaves the fleet index.

Logs name the chain: every line of a session carries its subscription id (`logcontext`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
from botocore.config import Config

from . import logcontext
from .auth import AsyncTokenProvider, OAuthParams
from .balance import (
    BalanceConfig,
    ChainSummary,
    LeaseView,
    LeaseWatch,
    Plan,
    plan,
    worker_items,
    worst_chains,
)
from .config import ConfigError, Settings, SqsTransport
from .errors import StartupError, one_line
from .fleet_state import DEFAULT_RENEW_WORKERS, Acquired, FleetStore, Renewal
from .publish import (
    OutboundMessage,
    PublisherConfig,
    PublishError,
    PublisherStats,
    PublishFailure,
    SqsPublisher,
)
from .registry import RegistryError, RegistryListing, RegistryStore, Subscription, settings_for_subscription
from .seen import SeenSet
from .sqs_http import SqsHttpTransport
from .state import StateStore, StateStoreError, StreamState
from .stream import (
    PUBLISH_CONNECT_TIMEOUT,
    PUBLISH_READ_TIMEOUT,
    PUBLISHER_BOTO_CONFIG,
    STATE_BOTO_CONFIG,
    ManagedLease,
    StreamConsumer,
    StreamOptions,
    options_for,
    stop_on_signals,
    wait_within,
)
from .telemetry import Metric, Telemetry

log = logging.getLogger("ohip_relay.scheduler")

_T = TypeVar("_T")

# A worker item outlives its last write by this long, then DynamoDB's TTL removes it: far above
# `forget_after` (the others forget a silent worker after 10 minutes), so only leftovers go this way.
WORKER_ITEM_TTL = 86400.0

# After the stop, how long leaving the fleet index may take (one DynamoDB write, normally ms).
LEAVE_TIMEOUT = 10.0

# Threads for the sessions' DynamoDB and S3 calls (checkpoints, fallback marks, seen-set, parking).
SESSION_THREADS = 32
# One connection per thread that may call DynamoDB at once (sessions, renewal batch, pass), so
# that no call opens a connection of its own and throws it away (botocore's default pool is 10).
FLEET_DYNAMODB_POOL = Config(max_pool_connections=SESSION_THREADS + DEFAULT_RENEW_WORKERS + 4)


@dataclass(frozen=True)
class SchedulerOptions:
    lease_seconds: float = 30.0  # D
    renew_interval: float = 10.0  # I: one renewal batch, then the worker item
    pass_interval: float = 10.0  # P: one balancing pass
    # The fleet gauges are one value per task per minute: the dashboard sums them over a minute
    # across tasks, so a task must write each once a minute, not every 10 s (counters sum either way).
    metrics_interval: float = 60.0
    summary_interval: float = 60.0  # one line on the fleet's state (with the worst chains)
    clock_allowance: float = 1.0  # added to the 10 s after another task's `complete`
    retake_after_failure: float = 60.0  # a session that ended on an error: not taken again here before
    guard_interval: float = 0.5
    release_attempts: int = 3
    # Touched after every renewal tick: the container health check's sign that the event loop
    # runs (template.yaml; a hung loop renews nothing and its chains move, but ECS should replace it).
    alive_file: str | None = None
    balance: BalanceConfig = field(default_factory=BalanceConfig)

    def __post_init__(self) -> None:
        if self.renew_interval * 2 >= self.lease_seconds:
            raise ValueError("renew_interval must be under half of lease_seconds")
        if self.balance.lease_seconds != self.lease_seconds:
            raise ValueError("balance.lease_seconds must equal lease_seconds")


#: Where `ohip-relay stream` in fleet mode shows it is alive (the task's health check reads its age).
ALIVE_FILE = "/tmp/ohip-relay-fleet.alive"  # noqa: S108 - a marker with no content, in the task's own /tmp


def options_from(settings: Settings) -> SchedulerOptions:
    lease = settings.lease_seconds
    return SchedulerOptions(
        alive_file=ALIVE_FILE,
        lease_seconds=lease,
        renew_interval=lease / 3,
        pass_interval=lease / 3,
        balance=BalanceConfig(lease_seconds=lease, worker_timeout=2 * lease / 3),
    )


#: A fleet session writes its checkpoint at most this often (the single chain: every second). With
#: many busy chains in one task, one conditional write per chain per second was the largest cost
#: per event after the events themselves (bench/fleet.py); a crash replays up to this much more
#: (duplicates, never loss: the checkpoint only covers what SQS acknowledged).
FLEET_CHECKPOINT_INTERVAL = 5.0


def fleet_stream_options(settings: Settings) -> StreamOptions:
    """The chain sessions' options: the single chain's, with `FLEET_CHECKPOINT_INTERVAL`."""
    return replace(options_for(settings), checkpoint_interval=FLEET_CHECKPOINT_INTERVAL)


def new_worker_id() -> str:
    """Host, process and a start nonce: never reused, so a restarted process cannot adopt the
    leases of the one before it (docs/fleet-design.md, section 1)."""
    host = socket.gethostname().replace("#", "-") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


# -- what the sessions share -----------------------------------------------------------------------


class ChainPublisher:
    """One session's view of the task's shared `SqsPublisher`: what it submitted and SQS has not
    acknowledged yet, and a `flush` that waits for those only (a handover drains one chain, not the
    task). The shared publisher's acknowledgements come back through `PublisherRouter`."""

    def __init__(self, shared: SqsPublisher, key: int) -> None:
        self._shared = shared
        self.key = key
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.on_ack: Callable[[Any], None] = lambda _token: None
        self.on_failure: Callable[[PublishFailure], None] = lambda _failure: None

    @property
    def has_room(self) -> bool:
        return self._shared.has_room

    @property
    def buffered(self) -> int:
        return self._outstanding

    @property
    def stats(self) -> PublisherStats:
        return self._shared.stats

    def take_latency_samples(self) -> list[float]:
        return []  # the scheduler reports the shared publisher's

    async def submit(self, message: OutboundMessage) -> None:
        self._outstanding += 1
        self._idle.clear()
        try:
            await self._shared.submit(replace(message, ack_token=(self.key, message.ack_token)))
        except BaseException:
            # Not handed on (cancelled while waiting for room, or refused before buffering).
            self.settled()
            raise

    async def flush(self) -> None:
        await self._idle.wait()

    def settled(self) -> None:
        self._outstanding = max(0, self._outstanding - 1)
        if not self._outstanding:
            self._idle.set()


class PublisherRouter:
    """Routes the shared publisher's callbacks to the session whose message it was."""

    def __init__(self) -> None:
        self._routes: dict[int, ChainPublisher] = {}
        self._keys = itertools.count(1)

    def new(self, shared: SqsPublisher) -> ChainPublisher:
        publisher = ChainPublisher(shared, next(self._keys))
        self._routes[publisher.key] = publisher
        return publisher

    def drop(self, publisher: ChainPublisher) -> None:
        self._routes.pop(publisher.key, None)

    def on_ack(self, token: Any) -> None:
        key, offset = token
        publisher = self._routes.get(key)
        if publisher is not None:  # None: the session ended (its flush timed out); replayed
            publisher.settled()
            publisher.on_ack(offset)

    def on_failure(self, failure: PublishFailure) -> None:
        key, offset = failure.ack_token
        publisher = self._routes.get(key)
        if publisher is not None:
            publisher.settled()
            publisher.on_failure(replace(failure, ack_token=offset))


class ChainTelemetry(Telemetry):
    """A session's metrics in a fleet: counts and samples go to the task's shared `Telemetry`
    (totals per task, no chain dimension: docs/fleet-design.md, section 7); gauges are one chain's
    value and are dropped (the scheduler writes the task's: chains running, connected, worst lag)."""

    def __init__(self, shared: Telemetry) -> None:  # no super().__init__: nothing of its own
        self._shared = shared

    def count(self, metric: Metric, value: float = 1.0, *, close_code: str = "") -> None:
        self._shared.count(metric, value, close_code=close_code)

    def gauge(self, metric: Metric, value: float) -> None:
        return None

    def observe(self, metric: Metric, value: float) -> None:
        self._shared.observe(metric, value)

    def totals(self) -> dict[str, float]:
        return self._shared.totals()

    def flush(self) -> None:
        return None


@dataclass(eq=False)
class _Held:
    """A chain this task holds the lease of, from the acquire until the release."""

    subscription: Subscription
    generation: int
    confirmed_at: float  # wall clock: the `now` of the last acquire or renewal that answered
    session: StreamConsumer | None = None
    publisher: ChainPublisher | None = None
    task: asyncio.Task[None] | None = None
    leaving: str | None = None  # "handover" or "stop" once asked to go
    handover_to: str | None = None
    state: str = StreamState.CONNECTING.value
    since: float = field(default_factory=time.time)

    def summary(self) -> ChainSummary:
        session = self.session
        if session is None:
            return ChainSummary(state=self.state, since=self.since)
        return ChainSummary(
            state=self.state,
            since=self.since,
            last_event_at=session.last_event_at,
            checkpoint=session.checkpointed,
            lag_seconds=session.lag_seconds,
        )


@dataclass
class FleetParts:
    """What the scheduler uses from outside: the stores, the shared publisher and clients."""

    fleet: FleetStore
    registry: RegistryStore
    publisher: SqsPublisher
    router: PublisherRouter
    dynamodb: Any
    http: httpx.AsyncClient
    s3: Any = None
    read_secret: Callable[[Settings], Settings] | None = None  # settings with the secret's values


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        parts: FleetParts,
        *,
        options: SchedulerOptions | None = None,
        stream_options: StreamOptions | None = None,
        worker_id: str | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.parts = parts
        self.options = options or options_from(settings)
        self.stream_options = stream_options or fleet_stream_options(settings)
        self.me = worker_id or new_worker_id()
        self.telemetry = telemetry or Telemetry(service="stream", emit=settings.emit_metrics)
        self.watch = LeaseWatch()
        self.held: dict[str, _Held] = {}
        self.last_plan: Plan | None = None
        self.exit_status = 0
        self._stop = asyncio.Event()
        self._halted = False  # the periodic loops stop (set once every session has ended)
        self._started_at = time.time()
        self._threads = ThreadPoolExecutor(max_workers=SESSION_THREADS, thread_name_prefix="fleet-session")
        # The scheduler's own calls (renewal batch, worker item, pass reads) never queue behind
        # the sessions': a renewal that waits is a lease given up for nothing.
        self._renewer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-renew")
        self._control = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fleet-pass")
        self._renewing: asyncio.Future[dict[str, Renewal]] | None = None
        self._renew_trouble = False
        self._listing: RegistryListing | None = None
        self._cooldown: dict[str, float] = {}  # chain -> monotonic time before which it is not taken
        self._tokens: dict[tuple[str, ...], AsyncTokenProvider] = {}
        self._credentials: dict[str, Settings] = {}  # secret ARN -> settings with its values
        self._secret_problems: dict[str, str] = {}
        self._retried_reported = 0

    # -- public -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stop requested: stopping %d chain sessions gracefully", len(self.held))
        self._stop.set()

    def summaries(self) -> dict[str, ChainSummary]:
        self._note_states(time.time())
        return {chain: held.summary() for chain, held in self.held.items()}

    async def run(self) -> int:
        log.info("worker %s joins the fleet in table %s", self.me, self.parts.fleet.table_name)
        await self._write_worker()
        await self._control_call(self.parts.fleet.join, self.me, time.time())
        loops = [
            asyncio.create_task(self._periodic(self.options.renew_interval, self._renew_tick), name="renew"),
            asyncio.create_task(self._periodic(self.options.guard_interval, self._guard), name="guard"),
            asyncio.create_task(
                self._periodic(self.options.metrics_interval, self._flush_metrics), name="metrics"
            ),
            asyncio.create_task(
                self._periodic(self.options.summary_interval, self._log_summary), name="summary"
            ),
        ]
        try:
            while not self._stop.is_set():
                try:
                    await self._pass()
                except (StateStoreError, RegistryError) as exc:
                    # DynamoDB throttling or unreachable, a registry written while it was read:
                    # the next pass tries again. A missing table or no permission ends the task.
                    if not exc.retryable:
                        raise
                    log.warning("balancing pass skipped: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.options.pass_interval)
        except BaseException:
            self.exit_status = self.exit_status or 1
            log.error("the fleet scheduler stops on an error; stopping its chain sessions")
            log.debug("the error in full", exc_info=True)
            raise
        finally:
            self._stop.set()
            await self._stop_all()
            self._halted = True  # the loops end at their next turn even if a cancel were lost
            for task in loops:
                task.cancel()
            # Bounded: the exit must not hang on a loop (the leases are released by now).
            await asyncio.wait(
                loops, timeout=max(self.options.renew_interval, self.options.guard_interval) + 5.0
            )
            await self._leave()
            self._threads.shutdown(wait=False)
            self._renewer.shutdown(wait=False)
            self._control.shutdown(wait=False)
        return self.exit_status

    # -- the balancing pass -------------------------------------------------------------------

    async def _pass(self) -> None:
        listing = await self._registry()
        enabled = {s.id: s for s in listing.subscriptions if s.enabled}
        view = await self._control_call(self.parts.fleet.read_fleet)
        for problem in view.problems:
            log.warning("%s", problem)
        wanted = sorted(set(enabled) | set(self.held))
        raw = await self._control_call(self.parts.fleet.read_leases, wanted)
        now = time.time()
        leases = self.watch.observe(raw, time.monotonic())
        beats = {worker: record.heartbeat_at for worker, record in view.workers.items()}
        for missing in view.missing:
            beats.setdefault(missing, 0.0)  # a member without an item: silent, to be forgotten
        beats[self.me] = now
        workers = self.watch.observe_workers(beats, now)
        p = plan(
            enabled=enabled,
            leases=leases,
            workers=workers,
            me=self.me,
            now=now,
            running=self.held,
            draining={chain for chain, held in self.held.items() if held.leaving},
            config=self.options.balance,
        )
        self.last_plan = p
        if self._stop.is_set():
            return
        for chain in p.stop:
            self._leave_chain(chain, "stop", None, "it is disabled or removed in the registry")
        for handover in p.release:
            await self._hand_over(handover.chain, handover.to, leases.get(handover.chain))
        for chain in p.decline:
            lease = leases.get(chain)
            if lease is not None and lease.handover_to:
                await self._control_call(self.parts.fleet.decline, chain, self.me, lease.handover_to)
        if p.request_handover is not None:
            request = p.request_handover
            asked = await self._control_call(
                self.parts.fleet.request_handover,
                request.chain,
                request.holder,
                self.me,
                time.time(),
                self.options.balance.handover_timeout,
            )
            if asked:
                log.info("asked worker %s to hand chain %s over (balancing)", request.holder, request.chain)
        if self._renew_trouble:
            log.warning("no chain taken this pass: the last lease renewal batch had failures")
        else:
            await self._take(p, enabled, raw)
        for worker in p.forget:
            seen = beats.get(worker)
            forgot = await self._control_call(
                self.parts.fleet.forget_worker, worker, time.time(), heartbeat_at=seen or None
            )
            if forgot:
                log.info("forgot worker %s: silent for %.0fs", worker, self.options.balance.forget_after)

    async def _registry(self) -> RegistryListing:
        revision = await self._control_call(self.parts.registry.revision)
        if self._listing is None or self._listing.revision != revision:
            listing = await self._control_call(self.parts.registry.list_all)
            for problem in listing.problems:
                log.warning("registry: %s", problem)
            if self._listing is not None:
                log.info(
                    "registry revision %d: %d subscriptions, %d enabled",
                    listing.revision,
                    len(listing.subscriptions),
                    sum(1 for s in listing.subscriptions if s.enabled),
                )
            self._listing = listing
        return self._listing

    async def _take(self, p: Plan, enabled: Mapping[str, Subscription], raw: Mapping[str, LeaseView]) -> None:
        candidates = list(p.take)
        spares = list(p.spare)
        wanted = len(candidates)
        taken = 0
        mono = time.monotonic()
        while candidates and taken < wanted and not self._stop.is_set():
            chain = candidates.pop(0)
            if chain in self.held or self._cooldown.get(chain, 0.0) > mono:
                continue
            subscription = enabled.get(chain)
            if subscription is None:
                continue
            acquired = await self._control_call(
                self.parts.fleet.acquire,
                chain,
                self.me,
                time.time(),
                self.options.lease_seconds,
                raw.get(chain),
            )
            if acquired is None:
                if spares:
                    candidates.append(spares.pop(0))  # lost to a faster worker: try the next one
                continue
            taken += 1
            await self._start(subscription, acquired)

    async def _hand_over(self, chain: str, to: str, lease: LeaseView | None) -> None:
        held = self.held.get(chain)
        if held is None or held.leaving:
            return
        now = time.time()
        if lease is not None and lease.handover_to == to:
            marked = await self._control_call(self.parts.fleet.accept, chain, self.me, to, now)
        else:
            marked = await self._control_call(self.parts.fleet.push, chain, self.me, to, now)
        if marked:
            self._leave_chain(chain, "handover", to, f"handing it over to worker {to} (balancing)")

    def _leave_chain(self, chain: str, why: str, to: str | None, reason: str) -> None:
        held = self.held.get(chain)
        if held is None or held.leaving:
            return
        held.leaving, held.handover_to = why, to
        log.info("chain %s: stopping its session: %s", chain, reason)
        if held.session is not None:
            held.session.request_stop()

    # -- sessions -----------------------------------------------------------------------------

    async def _start(self, subscription: Subscription, acquired: Acquired) -> None:
        chain = subscription.id
        held = _Held(
            subscription,
            acquired.generation,
            confirmed_at=acquired.lease.lease_until - self.options.lease_seconds,
        )
        self.held[chain] = held
        late = time.time() - held.confirmed_at
        if late >= self.options.lease_seconds - self.options.renew_interval:
            # The acquire answered after the lease's safe period (DynamoDB slow): the guard would
            # close the session at once, and it could connect after safe_until (docs/fleet-design.md
            # section 4). Given back as the previous holder left it (its `complete`, for the 10 s
            # rule), to be taken at a later pass.
            log.warning(
                "chain %s: the lease acquire answered after %.1fs; released, not started", chain, late
            )
            held.leaving = "stop"
            await self._release(held, completed_at=acquired.completed_at, keep_handover=False)
            return
        try:
            settings = await self._settings_for(subscription)
        except Exception as exc:  # ConfigError for a secret it cannot read; anything else likewise
            message = one_line(exc)
            if self._secret_problems.get(chain) != message:
                log.error("chain %s cannot be streamed: %s", chain, message)
                self._secret_problems[chain] = message
            held.state = StreamState.FAILED.value
            self._cooldown[chain] = time.monotonic() + self.options.retake_after_failure
            held.leaving = "stop"
            await self._release(held, completed_at=acquired.completed_at, keep_handover=False)
            return
        self._secret_problems.pop(chain, None)
        # The same after the secret read (it may have been slow too), and after a stop.
        late = time.time() - held.confirmed_at
        if late >= self.options.lease_seconds - self.options.renew_interval or self._stop.is_set():
            log.warning("chain %s: the lease was taken %.1fs ago; released, not started", chain, late)
            held.leaving = "stop"
            await self._release(held, completed_at=acquired.completed_at, keep_handover=False)
            return
        publisher = self.parts.router.new(self.parts.publisher)
        session = StreamConsumer(
            settings,
            publisher=publisher,
            state=StateStore(self.parts.dynamodb, settings.table_name, chain),
            tokens=self._tokens_for(settings),
            telemetry=ChainTelemetry(self.telemetry),
            options=self.stream_options,
            owner=self.me,
            # Scoped by subscription: two chains' content keys may be equal, and one chain's poll
            # copy must never suppress another chain's stream copy (seen.py).
            seen=SeenSet(
                self.parts.dynamodb,
                settings.table_name,
                ttl_days=settings.seen_ttl_days,
                subscription=chain,
            ),
            s3=self.parts.s3,
            managed=ManagedLease(acquired.completed_at, self.options.clock_allowance),
            threads=self._threads,
            subscription=chain,
            reload_credentials=lambda: self._reload_secret(settings),
        )
        publisher.on_ack = session.on_published
        publisher.on_failure = session.on_publish_failure
        held.session, held.publisher = session, publisher
        log.info(
            "chain %s: lease taken (generation %d%s); starting its session",
            chain,
            acquired.generation,
            f", from worker {acquired.previous_owner}" if acquired.previous_owner else "",
        )
        held.task = asyncio.create_task(self._run_session(held), name=f"chain {chain}")

    async def _run_session(self, held: _Held) -> None:
        chain = held.subscription.id
        logcontext.set_subscription(chain)
        session = held.session
        assert session is not None
        status = 1
        try:
            status = await session.run()
        except Exception as exc:
            log.error("chain %s: the session ended on an error (%s)", chain, one_line(exc))
            log.debug("the error in full", exc_info=True)
        finally:
            if held.publisher is not None:
                self.parts.router.drop(held.publisher)
        if session.lease_lost:
            self._forget(held)
            return
        keep = held.leaving == "handover"
        if held.leaving is None:
            # Ended on its own: an error (SQS refusing events for good, say). Released so that the
            # fleet can try elsewhere, and not taken again here for a while.
            held.state = StreamState.FAILED.value
            self._cooldown[chain] = time.monotonic() + self.options.retake_after_failure
            log.error(
                "chain %s: the session ended (exit status %d); lease released, not taken here for %.0fs",
                chain,
                status,
                self.options.retake_after_failure,
            )
        await self._release(held, completed_at=session.completed_at, keep_handover=keep)

    async def _release(self, held: _Held, *, completed_at: float | None, keep_handover: bool) -> None:
        chain = held.subscription.id
        delay = 0.5
        for attempt in range(1, self.options.release_attempts + 1):
            try:
                released = await self._control_call(
                    self.parts.fleet.release,
                    chain,
                    self.me,
                    time.time(),
                    completed_at,
                    keep_handover=keep_handover,
                )
            except StateStoreError as exc:
                if attempt == self.options.release_attempts or not exc.retryable:
                    log.warning(
                        "chain %s: cannot release the lease (%s); it lapses in %.0fs",
                        chain,
                        exc.code,
                        self.options.lease_seconds,
                    )
                    break
                await asyncio.sleep(delay)
                delay *= 2
                continue
            if released:
                to = f" for worker {held.handover_to}" if keep_handover and held.handover_to else ""
                log.info("chain %s: lease released%s", chain, to)
            break
        self._forget(held)

    def _forget(self, held: _Held) -> None:
        chain = held.subscription.id
        if self.held.get(chain) is held:
            del self.held[chain]

    async def _stop_all(self) -> None:
        for chain in list(self.held):
            self._leave_chain(chain, "stop", None, "the task stops")
        tasks = [held.task for held in self.held.values() if held.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _leave(self) -> None:
        """Leave the fleet: the worker item and the index entry go, so the others stop counting
        this task at once (not after the worker timeout)."""
        with contextlib.suppress(Exception):
            await self._flush_metrics()
        try:
            # Bounded: the leases are released already, and a worker item left behind is
            # forgotten by the others later; a DynamoDB that hangs must not hold the exit.
            await asyncio.wait_for(
                self._control_call(self.parts.fleet.forget_worker, self.me, time.time()), LEAVE_TIMEOUT
            )
        except Exception as exc:
            log.warning(
                "could not leave the fleet index (%s); the others forget this worker later", one_line(exc)
            )
        log.info("worker %s left the fleet", self.me)

    async def _settings_for(self, subscription: Subscription) -> Settings:
        base = settings_for_subscription(self.settings, subscription)
        arn = subscription.secret_arn
        cached = self._credentials.get(arn)
        if cached is None:
            read = self.parts.read_secret
            if read is None:
                raise ConfigError(f"subscription {subscription.id}: no way to read its secret")
            cached = await asyncio.to_thread(read, base)
            self._credentials[arn] = cached
        return replace(
            base, client_id=cached.client_id, client_secret=cached.client_secret, app_key=cached.app_key
        )

    def _reload_secret(self, settings: Settings) -> Settings:
        """After OHIP refused a session's credentials: read its secret again (a corrected secret is
        used without a restart, as in the single-chain shape) and keep it for later sessions.
        Runs in a thread (`StreamConsumer` calls it so)."""
        read = self.parts.read_secret
        if read is None or not settings.secret_arn:
            return settings
        fresh = read(replace(settings, client_id="", client_secret="", app_key=""))
        self._credentials[settings.secret_arn] = fresh
        return fresh

    def _tokens_for(self, settings: Settings) -> AsyncTokenProvider:
        key = (
            settings.gateway_url,
            settings.client_id,
            settings.client_secret,
            settings.enterprise_id,
            settings.oauth_scope,
            settings.app_key,
        )
        tokens = self._tokens.get(key)
        if tokens is None:
            tokens = AsyncTokenProvider(OAuthParams.from_settings(settings), self.parts.http, clock=time.time)
            self._tokens[key] = tokens
        return tokens

    # -- renewals, the guard, the worker item --------------------------------------------------

    async def _renew_tick(self) -> None:
        if self.options.alive_file:  # first: the loop's liveness, whatever DynamoDB does
            await asyncio.to_thread(Path(self.options.alive_file).touch)
        chains = sorted(self.held)
        now = time.time()
        if not chains:
            self._renew_trouble = False  # nothing to renew: nothing failing either
        else:
            if self._renewing is not None and not self._renewing.done():
                log.warning("the previous lease renewal batch is still running; skipping this one")
            else:
                loop = asyncio.get_running_loop()
                batch = loop.run_in_executor(
                    self._renewer,
                    self.parts.fleet.renew_many,
                    chains,
                    self.me,
                    now,
                    self.options.lease_seconds,
                )
                batch.add_done_callback(lambda done: done.cancelled() or done.exception())
                self._renewing = batch
                try:
                    results = await wait_within(batch, self.options.renew_interval)
                except TimeoutError:
                    log.warning("the lease renewal batch has not answered for %.0fs", time.time() - now)
                    self._renew_trouble = True
                except Exception as exc:
                    log.warning("the lease renewal batch failed (%s)", one_line(exc))
                    self._renew_trouble = True
                else:
                    self._renewed(results, now)
        await self._write_worker()

    def _renewed(self, results: Mapping[str, Renewal], now: float) -> None:
        trouble = False
        for chain, renewal in results.items():
            held = self.held.get(chain)
            if held is None:
                continue
            if renewal.renewed:
                held.confirmed_at = max(held.confirmed_at, now)
            elif renewal.lost:
                if held.session is not None:
                    held.session.lose_lease("another worker holds the lease now")
            else:
                trouble = True
                log.warning("chain %s: lease renewal failed (%s)", chain, renewal.error)
        self._renew_trouble = trouble

    async def _guard(self) -> None:
        """Close every session whose lease is no longer surely ours (the single-chain rule: a
        renewal must have answered within D - I of the last one, docs/fleet-design.md section 4)."""
        now = time.time()
        margin = self.options.lease_seconds - self.options.renew_interval
        for held in list(self.held.values()):
            session = held.session
            if session is None or session.lease_lost:
                continue
            if now >= held.confirmed_at + margin:
                session.lose_lease(f"no lease renewal succeeded for {now - held.confirmed_at:.1f}s")

    async def _write_worker(self) -> None:
        now = time.time()
        items = worker_items(
            self.me, now, self.summaries(), started_at=self._started_at, expires_at=now + WORKER_ITEM_TTL
        )
        await self._control_call(self.parts.fleet.put_worker, items)

    def _note_states(self, now: float) -> None:
        for chain, held in self.held.items():
            session = held.session
            if session is None:
                continue
            state = session.status.value
            if state != held.state:
                log.info(
                    "chain %s: %s -> %s",
                    chain,
                    held.state,
                    state,
                    extra={"subscription": chain, "state": state},
                )
                held.state, held.since = state, now

    # -- metrics and the summary line ----------------------------------------------------------

    async def _flush_metrics(self) -> None:
        summaries = self.summaries()
        connected = sum(1 for s in summaries.values() if s.state == StreamState.CONNECTED.value)
        self.telemetry.gauge(Metric.CHAINS_RUNNING, len(summaries))
        self.telemetry.gauge(Metric.CHAINS_CONNECTED, connected)
        self.telemetry.gauge(Metric.CHAINS_DOWN, len(summaries) - connected)
        lags = [s.lag_seconds for s in summaries.values() if s.lag_seconds is not None]
        if lags:
            self.telemetry.gauge(Metric.MAX_STREAM_LAG, max(lags))
        publisher = self.parts.publisher
        samples = publisher.take_latency_samples()
        if samples:
            self.telemetry.observe(Metric.PUBLISH_LATENCY, max(samples))
        retried = publisher.stats.retried
        if retried > self._retried_reported:
            self.telemetry.count(Metric.PUBLISH_RETRIES, retried - self._retried_reported)
            self._retried_reported = retried
        self.telemetry.flush()

    async def _log_summary(self) -> None:
        summaries = self.summaries()
        connected = sum(1 for s in summaries.values() if s.state == StreamState.CONNECTED.value)
        worst = worst_chains(summaries)
        p = self.last_plan
        log.info(
            "fleet: worker %s holds %d chains (%d connected); %s workers alive, share %s; worst: %s",
            self.me,
            len(summaries),
            connected,
            len(p.alive) if p else "?",
            p.share if p else "?",
            ", ".join(worst) or "none",
            extra={"worker": self.me, "chains": len(summaries), "connected": connected, "worst": worst},
        )

    # -- helpers ------------------------------------------------------------------------------

    async def _periodic(self, interval: float, action: Callable[[], Any]) -> None:
        """`action` every `interval`, at a fixed rate: the time an action takes (a renewal batch
        under load) does not stretch the period, which the lease's safety margin counts on."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._halted:
            next_at += interval
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s failed (%s)", action.__name__.strip("_").replace("_", " "), one_line(exc))
                log.debug("the failure in full", exc_info=True)
            now = loop.time()
            if next_at < now:  # an action ran longer than the interval: start again now
                next_at = now
            await asyncio.sleep(next_at - now)

    def _control_call(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        if kwargs:
            return loop.run_in_executor(self._control, lambda: call(*args, **kwargs))
        return loop.run_in_executor(self._control, call, *args)


# -- wiring --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_scheduler(
    settings: Settings,
    *,
    options: SchedulerOptions | None = None,
    stream_options: StreamOptions | None = None,
    worker_id: str | None = None,
) -> AsyncIterator[Scheduler]:
    """A scheduler wired to SQS, DynamoDB, S3 and Secrets Manager from the settings."""
    from .runtime import aws_client, aws_credentials, resolve_secrets

    if not settings.bucket_name:
        raise StartupError(
            "RELAY_BUCKET_NAME: missing (the stream consumer parks events it cannot publish there, "
            "and stores oversize ones)"
        )
    http_transport = settings.sqs_transport is SqsTransport.HTTP

    def blocking_parts() -> tuple[Any, Any, Any, Any, Any]:
        return (
            aws_client(settings, "sqs", config=PUBLISHER_BOTO_CONFIG),
            aws_client(settings, "s3"),
            aws_client(settings, "dynamodb", config=STATE_BOTO_CONFIG.merge(FLEET_DYNAMODB_POOL)),
            aws_client(settings, "secretsmanager"),
            aws_credentials(settings) if http_transport else None,
        )

    sqs, s3, dynamodb, secrets_client, credentials = await asyncio.to_thread(blocking_parts)
    transport = (
        SqsHttpTransport(
            sqs, credentials, connect_timeout=PUBLISH_CONNECT_TIMEOUT, read_timeout=PUBLISH_READ_TIMEOUT
        )
        if http_transport
        else None
    )
    router = PublisherRouter()
    opts = stream_options or fleet_stream_options(settings)
    publisher = SqsPublisher(
        sqs,
        settings.queue_url,
        transport=transport,
        on_ack=router.on_ack,
        on_failure=router.on_failure,
        config=PublisherConfig(max_buffered=opts.max_in_flight * 4, claim_check_bucket=settings.bucket_name),
        s3_client=s3,
    )
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
        parts = FleetParts(
            fleet=FleetStore(dynamodb, settings.table_name),
            registry=RegistryStore(dynamodb, settings.table_name),
            publisher=publisher,
            router=router,
            dynamodb=dynamodb,
            http=http,
            s3=s3,
            read_secret=partial(resolve_secrets, client=secrets_client),
        )
        scheduler = Scheduler(settings, parts, options=options, stream_options=opts, worker_id=worker_id)
        try:
            await publisher.start()
        except PublishError as exc:
            raise StartupError(str(exc)) from exc
        try:
            yield scheduler
        finally:
            await publisher.close(drain_timeout=5.0)


async def run_fleet(settings: Settings, *, worker_id: str | None = None) -> int:
    """Run this task's share of the fleet until SIGTERM/SIGINT; returns the exit status."""
    async with open_scheduler(settings, worker_id=worker_id) as scheduler:
        stop_on_signals(scheduler.request_stop)
        return await scheduler.run()
