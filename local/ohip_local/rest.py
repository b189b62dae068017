"""The gateway's REST resources: the current state of the reservations and profiles its events name.

    GET /rsv/v1/hotels/{hotelId}/reservations/{reservationId}
    GET /crm/v1/profiles/{profileId}

Headers `Authorization: Bearer <token>`, `x-app-key` and `x-hotelid` are required (401, 401, 400).

The state is folded from the events the gateway's source holds, so it is consistent with what both
channels emit by construction: a resource is what its last event left it as (each detail element's
`newValue`; scoped elements such as rates per date range). A cancelled reservation stays readable
with status `CANCELLED`; `delete_reservation` / `delete_profile` (control: `POST /rest-delete`)
remove a resource so that the next GET answers 404, until an event for it arrives again.

The answers follow the shape of OHIP's reservation and CRM profile APIs in a reduced form (ids
lists, roomStay, reservationGuests; profileDetails with customer, emails, telephones,
addresses); values are the fictional ones the generator produced.

Faults for the enricher's tests (`set_fault`, control: `POST /rest-fault`) are applied before
anything else: "5xx" answers `status`, "429" answers Too Many Requests (with `Retry-After` when
given), "off" ends the fault; `count=None` keeps it until turned off.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .faults import take_fault
from .poll import problem
from .source import StoredEvent

if TYPE_CHECKING:
    from .gateway import GatewayContext

log = logging.getLogger(__name__)

FAULT_MODES = ("5xx", "429", "off")
RESERVATION_PATH = "/rsv/v1/hotels/{hotel}/reservations/{reservation}"
PROFILE_PATH = "/crm/v1/profiles/{profile}"


@dataclass(frozen=True)
class RestFault:
    mode: str = "off"
    status: int = 503
    remaining: int | None = None
    retry_after: int | None = None


@dataclass
class _State:
    """One resource as its events left it: element -> value, scoped elements per date range."""

    hotel: str
    module: str
    key: str
    values: dict[str, str] = field(default_factory=dict)
    scoped: dict[str, dict[tuple[str, str], str]] = field(default_factory=dict)
    last_event: str = ""
    last_offset: int = 0
    modified_at: float = 0.0
    publisher: str = ""
    created_at: float = 0.0

    def apply(self, event: StoredEvent) -> None:
        for d in event.details:
            value = d.new_value or ""
            if d.scope_from or d.scope_to:
                self.scoped.setdefault(d.element_name, {})[(d.scope_from or "", d.scope_to or "")] = value
            else:
                self.values[d.element_name] = value
        self.last_event = event.event_name
        self.last_offset = event.offset
        self.modified_at = event.created_at
        self.publisher = event.publisher_id or ""
        if not self.created_at:
            self.created_at = event.created_at

    def value(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        scoped = self.scoped.get(name)
        return scoped[sorted(scoped)[-1]] if scoped else ""


def _instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _drop_empty(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v not in ("", None, [], {})}


def render_reservation(state: _State) -> dict[str, Any]:
    v = state.value
    ids = [{"id": state.key, "type": "Reservation"}]
    if v("CONFIRMATION NO"):
        ids.append({"id": v("CONFIRMATION NO"), "type": "Confirmation"})
    if v("CANCELLATION NO"):
        ids.append({"id": v("CANCELLATION NO"), "type": "CancellationNumber"})
    rates = [
        {"start": start, "end": end, "amount": amount}
        for (start, end), amount in sorted(state.scoped.get("RATE AMOUNT", {}).items())
        if amount
    ]
    adults = [
        {"start": start, "end": end, "adults": int(n)}
        for (start, end), n in sorted(state.scoped.get("ADULTS", {}).items())
        if n.isdigit()
    ]
    room_stay = _drop_empty(
        {
            "arrivalDate": v("ARRIVAL DATE"),
            "departureDate": v("DEPARTURE DATE"),
            "roomType": v("ROOM TYPE"),
            "roomId": v("ROOM"),
            "ratePlanCode": v("RATE CODE"),
            "adultCount": int(v("ADULTS")) if v("ADULTS").isdigit() else None,
            "guestCounts": adults,
            "roomRates": rates,
        }
    )
    guest = _drop_empty(
        {
            "profileIdList": [{"id": v("GUEST NAME ID"), "type": "Profile"}] if v("GUEST NAME ID") else [],
            "givenName": v("FIRST NAME"),
            "surname": v("NAME"),
            "email": v("EMAIL"),
            "phoneNumber": v("PHONE NUMBER"),
        }
    )
    reservation = _drop_empty(
        {
            "reservationIdList": ids,
            "hotelId": state.hotel,
            "reservationStatus": v("RESERVATION STATUS"),
            "roomStay": room_stay,
            "reservationGuests": [{"profileInfo": guest}] if guest else [],
            "cancellation": _drop_empty({"reason": v("CANCELLATION REASON"), "number": v("CANCELLATION NO")}),
            "createDateTime": _instant(state.created_at),
            "lastModifyDateTime": _instant(state.modified_at),
            "lastModifierId": state.publisher,
        }
    )
    return {"reservations": {"reservation": [reservation]}}


def render_profile(state: _State) -> dict[str, Any]:
    v = state.value
    address = _drop_empty(
        {
            "addressLine": [v("ADDRESS LINE 1")] if v("ADDRESS LINE 1") else [],
            "cityName": v("CITY"),
            "postalCode": v("POSTAL CODE"),
            "country": {"code": v("COUNTRY")} if v("COUNTRY") else None,
        }
    )
    details = _drop_empty(
        {
            "customer": _drop_empty(
                {
                    "personName": [
                        _drop_empty(
                            {"givenName": v("FIRST NAME"), "surname": v("NAME"), "nameType": "Primary"}
                        )
                    ],
                    "language": v("LANGUAGE"),
                    "vipStatus": v("VIP STATUS"),
                }
            ),
            "profileType": v("PROFILE TYPE"),
            "emails": {"emailInfo": [{"email": {"emailAddress": v("EMAIL"), "primaryInd": True}}]}
            if v("EMAIL")
            else None,
            "telephones": {"telephoneInfo": [{"telephone": {"phoneNumber": v("PHONE NUMBER")}}]}
            if v("PHONE NUMBER")
            else None,
            "addresses": {"addressInfo": [{"address": address}]} if address else None,
            "createDateTime": _instant(state.created_at),
            "lastModifyDateTime": _instant(state.modified_at),
            "lastModifierId": state.publisher,
        }
    )
    return {"profileDetails": details, "profileIdList": [{"id": state.key, "type": "Profile"}]}


class ResourceStore:
    """Reservations by (hotel, id), profiles by id, kept current by listening to the source."""

    def __init__(self, context: GatewayContext) -> None:
        self._reservations: dict[tuple[str, str], _State] = {}
        self._profiles: dict[str, _State] = {}
        context.source.listen_all(self.apply)

    def apply(self, event: StoredEvent) -> None:
        if event.module == "RESERVATION":
            key = (event.hotel or "", event.primary_key)  # "": a chain-level event (no hotel)
            state = self._reservations.get(key)
            if state is None:
                state = self._reservations[key] = _State(key[0], event.module, event.primary_key)
            state.apply(event)
        elif event.module == "PROFILE":
            state = self._profiles.get(event.primary_key)
            if state is None:
                state = self._profiles[event.primary_key] = _State(
                    event.hotel or "", event.module, event.primary_key
                )
            state.apply(event)

    def reservation(self, hotel: str, key: str) -> dict[str, Any] | None:
        state = self._reservations.get((hotel, key))
        return render_reservation(state) if state else None

    def profile(self, key: str) -> dict[str, Any] | None:
        state = self._profiles.get(key)
        return render_profile(state) if state else None

    def delete_reservation(self, hotel: str, key: str) -> bool:
        return self._reservations.pop((hotel, key), None) is not None

    def delete_profile(self, key: str) -> bool:
        return self._profiles.pop(key, None) is not None

    def counts(self) -> dict[str, int]:
        return {"reservations": len(self._reservations), "profiles": len(self._profiles)}


class RestEndpoint:
    def __init__(self, context: GatewayContext) -> None:
        self.context = context
        self.store = ResourceStore(context)
        self._fault = RestFault()
        self.requests = 0
        self.faulted = 0
        self.responses: Counter[int] = Counter()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(RESERVATION_PATH, self.handle)
        app.router.add_get(PROFILE_PATH, self.handle)

    # -- faults ----------------------------------------------------------------------------------

    def set_fault(
        self, mode: str, *, status: int = 503, count: int | None = None, retry_after: int | None = None
    ) -> dict[str, Any]:
        if mode not in FAULT_MODES:
            raise ValueError(f"fault mode must be one of {', '.join(FAULT_MODES)}")
        if mode == "5xx" and not 500 <= status <= 599:
            raise ValueError("status must be 500-599 for mode 5xx")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if mode == "429":
            status = 429
        self._fault = RestFault() if mode == "off" else RestFault(mode, status, count, retry_after)
        log.info("rest fault set: mode=%s status=%s count=%s", mode, status, count)
        return asdict(self._fault)

    def _take_fault(self) -> RestFault | None:
        fault, self._fault = take_fault(self._fault, RestFault())
        return fault

    def delete(self, kind: str, key: str, hotel: str | None = None) -> bool:
        if kind == "reservation":
            if hotel is None:
                raise ValueError("hotel is required to delete a reservation")
            return self.store.delete_reservation(hotel, key)
        if kind == "profile":
            return self.store.delete_profile(key)
        raise ValueError("kind must be reservation or profile")

    # -- the endpoint ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = self._respond(request)
        self.responses[response.status] += 1
        return response

    def _respond(self, request: web.Request) -> web.Response:
        fault = self._take_fault()
        if fault is not None:
            self.faulted += 1
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            return problem(fault.status, "the service is temporarily unavailable", headers=headers)
        ctx = self.context
        if not ctx.tokens.bearer_valid(request.headers.get("Authorization")):
            return problem(401, "missing, invalid or expired bearer token")
        if request.headers.get("x-app-key") != ctx.config.app_key:
            return problem(401, "missing or unknown x-app-key")
        if not request.headers.get("x-hotelid", "").strip():
            return problem(400, "the x-hotelid header is required")
        info = request.match_info
        if "reservation" in info:
            if info["hotel"] not in ctx.config.hotels:
                return problem(404, "unknown hotel")
            resource = self.store.reservation(info["hotel"], info["reservation"])
        else:
            resource = self.store.profile(info["profile"])
        if resource is None:
            return problem(404, "no such resource")
        return web.json_response(resource)

    # -- state -----------------------------------------------------------------------------------

    @property
    def fault(self) -> RestFault:
        return self._fault

    def snapshot(self) -> dict[str, Any]:
        return {
            "fault": asdict(self._fault),
            "requests": self.requests,
            "faulted": self.faulted,
            "responses": {str(status): n for status, n in sorted(self.responses.items())},
            **self.store.counts(),
        }
