"""`ohip-relay status` reports what the running consumer wrote; a token about to expire is rotated
by the documented stop rules (complete, server closes, 10 s, subscribe again) without losing events."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from ohip_relay.state import StreamState

from .conftest import Rig, eventually

pytestmark = pytest.mark.integration


def _status(env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "ohip_relay.cli", "status", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report: dict[str, object] = json.loads(result.stdout)
    return report


async def test_status_reports_checkpoint_health_and_lease_owner(rig: Rig) -> None:
    async with rig.consumer(owner="task-status") as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        rig.gateway.emit(12)
        await rig.receive_offsets(set(rig.emitted_offsets()))
        await eventually(
            lambda: running.consumer.checkpointed == rig.emitted_offsets()[-1], what="checkpoint"
        )
        report = await asyncio.to_thread(_status, rig.env)
        assert report["checkpoint"] == rig.emitted_offsets()[-1]
        assert report["state"] == "connected"
        assert report["healthy"] is True
        assert report["leaseOwner"] == "task-status"
        assert report["fallbackActive"] is False
        assert await running.stop() == 0
    report = await asyncio.to_thread(_status, rig.env)
    assert report["state"] == "stopped"  # healthy or not depends on the grace period
    assert report["leaseOwner"] is None


async def test_a_token_about_to_expire_is_rotated_by_the_stop_rules(
    make_rig: Callable[..., AbstractAsyncContextManager[Rig]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    # An 8 s token: the relay rotates its connection 2 s before expiry, then keeps the 10 s gap.
    async with make_rig(token_lifetime=8.0) as rig, rig.consumer() as running:
        await eventually(lambda: running.consumer.status is StreamState.CONNECTED, what="connected")
        rig.gateway.emit(10)
        await eventually(lambda: running.consumer.connections >= 2, within=30, what="a rotated connection")
        rig.gateway.emit(10)
        await rig.receive_offsets(set(rig.emitted_offsets()), within=30)
        outcome = running.consumer.last_outcome
        assert outcome is not None
        assert outcome.expected, "the first connection ended with our complete"
        snapshot = rig.gateway.streaming.snapshot()
        assert snapshot["resubscribe_gap_violations"] == 0
        assert snapshot["close_codes"].get("4401", 0) == 0, "no connection outlived its token"
        assert await running.stop() == 0
    await rig.drain_queue()
    assert sorted(set(rig.offsets())) == rig.emitted_offsets()
