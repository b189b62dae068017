"""The local gateway's Streaming API endpoint over real sockets (ohip-api.md section 1).

The client side is the plain `websockets` library driven frame by frame, so that these tests check
the gateway against the documented protocol, not against our own client. No test sleeps to
synchronise: every wait is a read on the socket under `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from ohip_local.gateway import LocalGateway
from ohip_local.source import Detail, EventDraft

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

GatewayFactory = Callable[..., AbstractAsyncContextManager[LocalGateway]]

SUBPROTOCOL = Subprotocol("graphql-transport-ws")
FULL_SELECTION = (
    "metadata { offset uniqueEventId } moduleName eventName primaryKey timestamp hotelId "
    "publisherId actionInstanceId detail { elementName oldValue newValue scopeFrom scopeTo "
    "elementSequence elementType elementRole }"
)
WAIT = 5.0  # the longest any single wait on the socket may take (generous: CI machines are loaded)


class FakeClock:
    """The gateway's injectable wall clock (tokens, retention, lockout, resubscribe gap)."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- client helpers -----------------------------------------------------------------------------


def _literal(value: str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def query(selection: str = FULL_SELECTION, **fields: str | bool) -> str:
    """`subscription { newEvent(input: {...}) { selection } }` with the input inline; `offsetType`
    is written as the enum value `highest`, everything else as string or boolean literals."""
    args = " ".join(
        f"{name}: {value if name == 'offsetType' else _literal(value)}" for name, value in fields.items()
    )
    return f"subscription {{ newEvent(input: {{ {args} }}) {{ {selection} }} }}"


@asynccontextmanager
async def open_ws(gw: LocalGateway, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    kwargs.setdefault("subprotocols", [SUBPROTOCOL])
    async with connect(gw.ws_url, open_timeout=WAIT, close_timeout=0.5, **kwargs) as ws:
        yield ws


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        frame = await ws.recv()
    message = json.loads(frame)
    assert isinstance(message, dict)
    return message


async def until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """Every frame until the server closes, the close code and reason."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        try:
            while True:
                frames.append(json.loads(await ws.recv()))
        except ConnectionClosed:
            pass
    return frames, ws.close_code, ws.close_reason


async def init(ws: ClientConnection, gw: LocalGateway, token: str | None = None) -> None:
    token = token or gw.tokens.issue().value
    await send(
        ws,
        {
            "type": "connection_init",
            "payload": {"Authorization": f"Bearer {token}", "x-app-key": gw.config.app_key},
        },
    )
    assert await recv(ws) == {"type": "connection_ack"}


async def subscribe(
    ws: ClientConnection, sub_id: str = "1", selection: str = FULL_SELECTION, **fields: Any
) -> None:
    fields.setdefault("chainCode", "LOCALCHAIN")
    await send(
        ws,
        {
            "id": sub_id,
            "type": "subscribe",
            "payload": {
                "query": query(selection, **fields),
                "variables": {},
                "operationName": None,
                "extensions": {},
            },
        },
    )


async def events(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next `count` `newEvent` objects (any other frame fails the test)."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        message = await recv(ws)
        assert message["type"] == "next", message
        out.append(message["payload"]["data"]["newEvent"])
    return out


async def offsets(ws: ClientConnection, count: int) -> list[int]:
    return [int(e["metadata"]["offset"]) for e in await events(ws, count)]


async def synced(ws: ClientConnection) -> None:
    """Ping and wait for the pong: the gateway handles a connection's frames in order, so every
    frame sent before has been handled (for example a subscribe's start position is fixed)."""
    await send(ws, {"type": "ping", "payload": {"sync": True}})
    assert await recv(ws) == {"type": "pong", "payload": {"sync": True}}


@asynccontextmanager
async def subscribed(
    gw: LocalGateway, sub_id: str = "1", *, expect_refusal: bool = False, **fields: Any
) -> AsyncIterator[ClientConnection]:
    """An acknowledged connection with one subscription; for `offsetType: highest`, synced so
    that events emitted next are live ones."""
    async with open_ws(gw) as ws:
        await init(ws, gw)
        await subscribe(ws, sub_id, **fields)
        if fields.get("offsetType") == "highest" and not expect_refusal:
            await synced(ws)
        yield ws


def draft(
    hotel: str = "HOTEL1", details: tuple[Detail, ...] = (), event_name: str = "UPDATE RESERVATION"
) -> EventDraft:
    return EventDraft(
        hotel=hotel,
        module="RESERVATION",
        event_name=event_name,
        primary_key="2241871",
        publisher_id="57489",
        details=details,
    )


# -- 1. handshake: the key hash -------------------------------------------------------------------


@pytest.mark.parametrize("query_string", ["", "?key=", "?key=abc", "?key={upper}", "?key={plain}"])
async def test_missing_or_wrong_key_hash_is_401_before_the_upgrade(
    gateway: LocalGateway, query_string: str
) -> None:
    base = gateway.ws_url.split("?")[0]
    url = base + query_string.format(upper=gateway.config.key_hash.upper(), plain=gateway.config.app_key)
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, subprotocols=[SUBPROTOCOL], open_timeout=WAIT):
            pass
    assert info.value.response.status_code == 401
    assert gateway.streaming.snapshot()["connections"] == 0


# -- 2. subprotocol -----------------------------------------------------------------------------


@pytest.mark.parametrize("subprotocols", [None, [Subprotocol("graphql-ws")]])
async def test_without_graphql_transport_ws_the_connection_is_closed_4406(
    gateway: LocalGateway, subprotocols: list[Subprotocol] | None
) -> None:
    async with connect(gateway.ws_url, subprotocols=subprotocols, open_timeout=WAIT, close_timeout=0.5) as ws:
        assert ws.subprotocol is None
        with pytest.raises(ConnectionClosed):
            await init(ws, gateway)  # never acknowledged: the socket is useless
        assert ws.close_code == 4406
    assert gateway.streaming.snapshot()["close_codes"] == {"4406": 1}


# -- 3. graphql-transport-ws lifecycle --------------------------------------------------------------


async def test_no_connection_init_within_the_timeout_closes_4408(make_gateway: GatewayFactory) -> None:
    async with make_gateway(init_timeout=0.2) as gw, open_ws(gw) as ws:
        await send(ws, {"type": "ping"})  # a ping is not an init
        assert await recv(ws) == {"type": "pong"}
        frames, code, _ = await until_closed(ws)
        assert (frames, code) == ([], 4408)


async def test_initialised_connection_outlives_the_init_timeout(make_gateway: GatewayFactory) -> None:
    async with make_gateway(init_timeout=0.2) as gw, open_ws(gw) as ws:
        await init(ws, gw)
        await subscribe(ws, offset="1001")
        gw.emit(1)
        assert await offsets(ws, 1) == [1001]
        # well past the init timeout, the connection still answers
        for _ in range(3):
            gw.emit(1)
            await events(ws, 1)
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_second_connection_init_closes_4429(gateway: LocalGateway) -> None:
    async with open_ws(gateway) as ws:
        await init(ws, gateway)
        await send(ws, {"type": "connection_init", "payload": {}})
        assert (await until_closed(ws))[1:] == (4429, "Too many initialisation requests")


async def test_subscribe_before_connection_ack_closes_4401(gateway: LocalGateway) -> None:
    async with open_ws(gateway) as ws:
        await subscribe(ws)
        frames, code, _ = await until_closed(ws)
        assert (frames, code) == ([], 4401)


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        "[1, 2]",
        '{"type": "hello"}',
        '{"type": "next", "id": "1", "payload": {}}',
        '{"payload": {}}',
        '{"type": "subscribe", "payload": {"query": "subscription { x }"}}',
        '{"type": "subscribe", "id": "1", "payload": {"query": 42}}',
        '{"type": "subscribe", "id": "1", "payload": {"query": "s", "variables": [1]}}',
        '{"type": "complete"}',
        '{"type": "connection_init", "payload": "Bearer x"}',
    ],
)
async def test_invalid_message_closes_4400(gateway: LocalGateway, frame: str) -> None:
    async with open_ws(gateway) as ws:
        await init(ws, gateway)
        await ws.send(frame)
        frames, code, _ = await until_closed(ws)
        assert (frames, code) == ([], 4400)


async def test_binary_frame_closes_4400(gateway: LocalGateway) -> None:
    async with open_ws(gateway) as ws:
        await ws.send(b'{"type": "ping"}')
        assert (await until_closed(ws))[1] == 4400


# -- 4. connection_init authorisation -----------------------------------------------------------


async def test_token_from_the_oauth_endpoint_is_accepted(gateway: LocalGateway) -> None:
    basic = base64.b64encode(f"{gateway.config.client_id}:{gateway.config.client_secret}".encode()).decode()
    async with httpx.AsyncClient(timeout=WAIT) as http:
        response = await http.post(
            f"{gateway.url}/oauth/v1/tokens",
            headers={"Authorization": f"Basic {basic}", "x-app-key": gateway.config.app_key},
            data={"grant_type": "client_credentials"},
        )
    assert response.status_code == 200
    async with open_ws(gateway) as ws:
        await init(ws, gateway, token=response.json()["access_token"])


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {},
        {"x-app-key": "local-app-key"},
        {"Authorization": "Bearer not-a-token", "x-app-key": "local-app-key"},
        {"Authorization": "{token}", "x-app-key": "local-app-key"},  # no "Bearer "
        {"Authorization": "Bearer {token}"},
        {"Authorization": "Bearer {token}", "x-app-key": "another-key"},
        {"Authorization": "Bearer {token}", "x-app-key": "{hash}"},  # the hash belongs in the URL only
    ],
)
async def test_connection_init_without_valid_token_and_app_key_closes_4401(
    gateway: LocalGateway, payload: dict[str, str] | None
) -> None:
    token = gateway.tokens.issue().value
    message: dict[str, Any] = {"type": "connection_init"}
    if payload is not None:
        message["payload"] = {
            k: v.format(token=token, hash=gateway.config.key_hash) for k, v in payload.items()
        }
    async with open_ws(gateway) as ws:
        await send(ws, message)
        frames, code, _ = await until_closed(ws)
        assert (frames, code) == ([], 4401)


async def test_expired_token_closes_4401(make_gateway: GatewayFactory) -> None:
    clock = FakeClock()
    async with make_gateway(clock=clock, token_lifetime=60.0) as gw:
        token = gw.tokens.issue().value
        clock.advance(59.0)
        async with open_ws(gw) as ws:
            await init(ws, gw, token=token)  # still valid
        clock.advance(2.0)
        async with open_ws(gw) as ws:
            await send(
                ws,
                {
                    "type": "connection_init",
                    "payload": {"Authorization": f"Bearer {token}", "x-app-key": gw.config.app_key},
                },
            )
            assert (await until_closed(ws))[1] == 4401


async def test_close_expired_closes_connections_whose_token_expired(make_gateway: GatewayFactory) -> None:
    clock = FakeClock()
    async with make_gateway(clock=clock, token_lifetime=60.0) as gw, open_ws(gw) as old, open_ws(gw) as fresh:
        await init(old, gw)
        clock.advance(30.0)
        await init(fresh, gw)
        clock.advance(31.0)  # the first token is now expired, the second not
        assert await gw.streaming.close_expired() == 1
        assert (await until_closed(old))[1] == 4401
        await send(fresh, {"type": "ping"})
        assert await recv(fresh) == {"type": "pong"}


# -- 5. subscribe: parsing and validation --------------------------------------------------------


async def test_input_as_a_variable(gateway: LocalGateway) -> None:
    gateway.emit(3)
    document = (
        "subscription Stream($input: NewEventInput!) { newEvent(input: $input) "
        "{ metadata { offset } hotelId } }"
    )
    async with open_ws(gateway) as ws:
        await init(ws, gateway)
        await send(
            ws,
            {
                "id": "v1",
                "type": "subscribe",
                "payload": {
                    "query": document,
                    "variables": {"input": {"chainCode": "LOCALCHAIN", "offset": "1002", "offsetType": None}},
                    "operationName": "Stream",
                    "extensions": {},
                },
            },
        )
        message = await recv(ws)
        assert message["id"] == "v1"
        assert message["payload"]["data"]["newEvent"]["metadata"] == {"offset": "1002"}
        assert await offsets(ws, 1) == [1003]


async def test_inline_input_ignores_undeclared_variables(gateway: LocalGateway) -> None:
    # Our client mirrors the inline input in `variables.input`; an undeclared variable changes nothing.
    gateway.emit(3)
    async with open_ws(gateway) as ws:
        await init(ws, gateway)
        await send(
            ws,
            {
                "id": "1",
                "type": "subscribe",
                "payload": {
                    "query": query(chainCode="LOCALCHAIN", offset="1003"),
                    "variables": {"input": {"chainCode": "LOCALCHAIN", "offset": "1001"}},
                },
            },
        )
        assert await offsets(ws, 1) == [1003]


INVALID_INPUTS: list[tuple[str, str]] = [
    ("chainCode too long", query(chainCode="C" * 21)),
    ("chainCode bad character", query(chainCode="LOCAL/CHAIN")),
    ("chainCode trailing newline", query(chainCode="LOCALCHAIN\n")),
    ("chainCode missing", query(offset="1001")),
    ("chainCode not a string", "subscription { newEvent(input: {chainCode: 12}) { eventName } }"),
    ("offset not digits", query(chainCode="LOCALCHAIN", offset="10a1")),
    ("offset negative", query(chainCode="LOCALCHAIN", offset="-1")),
    ("offset too long", query(chainCode="LOCALCHAIN", offset="1" * 21)),  # 20 digits is the limit
    (
        "offset an int",
        'subscription { newEvent(input: {chainCode: "LOCALCHAIN", offset: 1001}) { eventName } }',
    ),
    (
        "offsetType other",
        'subscription { newEvent(input: {chainCode: "LOCALCHAIN", offsetType: lowest}) { eventName } }',
    ),
    ("delta not boolean", query(chainCode="LOCALCHAIN", delta="true")),
    ("hotelCode too long", query(chainCode="LOCALCHAIN", hotelCode="H" * 51)),
    ("unknown input field", query(chainCode="LOCALCHAIN", hotel="HOTEL1")),
    ("no input", "subscription { newEvent { eventName } }"),
    ("syntax error", 'subscription { newEvent(input: {chainCode: "LOCALCHAIN"} { eventName } }'),
    ("unknown field", query("eventName guestName", chainCode="LOCALCHAIN")),
    ("leaf without subfields", query("metadata", chainCode="LOCALCHAIN")),
    ("scalar with subfields", query("eventName { x }", chainCode="LOCALCHAIN")),
    ("not a subscription", 'query { newEvent(input: {chainCode: "LOCALCHAIN"}) { eventName } }'),
    ("other root field", 'subscription { oldEvent(input: {chainCode: "LOCALCHAIN"}) { eventName } }'),
    (
        "undeclared variable value",
        "subscription ($input: NewEventInput!) { newEvent(input: $input) { eventName } }",
    ),
]


@pytest.mark.parametrize(
    "document", [doc for _, doc in INVALID_INPUTS], ids=[name for name, _ in INVALID_INPUTS]
)
async def test_invalid_subscription_gets_an_error_message_and_the_connection_stays_open(
    gateway: LocalGateway, document: str
) -> None:
    gateway.emit(1)
    async with open_ws(gateway) as ws:
        await init(ws, gateway)
        await send(ws, {"id": "bad", "type": "subscribe", "payload": {"query": document}})
        message = await recv(ws)
        assert message["type"] == "error"
        assert message["id"] == "bad"
        [error] = message["payload"]
        assert isinstance(error["message"], str)
        assert error["message"]
        assert isinstance(error["extensions"]["code"], str)
        assert gateway.streaming.snapshot()["sessions"] == []
        # still usable, and the id is free again
        await subscribe(ws, "bad", offset="1001")
        assert await offsets(ws, 1) == [1001]


async def test_duplicate_subscription_id_closes_4409(gateway: LocalGateway) -> None:
    gateway.emit(1)
    async with open_ws(gateway) as ws:
        await init(ws, gateway)
        await subscribe(ws, "sub-7", offset="1001")
        assert await offsets(ws, 1) == [1001]
        await subscribe(ws, "sub-7", offset="1001")
        frames, code, reason = await until_closed(ws)
        assert (frames, code, reason) == ([], 4409, "Subscriber for sub-7 already exists")
    assert gateway.streaming.snapshot()["conflicts"] == 0  # a protocol error, not an app+chain conflict


async def test_chain_not_approved_closes_4403(make_gateway: GatewayFactory) -> None:
    async with make_gateway(chains=("CHAINA", "CHAINB"), approved_chains=("CHAINA",)) as gw:
        async with subscribed(gw, chainCode="CHAINB") as ws:
            assert (await until_closed(ws))[:2] == ([], 4403)
        async with subscribed(gw, chainCode="UNKNOWN") as ws:
            assert (await until_closed(ws))[:2] == ([], 4403)
        gw.emit(1, chain="CHAINA")
        async with subscribed(gw, chainCode="CHAINA", offset="1") as ws:
            assert await offsets(ws, 1) == [1001]


# -- 6. one client per app key and chain ---------------------------------------------------------


async def test_second_client_for_the_same_chain_is_closed_4409_and_the_first_keeps_streaming(
    gateway: LocalGateway,
) -> None:
    async with subscribed(gateway, offsetType="highest") as first:
        gateway.emit(1)
        assert await offsets(first, 1) == [1001]  # the first subscription is live
        async with subscribed(gateway, offsetType="highest", expect_refusal=True) as second:
            assert (await until_closed(second))[:2] == ([], 4409)
        gateway.emit(1)
        assert await offsets(first, 1) == [1002]
    snapshot = gateway.streaming.snapshot()
    assert snapshot["conflicts"] == 1
    assert snapshot["close_codes"]["4409"] == 1


async def test_other_chain_is_not_a_conflict(make_gateway: GatewayFactory) -> None:
    async with make_gateway(chains=("CHAINA", "CHAINB")) as gw:
        async with (
            subscribed(gw, chainCode="CHAINA", offsetType="highest") as a,
            subscribed(gw, chainCode="CHAINB", offsetType="highest") as b,
        ):
            gw.emit(1, chain="CHAINB")
            gw.emit(1, chain="CHAINA")
            assert await offsets(b, 1) == [1001]
            assert await offsets(a, 1) == [1001]
        assert gw.streaming.snapshot()["conflicts"] == 0


async def test_after_a_4409_the_chain_stays_locked_even_when_the_first_client_has_gone(
    make_gateway: GatewayFactory,
) -> None:
    clock = FakeClock()
    async with make_gateway(clock=clock, conflict_lockout=10.0, resubscribe_gap=0.0) as gw:
        async with subscribed(gw, offsetType="highest") as first:
            gw.emit(1)
            await events(first, 1)
            async with subscribed(gw, offsetType="highest", expect_refusal=True) as second:
                assert (await until_closed(second))[1] == 4409
            await send(first, {"id": "1", "type": "complete"})
            assert (await until_closed(first))[1] == 1000
        assert gw.streaming.snapshot()["sessions"] == []
        clock.advance(9.0)
        async with subscribed(gw, offsetType="highest", expect_refusal=True) as third:
            assert (await until_closed(third))[1] == 4409  # nobody is connected, but still locked
        clock.advance(9.9)  # the third 4409 restarted the lockout at t+9
        async with subscribed(gw, offsetType="highest", expect_refusal=True) as fourth:
            assert (await until_closed(fourth))[1] == 4409
        clock.advance(10.0)
        async with subscribed(gw, offsetType="highest") as fifth:
            gw.emit(1)
            assert await offsets(fifth, 1) == [1002]
        assert gw.streaming.snapshot()["conflicts"] == 3


# -- 7. next frames ----------------------------------------------------------------------------


async def test_next_frame_carries_every_selected_field_like_the_sample(make_gateway: GatewayFactory) -> None:
    created = datetime(2026, 11, 25, 10, 15, 38, 123456, tzinfo=UTC).timestamp()
    clock = FakeClock(created)
    async with make_gateway(clock=clock) as gw:
        event = gw.source.append(
            "LOCALCHAIN",
            draft(
                hotel="HOTEL2",
                event_name="NEW RESERVATION",
                details=(
                    Detail("NAME", "", "Testperson", personal=True),
                    Detail("ADULTS", None, "2", scope_from="2026-12-04", scope_to="2026-12-06"),
                    Detail(
                        "EMAIL", "", "jane@example.com", None, None, "1", "EMAIL", "PRIMARY", personal=True
                    ),
                ),
            ),
        )
        async with subscribed(gw, "42", offset="1001") as ws:
            message = await recv(ws)
    assert message == {
        "id": "42",
        "type": "next",
        "payload": {
            "data": {
                "newEvent": {
                    "metadata": {"offset": "1001", "uniqueEventId": event.unique_event_id},
                    "moduleName": "RESERVATION",
                    "eventName": "NEW RESERVATION",
                    "primaryKey": "2241871",
                    "timestamp": "25-NOV-26 10.15.38.123456 AM",
                    "hotelId": "HOTEL2",
                    "publisherId": "57489",
                    "actionInstanceId": str(event.action_instance_id),
                    "detail": [
                        {
                            "elementName": "NAME",
                            "oldValue": "",
                            "newValue": "Testperson",
                            "scopeFrom": None,
                            "scopeTo": None,
                            "elementSequence": None,
                            "elementType": None,
                            "elementRole": None,
                        },
                        {
                            "elementName": "ADULTS",
                            "oldValue": "",
                            "newValue": "2",
                            "scopeFrom": "2026-12-04",
                            "scopeTo": "2026-12-06",
                            "elementSequence": None,
                            "elementType": None,
                            "elementRole": None,
                        },
                        {
                            "elementName": "EMAIL",
                            "oldValue": "",
                            "newValue": "jane@example.com",
                            "scopeFrom": None,
                            "scopeTo": None,
                            "elementSequence": "1",
                            "elementType": "EMAIL",
                            "elementRole": "PRIMARY",
                        },
                    ],
                }
            }
        },
    }


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 1, 5, 0, 30, 0, 7, tzinfo=UTC), "05-JAN-26 12.30.00.000007 AM"),
        (datetime(2026, 7, 14, 12, 0, 1, 500000, tzinfo=UTC), "14-JUL-26 12.00.01.500000 PM"),
        (datetime(2030, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "31-DEC-30 11.59.59.999999 PM"),
    ],
)
async def test_timestamp_is_opera_style_in_utc(
    make_gateway: GatewayFactory, moment: datetime, expected: str
) -> None:
    async with make_gateway(clock=FakeClock(moment.timestamp())) as gw:
        gw.emit(1)
        async with subscribed(gw, selection="timestamp", offset="1001") as ws:
            assert await events(ws, 1) == [{"timestamp": expected}]


async def test_only_the_selected_fields_are_sent(gateway: LocalGateway) -> None:
    gateway.source.append("LOCALCHAIN", draft(details=(Detail("ROOM TYPE", "STDK", "DLXK"),)))
    selection = "eventName metadata { offset } detail { newValue elementName } at: hotelId"
    async with subscribed(gateway, selection=selection, offset="1001") as ws:
        [event] = await events(ws, 1)
    assert event == {
        "eventName": "UPDATE RESERVATION",
        "metadata": {"offset": "1001"},
        "detail": [{"newValue": "DLXK", "elementName": "ROOM TYPE"}],
        "at": "HOTEL1",
    }
    assert list(event) == ["eventName", "metadata", "detail", "at"]


# -- 8. start position ----------------------------------------------------------------------


async def test_offset_replays_inclusively_then_continues_live_without_gap_or_duplicate(
    gateway: LocalGateway,
) -> None:
    gateway.emit(5)
    async with subscribed(gateway, offset="1003") as ws:
        assert await offsets(ws, 3) == [1003, 1004, 1005]
        gateway.emit(2)
        assert await offsets(ws, 2) == [1006, 1007]
        await send(ws, {"id": "1", "type": "complete"})
        frames, code, _ = await until_closed(ws)
        assert (frames, code) == ([], 1000)


async def test_live_events_appended_during_the_replay_follow_it_in_order(gateway: LocalGateway) -> None:
    gateway.emit(200)
    async with subscribed(gateway, offset="1001") as ws:
        first = await offsets(ws, 1)
        gateway.emit(50)  # while the backlog is still being sent
        rest = await offsets(ws, 249)
    assert first + rest == list(range(1001, 1251))


async def test_offset_older_than_the_retention_replays_from_the_retention_floor(
    make_gateway: GatewayFactory,
) -> None:
    clock = FakeClock()
    async with make_gateway(clock=clock, retention=100.0) as gw:
        gw.emit(3)
        clock.advance(60.0)
        gw.emit(2)
        clock.advance(50.0)  # the first three are now older than the retention
        async with subscribed(gw, offset="1001") as ws:
            assert await offsets(ws, 2) == [1004, 1005]
            gw.emit(1)
            assert await offsets(ws, 1) == [1006]


async def test_offset_type_highest_starts_after_the_subscribe_and_floors_later_replays(
    make_gateway: GatewayFactory,
) -> None:
    async with make_gateway(resubscribe_gap=0.0) as gw:
        gw.emit(3)
        async with subscribed(gw, offset="1001", offsetType="highest") as ws:
            gw.emit(2)
            assert await offsets(ws, 2) == [1004, 1005]
            await send(ws, {"id": "1", "type": "complete"})
            assert (await until_closed(ws))[:2] == ([], 1000)
        async with subscribed(gw, offset="1001") as ws:
            assert await offsets(ws, 2) == [1004, 1005]  # nothing before the highest subscribe


async def test_no_offset_resumes_after_the_last_offset_delivered_to_the_chain(
    make_gateway: GatewayFactory,
) -> None:
    async with make_gateway(resubscribe_gap=0.0) as gw:
        gw.emit(3)
        async with subscribed(gw) as ws:  # nothing delivered yet: from the retention floor
            assert await offsets(ws, 3) == [1001, 1002, 1003]
            await send(ws, {"id": "1", "type": "complete"})
            assert (await until_closed(ws))[:2] == ([], 1000)
        gw.emit(2)
        async with subscribed(gw) as ws:
            assert await offsets(ws, 2) == [1004, 1005]
            assert gw.streaming.snapshot()["sessions"][0]["last_offset"] == 1005


# -- 9. delta and hotel filter -------------------------------------------------------------------

_UPDATE_DETAILS = (
    Detail("ROOM TYPE", "STDK", "DLXK"),
    Detail("ARRIVAL DATE", "2026-12-04", "2026-12-04"),
    Detail("DEPARTURE DATE", "2026-12-06", "2026-12-07"),
)


@pytest.mark.parametrize(
    ("delta", "expected"),
    [(True, ["ROOM TYPE", "DEPARTURE DATE"]), (False, ["ROOM TYPE", "ARRIVAL DATE", "DEPARTURE DATE"])],
)
async def test_delta_keeps_only_changed_elements(
    gateway: LocalGateway, delta: bool, expected: list[str]
) -> None:
    gateway.source.append("LOCALCHAIN", draft(details=_UPDATE_DETAILS))
    async with subscribed(
        gateway, selection="detail { elementName oldValue newValue }", offset="1001", delta=delta
    ) as ws:
        [event] = await events(ws, 1)
    assert [d["elementName"] for d in event["detail"]] == expected


async def test_hotel_code_filters_hotels(gateway: LocalGateway) -> None:
    for hotel in ("HOTEL1", "HOTEL2", "HOTEL3", "HOTEL2", "HOTEL1"):
        gateway.emit(1, hotel=hotel)
    async with subscribed(
        gateway, selection="metadata { offset } hotelId", offset="1001", hotelCode="HOTEL1,HOTEL3"
    ) as ws:
        received = await events(ws, 3)
        gateway.emit(1, hotel="HOTEL2")
        gateway.emit(1, hotel="HOTEL3")
        received += await events(ws, 1)
    assert [(e["metadata"]["offset"], e["hotelId"]) for e in received] == [
        ("1001", "HOTEL1"),
        ("1003", "HOTEL3"),
        ("1005", "HOTEL1"),
        ("1007", "HOTEL3"),
    ]


# -- 10. ping / pong -------------------------------------------------------------------------


async def test_client_ping_gets_pong_with_its_payload(gateway: LocalGateway) -> None:
    async with open_ws(gateway) as ws:
        await init(ws, gateway)
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}
        await send(ws, {"type": "ping", "payload": {"n": 1}})
        assert await recv(ws) == {"type": "pong", "payload": {"n": 1}}


async def test_stalled_pongs_are_not_sent(gateway: LocalGateway) -> None:
    async with open_ws(gateway) as ws:
        await init(ws, gateway)
        gateway.streaming.set_stall_pongs(True)
        await send(ws, {"type": "ping"})
        # the gateway handles frames in order: the error proves the ping got no pong
        await send(ws, {"id": "x", "type": "subscribe", "payload": {"query": "subscription {"}})
        assert (await recv(ws))["type"] == "error"
        gateway.streaming.set_stall_pongs(False)
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}
        assert gateway.streaming.snapshot()["stalled_pings"] == 1


async def test_server_pings_and_closes_4504_when_pongs_stop(make_gateway: GatewayFactory) -> None:
    async with make_gateway(server_ping_interval=0.1, pong_timeout=0.25) as gw, open_ws(gw) as ws:
        await init(ws, gw)
        for _ in range(4):  # answered pings keep it open well past the pong timeout
            assert await recv(ws) == {"type": "ping"}
            await send(ws, {"type": "pong"})
        frames, code, _ = await until_closed(ws)  # now silent
        assert code == 4504
        assert frames
        assert all(f == {"type": "ping"} for f in frames)
        assert len(frames) <= 3
    snapshot = gw.streaming.snapshot()
    assert snapshot["pongs_received"] == 4
    assert snapshot["pings_sent"] == 4 + len(frames)
    assert snapshot["close_codes"] == {"4504": 1}


# -- 11. backpressure ------------------------------------------------------------------------


async def test_pong_is_deferred_until_the_burst_has_been_sent(gateway: LocalGateway) -> None:
    async with subscribed(gateway, selection="metadata { offset }", offsetType="highest") as ws:
        gateway.streaming.start_backpressure(60)
        await send(ws, {"type": "ping"})
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != "pong":
            frames.append(await recv(ws))
        assert [int(f["payload"]["data"]["newEvent"]["metadata"]["offset"]) for f in frames[:-1]] == list(
            range(1001, 1061)
        )
        assert gateway.streaming.snapshot()["deferred_pongs"] == 1
        # after the burst, pongs are immediate again
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}


# -- 12. complete -------------------------------------------------------------------------------


async def test_complete_sends_what_remains_then_closes_1000(gateway: LocalGateway) -> None:
    gateway.emit(3)
    async with subscribed(gateway, selection="metadata { offset }", offset="1001") as ws:
        await send(ws, {"id": "1", "type": "complete"})
        await send(ws, {"type": "ping"})
        frames: list[dict[str, Any]] = []
        try:
            while not frames or frames[-1]["type"] != "pong":
                frames.append(await recv(ws))
            gateway.emit(2)  # after the complete: not part of what remains
        except ConnectionClosed:
            pass  # closed before the pong: fine too
        rest, code, _ = await until_closed(ws)
    sent = [
        int(f["payload"]["data"]["newEvent"]["metadata"]["offset"])
        for f in frames + rest
        if f["type"] == "next"
    ]
    assert sent == [1001, 1002, 1003]
    assert code == 1000


async def test_subscribe_within_the_resubscribe_gap_is_counted(make_gateway: GatewayFactory) -> None:
    clock = FakeClock()
    async with make_gateway(clock=clock, resubscribe_gap=10.0) as gw:
        gw.emit(1)
        for advance, violations in ((0.0, 0), (9.5, 1), (10.0, 1)):
            clock.advance(advance)
            async with subscribed(gw, selection="metadata { offset }", offset="1001") as ws:
                assert await offsets(ws, 1) == [1001]  # a violation is counted, not refused
                assert gw.streaming.snapshot()["resubscribe_gap_violations"] == violations
                await send(ws, {"id": "1", "type": "complete"})
                assert (await until_closed(ws))[1] == 1000


# -- 13. volume and flow control -------------------------------------------------------------


async def test_a_client_that_does_not_read_blocks_neither_append_nor_other_clients(
    make_gateway: GatewayFactory,
) -> None:
    async with make_gateway(chains=("CHAINA", "CHAINB")) as gw:
        async with (
            open_ws(gw, max_queue=2) as slow,
            subscribed(gw, chainCode="CHAINB", offsetType="highest") as fast,
        ):
            await init(slow, gw)
            await subscribe(slow, chainCode="CHAINA", offsetType="highest")
            await synced(slow)
            # the slow client has not read anything; appends still return (emit is synchronous:
            # a gateway that waited for the reader would hang here until the test's timeout)
            gw.emit(2000, chain="CHAINA")
            gw.emit(1, chain="CHAINB")
            assert await offsets(fast, 1) == [1001]
            # now the slow client reads everything, in order, nothing lost
            assert await offsets(slow, 2000) == list(range(1001, 3001))
        snapshot = gw.streaming.snapshot()
        assert snapshot["delivered_offsets"] == {"CHAINA": 3000, "CHAINB": 1001}


# -- control operations ------------------------------------------------------------------------


async def test_drop_all_aborts_without_a_close_frame(gateway: LocalGateway) -> None:
    async with open_ws(gateway) as a, open_ws(gateway) as b:
        await init(a, gateway)
        assert await gateway.streaming.drop_all() == 2
        for ws in (a, b):
            frames, code, _ = await until_closed(ws)
            assert (frames, code) == ([], 1006)
            assert ws.close_code == 1006


async def test_close_all_uses_the_given_code(gateway: LocalGateway) -> None:
    gateway.emit(1)
    async with subscribed(gateway, offset="1001") as ws:
        assert await offsets(ws, 1) == [1001]
        assert await gateway.streaming.close_all(4500, "internal error") == 1
        assert (await until_closed(ws))[1:] == (4500, "internal error")
    assert gateway.streaming.snapshot()["close_codes"] == {"4500": 1}


async def test_shutdown_closes_1001_and_refuses_new_connections(gateway: LocalGateway) -> None:
    async with open_ws(gateway) as ws:
        await init(ws, gateway)
        await gateway.streaming.shutdown()
        assert (await until_closed(ws))[1] == 1001
    async with open_ws(gateway) as late:
        assert (await until_closed(late))[:2] == ([], 1001)
    assert gateway.streaming.snapshot()["close_codes"] == {"1001": 2}


async def test_snapshot_is_json_and_describes_live_sessions(gateway: LocalGateway) -> None:
    gateway.emit(3)
    async with subscribed(gateway, "s1", offset="1002") as ws:
        await events(ws, 2)
        snapshot = gateway.streaming.snapshot()
        assert json.loads(json.dumps(snapshot)) == snapshot
        [session] = snapshot["sessions"]
        assert session["chain"] == "LOCALCHAIN"
        assert session["subscription_id"] == "s1"
        assert session["delivered"] == 2
        assert session["last_offset"] == 1003
        assert snapshot["connections"] == 1
        assert snapshot["live_connections"] == 1
