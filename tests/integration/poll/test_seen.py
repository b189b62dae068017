"""The seen-set's record / match semantics on DynamoDB (moto server): the fallback records the poll
copies SQS acknowledged, the stream matches each replayed copy at most once per poll copy."""

from __future__ import annotations

import pytest

from ohip_relay.seen import SeenSet, SeenSetUnavailable

from .conftest import PollRig

pytestmark = pytest.mark.integration

KEY = "v1-lookalike"


def test_a_poll_copy_cancels_one_stream_copy(rig: PollRig) -> None:
    seen = rig.seen
    assert not seen.match(KEY, "stream:C:1:a")  # nothing recorded: publish
    seen.record([(KEY, "poll:C:1")])
    assert seen.match(KEY, "stream:C:1:a")
    assert not seen.match(KEY, "stream:C:2:b")  # a lookalike stream event: its copy is not on the queue
    assert seen.match(KEY, "stream:C:1:a")  # the same stream event replayed again: still suppressed
    assert not seen.match("v1-other", "stream:C:1:a")


def test_two_lookalike_poll_copies_cancel_two_stream_copies_and_no_more(rig: PollRig) -> None:
    seen = rig.seen
    seen.record([(KEY, "poll:C:1"), (KEY, "poll:C:2")])
    assert seen.match(KEY, "stream:C:1:a") == 1
    assert seen.match(KEY, "stream:C:2:b") == 2  # a lookalike match: the stream counts it
    assert not seen.match(KEY, "stream:C:3:c")
    assert seen.match(KEY, "stream:C:2:b") == 2


def test_recording_a_poll_copy_again_adds_nothing(rig: PollRig) -> None:
    # A spill re-delivered after a crash records the same eventId again.
    seen = rig.seen
    seen.record([(KEY, "poll:C:1")])
    seen.record([(KEY, "poll:C:1"), (KEY, "poll:C:1")])
    assert rig.recorded() == {KEY: {"poll:C:1"}}
    assert seen.match(KEY, "stream:C:1:a")
    assert not seen.match(KEY, "stream:C:2:b")


def test_an_expired_entry_matches_nothing(rig: PollRig) -> None:
    seen = rig.seen
    seen.record([(KEY, "poll:C:1"), ("v1-b", "poll:C:2")])
    assert seen.match("v1-b", "stream:C:2:b")
    rig.clock.advance(9 * 86400)  # past the 8-day TTL; DynamoDB may not have deleted it yet
    assert not seen.match(KEY, "stream:C:1:a")
    assert not seen.match("v1-b", "stream:C:2:b")  # not even the stream event it matched before


def test_record_names_the_keys_it_could_not_write(rig: PollRig) -> None:
    seen = SeenSet(rig.dynamodb, "no-such-table", clock=rig.clock)
    with pytest.raises(SeenSetUnavailable) as raised:
        seen.record([(KEY, "poll:C:1"), ("v1-b", "poll:C:2"), (KEY, "poll:C:3")])
    assert raised.value.unknown == {KEY, "v1-b"}
    assert raised.value.code == "ResourceNotFoundException"
    with pytest.raises(SeenSetUnavailable):
        seen.match(KEY, "stream:C:1:a")
