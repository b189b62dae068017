"""The local gateway's event generator: deterministic, realistic, with personal data flagged."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from ohip_local.generator import (
    CANCEL_RESERVATION,
    CHECK_IN,
    EVENT_MODULES,
    NEW_PROFILE,
    NEW_RESERVATION,
    UPDATE_PROFILE,
    UPDATE_RESERVATION,
    EventGenerator,
)
from ohip_local.source import EventDraft
from ohip_relay.redact import is_personal_key

HOTELS = ("HOTEL1", "HOTEL2", "HOTEL3")
CREATIONS = {NEW_RESERVATION: "RESERVATION", NEW_PROFILE: "PROFILE"}


def drafts(n: int = 600, seed: int = 1) -> list[EventDraft]:
    generator = EventGenerator(seed=seed, hotels=HOTELS)
    return [generator.next_draft() for _ in range(n)]


def test_same_seed_same_drafts_and_other_seed_other_drafts() -> None:
    assert drafts(300) == drafts(300)
    assert drafts(300, seed=2) != drafts(300)


def test_every_event_name_appears_with_its_module() -> None:
    events = drafts()
    names = Counter(d.event_name for d in events)
    assert set(names) == set(EVENT_MODULES)
    assert all(names[name] >= 20 for name in EVENT_MODULES), names
    assert all(d.module == EVENT_MODULES[d.event_name] for d in events)


def test_updates_cancellations_and_check_ins_refer_to_earlier_resources() -> None:
    created: dict[tuple[str, str], str] = {}
    per_resource: Counter[tuple[str, str]] = Counter()
    for d in drafts(1000):
        resource = (d.hotel, d.primary_key)
        per_resource[resource] += 1
        if d.event_name in CREATIONS:
            assert resource not in created, "a new resource reuses a primary key"
            created[resource] = CREATIONS[d.event_name]
        else:
            assert created.get(resource) == d.module, f"{d.event_name} of an unknown resource"
    assert sum(1 for n in per_resource.values() if n >= 3) >= 20  # several events hit one resource


def test_a_reservation_is_cancelled_or_checked_in_once_and_not_updated_after_a_cancellation() -> None:
    final: dict[tuple[str, str], str] = {}
    for d in drafts(1500):
        resource = (d.hotel, d.primary_key)
        if d.event_name in (CANCEL_RESERVATION, CHECK_IN):
            assert resource not in final
            final[resource] = d.event_name
        elif d.event_name == UPDATE_RESERVATION:
            assert final.get(resource) != CANCEL_RESERVATION


def test_personal_elements_are_flagged_and_agree_with_the_relays_masking() -> None:
    seen_personal: set[str] = set()
    for d in drafts():
        for detail in d.details:
            assert detail.personal == is_personal_key(detail.element_name), detail.element_name
            if detail.personal:
                seen_personal.add(detail.element_name)
    assert {"NAME", "FIRST NAME", "EMAIL", "PHONE NUMBER", "ADDRESS LINE 1", "CITY"} <= seen_personal


def test_fake_contact_data_is_fictional() -> None:
    for d in drafts():
        for detail in d.details:
            for value in (detail.old_value, detail.new_value):
                if not value:
                    continue
                if detail.element_name == "EMAIL":
                    assert value.endswith("@example.com")
                if detail.element_name == "PHONE NUMBER":
                    assert re.fullmatch(r"\+44 20 7946 0\d{3}", value)


def test_new_events_have_empty_old_values() -> None:
    for d in drafts():
        if d.event_name in CREATIONS:
            assert all(detail.old_value == "" and detail.new_value for detail in d.details)


def test_updates_list_unchanged_elements_besides_the_changed_ones() -> None:
    for d in drafts():
        if d.event_name in (UPDATE_RESERVATION, UPDATE_PROFILE, CANCEL_RESERVATION, CHECK_IN):
            changed = [x for x in d.details if x.old_value != x.new_value]
            unchanged = [x for x in d.details if x.old_value == x.new_value]
            assert changed, d.event_name
            assert unchanged, d.event_name


def test_reservation_elements_are_realistic() -> None:
    names = {detail.element_name for d in drafts() if d.module == "RESERVATION" for detail in d.details}
    assert {
        "CONFIRMATION NO",
        "RESERVATION STATUS",
        "ARRIVAL DATE",
        "DEPARTURE DATE",
        "ROOM TYPE",
        "ADULTS",
        "RATE CODE",
        "RATE AMOUNT",
    } <= names
    for d in drafts():
        for detail in d.details:
            if detail.element_name == "RATE AMOUNT":
                assert detail.scope_from
                assert detail.scope_to
                assert detail.scope_from <= detail.scope_to
                assert re.fullmatch(r"\d+\.\d{2}", detail.new_value or "")


def test_publisher_ids_are_numeric_strings() -> None:
    assert all(d.publisher_id.isdigit() for d in drafts())


def test_no_two_drafts_describe_the_same_change() -> None:
    signatures = set()
    for d in drafts(3000):
        changed = frozenset(
            (x.element_name, x.scope_from, x.scope_to, x.old_value, x.new_value)
            for x in d.details
            if x.old_value != x.new_value
        )
        signature = (d.hotel, d.primary_key, d.event_name, changed)
        assert signature not in signatures
        signatures.add(signature)


@pytest.mark.parametrize("hotel", HOTELS)
def test_a_requested_hotel_is_used(hotel: str) -> None:
    generator = EventGenerator(seed=3, hotels=HOTELS)
    events = [generator.next_draft(hotel=hotel) for _ in range(100)]
    assert {d.hotel for d in events} == {hotel}
    assert {d.event_name for d in events} == set(EVENT_MODULES)


def test_without_a_hotel_all_hotels_are_used() -> None:
    assert {d.hotel for d in drafts(100)} == set(HOTELS)


def test_needs_a_hotel() -> None:
    with pytest.raises(ValueError, match="hotel"):
        EventGenerator(seed=1, hotels=())
