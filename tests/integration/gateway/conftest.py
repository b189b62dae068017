"""Fixtures for the local OHIP gateway's own tests: a gateway on loopback per test."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from ohip_local.gateway import GatewayConfig, LocalGateway

GatewayFactory = Callable[..., AbstractAsyncContextManager[LocalGateway]]


@pytest.fixture
def make_gateway() -> GatewayFactory:
    """`async with make_gateway(init_timeout=0.3) as gw:` a gateway with some settings changed."""

    @asynccontextmanager
    async def factory(
        *, clock: Callable[[], float] | None = None, **changes: Any
    ) -> AsyncIterator[LocalGateway]:
        config = dataclasses.replace(GatewayConfig(), **changes)
        gateway = LocalGateway(config) if clock is None else LocalGateway(config, clock=clock)
        async with gateway:
            yield gateway

    return factory


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> AsyncIterator[LocalGateway]:
    async with make_gateway() as gw:
        yield gw
