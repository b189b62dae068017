"""A rig for `ohip-relay doctor`: the local OHIP gateway on a real socket, the template's resources
on the moto server, and the environment a user would export for them, with the credentials of the
role an operator assumes (OperatorRole, docs/permissions.md) for the doctor in-process and as a
command alike."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from ohip_local.aws import OPERATOR_ROLE, ProvisionedStack, provision
from ohip_local.control import AsyncControlClient
from ohip_local.gateway import GatewayConfig, LocalGateway
from ohip_local.stack import credentials_in_environment, environment_for
from ohip_relay import protocol as proto
from ohip_relay.auth import OAuthParams, parse_token_response, token_request
from ohip_relay.doctor import DoctorOptions, DoctorReport, run_doctor
from tests.conftest import TEMPLATE

from ..stream.conftest import eventually

OPTIONS = DoctorOptions(timeout=5.0)

_stack_numbers = itertools.count(1)


class GatewayClock:
    """The gateway's clock: real time plus a skew a test can move forward (the resubscribe gap)."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.time() + self.skew

    def advance(self, seconds: float) -> None:
        self.skew += seconds


@dataclass
class Setup:
    gateway: LocalGateway
    stack: ProvisionedStack
    env: dict[str, str]
    clock: GatewayClock

    @property
    def chain(self) -> str:
        return self.gateway.config.chains[0]

    @property
    def control(self) -> AsyncControlClient:
        return AsyncControlClient(self.gateway.control_url)

    def environment(self, **changes: str | None) -> dict[str, str]:
        """The environment with some variables changed (None: removed)."""
        env = dict(self.env)
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    async def doctor(self, **changes: str | None) -> DoctorReport:
        env = self.environment(**changes)
        with credentials_in_environment(env):  # its clients are built as the checks go
            return await run_doctor(env, OPTIONS)

    async def token(self) -> str:
        cfg = self.gateway.config
        request = token_request(
            OAuthParams(
                gateway_url=self.gateway.url,
                client_id=cfg.client_id,
                client_secret=cfg.client_secret,
                app_key=cfg.app_key,
                enterprise_id=cfg.enterprise_id,
            )
        )
        async with httpx.AsyncClient() as http:
            response = await http.post(request.url, headers=request.headers, data=request.form)
        return parse_token_response(response.status_code, response.content, 0.0).access_token

    @contextlib.asynccontextmanager
    async def other_client(self) -> AsyncIterator[ClientConnection]:
        """A second streaming client (a test tool left open), subscribed to the chain."""
        token = await self.token()
        async with connect(self.gateway.ws_url, subprotocols=[Subprotocol(proto.SUBPROTOCOL)]) as ws:
            await ws.send(proto.connection_init(token, self.gateway.config.app_key))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(proto.subscribe("1", proto.SubscriptionInput(self.chain, offset="0")))
            await eventually(
                lambda: bool(self.gateway.streaming.snapshot()["sessions"]), what="the other subscription"
            )
            yield ws


def by_name(report: DoctorReport) -> dict[str, Mapping[str, Any]]:
    return {check["name"]: check for check in report.to_dict()["checks"]}


@pytest.fixture(scope="module")
def doctor_stack(aws_endpoint: str) -> ProvisionedStack:
    """The template's resources, shared by a module's tests: doctor only reads them (a module whose
    tests write, a running relay say, overrides this with the per-test `aws_stack`)."""
    return provision(aws_endpoint, TEMPLATE, stack_name=f"doctor{next(_stack_numbers)}")


@pytest.fixture
def make_setup(
    doctor_stack: ProvisionedStack,
) -> Callable[..., contextlib.AbstractAsyncContextManager[Setup]]:
    """`async with make_setup(approved_chains=()) as s:` a gateway with some settings changed."""

    @contextlib.asynccontextmanager
    async def factory(**gateway_changes: Any) -> AsyncIterator[Setup]:
        config = dataclasses.replace(GatewayConfig(), **gateway_changes)
        clock = GatewayClock()
        async with LocalGateway(config, clock=clock) as gateway:
            env = {
                **environment_for(doctor_stack, role=OPERATOR_ROLE),
                "OHIP_GATEWAY_URL": gateway.url,
                "OHIP_CLIENT_ID": config.client_id,
                "OHIP_CLIENT_SECRET": config.client_secret,
                "OHIP_APP_KEY": config.oauth_app_key or config.app_key,
                "OHIP_ENTERPRISE_ID": config.enterprise_id,
                "OHIP_CHAIN_CODE": config.chains[0],
                "OHIP_EXTERNAL_SYSTEM": config.external_systems[0],
                "OHIP_HOTEL_IDS": ",".join(config.hotels[:2]),
            }
            yield Setup(gateway, doctor_stack, env, clock)

    return factory


@pytest.fixture
async def setup(
    make_setup: Callable[..., contextlib.AbstractAsyncContextManager[Setup]],
) -> AsyncIterator[Setup]:
    async with make_setup() as s:
        yield s
