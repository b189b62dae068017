"""The local gateway's control interface and its clients, and the gateway on its own thread."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ohip_local.control import AsyncControlClient, ControlClient, ControlError
from ohip_local.gateway import GatewayConfig, GatewayError, LocalGateway
from ohip_local.source import StoredEvent
from ohip_local.threaded import call_in_gateway, running_gateway

from .conftest import GatewayFactory

pytestmark = pytest.mark.integration


@pytest.fixture
async def http(gateway: LocalGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.control_url, trust_env=False, timeout=5.0) as client:
        yield client


@pytest.fixture
def control(gateway: LocalGateway) -> AsyncControlClient:
    return AsyncControlClient(gateway.control_url)


async def post(http: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    return await http.post(path, json=body)


def assert_bad(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["field"] == field
    assert field in body["error"]


# -- /emit ------------------------------------------------------------------------------------------


async def test_emit_appends_and_reports_offsets(control: AsyncControlClient, gateway: LocalGateway) -> None:
    assert await control.emit(5) == {"count": 5, "first_offset": 1001, "last_offset": 1005}
    assert await control.emit(2) == {"count": 2, "first_offset": 1006, "last_offset": 1007}
    assert [e.offset for e in gateway.source.all_events("LOCALCHAIN")] == list(range(1001, 1008))


async def test_emit_defaults_to_one_event(http: httpx.AsyncClient, gateway: LocalGateway) -> None:
    response = await http.post("/emit")
    assert response.status_code == 200
    assert response.json() == {"count": 1, "first_offset": 1001, "last_offset": 1001}


async def test_emit_to_a_hotel_and_a_chain(make_gateway: GatewayFactory) -> None:
    async with make_gateway(chains=("CHAINA", "CHAINB")) as gw:
        control = AsyncControlClient(gw.control_url)
        assert (await control.emit(20, hotel="HOTEL3", chain="CHAINB"))["last_offset"] == 1020
        assert {e.hotel for e in gw.source.all_events("CHAINB")} == {"HOTEL3"}
        assert gw.source.all_events("CHAINA") == []
        await control.emit(3)  # the first chain by default
        assert len(gw.source.all_events("CHAINA")) == 3


async def test_emit_at_a_rate_is_paced(control: AsyncControlClient, gateway: LocalGateway) -> None:
    times: list[float] = []
    gateway.source.listen("LOCALCHAIN", lambda e: times.append(time.monotonic()))
    started = time.monotonic()
    result = await control.emit(21, rate=100)
    assert result == {"count": 21, "first_offset": 1001, "last_offset": 1021}
    assert time.monotonic() - started >= 0.2  # 21 events at 100/s: the last one 0.2 s after the first
    assert times[-1] - times[0] >= 0.19
    assert times[10] - times[0] < times[-1] - times[0]  # spread out, not in one burst


async def test_emit_without_waiting_answers_at_once(
    control: AsyncControlClient, gateway: LocalGateway
) -> None:
    done = asyncio.Event()
    seen: list[StoredEvent] = []

    def on_event(event: StoredEvent) -> None:
        seen.append(event)
        if len(seen) == 30:
            done.set()

    gateway.source.listen("LOCALCHAIN", on_event)
    result = await control.emit(30, rate=200, wait=False)
    assert result == {"count": 30, "first_offset": 1001, "last_offset": 1030}
    assert len(seen) < 30  # answered before the paced emission ended
    await asyncio.wait_for(done.wait(), 2)
    assert [e.offset for e in seen] == list(range(1001, 1031))
    assert (await control.state())["background_emits"] == 0


async def test_emit_without_waiting_and_without_rate(
    control: AsyncControlClient, gateway: LocalGateway
) -> None:
    done = asyncio.Event()
    gateway.source.listen("LOCALCHAIN", lambda e: done.set() if e.offset == 2200 else None)
    result = await control.emit(1200, wait=False)
    assert result == {"count": 1200, "first_offset": 1001, "last_offset": 2200}
    await asyncio.wait_for(done.wait(), 2)


async def test_background_emission_stops_with_the_gateway(make_gateway: GatewayFactory) -> None:
    def background() -> list[asyncio.Task[Any]]:
        return [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "_Control._background"
        ]

    async with make_gateway() as gw:
        await AsyncControlClient(gw.control_url).emit(1000, rate=10, wait=False)
        assert len(background()) == 1
    assert background() == []
    assert len(gw.source.all_events("LOCALCHAIN")) < 1000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 100_001}, "count"),
        ({"count": "5"}, "count"),
        ({"count": 2.5}, "count"),
        ({"count": True}, "count"),
        ({"count": 1, "rate": -1}, "rate"),
        ({"count": 1, "rate": "fast"}, "rate"),
        ({"count": 1, "hotel": "NOHOTEL"}, "hotel"),
        ({"count": 1, "hotel": 3}, "hotel"),
        ({"count": 1, "chain": "NOCHAIN"}, "chain"),
        ({"count": 1, "wait": "yes"}, "wait"),
        ([1, 2], "body"),
        ("count", "body"),
    ],
)
async def test_emit_bad_input(http: httpx.AsyncClient, gateway: LocalGateway, body: Any, field: str) -> None:
    assert_bad(await post(http, "/emit", body), field)
    assert gateway.source.all_events("LOCALCHAIN") == []


async def test_body_that_is_not_json(http: httpx.AsyncClient) -> None:
    response = await http.post("/emit", content=b"{count: 1", headers={"content-type": "application/json"})
    assert_bad(response, "body")


# -- streaming commands ---------------------------------------------------------------------------------


async def test_drop_and_close_without_connections(control: AsyncControlClient) -> None:
    assert await control.drop() == {"dropped": 0}
    assert await control.close(4504, "going away") == {"closed": 0}
    assert await control.close(1001) == {"closed": 0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "code"),
        ({"code": 999}, "code"),
        ({"code": 5000}, "code"),
        ({"code": "4401"}, "code"),
        ({"code": 4401, "reason": 7}, "reason"),
        ({"code": 4401, "reason": "x" * 124}, "reason"),
    ],
)
async def test_close_bad_input(http: httpx.AsyncClient, body: Any, field: str) -> None:
    assert_bad(await post(http, "/close", body), field)


async def test_stall_pongs(control: AsyncControlClient, http: httpx.AsyncClient) -> None:
    assert await control.stall_pongs(True) == {"enabled": True}
    assert (await control.state())["streaming"]["stall_pongs"] is True
    assert await control.stall_pongs(False) == {"enabled": False}
    assert (await control.state())["streaming"]["stall_pongs"] is False
    assert_bad(await post(http, "/stall-pongs", {}), "enabled")
    assert_bad(await post(http, "/stall-pongs", {"enabled": "on"}), "enabled")


async def test_backpressure(control: AsyncControlClient, http: httpx.AsyncClient) -> None:
    assert await control.backpressure(50) == {"events": 50}
    assert_bad(await post(http, "/backpressure", {}), "events")
    assert_bad(await post(http, "/backpressure", {"events": 0}), "events")
    assert_bad(await post(http, "/backpressure", {"events": "many"}), "events")


async def test_expire_tokens(
    control: AsyncControlClient, gateway: LocalGateway, http: httpx.AsyncClient
) -> None:
    token = gateway.tokens.issue().value
    gateway.tokens.issue()
    assert await control.expire_tokens() == {"expired": 2, "closed": 0}
    assert not gateway.tokens.valid(token)
    gateway.tokens.issue()
    assert await control.expire_tokens(close_connections=False) == {"expired": 1, "closed": 0}
    assert await control.expire_tokens() == {"expired": 0, "closed": 0}
    assert_bad(await post(http, "/expire-tokens", {"close_connections": 1}), "close_connections")


async def test_expired_token_is_refused_by_the_poll_api(
    control: AsyncControlClient, gateway: LocalGateway
) -> None:
    token = gateway.tokens.issue().value
    cfg = gateway.config
    headers = {"Authorization": f"Bearer {token}", "x-app-key": cfg.app_key, "x-hotelid": "HOTEL1"}
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False) as api:
        path = "/int/v1/externalSystem/RELAY/businessEvents"
        assert (await api.get(path, headers=headers)).status_code == 204
        await control.expire_tokens()
        assert (await api.get(path, headers=headers)).status_code == 401


async def test_approval(control: AsyncControlClient, gateway: LocalGateway, http: httpx.AsyncClient) -> None:
    assert gateway.context.approved("LOCALCHAIN")
    assert await control.approval("LOCALCHAIN", False) == {"chain": "LOCALCHAIN", "approved": False}
    assert not gateway.context.approved("LOCALCHAIN")
    assert (await control.state())["chains"]["LOCALCHAIN"]["approved"] is False
    await control.approval("LOCALCHAIN", True)
    assert gateway.context.approved("LOCALCHAIN")
    assert_bad(await post(http, "/approval", {"chain": "NOCHAIN", "approved": True}), "chain")
    assert_bad(await post(http, "/approval", {"approved": True}), "chain")
    assert_bad(await post(http, "/approval", {"chain": "LOCALCHAIN"}), "approved")


# -- /poll-fault --------------------------------------------------------------------------------------------


async def test_poll_fault_is_applied_to_the_poll_api(
    control: AsyncControlClient, gateway: LocalGateway
) -> None:
    gateway.emit(2)
    fault = await control.poll_fault("5xx", status=502, count=1)
    assert fault == {"mode": "5xx", "status": 502, "remaining": 1, "delay": 0.0, "retry_after": None}
    cfg = gateway.config
    headers = {
        "Authorization": f"Bearer {gateway.tokens.issue().value}",
        "x-app-key": cfg.app_key,
        "x-hotelid": "HOTEL1",
    }
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False) as api:
        path = "/int/v1/externalSystem/RELAY/businessEvents?limit=10"
        assert (await api.get(path, headers=headers)).status_code == 502
        await control.poll_fault("429", retry_after=2)
        response = await api.get(path, headers=headers)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "2"
        assert (await control.poll_fault("off"))["mode"] == "off"
        assert len((await api.get(path, headers=headers)).json()["businessEventData"]) == 2
    poll = (await control.state())["poll"]
    assert poll["faulted"] == 2
    assert poll["queued"] == {"RELAY": 0}


async def test_poll_fault_slow(control: AsyncControlClient, gateway: LocalGateway) -> None:
    fault = await control.poll_fault("slow", delay=0.5)
    assert fault["mode"] == "slow"
    assert fault["delay"] == 0.5
    assert gateway.poll.fault.delay == 0.5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "mode"),
        ({"mode": "teapot"}, "mode"),
        ({"mode": "5xx", "status": 404}, "status"),
        ({"mode": "5xx", "count": 0}, "count"),
        ({"mode": "slow", "delay": -1}, "delay"),
        ({"mode": "429", "retry_after": "soon"}, "retry_after"),
    ],
)
async def test_poll_fault_bad_input(http: httpx.AsyncClient, body: Any, field: str) -> None:
    assert_bad(await post(http, "/poll-fault", body), field)


async def test_poll_fault_client_rejects_unknown_options(control: AsyncControlClient) -> None:
    with pytest.raises(TypeError, match="colour"):
        await control.poll_fault("5xx", colour="red")


# -- /state ------------------------------------------------------------------------------------------


async def test_state(
    control: AsyncControlClient, gateway: LocalGateway, make_gateway: GatewayFactory
) -> None:
    state = await control.state()
    assert state["chains"] == {
        "LOCALCHAIN": {"highest": None, "next_offset": 1001, "events": 0, "approved": True, "resets": 0}
    }
    assert state["poll"]["queued"] == {"RELAY": 0}
    assert state["tokens_issued"] == 0
    assert isinstance(state["streaming"], dict)
    await control.emit(4)
    gateway.tokens.issue()
    state = await control.state()
    assert state["chains"]["LOCALCHAIN"] == {
        "highest": 1004,
        "next_offset": 1005,
        "events": 4,
        "approved": True,
        "resets": 0,
    }
    assert state["poll"]["queued"] == {"RELAY": 4}
    assert state["tokens_issued"] == 1
    json.dumps(state)


async def test_unknown_path_and_method(http: httpx.AsyncClient) -> None:
    assert (await http.get("/emit")).status_code == 405
    assert (await http.post("/nothing")).status_code == 404


async def test_client_raises_a_clear_error(control: AsyncControlClient) -> None:
    with pytest.raises(ControlError, match=r"POST /emit failed: 400 count: must be from 1 to 100000"):
        await control.emit(0)
    with pytest.raises(ControlError, match="POST /close failed: 400 code"):
        await control.close(99)
    unreachable = AsyncControlClient("http://127.0.0.1:9", timeout=1.0)
    with pytest.raises(ControlError, match="GET /state failed: ConnectError"):
        await unreachable.state()


# -- the gateway on its own thread, with the blocking client ----------------------------------------


def test_threaded_gateway_with_the_blocking_client() -> None:
    with running_gateway(GatewayConfig(seed=5)) as gw:
        control = ControlClient(gw.control_url)
        assert control.emit(3) == {"count": 3, "first_offset": 1001, "last_offset": 1003}
        assert control.emit(2, rate=100, hotel="HOTEL2") == {
            "count": 2,
            "first_offset": 1004,
            "last_offset": 1005,
        }
        assert control.drop() == {"dropped": 0}
        assert control.close(4504) == {"closed": 0}
        assert control.stall_pongs(False) == {"enabled": False}
        assert control.expire_tokens() == {"expired": 0, "closed": 0}
        assert control.approval("LOCALCHAIN", True) == {"chain": "LOCALCHAIN", "approved": True}
        assert control.poll_fault("off")["mode"] == "off"
        assert control.backpressure(1) == {"events": 1}
        state = control.state()
        assert state["chains"]["LOCALCHAIN"]["next_offset"] >= 1006
        assert call_in_gateway(gw, lambda: len(gw.emit(2))) == 2
        with pytest.raises(ControlError, match="400 hotel"):
            control.emit(1, hotel="NOHOTEL")
        url = gw.control_url
    with pytest.raises(ControlError, match="ConnectError"):
        ControlClient(url, timeout=1.0).state()


def test_threaded_gateway_serves_a_client_on_another_loop() -> None:
    with running_gateway() as gw:
        ControlClient(gw.control_url).emit(3)

        async def client() -> int:
            async with httpx.AsyncClient(base_url=gw.url, trust_env=False) as http:
                cfg = gw.config
                token = await http.post(
                    "/oauth/v1/tokens",
                    data={"grant_type": "client_credentials", "enterpriseId": cfg.enterprise_id},
                    auth=(cfg.client_id, cfg.client_secret),
                    headers={"x-app-key": cfg.app_key},
                )
                response = await http.get(
                    "/int/v1/externalSystem/RELAY/businessEvents?limit=10",
                    headers={
                        "Authorization": f"Bearer {token.json()['access_token']}",
                        "x-app-key": cfg.app_key,
                        "x-hotelid": "HOTEL1",
                    },
                )
                return len(response.json()["businessEventData"])

        assert asyncio.run(client()) == 3


def test_port_in_use_raises_gateway_error_in_the_caller() -> None:
    with running_gateway() as first:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(GatewayError) as caught, running_gateway(GatewayConfig(port=port)):
            pass
        message = str(caught.value)
        assert "in use" in message
        assert str(port) in message
        assert "\n" not in message
        control_port = int(first.control_url.rsplit(":", 1)[1])
        with (
            pytest.raises(GatewayError, match="control interface"),
            running_gateway(GatewayConfig(control_port=control_port)),
        ):
            pass


def test_errors_in_the_body_propagate_and_the_gateway_stops() -> None:
    urls: list[str] = []

    def body() -> None:
        with running_gateway() as gw:
            urls.append(gw.control_url)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        body()
    (url,) = urls
    with pytest.raises(ControlError):
        ControlClient(url, timeout=1.0).state()


async def test_call_in_gateway_needs_a_threaded_gateway(gateway: LocalGateway) -> None:
    with pytest.raises(RuntimeError, match="not running"):
        call_in_gateway(gateway, lambda: None)
