"""OHIP_HOTEL_CODE and OHIP_STREAM_DELTA reach the subscription: the local gateway filters and trims
what it sends by them, as OHIP does (ohip-api.md 1, "Subscribing")."""

from __future__ import annotations

import pytest

from ohip_relay.state import StreamState

from .conftest import Rig, eventually

pytestmark = pytest.mark.integration


async def test_hotel_code_and_delta_shape_what_is_relayed(rig: Rig) -> None:
    async with rig.consumer(OHIP_HOTEL_CODE="HOTEL1", OHIP_STREAM_DELTA="true") as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        rig.gateway.emit(60)
        events = rig.gateway.source.all_events(rig.chain)
        wanted = {e.offset for e in events if e.hotel == "HOTEL1"}
        assert wanted, "the generator should give HOTEL1 some events"
        assert any(e.hotel != "HOTEL1" for e in events), "and the other hotels some too"
        unchanged = [
            d
            for e in events
            if e.hotel == "HOTEL1"
            for d in e.details
            if (d.old_value or "") == (d.new_value or "")
        ]
        assert unchanged, "the generator should list unchanged elements, for delta to leave out"
        await rig.receive_offsets(wanted)
        await eventually(lambda: running.consumer.checkpointed == max(wanted), what="checkpoint")
        assert await running.stop() == 0
    await rig.drain_queue()
    assert sorted(rig.offsets()) == sorted(wanted), "only HOTEL1's events, each once"
    for body in rig.received:
        assert body["hotelId"] == "HOTEL1"
        for element in body["detail"]:
            assert (element["oldValue"] or "") != (element["newValue"] or ""), "delta: changed elements only"
