"""Adversarial OPERA business events: what real OPERA sends and the friendly generator never does.

`AdversarialGenerator(seed=..., hotels=...)` produces units of `EventDraft`s; the same seed and the
same calls give the same units. A unit is one event, or a group of lookalikes that the gateway
stamps within one second (`AdversarialUnit.same_second`). Every draft is a distinct event: the
source gives each its own offset, uniqueEventId and businessEventId. Resources get primary keys
of their own (profiles from 9100001, reservations from 9500001), so the generator's model and its
"no two drafts describe the same change" promise are untouched.

Kinds and their variants (select "kind" for all its variants, "kind:variant" for one, "all"):

- `lookalike`: distinct events whose content key (`ohip_relay.events.event_key`) is equal.
  - `repeat`: the same change two or three times on one resource by the same publisher within
    one second: VIP set, cleared, set again (events 1 and 3 identical), or a room type change
    sent twice.
  - `sequence`: one change, then the same change on two detail rows that differ only by
    `elementSequence` (the key sees one changed element in both).
  - `unchanged`: one to three events with no changed element at all: every detail has
    oldValue == newValue, the detail list is empty, or the values differ only by XML escaping.
  - `escaped`: the same change with an XML-escaped value and a plain one (`R&amp;D`, `R&D`,
    `R&#38;D`), equal once html.unescape'd.
- `unicode`: one event with odd characters in an element value (always), and by the seed in
  another element's name, the guest's name (personal), the primary key and the hotel id (at most
  20 characters, and 20 UTF-16 code units):
  `emoji` (non-BMP, ZWJ sequences), `combining` (combining marks, one leading), `rtl`
  (Hebrew, Arabic, bidi controls), `control` (NUL, BEL, ESC, CR LF, TAB, DEL, NEL),
  `noncharacter` (U+FFFF, U+FFFE, U+FDD0, U+1FFFE), `surrogate` (lone UTF-16 surrogates such as
  "\\ud83d": JSON-encoded with ensure_ascii they are the escape `\\ud83d`).
- `missing`: one event lacking an optional field: `unique_event_id` (stream metadata),
  `hotel_id` (a chain-level event), `publisher_id`, `action_instance_id`, `detail_empty` (an empty
  list), `detail_absent` (no list at all), `null_values` (null oldValue/newValue), `scope` (no
  scopeFrom/scopeTo where OPERA usually sends them). The Poll API leaves a missing field out or
  sends null (`EventDraft.missing_as`, drawn by the seed unless the emit says which); the stream
  answers null (GraphQL).

Personal values stay fictional and flagged `personal=True`; an odd character in a personal value
always sits next to a fictional name from the generator's lists, so that a log grep for it
(`chaos.personal_data_hits`) has something readable to look for.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from .generator import (
    EVENT_MODULES,
    FIRST_NAMES,
    LAST_NAMES,
    PUBLISHERS,
    UPDATE_PROFILE,
    UPDATE_RESERVATION,
    make_detail,
    unchanged_detail,
)
from .source import Detail, EventDraft, MissingAs

KINDS: Mapping[str, tuple[str, ...]] = {
    "lookalike": ("repeat", "sequence", "unchanged", "escaped"),
    "unicode": ("emoji", "combining", "rtl", "control", "noncharacter", "surrogate"),
    "missing": (
        "unique_event_id",
        "hotel_id",
        "publisher_id",
        "action_instance_id",
        "detail_empty",
        "detail_absent",
        "null_values",
        "scope",
    ),
}
ALL = "all"
HOTEL_ID_MAX = 20

Selection = tuple[tuple[str, str], ...]  # (kind, variant) pairs a unit is drawn from

# The odd strings of each unicode variant (each is also used alone as a whole value).
ODD: Mapping[str, tuple[str, ...]] = {
    "emoji": ("\U0001f600", "\U0001f3e8", "\U0001f469\U0001f3fd\u200d\U0001f4bb", "\U0001d518\U0001d52b"),
    "combining": ("e\u0301", "Zoe\u0308", "a\u0300\u0301\u0302\u0303", "\u0301"),
    "rtl": ("\u05e4\u05dc\u05d5\u05e0\u05d9", "\u0641\u0644\u0627\u0646", "\u202eOLLEH", "abc\u200fdef"),
    "control": ("\x00", "\x07", "\x1b[31m", "\r\n", "\t", "\x7f", "\x85", "\x1f"),
    "noncharacter": ("\uffff", "\ufffe", "\ufdd0", "\U0001fffe"),
    "surrogate": ("\ud83d", "\udc00", "\udfff", "\ud800"),
}

_FIRST_PROFILE = 9_100_000
_FIRST_RESERVATION = 9_500_000
_EMAIL = {"element_sequence": "1", "element_type": "EMAIL", "element_role": "PRIMARY"}


def parse_selection(names: str | Iterable[str]) -> Selection:
    """The (kind, variant) pairs named by `names`: "all", a kind, or "kind:variant" (ValueError
    naming what is unknown)."""
    wanted = [names] if isinstance(names, str) else list(names)
    if not wanted:
        raise ValueError("names no adversarial kind")
    out: list[tuple[str, str]] = []
    for name in wanted:
        if not isinstance(name, str):
            raise ValueError("must be kind names (strings)")
        kind, _, variant = name.partition(":")
        if kind == ALL and not variant:
            pairs = [(k, v) for k, variants in KINDS.items() for v in variants]
        elif kind in KINDS and not variant:
            pairs = [(kind, v) for v in KINDS[kind]]
        elif kind in KINDS and variant in KINDS[kind]:
            pairs = [(kind, variant)]
        else:
            known = ", ".join([ALL, *KINDS, *(f"{k}:{v}" for k, vs in KINDS.items() for v in vs)])
            raise ValueError(f"unknown adversarial kind {name!r} (known: {known})")
        out += [pair for pair in pairs if pair not in out]
    return tuple(out)


def utf16_units(text: str) -> int:
    """Length in UTF-16 code units (a lone surrogate counts one, like a BMP character)."""
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)


@dataclass(frozen=True)
class AdversarialUnit:
    kind: str
    variant: str
    drafts: tuple[EventDraft, ...]
    same_second: bool = False  # stamp the drafts within one second (lookalikes)


class AdversarialGenerator:
    """Deterministic adversarial units for the configured hotels."""

    def __init__(self, *, seed: int, hotels: Sequence[str]) -> None:
        if not hotels:
            raise ValueError("the adversarial generator needs at least one hotel")
        self._rng = random.Random(f"ohip-local-adversarial-{seed}")
        self._hotels = tuple(hotels)
        self._next_profile = _FIRST_PROFILE
        self._next_reservation = _FIRST_RESERVATION
        self.generated = 0

    # -- public ------------------------------------------------------------------------------

    def next_unit(
        self, selection: Selection, *, hotel: str | None = None, missing_as: MissingAs | None = None
    ) -> AdversarialUnit:
        """One unit of a (kind, variant) drawn from `selection`. `hotel`: the hotel of every event
        that has one (no odd hotel id then); `missing_as`: how the Poll API shows missing fields
        (default: "absent", or drawn by the seed for the `missing` kind)."""
        if not selection:
            raise ValueError("an empty selection")
        kind, variant = self._rng.choice(selection)
        target = hotel if hotel is not None else self._rng.choice(self._hotels)
        if kind == "lookalike":
            drafts, same_second = self._lookalike(variant, target), True
        elif kind == "unicode":
            drafts, same_second = [self._unicode(variant, target, odd_hotel=hotel is None)], False
        elif kind == "missing":
            drafts, same_second = [self._missing(variant, target)], False
        else:  # pragma: no cover - parse_selection only gives known kinds
            raise ValueError(kind)
        style = missing_as
        if style is None and kind == "missing":
            style = self._rng.choice(("absent", "null"))
        if style is not None:
            drafts = [replace(d, missing_as=style) for d in drafts]
        self.generated += len(drafts)
        return AdversarialUnit(kind, variant, tuple(drafts), same_second)

    def units(
        self,
        selection: Selection,
        count: int,
        *,
        hotel: str | None = None,
        missing_as: MissingAs | None = None,
    ) -> list[AdversarialUnit]:
        """Units holding exactly `count` drafts (the last one cut short when it does not fit)."""
        out: list[AdversarialUnit] = []
        total = 0
        while total < count:
            unit = self.next_unit(selection, hotel=hotel, missing_as=missing_as)
            if total + len(unit.drafts) > count:
                unit = replace(unit, drafts=unit.drafts[: count - total])
            out.append(unit)
            total += len(unit.drafts)
        return out

    # -- helpers -------------------------------------------------------------------------------

    def _profile(self) -> str:
        self._next_profile += 1
        return str(self._next_profile)

    def _reservation(self) -> str:
        self._next_reservation += 1
        return str(self._next_reservation)

    def _publisher(self) -> str:
        return self._rng.choice(PUBLISHERS)

    def _guest(self) -> tuple[str, str]:
        return self._rng.choice(LAST_NAMES), self._rng.choice(FIRST_NAMES)

    @staticmethod
    def _draft(
        hotel: str | None, event_name: str, key: str, publisher: str | None, details: Iterable[Detail]
    ) -> EventDraft:
        return EventDraft(
            hotel=hotel,
            module=EVENT_MODULES[event_name],
            event_name=event_name,
            primary_key=key,
            publisher_id=publisher,
            details=tuple(details),
        )

    # -- lookalikes ----------------------------------------------------------------------------

    def _lookalike(self, variant: str, hotel: str) -> list[EventDraft]:
        rng = self._rng
        publisher = self._publisher()
        last, first = self._guest()
        names = [unchanged_detail("NAME", last), unchanged_detail("FIRST NAME", first)]
        if variant == "repeat":
            if rng.random() < 0.5:
                key = self._profile()
                level = rng.choice(("VIP1", "VIP2", "VIP3"))
                changes = [("", level), (level, ""), ("", level)]  # events 1 and 3: the same content
                return [
                    self._draft(
                        hotel, UPDATE_PROFILE, key, publisher, [*names, make_detail("VIP STATUS", o, n)]
                    )
                    for o, n in changes
                ]
            key = self._reservation()
            change = [
                unchanged_detail("CONFIRMATION NO", f"88{key}"),
                make_detail("ROOM TYPE", "STDK", "DLXK"),
            ]
            return [self._draft(hotel, UPDATE_RESERVATION, key, publisher, change)] * 2
        if variant == "sequence":
            key = self._profile()
            old = f"{first}.{last}{rng.randint(1, 99)}@example.com".lower()
            new = f"{first[0]}.{last}{rng.randint(100, 999)}@example.com".lower()
            one = make_detail("EMAIL", old, new, **_EMAIL)
            two = replace(one, element_sequence="2")
            pair = [[*names, one], [*names, one, two]]
            if rng.random() < 0.5:
                pair.reverse()
            return [self._draft(hotel, UPDATE_PROFILE, key, publisher, details) for details in pair]
        if variant == "unchanged":
            key = self._profile()
            shapes: list[list[Detail]] = [
                names,
                [],
                [*names, make_detail("DEPARTMENT", "R&amp;D", "R&D")],  # equal once unescaped
                [
                    unchanged_detail("EMAIL", f"{first}.{last}@example.com".lower(), **_EMAIL),
                    make_detail("WEBPAGE", "", ""),
                ],
            ]
            picked = rng.sample(shapes, rng.randint(1, 3))
            return [self._draft(hotel, UPDATE_PROFILE, key, publisher, details) for details in picked]
        if variant == "escaped":
            key = self._profile()
            spellings = ["R&amp;D", "R&D", "R&#38;D"][: rng.choice((2, 3))]
            rng.shuffle(spellings)
            return [
                self._draft(
                    hotel, UPDATE_PROFILE, key, publisher, [*names, make_detail("DEPARTMENT", "Sales", s)]
                )
                for s in spellings
            ]
        raise ValueError(f"unknown lookalike variant {variant!r}")

    # -- odd Unicode ---------------------------------------------------------------------------

    def _unicode(self, variant: str, hotel: str, *, odd_hotel: bool) -> EventDraft:
        rng = self._rng
        odd = ODD[variant]

        def pick() -> str:
            return rng.choice(odd)

        last, first = self._guest()
        key = self._profile()
        details = [
            make_detail("GUEST PREFERENCE", "", f"Pillow {pick()} soft"),
            make_detail("SPECIAL REQUEST", "", pick()),  # the odd string alone
        ]
        if rng.random() < 0.5:
            details.append(make_detail(f"NOTE {pick()}", "", "late arrival"))  # an odd element name
        if rng.random() < 0.5:  # personal: next to a fictional name, so a log grep can find it
            details += [
                make_detail("NAME", last, f"{last}{pick()}"),
                make_detail("FIRST NAME", "", f"{pick()}{first}"),
            ]
        else:
            details += [unchanged_detail("NAME", last), unchanged_detail("FIRST NAME", first)]
        if rng.random() < 0.4:
            key = f"{key}{pick()}"
        if odd_hotel and rng.random() < 0.3:
            candidate = f"H{pick()}{rng.randint(1, 9)}"
            if len(candidate) <= HOTEL_ID_MAX and utf16_units(candidate) <= HOTEL_ID_MAX:
                hotel = candidate
        return self._draft(hotel, UPDATE_PROFILE, key, self._publisher(), details)

    # -- missing fields ------------------------------------------------------------------------

    def _missing(self, variant: str, hotel: str) -> EventDraft:
        rng = self._rng
        publisher = self._publisher()
        last, first = self._guest()
        names = [unchanged_detail("NAME", last), unchanged_detail("FIRST NAME", first)]
        key = self._reservation()
        stay = {"scope_from": "2026-12-04", "scope_to": "2026-12-06"}
        amount = f"{rng.randrange(9000, 32000, 500) / 100:.2f}"
        rate = [
            unchanged_detail("CONFIRMATION NO", f"88{key}"),
            make_detail("RATE AMOUNT", "150.00", amount, **stay),
        ]
        if variant == "unique_event_id":
            draft = self._draft(hotel, UPDATE_RESERVATION, key, publisher, rate)
            return replace(draft, omit=frozenset({"uniqueEventId"}))
        if variant == "hotel_id":  # a chain-level profile change
            vip = rng.choice(("VIP1", "VIP2", "VIP3"))
            return self._draft(
                None, UPDATE_PROFILE, self._profile(), publisher, [*names, make_detail("VIP STATUS", "", vip)]
            )
        if variant == "publisher_id":
            return self._draft(hotel, UPDATE_RESERVATION, key, None, rate)
        if variant == "action_instance_id":
            draft = self._draft(hotel, UPDATE_RESERVATION, key, publisher, rate)
            return replace(draft, omit=frozenset({"actionInstanceId"}))
        if variant == "detail_empty":
            return self._draft(hotel, UPDATE_RESERVATION, key, publisher, [])
        if variant == "detail_absent":
            draft = self._draft(hotel, UPDATE_RESERVATION, key, publisher, [])
            return replace(draft, omit=frozenset({"detail"}))
        if variant == "null_values":
            details = [
                make_detail("VIP STATUS", None, rng.choice(("VIP1", "VIP2"))),  # created: no old value
                make_detail("WEBPAGE", None, None),
                make_detail("ROOM FEATURE", "QUIET", None),  # deleted: no new value
                *names,
            ]
            draft = self._draft(hotel, UPDATE_PROFILE, self._profile(), publisher, details)
            return replace(draft, null_values=True)
        if variant == "scope":
            details = [
                unchanged_detail("CONFIRMATION NO", f"88{key}"),
                make_detail("RATE AMOUNT", "150.00", amount),  # no scope at all
                make_detail("ADULTS", "1", "2", scope_from="2026-12-04"),  # a scope start only
            ]
            return self._draft(hotel, UPDATE_RESERVATION, key, publisher, details)
        raise ValueError(f"unknown missing-field variant {variant!r}")
