"""Credentials the OHIP token endpoint refuses: the stream stays off, says so once, keeps its
heartbeat truthful (auth-failed), and, with OHIP_SECRET_ARN, reads the secret again before each
retry so that a corrected secret is used without a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

import pytest

from ohip_local.stack import credentials_in_environment
from ohip_relay.config import Settings
from ohip_relay.state import StreamState
from ohip_relay.stream import open_consumer

from .conftest import FAST, Rig, eventually

QUICK = dataclasses.replace(FAST, auth_retry_first=0.2)


async def _run_until(
    rig: Rig,
    settings: Settings,
    reload: Callable[[], Settings] | None,
    condition: Callable[[StreamState], bool],
    what: str,
) -> None:
    with credentials_in_environment(rig.env):
        consumer_cm = open_consumer(settings, QUICK, reload_credentials=reload)
        consumer = await consumer_cm.__aenter__()
    try:
        task = asyncio.create_task(consumer.run())
        await eventually(lambda: condition(consumer.status), within=15.0, what=what)
        consumer.request_stop()
        assert await asyncio.wait_for(task, 30.0) == 0
    finally:
        await consumer_cm.__aexit__(None, None, None)


async def test_a_corrected_secret_is_read_again_and_used(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ohip_relay")
    good = rig.settings()
    wrong = dataclasses.replace(good, client_secret="not-the-secret")
    reads: list[int] = []

    def reload() -> Settings:  # the secret, as Secrets Manager holds it after the fix
        reads.append(1)
        return good

    await _run_until(
        rig, wrong, reload, lambda s: s is StreamState.CONNECTED, "connected with the new secret"
    )
    assert reads, "the secret was read again after the refusal"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("refused the credentials" in m for m in messages) == 1
    assert any("changed; trying the new ones" in m for m in messages)
    assert any("accepts the credentials again" in m for m in messages)
    assert not any("not-the-secret" in m for m in messages)


async def test_an_unchanged_wrong_secret_stays_auth_failed_and_is_said_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ohip_relay")
    wrong = dataclasses.replace(rig.settings(), client_secret="not-the-secret")
    reads: list[int] = []

    def reload() -> Settings:
        reads.append(1)
        return wrong

    def refused_twice_and_said_so(status: StreamState) -> bool:
        heartbeat = rig.state.get_heartbeat()  # what status, the dashboard and the fallback read
        return (
            status is StreamState.AUTH_FAILED
            and len(reads) >= 2
            and heartbeat is not None
            and heartbeat.state is StreamState.AUTH_FAILED
        )

    await _run_until(
        rig, wrong, reload, refused_twice_and_said_so, "two refused retries, heartbeat auth-failed"
    )
    assert sum("refused the credentials" in r.getMessage() for r in caplog.records) == 1
