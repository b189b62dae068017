"""The sans-I/O core of the stream consumer: graphql-transport-ws plus the OHIP streaming rules.

This module builds and parses every frame, validates what the server sends, tracks connection
state, timers and replayed offsets, and tells the I/O layer what to write and when. It owns no
socket, no event loop, no clock and no randomness: time comes in as `now` (seconds, any monotonic
or wall clock, as long as it is the same one throughout), in the style of h11.

    core = StreamProtocol(token=token, app_key=key)
    core.start(now)                                  # queues connection_init
    send(core.data_to_send())
    for each text frame:  events = core.receive(frame, now)
    when the clock passes core.next_deadline():  events = core.tick(now)
    on ConnectionAcked:   core.send_subscribe(SubscriptionInput(chain), now, resume_after=checkpoint)
    after every call:     send(core.data_to_send())
    on the socket closing: closed = core.connection_closed(code, reason, now)

Events the I/O layer acts on:

- `ProtocolViolation` and `ConnectionDead` are terminal: the core ignores everything afterwards
  (no more events, no more frames to send). Close the socket with the event's `close_code` (4400
  for a violation, 4408 for a timeout, 1000 for a drain that never ended) and reconnect from the
  checkpoint. Nothing is lost: events after the violation are not reported, so they are not
  checkpointed, so the replay brings them back.
- `SubscriptionError` with `terminal=True` (an `error` message) ended the subscription; with
  `terminal=False` the server reported GraphQL errors in a `next` without an event.
- `UnreadableEvent`: a `next` carried an event object whose offset is missing or outside the
  documented form (digits, at most 20). Not a transport fault, and not an event the checkpoint
  can name: the I/O layer parks the raw frame and reads on.
- `OffsetRegression`: an event below the high-water mark (or at it, with another
  `uniqueEventId`): OHIP's offsets went backwards, which inclusive replay never does. It is not
  treated as a duplicate; the I/O layer stops reading and reports it (see stream.py).

Frames queued by this core hold the OAuth token and, inbound, guests' personal data: never log
them. Events keep the raw `newEvent` out of their `repr`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from . import fastjson
from .backoff import (
    CONFLICT_LOCKOUT,
    FORBIDDEN_RETRY,
    THROTTLED_RETRY,
    Backoff,
    CloseKind,
    CloseOutcome,
    classify_close,
    classify_handshake_status,
    full_jitter,
)
from .events import OFFSET_MAX_DIGITS

SUBPROTOCOL: Final = "graphql-transport-ws"
SUBSCRIPTIONS_PATH: Final = "/subscriptions"

#: The server expects a client ping this often (ohip-api.md 1, "Keeping the connection healthy").
DEFAULT_PING_INTERVAL: Final = 15.0
#: Silence (no frame of any kind) after which we declare the connection dead. Well under the
#: server's own 180 s pong rule, and several ping intervals long, because during backpressure the
#: server may hold its pongs back while `next` frames keep coming.
DEFAULT_LIVENESS_TIMEOUT: Final = 60.0
#: The server closes a socket that sends no connection_init within 5 s; we send it at once, and
#: give the server this long to acknowledge it (our own limit; the guide sets none).
DEFAULT_ACK_TIMEOUT: Final = 10.0
#: Minimum gap between a `complete` and the next `subscribe` (ohip-api.md 1, "Stopping").
RESUBSCRIBE_GAP: Final = 10.0

#: Close codes the I/O layer uses when this core tells it to drop the connection.
CLOSE_PROTOCOL_VIOLATION: Final = 4400
CLOSE_TIMEOUT: Final = 4408
CLOSE_NORMAL: Final = 1000

#: Every `newEvent` field of the schema (ohip-api.md 1, "Events"). `primaryKey` is the resource to
#: fetch; `metadata.offset` and `metadata.uniqueEventId` drive replay and idempotency.
NEW_EVENT_SELECTION: Final = (
    "metadata { offset uniqueEventId } moduleName eventName primaryKey timestamp hotelId "
    "publisherId actionInstanceId detail { elementName oldValue newValue scopeFrom scopeTo "
    "elementSequence elementType elementRole }"
)

# NewEventInput constraints (ohip-api.md 1, "Subscribing"). fullmatch, never `$`: `$` would let a
# trailing newline through.
_CHAIN_CODE = re.compile(r"[A-Za-z0-9 _%#$&-]+")
_DIGITS = re.compile(r"[0-9]+")
_CHAIN_CODE_MAX = 20
_OFFSET_MAX = OFFSET_MAX_DIGITS  # the schema's own scalar type name says 20 (ohip-api.md 1)
_HOTEL_CODE_MAX = 50
_OFFSET_TYPES = frozenset({"highest"})

_SERVER_TYPES = frozenset({"connection_ack", "ping", "pong", "next", "error", "complete"})
_CLIENT_ONLY_TYPES = frozenset({"connection_init", "subscribe"})
_MAX_OUTSTANDING_PINGS = 64


# -- URL ----------------------------------------------------------------------------------------


def app_key_hash(app_key: str) -> str:
    """Lowercase hex SHA-256 of the application key's UTF-8 bytes (what `sha256sum` prints)."""
    if not app_key:
        raise ValueError("app_key must not be empty")
    return hashlib.sha256(app_key.encode("utf-8")).hexdigest()


def stream_url(gateway_url: str, app_key: str) -> str:
    """The streaming endpoint for a gateway base URL (ohip-api.md 1, "Connecting").

    https becomes wss (http becomes ws, for the local stack only), any base path is kept and
    `/subscriptions` appended, and the query carries `key=<sha256 of the app key>`: the key itself
    never appears in the URL. A query or fragment on the gateway URL, or another scheme, is a
    configuration mistake and raises `ValueError`.
    """
    parts = urlsplit(gateway_url.strip())
    schemes = {"https": "wss", "http": "ws"}
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ValueError(
            f"gateway URL must start with https:// (or http:// locally), not {parts.scheme or '(none)'}://"
        )
    if not parts.netloc:
        raise ValueError("gateway URL has no host")
    if parts.query or parts.fragment:
        raise ValueError("gateway URL must be a base URL without a query or fragment")
    path = parts.path.rstrip("/") + SUBSCRIPTIONS_PATH
    return urlunsplit((schemes[scheme], parts.netloc, path, urlencode({"key": app_key_hash(app_key)}), ""))


# -- outbound messages --------------------------------------------------------------------------


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True)


def _graphql_string(value: str) -> str:
    """A GraphQL string literal. JSON's escapes (\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX) are all
    valid GraphQL escapes, and ensure_ascii leaves no raw control or non-ASCII character."""
    return json.dumps(value, ensure_ascii=True)


@dataclass(frozen=True, slots=True)
class SubscriptionInput:
    """`NewEventInput`, validated on construction (ohip-api.md 1, "Subscribing").

    - `chain_code`: required, 1-20 characters of letters, digits, space and `_%#$&-`.
    - `offset`: 1-20 ASCII digits, "0" included; replay starts *at* this offset (inclusive).
    - `offset_type`: only "highest" (start from the newest event; the server then ignores offset).
    - `hotel_code`: comma-separated hotel codes, 1-50 characters; a filter for debugging or a
      targeted replay only: the other hotels' events are not delivered.
    - `delta`: only changed elements in `detail`. False is the server's default, so it is sent
      only when True.

    Every violation raises `ValueError` naming the GraphQL field.
    """

    chain_code: str
    offset: str | None = None
    offset_type: str | None = None
    hotel_code: str | None = None
    delta: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.chain_code, str) or not self.chain_code:
            raise ValueError("chainCode is required")
        if len(self.chain_code) > _CHAIN_CODE_MAX:
            raise ValueError(f"chainCode must be at most {_CHAIN_CODE_MAX} characters")
        if not _CHAIN_CODE.fullmatch(self.chain_code):
            raise ValueError("chainCode may hold only letters, digits, space and _ % # $ & -")
        if self.offset is not None:
            if not isinstance(self.offset, str) or not _DIGITS.fullmatch(self.offset):
                raise ValueError("offset must be a string of ASCII digits")
            if len(self.offset) > _OFFSET_MAX:
                raise ValueError(f"offset must be at most {_OFFSET_MAX} digits, not {len(self.offset)}")
        if self.offset_type is not None and self.offset_type not in _OFFSET_TYPES:
            raise ValueError('offsetType accepts only "highest"')
        if self.hotel_code is not None:
            if not isinstance(self.hotel_code, str) or not self.hotel_code:
                raise ValueError("hotelCode must be a non-empty string when given")
            if len(self.hotel_code) > _HOTEL_CODE_MAX:
                raise ValueError(f"hotelCode must be at most {_HOTEL_CODE_MAX} characters")
        if not isinstance(self.delta, bool):
            raise ValueError("delta must be a boolean")

    def fields(self) -> dict[str, str | bool]:
        """The input object's fields as GraphQL names, in a stable order, unset ones left out."""
        out: dict[str, str | bool] = {"chainCode": self.chain_code}
        if self.offset is not None:
            out["offset"] = self.offset
        if self.offset_type is not None:
            out["offsetType"] = self.offset_type
        if self.hotel_code is not None:
            out["hotelCode"] = self.hotel_code
        if self.delta:
            out["delta"] = True
        return out


def subscription_query(subscription: SubscriptionInput) -> str:
    """The GraphQL document, with the input written inline.

    Why inline rather than `$input: NewEventInput!` in `variables`: every subscribe example Oracle
    publishes writes the input inline, so any OHIP-compatible gateway must accept that form; a
    variable declaration would additionally depend on the input type's exact name and nullability,
    which we only know from a third-party schema dump. Values are written as GraphQL string
    literals with proper escaping (all fields, offsetType included, are strings in Oracle's
    examples; `delta` is a boolean literal).
    """
    args = " ".join(
        f"{name}: {'true' if value is True else _graphql_string(str(value))}"
        for name, value in subscription.fields().items()
    )
    return f"subscription {{ newEvent(input: {{ {args} }}) {{ {NEW_EVENT_SELECTION} }} }}"


def connection_init(token: str, app_key: str) -> str:
    """`connection_init` carrying the OAuth bearer token and the plain application key
    (ohip-api.md 1, "Connecting"). The key goes in plain here; only the URL carries its hash."""
    if not token or any(ch.isspace() for ch in token):
        raise ValueError("token must be the bare access token (no spaces, no 'Bearer ' prefix)")
    if not app_key:
        raise ValueError("app_key must not be empty")
    payload = {"Authorization": f"Bearer {token}", "x-app-key": app_key}
    return _dumps({"type": "connection_init", "payload": payload})


def subscribe(subscription_id: str, subscription: SubscriptionInput) -> str:
    """`subscribe` in the shape of Oracle's templates (ohip-api.md 1, "Subscribing").

    The input is inline in the query (see `subscription_query`); `variables.input` repeats the same
    values, as Oracle's implementation-guide templates do. GraphQL ignores variables the document
    does not declare, so the mirror is harmless to a plain GraphQL server and keeps us identical
    to the documented request for a gateway that reads it.
    """
    if not isinstance(subscription_id, str) or not subscription_id:
        raise ValueError("subscription id must be a non-empty string")
    return _dumps(
        {
            "id": subscription_id,
            "type": "subscribe",
            "payload": {
                "query": subscription_query(subscription),
                "variables": {"input": subscription.fields()},
                "operationName": None,
                "extensions": {},
            },
        }
    )


def ping(payload: Mapping[str, Any] | None = None) -> str:
    return _dumps({"type": "ping"} if payload is None else {"type": "ping", "payload": dict(payload)})


def pong(payload: Mapping[str, Any] | None = None) -> str:
    return _dumps({"type": "pong"} if payload is None else {"type": "pong", "payload": dict(payload)})


def complete(subscription_id: str) -> str:
    if not isinstance(subscription_id, str) or not subscription_id:
        raise ValueError("subscription id must be a non-empty string")
    return _dumps({"id": subscription_id, "type": "complete"})


def resubscribe_at(last_complete_at: float | None, now: float, gap: float = RESUBSCRIBE_GAP) -> float:
    """The earliest time a `subscribe` may go out: `gap` seconds after the last `complete`
    (ohip-api.md 1, "Stopping"), or `now` when that is already past or there was none."""
    if last_complete_at is None:
        return now
    return max(now, last_complete_at + gap)


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Base of everything `receive`, `tick` and `connection_closed` report."""


@dataclass(frozen=True, slots=True)
class ConnectionAcked(Event):
    payload: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class EventReceived(Event):
    """A business event above the replay high-water mark: publish it."""

    subscription_id: str
    offset: int
    offset_str: str
    unique_event_id: str | None
    new_event: dict[str, Any] = field(repr=False)  # personal data: never in a repr or a log
    frame_size: int = 0


@dataclass(frozen=True, slots=True)
class DuplicateSkipped(Event):
    """A replayed event at or below the high-water mark: already published, do not publish again."""

    offset: int
    offset_str: str = ""
    unique_event_id: str | None = None
    frame_size: int = 0


@dataclass(frozen=True, slots=True)
class UnreadableEvent(Event):
    """A `next` carried an event whose offset cannot be read (`reason` names what is wrong, never a
    value). The subscription goes on; park the raw frame, it is not published."""

    subscription_id: str
    reason: str
    frame_size: int = 0


@dataclass(frozen=True, slots=True)
class OffsetRegression(Event):
    """An event at `offset`, which is not above `high_water`: OHIP's offsets went backwards. Not
    reported as `EventReceived` and not as `DuplicateSkipped`; the high-water mark is unchanged."""

    subscription_id: str
    offset: int
    high_water: int
    unique_event_id: str | None = None
    frame_size: int = 0


@dataclass(frozen=True, slots=True)
class SubscriptionError(Event):
    """GraphQL errors for our subscription. `terminal`: an `error` message, which ends the
    subscription; otherwise a `next` that carried `errors` and no event."""

    subscription_id: str
    errors: list[dict[str, Any]]
    terminal: bool = True

    def summary(self, limit: int = 300) -> str:
        """The error messages (and codes), joined and trimmed, for a log line."""
        parts: list[str] = []
        for error in self.errors:
            message = str(error.get("message", "(no message)"))
            extensions = error.get("extensions")
            code = extensions.get("code") if isinstance(extensions, dict) else None
            parts.append(f"{message} [{code}]" if code is not None else message)
        text = "; ".join(parts) or "(no error details)"
        return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class SubscriptionCompleted(Event):
    """The server sent `complete`: the subscription is over (the connection may stay open).
    `after_client_complete`: it answers our own `complete`."""

    subscription_id: str
    after_client_complete: bool


@dataclass(frozen=True, slots=True)
class PingReceived(Event):
    """The server pinged; the pong is already queued."""


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    """`rtt`: seconds since the oldest unanswered ping we sent; None for an unsolicited pong."""

    rtt: float | None


@dataclass(frozen=True, slots=True)
class ProtocolViolation(Event):
    """The server broke the protocol. Terminal: close with `close_code` and reconnect.
    `reason` never quotes the offending payload (it may hold personal data)."""

    reason: str
    close_code: int = CLOSE_PROTOCOL_VIOLATION


@dataclass(frozen=True, slots=True)
class ConnectionDead(Event):
    """A timer expired (no ack, no frame at all, or a drain that never ended). Terminal: close
    with `close_code` (do not wait long for the closing handshake) and carry on."""

    reason: str
    silent_for: float
    close_code: int = CLOSE_TIMEOUT


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """The socket closed. `outcome` says what to do next; `connected_for` is how long the connection
    had been acknowledged (None if it never was), for `Backoff.next_delay(healthy_for=...)`;
    `last_offset` the highest offset reported as `EventReceived` on this connection."""

    code: int | None
    reason: str
    outcome: CloseOutcome
    after_complete: bool
    connected_for: float | None
    last_offset: int | None


# -- the state machine --------------------------------------------------------------------------


class State(StrEnum):
    CONNECTING = "connecting"  # socket open, nothing sent yet
    INIT_SENT = "init_sent"  # connection_init queued, waiting for connection_ack
    ACKED = "acked"  # acknowledged, no subscription running
    SUBSCRIBED = "subscribed"  # subscription running
    COMPLETING = "completing"  # we sent complete; reading until the server ends it or closes
    CLOSED = "closed"  # the socket is gone


class ProtocolStateError(RuntimeError):
    """The caller used the core out of order (a bug in the I/O layer, not the server's fault)."""


class _Violation(Exception):
    pass


class StreamProtocol:
    """One WebSocket connection's worth of graphql-transport-ws / OHIP streaming state.

    Timers (all against the `now` the caller passes; see `next_deadline` and `tick`):

    - ack: `ack_timeout` after `start` without `connection_ack` -> `ConnectionDead`.
    - ping: a client `ping` every `ping_interval` seconds from `start` (ohip-api.md 1, "Keeping the
      connection healthy"), queued by `tick`; late ticks send one ping, never a burst.
    - liveness: any inbound frame, valid or not, proves the server is there; `next` frames count
      because during backpressure the server may delay its pongs. No frame for
      `liveness_timeout` seconds -> `ConnectionDead`.
    - drain (optional): `drain_timeout` seconds after our `complete` without the server closing
      -> `ConnectionDead` with close code 1000.

    Replay de-duplication (ohip-api.md 1, "Subscribing": replay is inclusive): the high-water mark
    starts at `resume_after` (the checkpoint, already published; -1 when nothing is, so that offset
    0 is new) and follows every event reported. An event *at* the mark is the inclusive replay of
    the last handled event, `DuplicateSkipped`, unless its `uniqueEventId` differs from the one
    seen at that offset on this connection; an event *below* the mark can only mean that OHIP
    numbered its log again, and is an `OffsetRegression`. Offsets are digit strings compared as
    integers. The mark lives as long as this object, i.e. one connection; the I/O layer builds a
    new core per connection from the stored checkpoint.

    Subscription ids are "1", "2", ... per connection (unique for the life of the stream, as the
    guide asks, and the form of Oracle's own examples); `send_subscribe(subscription_id=...)` can
    override.
    """

    def __init__(
        self,
        *,
        token: str,
        app_key: str,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        drain_timeout: float | None = None,
        last_complete_at: float | None = None,
        resubscribe_gap: float = RESUBSCRIBE_GAP,
    ) -> None:
        if ping_interval <= 0:
            raise ValueError(f"ping_interval must be > 0, not {ping_interval}")
        if liveness_timeout <= ping_interval:
            raise ValueError(
                f"liveness_timeout ({liveness_timeout}) must exceed ping_interval ({ping_interval}): "
                "a quiet but healthy connection only answers our pings"
            )
        if ack_timeout <= 0:
            raise ValueError(f"ack_timeout must be > 0, not {ack_timeout}")
        if drain_timeout is not None and drain_timeout <= 0:
            raise ValueError(f"drain_timeout must be > 0, not {drain_timeout}")
        if resubscribe_gap < RESUBSCRIBE_GAP:
            raise ValueError(f"resubscribe_gap must be at least {RESUBSCRIBE_GAP}s")
        self._init_frame = connection_init(token, app_key)  # validates now, before any socket work
        self._ping_interval = ping_interval
        self._liveness_timeout = liveness_timeout
        self._ack_timeout = ack_timeout
        self._drain_timeout = drain_timeout
        self._resubscribe_gap = resubscribe_gap

        self._state = State.CONNECTING
        self._terminal = False  # a violation or dead connection: ignore everything from now on
        self._outbox: list[str] = []
        # The three below are meaningful from start() on; the state guards every read.
        self._started_at = 0.0
        self._last_frame_at = 0.0
        self._next_ping_at = 0.0
        self._acked_at: float | None = None
        self._pings_in_flight: deque[float] = deque(maxlen=_MAX_OUTSTANDING_PINGS)
        self._complete_sent_at: float | None = None  # on this connection
        self._last_complete_at = last_complete_at  # on this or an earlier connection
        self._next_id = 1
        self._active_id: str | None = None
        self._finished_ids: set[str] = set()
        self._high_water: int | None = None
        self._high_water_id: str | None = None  # the uniqueEventId seen at the high-water offset
        self._last_offset: int | None = None

    # -- read-only state --------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def subscription_id(self) -> str | None:
        """The id of the running (or completing) subscription."""
        return self._active_id

    @property
    def high_water(self) -> int | None:
        """Events at or below this offset are reported as duplicates."""
        return self._high_water

    @property
    def last_offset(self) -> int | None:
        """The highest offset reported as `EventReceived` on this connection."""
        return self._last_offset

    @property
    def last_frame_at(self) -> float | None:
        """When the last inbound frame arrived (`start` counts as one); None before `start`."""
        return None if self._state is State.CONNECTING else self._last_frame_at

    @property
    def last_complete_at(self) -> float | None:
        """When we last sent `complete` (pass it to the next connection's core)."""
        return self._last_complete_at

    def __repr__(self) -> str:  # never the token or the queued frames
        return (
            f"<StreamProtocol state={self._state.value} subscription={self._active_id} "
            f"high_water={self._high_water}>"
        )

    # -- outbound ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The socket is open: queue `connection_init` at once (the server allows 5 s) and arm
        the ack, ping and liveness timers."""
        if self._state is not State.CONNECTING:
            raise ProtocolStateError(f"start() in state {self._state.value}")
        self._outbox.append(self._init_frame)
        self._state = State.INIT_SENT
        self._started_at = now
        self._last_frame_at = now
        self._next_ping_at = now + self._ping_interval

    def earliest_resubscribe(self, now: float) -> float:
        """The earliest time `send_subscribe` is allowed: 10 s after the last `complete`."""
        return resubscribe_at(self._last_complete_at, now, self._resubscribe_gap)

    def resubscribe_delay(self, now: float) -> float:
        """Seconds to wait before `send_subscribe` is allowed (0 when it already is)."""
        return self.earliest_resubscribe(now) - now

    def send_subscribe(
        self,
        subscription: SubscriptionInput,
        now: float,
        *,
        resume_after: int | None = None,
        subscription_id: str | None = None,
    ) -> str:
        """Queue `subscribe`; returns the subscription id.

        `resume_after` is the checkpoint: the highest offset already published, or -1 when none is
        but the log is to be read from offset 0. When the input has neither `offset` nor
        `offset_type`, the subscription asks the server to replay from that very offset (inclusive;
        "0" for -1), and the core reports that first, already published event as
        `DuplicateSkipped`. Asking for `resume_after + 1` instead would rely on how a gateway treats
        an offset that names no event, which the guide does not say.

        Raises `ProtocolStateError` before the ack, while a subscription runs, or earlier than
        10 s after the last `complete` (see `earliest_resubscribe`).
        """
        self._require_live("send_subscribe")
        if self._state is not State.ACKED:
            raise ProtocolStateError(
                f"send_subscribe() in state {self._state.value}: needs an idle, acked connection"
            )
        if now < self.earliest_resubscribe(now):
            raise ProtocolStateError(
                f"subscribe {self.resubscribe_delay(now):.1f}s too early: "
                f"wait {self._resubscribe_gap:g}s after complete"
            )
        if resume_after is not None:
            if isinstance(resume_after, bool) or not isinstance(resume_after, int) or resume_after < -1:
                raise ValueError("resume_after must be an integer offset, or -1 (nothing before 0)")
            if subscription.offset is None and subscription.offset_type is None:
                subscription = replace(subscription, offset=str(max(0, resume_after)))
        if subscription_id is None:
            subscription_id = str(self._next_id)
            self._next_id += 1
        if subscription_id in self._finished_ids:
            raise ProtocolStateError("subscription ids must not be reused on one connection")
        frame = subscribe(subscription_id, subscription)
        if resume_after is not None and (self._high_water is None or resume_after > self._high_water):
            self._high_water = resume_after
            self._high_water_id = None
        self._outbox.append(frame)
        self._active_id = subscription_id
        self._state = State.SUBSCRIBED
        return subscription_id

    def send_complete(self, now: float) -> None:
        """Queue `complete` for the running subscription (ohip-api.md 1, "Stopping"): then keep
        reading; the server sends what remains and closes the socket itself. Calling it again
        while completing does nothing."""
        self._require_live("send_complete")
        if self._state is State.COMPLETING:
            return
        if self._state is not State.SUBSCRIBED or self._active_id is None:
            raise ProtocolStateError(f"send_complete() in state {self._state.value}: no subscription")
        self._outbox.append(complete(self._active_id))
        self._state = State.COMPLETING
        self._complete_sent_at = now
        self._last_complete_at = now

    def data_to_send(self) -> list[str]:
        """The text frames to write, in order; the queue is emptied."""
        frames, self._outbox = self._outbox, []
        return frames

    # -- timers -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do; None when no timer is armed."""
        if self._terminal or self._state in (State.CONNECTING, State.CLOSED):
            return None
        deadlines = [self._last_frame_at + self._liveness_timeout, self._next_ping_at]
        if self._state is State.INIT_SENT:
            deadlines.append(self._started_at + self._ack_timeout)
        drain_deadline = self._drain_deadline()
        if drain_deadline is not None:
            deadlines.append(drain_deadline)
        return min(deadlines)

    def _drain_deadline(self) -> float | None:
        if (
            self._state is not State.COMPLETING
            or self._drain_timeout is None
            or self._complete_sent_at is None
        ):
            return None
        return self._complete_sent_at + self._drain_timeout

    def tick(self, now: float) -> list[Event]:
        """Run the timers that are due at `now`."""
        if self._terminal or self._state in (State.CONNECTING, State.CLOSED):
            return []
        silent_for = now - self._last_frame_at
        if self._state is State.INIT_SENT and now >= self._started_at + self._ack_timeout:
            return [self._die(f"no connection_ack within {self._ack_timeout:g}s", silent_for, CLOSE_TIMEOUT)]
        if silent_for >= self._liveness_timeout:
            reason = f"no frame from the server for {self._liveness_timeout:g}s"
            return [self._die(reason, silent_for, CLOSE_TIMEOUT)]
        drain_deadline = self._drain_deadline()
        if drain_deadline is not None and now >= drain_deadline:
            reason = f"the server did not close within {self._drain_timeout:g}s of our complete"
            return [self._die(reason, silent_for, CLOSE_NORMAL)]
        if now >= self._next_ping_at:
            self._outbox.append(ping())
            self._pings_in_flight.append(now)
            self._next_ping_at = now + self._ping_interval
        return []

    # -- inbound ----------------------------------------------------------------------------

    def receive(self, data: str | bytes, now: float) -> list[Event]:
        """Process one inbound WebSocket message (text; UTF-8 bytes are accepted too)."""
        if self._state is State.CONNECTING:
            raise ProtocolStateError("receive() before start()")
        if self._state is State.CLOSED:
            raise ProtocolStateError("receive() after connection_closed()")
        if self._terminal:
            return []
        self._last_frame_at = now  # any frame at all is proof of life
        try:
            if isinstance(data, bytes):
                size = len(data)
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Violation("frame is not valid UTF-8") from None
            else:
                text = data
                # isascii() is O(1) on CPython; only other text needs encoding to count its bytes.
                size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            return self._dispatch(_decode(text), size, now)
        except _Violation as exc:
            self._terminal = True
            self._outbox.clear()
            return [ProtocolViolation(str(exc))]

    def connection_closed(self, code: int | None, reason: str, now: float) -> Closed:
        """The socket closed (`code` None when it ended without a close frame). Classifies the
        close for the reconnect decision; a 1000 after our own `complete` is the expected end."""
        after_complete = self._complete_sent_at is not None
        self._state = State.CLOSED
        self._terminal = True
        self._outbox.clear()
        connected_for = None if self._acked_at is None else max(0.0, now - self._acked_at)
        return Closed(
            code=code,
            reason=reason,
            outcome=classify_close(code, reason, after_complete=after_complete),
            after_complete=after_complete,
            connected_for=connected_for,
            last_offset=self._last_offset,
        )

    # -- internals --------------------------------------------------------------------------

    def _require_live(self, what: str) -> None:
        if self._state is State.CLOSED:
            raise ProtocolStateError(f"{what}() after connection_closed()")
        if self._terminal:
            raise ProtocolStateError(f"{what}() after the connection was declared dead or broken")

    def _die(self, reason: str, silent_for: float, close_code: int) -> ConnectionDead:
        self._terminal = True
        self._outbox.clear()
        return ConnectionDead(reason=reason, silent_for=silent_for, close_code=close_code)

    def _dispatch(self, message: dict[str, Any], size: int, now: float) -> list[Event]:
        kind = message.get("type")
        if not isinstance(kind, str):
            raise _Violation("message has no string 'type'")
        if kind in _CLIENT_ONLY_TYPES:
            raise _Violation(f"server sent the client-only message type {kind!r}")
        if kind not in _SERVER_TYPES:
            raise _Violation("unknown message type")
        if kind == "ping":
            self._outbox.append(pong())
            return [PingReceived()]
        if kind == "pong":
            rtt = now - self._pings_in_flight.popleft() if self._pings_in_flight else None
            return [PongReceived(rtt)]
        if kind == "connection_ack":
            return self._on_ack(message, now)
        if self._state is State.INIT_SENT:
            raise _Violation(f"{kind!r} before connection_ack")
        subscription_id = message.get("id")
        if not isinstance(subscription_id, str) or not subscription_id:
            raise _Violation(f"{kind!r} without a string 'id'")
        if kind == "next":
            return self._on_next(subscription_id, message.get("payload"), size)
        if kind == "error":
            return self._on_error(subscription_id, message.get("payload"))
        return self._on_complete(subscription_id)

    def _on_ack(self, message: dict[str, Any], now: float) -> list[Event]:
        if self._state is not State.INIT_SENT:
            return []  # a repeated ack changes nothing
        self._state = State.ACKED
        self._acked_at = now
        payload = message.get("payload")
        return [ConnectionAcked(payload if isinstance(payload, dict) else None)]

    def _is_active(self, subscription_id: str) -> bool:
        return self._state in (State.SUBSCRIBED, State.COMPLETING) and subscription_id == self._active_id

    def _finish(self) -> None:
        if self._active_id is not None:
            self._finished_ids.add(self._active_id)
        self._active_id = None
        self._state = State.ACKED

    def _on_next(self, subscription_id: str, payload: Any, size: int) -> list[Event]:
        # After our complete the server still sends what remains, under the same id.
        if not self._is_active(subscription_id):
            raise _Violation("'next' for an id that has no running subscription")
        if not isinstance(payload, dict):
            raise _Violation("'next' without an object payload")
        errors = payload.get("errors")
        data = payload.get("data")
        new_event = data.get("newEvent") if isinstance(data, dict) else None
        if new_event is None and errors:
            # GraphQL errors without an event: report them; the subscription formally goes on.
            return [SubscriptionError(subscription_id, _error_list(errors), terminal=False)]
        if not isinstance(new_event, dict):
            raise _Violation("'next' without a data.newEvent object")
        # From here on the frame is an event: what is wrong with it is data, not transport.
        metadata = new_event.get("metadata")
        if not isinstance(metadata, dict):
            return [UnreadableEvent(subscription_id, "event without a metadata object", size)]
        offset_str = metadata.get("offset")
        if not isinstance(offset_str, str) or not _DIGITS.fullmatch(offset_str):
            return [UnreadableEvent(subscription_id, "event offset is not a string of digits", size)]
        if len(offset_str) > _OFFSET_MAX:  # int() is never asked for a number it would refuse
            return [UnreadableEvent(subscription_id, f"event offset longer than {_OFFSET_MAX} digits", size)]
        offset = int(offset_str)
        unique_event_id = metadata.get("uniqueEventId")
        if not isinstance(unique_event_id, str) or not unique_event_id:
            unique_event_id = None  # optional: the offset identifies the event
        high_water = self._high_water
        if high_water is not None and offset <= high_water:
            known_id = self._high_water_id
            if offset == high_water and (known_id is None or unique_event_id in (None, known_id)):
                return [DuplicateSkipped(offset, offset_str, unique_event_id, size)]
            return [OffsetRegression(subscription_id, offset, high_water, unique_event_id, size)]
        self._high_water = offset
        self._high_water_id = unique_event_id
        self._last_offset = offset
        return [EventReceived(subscription_id, offset, offset_str, unique_event_id, new_event, size)]

    def _on_error(self, subscription_id: str, payload: Any) -> list[Event]:
        if subscription_id in self._finished_ids:
            return []
        if not self._is_active(subscription_id):
            raise _Violation("'error' for an id we never subscribed with")
        self._finish()
        return [SubscriptionError(subscription_id, _error_list(payload), terminal=True)]

    def _on_complete(self, subscription_id: str) -> list[Event]:
        if subscription_id in self._finished_ids:
            return []  # a repeated complete changes nothing
        if not self._is_active(subscription_id):
            raise _Violation("'complete' for an id we never subscribed with")
        after_ours = self._state is State.COMPLETING
        self._finish()
        return [SubscriptionCompleted(subscription_id, after_client_complete=after_ours)]


def _reject_constant(name: str) -> Any:
    raise _Violation("frame holds NaN or Infinity, which JSON does not allow")


# What json.loads(text, parse_constant=...) builds on every call, built once (it holds no state).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode(text: str) -> dict[str, Any]:
    try:
        message = fastjson.loads(text, _DECODER)
    except (ValueError, RecursionError):
        raise _Violation("frame is not valid JSON") from None
    if not isinstance(message, dict):
        raise _Violation("frame is not a JSON object")
    return message


def _error_list(payload: Any) -> list[dict[str, Any]]:
    """graphql-transport-ws sends a list of GraphQL errors; tolerate a single object."""
    if isinstance(payload, dict):
        return [payload]
    if isinstance(payload, list):
        return [item if isinstance(item, dict) else {"message": str(item)} for item in payload]
    return []


__all__ = [
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_VIOLATION",
    "CLOSE_TIMEOUT",
    "CONFLICT_LOCKOUT",
    "DEFAULT_ACK_TIMEOUT",
    "DEFAULT_LIVENESS_TIMEOUT",
    "DEFAULT_PING_INTERVAL",
    "FORBIDDEN_RETRY",
    "NEW_EVENT_SELECTION",
    "RESUBSCRIBE_GAP",
    "SUBPROTOCOL",
    "SUBSCRIPTIONS_PATH",
    "THROTTLED_RETRY",
    "Backoff",
    "CloseKind",
    "CloseOutcome",
    "Closed",
    "ConnectionAcked",
    "ConnectionDead",
    "DuplicateSkipped",
    "Event",
    "EventReceived",
    "OffsetRegression",
    "PingReceived",
    "PongReceived",
    "ProtocolStateError",
    "ProtocolViolation",
    "State",
    "StreamProtocol",
    "SubscriptionCompleted",
    "SubscriptionError",
    "SubscriptionInput",
    "UnreadableEvent",
    "app_key_hash",
    "classify_close",
    "classify_handshake_status",
    "complete",
    "connection_init",
    "full_jitter",
    "ping",
    "pong",
    "resubscribe_at",
    "stream_url",
    "subscribe",
    "subscription_query",
]
