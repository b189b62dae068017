"""Realistic OPERA business events (RESERVATION and PROFILE modules) for the local gateway.

`EventGenerator(seed=..., hotels=...)` produces `EventDraft`s; the same seed and the same calls
give the same drafts. The generator keeps a small model of each hotel's guests and reservations,
so updates, cancellations and check-ins refer to primary keys it created earlier and several
events hit the same resource (the relay's FIFO groups and replay tests need that).

Details use OPERA's element names. Elements carrying personal data are flagged `personal=True`;
the values are fiction: names from small lists, e-mails at example.com, phone numbers in Ofcom's
drama range (+44 20 7946 0000-0999). New events have an empty `oldValue`; update events also
list some unchanged elements (old == new), as OPERA does, so a stream subscription with
`delta: true` visibly sends less.

No two drafts describe the same change: the same event name, resource and changed elements never
repeat (the relay's event key could not tell two such changes apart within one second). Real
OPERA does repeat them; `adversarial.py` makes such lookalikes, odd Unicode and missing fields on
request (`emit(..., adversarial=...)`), from a generator of its own, leaving these drafts as they are.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TypeVar

from .source import Detail, EventDraft

NEW_RESERVATION = "NEW RESERVATION"
UPDATE_RESERVATION = "UPDATE RESERVATION"
CANCEL_RESERVATION = "CANCEL RESERVATION"
CHECK_IN = "CHECK IN"
NEW_PROFILE = "NEW PROFILE"
UPDATE_PROFILE = "UPDATE PROFILE"

EVENT_MODULES: dict[str, str] = {
    NEW_RESERVATION: "RESERVATION",
    UPDATE_RESERVATION: "RESERVATION",
    CANCEL_RESERVATION: "RESERVATION",
    CHECK_IN: "RESERVATION",
    NEW_PROFILE: "PROFILE",
    UPDATE_PROFILE: "PROFILE",
}

# Relative weights of the event names (updates dominate, as in a real property's feed).
WEIGHTS: dict[str, int] = {
    NEW_RESERVATION: 22,
    UPDATE_RESERVATION: 30,
    CANCEL_RESERVATION: 7,
    CHECK_IN: 11,
    NEW_PROFILE: 12,
    UPDATE_PROFILE: 18,
}

# Element names whose values are personal data.
PERSONAL_ELEMENTS = frozenset(
    {"NAME", "FIRST NAME", "EMAIL", "PHONE NUMBER", "ADDRESS LINE 1", "CITY", "POSTAL CODE", "BIRTH DATE"}
)

LAST_NAMES = (
    "Testperson", "Example", "Sampleton", "Fictional", "Placeholder", "Demoe",
    "Mockingbird", "Fakeley", "Dummett", "Notreal",
)  # fmt: skip
FIRST_NAMES = ("Jane", "John", "Alex", "Maria", "Sam", "Priya", "Chen", "Olu", "Ines", "Tom")
STREETS = ("Example Street", "Sample Road", "Test Lane", "Demo Avenue", "Fiction Close")
CITIES = (("Sampleton", "SA1 1AA"), ("Testbury", "TE2 2BB"), ("Exampleford", "EX3 3CC"))
ROOM_TYPES = ("STDK", "STDT", "DLXK", "DLXT", "JRSTE")
RATE_CODES = ("BAR", "BARBB", "CORP", "ADV14", "PKG")
VIP_LEVELS = ("VIP1", "VIP2", "VIP3")
CANCELLATION_REASONS = ("CHANGE OF PLANS", "DUPLICATE", "ILLNESS", "WEATHER")
PUBLISHERS = ("57489", "57491", "57502")

FIRST_ARRIVAL = date(2026, 12, 1)
POOL_SIZE = 40  # resources per hotel that later events may refer to (the most recent ones)
_UPDATE_ATTEMPTS = 8

_T = TypeVar("_T")

# elementSequence / elementType / elementRole of the contact elements (stream only).
_EMAIL = {"element_sequence": "1", "element_type": "EMAIL", "element_role": "PRIMARY"}
_MOBILE = {"element_sequence": "1", "element_type": "MOBILE", "element_role": "PRIMARY"}
_HOME = {"element_sequence": "1", "element_type": "HOME"}


@dataclass(eq=False)
class _Guest:
    profile_id: str
    last_name: str
    first_name: str
    email: str
    phone: str
    street: str
    city: str
    postcode: str
    vip: str = ""


@dataclass(eq=False)
class _Reservation:
    key: str
    confirmation: str
    guest: _Guest
    status: str
    arrival: date
    departure: date
    room_type: str
    adults: int
    rate_code: str
    rate_amount: str
    room: str = ""


def _iso(day: date) -> str:
    return day.isoformat()


def make_detail(
    name: str,
    old: str | None,
    new: str | None,
    *,
    scope_from: str | None = None,
    scope_to: str | None = None,
    element_sequence: str | None = None,
    element_type: str | None = None,
    element_role: str | None = None,
) -> Detail:
    return Detail(
        name,
        old,
        new,
        scope_from=scope_from,
        scope_to=scope_to,
        element_sequence=element_sequence,
        element_type=element_type,
        element_role=element_role,
        personal=name in PERSONAL_ELEMENTS,
    )


def unchanged_detail(name: str, value: str, **extra: str) -> Detail:
    return make_detail(name, value, value, **extra)


class EventGenerator:
    """Deterministic stream of realistic `EventDraft`s for the configured hotels."""

    def __init__(self, *, seed: int, hotels: Sequence[str]) -> None:
        if not hotels:
            raise ValueError("the generator needs at least one hotel")
        self._rng = random.Random(seed)
        self._hotels = tuple(hotels)
        self._names = tuple(WEIGHTS)
        self._weights = tuple(WEIGHTS.values())
        self._next_reservation = 2_240_000
        self._next_profile = 1_280_000
        self._next_confirmation = 880_000
        self._next_cancellation = 51_000
        self._phones = 0
        self._reserved: dict[str, list[_Reservation]] = {}
        self._in_house: dict[str, list[_Reservation]] = {}
        self._profiles: dict[str, list[_Guest]] = {}
        self._seen: set[tuple[str, str, frozenset[tuple[str, str, str, str, str]]]] = set()
        self.generated = 0
        self._builders: dict[str, Callable[[str], EventDraft | None]] = {
            NEW_RESERVATION: self._new_reservation,
            UPDATE_RESERVATION: self._update_reservation,
            CANCEL_RESERVATION: self._cancel_reservation,
            CHECK_IN: self._check_in,
            NEW_PROFILE: self._new_profile,
            UPDATE_PROFILE: self._update_profile,
        }

    # -- public ------------------------------------------------------------------------------

    def next_draft(self, hotel: str | None = None) -> EventDraft:
        """The next business change (in `hotel`, or a hotel of the generator's choosing)."""
        rng = self._rng
        target = hotel if hotel is not None else rng.choice(self._hotels)
        name = rng.choices(self._names, self._weights)[0]
        draft = self._builders[name](target)
        if draft is None:  # nothing to update yet: create something instead
            draft = self._new_profile(target) if name == UPDATE_PROFILE else self._new_reservation(target)
        if draft.event_name in (UPDATE_RESERVATION, UPDATE_PROFILE):  # the others cannot repeat
            self._seen.add(self._signature(draft))
        self.generated += 1
        return draft

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _signature(draft: EventDraft) -> tuple[str, str, frozenset[tuple[str, str, str, str, str]]]:
        changed = frozenset(
            (d.element_name, d.scope_from or "", d.scope_to or "", d.old_value or "", d.new_value or "")
            for d in draft.details
            if (d.old_value or "") != (d.new_value or "")
        )
        return (draft.event_name, f"{draft.hotel}:{draft.primary_key}", changed)

    def _draft(self, hotel: str, event_name: str, key: str, details: list[Detail]) -> EventDraft:
        return EventDraft(
            hotel=hotel,
            module=EVENT_MODULES[event_name],
            event_name=event_name,
            primary_key=key,
            publisher_id=self._rng.choice(PUBLISHERS),
            details=tuple(details),
        )

    @staticmethod
    def _remember(pool: dict[str, list[_T]], hotel: str, item: _T) -> None:
        items = pool.setdefault(hotel, [])
        items.append(item)
        if len(items) > POOL_SIZE:
            del items[0]

    def _recent(self, items: list[_T] | None) -> _T | None:
        """One of the most recent resources (so that several events hit the same one)."""
        if not items:
            return None
        return self._rng.choice(items[-POOL_SIZE // 2 :])

    def _phone(self) -> str:
        self._phones = (self._phones + self._rng.randint(1, 37)) % 1000
        return f"+44 20 7946 0{self._phones:03d}"

    def _new_guest(self) -> _Guest:
        rng = self._rng
        self._next_profile += 1
        last, first = rng.choice(LAST_NAMES), rng.choice(FIRST_NAMES)
        city, postcode = rng.choice(CITIES)
        return _Guest(
            profile_id=str(self._next_profile),
            last_name=last,
            first_name=first,
            email=f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@example.com",
            phone=self._phone(),
            street=f"{rng.randint(1, 120)} {rng.choice(STREETS)}",
            city=city,
            postcode=postcode,
        )

    def _rate(self) -> str:
        return f"{self._rng.randrange(9000, 32000, 500) / 100:.2f}"

    # -- reservations --------------------------------------------------------------------------

    def _new_reservation(self, hotel: str) -> EventDraft:
        rng = self._rng
        known = self._recent(self._profiles.get(hotel)) if rng.random() < 0.5 else None
        guest = known or self._new_guest()
        self._next_reservation += 1
        self._next_confirmation += rng.randint(1, 9)
        arrival = FIRST_ARRIVAL + timedelta(days=rng.randint(0, 120))
        res = _Reservation(
            key=str(self._next_reservation),
            confirmation=str(self._next_confirmation),
            guest=guest,
            status="RESERVED",
            arrival=arrival,
            departure=arrival + timedelta(days=rng.randint(1, 5)),
            room_type=rng.choice(ROOM_TYPES),
            adults=rng.randint(1, 3),
            rate_code=rng.choice(RATE_CODES),
            rate_amount=self._rate(),
        )
        self._remember(self._reserved, hotel, res)
        stay = {"scope_from": _iso(res.arrival), "scope_to": _iso(res.departure - timedelta(days=1))}
        details = [
            make_detail("NAME", "", guest.last_name),
            make_detail("FIRST NAME", "", guest.first_name),
            make_detail("CONFIRMATION NO", "", res.confirmation),
            make_detail("GUEST NAME ID", "", guest.profile_id),
            make_detail("RESERVATION STATUS", "", res.status),
            make_detail("ARRIVAL DATE", "", _iso(res.arrival)),
            make_detail("DEPARTURE DATE", "", _iso(res.departure)),
            make_detail("ROOM TYPE", "", res.room_type),
            make_detail("ADULTS", "", str(res.adults), **stay),
            make_detail("RATE CODE", "", res.rate_code, **stay),
            make_detail("RATE AMOUNT", "", res.rate_amount, **stay),
            make_detail("EMAIL", "", guest.email, **_EMAIL),
            make_detail("PHONE NUMBER", "", guest.phone, **_MOBILE),
        ]
        return self._draft(hotel, NEW_RESERVATION, res.key, details)

    def _update_reservation(self, hotel: str) -> EventDraft | None:
        pool = self._reserved.get(hotel, []) + self._in_house.get(hotel, [])
        for _ in range(_UPDATE_ATTEMPTS):
            res = self._recent(pool)
            if res is None:
                return None
            changed, after = self._reservation_change(res)
            details = [
                unchanged_detail("CONFIRMATION NO", res.confirmation),
                unchanged_detail("RESERVATION STATUS", res.status),
                unchanged_detail("NAME", res.guest.last_name),
                *changed,
            ]
            draft = self._draft(hotel, UPDATE_RESERVATION, res.key, details)
            if self._signature(draft) not in self._seen:
                for field, value in after.items():
                    setattr(res, field, value)
                return draft
        return None

    def _reservation_change(self, res: _Reservation) -> tuple[list[Detail], dict[str, object]]:
        rng = self._rng
        nights = {"scope_from": _iso(res.arrival), "scope_to": _iso(res.departure - timedelta(days=1))}
        kind = rng.choice(("rate", "rate", "room type", "adults", "extend", "room type and rate"))
        if res.status != "RESERVED" and kind == "extend":
            kind = "rate"
        if kind == "extend":
            departure = res.departure + timedelta(days=rng.randint(1, 2))
            extra = {"scope_from": _iso(res.departure), "scope_to": _iso(departure - timedelta(days=1))}
            changes = [
                make_detail("DEPARTURE DATE", _iso(res.departure), _iso(departure)),
                unchanged_detail("RATE AMOUNT", res.rate_amount, **nights),
                make_detail("RATE AMOUNT", "", res.rate_amount, **extra),
            ]
            return changes, {"departure": departure}
        if kind == "adults":
            adults = res.adults % 3 + 1
            return [make_detail("ADULTS", str(res.adults), str(adults), **nights)], {"adults": adults}
        after: dict[str, object] = {}
        changes = []
        if kind in ("room type", "room type and rate"):
            room_type = rng.choice([r for r in ROOM_TYPES if r != res.room_type])
            changes.append(make_detail("ROOM TYPE", res.room_type, room_type))
            after["room_type"] = room_type
        if kind in ("rate", "room type and rate"):
            amount = self._rate()
            while amount == res.rate_amount:
                amount = self._rate()
            changes.append(make_detail("RATE AMOUNT", res.rate_amount, amount, **nights))
            after["rate_amount"] = amount
        return changes, after

    def _cancel_reservation(self, hotel: str) -> EventDraft | None:
        res = self._recent(self._reserved.get(hotel))
        if res is None:
            return None
        self._reserved[hotel].remove(res)
        self._next_cancellation += 1
        details = [
            unchanged_detail("CONFIRMATION NO", res.confirmation),
            make_detail("RESERVATION STATUS", res.status, "CANCELLED"),
            make_detail("CANCELLATION NO", "", str(self._next_cancellation)),
            make_detail("CANCELLATION REASON", "", self._rng.choice(CANCELLATION_REASONS)),
            unchanged_detail("NAME", res.guest.last_name),
            unchanged_detail("ARRIVAL DATE", _iso(res.arrival)),
            unchanged_detail("DEPARTURE DATE", _iso(res.departure)),
        ]
        res.status = "CANCELLED"
        return self._draft(hotel, CANCEL_RESERVATION, res.key, details)

    def _check_in(self, hotel: str) -> EventDraft | None:
        res = self._recent(self._reserved.get(hotel))
        if res is None:
            return None
        self._reserved[hotel].remove(res)
        room = f"{self._rng.randint(1, 12)}{self._rng.randint(1, 40):02d}"
        details = [
            unchanged_detail("CONFIRMATION NO", res.confirmation),
            make_detail("RESERVATION STATUS", res.status, "CHECKED IN"),
            make_detail("ROOM", res.room, room),
            unchanged_detail("ROOM TYPE", res.room_type),
            unchanged_detail("NAME", res.guest.last_name),
            unchanged_detail("ARRIVAL DATE", _iso(res.arrival)),
        ]
        res.status, res.room = "CHECKED IN", room
        self._remember(self._in_house, hotel, res)
        return self._draft(hotel, CHECK_IN, res.key, details)

    # -- profiles ------------------------------------------------------------------------------

    def _new_profile(self, hotel: str) -> EventDraft:
        guest = self._new_guest()
        self._remember(self._profiles, hotel, guest)
        details = [
            make_detail("NAME", "", guest.last_name),
            make_detail("FIRST NAME", "", guest.first_name),
            make_detail("PROFILE TYPE", "", "GUEST"),
            make_detail("LANGUAGE", "", "E"),
            make_detail("EMAIL", "", guest.email, **_EMAIL),
            make_detail("PHONE NUMBER", "", guest.phone, **_MOBILE),
            make_detail("ADDRESS LINE 1", "", guest.street, **_HOME),
            make_detail("CITY", "", guest.city, **_HOME),
            make_detail("POSTAL CODE", "", guest.postcode, **_HOME),
            make_detail("COUNTRY", "", "GB", **_HOME),
        ]
        return self._draft(hotel, NEW_PROFILE, guest.profile_id, details)

    def _update_profile(self, hotel: str) -> EventDraft | None:
        for _ in range(_UPDATE_ATTEMPTS):
            guest = self._recent(self._profiles.get(hotel))
            if guest is None:
                return None
            changed, after = self._profile_change(guest)
            details = [
                unchanged_detail("NAME", guest.last_name),
                unchanged_detail("FIRST NAME", guest.first_name),
                *changed,
            ]
            if self._rng.random() < 0.3:
                details.append(make_detail("WEBPAGE", "", ""))  # OPERA lists some empty elements
            draft = self._draft(hotel, UPDATE_PROFILE, guest.profile_id, details)
            if self._signature(draft) not in self._seen:
                for field, value in after.items():
                    setattr(guest, field, value)
                return draft
        return None

    def _profile_change(self, guest: _Guest) -> tuple[list[Detail], dict[str, str]]:
        rng = self._rng
        kind = rng.choice(("email", "phone", "address", "vip", "email and phone"))
        changes: list[Detail] = []
        after: dict[str, str] = {}
        if kind in ("email", "email and phone"):
            new_email = f"{guest.first_name[0]}.{guest.last_name}{rng.randint(100, 999)}@example.com".lower()
            changes.append(make_detail("EMAIL", guest.email, new_email, **_EMAIL))
            after["email"] = new_email
        else:
            changes.append(unchanged_detail("EMAIL", guest.email, **_EMAIL))
        if kind in ("phone", "email and phone"):
            new_phone = self._phone()
            changes.append(make_detail("PHONE NUMBER", guest.phone, new_phone, **_MOBILE))
            after["phone"] = new_phone
        if kind == "address":
            street = f"{rng.randint(1, 120)} {rng.choice(STREETS)}"
            city, postcode = rng.choice(CITIES)
            changes += [
                make_detail("ADDRESS LINE 1", guest.street, street, **_HOME),
                make_detail("CITY", guest.city, city, **_HOME),
                make_detail("POSTAL CODE", guest.postcode, postcode, **_HOME),
            ]
            after.update(street=street, city=city, postcode=postcode)
        if kind == "vip":
            vip = rng.choice([v for v in ("", *VIP_LEVELS) if v != guest.vip])
            changes.append(make_detail("VIP STATUS", guest.vip, vip))
            after["vip"] = vip
        return changes, after
