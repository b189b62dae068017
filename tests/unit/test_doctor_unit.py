"""The doctor's verdicts (pure `explain_*` functions), the report and the scrubbing of secrets."""

from __future__ import annotations

import json
import socket
import ssl

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from ohip_relay.config import ConfigError, Need, Settings
from ohip_relay.doctor import (
    CHECKS,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    PROBE_OFFSET,
    STREAM_CHECKS,
    CheckResult,
    DoctorReport,
    Status,
    StreamProbe,
    explain_aws,
    explain_config,
    explain_gateway,
    explain_lease,
    explain_poll,
    explain_stream,
    explain_token,
    relay_holds_stream,
    resubscribe_wait,
    scrub,
    server_text,
)
from ohip_relay.state import Heartbeat, Lease, StreamState

NOW = 1_800_000_000.0


def problem(detail: str, title: str = "Unauthorized") -> bytes:
    return json.dumps({"title": title, "detail": detail}).encode()


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "Op")


# -- small helpers --------------------------------------------------------------------------------


def test_server_text_reads_problem_details_only() -> None:
    assert server_text(problem("unknown enterpriseId")) == "Unauthorized: unknown enterpriseId"
    assert server_text(b"<html>502</html>") == ""
    assert server_text(b'["a list"]') == ""
    assert server_text(json.dumps({"detail": "line\nbreak"}).encode()) == "line break"
    long = server_text(json.dumps({"detail": "x" * 500}).encode())
    assert len(long) == 160
    assert long.endswith("...")


def test_scrub_replaces_every_secret() -> None:
    text = "token abcdef123 and key local-app-key, again abcdef123"
    assert scrub(text, ["abcdef123", "local-app-key", ""]) == "token *** and key ***, again ***"
    assert scrub("a b c", ["a"]) == "a b c"  # too short to be a secret: never mangles text


def test_probe_offset_is_the_largest_valid_offset() -> None:
    assert PROBE_OFFSET.isdigit()
    assert len(PROBE_OFFSET) == 10
    assert set(PROBE_OFFSET) == {"9"}


# -- configuration ---------------------------------------------------------------------------------


def test_config_error_names_the_variable_and_the_portal_step() -> None:
    result = explain_config(ConfigError("OHIP_APP_KEY: missing"))
    assert result.status is Status.FAILED
    assert result.detail == "OHIP_APP_KEY: missing"
    assert "Applications tab" in result.next_step
    assert "docs/configuration.md" in result.next_step


def test_config_error_for_an_unknown_variable_still_has_a_step() -> None:
    result = explain_config(ConfigError("RELAY_SOMETHING: bad"))
    assert "fix the variable named above" in result.next_step


def test_config_ok_names_what_was_read_but_no_secret() -> None:
    env = {
        "OHIP_GATEWAY_URL": "https://gw.example.com",
        "OHIP_CLIENT_ID": "client",
        "OHIP_CLIENT_SECRET": "the-client-secret",
        "OHIP_APP_KEY": "the-app-key",
        "OHIP_CHAIN_CODE": "CHAIN",
        "OHIP_EXTERNAL_SYSTEM": "SYS",
        "RELAY_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/1/q.fifo",
        "RELAY_TABLE_NAME": "relay-state",
        "AWS_REGION": "eu-west-1",
    }
    settings = Settings.from_env(env, Need.OHIP, Need.STREAM, Need.POLL, Need.AWS)
    result = explain_config(None, settings)
    assert result.ok
    assert "chain CHAIN" in result.detail
    assert "all hotels" in result.detail
    assert "the-client-secret" not in result.detail
    assert "the-app-key" not in result.detail


# -- gateway -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "not trusted"),
        (ssl.SSLError(1, "wrong version number"), "TLS handshake"),
        (ConnectionRefusedError(111, "Connection refused"), "refused the connection"),
        (TimeoutError(), "no answer from gw.example.com:443 within 3s"),
        (OSError(101, "Network is unreachable"), "Network is unreachable"),
    ],
)
def test_gateway_failures(exc: BaseException, words: str) -> None:
    result = explain_gateway(exc, "gw.example.com", 443, tls=True, timeout=3.0)
    assert result.status is Status.FAILED
    assert words in result.detail
    assert result.next_step


def test_gateway_ok() -> None:
    result = explain_gateway(None, "gw.example.com", 443, tls=True, timeout=3.0)
    assert result.ok
    assert "TLS" in result.detail


# -- OAuth ---------------------------------------------------------------------------------------------


def test_token_issued() -> None:
    body = json.dumps({"access_token": "tok", "token_type": "Bearer", "expires_in": 3600}).encode()
    result = explain_token(200, body)
    assert result.ok
    assert "3600s" in result.detail


def test_token_200_without_a_token_is_a_failure() -> None:
    assert explain_token(200, b"{}").status is Status.FAILED


def test_token_401_points_at_credentials_enterprise_and_app_key() -> None:
    result = explain_token(401, problem("invalid client credentials"), enterprise_id="ENT")
    assert result.status is Status.FAILED
    assert "invalid client credentials" in result.detail
    assert "enterprise id (ENT)" in result.detail
    assert "x-app-key" in result.detail
    assert "Environments tab" in result.next_step


def test_token_401_without_enterprise_id_says_it_is_not_set() -> None:
    assert "OHIP_ENTERPRISE_ID, not set" in explain_token(401, b"").detail


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (403, "forbidden"),
        (400, "malformed"),
        (429, "unavailable"),
        (503, "unavailable"),
        (302, "unexpected answer"),
    ],
)
def test_token_other_answers(status: int, words: str) -> None:
    result = explain_token(status, b"")
    assert result.status is Status.FAILED
    assert words in result.detail
    assert result.next_step


def test_token_request_that_failed() -> None:
    result = explain_token(None, b"", error="ConnectTimeout")
    assert "ConnectTimeout" in result.detail


# -- the relay's lease ---------------------------------------------------------------------------------


def beat(state: StreamState | str, age: float) -> Heartbeat:
    return Heartbeat(state=state, owner="task-1", updated_at=NOW - age)


def test_a_held_lease_holds_the_stream() -> None:
    lease = Lease(owner="task-1", lease_until=NOW + 12, renewed_at=NOW - 3, generation=4)
    assert relay_holds_stream(lease, None, NOW, stale_after=30) == (
        "relay 'task-1' holds the stream lease for another 12s"
    )


def test_a_fresh_heartbeat_holds_the_stream_even_without_lease() -> None:
    expired = Lease(owner="task-1", lease_until=NOW - 1, renewed_at=NOW - 31, generation=4)
    holder = relay_holds_stream(expired, beat(StreamState.CONNECTED, 2), NOW, stale_after=30)
    assert holder is not None
    assert "connected" in holder


@pytest.mark.parametrize(
    "heartbeat",
    [None, beat(StreamState.CONNECTED, 31), beat(StreamState.STOPPED, 1), beat(StreamState.FAILED, 1)],
)
def test_nobody_holds_the_stream(heartbeat: Heartbeat | None) -> None:
    assert relay_holds_stream(None, heartbeat, NOW, stale_after=30) is None


def test_resubscribe_wait_after_a_relay_stopped() -> None:
    assert resubscribe_wait(beat(StreamState.STOPPED, 3), NOW) == pytest.approx(7.0)
    assert resubscribe_wait(beat(StreamState.STOPPED, 11), NOW) == 0.0
    assert resubscribe_wait(beat(StreamState.CONNECTED, 3), NOW) == 0.0
    assert resubscribe_wait(None, NOW) == 0.0


def test_lease_free() -> None:
    result, skipped = explain_lease(None)
    assert result.ok
    assert skipped is None


def test_lease_held_skips_the_live_stream_checks() -> None:
    result, skipped = explain_lease("relay 'task-1' holds the stream lease for another 12s", lease_seconds=30)
    assert result.ok
    assert skipped is not None
    assert skipped.status is Status.SKIPPED
    assert "4409" in result.detail
    assert "desired count 0" in skipped.next_step
    assert "30s" in skipped.next_step


def test_lease_unreadable_goes_on() -> None:
    result, skipped = explain_lease(None, read_error="ResourceNotFoundException")
    assert result.ok
    assert skipped is None
    assert "ResourceNotFoundException" in result.detail


# -- the streaming probe ---------------------------------------------------------------------------


def stream(probe: StreamProbe) -> dict[str, CheckResult]:
    results = explain_stream(probe, chain="CHAIN", timeout=5.0)
    names = [r.name for r in results]
    assert names == list(STREAM_CHECKS[: len(names)])
    assert all(r.ok for r in results[:-1])  # the list stops at the first failure
    return {r.name: r for r in results}


def acked(**kw: object) -> StreamProbe:
    return StreamProbe(subprotocol="graphql-transport-ws", acked=True, subscribed=True, **kw)  # type: ignore[arg-type]


def test_stream_all_good() -> None:
    results = stream(acked(close_code=1000, closed_after_complete=True))
    assert all(r.ok for r in results.values())
    assert len(results) == 4
    assert PROBE_OFFSET in results["subscription"].detail
    assert "10s" in results["subscription"].detail  # the gap the next subscriber must leave


def test_stream_all_good_reports_dropped_frames_and_the_wait() -> None:
    results = stream(acked(close_code=1000, closed_after_complete=True, frames_dropped=2, waited_for_gap=4.0))
    assert "sent 2 event(s) anyway" in results["subscription"].detail
    assert "Waited 4.0s" in results["subscription"].detail


def test_handshake_401_is_the_app_key() -> None:
    results = stream(StreamProbe(handshake_status=401, handshake_body=problem("unknown key")))
    failed = results["app_key"]
    assert failed.status is Status.FAILED
    assert "SHA-256" in failed.detail
    assert "unknown key" in failed.detail
    assert "streaming must be enabled" in failed.next_step


@pytest.mark.parametrize("status", [403, 404])
def test_handshake_403_404_is_streaming_not_enabled(status: int) -> None:
    failed = stream(StreamProbe(handshake_status=status))["stream_connection"]
    assert failed.status is Status.FAILED
    assert f"HTTP {status}" in failed.detail
    assert "technical SR" in failed.next_step


def test_handshake_503_is_temporary() -> None:
    failed = stream(StreamProbe(handshake_status=503))["stream_connection"]
    assert "retry" in failed.next_step


def test_websocket_blocked() -> None:
    failed = stream(StreamProbe(connect_error="InvalidMessage"))["stream_connection"]
    assert "InvalidMessage" in failed.detail
    assert "WebSocket" in failed.next_step


def test_4401_after_connection_init_is_the_plain_key_or_token() -> None:
    results = stream(
        StreamProbe(subprotocol="graphql-transport-ws", close_code=4401, close_reason="Unauthorized")
    )
    failed = results["app_key"]
    assert failed.status is Status.FAILED
    assert "4401" in failed.detail
    assert "'Unauthorized'" in failed.detail


def test_4406_is_the_subprotocol() -> None:
    failed = stream(StreamProbe(subprotocol=None, close_code=4406))["stream_connection"]
    assert "subprotocol" in failed.detail
    assert "Sec-WebSocket-Protocol" in failed.next_step


def test_no_ack() -> None:
    probe = StreamProbe(subprotocol="graphql-transport-ws", protocol_problem="no connection_ack within 5s")
    failed = stream(probe)["stream_connection"]
    assert "no connection_ack within 5s" in failed.detail


def test_close_before_ack() -> None:
    failed = stream(StreamProbe(subprotocol="graphql-transport-ws", close_code=4500))["stream_connection"]
    assert "4500 before connection_ack" in failed.detail


def test_4403_is_the_subscription_approval() -> None:
    failed = stream(acked(close_code=4403, close_reason="Forbidden"))["subscription"]
    assert failed.status is Status.FAILED
    assert "chain CHAIN" in failed.detail
    assert "approved" in failed.detail
    assert "Events tab" in failed.next_step
    assert "approve" in failed.next_step


def test_4409_is_another_client() -> None:
    results = stream(acked(close_code=4409))
    assert results["subscription"].status is Status.SKIPPED
    failed = results["single_client"]
    assert failed.status is Status.FAILED
    assert "another client" in failed.detail
    assert "Postman" in failed.detail
    assert "10s" in failed.next_step


def test_subscription_error_message() -> None:
    failed = stream(acked(subscription_error="chainCode: invalid"))["subscription"]
    assert "chainCode: invalid" in failed.detail


def test_subscription_probe_that_did_not_finish() -> None:
    failed = stream(acked(close_code=4504))["subscription"]
    assert "did not finish: closed with 4504" in failed.detail


# -- Poll API --------------------------------------------------------------------------------------


def test_poll_all_refused_for_the_invalid_limit_is_ok() -> None:
    answers = [(None, 400, b"", ""), ("H1", 400, b"", "")]
    result = explain_poll(answers, system="SYS", chain="CHAIN")
    assert result.ok
    assert "chain CHAIN (all hotels), hotel H1" in result.detail
    assert "before anything could be dequeued" in result.detail


@pytest.mark.parametrize(("status", "dequeued"), [(200, True), (204, False)])
def test_poll_served_says_so(status: int, dequeued: bool) -> None:
    result = explain_poll([(None, status, b"", "")], system="SYS", chain="CHAIN")
    assert result.ok
    assert ("dequeued" in result.detail) is dequeued
    assert "report this answer" in result.next_step


def test_poll_404_names_the_hotel_and_the_opera_screen() -> None:
    answers = [(None, 400, b"", ""), ("H9", 404, problem("unknown hotel", "Not Found"), "")]
    result = explain_poll(answers, system="SYS", chain="CHAIN")
    assert result.status is Status.FAILED
    assert "hotel H9" in result.detail
    assert "unknown hotel" in result.detail
    assert "External Systems" in result.next_step
    assert "hotel H9" in result.next_step


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (401, "refused the token"),
        (403, "HTTP 403"),
        (503, "unavailable"),
        (429, "unavailable"),
        (418, "unexpected"),
    ],
)
def test_poll_failures(status: int, words: str) -> None:
    result = explain_poll([(None, status, b"", "")], system="SYS", chain="CHAIN")
    assert result.status is Status.FAILED
    assert words in result.detail
    assert result.next_step


def test_poll_request_failed() -> None:
    result = explain_poll([(None, None, b"", "ReadTimeout")], system="SYS", chain="CHAIN")
    assert "ReadTimeout" in result.detail


# -- AWS -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("aws_queue", "AWS.SimpleQueueService.NonExistentQueue"),
        ("aws_table", "ResourceNotFoundException"),
        ("aws_bucket", "404"),
    ],
)
def test_aws_missing(name: str, code: str) -> None:
    result = explain_aws(name, "res", client_error(code))
    assert result.status is Status.FAILED
    assert "does not exist" in result.detail
    assert "sam deploy" in result.next_step


def test_aws_denied_names_the_permission() -> None:
    result = explain_aws("aws_queue", "q", client_error("AccessDenied"))
    assert result.status is Status.FAILED
    assert "sqs:SendMessage" in result.next_step
    assert "OperatorRole" in result.next_step


def test_bucket_denied_head_is_not_a_failure() -> None:
    result = explain_aws("aws_bucket", "b", client_error("403"))
    assert result.ok
    assert "s3:PutObject" in result.detail


def test_table_with_another_key_schema() -> None:
    result = explain_aws("aws_table", "t", client_error("ValidationException"))
    assert "hash key pk" in result.detail


def test_aws_unreachable() -> None:
    result = explain_aws("aws_queue", "q", EndpointConnectionError(endpoint_url="https://sqs.example"))
    assert result.status is Status.FAILED
    assert "AWS_REGION" in result.next_step


def test_aws_other_error() -> None:
    result = explain_aws("aws_table", "t", client_error("ThrottlingException"))
    assert "ThrottlingException" in result.detail


def test_aws_ok() -> None:
    assert explain_aws("aws_table", "t", None).ok


# -- the report --------------------------------------------------------------------------------------


def report_failing_at(name: str) -> DoctorReport:
    results: list[CheckResult] = []
    for check in CHECKS:
        if CHECKS.index(check) < CHECKS.index(name):
            results.append(CheckResult(check, True, "fine"))
        elif check == name:
            results.append(CheckResult(check, False, "broken", "fix it"))
        else:
            results.append(CheckResult(check, False, "not run", not_run=True))
    return DoctorReport(tuple(results))


def test_report_exit_codes() -> None:
    assert report_failing_at("configuration").exit_code == EXIT_CONFIG
    assert report_failing_at("subscription").exit_code == EXIT_FAILED
    green = DoctorReport(tuple(CheckResult(c, True, "fine") for c in CHECKS))
    assert green.ok
    assert green.exit_code == EXIT_OK
    assert green.to_text().endswith("All checks passed.")


def test_report_text_and_json() -> None:
    report = report_failing_at("poll_api")
    text = report.to_text()
    assert "  FAILED   Poll API: broken" in text
    assert "next step: fix it" in text
    assert "  not run  SQS queue" in text
    assert text.endswith("Stopped at: Poll API.")
    data = report.to_dict()
    assert data["ok"] is False
    assert data["failed"] == "poll_api"
    assert [c["status"] for c in data["checks"]][-4:] == ["failed", "not_run", "not_run", "not_run"]
    json.dumps(data)  # serialisable as is


def test_a_next_step_shared_by_several_skipped_checks_is_printed_once() -> None:
    step = "stop the relay, wait for the lease to lapse, run ohip-relay doctor again"
    results = tuple(
        CheckResult(name, True, "skipped: a relay holds the lease", step, skipped=True)
        if name in STREAM_CHECKS
        else CheckResult(name, True, "fine")
        for name in CHECKS
    )
    text = DoctorReport(results).to_text()
    assert text.count(step) == 1, text
    assert sum(1 for line in text.splitlines() if line.startswith("  skipped")) == len(STREAM_CHECKS)


def test_the_aws_next_step_names_the_local_endpoint_variable() -> None:
    result = explain_aws("aws_queue", "q", EndpointConnectionError(endpoint_url="x"))
    assert "AWS_ENDPOINT_URL" in result.next_step
