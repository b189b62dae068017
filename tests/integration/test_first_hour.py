"""The first hour with ohip-relay, scripted: every command a newcomer runs, with right and wrong
settings, as a real process against the local gateway and moto over real sockets.

Each case asserts the three things a newcomer relies on: no Python traceback without -v, the exit
status (2: configuration, credentials, permissions; 1: a failed run; 0: fine), and a line that names
what failed (the URL, the table, the chain, the variable or the argument).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pytest

from ohip_local.aws import OPERATOR_ROLE, POLL_ROLE, STREAM_ROLE, ProvisionedStack
from ohip_local.gateway import GatewayConfig, LocalGateway
from ohip_local.stack import environment_for
from ohip_local.threaded import running_gateway

pytestmark = pytest.mark.integration

_RELAY_PREFIXES = ("OHIP_", "RELAY_", "AWS_", "POWERTOOLS_")
DEADLINE = 30.0


def _clean_env(env: Mapping[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_RELAY_PREFIXES)}
    return {**clean, **env}


def run(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ohip_relay.cli", *args],
        env=_clean_env(_as_role(args, env)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@dataclass
class Relay:
    """`ohip-relay stream` as a process, its stderr read line by line on a thread."""

    proc: subprocess.Popen[str]
    seen: list[str] = field(default_factory=list)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, pattern: str, within: float = DEADLINE) -> str:
        deadline = time.monotonic() + within
        for line in self.seen:
            if re.search(pattern, line):
                return line
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} within {within}s:\n" + "\n".join(self.seen)
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the relay ended before {pattern!r}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM, then the exit status, stdout and the whole stderr."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        while True:
            try:
                line = self._lines.get(timeout=DEADLINE)
            except queue.Empty:  # pragma: no cover - the reader ends with the process
                break
            if line is None:
                break
            self.seen.append(line)
        return code, out, "\n".join(self.seen)


@pytest.fixture
def chain() -> str:
    return f"FH{uuid.uuid4().hex[:10].upper()}"


@pytest.fixture
def gateway(chain: str) -> Iterator[LocalGateway]:
    with running_gateway(GatewayConfig(chains=(chain,))) as gw:
        yield gw


_COMMAND_ROLES = {"stream": STREAM_ROLE, "poll": POLL_ROLE, "status": OPERATOR_ROLE, "doctor": OPERATOR_ROLE}
_STACK: list[ProvisionedStack] = []


def _as_role(args: list[str], env: Mapping[str, str]) -> dict[str, str]:
    """Each command under the role it has in AWS (IAM is enforced locally): the stream under the
    task role, a poll tick under the poll role, status and doctor under the operator role."""
    command = next((a for a in args if not a.startswith("-")), "")
    role = _COMMAND_ROLES.get(command)
    if role is None or not _STACK or "AWS_ENDPOINT_URL" not in env:
        return dict(env)
    credentials = _STACK[0].credentials(role).environment()
    return {**env, **credentials}


@pytest.fixture
def env(gateway: LocalGateway, aws_stack: ProvisionedStack, chain: str) -> dict[str, str]:
    config = gateway.config
    _STACK[:] = [aws_stack]
    return {
        **environment_for(aws_stack, role=None),
        "OHIP_GATEWAY_URL": gateway.url,
        "OHIP_CLIENT_ID": config.client_id,
        "OHIP_CLIENT_SECRET": config.client_secret,
        "OHIP_APP_KEY": config.app_key,
        "OHIP_ENTERPRISE_ID": config.enterprise_id,
        "OHIP_CHAIN_CODE": chain,
        "OHIP_HOTEL_IDS": ",".join(config.hotels),
        "OHIP_EXTERNAL_SYSTEM": config.external_systems[0],
        "RELAY_HEARTBEAT_SECONDS": "1",
        "RELAY_HEALTH_STALE_SECONDS": "5",
    }


def start_relay(env: Mapping[str, str], *args: str) -> Relay:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ohip_relay.cli", *args, "stream"],
        env=_clean_env(_as_role(["stream"], env)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Relay(proc)


def status_json(env: Mapping[str, str]) -> dict[str, object]:
    result = run(["status", "--json"], env)
    no_traceback(result.stderr)
    report: dict[str, object] = json.loads(result.stdout)
    return report


def eventually_state(env: Mapping[str, str], state: str) -> dict[str, object]:
    deadline = time.monotonic() + DEADLINE
    while True:
        report = status_json(env)
        if report["state"] == state:
            return report
        assert time.monotonic() < deadline, f"status never said {state!r}: {report}"
        time.sleep(0.2)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- stream ----------------------------------------------------------------------------------------


def test_stream_with_refused_credentials_says_so_once_and_the_heartbeat_says_auth_failed(
    env: dict[str, str],
) -> None:
    relay = start_relay({**env, "OHIP_CLIENT_SECRET": "not-the-secret"})
    line = relay.wait_for("refused the credentials")
    assert f"{env['OHIP_GATEWAY_URL']}/oauth/v1/tokens" in line or "OHIP_CLIENT_SECRET" in line
    assert "asks again in 30s, doubling up to every 300s" in line
    report = eventually_state(env, "auth-failed")
    assert report["healthy"] is False
    assert "refused the credentials" in str(report["detail"])
    code, out, err = relay.stop()
    assert code == 0, err
    no_traceback(out, err)
    assert sum("refused the credentials" in line for line in lines(err)) == 1, err
    assert "not-the-secret" not in out + err
    assert '"_aws"' not in out + err, "text log format: no EMF documents among the human lines"
    assert "None" not in err, err


def test_stream_in_json_format_writes_emf_for_cloudwatch(env: dict[str, str]) -> None:
    relay = start_relay({**env, "OHIP_CLIENT_SECRET": "not-the-secret", "RELAY_LOG_FORMAT": "json"})
    relay.wait_for("refused the credentials")
    code, out, err = relay.stop()
    assert code == 0, err
    no_traceback(out, err)
    documents = [json.loads(line) for line in lines(out)]
    assert any("AuthRefusals" in doc and "_aws" in doc for doc in documents), out


def test_stream_with_the_gateway_down_names_the_url(env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    relay = start_relay({**env, "OHIP_GATEWAY_URL": url})
    line = relay.wait_for("cannot reach the OHIP token endpoint")
    assert f"{url}/oauth/v1/tokens" in line
    assert "OHIP_GATEWAY_URL" in line
    code, out, err = relay.stop()
    assert code == 0, err
    no_traceback(out, err)


@pytest.mark.denials_expected
def test_stream_with_a_table_that_is_not_the_stacks_is_one_line_exit_2(env: dict[str, str]) -> None:
    # Under the task role, a table that is not the stack's is denied before DynamoDB looks it up.
    result = run(["stream"], {**env, "RELAY_TABLE_NAME": "no-such-table"})
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 2, result.stderr
    assert "DynamoDB table 'no-such-table': access denied" in lines(result.stderr)[-1]
    assert "RELAY_TABLE_NAME" in lines(result.stderr)[-1]


# -- status ----------------------------------------------------------------------------------------


@pytest.mark.denials_expected
@pytest.mark.parametrize("json_output", [False, True])
def test_status_with_a_table_that_is_not_the_stacks_is_one_line_exit_2(
    env: dict[str, str], json_output: bool
) -> None:
    result = run(
        ["status", *(["--json"] if json_output else [])], {**env, "RELAY_TABLE_NAME": "no-such-table"}
    )
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 2
    (line,) = lines(result.stderr)
    assert line.startswith(
        "ohip-relay: DynamoDB table 'no-such-table': access denied (AccessDeniedException)"
    )
    assert "RELAY_TABLE_NAME" in line


def test_status_with_a_table_that_does_not_exist_is_one_line_exit_2(env: dict[str, str]) -> None:
    # With credentials that may read any table (the local administrator's), DynamoDB says it is not there.
    result = subprocess.run(
        [sys.executable, "-m", "ohip_relay.cli", "status"],
        env=_clean_env({**env, "RELAY_TABLE_NAME": "no-such-table"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 2
    assert lines(result.stderr) == [
        f"ohip-relay: DynamoDB table 'no-such-table' does not exist in {env['AWS_ENDPOINT_URL']} "
        "(AWS_ENDPOINT_URL): set RELAY_TABLE_NAME to the stack's TableName output (and AWS_REGION to "
        "its region)"
    ]


def test_status_with_aws_unreachable_is_one_line_exit_1(env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = run(["status"], {**env, "AWS_ENDPOINT_URL": url})
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1
    (line,) = lines(result.stderr)  # no retry warnings before it
    assert f"cannot reach AWS at {url}" in line
    assert "AWS_ENDPOINT_URL" in line


def test_status_of_a_chain_never_seen_says_so(env: dict[str, str], chain: str) -> None:
    for args in (["status"], ["status", "--json"]):
        result = run(args, env)
        no_traceback(result.stdout, result.stderr)
        assert result.returncode == 1
        (line,) = lines(result.stderr)
        assert f"chain {chain} has never been seen in table {env['RELAY_TABLE_NAME']}" in line
    assert json.loads(run(["status", "--json"], env).stdout)["seen"] is False


def test_status_prints_words_not_none(env: dict[str, str], chain: str) -> None:
    relay = start_relay({**env, "OHIP_CLIENT_SECRET": "not-the-secret"})
    eventually_state(env, "auth-failed")
    relay.stop()
    result = run(["status"], env)
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    assert "None" not in result.stdout, result.stdout
    assert "()" not in result.stdout, result.stdout
    assert re.search(r"^checkpoint\s+none yet$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^lease holder\s+nobody$", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.denials_expected
def test_verbose_shows_the_traceback(env: dict[str, str]) -> None:
    result = run(["-v", "status"], {**env, "RELAY_TABLE_NAME": "no-such-table"})
    assert result.returncode == 2
    assert "Traceback" in result.stderr


# -- poll ------------------------------------------------------------------------------------------


def test_poll_of_a_chain_never_seen_says_so(env: dict[str, str], chain: str) -> None:
    result = run(["poll", "--time-limit", "30"], env)
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    assert len(lines(result.stdout)) == 1, "the summary once, on stdout"
    assert "poll tick:" not in result.stderr, "not a second time in the log"
    assert f"chain {chain} has never been seen in table {env['RELAY_TABLE_NAME']}" in result.stderr
    assert "None" not in result.stdout + result.stderr


@pytest.mark.parametrize("bad", ["-5", "0", "nan", "inf", "soon"])
def test_poll_time_limit_is_validated_like_a_variable(env: dict[str, str], bad: str) -> None:
    result = run(["poll", f"--time-limit={bad}"], env)
    no_traceback(result.stderr)
    assert result.returncode == 2
    assert f"argument --time-limit: expected a number of seconds from 1 to 900 (got {bad!r})" in result.stderr


def test_poll_with_refused_credentials_names_the_variables(env: dict[str, str]) -> None:
    result = run(["poll"], {**env, "OHIP_APP_KEY": "not-the-key"})
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1
    assert "OHIP_APP_KEY" in result.stdout + result.stderr
    assert "not-the-key" not in result.stdout + result.stderr


# -- any command -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["poll"], ["stream"]])
def test_a_log_format_that_does_not_exist_is_refused(env: dict[str, str], command: list[str]) -> None:
    result = run(command, {**env, "RELAY_LOG_FORMAT": "xml"})
    no_traceback(result.stderr)
    assert result.returncode == 2
    assert lines(result.stderr) == ["ohip-relay: RELAY_LOG_FORMAT: expected one of text, json (got 'xml')"]


def test_metrics_output_is_validated(env: dict[str, str]) -> None:
    result = run(["status"], {**env, "RELAY_METRICS": "prometheus"})
    no_traceback(result.stderr)
    assert result.returncode == 2
    assert "RELAY_METRICS: expected one of auto, emf, off (got 'prometheus')" in result.stderr


# -- the fleet shape -------------------------------------------------------------------------------


def test_doctor_in_a_fleet_says_what_to_run_instead() -> None:
    """doctor checks one chain; with RELAY_FLEET=true there is none to check: one line, exit 2."""
    result = run(["doctor"], {"RELAY_FLEET": "true"})
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 2
    (line,) = lines(result.stderr)
    assert "ohip-relay status" in line
    assert "RELAY_FLEET unset" in line


def test_a_fleet_refuses_single_chain_variables_naming_them() -> None:
    result = run(["stream"], {"RELAY_FLEET": "true", "OHIP_CHAIN_CODE": "CHAIN1", "OHIP_APP_KEY": "k"})
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 2
    (line,) = lines(result.stderr)
    assert "OHIP_APP_KEY, OHIP_CHAIN_CODE must not be set" in line
