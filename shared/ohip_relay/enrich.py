"""The optional enricher: each relay event plus the current state of its resource ("GET orchestration").

An event says that reservation 919074 changed; the enricher reads the reservation as it is now
through the OHIP REST APIs and publishes the canonical event with three more fields to a second
queue, so that consumers choose the raw queue or the enriched one:

* `resourceStatus`: `"found"`, `"not_found"` (the REST API answered 404: deleted or purged; a
  cancelled reservation is still found, with its cancelled status) or `"unrouted"` (no route for
  the event's module and name, or the route needs a field the event does not have: passed on
  unenriched and counted);
* `resource`: the JSON object the REST call returned, or null;
* `resourceFetchedAt`: when the call answered (UTC, milliseconds), null when unrouted.

Routing (`RoutingTable`): a JSON file (`OHIP_ENRICH_ROUTES`, default the packaged
`routes/enrich-routes.json`) maps a module, optionally narrowed to event names, to a REST path
template with the placeholders `{hotelId}`, `{primaryKey}` and `{chainCode}`.

HTTP (`ResourceFetcher`), per record:

* 401: the shared token cache is invalidated and the call repeated once; a second 401 fails the record;
* 429: `Retry-After` (seconds or an HTTP date) is honoured, and every worker of the invocation waits
  it out, as long as the wait fits in the invocation's remaining time; otherwise the record fails
  and SQS delivers it again later;
* 5xx, timeouts, connection errors: retried with jittered exponential backoff a few times, then the
  record fails (SQS redelivery, then the dead-letter queue after maxReceiveCount);
* 404: recorded in the message (`not_found`), not an error;
* any other answer (400, 403...): the record fails.

Batches (`Enricher.run`): records are read (claim-check pointers resolved from S3), fetched on a
small thread pool (`RELAY_ENRICH_CONCURRENCY`, default 4) and sent in their original order with
`SqsBatchSender`. A record that cannot be read (a poison message) fails on every delivery and
reaches the dead-letter queue through the queue's redrive, without holding up its neighbours. On a
FIFO queue the records of one message group (one resource) are handled in order by one worker,
and after a failure the group's later records fail too, so a resource's events never overtake
each other. Logs carry identifiers and status codes, never bodies or resources.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from importlib import resources
from pathlib import Path
from string import Formatter
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import httpx

from .auth import AuthError, OAuthParams, SyncTokenProvider, Token
from .config import ConfigError
from .events import CanonicalEvent, MalformedEvent, canonical_module, format_instant
from .publish import OutboundMessage
from .telemetry import Metric, Telemetry

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from .config import Settings
    from .fallback import SendResult

log = logging.getLogger("ohip_relay.enrich")

ROUTES_RESOURCE = "routes/enrich-routes.json"
ROUTES_VERSION = 1
PLACEHOLDERS = frozenset({"hotelId", "primaryKey", "chainCode"})
ENRICHED_FIELDS = ("resourceStatus", "resource", "resourceFetchedAt")


class ResourceStatus(StrEnum):
    FOUND = "found"
    NOT_FOUND = "not_found"
    UNROUTED = "unrouted"


class RecordFailed(Exception):
    """A record that must go back to SQS. The message names a status or a field, never data."""


# ---------------------------------------------------------------------------------------------
# Routing


@dataclass(frozen=True)
class Route:
    module: str
    events: frozenset[str] | None  # None: every event of the module
    path: str | None  # None: matching events are passed on unenriched

    @property
    def fields(self) -> frozenset[str]:
        if self.path is None:
            return frozenset()
        return frozenset(name for _, name, _, _ in Formatter().parse(self.path) if name)


def _normal_name(value: str) -> str:
    return " ".join(value.upper().split())


class RoutingTable:
    """Module/event name -> OHIP REST path. An entry naming events wins over the module's entry."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        self._by_event: dict[tuple[str, str], Route] = {}
        self._by_module: dict[str, Route] = {}
        for route in self.routes:
            if route.events is None:
                if route.module in self._by_module:
                    raise ValueError(f"module {route.module} is routed twice")
                self._by_module[route.module] = route
                continue
            for event in route.events:
                if (route.module, event) in self._by_event:
                    raise ValueError(f"event {route.module}/{event} is routed twice")
                self._by_event[(route.module, event)] = route

    @classmethod
    def load(cls, path: str = "") -> RoutingTable:
        """The table in `path`, or the packaged default when `path` is empty. `ConfigError` names
        OHIP_ENRICH_ROUTES and what is wrong."""
        name = path or f"the packaged {ROUTES_RESOURCE}"
        try:
            if path:
                text = Path(path).read_text(encoding="utf-8")
            else:
                text = resources.files("ohip_relay").joinpath(ROUTES_RESOURCE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"OHIP_ENRICH_ROUTES: cannot read {name} ({type(exc).__name__})") from exc
        try:
            return cls.parse(text)
        except ValueError as exc:
            raise ConfigError(f"OHIP_ENRICH_ROUTES: {name}: {exc}") from exc

    @classmethod
    def parse(cls, text: str) -> RoutingTable:
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError("not JSON") from None
        if not isinstance(data, Mapping) or data.get("version") != ROUTES_VERSION:
            raise ValueError(f'expected an object with "version": {ROUTES_VERSION}')
        entries = data.get("routes")
        if not isinstance(entries, list):
            raise ValueError('expected a "routes" list')
        return cls(_route(entry, i) for i, entry in enumerate(entries))

    def route_for(self, event: CanonicalEvent) -> Route | None:
        try:
            module = canonical_module(event.module_name)
        except MalformedEvent:
            return None
        return self._by_event.get((module, _normal_name(event.event_name))) or self._by_module.get(module)

    def path_for(self, event: CanonicalEvent) -> str | None:
        """The REST path for the event's resource, or None (unrouted)."""
        route = self.route_for(event)
        if route is None or route.path is None:
            return None
        values = {"hotelId": event.hotel_id, "primaryKey": event.primary_key, "chainCode": event.chain_code}
        if any(not values[name] for name in route.fields):
            return None  # e.g. a chain-level event on a per-hotel route
        return route.path.format(**{k: quote(v, safe="") for k, v in values.items() if v})


def _route(entry: object, index: int) -> Route:
    where = f"routes[{index}]"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected an object")
    unknown = sorted(set(entry) - {"module", "events", "path", "comment"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    module = entry.get("module")
    if not isinstance(module, str) or not module.strip():
        raise ValueError(f"{where}.module: expected a module name")
    events = entry.get("events")
    if events is not None and (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) and e.strip() for e in events)
    ):
        raise ValueError(f"{where}.events: expected a non-empty list of event names")
    path = entry.get("path")
    if path is not None:
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "?# \r\n"):
            raise ValueError(
                f"{where}.path: expected an absolute path without query, e.g. /crm/v1/profiles/{{primaryKey}}"
            )
        try:
            parts = [(n, spec, conv) for _, n, spec, conv in Formatter().parse(path) if n is not None]
        except ValueError:
            raise ValueError(f"{where}.path: unbalanced braces") from None
        if any(spec or conv for _, spec, conv in parts):
            raise ValueError(f"{where}.path: placeholders take no format spec or conversion")
        names = {name for name, _, _ in parts}
        if not names <= PLACEHOLDERS:
            raise ValueError(
                f"{where}.path: unknown placeholder {sorted(names - PLACEHOLDERS)[0]!r} "
                f"(allowed: {', '.join(sorted(PLACEHOLDERS))})"
            )
    elif "path" not in entry:
        raise ValueError(f"{where}.path: missing (null leaves the events unenriched)")
    try:
        canonical = canonical_module(module)
    except MalformedEvent:
        raise ValueError(f"{where}.module: expected a module name") from None
    return Route(
        module=canonical,
        events=frozenset(_normal_name(e) for e in events) if events is not None else None,
        path=path,
    )


# ---------------------------------------------------------------------------------------------
# Fetching one resource


@dataclass(frozen=True)
class EnrichOptions:
    concurrency: int = 4
    request_timeout_s: float = 10.0
    server_error_attempts: int = 3
    """Tries of one call that keeps answering 5xx (or timing out) before the record fails."""
    backoff_base_s: float = 0.5
    backoff_max_s: float = 4.0
    throttle_attempts: int = 3
    """429s honoured for one call before the record fails."""
    default_retry_after_s: float = 1.0
    """The wait after a 429 without a usable Retry-After."""
    send_reserve_s: float = 5.0
    """Of the invocation's remaining time, what fetching never uses (reading S3, sending to SQS)."""
    claim_check_prefix: str = "oversize/enriched/"

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.server_error_attempts < 1 or self.throttle_attempts < 0:
            raise ValueError("concurrency and server_error_attempts must be at least 1")


@dataclass(frozen=True)
class Fetched:
    status: ResourceStatus
    resource: dict[str, Any] | None = None
    fetched_at: datetime | None = None
    retries: int = 0


class _Throttle:
    """A 429's Retry-After pauses every worker of the fetcher, not only the one that got it."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._until = 0.0

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, self._clock() + seconds)

    def wait_needed(self) -> float:
        with self._lock:
            return max(0.0, self._until - self._clock())


class ResourceFetcher:
    """GETs the resource an event names, with the HTTP rules in the module docstring. Thread-safe."""

    def __init__(
        self,
        http: httpx.Client,
        tokens: SyncTokenProvider,
        routes: RoutingTable,
        *,
        gateway_url: str,
        app_key: str,
        options: EnrichOptions | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self.routes = routes
        self._base = gateway_url.rstrip("/")
        self._app_key = app_key
        self.options = options or EnrichOptions()
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._throttle = _Throttle(clock)
        self.requests = 0

    def fetch(self, event: CanonicalEvent, remaining: Callable[[], float]) -> Fetched:
        """The resource of `event`; `remaining()` is the invocation's time left in seconds.
        Raises `RecordFailed` when the record must go back to SQS."""
        path = self.routes.path_for(event)
        if path is None:
            return Fetched(ResourceStatus.UNROUTED)
        opts = self.options
        url = self._base + path
        refreshed = False
        server_errors = 0
        throttled = 0
        retries = 0
        while True:
            pause = self._throttle.wait_needed()
            if pause > 0:
                if pause > self._budget(remaining):
                    raise RecordFailed("rate limited (429): Retry-After goes beyond the remaining time")
                self._sleep(pause)
            budget = self._budget(remaining)
            if budget <= 0.5:
                raise RecordFailed("no time left for the REST call")
            token = self._token()
            try:
                response = self._get(url, event, token, timeout=min(opts.request_timeout_s, budget))
            except httpx.TransportError as exc:
                problem = f"REST call failed ({type(exc).__name__})"
                server_errors += 1
                retries += 1
                self._back_off(server_errors, remaining, problem)
                continue
            status = response.status_code
            if status == 200:
                return Fetched(ResourceStatus.FOUND, _resource(response), self._now(), retries)
            if status == 404:
                return Fetched(ResourceStatus.NOT_FOUND, None, self._now(), retries)
            if status == 401:
                if refreshed:
                    raise RecordFailed("REST call refused (HTTP 401) with a fresh token")
                refreshed = True
                retries += 1
                self._invalidate(token)
                continue
            if status == 429:
                throttled += 1
                retries += 1
                wait = _retry_after(response.headers.get("Retry-After"), self._wall_clock())
                wait = opts.default_retry_after_s if wait is None else wait
                if throttled > opts.throttle_attempts:
                    raise RecordFailed("rate limited (429) too many times")
                if wait > self._budget(remaining) - 0.5:
                    raise RecordFailed("rate limited (429): Retry-After goes beyond the remaining time")
                self._throttle.pause(wait)
                continue
            if status >= 500:
                server_errors += 1
                retries += 1
                self._back_off(server_errors, remaining, f"REST call failed (HTTP {status})")
                continue
            raise RecordFailed(f"REST call refused (HTTP {status})")

    # -- helpers -----------------------------------------------------------------------------

    def _budget(self, remaining: Callable[[], float]) -> float:
        return remaining() - self.options.send_reserve_s

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._wall_clock(), UTC)

    def _token(self) -> Token:
        try:
            return self._tokens.get()
        except AuthError as exc:
            raise RecordFailed(f"no OAuth token ({exc.status or 'unreachable'})") from exc

    def _invalidate(self, used: Token) -> None:
        """Drop the token after a 401, unless another worker already replaced it."""
        try:
            current = self._tokens.get()
        except AuthError:
            return
        if current.access_token == used.access_token:
            self._tokens.invalidate()

    def _get(self, url: str, event: CanonicalEvent, token: Token, *, timeout: float) -> httpx.Response:
        headers = {
            "Authorization": token.authorization(),
            "x-app-key": self._app_key,
            "x-hotelid": event.hotel_id or event.chain_code,
            "Accept": "application/json",
        }
        self.requests += 1
        return self._http.get(url, headers=headers, timeout=httpx.Timeout(timeout))

    def _back_off(self, failures: int, remaining: Callable[[], float], problem: str) -> None:
        opts = self.options
        if failures >= opts.server_error_attempts:
            raise RecordFailed(f"{problem}, {failures} times")
        ceiling = min(opts.backoff_max_s, opts.backoff_base_s * 2 ** (failures - 1))
        with self._rng_lock:
            delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if delay > self._budget(remaining) - 0.5:
            raise RecordFailed(f"{problem}; no time left to retry")
        self._sleep(delay)


def _resource(response: httpx.Response) -> dict[str, Any]:
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        raise RecordFailed("REST call answered 200 with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise RecordFailed("REST call answered 200 with a body that is not a JSON object")
    return data


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0 if seconds == seconds else None
    return seconds


# ---------------------------------------------------------------------------------------------
# A batch of SQS records


@dataclass(frozen=True)
class InputRecord:
    message_id: str
    body: str = field(repr=False)
    group_id: str | None = None  # MessageGroupId on a FIFO queue

    @classmethod
    def from_lambda(cls, record: Mapping[str, Any]) -> InputRecord:
        attributes = record.get("attributes") or {}
        return cls(
            message_id=str(record.get("messageId", "")),
            body=str(record.get("body", "")),
            group_id=attributes.get("MessageGroupId") or None,
        )


@dataclass
class BatchReport:
    """What one batch did (identifiers and counts only: safe to log)."""

    failed: list[str] = field(default_factory=list)  # message ids to report as batchItemFailures
    enriched: int = 0
    not_found: int = 0
    unrouted: int = 0
    poison: int = 0
    retries: int = 0

    def summary(self) -> str:
        return (
            f"enriched {self.enriched}, not found {self.not_found}, unrouted {self.unrouted}, "
            f"failed {len(self.failed)} (unreadable {self.poison}), retries {self.retries}"
        )


class Sender(Protocol):
    def send(self, messages: Sequence[OutboundMessage]) -> SendResult: ...


@dataclass
class _Done:
    record: InputRecord
    event: CanonicalEvent | None = None
    fetched: Fetched | None = None
    problem: str = ""
    poison: bool = False


def enriched_document(event: CanonicalEvent, fetched: Fetched) -> dict[str, Any]:
    """The enriched message body: the canonical event's fields, then the three enrichment fields."""
    return {
        **event.to_dict(),
        "resourceStatus": fetched.status.value,
        "resource": fetched.resource,
        "resourceFetchedAt": format_instant(fetched.fetched_at) if fetched.fetched_at else None,
    }


def enriched_message(event: CanonicalEvent, fetched: Fetched) -> OutboundMessage:
    attributes = event.attribute_values()
    attributes["resourceStatus"] = fetched.status.value
    body = json.dumps(enriched_document(event, fetched), separators=(",", ":"), ensure_ascii=True)
    return OutboundMessage(
        body=body,
        attributes=attributes,
        group_id=event.message_group_id(),
        dedup_id=event.deduplication_id(),
        event_key=event.event_key,
        event_id=event.event_id,
    )


class Enricher:
    """Enriches a batch of relay records and sends the results to the enriched queue."""

    def __init__(
        self,
        fetcher: ResourceFetcher,
        sender: Sender,
        telemetry: Telemetry,
        *,
        s3: S3Client | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.sender = sender
        self.telemetry = telemetry
        self._s3 = s3

    def run(self, records: Sequence[InputRecord], remaining: Callable[[], float]) -> BatchReport:
        report = BatchReport()
        if not records:
            return report
        groups: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            groups.setdefault(record.group_id or f"\x00{index}", []).append(index)
        done: list[_Done | None] = [None] * len(records)

        def work(indexes: list[int]) -> None:
            failed = False
            for i in indexes:
                if failed:  # keep the resource's events in order: its later events wait too
                    done[i] = _Done(records[i], problem="an earlier event of its message group failed")
                    continue
                done[i] = self._one(records[i], remaining)
                failed = bool(done[i].problem)  # type: ignore[union-attr]

        workers = min(self.fetcher.options.concurrency, len(groups))
        if workers == 1:
            for indexes in groups.values():
                work(indexes)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="enrich") as pool:
                for future in [pool.submit(work, indexes) for indexes in groups.values()]:
                    future.result()

        ready: list[_Done] = []
        for item in done:
            assert item is not None
            if item.problem:
                self._fail(report, item)
            else:
                ready.append(item)
        if ready:
            messages = [enriched_message(d.event, d.fetched) for d in ready if d.event and d.fetched]
            result = self.sender.send(messages)
            for index in sorted(set(result.unsent) | set(result.rejected)):
                item = ready[index]
                item.problem = f"not sent to the enriched queue ({result.code or 'rejected'})"
                self._fail(report, item)
            for index in result.acknowledged:
                self._count(report, ready[index])
        order = {record.message_id: i for i, record in enumerate(records)}
        report.failed.sort(key=lambda message_id: order.get(message_id, 0))
        self.telemetry.count(Metric.ENRICH_RETRIES, report.retries)
        return report

    def _one(self, record: InputRecord, remaining: Callable[[], float]) -> _Done:
        try:
            event = self._read(record)
        except MalformedEvent as exc:
            return _Done(record, problem=str(exc), poison=True)
        except RecordFailed as exc:
            return _Done(record, problem=str(exc))
        try:
            fetched = self.fetcher.fetch(event, remaining)
        except RecordFailed as exc:
            return _Done(record, event=event, problem=str(exc))
        except Exception as exc:  # a bug must not take the batch's other records down with it
            return _Done(record, event=event, problem=f"unexpected error ({type(exc).__name__})")
        return _Done(record, event=event, fetched=fetched)

    def _read(self, record: InputRecord) -> CanonicalEvent:
        """The canonical event a record carries (its body, or the S3 object a claim check names)."""
        try:
            document = json.loads(record.body)
        except (ValueError, UnicodeDecodeError):
            raise MalformedEvent("body", "not JSON") from None
        if isinstance(document, dict) and isinstance(document.get("claimCheck"), dict):
            pointer = document["claimCheck"]
            if self._s3 is None:
                raise RecordFailed("a claim check, and no S3 client to resolve it")
            try:
                stored = self._s3.get_object(Bucket=str(pointer["bucket"]), Key=str(pointer["key"]))
                document = json.loads(stored["Body"].read())
            except (KeyError, ValueError, UnicodeDecodeError):
                raise MalformedEvent("claimCheck", "does not name a readable event") from None
            except Exception as exc:  # botocore errors: S3 may be back on the next delivery
                raise RecordFailed(f"claim check unreadable ({type(exc).__name__})") from exc
        return CanonicalEvent.from_dict(document)

    def _fail(self, report: BatchReport, item: _Done) -> None:
        report.failed.append(item.record.message_id)
        if item.fetched is not None:
            report.retries += item.fetched.retries
        report.poison += int(item.poison)
        self.telemetry.count(Metric.ENRICH_ERRORS)
        event = item.event
        log.warning(
            "record not enriched; it returns to the queue",
            extra={
                "messageId": item.record.message_id,
                "eventKey": event.event_key if event else None,
                "eventName": event.event_name if event else None,
                "problem": item.problem,
            },
        )

    def _count(self, report: BatchReport, item: _Done) -> None:
        assert item.fetched is not None
        report.retries += item.fetched.retries
        status = item.fetched.status
        if status is ResourceStatus.FOUND:
            report.enriched += 1
            self.telemetry.count(Metric.ENRICHED)
        elif status is ResourceStatus.NOT_FOUND:
            report.not_found += 1
            self.telemetry.count(Metric.ENRICH_NOT_FOUND)
        else:
            report.unrouted += 1
            self.telemetry.count(Metric.ENRICH_PASSTHROUGH)


# ---------------------------------------------------------------------------------------------
# Wiring


def open_enricher(
    settings: Settings,
    telemetry: Telemetry,
    *,
    options: EnrichOptions | None = None,
    http: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> Enricher:
    """An enricher wired from settings (Need.OHIP and Need.ENRICH, secrets resolved). The HTTP
    client lives as long as the enricher (a warm Lambda reuses its connections and token).
    `sleep`, `clock` (monotonic) and `wall_clock` are for tests that must not wait."""
    from .fallback import SqsBatchSender
    from .runtime import aws_client

    routes = RoutingTable.load(settings.enrich_routes)
    opts = options or EnrichOptions(concurrency=settings.enrich_concurrency)
    client = http or httpx.Client(
        timeout=httpx.Timeout(opts.request_timeout_s),
        limits=httpx.Limits(max_connections=opts.concurrency + 1),
        trust_env=False,
    )
    tokens = SyncTokenProvider(OAuthParams.from_settings(settings), client, clock=time.time)
    s3 = aws_client(settings, "s3")
    fetcher = ResourceFetcher(
        client,
        tokens,
        routes,
        gateway_url=settings.gateway_url,
        app_key=settings.app_key,
        options=opts,
        sleep=sleep,
        clock=clock,
        wall_clock=wall_clock,
    )
    sender = SqsBatchSender(
        aws_client(settings, "sqs"),
        settings.enriched_queue_url,
        s3=s3,
        claim_check_bucket=settings.bucket_name,
        claim_check_prefix=opts.claim_check_prefix,
    )
    return Enricher(fetcher, sender, telemetry, s3=s3)
