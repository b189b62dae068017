"""The Streaming API endpoint: graphql-transport-ws over WebSocket, with OHIP's rules on top.

An independent implementation of the server side of ohip-api.md section 1, written from the
documentation (not from the client's `ohip_relay.protocol`), so that it can check the client:

- `GET /subscriptions?key=<sha256 hex of the app key>`; a missing or wrong key is an HTTP 401
  before the upgrade. A client that does not offer the `graphql-transport-ws` subprotocol is
  accepted and closed at once with 4406, as graphql-ws servers do.
- `connection_init` within `init_timeout` (else 4408), once (else 4429), carrying
  `Authorization: Bearer <live token>` and `x-app-key: <plain key>` (else 4401); `subscribe`
  before `connection_ack` is 4401; a frame that is not JSON, has an unknown `type` or the wrong
  shape is 4400.
- `subscribe` parses the GraphQL document with graphql-core; the `newEvent(input: ...)` input may
  be inline or a variable. An invalid input is an `error` message (the connection stays open);
  an id already running is 4409 ("Subscriber for <id> already exists"); a chain the app is not
  approved for is 4403; a second subscriber for the same app key and chain is 4409, after which
  the app+chain is locked for `conflict_lockout` seconds.
- Start position: `offset` replays inclusively (never older than the retention, never before a
  replay floor set by `offsetType: highest`); `offsetType: highest` starts with the events
  appended after the subscribe; neither resumes after the last offset delivered to the app+chain.
- `next` frames carry only the selected fields; `delta` trims `detail` to changed elements,
  `hotelCode` filters hotels. A selected field the event lacks (adversarial events: no
  uniqueEventId, hotelId, publisherId, actionInstanceId or detail list) is null, as GraphQL answers
  every selected field. Frames are ASCII JSON: odd Unicode, lone surrogates included, is escaped.
- Offsets are 0 to 20 digits (the schema's scalar type allows 20). After an offset reset on the
  source (adversarial), live subscriptions go on with the lower offsets and a later subscribe
  replays from the new log.
- Client `ping` gets `pong`; the server pings every `server_ping_interval` and closes with 4504
  when no `pong` comes within `pong_timeout`.
- `complete`: the remaining events up to the highest offset at that moment, then close 1000.
- The connection detector (`connection_report`, the control interface's `GET /connections`):
  per chain, the most sockets ever subscribed at once (the 4409 rule keeps it at 1; with
  `one_connection_per_chain` off, ADVERSARIAL, a second subscriber is let through and counted),
  the 4409 refusals, and the subscriptions accepted while a previous socket was still closing.
- Faults for the control interface: drop, close or stall the pongs of every connection or of
  those subscribed to one chain.

One endpoint serves one OPERA environment: its app key, chains and tokens (gateway.py).

Timers for the connection (init, ping, pong) run on the event loop's monotonic clock; the lockout
and the resubscribe gap use the gateway's injectable clock, like token expiry and retention.

Logs carry offsets, close codes and counts only: never a frame, a token or an event's values.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiohttp import WSMsgType, web
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    Undefined,
    ValueNode,
    VariableNode,
    parse,
    value_from_ast_untyped,
)

from .source import StoredEvent

if TYPE_CHECKING:
    from .gateway import GatewayContext

log = logging.getLogger(__name__)

SUBPROTOCOL: Final = "graphql-transport-ws"

# graphql-transport-ws close codes (graphql-ws PROTOCOL.md) and OHIP's (ohip-api.md 1).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_ABNORMAL: Final = 1006
CLOSE_BAD_REQUEST: Final = 4400
CLOSE_UNAUTHORISED: Final = 4401
CLOSE_FORBIDDEN: Final = 4403
CLOSE_SUBPROTOCOL: Final = 4406
CLOSE_INIT_TIMEOUT: Final = 4408
CLOSE_CONFLICT: Final = 4409
CLOSE_TOO_MANY_INITS: Final = 4429
CLOSE_GATEWAY_TIMEOUT: Final = 4504

_CLOSE_TIMEOUT = 1.0  # how long a server-side close waits for the client's close frame

# NewEventInput constraints [SCHEMA] (ohip-api.md 1, "Subscribing"); fullmatch, so no newline slips in.
_CHAIN_CODE = re.compile(r"[A-Za-z0-9 _%#$&-]+")
_DIGITS = re.compile(r"[0-9]+")
_CHAIN_CODE_MAX = 20
_OFFSET_MAX = 20  # the scalar type's name says 20 (ohip-api.md 1); the description's 10 is too few
_HOTEL_CODE_MAX = 50
_INPUT_FIELDS = frozenset({"chainCode", "offset", "offsetType", "delta", "hotelCode"})

_CLIENT_TYPES = frozenset({"connection_init", "ping", "pong", "subscribe", "complete"})

# The newEvent type: field -> sub-fields (None for a leaf).
_METADATA_FIELDS = frozenset({"offset", "uniqueEventId"})
_DETAIL_FIELDS = frozenset(
    {
        "elementName",
        "oldValue",
        "newValue",
        "scopeFrom",
        "scopeTo",
        "elementSequence",
        "elementType",
        "elementRole",
    }
)
_NEW_EVENT_FIELDS: Final[Mapping[str, frozenset[str] | None]] = {
    "metadata": _METADATA_FIELDS,
    "moduleName": None,
    "eventName": None,
    "primaryKey": None,
    "timestamp": None,
    "hotelId": None,
    "publisherId": None,
    "actionInstanceId": None,
    "detail": _DETAIL_FIELDS,
}

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def opera_timestamp(event: StoredEvent) -> str:
    """OPERA's timestamp style, in UTC: `25-NOV-26 10.15.38.123456 AM`."""
    t = event.created_datetime
    hour = t.hour % 12 or 12
    return (
        f"{t.day:02d}-{_MONTHS[t.month - 1]}-{t.year % 100:02d} "
        f"{hour:02d}.{t.minute:02d}.{t.second:02d}.{t.microsecond:06d} {'AM' if t.hour < 12 else 'PM'}"
    )


# -- the GraphQL side: selection plan and input ---------------------------------------------------


@dataclass(frozen=True)
class _Selected:
    key: str  # the response key (alias or field name)
    name: str
    sub: tuple[_Selected, ...] | None = None


class _RequestError(Exception):
    """A GraphQL error for an `error` message (the connection stays open)."""

    def __init__(self, message: str, code: str, locations: list[dict[str, int]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.locations = locations

    def payload(self) -> list[dict[str, Any]]:
        error: dict[str, Any] = {"message": self.message}
        if self.locations:
            error["locations"] = self.locations
        error["extensions"] = {"code": self.code}
        return [error]


@dataclass(frozen=True)
class SubscriptionRequest:
    """A validated `subscribe`: the NewEventInput and what to project."""

    chain: str
    offset: int | None
    highest: bool
    delta: bool
    hotels: frozenset[str] | None
    selection: tuple[_Selected, ...]


def _flatten(
    selection_set: SelectionSetNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    seen: frozenset[str] = frozenset(),
) -> list[FieldNode]:
    fields: list[FieldNode] = []
    for node in selection_set.selections:
        if isinstance(node, FieldNode):
            fields.append(node)
        elif isinstance(node, InlineFragmentNode):
            fields.extend(_flatten(node.selection_set, fragments, seen))
        elif isinstance(node, FragmentSpreadNode):
            name = node.name.value
            if name not in fragments:
                raise _RequestError(f'Unknown fragment "{name}".', "GRAPHQL_VALIDATION_FAILED")
            if name in seen:
                raise _RequestError(
                    f'Cannot spread fragment "{name}" within itself.', "GRAPHQL_VALIDATION_FAILED"
                )
            fields.extend(_flatten(fragments[name].selection_set, fragments, seen | {name}))
    return fields


def _plan(
    selection_set: SelectionSetNode | None,
    allowed: Mapping[str, frozenset[str] | None] | frozenset[str],
    type_name: str,
    fragments: Mapping[str, FragmentDefinitionNode],
) -> tuple[_Selected, ...]:
    if selection_set is None or not selection_set.selections:
        raise _RequestError(
            f'Field of type "{type_name}" must have a selection of subfields.', "GRAPHQL_VALIDATION_FAILED"
        )
    plan: dict[str, _Selected] = {}
    for node in _flatten(selection_set, fragments):
        name = node.name.value
        key = node.alias.value if node.alias else name
        if name not in allowed:
            raise _RequestError(
                f'Cannot query field "{name}" on type "{type_name}".', "GRAPHQL_VALIDATION_FAILED"
            )
        sub_fields = allowed[name] if isinstance(allowed, Mapping) else None
        if sub_fields is None:
            if node.selection_set is not None:
                raise _RequestError(
                    f'Field "{name}" must not have a selection since it is a scalar.',
                    "GRAPHQL_VALIDATION_FAILED",
                )
            selected = _Selected(key, name)
        else:
            sub_type = "EventMetadata" if name == "metadata" else "EventDetail"
            selected = _Selected(key, name, _plan(node.selection_set, sub_fields, sub_type, fragments))
        previous = plan.get(key)
        if previous is not None:
            if previous.name != name:
                raise _RequestError(f'Fields "{key}" conflict.', "GRAPHQL_VALIDATION_FAILED")
            if previous.sub is not None and selected.sub is not None:
                merged = {s.key: s for s in previous.sub} | {s.key: s for s in selected.sub}
                selected = _Selected(key, name, tuple(merged.values()))
        plan[key] = selected
    return tuple(plan.values())


def _operation(document: DocumentNode, operation_name: str | None) -> OperationDefinitionNode:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name:
        named = [op for op in operations if op.name and op.name.value == operation_name]
        if not named:
            raise _RequestError(f'Unknown operation named "{operation_name}".', "BAD_USER_INPUT")
        return named[0]
    if len(operations) != 1:
        raise _RequestError(
            "Must provide operation name if query contains multiple operations.", "BAD_USER_INPUT"
        )
    return operations[0]


def parse_subscription(payload: Mapping[str, Any]) -> SubscriptionRequest:
    """Validate a `subscribe` payload's document and NewEventInput; raises `_RequestError`."""
    try:
        document = parse(payload["query"])
    except GraphQLError as exc:
        locations = [{"line": loc.line, "column": loc.column} for loc in exc.locations or ()]
        raise _RequestError(f"Syntax Error: {exc.message}", "GRAPHQL_PARSE_FAILED", locations) from None
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    operation = _operation(document, payload.get("operationName"))
    if operation.operation is not OperationType.SUBSCRIPTION:
        raise _RequestError(
            f"Only subscription operations are served here, not {operation.operation.value}.",
            "GRAPHQL_VALIDATION_FAILED",
        )
    root = _flatten(operation.selection_set, fragments)
    if len(root) != 1:
        raise _RequestError(
            "Anonymous Subscription must select only one top level field.", "GRAPHQL_VALIDATION_FAILED"
        )
    new_event = root[0]
    if new_event.name.value != "newEvent":
        raise _RequestError(
            f'Cannot query field "{new_event.name.value}" on type "Subscription".',
            "GRAPHQL_VALIDATION_FAILED",
        )
    selection = _plan(new_event.selection_set, _NEW_EVENT_FIELDS, "NewEvent", fragments)

    arguments = {arg.name.value: arg.value for arg in new_event.arguments or ()}
    unknown_args = set(arguments) - {"input"}
    if unknown_args:
        raise _RequestError(
            f'Unknown argument "{sorted(unknown_args)[0]}" on field "Subscription.newEvent".',
            "GRAPHQL_VALIDATION_FAILED",
        )
    if "input" not in arguments:
        raise _RequestError(
            'Field "newEvent" argument "input" of type "NewEventInput!" is required but not provided.',
            "GRAPHQL_VALIDATION_FAILED",
        )
    variables = _variables(operation, payload.get("variables"))
    value = _input_value(arguments["input"], variables)
    return _validate_input(value, selection)


def _variables(operation: OperationDefinitionNode, given: Any) -> dict[str, Any]:
    """The operation's declared variables: given values, else their defaults."""
    supplied: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    values: dict[str, Any] = {}
    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        if name in supplied:
            values[name] = supplied[name]
        elif definition.default_value is not None:
            values[name] = value_from_ast_untyped(definition.default_value)
    return values


def _input_value(node: ValueNode, variables: Mapping[str, Any]) -> Any:
    if isinstance(node, VariableNode) and node.name.value not in variables:
        raise _RequestError(
            f'Variable "${node.name.value}" of required type "NewEventInput!" was not provided.',
            "BAD_USER_INPUT",
        )
    return value_from_ast_untyped(node, dict(variables))


def _bad_input(message: str) -> _RequestError:
    return _RequestError(f"NewEventInput: {message}", "BAD_USER_INPUT")


def _validate_input(value: Any, selection: tuple[_Selected, ...]) -> SubscriptionRequest:
    if not isinstance(value, Mapping):
        raise _bad_input("input must be an object")
    value = {k: v for k, v in value.items() if v is not Undefined and v is not None}  # absent or null
    unknown = set(value) - _INPUT_FIELDS
    if unknown:
        raise _bad_input(f"unknown field {sorted(unknown)[0]!r}")
    chain = value.get("chainCode")
    if not isinstance(chain, str) or not chain:
        raise _bad_input("chainCode is required")
    if len(chain) > _CHAIN_CODE_MAX:
        raise _bad_input(f"chainCode must be at most {_CHAIN_CODE_MAX} characters")
    if not _CHAIN_CODE.fullmatch(chain):
        raise _bad_input("chainCode must match ^[A-Za-z0-9 _%#$&-]+$")
    offset = value.get("offset")
    if offset is not None:
        if not isinstance(offset, str) or not _DIGITS.fullmatch(offset) or not offset.isascii():
            raise _bad_input("offset must match ^[0-9]+$")
        if len(offset) > _OFFSET_MAX:
            raise _bad_input(f"offset must be at most {_OFFSET_MAX} digits")
    offset_type = value.get("offsetType")
    if offset_type is not None and offset_type != "highest":
        raise _bad_input('offsetType accepts only "highest"')
    delta = value.get("delta")
    if delta is not None and not isinstance(delta, bool):
        raise _bad_input("delta must be a boolean")
    hotel_code = value.get("hotelCode")
    hotels: frozenset[str] | None = None
    if hotel_code is not None:
        if not isinstance(hotel_code, str):
            raise _bad_input("hotelCode must be a string")
        if len(hotel_code) > _HOTEL_CODE_MAX:
            raise _bad_input(f"hotelCode must be at most {_HOTEL_CODE_MAX} characters")
        hotels = frozenset(code.strip() for code in hotel_code.split(",") if code.strip()) or None
    return SubscriptionRequest(
        chain=chain,
        offset=None if offset is None else int(offset),
        highest=offset_type == "highest",
        delta=bool(delta),
        hotels=hotels,
        selection=selection,
    )


# -- projection --------------------------------------------------------------------------------


def _detail_values(event: StoredEvent, delta: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    missing = None if event.null_values else ""  # a value the element lacks: "" (OPERA) or null
    for d in event.details:
        old = d.old_value if d.old_value is not None else missing
        new = d.new_value if d.new_value is not None else missing
        if delta and (old or "") == (new or ""):
            continue
        out.append(
            {
                "elementName": d.element_name,
                "oldValue": old,
                "newValue": new,
                "scopeFrom": d.scope_from,
                "scopeTo": d.scope_to,
                "elementSequence": d.element_sequence,
                "elementType": d.element_type,
                "elementRole": d.element_role,
            }
        )
    return out


def _project(values: Mapping[str, Any], plan: tuple[_Selected, ...]) -> dict[str, Any]:
    return {s.key: values[s.name] for s in plan}


def render_event(event: StoredEvent, request: SubscriptionRequest) -> dict[str, Any]:
    """The `newEvent` object for `event`, holding only the selected fields."""
    out: dict[str, Any] = {}
    for s in request.selection:
        if s.name == "metadata":
            assert s.sub is not None
            out[s.key] = _project(
                {"offset": str(event.offset), "uniqueEventId": event.unique_event_id}, s.sub
            )
        elif s.name == "detail":
            assert s.sub is not None
            sub = s.sub
            if event.has_detail:
                out[s.key] = [_project(d, sub) for d in _detail_values(event, request.delta)]
            else:
                out[s.key] = None
        elif s.name == "timestamp":
            out[s.key] = opera_timestamp(event)
        else:
            out[s.key] = _scalar(event, s.name)
    return out


def _scalar(event: StoredEvent, name: str) -> str | None:
    if name == "moduleName":
        return event.module
    if name == "eventName":
        return event.event_name
    if name == "primaryKey":
        return event.primary_key
    if name == "hotelId":
        return event.hotel
    if name == "publisherId":
        return event.publisher_id
    return str(event.action_instance_id) if event.has_action_id else None  # actionInstanceId


# -- sessions ----------------------------------------------------------------------------------


class _BurstEnd:
    """Queued after a backpressure burst: the pump has sent the burst when it reaches this."""


class _Wake:
    """Queued to make an idle pump re-check its stop condition (after `complete`)."""


@dataclass(frozen=True)
class _Reset:
    """Queued when the source's offsets were reset: the events after it restart at `offset`."""

    offset: int


_QueueItem = StoredEvent | _BurstEnd | _Wake | _Reset
_Key = tuple[str, str]  # (app key, chain)


@dataclass(eq=False)
class _Subscription:
    id: str
    request: SubscriptionRequest
    key: _Key
    queue: asyncio.Queue[_QueueItem]
    backlog: list[StoredEvent]
    last_seen: int  # events at or below this offset are never sent again on this subscription
    remove_listener: Callable[[], None] | None = None
    task: asyncio.Task[None] | None = None
    stop_at: int | None = None  # set by `complete`: send up to here, then close 1000
    delivered: int = 0
    last_offset: int | None = None


@dataclass(eq=False)
class _Session:
    number: int
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    init_received: bool = False
    acked: bool = False
    token: str | None = None
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    closing: bool = False
    close_code: int | None = None
    close_task: asyncio.Task[None] | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    keepalive: asyncio.Task[None] | None = None
    awaiting_pong_since: float | None = None
    burst_depth: int = 0
    deferred: list[str] = field(default_factory=list)


MOMENTS_KEPT = 20  # double-subscription moments kept per chain (there should be none at all)


@dataclass(eq=False)
class _ChainConnections:
    """The connection detector's record of one app key + chain (created on its first subscribe)."""

    total: int = 0  # subscriptions accepted
    refusals: int = 0  # 4409: another client was connected, or the lockout ran
    max_subscribed: int = 0  # the most sockets with a live subscription at once
    doubles: int = 0  # subscriptions accepted while another socket's subscription was live
    overlaps: int = 0  # subscriptions accepted while a socket of the chain was still closing
    moments: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MOMENTS_KEPT))


def _dumps(message: Mapping[str, Any]) -> str:
    # ASCII only: any str encodes, lone UTF-16 surrogates and U+FFFF included (as JSON escapes).
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True)


class _BadMessage(Exception):
    """The client broke graphql-transport-ws: close 4400 (the reason never quotes the frame)."""


def _decode(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise _BadMessage("Invalid message received") from None
    if not isinstance(message, dict):
        raise _BadMessage("Invalid message received")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in _CLIENT_TYPES:
        raise _BadMessage("Invalid message received")
    payload = message.get("payload")
    if kind in ("connection_init", "ping", "pong") and payload is not None and not isinstance(payload, dict):
        raise _BadMessage(f'"{kind}" message expects the payload to be an object')
    if kind in ("subscribe", "complete"):
        sub_id = message.get("id")
        if not isinstance(sub_id, str) or not sub_id:
            raise _BadMessage(f'"{kind}" message requires a non-empty "id" string')
    if kind == "subscribe":
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            raise _BadMessage('"subscribe" message requires a payload with a "query" string')
        for name, kinds in (("variables", dict), ("extensions", dict), ("operationName", str)):
            value = payload.get(name)
            if value is not None and not isinstance(value, kinds):
                raise _BadMessage(f'"subscribe" payload field "{name}" has the wrong type')
    return message


def _header(payload: Mapping[str, Any], name: str) -> Any:
    """A connection_init payload entry, matched case-insensitively like the HTTP header it stands for."""
    for key, value in payload.items():
        if isinstance(key, str) and key.lower() == name.lower():
            return value
    return None


class StreamingEndpoint:
    """`GET /subscriptions`: one instance per gateway, holding every live connection."""

    def __init__(self, context: GatewayContext) -> None:
        self.context = context
        self._sessions: dict[int, _Session] = {}
        self._numbers = itertools.count(1)
        self._shutting_down = False
        self._stall_pongs = False
        # per (app key, chain), across connections
        self._delivered: dict[_Key, int] = {}  # last offset delivered
        self._replay_floor: dict[_Key, int] = {}  # set by offsetType highest
        self._lockout_until: dict[_Key, float] = {}  # gateway clock
        self._last_complete: dict[_Key, float] = {}  # gateway clock
        self._detector: dict[_Key, _ChainConnections] = {}  # the connection detector
        self._stalled_chains: set[str] = set()
        # counters
        self.connections = 0
        self.rejected_handshakes = 0
        self.close_codes: dict[int, int] = {}
        self.resubscribe_gap_violations = 0
        self.conflicts = 0
        self.pings_sent = 0
        self.pongs_received = 0
        self.pongs_sent = 0
        self.deferred_pongs = 0
        self.stalled_pings = 0
        self.events_delivered = 0
        self.offset_resets = 0
        context.source.on_reset(self._on_reset)

    # -- the handler ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.query.get("key", "")
        if not hmac.compare_digest(key.encode(), self.context.config.key_hash.encode()):
            self.rejected_handshakes += 1
            log.info("streaming handshake refused: missing or unknown key hash (401)")
            return web.json_response(
                {"title": "Unauthorized", "detail": "missing or unknown application key hash"}, status=401
            )
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), timeout=_CLOSE_TIMEOUT, autoping=True)
        transport = request.transport
        await ws.prepare(request)
        session = _Session(next(self._numbers), ws, transport)
        self.connections += 1
        self._sessions[session.number] = session
        try:
            if ws.ws_protocol != SUBPROTOCOL:
                await self._close(session, CLOSE_SUBPROTOCOL, "Subprotocol not acceptable")
            elif self._shutting_down:
                await self._close(session, CLOSE_GOING_AWAY, "Going away")
            else:
                loop = asyncio.get_running_loop()
                session.timers.append(
                    loop.call_later(self.context.config.init_timeout, self._init_deadline, session)
                )
                await self._read(session)
        finally:
            await self._finish(session)
        return ws

    async def _read(self, session: _Session) -> None:
        ws = session.ws
        while not session.closing:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                try:
                    await self._on_message(session, _decode(msg.data))
                except _BadMessage as exc:
                    await self._close(session, CLOSE_BAD_REQUEST, str(exc))
            elif msg.type is WSMsgType.BINARY:
                await self._close(session, CLOSE_BAD_REQUEST, "Binary messages are not supported")
            else:
                if msg.type is WSMsgType.CLOSE and session.close_code is None:
                    session.close_code = ws.close_code
                return

    async def _finish(self, session: _Session) -> None:
        self._stop_session(session)
        if session.close_task is not None:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await session.close_task
        if not session.ws.closed:
            with contextlib.suppress(Exception):
                await session.ws.close(code=CLOSE_GOING_AWAY)
        self._sessions.pop(session.number, None)
        code = session.close_code if session.close_code is not None else session.ws.close_code
        code = CLOSE_ABNORMAL if code is None else int(code)
        self.close_codes[code] = self.close_codes.get(code, 0) + 1
        last = {sub.key[1]: sub.last_offset for sub in session.subscriptions.values()}
        log.info("streaming connection %d ended with %d (last offsets %s)", session.number, code, last)

    def _stop_session(self, session: _Session) -> None:
        """Stop timers, keepalive, listeners and pumps (except the calling task)."""
        for timer in session.timers:
            timer.cancel()
        session.timers.clear()
        current = asyncio.current_task()
        if session.keepalive is not None and session.keepalive is not current:
            session.keepalive.cancel()
        for sub in session.subscriptions.values():
            self._stop_subscription(sub, current)

    @staticmethod
    def _stop_subscription(sub: _Subscription, current: asyncio.Task[Any] | None) -> None:
        if sub.remove_listener is not None:
            sub.remove_listener()
            sub.remove_listener = None
        if sub.task is not None and sub.task is not current:
            sub.task.cancel()

    # -- closing --------------------------------------------------------------------------------

    def _request_close(self, session: _Session, code: int, reason: str = "") -> asyncio.Task[None] | None:
        """Start closing `session` with `code` (once); returns the task doing it."""
        if session.closing:
            return session.close_task
        session.closing = True
        session.close_code = code
        self._stop_session(session)
        log.info("streaming connection %d: closing with %d", session.number, code)
        session.close_task = asyncio.get_running_loop().create_task(
            self._do_close(session.ws, code, reason), name=f"ohip-ws-close-{session.number}"
        )
        return session.close_task

    @staticmethod
    async def _do_close(ws: web.WebSocketResponse, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=code, message=reason.encode()[:123])

    async def _close(self, session: _Session, code: int, reason: str = "") -> None:
        task = self._request_close(session, code, reason)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await asyncio.shield(task)

    def _init_deadline(self, session: _Session) -> None:
        if not session.init_received and not session.closing:
            self._request_close(session, CLOSE_INIT_TIMEOUT, "Connection initialisation timeout")

    async def _send(self, session: _Session, frame: str) -> bool:
        if session.closing or session.ws.closed:
            return False
        try:
            await session.ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            return False
        return True

    # -- inbound messages -----------------------------------------------------------------------

    async def _on_message(self, session: _Session, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "connection_init":
            await self._on_init(session, message.get("payload") or {})
        elif kind == "ping":
            await self._on_ping(session, message.get("payload"))
        elif kind == "pong":
            self.pongs_received += 1
            session.awaiting_pong_since = None
        elif kind == "subscribe":
            await self._on_subscribe(session, message["id"], message["payload"])
        else:
            self._on_complete(session, message["id"])

    async def _on_init(self, session: _Session, payload: Mapping[str, Any]) -> None:
        if session.init_received:
            await self._close(session, CLOSE_TOO_MANY_INITS, "Too many initialisation requests")
            return
        session.init_received = True
        cfg = self.context.config
        authorization = _header(payload, "Authorization")
        app_key = _header(payload, "x-app-key")
        token = ""
        if isinstance(authorization, str) and authorization.startswith("Bearer "):
            token = authorization[len("Bearer ") :].strip()
        if not isinstance(app_key, str) or not hmac.compare_digest(app_key.encode(), cfg.app_key.encode()):
            await self._close(session, CLOSE_UNAUTHORISED, "Unauthorized: unknown x-app-key")
            return
        if not token or not self.context.tokens.valid(token):
            await self._close(session, CLOSE_UNAUTHORISED, "Unauthorized: missing, invalid or expired token")
            return
        session.token = token
        session.acked = True
        await self._send(session, _dumps({"type": "connection_ack"}))
        session.keepalive = asyncio.get_running_loop().create_task(
            self._keepalive(session), name=f"ohip-ws-keepalive-{session.number}"
        )

    async def _on_ping(self, session: _Session, payload: Any) -> None:
        if self._stall_pongs or (
            self._stalled_chains
            and any(sub.request.chain in self._stalled_chains for sub in session.subscriptions.values())
        ):
            self.stalled_pings += 1
            return
        frame = _dumps({"type": "pong"} if payload is None else {"type": "pong", "payload": payload})
        if session.burst_depth > 0:
            self.deferred_pongs += 1
            session.deferred.append(frame)
            return
        if await self._send(session, frame):
            self.pongs_sent += 1

    async def _keepalive(self, session: _Session) -> None:
        """Server pings every `server_ping_interval`; no pong within `pong_timeout` of one: 4504."""
        cfg = self.context.config
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + cfg.server_ping_interval
        while not session.closing:
            deadline = next_ping
            if session.awaiting_pong_since is not None:
                deadline = min(deadline, session.awaiting_pong_since + cfg.pong_timeout)
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            now = loop.time()
            if (
                session.awaiting_pong_since is not None
                and now >= session.awaiting_pong_since + cfg.pong_timeout
            ):
                self._request_close(session, CLOSE_GATEWAY_TIMEOUT, "Gateway timeout: no pong")
                return
            if now >= next_ping:
                if await self._send(session, _dumps({"type": "ping"})):
                    self.pings_sent += 1
                    if session.awaiting_pong_since is None:
                        session.awaiting_pong_since = now
                next_ping = now + cfg.server_ping_interval

    async def _on_subscribe(self, session: _Session, sub_id: str, payload: Mapping[str, Any]) -> None:
        if not session.acked:
            await self._close(session, CLOSE_UNAUTHORISED, "Unauthorized")
            return
        if sub_id in session.subscriptions:
            await self._close(session, CLOSE_CONFLICT, f"Subscriber for {sub_id} already exists")
            return
        try:
            request = parse_subscription(payload)
        except _RequestError as exc:
            log.info(
                "streaming connection %d: subscribe %s refused (%s)", session.number, sub_id[:40], exc.code
            )
            await self._send(session, _dumps({"id": sub_id, "type": "error", "payload": exc.payload()}))
            return
        chain = request.chain
        if not self.context.approved(chain):
            await self._close(session, CLOSE_FORBIDDEN, "Forbidden: application not approved for this chain")
            return
        key: _Key = (self.context.config.app_key, chain)
        now = self.context.clock()
        completed_at = self._last_complete.get(key)
        if completed_at is not None and now - completed_at < self.context.config.resubscribe_gap:
            self.resubscribe_gap_violations += 1
            log.info(
                "streaming connection %d: subscribe %.3fs after complete", session.number, now - completed_at
            )
        if self.context.config.one_connection_per_chain and self._conflicting(key, now):
            self.conflicts += 1
            self._record(key).refusals += 1
            self._lockout_until[key] = now + self.context.config.conflict_lockout
            await self._close(session, CLOSE_CONFLICT, "Another client is already connected for this chain")
            return
        self._detect(session, key, now)
        self._start_subscription(session, sub_id, request, key)

    def _conflicting(self, key: _Key, now: float) -> bool:
        if now < self._lockout_until.get(key, float("-inf")):
            return True
        return any(
            sub.key == key and not s.closing
            for s in self._sessions.values()
            for sub in s.subscriptions.values()
        )

    def _record(self, key: _Key) -> _ChainConnections:
        record = self._detector.get(key)
        if record is None:
            record = self._detector[key] = _ChainConnections()
        return record

    def _detect(self, session: _Session, key: _Key, now: float) -> None:
        """The connection detector, as `session` starts a subscription on `key`: the sockets with a
        live subscription on it only ever grow here, so the count at this moment is the maximum."""
        live: list[int] = []
        closing = False
        for other in self._sessions.values():
            if other is session or not any(sub.key == key for sub in other.subscriptions.values()):
                continue
            if other.closing:
                closing = True
            else:
                live.append(other.number)
        record = self._record(key)
        record.total += 1
        record.max_subscribed = max(record.max_subscribed, len(live) + 1)
        if closing:
            record.overlaps += 1
        if live:
            record.doubles += 1
            record.moments.append({"at": now, "connections": sorted([*live, session.number])})
            log.warning(
                "streaming connection %d: a second live subscription on %s (connections %s)",
                session.number,
                key[1],
                live,
            )

    def _start_subscription(
        self, session: _Session, sub_id: str, request: SubscriptionRequest, key: _Key
    ) -> None:
        source = self.context.source
        chain = request.chain
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        # Listener first, backlog second (no await in between, and the pump dedupes by offset):
        # no gap and no duplicate between replay and live.
        remove = source.listen(chain, queue.put_nowait)
        floor = self._replay_floor.get(key, 0)
        if request.highest:
            start = source.next_offset(chain)
            self._replay_floor[key] = max(floor, start)
            backlog: list[StoredEvent] = []
        else:
            if request.offset is not None:
                start = max(request.offset, floor)
            else:
                last = self._delivered.get(key)
                start = max(floor, 0 if last is None else last + 1)
            backlog = source.since(chain, start)
            start = max(start, source.retained_floor(chain))
        sub = _Subscription(
            id=sub_id,
            request=request,
            key=key,
            queue=queue,
            backlog=backlog,
            last_seen=start - 1,
            remove_listener=remove,
        )
        session.subscriptions[sub_id] = sub
        sub.task = asyncio.get_running_loop().create_task(
            self._pump(session, sub), name=f"ohip-ws-pump-{session.number}-{sub_id[:20]}"
        )
        log.info(
            "streaming connection %d: subscription on %s from offset %d (%d to replay)",
            session.number,
            chain,
            start,
            len(backlog),
        )

    def _on_complete(self, session: _Session, sub_id: str) -> None:
        sub = session.subscriptions.get(sub_id)
        if sub is None or sub.stop_at is not None:
            return  # graphql-transport-ws: a complete for an unknown id is ignored
        self._last_complete[sub.key] = self.context.clock()
        highest = self.context.source.highest(sub.request.chain)
        sub.stop_at = sub.last_seen if highest is None else max(highest, sub.last_seen)
        log.info("streaming connection %d: complete, draining to offset %d", session.number, sub.stop_at)
        sub.queue.put_nowait(_Wake())

    # -- delivery -------------------------------------------------------------------------------

    async def _pump(self, session: _Session, sub: _Subscription) -> None:
        """Send the backlog, then live events, in offset order; flow control by awaiting each send."""
        request = sub.request
        backlog = iter(sub.backlog)
        sub.backlog = []
        while not session.closing:
            if sub.stop_at is not None and sub.last_seen >= sub.stop_at:
                break
            item: _QueueItem | None = next(backlog, None)
            if item is None:
                item = await sub.queue.get()
            if isinstance(item, _Wake):
                continue
            if isinstance(item, _BurstEnd):
                await self._end_burst(session)
                continue
            if isinstance(item, _Reset):
                if sub.stop_at is not None:
                    break  # `complete` drained the log as it was before the reset
                sub.last_seen = item.offset - 1
                self._delivered.pop(sub.key, None)
                continue
            if item.offset <= sub.last_seen:
                continue  # already sent (replay/live overlap)
            if sub.stop_at is not None and item.offset > sub.stop_at:
                break
            sub.last_seen = item.offset
            if request.hotels is not None and item.hotel not in request.hotels:
                continue
            frame = _dumps(
                {"id": sub.id, "type": "next", "payload": {"data": {"newEvent": render_event(item, request)}}}
            )
            if not await self._send(session, frame):
                return
            sub.delivered += 1
            sub.last_offset = item.offset
            self.events_delivered += 1
            if item.offset > self._delivered.get(sub.key, -1):
                self._delivered[sub.key] = item.offset
            if session.burst_depth > 0:
                await asyncio.sleep(0)  # a burst is paced: let the reader see pings meanwhile
        else:
            return
        # `complete` drained: the server ends the stream itself.
        log.info("streaming connection %d: drained to offset %s after complete", session.number, sub.stop_at)
        self._request_close(session, CLOSE_NORMAL, "Subscription complete")

    async def _end_burst(self, session: _Session) -> None:
        session.burst_depth = max(0, session.burst_depth - 1)
        if session.burst_depth == 0:
            frames, session.deferred = session.deferred, []
            for frame in frames:
                if await self._send(session, frame):
                    self.pongs_sent += 1

    # -- control --------------------------------------------------------------------------------

    def _on_reset(self, chain: str, offset: int) -> None:
        """The source numbered `chain` again from `offset`: forget the positions kept for it, and
        tell its live subscriptions (in order, after the events queued before the reset)."""
        self.offset_resets += 1
        for key in [k for k in (*self._delivered, *self._replay_floor) if k[1] == chain]:
            self._delivered.pop(key, None)
            self._replay_floor.pop(key, None)
        for session in self._live():
            for sub in session.subscriptions.values():
                if sub.request.chain == chain:
                    sub.queue.put_nowait(_Reset(offset))
        log.info("streaming: offsets of %s reset to %d", chain, offset)

    def _live(self, chain: str | None = None) -> list[_Session]:
        """The connections not closing; with `chain`, those with a subscription on it."""
        return [
            s
            for s in self._sessions.values()
            if not s.closing
            and (chain is None or any(sub.request.chain == chain for sub in s.subscriptions.values()))
        ]

    async def drop_all(self, chain: str | None = None) -> int:
        """Abort every live TCP connection (with `chain`: those subscribed to it) without a close
        frame (the client sees 1006)."""
        dropped = 0
        for session in self._live(chain):
            session.closing = True
            session.close_code = CLOSE_ABNORMAL
            self._stop_session(session)
            if session.transport is not None:
                session.transport.abort()
            dropped += 1
        log.info("streaming: dropped %d connections", dropped)
        return dropped

    async def close_all(self, code: int, reason: str = "", *, chain: str | None = None) -> int:
        """Close every live connection (with `chain`: those subscribed to it) with `code`."""
        tasks = [self._request_close(s, code, reason) for s in self._live(chain)]
        live = [t for t in tasks if t is not None]
        if live:
            await asyncio.gather(*live, return_exceptions=True)
        return len(tasks)

    def set_stall_pongs(self, enabled: bool, *, chain: str | None = None) -> None:
        """While enabled, client pings get no pong (they are dropped, not deferred). With `chain`,
        only on connections subscribed to it; disabling without a chain resumes every chain."""
        if chain is not None:
            if enabled:
                self._stalled_chains.add(chain)
            else:
                self._stalled_chains.discard(chain)
            return
        self._stall_pongs = enabled
        if not enabled:
            self._stalled_chains.clear()

    def start_backpressure(self, events: int, *, chain: str | None = None) -> None:
        """Emit `events` events on `chain` (default the first) and send them as a burst: client
        pings that arrive before a subscriber has been sent the burst's last event get their pong
        after it."""
        if events <= 0:
            return
        chain = chain or self.context.config.chains[0]
        in_burst = [
            (session, sub)
            for session in self._live()
            for sub in session.subscriptions.values()
            if sub.request.chain == chain
        ]
        for session, _ in in_burst:
            session.burst_depth += 1
        emitted = self.context.emit(events, chain=chain)
        for _, sub in in_burst:
            sub.queue.put_nowait(_BurstEnd())
        log.info(
            "streaming: backpressure burst of %d events (offsets %d-%d) to %d subscribers",
            len(emitted),
            emitted[0].offset,
            emitted[-1].offset,
            len(in_burst),
        )

    async def close_expired(self) -> int:
        """Close with 4401 every acknowledged connection whose token is no longer valid."""
        expired = [s for s in self._live() if s.token is not None and not self.context.tokens.valid(s.token)]
        tasks = [self._request_close(s, CLOSE_UNAUTHORISED, "Unauthorized: token expired") for s in expired]
        live = [t for t in tasks if t is not None]
        if live:
            await asyncio.gather(*live, return_exceptions=True)
        return len(expired)

    def snapshot(self) -> dict[str, Any]:
        """Live subscriptions and counters, JSON-ready (close code keys are strings)."""
        sessions = [
            {
                "connection": session.number,
                "chain": sub.request.chain,
                "subscription_id": sub.id,
                "delivered": sub.delivered,
                "last_offset": sub.last_offset,
                "completing": sub.stop_at is not None,
            }
            for session in self._live()
            for sub in session.subscriptions.values()
        ]
        return {
            "sessions": sessions,
            "live_connections": len(self._live()),
            "connections": self.connections,
            "rejected_handshakes": self.rejected_handshakes,
            "close_codes": {str(code): n for code, n in sorted(self.close_codes.items())},
            "resubscribe_gap_violations": self.resubscribe_gap_violations,
            "conflicts": self.conflicts,
            "pings_sent": self.pings_sent,
            "pongs_received": self.pongs_received,
            "pongs_sent": self.pongs_sent,
            "deferred_pongs": self.deferred_pongs,
            "stalled_pings": self.stalled_pings,
            "events_delivered": self.events_delivered,
            "offset_resets": self.offset_resets,
            "stall_pongs": self._stall_pongs,
            "stalled_chains": sorted(self._stalled_chains),
            "delivered_offsets": {chain: offset for (_, chain), offset in sorted(self._delivered.items())},
        }

    def connection_report(self, chains: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """The connection detector, per chain (default: every configured chain), JSON-ready:
        `connections` sockets now open with a subscription on it (closing ones included),
        `subscribed` those not closing, `max_concurrent_subscribed` the most at once ever (more than
        1 must never happen), `double_subscriptions` how many times that happened and `moments`
        when (the gateway clock; the last few), `refusals_4409` second clients refused,
        `total_connections` subscriptions accepted, `handover_overlaps` subscriptions accepted
        while a previous socket of the chain was still closing (it gets nothing more: benign)."""
        app_key = self.context.config.app_key
        open_now: dict[str, int] = {}
        subscribed: dict[str, int] = {}
        for session in self._sessions.values():
            for chain in {sub.request.chain for sub in session.subscriptions.values()}:
                open_now[chain] = open_now.get(chain, 0) + 1
                if not session.closing:
                    subscribed[chain] = subscribed.get(chain, 0) + 1
        empty = _ChainConnections()
        report: dict[str, dict[str, Any]] = {}
        for chain in self.context.config.chains if chains is None else chains:
            record = self._detector.get((app_key, chain), empty)
            report[chain] = {
                "connections": open_now.get(chain, 0),
                "subscribed": subscribed.get(chain, 0),
                "max_concurrent_subscribed": record.max_subscribed,
                "double_subscriptions": record.doubles,
                "refusals_4409": record.refusals,
                "total_connections": record.total,
                "handover_overlaps": record.overlaps,
                "moments": list(record.moments),
            }
        return report

    async def shutdown(self) -> None:
        """Close every connection with 1001 (the gateway is stopping)."""
        self._shutting_down = True
        await self.close_all(CLOSE_GOING_AWAY, "Going away")
