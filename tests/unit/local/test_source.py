"""The local gateway's event source: offsets per chain, retention, live listeners, poll queues."""

from __future__ import annotations

import uuid

import pytest

from ohip_local.source import FIRST_OFFSET, Detail, EventDraft, EventSource, StoredEvent, UnknownChain


class FakeClock:
    def __init__(self, now: float = 1_795_601_738.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def draft(hotel: str = "H1", key: str = "2240001", name: str = "NEW RESERVATION") -> EventDraft:
    return EventDraft(
        hotel=hotel,
        module="RESERVATION",
        event_name=name,
        primary_key=key,
        publisher_id="57489",
        details=(
            Detail("NAME", "", "Testperson", personal=True),
            Detail("EMAIL", "", "jane@example.com", personal=True),
            Detail("ROOM TYPE", "", "DLXK"),
        ),
    )


def make_source(clock: FakeClock | None = None, **kw: object) -> EventSource:
    return EventSource(("C1", "C2"), ("SYS1", "SYS2"), clock=clock or FakeClock(), **kw)  # type: ignore[arg-type]


def test_offsets_start_at_the_first_offset_and_count_per_chain() -> None:
    source = make_source()
    a = source.append("C1", draft())
    b = source.append("C1", draft())
    c = source.append("C2", draft())
    assert (a.offset, b.offset, c.offset) == (FIRST_OFFSET, FIRST_OFFSET + 1, FIRST_OFFSET)
    assert source.highest("C1") == FIRST_OFFSET + 1
    assert source.next_offset("C1") == FIRST_OFFSET + 2
    assert source.highest("C2") == FIRST_OFFSET


def test_highest_is_none_for_an_empty_chain() -> None:
    source = make_source()
    assert source.highest("C1") is None
    assert source.next_offset("C1") == FIRST_OFFSET
    assert source.since("C1", 0) == []


def test_stored_events_carry_the_draft_and_the_clock() -> None:
    clock = FakeClock(1_795_601_738.5)
    event = make_source(clock).append("C1", draft(hotel="H2", key="77"))
    assert (event.chain, event.hotel, event.primary_key, event.publisher_id) == ("C1", "H2", "77", "57489")
    assert event.created_at == 1_795_601_738.5
    assert event.created_datetime.isoformat() == "2026-11-25T10:15:38.500000+00:00"
    assert event.parent_action_id == event.action_instance_id - 1
    assert uuid.UUID(event.unique_event_id).version == 4


def test_ids_are_unique_and_deterministic_for_a_seed() -> None:
    def ids(seed: int) -> list[tuple[str, int, int]]:
        source = make_source(seed=seed)
        events = [source.append("C1" if i % 2 else "C2", draft()) for i in range(20)]
        return [(e.unique_event_id, e.action_instance_id, e.business_event_id) for e in events]

    first = ids(1)
    assert first == ids(1)
    assert len({i[0] for i in first}) == len({i[1] for i in first}) == len({i[2] for i in first}) == 20
    assert {i[0] for i in first}.isdisjoint(i[0] for i in ids(2))


def test_personal_values_are_the_flagged_ones() -> None:
    event = make_source().append("C1", draft())
    assert event.personal_values() == {"Testperson", "jane@example.com"}


def test_since_replays_inclusively() -> None:
    source = make_source()
    events = [source.append("C1", draft()) for _ in range(5)]
    assert source.since("C1", events[2].offset) == events[2:]
    assert source.since("C1", 0) == events
    assert source.since("C1", events[-1].offset + 1) == []


def test_retention_hides_old_events_from_replay() -> None:
    clock = FakeClock()
    source = make_source(clock, retention=100.0)
    old = [source.append("C1", draft()) for _ in range(3)]
    clock.now += 60
    new = [source.append("C1", draft()) for _ in range(2)]
    assert source.retained_floor("C1") == old[0].offset
    clock.now += 50  # the first three are now 110 s old
    assert source.retained_floor("C1") == new[0].offset
    assert source.since("C1", old[0].offset) == new
    clock.now += 1000
    assert source.since("C1", 0) == []
    assert source.retained_floor("C1") == source.next_offset("C1")
    assert source.all_events("C1") == old + new


def test_listeners_see_new_events_until_removed() -> None:
    source = make_source()
    seen: list[StoredEvent] = []
    remove = source.listen("C1", seen.append)
    a = source.append("C1", draft())
    source.append("C2", draft())
    remove()
    remove()  # removing twice is harmless
    source.append("C1", draft())
    assert seen == [a]


def test_unknown_chain() -> None:
    source = make_source()
    with pytest.raises(UnknownChain):
        source.append("NOPE", draft())
    with pytest.raises(UnknownChain):
        source.listen("NOPE", lambda e: None)
    with pytest.raises(UnknownChain):
        source.highest("NOPE")


def test_every_external_system_gets_every_event_of_every_chain() -> None:
    source = make_source()
    events = [source.append("C1", draft()), source.append("C2", draft())]
    assert source.external_systems == ("SYS1", "SYS2")
    assert source.has_external_system("SYS1")
    assert not source.has_external_system("OTHER")
    assert source.queued("SYS1") == source.queued("SYS2") == 2
    assert source.dequeue("SYS1", 10) == events
    assert source.queued("SYS1") == 0
    assert source.dequeue("SYS2", 1) == events[:1]
    assert source.dequeue("SYS2", 1) == events[1:]
    assert source.dequeue("SYS2", 1) == []


def test_an_external_system_of_one_chain_gets_only_that_chain_s_events() -> None:
    source = make_source(system_chains={"SYS1": ["C1"]})
    events = [source.append("C1", draft()), source.append("C2", draft())]
    assert source.dequeue("SYS1", 10) == events[:1]
    assert source.dequeue("SYS2", 10) == events  # named nowhere: every chain's events
    with pytest.raises(ValueError, match="unknown external system: NOPE"):
        make_source(system_chains={"NOPE": ["C1"]})
    with pytest.raises(ValueError, match="SYS1 names an unknown chain: C9"):
        make_source(system_chains={"SYS1": ["C9"]})


def test_dequeue_by_hotel_keeps_the_others_in_order() -> None:
    source = make_source()
    events = [source.append("C1", draft(hotel=h, key=str(i))) for i, h in enumerate("ABABCA")]
    taken = source.dequeue("SYS1", 2, hotel="A")
    assert taken == [events[0], events[2]]
    assert source.dequeue("SYS1", 100) == [events[1], events[3], events[4], events[5]]


def test_dequeue_removes_what_it_returns_once() -> None:
    source = make_source()
    for i in range(10):
        source.append("C1", draft(key=str(i)))
    first = source.dequeue("SYS1", 4)
    second = source.dequeue("SYS1", 100)
    assert len(first) == 4
    assert len(second) == 6
    assert {e.offset for e in first}.isdisjoint(e.offset for e in second)


def test_a_chain_s_log_is_created_only_when_written() -> None:
    source = EventSource([f"C{n}" for n in range(200)], ("SYS1",), clock=FakeClock(), first_offsets={"C7": 0})
    assert len(source.chains) == 200
    seen: list[StoredEvent] = []
    source.listen("C5", seen.append)
    everything: list[StoredEvent] = []
    remove = source.listen_all(everything.append)
    assert (source.next_offset("C5"), source.next_offset("C7"), source.highest("C5")) == (
        FIRST_OFFSET,
        0,
        None,
    )
    assert source.since("C5", 0) == source.all_events("C5") == []
    assert (source.event_count("C5"), source.resets("C5"), source.retained_floor("C7")) == (0, 0, 0)
    assert source.active_chains == ()  # listening and reading create nothing
    source.append("C5", draft())
    source.append("C9", draft())
    assert source.active_chains == ("C5", "C9")
    assert [e.chain for e in seen] == ["C5"]
    assert [e.chain for e in everything] == ["C5", "C9"]
    remove()
    source.append("C9", draft())
    assert len(everything) == 2
    with pytest.raises(UnknownChain):
        source.next_offset("C200")
    with pytest.raises(UnknownChain):
        source.listen("C200", seen.append)
