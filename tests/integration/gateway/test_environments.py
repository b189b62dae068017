"""Several OPERA environments in one local gateway, per-chain control, and the connection detector.

Every environment listens on a port of its own with its own credentials, chains, event logs,
tokens and one-connection-per-chain rule (gateway.py); the control interface addresses them by
number (control.py). The client side is the plain `websockets` library; no test sleeps to
synchronise: every wait is a read on a socket or a poll of the control interface, under a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from ohip_local.cli import LocalCommandError, _gateway
from ohip_local.control import AsyncControlClient, ControlError
from ohip_local.gateway import (
    EnvironmentConfig,
    GatewayConfig,
    GatewayEnvironment,
    GatewayError,
    LocalGateway,
    describe,
    fleet_config,
)

from .conftest import GatewayFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

SUBPROTOCOL = Subprotocol("graphql-transport-ws")
WAIT = 5.0  # the longest any single wait may take (generous: CI machines are loaded)
SELECTION = "metadata { offset uniqueEventId } eventName hotelId"

ENV1 = EnvironmentConfig(
    client_id="client-one",
    client_secret="secret-one",
    app_key="app-key-one",
    enterprise_id="ENTONE",
    chains=("ONEA", "ONEB"),
    hotels=("H1",),
    external_systems=("SYS1",),
)


def two_environments(**changes: Any) -> dict[str, Any]:
    """make_gateway settings: environment 0 with chains CHAINA and CHAINB, environment 1 = ENV1."""
    return {"chains": ("CHAINA", "CHAINB"), "environments": (ENV1,), **changes}


# -- client helpers -----------------------------------------------------------------------------


def token_of(env: GatewayEnvironment) -> str:
    return env.tokens.issue().value


@asynccontextmanager
async def open_ws(url: str) -> AsyncIterator[ClientConnection]:
    async with connect(url, subprotocols=[SUBPROTOCOL], open_timeout=WAIT, close_timeout=0.5) as ws:
        yield ws


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        frame = await ws.recv()
    message = json.loads(frame)
    assert isinstance(message, dict)
    return message


async def closed_with(ws: ClientConnection) -> int | None:
    """Read until the server closes; the close code."""
    async with asyncio.timeout(WAIT):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    return ws.close_code


async def init(ws: ClientConnection, app_key: str, token: str) -> None:
    payload = {"Authorization": f"Bearer {token}", "x-app-key": app_key}
    await send(ws, {"type": "connection_init", "payload": payload})


async def subscribe(ws: ClientConnection, chain: str, sub_id: str = "1") -> None:
    new_event = f'newEvent(input: {{ chainCode: "{chain}", offsetType: highest }})'
    query = f"subscription {{ {new_event} {{ {SELECTION} }} }}"
    await send(ws, {"id": sub_id, "type": "subscribe", "payload": {"query": query, "variables": {}}})


async def synced(ws: ClientConnection) -> None:
    """Ping, wait for the pong: every frame sent before has been handled (the subscription is live)."""
    await send(ws, {"type": "ping", "payload": {"sync": True}})
    assert await recv(ws) == {"type": "pong", "payload": {"sync": True}}


@asynccontextmanager
async def subscribed(
    env: GatewayEnvironment, chain: str, *, refused: bool = False
) -> AsyncIterator[ClientConnection]:
    """An acknowledged connection to `env` with a live subscription on `chain` (`refused`: the
    subscribe is expected to be refused, so no sync)."""
    async with open_ws(env.ws_url) as ws:
        await init(ws, env.config.app_key, token_of(env))
        assert await recv(ws) == {"type": "connection_ack"}
        await subscribe(ws, chain)
        if not refused:
            await synced(ws)
        yield ws


async def offsets(ws: ClientConnection, count: int) -> list[tuple[str, int]]:
    """The next `count` events as (hotel, offset)."""
    out: list[tuple[str, int]] = []
    while len(out) < count:
        message = await recv(ws)
        assert message["type"] == "next", message
        event = message["payload"]["data"]["newEvent"]
        out.append((event["hotelId"], int(event["metadata"]["offset"])))
    return out


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll the gateway's state until `condition` holds, failing after WAIT seconds (the gateway
    runs on this loop: the poll lets it work)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT:g}s waiting for {what}")
        await asyncio.sleep(0.01)


def oauth_form(env: EnvironmentConfig | GatewayConfig) -> tuple[dict[str, str], dict[str, str]]:
    basic = base64.b64encode(f"{env.client_id}:{env.client_secret}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}", "x-app-key": env.app_key}
    return headers, {"grant_type": "client_credentials", "enterpriseId": env.enterprise_id}


# -- configuration ---------------------------------------------------------------------------------


def test_a_config_without_environments_is_one_environment() -> None:
    config = GatewayConfig()
    assert config.environment_count == 1
    assert config.for_environment(0) is config
    env = config.environment(0)
    assert (env.client_id, env.app_key, env.chains, env.seed) == (
        "local-client",
        "local-app-key",
        ("LOCALCHAIN",),
        1,
    )
    with pytest.raises(IndexError):
        config.environment(1)


def test_environment_zero_is_the_config_s_own_fields_and_seeds_differ() -> None:
    config = GatewayConfig(seed=7, port=0, chains=("X",), environments=(ENV1, EnvironmentConfig()))
    assert config.environment_count == 3
    assert config.environment(0).chains == ("X",)
    assert [config.environment(i).seed for i in range(3)] == [7, 8, 9]
    scoped = config.for_environment(1)
    assert (scoped.app_key, scoped.chains, scoped.hotels, scoped.seed, scoped.environments) == (
        "app-key-one",
        ("ONEA", "ONEB"),
        ("H1",),
        8,
        (),
    )
    assert scoped.init_timeout == config.init_timeout  # the gateway-wide settings hold for every one


@pytest.mark.parametrize(
    ("gateway", "environment", "message"),
    [
        ({}, {"chains": ()}, "needs at least one chain"),
        ({}, {"hotels": ()}, "needs at least one hotel"),
        ({}, {"first_offsets": (("NOPE", 1),)}, "unknown chain"),
        ({}, {"first_offset": -1}, "first offset must be an integer"),
        ({}, {"port": 70000}, "not a TCP port"),
        ({"port": 9100}, {"port": 9100}, "ports of their own"),
        ({"control_port": 9100}, {"port": 9100}, "ports of their own"),
        ({"seed": 1}, {"seed": 1}, "seeds of their own"),
    ],
)
def test_bad_environments_are_refused_in_one_line(
    gateway: dict[str, Any], environment: dict[str, Any], message: str
) -> None:
    with pytest.raises(GatewayError, match=message):
        GatewayConfig(**gateway, environments=(EnvironmentConfig(**environment),))


def test_fleet_config_gives_every_environment_its_own_credentials_chains_and_port() -> None:
    config = fleet_config(3, 100, GatewayConfig(port=9000, control_port=9001))
    envs = [config.environment(i) for i in range(3)]
    assert [e.port for e in envs] == [9000, 9010, 9020]
    assert len({e.client_id for e in envs}) == len({e.app_key for e in envs}) == 3
    assert envs[0].client_id == "local-client"  # environment 0 keeps the documented credentials
    assert envs[2].chains[0] == "ENV2CHAIN001"
    assert envs[2].chains[-1] == "ENV2CHAIN100"
    assert len({c for e in envs for c in e.chains}) == 300
    assert fleet_config(1, 1) == GatewayConfig()
    assert fleet_config(1, 1200).chains[-1] == "ENV0CHAIN1200"
    with pytest.raises(GatewayError, match="over 65535"):
        fleet_config(3, 1, GatewayConfig(port=65530))


# -- one process, several environments ---------------------------------------------------------------


async def test_each_environment_listens_on_its_own_port(make_gateway: GatewayFactory) -> None:
    async with make_gateway(**two_environments()) as gw:
        assert len(gw.environments) == 2
        assert gw.environment(0).url == gw.url
        assert gw.environment(0).config is not gw.config  # environment 0 runs without the others
        assert gw.environment(1).url != gw.url
        assert gw.environment(1).ws_url.startswith(gw.environment(1).url.replace("http", "ws"))
        assert gw.environment(1).chains == ("ONEA", "ONEB")
        with pytest.raises(IndexError):
            gw.environment(2)
        control = AsyncControlClient(gw.control_url)
        state = await control.state(environment=1)
        assert (state["environment"], state["environments"], state["url"]) == (1, 2, gw.environment(1).url)
        assert set(state["chains"]) == {"ONEA", "ONEB"}
        assert state["poll"]["queued"] == {"SYS1": 0}
        assert set((await control.state())["chains"]) == {"CHAINA", "CHAINB"}
        async with httpx.AsyncClient(base_url=gw.control_url, trust_env=False, timeout=WAIT) as http:
            for path in ("/state?environment=one", "/state?environment=2", "/connections?environment=-1"):
                response = await http.get(path)
                assert (response.status_code, response.json()["field"]) == (400, "environment"), path


async def test_credentials_are_per_environment(make_gateway: GatewayFactory) -> None:
    async with make_gateway(**two_environments()) as gw:
        env0, env1 = gw.environment(0), gw.environment(1)
        async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as http:
            for env, creds, status in (
                (env1, env1.config, 200),
                (env0, env0.config, 200),
                (env1, env0.config, 401),  # environment 0's client is unknown to environment 1
                (env0, env1.config, 401),
            ):
                headers, form = oauth_form(creds)
                response = await http.post(f"{env.url}/oauth/v1/tokens", headers=headers, data=form)
                assert response.status_code == status, (env.index, creds.client_id)
        assert (env0.tokens.issued, env1.tokens.issued) == (1, 1)


async def test_a_token_of_one_environment_is_refused_by_another(make_gateway: GatewayFactory) -> None:
    async with make_gateway(**two_environments()) as gw:
        env0, env1 = gw.environment(0), gw.environment(1)
        foreign = token_of(env0)
        # Poll API: 401
        headers = {"Authorization": f"Bearer {foreign}", "x-app-key": env1.config.app_key, "x-hotelid": "H1"}
        async with httpx.AsyncClient(base_url=env1.url, trust_env=False, timeout=WAIT) as http:
            path = "/int/v1/externalSystem/SYS1/businessEvents"
            assert (await http.get(path, headers=headers)).status_code == 401
            headers["Authorization"] = f"Bearer {token_of(env1)}"
            assert (await http.get(path, headers=headers)).status_code == 204
        # Streaming: connection_init with the other environment's token is 4401
        async with open_ws(env1.ws_url) as ws:
            await init(ws, env1.config.app_key, foreign)
            assert await closed_with(ws) == 4401
        # and environment 0's key hash is unknown to environment 1: 401 before the upgrade
        with pytest.raises(InvalidStatus) as info:
            async with open_ws(env1.url.replace("http", "ws") + f"/subscriptions?key={env0.config.key_hash}"):
                pass
        assert info.value.response.status_code == 401


async def test_expiring_one_environment_s_tokens_leaves_the_other_streaming(
    make_gateway: GatewayFactory,
) -> None:
    async with make_gateway(**two_environments()) as gw:
        env0, env1 = gw.environment(0), gw.environment(1)
        control = AsyncControlClient(gw.control_url)
        async with subscribed(env0, "CHAINA") as ws0, subscribed(env1, "ONEA") as ws1:
            assert await control.expire_tokens(environment=1) == {"expired": 1, "closed": 1, "environment": 1}
            assert await closed_with(ws1) == 4401
            env0.emit(1, chain="CHAINA")
            assert [o for _, o in await offsets(ws0, 1)] == [1001]
        async with httpx.AsyncClient(base_url=gw.control_url, trust_env=False, timeout=WAIT) as http:
            response = await http.post("/expire-tokens", json={"chain": "CHAINA"})
            assert (response.status_code, response.json()["field"]) == (400, "chain")


# -- per-environment, per-chain emit -----------------------------------------------------------------


async def test_emit_into_a_chosen_environment_and_chain(make_gateway: GatewayFactory) -> None:
    async with make_gateway(**two_environments()) as gw:
        env0, env1 = gw.environment(0), gw.environment(1)
        control = AsyncControlClient(gw.control_url)
        assert await control.emit(3, environment=1, chain="ONEB") == {
            "count": 3,
            "first_offset": 1001,
            "last_offset": 1003,
        }
        assert await control.emit(2, environment=1) == {"count": 2, "first_offset": 1001, "last_offset": 1002}
        assert env1.source.event_count("ONEB") == 3
        assert env1.source.event_count("ONEA") == 2  # the environment's first chain by default
        assert {e.hotel for e in env1.source.all_events("ONEB")} == {"H1"}  # its own hotels
        assert env0.source.event_count("CHAINA") == env0.source.event_count("CHAINB") == 0
        assert (await control.state(environment=1))["poll"]["queued"] == {"SYS1": 5}
        # uniqueEventIds never repeat across environments
        ids0 = {e.unique_event_id for e in env0.emit(5)}
        ids1 = {e.unique_event_id for e in env1.source.all_events("ONEA")}
        assert not ids0 & ids1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"environment": 2}, "environment"),
        ({"environment": -1}, "environment"),
        ({"environment": "1"}, "environment"),
        ({"environment": True}, "environment"),
        ({"environment": 1, "chain": "CHAINA"}, "chain"),  # a chain of environment 0 only
        ({"chain": "ONEA"}, "chain"),  # environment 0 by default
        ({"environment": 1, "hotel": "HOTEL1"}, "hotel"),
    ],
)
async def test_emit_to_an_unknown_environment_or_a_chain_of_another_is_400(
    make_gateway: GatewayFactory, body: dict[str, Any], field: str
) -> None:
    async with (
        make_gateway(**two_environments()) as gw,
        httpx.AsyncClient(base_url=gw.control_url, trust_env=False, timeout=WAIT) as http,
    ):
        response = await http.post("/emit", json={"count": 1, **body})
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field
        assert gw.environment(1).source.active_chains == gw.source.active_chains == ()


async def test_offsets_and_approval_per_environment(make_gateway: GatewayFactory) -> None:
    async with make_gateway(**two_environments()) as gw:
        control = AsyncControlClient(gw.control_url)
        jump = await control.offset_jump(5000, chain="ONEB", environment=1)
        assert jump == {
            "chain": "ONEB",
            "previous_next_offset": 1001,
            "next_offset": 5000,
            "environment": 1,
        }
        assert gw.environment(1).source.next_offset("ONEB") == 5000
        assert gw.source.next_offset("CHAINB") == 1001
        assert (await control.offset_reset(7, environment=1))["chain"] == "ONEA"
        assert await control.approval("ONEA", False, environment=1) == {
            "chain": "ONEA",
            "approved": False,
            "environment": 1,
        }
        assert not gw.environment(1).context.approved("ONEA")
        assert gw.context.approved("CHAINA")
        async with subscribed(gw.environment(1), "ONEA", refused=True) as ws:
            assert await closed_with(ws) == 4403


async def test_same_chain_code_in_two_environments_is_two_chains(make_gateway: GatewayFactory) -> None:
    other = dataclasses.replace(ENV1, chains=("SAME",))
    async with make_gateway(chains=("SAME",), environments=(other,)) as gw:
        env0, env1 = gw.environment(0), gw.environment(1)
        control = AsyncControlClient(gw.control_url)
        async with subscribed(env0, "SAME") as ws0, subscribed(env1, "SAME") as ws1:
            await control.emit(2, environment=1, chain="SAME")
            await control.emit(1, chain="SAME")
            assert [o for _, o in await offsets(ws1, 2)] == [1001, 1002]
            assert [o for _, o in await offsets(ws0, 1)] == [1001]
            report = await control.connections(chain="SAME")
            assert [r["environment"] for r in report["environments"]] == [0, 1]
            for env_report in report["environments"]:
                assert env_report["chains"]["SAME"]["subscribed"] == 1
                assert env_report["chains"]["SAME"]["refusals_4409"] == 0
            assert report["max_concurrent_subscribed"] == 1
            # a chain filter reaches that chain code in every environment
            assert await control.drop(chain="SAME") == {"dropped": 2, "chain": "SAME"}
            assert await closed_with(ws0) == await closed_with(ws1) == 1006


# -- per-chain faults ----------------------------------------------------------------------------------


async def test_drop_close_and_stall_one_chain(make_gateway: GatewayFactory) -> None:
    async with make_gateway(**two_environments()) as gw:
        env0, env1 = gw.environment(0), gw.environment(1)
        control = AsyncControlClient(gw.control_url)
        async with (
            subscribed(env0, "CHAINA") as a,
            subscribed(env0, "CHAINB") as b,
            subscribed(env1, "ONEA") as one,
        ):
            # stall CHAINA's pongs: B's pings are still answered, then A's resume
            assert await control.stall_pongs(True, chain="CHAINA") == {"enabled": True, "chain": "CHAINA"}
            assert (await control.state())["streaming"]["stalled_chains"] == ["CHAINA"]
            await send(a, {"type": "ping", "payload": {"n": 1}})
            await synced(b)
            await synced(one)
            await eventually(lambda: env0.streaming.stalled_pings == 1, "the gateway to see CHAINA's ping")
            await control.stall_pongs(False, chain="CHAINA")
            await synced(a)  # the stalled ping got no pong: the next frame is this pong
            # close one chain of environment 1 with a code of our choosing
            assert await control.close(4504, "gateway timeout", chain="ONEA", environment=1) == {
                "closed": 1,
                "chain": "ONEA",
                "environment": 1,
            }
            assert await closed_with(one) == 4504
            # drop one chain: the other keeps streaming
            assert await control.drop(chain="CHAINA") == {"dropped": 1, "chain": "CHAINA"}
            assert await closed_with(a) == 1006
            env0.emit(1, chain="CHAINB")
            assert [o for _, o in await offsets(b, 1)] == [1001]
        with pytest.raises(ControlError, match="400 chain"):
            await control.drop(chain="NOCHAIN")
        with pytest.raises(ControlError, match="400 chain"):
            await control.close(1000, chain="CHAINA", environment=1)


async def test_faults_without_an_environment_apply_to_every_environment(make_gateway: GatewayFactory) -> None:
    async with make_gateway(**two_environments()) as gw:
        control = AsyncControlClient(gw.control_url)
        async with subscribed(gw.environment(0), "CHAINA") as a, subscribed(gw.environment(1), "ONEB") as b:
            assert await control.close(4500) == {"closed": 2}
            assert await closed_with(a) == await closed_with(b) == 4500
        assert (await control.poll_fault("5xx", environment=1))["environment"] == 1
        assert gw.environment(1).poll.fault.mode == "5xx"
        assert gw.poll.fault.mode == "off"
        assert (await control.poll_fault("off"))["mode"] == "off"
        assert gw.environment(1).poll.fault.mode == "off"
        await control.rest_fault("429", environment=1)
        assert (gw.environment(1).rest.fault.mode, gw.rest.fault.mode) == ("429", "off")
        assert await control.backpressure(3, chain="ONEB", environment=1) == {
            "events": 3,
            "chain": "ONEB",
            "environment": 1,
        }
        assert gw.environment(1).source.event_count("ONEB") == 3


# -- the connection detector -------------------------------------------------------------------------


async def test_a_second_connection_for_a_chain_is_refused_and_counted(make_gateway: GatewayFactory) -> None:
    async with make_gateway(**two_environments()) as gw:
        env1 = gw.environment(1)
        control = AsyncControlClient(gw.control_url)
        async with subscribed(env1, "ONEA") as first:
            async with subscribed(env1, "ONEA", refused=True) as second:
                assert await closed_with(second) == 4409
            async with subscribed(env1, "ONEB") as other_chain:  # another chain: fine
                report = await control.connections(environment=1)
                chains = report["environments"][0]["chains"]
                assert chains["ONEA"] == {
                    "connections": 1,
                    "subscribed": 1,
                    "max_concurrent_subscribed": 1,
                    "double_subscriptions": 0,
                    "refusals_4409": 1,
                    "total_connections": 1,
                    "handover_overlaps": 0,
                    "moments": [],
                }
                assert chains["ONEB"]["subscribed"] == 1
                assert chains["ONEB"]["refusals_4409"] == 0
                env1.emit(1, chain="ONEB")
                assert [o for _, o in await offsets(other_chain, 1)] == [1001]
            env1.emit(1, chain="ONEA")
            assert [o for _, o in await offsets(first, 1)] == [1001]  # the first one streams on
        report = await control.connections()
        assert (
            report["max_concurrent_subscribed"],
            report["double_subscriptions"],
            report["refusals_4409"],
        ) == (
            1,
            0,
            1,
        )
        assert report["environments"][0]["chains"]["CHAINA"]["total_connections"] == 0
        await eventually(
            lambda: env1.streaming.connection_report(("ONEA",))["ONEA"]["connections"] == 0,
            "the closed connections to be gone",
        )
        ended = await control.connections(environment=1, chain="ONEA")
        assert ended["environments"][0]["chains"]["ONEA"]["connections"] == 0
        assert gw.streaming.conflicts == 0  # environment 0 has its own rule and counters
        assert env1.streaming.conflicts == 1


async def test_two_subscribed_sockets_for_one_chain_are_recorded(make_gateway: GatewayFactory) -> None:
    # ADVERSARIAL: the gateway lets the second subscriber through, so only the detector sees it
    async with make_gateway(one_connection_per_chain=False) as gw:
        control = AsyncControlClient(gw.control_url)
        async with (
            subscribed(gw.environment(0), "LOCALCHAIN") as first,
            subscribed(gw.environment(0), "LOCALCHAIN") as second,
        ):
            gw.emit(1)
            assert await offsets(first, 1) == await offsets(second, 1)
            report = await control.connections(chain="LOCALCHAIN")
            entry = report["environments"][0]["chains"]["LOCALCHAIN"]
            counts = {k: v for k, v in entry.items() if k != "moments"}
            assert counts == {
                "connections": 2,
                "subscribed": 2,
                "max_concurrent_subscribed": 2,
                "double_subscriptions": 1,
                "refusals_4409": 0,
                "total_connections": 2,
                "handover_overlaps": 0,
            }
            assert len(entry["moments"]) == 1
            assert len(entry["moments"][0]["connections"]) == 2
            assert report["max_concurrent_subscribed"] == 2
        with pytest.raises(ControlError, match="400 environment"):
            await control.connections(environment=1)


# -- many chains, cheaply ----------------------------------------------------------------------------


async def test_two_environments_of_a_hundred_chains_start_and_idle_cheaply() -> None:
    config = fleet_config(2, 100)
    before = len(asyncio.all_tasks())
    async with LocalGateway(config) as gw:
        assert len(asyncio.all_tasks()) == before  # no task per chain, nor per environment
        env1 = gw.environment(1)
        assert len(env1.chains) == 100
        assert gw.source.active_chains == env1.source.active_chains == ()  # no log until used
        control = AsyncControlClient(gw.control_url)
        state = await control.state(environment=1)
        assert len(state["chains"]) == 100
        assert state["chains"]["ENV1CHAIN100"] == {
            "highest": None,
            "next_offset": 1001,
            "events": 0,
            "approved": True,
            "resets": 0,
        }
        assert env1.source.active_chains == ()  # reading creates nothing
        report = await control.connections()
        assert sum(len(e["chains"]) for e in report["environments"]) == 200
        async with subscribed(env1, "ENV1CHAIN057") as ws:
            await control.emit(2, environment=1, chain="ENV1CHAIN057")
            assert [o for _, o in await offsets(ws, 2)] == [1001, 1002]
        assert env1.source.active_chains == ("ENV1CHAIN057",)
        assert gw.source.active_chains == ()
    assert len(asyncio.all_tasks()) == before


# -- the command line ---------------------------------------------------------------------------------


def test_one_environment_prints_what_it_always_printed() -> None:
    gw = LocalGateway(GatewayConfig())
    gw.environments[0].url = "http://127.0.0.1:8700"
    gw.control_url = "http://127.0.0.1:8701"
    assert describe(gw) == [
        "local OHIP gateway on http://127.0.0.1:8700 (control interface http://127.0.0.1:8701)",
        "export OHIP_GATEWAY_URL=http://127.0.0.1:8700",
        "export OHIP_CLIENT_ID=local-client",
        "export OHIP_CLIENT_SECRET=local-secret",
        "export OHIP_APP_KEY=local-app-key",
        "export OHIP_ENTERPRISE_ID=LOCALENT",
        "export OHIP_CHAIN_CODE=LOCALCHAIN",
        "export OHIP_HOTEL_IDS=HOTEL1,HOTEL2,HOTEL3",
        "export OHIP_EXTERNAL_SYSTEM=RELAY",
    ]


def test_several_environments_print_a_block_each_and_a_registry_hint() -> None:
    gw = LocalGateway(fleet_config(2, 20, GatewayConfig(port=8700, control_port=8701)))
    for env in gw.environments:
        env.url = f"http://127.0.0.1:{env.config.port}"
    gw.control_url = "http://127.0.0.1:8701"
    lines = describe(gw)
    assert lines[0].startswith("local OHIP gateway: 2 OPERA environments, 20 chains each")
    assert lines.count("export OHIP_GATEWAY_URL=http://127.0.0.1:8710") == 1
    assert "export OHIP_APP_KEY=local-app-key-1" in lines
    assert "export OHIP_CHAIN_CODE=ENV1CHAIN001" in lines
    assert any("ENV1CHAIN001,ENV1CHAIN002,...,ENV1CHAIN020" in line for line in lines)
    hint = [line for line in lines if "ohip-relay chains add" in line]
    assert len(hint) == 2  # one line per environment, not one per chain
    assert "for c in ENV1CHAIN{001..020}" in hint[1]
    assert "--gateway-url http://127.0.0.1:8710" in hint[1]
    assert any('"clientId": "local-client-1"' in line for line in lines)
    assert len(lines) < 40


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"environments": 0}, "--environments must be from 1 to 50"),
        ({"environments": 51}, "--environments must be from 1 to 50"),
        ({"chains_per_environment": 0}, "--chains-per-environment must be from 1 to 1000"),
        ({"environments": 3, "port": 65520}, "choose a lower --port"),
        ({"environments": 2, "control_port": 8710}, "--control-port 8710 is an environment's port"),
    ],
)
def test_gateway_command_validates_its_arguments(changes: dict[str, Any], message: str) -> None:
    args = {
        "host": "127.0.0.1",
        "port": 8700,
        "control_port": 8701,
        "token_lifetime": 3600.0,
        "seed": 1,
        "environments": 1,
        "chains_per_environment": 1,
        **changes,
    }
    with pytest.raises(LocalCommandError, match=message):
        _gateway(argparse.Namespace(**args))
