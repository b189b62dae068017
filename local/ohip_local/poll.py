"""The Poll API: OPERA Cloud Integration Processor `businessEvents` (dequeue semantics).

    GET /int/v1/externalSystem/{system}/businessEvents?limit=N
    GET /int/v1/externalSystem/{system}/hotels/{hotel}/businessEvents?limit=N

Headers `Authorization: Bearer <token>`, `x-app-key` and `x-hotelid` are required. Each call
removes the events it returns from the external system's queue: no offset, no acknowledgement.
200 with `{"businessEventData": [...]}`, 204 with an empty body when nothing is queued.

Real-world quirks are reproduced, deterministically from the action id so that tests can count on
each variant appearing: `moduleName` as a name (`"Reservation"`) or as the module's number in the
Integration Processor spec (`16`, or `"16"`), ids as JSON numbers or strings, `createdDateTime`
as `"2026-11-25 10:15:38.0"` (UTC, whole seconds, no zone), and detail attributes left out when
empty.

Adversarial events (`adversarial.py`) may lack `hotelId` (a chain-level event), `publisherId`,
`actionId`, the `details` list, detail values or scopes: each is left out, or sent as null when the
event says `missing_as="null"`. An empty detail list is `"details": []`. Strings go out as they
are stored, odd Unicode included; the JSON is ASCII (`ensure_ascii`), so a lone UTF-16 surrogate
is the escape `\ud83d`, which JSON allows, and never an encoding error.

Faults for the relay's fallback tests (`set_fault`) are applied before anything is dequeued, so
a faulted request never loses an event: "5xx" answers `status`, "429" answers Too Many Requests
(with `Retry-After` when given), "slow" waits `delay` seconds and then serves normally, "off"
ends the fault. `count=None` keeps the fault until it is turned off, otherwise it applies to the
next `count` requests.

Error bodies are problem details (`type`, `title`, `status`, `detail`) and never carry event data.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ohip_relay.events import MODULES

from .faults import take_fault
from .source import Detail, MissingAs, StoredEvent

if TYPE_CHECKING:
    from .gateway import GatewayContext

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1
MAX_LIMIT = 100
FAULT_MODES = ("5xx", "429", "slow", "off")
_LIMIT = re.compile(r"^[0-9]{1,4}$")
_DIGITS = re.compile(r"^[0-9]{1,18}$")

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def problem(status: int, detail: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """A problem-details JSON error (RFC 9457 shape, as OHIP answers)."""
    body = {
        "type": f"https://www.rfc-editor.org/rfc/rfc9110.html#status.{status}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    return web.json_response(body, status=status, headers=headers)


@dataclass(frozen=True)
class PollFault:
    mode: str = "off"
    status: int = 503
    remaining: int | None = None  # requests still to fault; None: until turned off
    delay: float = 0.0
    retry_after: int | None = None


def module_name_value(event: StoredEvent) -> str | int:
    """`moduleName` as OHIP sends it for this event: a name or a number (JSON number or string)."""
    action = event.action_instance_id
    if action % 2 == 0:
        return event.module.replace("_", " ").title().replace(" ", "")
    try:
        number = MODULES.index(event.module)
    except ValueError:
        return event.module.title()
    return number if action % 4 == 1 else str(number)


def _number_or_text(value: int | str, flip: bool) -> int | str:
    """An id as a JSON number or as a string (OHIP sends both)."""
    text = str(value)
    return int(text) if flip and _DIGITS.fullmatch(text) else text


def created_date_time(event: StoredEvent) -> str:
    """`2026-11-25 10:15:38.0`: UTC, whole seconds, no zone (java.sql.Timestamp style)."""
    return f"{event.created_datetime:%Y-%m-%d %H:%M:%S}.0"


def detail_item(detail: Detail, missing_as: MissingAs = "absent") -> dict[str, str | None]:
    """One `details` entry: empty values left out; a missing one (None) left out or null."""
    item: dict[str, str | None] = {"dataElement": detail.element_name}
    for name, value in (
        ("oldValue", detail.old_value),
        ("newValue", detail.new_value),
        ("scopeFrom", detail.scope_from),
        ("scopeTo", detail.scope_to),
    ):
        if value:
            item[name] = value
        elif value is None and missing_as == "null":
            item[name] = None
    return item


def business_event_data(event: StoredEvent) -> dict[str, Any]:
    """One item of `businessEventData` for a stored event."""
    action = event.action_instance_id
    null = event.missing_as == "null"
    header: dict[str, Any] = {
        "moduleName": module_name_value(event),
        "actionType": event.event_name,
        "actionId": _number_or_text(action, action % 3 == 0) if event.has_action_id else None,
        "primaryKey": _number_or_text(event.primary_key, action % 5 == 0),
        "parentActionId": _number_or_text(event.parent_action_id, action % 3 == 1),
        "publisherId": (
            None if event.publisher_id is None else _number_or_text(event.publisher_id, action % 7 < 3)
        ),
        "createdDateTime": created_date_time(event),
        "hotelId": event.hotel,
    }
    if not null:
        header = {k: v for k, v in header.items() if v is not None}
    business_event: dict[str, Any] = {"header": header}
    if event.has_detail:
        business_event["details"] = [detail_item(d, event.missing_as) for d in event.details]
    elif null:
        business_event["details"] = None
    return {"businessEvent": business_event, "businessEventId": {"id": str(event.business_event_id)}}


class PollEndpoint:
    def __init__(self, context: GatewayContext) -> None:
        self.context = context
        self._fault = PollFault()
        self.requests = 0
        self.faulted = 0
        self.events_served = 0
        self.responses: Counter[int] = Counter()

    # -- faults ----------------------------------------------------------------------------------

    def set_fault(
        self,
        mode: str,
        *,
        status: int = 503,
        count: int | None = None,
        delay: float = 0.0,
        retry_after: int | None = None,
    ) -> dict[str, Any]:
        """Fault the next `count` requests (all of them when None) until `set_fault("off")`."""
        if mode not in FAULT_MODES:
            raise ValueError(f"fault mode must be one of {', '.join(FAULT_MODES)}")
        if mode == "5xx" and not 500 <= status <= 599:
            raise ValueError("status must be 500-599 for mode 5xx")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if mode == "429":
            status = 429
        self._fault = PollFault() if mode == "off" else PollFault(mode, status, count, delay, retry_after)
        log.info("poll fault set: mode=%s status=%s count=%s", mode, status, count)
        return asdict(self._fault)

    def _take_fault(self) -> PollFault | None:
        fault, self._fault = take_fault(self._fault, PollFault())
        return fault

    # -- the endpoint ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = await self._respond(request)
        self.responses[response.status] += 1
        return response

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        fault = self._take_fault()
        if fault is not None:
            if fault.mode == "slow":
                await asyncio.sleep(fault.delay)
            else:
                self.faulted += 1
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
                return problem(fault.status, "the service is temporarily unavailable", headers=headers)

        ctx = self.context
        if not ctx.tokens.bearer_valid(request.headers.get("Authorization")):
            return problem(401, "missing, invalid or expired bearer token")
        if request.headers.get("x-app-key") != ctx.config.app_key:
            return problem(401, "missing or unknown x-app-key")
        system = request.match_info["system"]
        if not ctx.source.has_external_system(system):
            return problem(404, "unknown external system")
        hotel = request.match_info.get("hotel")
        if hotel is not None and hotel not in ctx.config.hotels:
            return problem(404, "unknown hotel")
        if not request.headers.get("x-hotelid", "").strip():
            return problem(400, "the x-hotelid header is required")
        limit_text = request.query.get("limit")
        if limit_text is None:
            limit = DEFAULT_LIMIT
        else:
            text = limit_text.strip()
            if not _LIMIT.match(text) or not 1 <= int(text) <= MAX_LIMIT:
                return problem(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
            limit = int(text)

        events = ctx.source.dequeue(system, limit, hotel=hotel)
        if not events:
            return web.Response(status=204)
        self.events_served += len(events)
        # json.dumps's default ensure_ascii: odd Unicode (lone surrogates included) goes out escaped
        return web.json_response({"businessEventData": [business_event_data(e) for e in events]})

    # -- state -----------------------------------------------------------------------------------

    @property
    def fault(self) -> PollFault:
        return self._fault

    def snapshot(self) -> dict[str, Any]:
        return {
            "fault": asdict(self._fault),
            "requests": self.requests,
            "faulted": self.faulted,
            "events_served": self.events_served,
            "responses": {str(status): n for status, n in sorted(self.responses.items())},
        }
