"""The stream consumer: the asyncio session that drives the sans-I/O protocol over `websockets`.

`StreamConsumer.run()` is the life of the Fargate task:

1. take the DynamoDB lease (one connection per OHIP application and chain, always: a second task,
   for example during a deployment, stands by here and writes a `standby` heartbeat);
2. connect, `connection_init`, subscribe from the checkpoint (replay is inclusive: the protocol
   core reports the already-published first event as a duplicate), read `next` frames, normalise
   them and hand them to the SQS publisher. The publisher blocks when its buffer is full, so the
   consumer stops reading and TCP pushes back on the server;
3. every second write the checkpoint: the offset below which SQS acknowledged every event; every
   few seconds the heartbeat (read by the poll fallback and by `ohip-relay status`);
4. on a close, log the code and the checkpoint, classify the code (4401: drop the token; 4403:
   alarm, retry slowly; 4409: wait out the lockout), back off with jitter, and subscribe again
   from the last event handed to the publisher (which keeps retrying what SQS has not
   acknowledged yet; after a crash the stored checkpoint, which only covers acknowledged events,
   is where the replay starts);
5. on SIGTERM: `complete`, read what the server still sends until it closes the socket, flush
   (at most `stop_flush_timeout`, renewing the lease all along, so that a successor cannot
   subscribe before the last checkpoint), checkpoint, release the lease, exit 0.

Identity and poison (docs/event-format.md): an event is its offset (with `uniqueEventId`); what
cannot be read or published is parked raw under `malformed/` in the bucket (`park.py`), counted,
and the checkpoint passes it only once it is parked: nothing the protocol allows stops the relay.
Offsets that go backwards (a reset on OHIP's side) are not duplicates: the consumer reports them,
stops reading (heartbeat `regressed`, which the poll fallback treats as unhealthy at once, so it
carries the events) and tries again every `regression_retry` seconds. A replayed event is kept off
the queue only when the poll fallback published a copy of it that no other stream event has been
matched against (`seen.SeenSet.match`, "match once").

Losing the lease stops consumption at once (the socket is closed, whatever the consumer was waiting for,
nothing more is submitted); the task goes back to standby. With no checkpoint yet (first start),
`RELAY_START_POSITION` decides: `latest` (default) subscribes with `offsetType: highest`, `earliest` replays
the whole retention; either way the offset before the first event received is stored at once, so a crash
before the first checkpoint cannot skip anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import io
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import httpx
from botocore.config import Config
from botocore.credentials import Credentials
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from . import protocol as proto
from .auth import AsyncTokenProvider, AuthError, OAuthParams, Token
from .backoff import (
    AUTH_RETRY_CAP,
    AUTH_RETRY_FIRST,
    Backoff,
    CloseKind,
    CloseOutcome,
    auth_retry_floor,
    classify_close,
)
from .config import Settings, SqsTransport, StartPosition
from .errors import StartupError, one_line
from .events import CanonicalEvent, MalformedEvent, from_stream
from .park import park_frame
from .publish import (
    OutboundMessage,
    PublisherConfig,
    PublishError,
    PublisherStats,
    PublishFailure,
    SqsPublisher,
    outbound_message,
)
from .seen import SeenSet
from .sqs_http import SqsHttpTransport
from .state import Heartbeat, StateStore, StateStoreError, StreamState, describe_checkpoint
from .telemetry import Metric, Telemetry
from .watermark import OffsetWatermark

log = logging.getLogger("ohip_relay.stream")

_T = TypeVar("_T")


@dataclass(frozen=True)
class StreamOptions:
    """Tunables of the consumer. Defaults follow the documented protocol rules."""

    ping_interval: float = proto.DEFAULT_PING_INTERVAL
    liveness_timeout: float = proto.DEFAULT_LIVENESS_TIMEOUT
    ack_timeout: float = proto.DEFAULT_ACK_TIMEOUT
    drain_timeout: float = 20.0
    # After a stop, how long to wait for SQS to acknowledge what was read (ECS's StopTimeout is 120 s);
    # the lease is renewed meanwhile. What is still unacknowledged then is replayed by the next holder.
    stop_flush_timeout: float = 60.0
    checkpoint_interval: float = 1.0
    heartbeat_interval: float = 5.0
    metrics_interval: float = 10.0
    token_check_interval: float = 60.0
    rotate_before_expiry: float = 120.0
    lease_duration: float = 30.0
    lease_renew_interval: float = 10.0
    open_timeout: float = 10.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    max_in_flight: int = 1000
    max_frame_bytes: int = 16 * 1024 * 1024
    # After OHIP's offsets went backwards: how long to stay off the stream before trying again.
    regression_retry: float = 60.0
    # Parking a frame in S3 that failed: the first retry after this, doubling up to 30 s.
    park_retry: float = 0.5
    # Credentials the token endpoint refused: the first retry after this, doubling up to 300 s.
    auth_retry_first: float = AUTH_RETRY_FIRST

    def __post_init__(self) -> None:
        if self.lease_renew_interval * 2 >= self.lease_duration:
            raise ValueError("lease_renew_interval must be under half the lease_duration")


# Threads for the consumer's DynamoDB calls: checkpoint, heartbeat and its mark read, lease
# renewals (one given up on may still run), seen-set reads, and state-change heartbeats.
BLOCKING_THREADS = 16


class SessionPublisher(Protocol):
    """What the consumer uses of its publisher: an `SqsPublisher`, or in a fleet one chain's view
    of the task's shared publisher (`scheduler.ChainPublisher`)."""

    @property
    def has_room(self) -> bool: ...
    @property
    def buffered(self) -> int: ...
    @property
    def stats(self) -> PublisherStats: ...
    def take_latency_samples(self) -> list[float]: ...
    async def submit(self, message: OutboundMessage) -> None: ...
    async def flush(self) -> None: ...


@dataclass(frozen=True)
class ManagedLease:
    """The lease of a chain session that a fleet scheduler holds (scheduler.py): the scheduler
    acquired it, renews it in its batch and releases it after the session ends; the session neither
    acquires, renews, releases nor writes `heartbeat#<id>` (the worker item replaces it), and it ends
    when the lease is lost (`StreamConsumer.lose_lease`) instead of standing by.

    `completed_at`: the previous holder's `complete` (wall clock), from the acquire; the session
    subscribes 10 s after it plus `clock_allowance`, the clock offset between two tasks allowed for.
    """

    completed_at: float | None = None
    clock_allowance: float = 1.0
    # How often the session reads `fallback#<id>` for the seen-set's mark (docs/fleet-design.md:
    # once a minute, not with every heartbeat as the single-chain consumer does).
    fallback_mark_interval: float = 60.0


class _Stopped(Exception):
    """A stop was requested while the consumer was waiting to read its state."""


class PublishFailed(Exception):
    """SQS refused an event for good: stop rather than move the checkpoint past it."""


class _LeaseLostWhileBlocked(Exception):
    """The lease was lost while the consumer waited for room in the publisher."""


# SQS refusals that belong to one message's content (they would refuse it again on every replay):
# the event is parked, not retried. Any other permanent refusal (no permission, no such queue) is a
# configuration problem: the consumer stops without passing the event, and a human looks.
POISON_CODES = frozenset(
    {
        "InvalidMessageContents",
        "InvalidParameterValue",
        "MessageTooLarge",
        "MessageTooLong",
        "InvalidAttributeValue",
        "InvalidAttributeName",
        "TooManyAttributes",
    }
)


async def wait_within(future: asyncio.Future[_T], seconds: float) -> _T:
    """`future`'s result, or `TimeoutError` after `seconds`; `future` itself is left running.

    Not `asyncio.wait_for(asyncio.shield(future), ...)`: on Python 3.11, when the future completes
    just as the waiting task is cancelled, `wait_for` returns the result and the cancellation is
    lost. The task then carries on, and whoever cancelled it (a stop) waits for it for ever (fleet
    chaos seed 5150: a renewal loop cancelled at shutdown kept running; its relay never exited).
    `asyncio.wait` lets the cancellation through."""
    done, _ = await asyncio.wait({future}, timeout=seconds)
    if not done:
        raise TimeoutError
    return future.result()


def default_owner() -> str:
    """Who holds the lease: host name and process id, readable in `ohip-relay status`."""
    return f"{socket.gethostname()}:{os.getpid()}"


class StreamConsumer:
    def __init__(
        self,
        settings: Settings,
        *,
        publisher: SessionPublisher,
        state: StateStore,
        tokens: AsyncTokenProvider,
        telemetry: Telemetry,
        options: StreamOptions | None = None,
        owner: str | None = None,
        rng: random.Random | None = None,
        seen: SeenSet | None = None,
        s3: Any = None,
        reload_credentials: Callable[[], Settings] | None = None,
        managed: ManagedLease | None = None,
        threads: ThreadPoolExecutor | None = None,
        subscription: str | None = None,
    ) -> None:
        self.settings = settings
        # The registry id of the chain (None: the chain code, the single-chain shape): events'
        # identities are scoped by it, so one chain code in two OHIP environments never collides.
        self.subscription = subscription or settings.chain_code
        self.managed = managed
        # With OHIP_SECRET_ARN: reads the secret again. Called before each retry after a refusal, so
        # that a secret corrected in Secrets Manager is used without a restart.
        self.reload_credentials = reload_credentials
        self.seen = seen
        self.s3 = s3  # parking (malformed/ in settings.bucket_name); None: parking fails (and retries)
        self.options = options or StreamOptions()
        self.publisher = publisher
        self.state = state
        self.tokens = tokens
        self.telemetry = telemetry
        self.owner = owner or default_owner()
        self.rng = rng or random.Random()
        self.url = proto.stream_url(settings.gateway_url, settings.app_key)

        self.status = StreamState.CONNECTING
        self.watermark = OffsetWatermark(None)
        self.checkpointed: int | None = None  # what DynamoDB holds (as far as we know)
        self.last_frame_at: float | None = None
        self.last_event_at: float | None = None
        self.last_offset: int | None = None
        self.lag_seconds: float | None = None
        self.failure: PublishFailure | None = None
        self.exit_status = 0
        self.last_outcome: CloseOutcome | None = None
        self.next_delay: float | None = None  # seconds until the next connection attempt
        self.connections = 0

        self.holding_lease = managed is not None
        self._lease_confirmed_at = 0.0  # wall clock: the `now` of the last acquire or renew that succeeded
        self._lease_lost_why = ""
        self._beats: set[asyncio.Task[None]] = set()
        # The DynamoDB calls (blocking boto3) run in threads of the consumer's own: in the loop's
        # shared default pool (6 threads on 2 CPUs) a lease renewal could queue behind calls that
        # botocore is retrying through throttling, and the lease was then given up for nothing.
        # A fleet's sessions share the scheduler's pool (`threads`); their leases are renewed by the
        # scheduler on threads of its own, so no renewal queues behind these calls there either.
        self._own_threads = threads is None
        self._threads = threads or ThreadPoolExecutor(
            max_workers=BLOCKING_THREADS, thread_name_prefix="relay-state"
        )
        self._mark_read_at: float | None = None  # monotonic: the last read of the fallback mark
        self.suppressed = 0  # replayed events the poll fallback had already published
        self._suppressed_logged = 0
        self._retried_reported = 0
        self.fallback_mark: datetime | None = None  # see _refresh_fallback_mark
        self._stop = asyncio.Event()
        self._lease_lost = asyncio.Event()
        self._wake = asyncio.Event()  # set with either of the two above
        self._last_complete_at: float | None = None  # loop clock
        self._flush_timed_out = False
        self._ws: ClientConnection | None = None  # the open connection, closed on lease loss
        self._parks: set[asyncio.Task[None]] = set()
        self.parked = 0
        self.regressed = False  # offsets went backwards; cleared by the next event above the mark
        self.auth_refusals = 0  # the token endpoint refused the credentials this many times in a row
        self.auth_refused_status: int | None = None
        self._token_problem = ""  # why the last token request failed (transiently), for the log

    # -- public -----------------------------------------------------------------------------

    def lose_lease(self, why: str) -> None:
        """The lease is not surely ours any more: close the connection now, whatever the consumer
        waits for, and submit nothing more (the lease keeper, or a fleet scheduler, calls this)."""
        if self._lease_lost.is_set():
            return
        self._lease_lost_why = why
        self.holding_lease = False
        self._lease_lost.set()
        self._wake.set()
        self._close_connection("lease lost")

    @property
    def lease_lost(self) -> bool:
        return self._lease_lost.is_set()

    @property
    def completed_at(self) -> float | None:
        """When this consumer last sent `complete` (wall clock), None if never."""
        if self._last_complete_at is None:
            return None
        loop = asyncio.get_running_loop()
        return time.time() - max(0.0, loop.time() - self._last_complete_at)

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: finish cleanly (complete, drain, flush, checkpoint, release)."""
        if not self._stop.is_set():
            log.info("stop requested: completing the subscription and draining")
        self._stop.set()
        self._wake.set()

    def on_published(self, ack_token: Any) -> None:
        """Publisher callback: SQS acknowledged the event at this offset."""
        offset = int(ack_token)
        if self.watermark.is_pending(offset):
            self.watermark.ack(offset)
        self.telemetry.count(Metric.EVENTS_PUBLISHED)

    def on_publish_failure(self, failure: PublishFailure) -> None:
        """Publisher callback: an event cannot be put on the queue. Refused for its content
        (`POISON_CODES`): parked, and the checkpoint passes it once it is. Otherwise the checkpoint
        stays below it; the consumer stops (exit 1) so that a human looks, and a restart replays it."""
        if failure.code in POISON_CODES and failure.body:
            offset = int(failure.ack_token)
            log.error(
                "SQS refuses the event at offset %s for its content (%s); parking it", offset, failure.code
            )
            self._park(failure.body, f"refused by SQS: {failure.code}", offset)
            return
        log.error(
            "SQS refused the event at offset %s for good (%s: %s); stopping so it is not skipped",
            failure.ack_token,
            failure.code,
            failure.reason,
        )
        self.telemetry.count(Metric.PUBLISH_ERRORS)
        self.failure = failure
        self.exit_status = 1
        self.request_stop()

    async def run(self) -> int:
        """Run until `request_stop()`; returns the process exit status."""
        try:
            checkpoint = await self._read_state("checkpoint", self.state.get_checkpoint)
        except _Stopped:
            return self.exit_status
        self.checkpointed = checkpoint.offset if checkpoint else None
        self.watermark = OffsetWatermark(self.checkpointed)
        background = [
            asyncio.create_task(self._every(self.options.checkpoint_interval, self._write_checkpoint)),
            asyncio.create_task(self._every(self.options.heartbeat_interval, self._write_heartbeat)),
        ]
        if self.managed is None:  # a fleet's scheduler flushes the shared metrics and tokens
            background += [
                asyncio.create_task(self._every(self.options.metrics_interval, self._flush_metrics)),
                asyncio.create_task(self._every(self.options.token_check_interval, self._refresh_token)),
            ]
        try:
            if self.managed is not None:
                await self._run_managed(self.managed)
            while self.managed is None and not self._stop.is_set():
                if not await self._acquire_lease():
                    break
                try:
                    await self._take_over()
                except _Stopped:
                    break
                except StateStoreError as exc:
                    if not exc.retryable:
                        raise
                    # Not connected yet, so nothing to undo: the lease lapses by itself (or is
                    # taken again below, as this task still owns it) once DynamoDB answers.
                    log.warning(
                        "took the lease but could not read the stream's state (%s); standing by "
                        "and trying again",
                        exc.code,
                    )
                    self.holding_lease = False
                    self.status = StreamState.STANDBY
                    await self._sleep(self.options.lease_renew_interval)
                    continue
                keeper = asyncio.create_task(self._lease_keeper())
                try:
                    await self._connection_loop()
                    if self._stop.is_set() and self.holding_lease:
                        # Drain while the keeper still renews the lease: a successor (an ECS
                        # deployment starts one) must not subscribe before our last checkpoint.
                        log.info(
                            "stopping: waiting for SQS to acknowledge %d events (at most %.0fs)",
                            self.publisher.buffered,
                            self.options.stop_flush_timeout,
                        )
                        await self._settle_publisher(self.options.stop_flush_timeout)
                finally:
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
                if self._lease_lost.is_set() and not self._stop.is_set():
                    log.error("lease lost (%s): connection closed; standing by", self._lease_lost_why)
                    self.status = StreamState.STANDBY
                    await self._settle_publisher()
                    # Resume from what SQS acknowledged: an event tracked but never handed on (its
                    # submit was given up with the lease) must be read again, not skipped.
                    self.watermark = OffsetWatermark(self.watermark.value)
                    self._lease_lost.clear()
                    self._wake.clear()
        except BaseException:
            # Not a planned stop: the heartbeat must say `failed` (unhealthy at once), not `stopped`
            # (which the poll fallback reads as a deployment within its grace period).
            if not self.exit_status:
                self.exit_status = 1
            # What failed is said once, by whoever ends the process (the command line: one line with
            # the next step); here only that the consumer stops, and the traceback at debug level.
            log.error("the stream consumer stops on an error; its heartbeat will say failed")
            log.debug("the error in full", exc_info=True)
            raise
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._shutdown()
            # A call still running (a renewal given up on) ends within its botocore timeouts.
            if self._own_threads:
                self._threads.shutdown(wait=False)
        return self.exit_status

    async def _run_managed(self, managed: ManagedLease) -> None:
        """A fleet session: the lease is held (the scheduler acquired it); run until stopped
        (a handover or a stop: complete, drain, flush) or until the lease is lost."""
        if managed.completed_at is not None:
            # The previous holder's `complete`, on its clock: the gap is counted from there, plus
            # the offset allowed between two tasks' clocks.
            loop = asyncio.get_running_loop()
            since = max(0.0, time.time() - managed.completed_at)
            self._last_complete_at = loop.time() - since + managed.clock_allowance
        await self._refresh_fallback_mark()
        await self._connection_loop()
        if self._stop.is_set() and not self._lease_lost.is_set():
            # Drain while the scheduler still renews the lease: the next holder must not subscribe
            # before this session's last checkpoint.
            await self._settle_publisher(self.options.stop_flush_timeout)
        elif self._lease_lost.is_set():
            log.error("lease lost (%s): connection closed; the session ends", self._lease_lost_why)

    # -- the connection loop ----------------------------------------------------------------

    async def _connection_loop(self) -> None:
        backoff = Backoff(self.options.backoff_base, self.options.backoff_cap, rng=self.rng)
        loop = asyncio.get_running_loop()
        while not self._stopping():
            gap = proto.resubscribe_at(self._last_complete_at, loop.time()) - loop.time()
            if gap > 0:
                log.info("waiting %.1fs before subscribing again (10 s after a complete)", gap)
                await self._sleep(gap)
                continue
            self.status = StreamState.CONNECTING
            self.next_delay = None
            outcome, healthy_for = await self._one_connection()
            self.last_outcome = outcome
            if self._stopping():
                return
            if outcome.expected:
                # A planned rotation (new token): the gap after `complete` is waited above.
                log.info("connection rotated at checkpoint %s", describe_checkpoint(self.checkpointed))
                continue
            self.telemetry.count(
                Metric.RECONNECTS, close_code="none" if outcome.code is None else str(outcome.code)
            )
            if outcome.renew_token:
                self.tokens.invalidate()
            if self.regressed:
                self.next_delay = self.options.regression_retry
                self.status = StreamState.REGRESSED
                self._beat()
                log.error(
                    "staying off the stream for %.0fs: OHIP's offsets went below %s (checkpoint %s); "
                    "the poll fallback carries the events meanwhile (docs/runbook.md, offset regression)",
                    self.options.regression_retry,
                    self.watermark.last_tracked,
                    describe_checkpoint(self.checkpointed),
                )
                await self._sleep(self.options.regression_retry)
                continue
            delay = backoff.next_delay(outcome, healthy_for=healthy_for)
            self.next_delay = delay
            if self.auth_refusals:
                # Said once, when the refusals began (`_one_connection`); the heartbeat says it on.
                self.status = StreamState.AUTH_FAILED
                self._beat()
                log.debug(
                    "credentials refused %d times in a row; next try in %.0fs", self.auth_refusals, delay
                )
                await self._sleep(delay)
                continue
            if self._token_problem:
                log.warning("%s; trying again in %.1fs", self._token_problem, delay)
                self._token_problem = ""
                self.status = StreamState.BACKOFF
                await self._sleep(delay)
                continue
            report = log.error if outcome.alarm else log.warning
            report(
                "stream closed (code %s: %s%s); checkpoint %s; reconnecting in %.1fs",
                outcome.code,
                outcome.reason,
                f"; server said {outcome.peer_reason!r}" if outcome.peer_reason else "",
                describe_checkpoint(self.checkpointed),
                delay,
            )
            self.status = StreamState.BACKOFF
            await self._sleep(delay)

    async def _one_connection(self) -> tuple[CloseOutcome, float | None]:
        if self.auth_refusals and self.reload_credentials is not None:
            await self._reload_credentials()
        try:
            token = await self.tokens.get()
        except AuthError as exc:
            if not exc.permanent:
                self._credentials_accepted()
                self._token_problem = str(exc)
                return CloseOutcome.for_auth_failure(permanent=False), None
            self.auth_refusals += 1
            self.auth_refused_status = exc.status
            if self.auth_refusals == 1:
                log.error(
                    "%s; the stream stays off (heartbeat state auth-failed, so the poll fallback takes "
                    "over if its credentials work) and asks again in %.0fs, doubling up to every %.0fs%s",
                    exc,
                    auth_retry_floor(1, first=self.options.auth_retry_first),
                    AUTH_RETRY_CAP,
                    ", reading OHIP_SECRET_ARN again before each try" if self.reload_credentials else "",
                )
            self.telemetry.count(Metric.AUTH_REFUSALS)
            outcome = CloseOutcome.for_auth_failure(
                permanent=True, refusals=self.auth_refusals, first=self.options.auth_retry_first
            )
            return outcome, None
        self._credentials_accepted()
        core = proto.StreamProtocol(
            token=token.access_token,
            app_key=self.settings.app_key,
            ping_interval=self.options.ping_interval,
            liveness_timeout=self.options.liveness_timeout,
            ack_timeout=self.options.ack_timeout,
            drain_timeout=self.options.drain_timeout,
            last_complete_at=self._last_complete_at,
        )
        try:
            async with connect(
                self.url,
                subprotocols=[Subprotocol(proto.SUBPROTOCOL)],
                ping_interval=None,  # liveness is the protocol's own ping/pong, not WebSocket pings
                open_timeout=self.options.open_timeout,
                close_timeout=2.0,
                max_size=self.options.max_frame_bytes,
                max_queue=64,
            ) as ws:
                self.connections += 1
                self._ws = ws
                try:
                    closed = await self._drive(ws, core, self._rotation_due(token))
                finally:
                    self._ws = None
                    if core.last_complete_at is not None:
                        self._last_complete_at = core.last_complete_at
                    self.telemetry.gauge(Metric.STREAM_CONNECTED, 0)
                return closed.outcome, closed.connected_for
        except InvalidStatus as exc:
            status = exc.response.status_code
            log.error("the gateway refused the WebSocket handshake with HTTP %s", status)
            return CloseOutcome.for_handshake_status(status), None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.warning("cannot connect to the streaming endpoint: %s", type(exc).__name__)
            return classify_close(None, "connect failed"), None

    async def _reload_credentials(self) -> None:
        """Read the credentials again (the secret may have been corrected); use them if they changed."""
        assert self.reload_credentials is not None
        try:
            fresh = await asyncio.to_thread(self.reload_credentials)
        except Exception as exc:
            log.warning("cannot read the OHIP credentials again (%s); trying the ones in use", one_line(exc))
            return
        old = self.settings
        if (fresh.client_id, fresh.client_secret, fresh.app_key) == (
            old.client_id,
            old.client_secret,
            old.app_key,
        ):
            log.debug("the OHIP credentials read again are the ones in use")
            return
        self.settings = replace(
            old, client_id=fresh.client_id, client_secret=fresh.client_secret, app_key=fresh.app_key
        )
        self.tokens.use(OAuthParams.from_settings(self.settings))
        self.url = proto.stream_url(self.settings.gateway_url, self.settings.app_key)
        log.info("the OHIP credentials in OHIP_SECRET_ARN changed; trying the new ones")

    def _credentials_accepted(self) -> None:
        if self.auth_refusals:
            log.info("OHIP accepts the credentials again (after %d refusals)", self.auth_refusals)
        self.auth_refusals = 0
        self.auth_refused_status = None

    def _rotation_due(self, token: Token) -> float:
        """Loop time at which this connection is rotated because its token is about to expire.

        The gateway checks the token when a connection starts; a connection that outlives its token
        may be closed with 4401 at any moment. Rotating first follows the documented stop rules
        (complete, read until the server closes, wait 10 s, subscribe again from the checkpoint),
        so nothing is lost and no 4401 is needed. The provider has a new token ready by then.
        """
        life = token.expires_at - token.issued_at
        rotate_at = token.expires_at - min(self.options.rotate_before_expiry, life / 4)
        loop = asyncio.get_running_loop()
        return loop.time() + max(0.0, rotate_at - time.time())

    async def _drive(
        self, ws: ClientConnection, core: proto.StreamProtocol, rotate_at: float
    ) -> proto.Closed:
        loop = asyncio.get_running_loop()
        core.start(loop.time())
        await self._send(ws, core)
        # Frames are read in this task, one `ws.recv()` at a time under a timeout at the core's next
        # deadline: a frame websockets already holds costs no task, no wait and no loop iteration.
        # Stop or lease loss (`_wake`) ends a receive in progress early, except while completing
        # (then only the server's close, a frame or a deadline does). Cancelling recv() is safe:
        # websockets keeps the message for the next call.
        receiving: list[asyncio.Timeout] = []  # the timeout of the receive in progress, if any
        wake = asyncio.create_task(self._wake.wait())
        completing = False

        def interrupt(_: object) -> None:
            if receiving and not completing and not receiving[0].expired():
                receiving[0].reschedule(loop.time())

        wake.add_done_callback(interrupt)
        try:
            while True:
                deadline = core.next_deadline()
                if not completing:
                    deadline = rotate_at if deadline is None else min(deadline, rotate_at)
                frame: str | bytes | None = None
                closed_by: ConnectionClosed | None = None
                if completing or not wake.done():
                    try:
                        async with asyncio.timeout_at(deadline) as timeout:
                            receiving.append(timeout)
                            try:
                                frame = await ws.recv()
                            finally:
                                receiving.clear()
                    except TimeoutError:
                        pass
                    except ConnectionClosed as exc:
                        closed_by = exc
                now = loop.time()
                if self._lease_lost.is_set():
                    await ws.close(code=1000, reason="lease lost")
                    return core.connection_closed(1000, "lease lost", now)
                rotating = now >= rotate_at and core.state is proto.State.SUBSCRIBED
                if (self._stop.is_set() or rotating) and not completing:
                    completing = True
                    if core.subscription_id is not None and core.state is proto.State.SUBSCRIBED:
                        self.status = StreamState.DRAINING
                        core.send_complete(now)
                        await self._send(ws, core)
                        why = (
                            "the OAuth token expires soon"
                            if rotating and not self._stop.is_set()
                            else "stopping"
                        )
                        log.info(
                            "%s: sent complete; reading what the server still sends until it closes", why
                        )
                    else:
                        await ws.close()
                        return core.connection_closed(1000, "stopped before subscribing", now)
                if closed_by is not None:
                    code = closed_by.rcvd.code if closed_by.rcvd is not None else None
                    reason = closed_by.rcvd.reason if closed_by.rcvd is not None else ""
                    return self._log_closed(core.connection_closed(code, reason, now))
                events: list[proto.Event] = []
                if frame is not None:
                    self.last_frame_at = time.time()
                    events.extend(core.receive(frame, now))
                events.extend(core.tick(now))
                for event in events:
                    try:
                        terminal = await self._on_event(ws, core, event, now, frame)
                    except _LeaseLostWhileBlocked:
                        terminal = (1000, "lease lost")
                    if terminal is not None:
                        await ws.close(code=terminal[0], reason=terminal[1])
                        return self._log_closed(core.connection_closed(terminal[0], terminal[1], now))
                await self._send(ws, core)
        finally:
            wake.cancel()

    async def _on_event(
        self,
        ws: ClientConnection,
        core: proto.StreamProtocol,
        event: proto.Event,
        now: float,
        frame: str | bytes | None = None,
    ) -> tuple[int, str] | None:
        """Act on one protocol event; returns (close code, reason) when the connection must end.
        `frame` is the text frame the event came in (what gets parked if it cannot be published)."""
        if isinstance(event, proto.EventReceived):
            await self._publish(event, frame)
        elif isinstance(event, proto.DuplicateSkipped):
            self.telemetry.count(Metric.DUPLICATES_SKIPPED)
        elif isinstance(event, proto.UnreadableEvent):
            log.error("unreadable event (%s): parking the frame and reading on", event.reason)
            self._park(frame or "", event.reason, None)
        elif isinstance(event, proto.OffsetRegression):
            return self._on_regression(event)
        elif isinstance(event, proto.ConnectionAcked):
            self._subscribe(core, now)
            self.status = StreamState.REGRESSED if self.regressed else StreamState.CONNECTED
            self.telemetry.gauge(Metric.STREAM_CONNECTED, 1)
            self._beat()
        elif isinstance(event, proto.SubscriptionError):
            log.error("the server rejected the subscription: %s", event.summary())
            if event.terminal:
                return 4400, "subscription rejected"
        elif isinstance(event, proto.SubscriptionCompleted) and not event.after_client_complete:
            log.warning("the server completed the subscription; reconnecting from the checkpoint")
            return 1000, "subscription completed by the server"
        elif isinstance(event, proto.ProtocolViolation):
            log.error("protocol violation by the server: %s", event.reason)
            return event.close_code, "protocol violation"
        elif isinstance(event, proto.ConnectionDead):
            log.warning("%s: dropping the connection", event.reason)
            return event.close_code, "timeout"
        return None

    def _subscribe(self, core: proto.StreamProtocol, now: float) -> None:
        chain = self.settings.chain_code
        # The subscription's own options (OHIP_HOTEL_CODE, OHIP_STREAM_DELTA), whatever the start.
        subscription = proto.SubscriptionInput(
            chain, hotel_code=self.settings.hotel_code or None, delta=self.settings.stream_delta
        )
        # Resume after the last event handed to the publisher, acknowledged or not: the publisher
        # owns those until SQS acknowledges them (it retries for ever), and the stored checkpoint
        # only ever covers acknowledged ones, so a crash still replays them. Waiting for the
        # acknowledgements before reconnecting would only add latency.
        resume_after = self.watermark.last_tracked
        if resume_after is not None:
            core.send_subscribe(subscription, now, resume_after=resume_after)
            log.info(
                "subscribed to chain %s from offset %s (inclusive, already handled; checkpoint %s)",
                chain,
                resume_after,
                describe_checkpoint(self.checkpointed),
            )
        elif self.settings.start_position is StartPosition.EARLIEST:
            core.send_subscribe(replace(subscription, offset="0"), now)
            log.info("no checkpoint: subscribed to chain %s from the oldest retained event", chain)
        else:
            core.send_subscribe(replace(subscription, offset_type="highest"), now)
            log.info(
                "no checkpoint: subscribed to chain %s from the newest event (offsetType highest)", chain
            )

    async def _publish(self, event: proto.EventReceived, frame: str | bytes | None = None) -> None:
        self.telemetry.count(Metric.EVENTS_RECEIVED)
        if self.watermark.value is None:
            # First event ever: anchor the checkpoint just below it, so that a crash before the
            # first acknowledgement replays from here instead of subscribing to "highest" again.
            # A log that starts at offset 0 anchors at -1: "read from 0, nothing handled yet".
            anchor = event.offset - 1
            await self._blocking(self.state.advance_checkpoint, anchor, self.owner)
            self.watermark = OffsetWatermark(anchor)
            self.checkpointed = anchor
            log.info("first event at offset %s: checkpoint anchored at %s", event.offset, anchor)
        self.watermark.track(event.offset)
        self.last_offset = event.offset
        self.last_event_at = time.time()
        if self.regressed:
            self.regressed = False
            self.status = StreamState.CONNECTED
            log.warning("offsets move on again at %s: streaming resumed", event.offset)
            self._beat()
        try:
            canonical = self._canonical(event)
        except Exception as exc:  # MalformedEvent, or anything else a value the protocol allows may cause
            # Cannot be represented in the public format: parked raw; the checkpoint passes it once
            # it is (a replay would fail the same way). The reason names the field, never a value.
            # Only MalformedEvent's text is safe to log: another error's may quote a value.
            reason = str(exc) if isinstance(exc, MalformedEvent) else f"cannot be read ({type(exc).__name__})"
            log.error("event at offset %s cannot be published (%s); parking it", event.offset, reason)
            self._park(frame or "", reason, event.offset)
            return
        if await self._published_by_fallback(canonical):
            self.suppressed += 1
            self.telemetry.count(Metric.DUPLICATES_SUPPRESSED)
            self.watermark.ack(event.offset)
            return
        self.lag_seconds = max(0.0, time.time() - canonical.occurred_at.timestamp())
        self.telemetry.gauge(Metric.STREAM_LAG, self.lag_seconds)
        message = outbound_message(canonical, event.offset)
        if self.publisher.has_room:
            await self.publisher.submit(message)
        else:
            await self._submit_unless_lease_lost(message)

    def _canonical(self, event: proto.EventReceived) -> CanonicalEvent:
        return from_stream(
            event.new_event, self.settings.chain_code, datetime.now(UTC), subscription=self.subscription
        )

    async def _submit_unless_lease_lost(self, message: OutboundMessage) -> None:
        """`submit` while the publisher is full (SQS slow or down): the wait ends early when the
        lease is lost, so that the connection closes at once (a successor may connect)."""
        submit = asyncio.ensure_future(self.publisher.submit(message))
        lost = asyncio.ensure_future(self._lease_lost.wait())
        try:
            await asyncio.wait((submit, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if submit.done():
            submit.result()
            return
        submit.cancel()  # nothing was handed on: the event is read again by the next holder
        with contextlib.suppress(asyncio.CancelledError):
            await submit
        raise _LeaseLostWhileBlocked

    async def _published_by_fallback(self, event: CanonicalEvent) -> bool:
        """Whether the poll fallback already put a copy of this event on the queue that no other
        stream event was matched against (`SeenSet.match`: each poll copy cancels at most one
        stream copy, so two events that look alike are never both suppressed by one copy).

        Only events that occurred at or before the newest event the fallback published can have
        come through it, so the seen-set is asked only for those: after an outage, while the
        replay passes the fallback's window. The rest of the time this costs nothing.
        """
        mark = self.fallback_mark
        # Compared to the second: the Poll API's createdDateTime has no sub-second part.
        if self.seen is None or mark is None or event.occurred_at.replace(microsecond=0) > mark:
            return False
        try:
            matched = await self._blocking(self.seen.match, event.event_key, event.event_id)
        except Exception as exc:
            log.warning("seen-set unavailable (%s): publishing (a duplicate at worst)", type(exc).__name__)
            return False
        if matched > 1:  # several distinct events share this content: each poll copy cancels one
            self.telemetry.count(Metric.LOOKALIKE_MATCHES)
        return matched > 0

    def _on_regression(self, event: proto.OffsetRegression) -> tuple[int, str]:
        """OHIP sent an offset below what was handled: not a replay (inclusive replay starts at the
        checkpoint), so OHIP numbered its log again. Stop reading and say so; see the module doc."""
        self.telemetry.count(Metric.OFFSET_REGRESSIONS)
        if not self.regressed:
            log.error(
                "OHIP sent offset %s after offset %s had been handled: its offsets went backwards. "
                "Closing the stream; the heartbeat says 'regressed' so that the poll fallback carries "
                "the events (docs/runbook.md, offset regression)",
                event.offset,
                event.high_water,
            )
        self.regressed = True
        self.status = StreamState.REGRESSED
        return 1000, "offset regression"

    def _park(self, frame: str | bytes, reason: str, offset: int | None) -> None:
        """Park `frame` under malformed/ in the background, retrying until S3 takes it (or the
        consumer stops). A tracked `offset` is acknowledged in the watermark only once it is
        parked, so the checkpoint never passes an event that exists nowhere."""
        self.telemetry.count(Metric.MALFORMED_EVENTS)
        task = asyncio.create_task(self._park_until_done(frame, reason, offset))
        self._parks.add(task)
        task.add_done_callback(self._parks.discard)

    async def _park_until_done(self, frame: str | bytes, reason: str, offset: int | None) -> None:
        watermark, delay = self.watermark, self.options.park_retry
        bucket, chain = self.settings.bucket_name, self.settings.chain_code
        text = None if offset is None else str(offset)
        while True:
            try:
                if self.s3 is None or not bucket:
                    raise RuntimeError("no bucket to park in (RELAY_BUCKET_NAME)")
                key = await self._blocking(
                    park_frame, self.s3, bucket, chain, frame, reason, text, time.time()
                )
            except Exception as exc:
                log.warning(
                    "cannot park the event at offset %s (%s); trying again in %.1fs",
                    text,
                    type(exc).__name__,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                if self._stop.is_set():
                    log.error("stopping with the event at offset %s not parked: it is replayed", text)
                    return
                delay = min(delay * 2, 30.0)
                continue
            self.parked += 1
            log.error("event at offset %s parked in s3://%s/%s", text, bucket, key)
            if offset is not None and watermark is self.watermark and watermark.is_pending(offset):
                watermark.ack(offset)
            return

    def _beat(self) -> None:
        """Write the heartbeat now (after a state change), without waiting for it."""

        async def beat() -> None:
            try:
                await self._write_heartbeat()
            except Exception as exc:
                log.warning("heartbeat write failed (%s); the periodic one will follow", type(exc).__name__)

        task = asyncio.create_task(beat())
        self._beats.add(task)
        task.add_done_callback(self._beats.discard)

    def _log_suppressed(self) -> None:
        if self.suppressed != self._suppressed_logged:
            log.info(
                "skipped %s replayed events in all that the poll fallback had already published (seen-set)",
                self.suppressed,
            )
            self._suppressed_logged = self.suppressed

    async def _refresh_fallback_mark(self) -> None:
        self._mark_read_at = time.monotonic()
        try:
            record = await self._blocking(self.state.get_fallback)
        except Exception as exc:
            log.warning("cannot read the fallback state (%s)", type(exc).__name__)
            return
        self.fallback_mark = record.last_polled_occurred_at if record else None

    def _log_closed(self, closed: proto.Closed) -> proto.Closed:
        if closed.outcome.kind is CloseKind.EXPECTED:
            log.info("the server closed the stream after our complete (last offset %s)", closed.last_offset)
        return closed

    @staticmethod
    async def _send(ws: ClientConnection, core: proto.StreamProtocol) -> None:
        for frame in core.data_to_send():
            try:
                await ws.send(frame)
            except ConnectionClosed:
                # The server closed first (a ping racing its close, say): the next ws.recv() raises
                # the same close, which _drive logs and classifies like any other.
                return

    # -- lease ------------------------------------------------------------------------------

    async def _acquire_lease(self) -> bool:
        """Wait until this task holds the lease; False when stopped first."""
        announced = False
        while not self._stop.is_set():
            now = time.time()
            try:
                acquired = await self._blocking(
                    self.state.acquire_lease, self.owner, self.options.lease_duration, now
                )
            except Exception as exc:
                log.warning("cannot read the lease (%s); trying again", type(exc).__name__)
                acquired = False
            if acquired:
                log.info("lease acquired by %s", self.owner)
                self.holding_lease = True
                self._lease_confirmed_at = now
                return True
            if not announced:
                try:
                    lease = await self._blocking(self.state.get_lease)
                except Exception as exc:  # only for the log line: standing by all the same
                    log.warning("cannot read the lease (%s); trying again", type(exc).__name__)
                else:
                    holder = lease.owner if lease else "?"
                    log.info("another task holds the stream (%s); standing by", holder)
                    announced = True
            self.status = StreamState.STANDBY
            await self._sleep(self.options.lease_renew_interval)
        return False

    async def _take_over(self) -> None:
        """Just after acquiring the lease: continue from where the previous holder stopped.

        Another task may have moved the checkpoint while this one stood by, and may have sent a
        `complete` less than 10 s ago (the gap before the next subscribe is per application and
        chain, not per task); its final heartbeat says when it stopped.
        """
        await self._refresh_fallback_mark()
        # Bounded: the lease keeper starts after this, so the lease must still be ours when it does.
        within = self.options.lease_renew_interval
        checkpoint = await self._read_state("checkpoint", self.state.get_checkpoint, give_up_after=within)
        current = self.watermark.value
        if checkpoint is not None and (current is None or checkpoint.offset > current):
            if self.watermark.pending:
                await self._settle_publisher()
            self.watermark = OffsetWatermark(checkpoint.offset)
            self.checkpointed = checkpoint.offset
        heartbeat = await self._read_state("heartbeat", self.state.get_heartbeat, give_up_after=within)
        if (
            heartbeat is not None
            and heartbeat.owner != self.owner
            and heartbeat.state in (StreamState.DRAINING, StreamState.STOPPED)
        ):
            loop = asyncio.get_running_loop()
            completed_at = loop.time() - max(0.0, time.time() - heartbeat.updated_at)
            if self._last_complete_at is None or completed_at > self._last_complete_at:
                self._last_complete_at = completed_at

    async def _read_state(
        self, what: str, read: Callable[[], _T], *, give_up_after: float | None = None
    ) -> _T:
        """`read()` in a thread, tried again with backoff while DynamoDB fails in a way worth
        retrying (throttling beyond botocore's retries, 5xx, no connection): a warning each time,
        not a crash. Other errors are raised at once; a retryable one once `give_up_after` seconds
        have passed; `_Stopped` if a stop comes first."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay = 0.5
        while True:
            try:
                return await self._blocking(read)
            except StateStoreError as exc:
                if not exc.retryable:  # a missing table, no permission: trying again cannot help
                    raise
                if give_up_after is not None and loop.time() - started + delay > give_up_after:
                    log.error("cannot read the %s (%s); giving up", what, exc.code)
                    raise
                log.warning("cannot read the %s (%s); trying again in %.1fs", what, exc.code, delay)
            await self._sleep(delay)
            if self._stop.is_set():
                raise _Stopped
            delay = min(delay * 2, 5.0)

    async def _lease_keeper(self) -> None:
        """Renew the lease every `lease_renew_interval`; set `_lease_lost` when it is not surely ours.

        DynamoDB holds the lease until `now + lease_duration` of the last renewal that succeeded;
        another task may take it from then on. So this task stops consuming one renew interval
        before that moment unless a renewal has answered by then: a renewal that hangs (DynamoDB or
        the network slow, botocore retrying) must not keep the connection open past the lease, or a
        successor would connect while this one still reads. A renewal still running then is left
        to finish in its thread; whatever it answers, the lease is taken again the normal way.
        """
        duration, interval = self.options.lease_duration, self.options.lease_renew_interval
        next_at = self._lease_confirmed_at + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.time()))
            now = time.time()
            safe_until = self._lease_confirmed_at + duration - interval
            ok = await self._renew_lease(now, safe_until)
            if ok:
                self._lease_confirmed_at = now
                next_at = now + interval
                continue
            left = safe_until - time.time()
            if ok is False or left <= 0:
                self.lose_lease(
                    "another task holds the stream now"
                    if ok is False
                    else f"no lease renewal succeeded for {time.time() - self._lease_confirmed_at:.1f}s"
                )
                return
            # Failed but the lease is still ours for a while: try again sooner as its end nears.
            next_at = time.time() + min(interval, max(interval / 4, left / 2))

    async def _renew_lease(self, now: float, safe_until: float) -> bool | None:
        """True: renewed; False: someone else holds the lease; None: no answer by `safe_until`."""
        renewal = asyncio.ensure_future(
            self._blocking(self.state.renew_lease, self.owner, self.options.lease_duration, now)
        )
        # Once given up on (or the keeper cancelled), its outcome is not needed: retrieved here,
        # so that asyncio does not report an exception nobody read.
        renewal.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            return await wait_within(renewal, max(0.0, safe_until - now))
        except TimeoutError:
            log.warning("the lease renewal has not answered for %.1fs", time.time() - now)
            return None
        except Exception as exc:
            log.warning("cannot renew the lease (%s)", type(exc).__name__)
            return None

    def _close_connection(self, reason: str) -> None:
        """Close the open connection now, whatever `_drive` is waiting for (a full publisher, say):
        the lease is the authority on who may be connected, not the consumer's progress."""
        ws = self._ws
        if ws is None:
            return
        task = asyncio.create_task(ws.close(code=1000, reason=reason))
        self._beats.add(task)
        task.add_done_callback(self._beats.discard)

    # -- checkpoint, heartbeat, metrics, token ----------------------------------------------

    async def _every(self, interval: float, action: Callable[[], Any]) -> None:
        while True:
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "%s failed (%s); trying again in %.0fs",
                    action.__name__.strip("_").replace("_", " "),
                    one_line(exc),
                    interval,
                )
                log.debug("the failure in full", exc_info=True)
            await asyncio.sleep(interval)

    async def _write_checkpoint(self) -> None:
        value = self.watermark.value
        if value is None or (self.checkpointed is not None and value <= self.checkpointed):
            return
        await self._blocking(self.state.advance_checkpoint, value, self.owner)
        self.checkpointed = value
        self.telemetry.gauge(Metric.CHECKPOINT_OFFSET, value)

    async def _write_heartbeat(self) -> None:
        """The heartbeat item belongs to the lease holder: a task on standby writes nothing (it
        would overwrite the active task's report and could switch the fallback on)."""
        if not self.holding_lease:
            return
        self._log_suppressed()
        if self.managed is not None:
            # The scheduler reports the session in its worker item; only the mark is read here.
            due = self._mark_read_at is None or (
                time.monotonic() - self._mark_read_at >= self.managed.fallback_mark_interval
            )
            if due:
                await self._refresh_fallback_mark()
            return
        await self._refresh_fallback_mark()
        heartbeat = Heartbeat(
            state=self.status,
            owner=self.owner,
            updated_at=time.time(),
            last_frame_at=self.last_frame_at,
            last_event_at=self.last_event_at,
            last_offset=self.last_offset,
            checkpoint=self.checkpointed,
            lag_seconds=self.lag_seconds,
            detail=self._detail(),
        )
        await self._blocking(self.state.put_heartbeat, heartbeat)

    def _detail(self) -> str | None:
        if self.status is StreamState.AUTH_FAILED:
            status = f"HTTP {self.auth_refused_status}" if self.auth_refused_status else "refused"
            text = f"OHIP refused the credentials ({status}) {self.auth_refusals} times in a row"
            if self.next_delay is not None:
                text += f"; next try within {self.next_delay:.0f}s"
            return text
        outcome = self.last_outcome
        if outcome is None:
            return None
        if outcome.code is None:  # no connection was made (the token request, say)
            text = f"last attempt: {outcome.reason}"
        else:
            text = f"last close {outcome.code}: {outcome.reason}"
        if self.status is StreamState.BACKOFF and self.next_delay is not None:
            text += f"; reconnecting within {self.next_delay:.0f}s"
        return text

    async def _flush_metrics(self) -> None:
        samples = self.publisher.take_latency_samples()
        if samples:  # the metric is the interval's maximum: one observation, not thousands
            self.telemetry.observe(Metric.PUBLISH_LATENCY, max(samples))
        retried = self.publisher.stats.retried
        if retried > self._retried_reported:
            self.telemetry.count(Metric.PUBLISH_RETRIES, retried - self._retried_reported)
            self._retried_reported = retried
        self.telemetry.flush()

    async def _refresh_token(self) -> None:
        """Renew the OAuth token ahead of its expiry, so a reconnect never waits for one. While the
        credentials are refused the connection loop alone asks, on its slow schedule."""
        if self.auth_refusals:
            return
        try:
            await self.tokens.get()
        except AuthError as exc:
            log.debug("token refresh ahead of expiry failed: %s", exc)  # the connection loop reports

    # -- shutdown ---------------------------------------------------------------------------

    async def _settle_publisher(self, within: float | None = None) -> None:
        """Wait until SQS acknowledged (or refused) everything handed to the publisher, at most
        `within` seconds (once that ran out, later calls return at once)."""
        if self._flush_timed_out:
            return
        try:
            await asyncio.wait_for(self.publisher.flush(), within)
        except TimeoutError:
            self._flush_timed_out = True
            log.warning(
                "%d events not acknowledged by SQS within %.0fs of the stop; they are replayed from "
                "checkpoint %s by the next start",
                self.publisher.buffered,
                within or 0.0,
                describe_checkpoint(self.checkpointed),
            )
        except Exception:
            log.exception("flushing the publisher failed; unacknowledged events will be replayed")

    async def _shutdown(self) -> None:
        log.info("stopping: final flush, checkpoint, heartbeat and lease release")
        await self._settle_publisher(self.options.stop_flush_timeout)
        if self._parks:  # a parked event is acknowledged once S3 has it: give them a moment
            await asyncio.wait(set(self._parks), timeout=10.0)
        try:
            await self._write_checkpoint()
        except Exception:
            log.exception(
                "final checkpoint write failed; the next start replays from %s",
                describe_checkpoint(self.checkpointed),
            )
        self.status = StreamState.FAILED if self.exit_status else StreamState.STOPPED
        if self.managed is not None:
            # The scheduler releases the lease (with when `complete` was sent) and reports the end.
            self._log_suppressed()
            log.info("session stopped at checkpoint %s", describe_checkpoint(self.checkpointed))
            return
        with contextlib.suppress(Exception):
            await self._write_heartbeat()
        if self.holding_lease:
            with contextlib.suppress(Exception):
                await self._blocking(self.state.release_lease, self.owner)
            self.holding_lease = False
        with contextlib.suppress(Exception):
            await self._flush_metrics()
        self._log_suppressed()
        log.info("stopped at checkpoint %s", describe_checkpoint(self.checkpointed))

    # -- helpers ----------------------------------------------------------------------------

    def _blocking(self, call: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """`call(*args)` in one of the consumer's threads."""
        return asyncio.get_running_loop().run_in_executor(self._threads, call, *args)

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._lease_lost.is_set()

    async def _sleep(self, seconds: float) -> None:
        """A pause that ends early on stop or lease loss."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)


# The publisher builds every SendMessageBatch request itself (ids, sizes and attributes checked in
# `SqsPublisher`), so botocore's client-side parameter validation, a walk over every entry of every
# request, only costs CPU; SQS still validates each request.
# A SendMessageBatch normally answers in milliseconds: one that hangs is given up (and retried) in
# seconds, not botocore's default 60, so that a stalled connection does not hold a batch for a minute.
PUBLISH_CONNECT_TIMEOUT = 5.0
PUBLISH_READ_TIMEOUT = 20.0
PUBLISHER_BOTO_CONFIG = Config(
    parameter_validation=False, connect_timeout=PUBLISH_CONNECT_TIMEOUT, read_timeout=PUBLISH_READ_TIMEOUT
)
# The relay's DynamoDB calls (checkpoint, lease, heartbeat, seen-set) are single items that answer
# in milliseconds. botocore's default 60 s timeouts, for each of its 6 attempts, would let one call
# that hangs hold a thread for minutes: past the lease (the keeper gives it up, but the thread stays
# busy) and past ECS's stop timeout (the process waits for its threads before it exits). Bounded
# here: a hung attempt is given up after seconds and retried like any other transient error.
STATE_CONNECT_TIMEOUT = 3.0
STATE_READ_TIMEOUT = 5.0
STATE_BOTO_CONFIG = Config(connect_timeout=STATE_CONNECT_TIMEOUT, read_timeout=STATE_READ_TIMEOUT)


def options_for(settings: Settings) -> StreamOptions:
    return StreamOptions(
        lease_duration=settings.lease_seconds,
        lease_renew_interval=settings.lease_seconds / 3,
        heartbeat_interval=settings.heartbeat_seconds,
    )


@contextlib.asynccontextmanager
async def open_consumer(
    settings: Settings,
    options: StreamOptions | None = None,
    *,
    owner: str | None = None,
    reload_credentials: Callable[[], Settings] | None = None,
) -> AsyncIterator[StreamConsumer]:
    """A consumer wired to SQS, DynamoDB and the OAuth endpoint from the settings; its publisher is
    started on entry and closed on exit. `reload_credentials`: see `StreamConsumer`."""
    from .runtime import aws_client, aws_credentials

    opts = options or options_for(settings)
    holder: list[StreamConsumer] = []
    http_transport = settings.sqs_transport is SqsTransport.HTTP

    def blocking_parts() -> tuple[Any, Any, Any, Credentials | None]:
        # boto3 clients load their service models from disk, and the credential chain may ask the
        # container's metadata endpoint: seconds on a busy machine, kept off the event loop (where
        # another consumer's lease keeper may be waiting to run).
        return (
            aws_client(settings, "sqs", config=PUBLISHER_BOTO_CONFIG),
            aws_client(settings, "s3") if settings.bucket_name else None,
            aws_client(settings, "dynamodb", config=STATE_BOTO_CONFIG),
            aws_credentials(settings) if http_transport else None,
        )

    if not settings.bucket_name:
        raise StartupError(
            "RELAY_BUCKET_NAME: missing (the stream consumer parks events it cannot publish there, "
            "and stores oversize ones)"
        )
    sqs, s3, dynamodb, credentials = await asyncio.to_thread(blocking_parts)
    transport: SqsHttpTransport | None = None
    if http_transport:
        transport = SqsHttpTransport(
            sqs,
            credentials,
            connect_timeout=PUBLISH_CONNECT_TIMEOUT,
            read_timeout=PUBLISH_READ_TIMEOUT,
        )
    publisher = SqsPublisher(
        sqs,
        settings.queue_url,
        transport=transport,
        on_ack=lambda token: holder[0].on_published(token),
        on_failure=lambda failure: holder[0].on_publish_failure(failure),
        config=PublisherConfig(
            max_buffered=opts.max_in_flight,
            claim_check_bucket=settings.bucket_name or None,
        ),
        s3_client=s3,
    )
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
        consumer = StreamConsumer(
            settings,
            publisher=publisher,
            state=StateStore(dynamodb, settings.table_name, settings.chain_code),
            tokens=AsyncTokenProvider(OAuthParams.from_settings(settings), http, clock=time.time),
            telemetry=Telemetry(service="stream", emit=settings.emit_metrics),
            options=opts,
            owner=owner,
            seen=SeenSet(dynamodb, settings.table_name, ttl_days=settings.seen_ttl_days),
            s3=s3,
            reload_credentials=reload_credentials,
        )
        holder.append(consumer)
        try:
            await publisher.start()
        except PublishError as exc:
            raise StartupError(str(exc)) from exc
        try:
            yield consumer
        finally:
            await publisher.close(drain_timeout=5.0)


# After SIGTERM the process should be gone well within ECS's 120 s stop timeout. If it is still there
# after this long, where every thread and task waits is written to the log (file and line numbers
# only: no data), so that a stop that hangs explains itself (chaos seeds 569 and 597 did, rarely).
STOP_WATCHDOG_SECONDS = 90.0


def log_task_stacks() -> None:
    """Log where every pending asyncio task of the running loop waits (a stop that hangs)."""
    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        log.error("still running %s after the stop was requested:\n%s", task.get_name(), out.getvalue())


def arm_stop_watchdog(loop: asyncio.AbstractEventLoop, seconds: float = STOP_WATCHDOG_SECONDS) -> None:
    """After `seconds`: the asyncio tasks' stacks (from the loop, if it still runs) and every thread's
    stack (from faulthandler's own thread, even if the loop is blocked) go to the log / stderr. The
    process normally exits first, and nothing is written."""
    faulthandler.dump_traceback_later(seconds, exit=False)
    loop.call_later(seconds, log_task_stacks)


def stop_on_signals(request_stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call `request_stop` (a graceful stop); the first also arms the stop
    watchdog. Then what start-up created (botocore's models and clients, ~85k objects), which lives
    as long as the process, is moved out of the collector's reach: a full collection no longer walks
    it (one such pass took ~50 ms here, a stall of the event loop and of every event in flight)."""
    import signal

    loop = asyncio.get_running_loop()
    armed: list[bool] = []

    def stop() -> None:
        if not armed:
            armed.append(True)
            arm_stop_watchdog(loop)
        request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    gc.freeze()


async def run_stream(
    settings: Settings,
    options: StreamOptions | None = None,
    *,
    reload_credentials: Callable[[], Settings] | None = None,
) -> int:
    """Run the consumer until SIGTERM/SIGINT; returns the exit status."""
    async with open_consumer(settings, options, reload_credentials=reload_credentials) as consumer:
        stop_on_signals(consumer.request_stop)
        return await consumer.run()
