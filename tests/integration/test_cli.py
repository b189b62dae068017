"""Bad configuration ends with one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

import pytest

from ohip_local.aws import STREAM_ROLE, ProvisionedStack
from ohip_local.stack import environment_for

pytestmark = pytest.mark.integration

_RELAY_PREFIXES = ("OHIP_", "RELAY_", "AWS_ENDPOINT_URL")


def _run(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_RELAY_PREFIXES)}
    return subprocess.run(
        [sys.executable, "-m", "ohip_relay.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_missing_variable_is_named() -> None:
    line = _one_line(_run(["stream"], {}))
    assert line == "ohip-relay: OHIP_GATEWAY_URL: missing"


def test_malformed_gateway_url_is_named() -> None:
    env = {"OHIP_GATEWAY_URL": "ftp://gateway.example.com", "OHIP_CLIENT_ID": "c"}
    line = _one_line(_run(["stream"], env))
    assert line.startswith("ohip-relay: OHIP_GATEWAY_URL: expected an https:// URL")


def test_bad_start_position_is_named(aws_stack: ProvisionedStack) -> None:
    env = {
        **environment_for(aws_stack, role=STREAM_ROLE),
        "OHIP_GATEWAY_URL": "https://gateway.example.com",
        "OHIP_CLIENT_ID": "c",
        "OHIP_CLIENT_SECRET": "s",
        "OHIP_APP_KEY": "k",
        "OHIP_CHAIN_CODE": "CHAIN",
        "RELAY_START_POSITION": "yesterday",
    }
    line = _one_line(_run(["stream"], env))
    assert "RELAY_START_POSITION" in line
    assert "latest" in line


@pytest.mark.denials_expected  # the task's role may not read another queue, as in AWS
def test_unreachable_queue_is_one_line(aws_stack: ProvisionedStack) -> None:
    env = {
        **environment_for(aws_stack, role=STREAM_ROLE),
        "RELAY_QUEUE_URL": aws_stack.queue_url.replace("events", "no-such-queue"),
        "OHIP_GATEWAY_URL": "http://127.0.0.1:9",
        "OHIP_CLIENT_ID": "c",
        "OHIP_CLIENT_SECRET": "s",
        "OHIP_APP_KEY": "k",
        "OHIP_CHAIN_CODE": "CHAIN",
    }
    line = _one_line(_run(["stream"], env))
    assert "RELAY_QUEUE_URL" in line


def test_gateway_port_in_use_is_one_line(busy_port: int) -> None:
    line = _one_line(_run(["local", "gateway", "--port", str(busy_port), "--control-port", "0"], {}))
    assert f"127.0.0.1:{busy_port}" in line
    assert "in use" in line


def test_secrets_are_not_echoed() -> None:
    env = {
        "OHIP_GATEWAY_URL": "https://gateway.example.com",
        "OHIP_CLIENT_ID": "c",
        "OHIP_CLIENT_SECRET": "s3cr3t\nsecond-line",
    }
    line = _one_line(_run(["stream"], env))
    assert "OHIP_CLIENT_SECRET" in line
    assert "s3cr3t" not in line


def test_an_interrupted_command_says_so_and_does_not_exit_0() -> None:
    """Ctrl-C (or a SIGTERM the chaos suite turns into one): exit 130, so a run cut short by a CI
    timeout never reads as a passed one."""
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    gateway = ["local", "gateway", "--port", str(ports[0]), "--control-port", str(ports[1])]
    # A shell's background job (`cmd &`, nohup) runs with SIGINT ignored, and a child inherits that:
    # Python then leaves SIGINT ignored too. Caught here, it is reset to the default in the child.
    inherited = signal.getsignal(signal.SIGINT)
    if inherited == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ohip_relay.cli", *gateway],
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, inherited)
    try:
        deadline = time.monotonic() + 30
        while True:  # until the gateway listens (its handlers are installed by then)
            assert proc.poll() is None, proc.communicate()[1]
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", ports[0])) == 0:
                    break
            assert time.monotonic() < deadline, "the gateway did not start listening"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "ohip-relay: interrupted" in stderr
    assert "Traceback" not in stderr
