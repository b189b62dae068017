"""`ohip-relay doctor` as a command: exit status, text and `--json` output, and never a secret on
stdout or stderr."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from ohip_relay.cli import main
from ohip_relay.doctor import CHECKS

from .conftest import Setup

pytestmark = pytest.mark.integration

SetupFactory = Callable[..., AbstractAsyncContextManager[Setup]]
_RELAY_PREFIXES = ("OHIP_", "RELAY_", "AWS_ENDPOINT_URL")


async def run_cli(setup: Setup, *args: str, **changes: str | None) -> tuple[int, str, str]:
    """`ohip-relay doctor ARGS` in a subprocess (the gateway keeps serving on this loop)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_RELAY_PREFIXES)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ohip_relay.cli",
        "doctor",
        "--timeout",
        "5",
        *args,
        env={**clean, **setup.environment(**changes)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def assert_no_secret(setup: Setup, *texts: str) -> None:
    cfg = setup.gateway.config
    for text in texts:
        assert cfg.client_secret not in text
        assert cfg.app_key not in text
        # nor any token the gateway issued (they are long URL-safe strings)
        for word in re.findall(r"[A-Za-z0-9_-]{20,}", text):
            assert not setup.gateway.tokens.valid(word)


async def test_all_green_text(setup: Setup) -> None:
    status, out, err = await run_cli(setup)
    assert status == 0, out + err
    lines = out.strip().splitlines()
    assert len(lines) == len(CHECKS) + 1
    assert all(line.lstrip().startswith("ok ") for line in lines[:-1])
    assert lines[-1] == "All checks passed."
    assert setup.gateway.tokens.issued == 1
    assert_no_secret(setup, out, err)


async def test_json_on_a_failure(make_setup: SetupFactory) -> None:
    async with make_setup(approved_chains=()) as setup:
        status, out, err = await run_cli(setup, "--json")
        assert status == 1, out + err
        report: dict[str, Any] = json.loads(out)
        assert set(report) == {"ok", "failed", "checks"}
        assert report["ok"] is False
        assert report["failed"] == "subscription"
        checks = report["checks"]
        assert [c["name"] for c in checks] == list(CHECKS)
        for check in checks:
            assert set(check) == {"name", "title", "status", "ok", "detail", "next_step"}
            assert check["status"] in ("ok", "failed", "skipped", "not_run")
        failed = checks[CHECKS.index("subscription")]
        assert failed["status"] == "failed"
        assert failed["ok"] is False
        assert "4403" in failed["detail"]
        assert_no_secret(setup, out, err)


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    """`main` configures logging for a process; put the test process's logging back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.mark.usefixtures("_restore_logging")
def test_bad_configuration_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # stops before any network call: in process, with an environment of just these variables
    for name in list(os.environ):
        if name.startswith(_RELAY_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OHIP_GATEWAY_URL", "https://gateway.example.com")
    monkeypatch.setenv("OHIP_CLIENT_ID", "client")
    monkeypatch.setenv("OHIP_CLIENT_SECRET", "wrong-secret-1234")
    monkeypatch.setenv("OHIP_APP_KEY", "app-key-5678")
    monkeypatch.setenv("OHIP_CHAIN_CODE", "not a chain!")
    assert main(["doctor", "--json"]) == 2
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["failed"] == "configuration"
    assert report["checks"][0]["detail"].startswith("OHIP_CHAIN_CODE")
    assert all(c["status"] == "not_run" for c in report["checks"][1:])
    assert "wrong-secret-1234" not in out + err
    assert "app-key-5678" not in out + err


@pytest.mark.usefixtures("_restore_logging")
def test_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit) as stopped:
            main(["doctor", "--timeout", bad])
        assert stopped.value.code == 2
        assert (
            capsys.readouterr()
            .err.strip()
            .endswith(f"argument --timeout: expected a number of seconds from 0.1 to 300 (got {bad!r})")
        )
