"""Adversarial data from the local gateway, over real sockets: each kind reaches a client on both
channels (Streaming API frames, Poll API items) as specified, selected through the control
interface; offsets that start at 0 or run to 20 digits; forward jumps and the explicit reset.

No test sleeps to synchronise: every wait is a read on a socket under a timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ohip_local.adversarial import ODD
from ohip_local.control import AsyncControlClient, ControlClient, ControlError
from ohip_local.gateway import GatewayConfig, LocalGateway
from ohip_local.harness import wait_until
from ohip_local.source import MAX_OFFSET, StoredEvent
from ohip_local.threaded import call_in_gateway, running_gateway
from ohip_relay.events import from_poll, from_stream

from .conftest import GatewayFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

CHAIN = "LOCALCHAIN"
SUBPROTOCOL = Subprotocol("graphql-transport-ws")
SELECTION = (
    "metadata { offset uniqueEventId } moduleName eventName primaryKey timestamp hotelId "
    "publisherId actionInstanceId detail { elementName oldValue newValue scopeFrom scopeTo "
    "elementSequence elementType elementRole }"
)
WAIT = 5.0
RELAYED_AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


# -- clients --------------------------------------------------------------------------------------


@asynccontextmanager
async def stream(gw: LocalGateway, **fields: str) -> AsyncIterator[ClientConnection]:
    """An acknowledged connection with subscription "1" on the chain (input fields inline)."""
    async with connect(gw.ws_url, subprotocols=[SUBPROTOCOL], open_timeout=WAIT, close_timeout=0.5) as ws:
        token = gw.tokens.issue().value
        await ws.send(
            json.dumps(
                {
                    "type": "connection_init",
                    "payload": {"Authorization": f"Bearer {token}", "x-app-key": gw.config.app_key},
                }
            )
        )
        assert json.loads(await raw(ws)) == {"type": "connection_ack"}
        args = " ".join(f"{k}: {json.dumps(v)}" for k, v in {"chainCode": CHAIN, **fields}.items())
        query = f"subscription {{ newEvent(input: {{ {args} }}) {{ {SELECTION} }} }}"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        yield ws


async def raw(ws: ClientConnection) -> str:
    async with asyncio.timeout(WAIT):
        frame = await ws.recv()
    assert isinstance(frame, str)
    return frame


async def frames(ws: ClientConnection, count: int) -> list[str]:
    """The next `count` frames as sent (each a `next`)."""
    out = [await raw(ws) for _ in range(count)]
    assert all(json.loads(f)["type"] == "next" for f in out), out
    return out


def new_event(frame: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(frame)["payload"]["data"]["newEvent"]
    return event


async def offsets(ws: ClientConnection, count: int) -> list[str]:
    return [new_event(f)["metadata"]["offset"] for f in await frames(ws, count)]


async def complete(ws: ClientConnection) -> None:
    """`complete`, then every frame until the server closes (1000)."""
    await ws.send(json.dumps({"id": "1", "type": "complete"}))
    async with asyncio.timeout(WAIT):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    assert ws.close_code == 1000


async def poll_text(gw: LocalGateway, limit: int = 100) -> str:
    """One Poll API response body as sent ("" for 204)."""
    cfg = gw.config
    headers = {
        "Authorization": f"Bearer {gw.tokens.issue().value}",
        "x-app-key": cfg.app_key,
        "x-hotelid": cfg.hotels[0],
    }
    async with httpx.AsyncClient(base_url=gw.url, trust_env=False, timeout=WAIT) as http:
        response = await http.get(
            f"/int/v1/externalSystem/{cfg.external_systems[0]}/businessEvents",
            params={"limit": str(limit)},
            headers=headers,
        )
    assert response.status_code in (200, 204), response.text
    return response.text


async def poll_items(gw: LocalGateway) -> list[dict[str, Any]]:
    text = await poll_text(gw)
    return list(json.loads(text)["businessEventData"]) if text else []


def by_offset(gw: LocalGateway) -> dict[int, StoredEvent]:
    return {e.offset: e for e in gw.source.all_events(CHAIN)}


def by_business_id(gw: LocalGateway) -> dict[str, StoredEvent]:
    return {str(e.business_event_id): e for e in gw.source.all_events(CHAIN)}


def strings(event: StoredEvent) -> list[str]:
    out = [event.primary_key, event.hotel or ""]
    for d in event.details:
        out += [d.element_name, d.old_value or "", d.new_value or ""]
    return out


# -- odd Unicode -----------------------------------------------------------------------------------


async def test_a_lone_surrogate_reaches_both_channels_as_a_json_escape(gateway: LocalGateway) -> None:
    control = AsyncControlClient(gateway.control_url)
    assert await control.emit(6, adversarial="unicode:surrogate") == {
        "count": 6,
        "first_offset": 1001,
        "last_offset": 1006,
    }
    stored = by_offset(gateway)
    lone = set(ODD["surrogate"])
    async with stream(gateway, offset="1001") as ws:
        sent = await frames(ws, 6)
    polled = await poll_text(gateway)
    for text in [*sent, polled]:
        assert text.isascii()  # ensure_ascii: every odd character is an escape
        assert _SURROGATE_ESCAPE.search(text)
    for frame in sent:
        event = new_event(frame)
        original = stored[int(event["metadata"]["offset"])]
        values = [d["newValue"] for d in event["detail"]]
        assert values == [d.new_value for d in original.details]
        assert lone & {v for v in values if len(v) == 1}  # a lone surrogate, decoded as sent
        for s in lone:
            if any(s in v for v in strings(original)):
                assert json.dumps(s)[1:-1] in frame  # the escape, e.g. \ud83d
    for item in json.loads(polled)["businessEventData"]:
        original = by_business_id(gateway)[item["businessEventId"]["id"]]
        details = item["businessEvent"]["details"]
        assert [d.get("newValue", "") for d in details] == [d.new_value or "" for d in original.details]


async def test_odd_unicode_of_every_variant_arrives_intact_on_both_channels(gateway: LocalGateway) -> None:
    control = AsyncControlClient(gateway.control_url)
    await control.emit(60, adversarial="unicode")
    stored = by_offset(gateway)
    async with stream(gateway, offset="1001") as ws:
        sent = [new_event(f) for f in await frames(ws, 60)]
    polled = await poll_items(gateway)
    assert len(polled) == 60
    seen_hotels = set()
    for event in sent:
        original = stored[int(event["metadata"]["offset"])]
        assert event["primaryKey"] == original.primary_key
        assert event["hotelId"] == original.hotel
        assert [(d["elementName"], d["oldValue"], d["newValue"]) for d in event["detail"]] == [
            (d.element_name, d.old_value, d.new_value) for d in original.details
        ]
        seen_hotels.add(original.hotel)
        from_stream(event, CHAIN, RELAYED_AT)  # the relay can read it
    for item in polled:
        original = by_business_id(gateway)[item["businessEventId"]["id"]]
        header = item["businessEvent"]["header"]
        assert str(header["primaryKey"]) == original.primary_key
        assert header["hotelId"] == original.hotel
        assert [d["dataElement"] for d in item["businessEvent"]["details"]] == [
            d.element_name for d in original.details
        ]
    assert seen_hotels - set(gateway.config.hotels)  # some odd hotel ids among them
    odd_strings = {o for family in ODD.values() for o in family}
    arrived = {o for e in stored.values() for s in strings(e) for o in odd_strings if o in s}
    assert len(arrived) >= 12


# -- lookalikes -------------------------------------------------------------------------------------


async def test_lookalikes_are_distinct_events_with_one_content_key_on_both_channels(
    gateway: LocalGateway,
) -> None:
    control = AsyncControlClient(gateway.control_url)
    await control.emit(30, adversarial="lookalike", rate=1000)  # paced: groups still whole
    stored = by_offset(gateway)
    async with stream(gateway, offset="1001") as ws:
        sent = [new_event(f) for f in await frames(ws, 30)]
    polled = await poll_items(gateway)
    stream_keys = {int(e["metadata"]["offset"]): from_stream(e, CHAIN, RELAYED_AT).event_key for e in sent}
    poll_keys = {
        by_business_id(gateway)[i["businessEventId"]["id"]].offset: from_poll(i, CHAIN, RELAYED_AT).event_key
        for i in polled
    }
    assert stream_keys == poll_keys  # one change, one key, whichever channel carried it
    assert len({e["metadata"]["uniqueEventId"] for e in sent}) == 30
    assert len({i["businessEventId"]["id"] for i in polled}) == 30
    shared = [key for key, n in Counter(stream_keys.values()).items() if n > 1]
    assert len(shared) >= 5  # lookalikes: distinct events, one content key
    for key in shared:
        events = [stored[o] for o, k in stream_keys.items() if k == key]
        assert len({(e.hotel, e.primary_key, e.publisher_id, e.event_name) for e in events}) == 1
        assert len({int(e.created_at) for e in events}) == 1  # within one second


# -- missing fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("missing_as", ["absent", "null"])
async def test_missing_fields_reach_both_channels(gateway: LocalGateway, missing_as: str) -> None:
    control = AsyncControlClient(gateway.control_url)
    variants = [
        "unique_event_id",
        "hotel_id",
        "publisher_id",
        "action_instance_id",
        "detail_absent",
        "detail_empty",
    ]
    expected: dict[int, str] = {}
    for variant in variants:
        result = await control.emit(1, adversarial=f"missing:{variant}", missing_as=missing_as)
        expected[result["first_offset"]] = variant
    async with stream(gateway, offset="1001") as ws:
        sent = {int(e["metadata"]["offset"]): e for e in map(new_event, await frames(ws, len(variants)))}
    polled = {
        by_business_id(gateway)[i["businessEventId"]["id"]].offset: i for i in await poll_items(gateway)
    }
    missing: Any = None if missing_as == "null" else "absent"
    for offset, variant in expected.items():
        event, item = sent[offset], polled[offset]
        header = item["businessEvent"]["header"]
        if variant == "unique_event_id":
            assert event["metadata"] == {"offset": str(offset), "uniqueEventId": None}
            assert item["businessEventId"]["id"]
        elif variant == "hotel_id":
            assert event["hotelId"] is None
            assert header.get("hotelId", "absent") == missing
        elif variant == "publisher_id":
            assert event["publisherId"] is None
            assert header.get("publisherId", "absent") == missing
        elif variant == "action_instance_id":
            assert event["actionInstanceId"] is None
            assert header.get("actionId", "absent") == missing
        elif variant == "detail_absent":
            assert event["detail"] is None
            assert item["businessEvent"].get("details", "absent") == missing
        else:
            assert event["detail"] == []
            assert item["businessEvent"]["details"] == []
        # both channels still give one content key
        assert from_stream(event, CHAIN, RELAYED_AT).event_key == from_poll(item, CHAIN, RELAYED_AT).event_key


# -- offsets ---------------------------------------------------------------------------------------


async def test_a_log_starting_at_offset_zero(make_gateway: GatewayFactory) -> None:
    async with make_gateway(first_offset=0, resubscribe_gap=0.0) as gw:
        control = AsyncControlClient(gw.control_url)
        assert await control.emit(1) == {"count": 1, "first_offset": 0, "last_offset": 0}
        async with stream(gw, offset="0") as ws:
            assert await offsets(ws, 1) == ["0"]
            await complete(ws)
        await control.emit(2)
        async with stream(gw) as ws:  # no offset: after the last one delivered, offset 0 included
            assert await offsets(ws, 2) == ["1", "2"]
        assert len(await poll_items(gw)) == 3
        state = await control.state()
        assert state["chains"][CHAIN]["highest"] == 2


async def test_twenty_digit_offsets(make_gateway: GatewayFactory) -> None:
    async with make_gateway(first_offset=10**19 - 2) as gw:
        control = AsyncControlClient(gw.control_url)
        result = await control.emit(4)
        assert (result["first_offset"], result["last_offset"]) == (10**19 - 2, 10**19 + 1)
        async with stream(gw, offset="9999999999999999998") as ws:
            assert await offsets(ws, 4) == [
                "9999999999999999998",
                "9999999999999999999",
                "10000000000000000000",
                "10000000000000000001",
            ]
    async with make_gateway(first_offset=10**19 - 2, resubscribe_gap=0.0) as gw:
        gw.emit(4)
        async with stream(gw, offset="10000000000000000001") as ws:  # 20 digits: inclusive replay
            assert await offsets(ws, 1) == ["10000000000000000001"]
        async with stream(gw, offset="1" * 21) as ws:  # 21 digits: refused, the connection stays
            error = json.loads(await raw(ws))
            assert error["type"] == "error"
            assert "at most 20 digits" in error["payload"][0]["message"]


async def test_offset_jump_and_reset_reach_a_live_subscriber(make_gateway: GatewayFactory) -> None:
    async with make_gateway(resubscribe_gap=0.0) as gw:
        control = AsyncControlClient(gw.control_url)
        await control.emit(2)
        async with stream(gw, offset="1001") as ws:
            assert await offsets(ws, 2) == ["1001", "1002"]
            assert await control.offset_jump(5000) == {
                "chain": CHAIN,
                "previous_next_offset": 1003,
                "next_offset": 5000,
            }
            await control.emit(1)
            assert await offsets(ws, 1) == ["5000"]
            with pytest.raises(ControlError, match="400 next: must not be below the next offset 5001"):
                await control.offset_jump(4000)
            assert (await control.offset_jump(skip=10))["next_offset"] == 5011
            await control.emit(1)
            assert await offsets(ws, 1) == ["5011"]
            # the explicit reset: offsets go backwards, and the live subscriber sees them
            reset = await control.offset_reset(1001)
            assert reset == {"chain": CHAIN, "previous_next_offset": 5012, "next_offset": 1001, "resets": 1}
            await control.emit(2)
            after = [new_event(f) for f in await frames(ws, 2)]
            assert [e["metadata"]["offset"] for e in after] == ["1001", "1002"]
            before_ids = {e.unique_event_id for e in gw.source.all_events(CHAIN)[:2]}
            assert {e["metadata"]["uniqueEventId"] for e in after}.isdisjoint(before_ids)
            await complete(ws)
        async with stream(gw, offset="1001") as ws:  # a replay reads the log since the reset
            assert await offsets(ws, 2) == ["1001", "1002"]
            await complete(ws)
        state = await control.state()
        assert state["chains"][CHAIN]["resets"] == 1
        assert state["chains"][CHAIN]["events"] == 6
        assert state["streaming"]["offset_resets"] == 1
        assert len(await poll_items(gw)) == 6  # the poll queue has every event


async def test_offset_and_emit_requests_are_validated(gateway: LocalGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.control_url, trust_env=False, timeout=WAIT) as http:
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("/emit", {"adversarial": "nonsense"}, "adversarial"),
            ("/emit", {"adversarial": []}, "adversarial"),
            ("/emit", {"adversarial": 3}, "adversarial"),
            ("/emit", {"adversarial": ["lookalike", 3]}, "adversarial"),
            ("/emit", {"adversarial": "missing", "missing_as": "void"}, "missing_as"),
            ("/emit", {"missing_as": "null"}, "missing_as"),
            ("/offset-jump", {}, "next"),
            ("/offset-jump", {"next": 2000, "skip": 1}, "next"),
            ("/offset-jump", {"next": 1000}, "next"),
            ("/offset-jump", {"next": MAX_OFFSET + 1}, "next"),
            ("/offset-jump", {"skip": -1}, "skip"),
            ("/offset-jump", {"skip": MAX_OFFSET}, "next"),  # would pass 20 digits
            ("/offset-jump", {"next": "2000"}, "next"),
            ("/offset-reset", {}, "next"),
            ("/offset-reset", {"next": -1}, "next"),
            ("/offset-reset", {"next": 5, "chain": "NOPE"}, "chain"),
        ]
        for path, body, field in cases:
            response = await http.post(path, json=body)
            assert response.status_code == 400, (path, body, response.text)
            assert response.json()["field"] == field, (path, body, response.text)
    assert gateway.source.all_events(CHAIN) == []
    assert gateway.source.next_offset(CHAIN) == 1001


def test_the_blocking_client_and_the_default_emit_unchanged() -> None:
    """Adversarial emits draw from a generator of their own: the default events of a seed are the
    same with or without adversarial emits in between."""

    def default_drafts(gw: LocalGateway) -> list[tuple[Any, ...]]:
        events = call_in_gateway(gw, lambda: gw.source.all_events(CHAIN))
        return [(e.hotel, e.event_name, e.primary_key, e.details) for e in events if e.unique_event_id]

    with running_gateway(GatewayConfig(seed=11)) as plain:
        ControlClient(plain.control_url).emit(20)
        expected = default_drafts(plain)
    with running_gateway(GatewayConfig(seed=11)) as gw:
        control = ControlClient(gw.control_url)
        control.emit(10)
        accepted = control.emit(5, adversarial=["lookalike", "missing:hotel_id"], wait=False)
        assert accepted == {"count": 5, "first_offset": 1011, "last_offset": 1015}
        wait_until(lambda: control.state()["background_emits"] == 0, timeout=10, what="the background emit")
        control.emit(10)
        assert control.offset_jump(skip=100)["previous_next_offset"] == 1026
        assert control.offset_reset(7)["next_offset"] == 7
        assert control.emit(1, adversarial="missing:unique_event_id", missing_as="null")["first_offset"] == 7
        events = call_in_gateway(gw, lambda: gw.source.all_events(CHAIN))
        assert len(events) == 26
        plain_events = [
            e for e in events if not (e.primary_key.startswith(("91", "95")) and len(e.primary_key) == 7)
        ]
        assert [(e.hotel, e.event_name, e.primary_key, e.details) for e in plain_events] == expected
