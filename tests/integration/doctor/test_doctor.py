"""`ohip-relay doctor` against the local OHIP gateway (real sockets) and the moto server: each
failure a new setup runs into, reproduced on the gateway, stops the run at the right check with the
right explanation; the all-green run passes every check."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from ohip_relay.doctor import CHECKS, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, PROBE_OFFSET, DoctorReport

from .conftest import Setup, by_name

pytestmark = pytest.mark.integration

SetupFactory = Callable[..., AbstractAsyncContextManager[Setup]]


# The local administrator's keys in place of the operator role's temporary credentials.
ADMINISTRATOR: dict[str, str | None] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": None,
}


def stopped_at(report: DoctorReport, name: str) -> dict[str, str]:
    """The failed check (which must be `name`); every check before it passed, none after it ran."""
    checks = report.to_dict()["checks"]
    assert [c["name"] for c in checks] == list(CHECKS)
    statuses = {c["name"]: c["status"] for c in checks}
    assert report.to_dict()["failed"] == name, report.to_text()
    position = CHECKS.index(name)
    assert all(statuses[n] in ("ok", "skipped") for n in CHECKS[:position]), statuses
    assert all(statuses[n] == "not_run" for n in CHECKS[position + 1 :]), statuses
    failed: dict[str, str] = checks[position]
    assert failed["detail"]
    assert failed["next_step"]
    return failed


async def test_all_green(setup: Setup) -> None:
    report = await setup.doctor()
    assert report.ok, report.to_text()
    assert report.exit_code == EXIT_OK
    assert all(c["status"] == "ok" for c in report.to_dict()["checks"]), report.to_text()
    checks = by_name(report)
    assert PROBE_OFFSET in checks["subscription"]["detail"]
    assert "400" in checks["poll_api"]["detail"]
    assert report.to_text().endswith("All checks passed.")


# -- configuration, network, credentials ----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"OHIP_CHAIN_CODE": None}, "OHIP_CHAIN_CODE"),
        ({"OHIP_GATEWAY_URL": "ftp://gateway.example.com"}, "OHIP_GATEWAY_URL"),
        ({"OHIP_EXTERNAL_SYSTEM": None}, "OHIP_EXTERNAL_SYSTEM"),
        ({"RELAY_QUEUE_URL": None}, "RELAY_QUEUE_URL"),
    ],
)
async def test_bad_configuration(setup: Setup, changes: dict[str, str | None], variable: str) -> None:
    report = await setup.doctor(**changes)
    failed = stopped_at(report, "configuration")
    assert report.exit_code == EXIT_CONFIG
    assert failed["detail"].startswith(variable)
    assert setup.gateway.tokens.issued == 0


async def test_gateway_unreachable(setup: Setup) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = await setup.doctor(OHIP_GATEWAY_URL=f"http://127.0.0.1:{port}")
    failed = stopped_at(report, "gateway")
    assert report.exit_code == EXIT_FAILED
    assert "refused" in failed["detail"]
    assert "OHIP_GATEWAY_URL" in failed["next_step"]


async def test_wrong_client_secret(setup: Setup) -> None:
    report = await setup.doctor(OHIP_CLIENT_SECRET="not-the-secret-at-all")
    failed = stopped_at(report, "oauth")
    assert "HTTP 401" in failed["detail"]
    assert "client secret" in failed["next_step"]
    assert "not-the-secret-at-all" not in report.to_text()


async def test_wrong_app_key_at_the_token_endpoint(setup: Setup) -> None:
    report = await setup.doctor(OHIP_APP_KEY="someone-elses-app-key")
    failed = stopped_at(report, "oauth")
    assert "application key" in failed["detail"]
    assert "Applications tab" in failed["next_step"]
    assert "someone-elses-app-key" not in report.to_text()


async def test_app_key_unknown_to_the_streaming_endpoint(make_setup: SetupFactory) -> None:
    # The token endpoint takes this key, but the streaming endpoint knows another application.
    async with make_setup(oauth_app_key="key-without-streaming") as setup:
        report = await setup.doctor()
        failed = stopped_at(report, "app_key")
        assert "HTTP 401" in failed["detail"]
        assert "streaming must be enabled" in failed["next_step"]
        assert setup.gateway.streaming.snapshot()["rejected_handshakes"] == 1


# -- the subscription ----------------------------------------------------------------------------


async def test_subscription_not_approved(make_setup: SetupFactory) -> None:
    async with make_setup(approved_chains=()) as setup:
        report = await setup.doctor()
        failed = stopped_at(report, "subscription")
        assert "4403" in failed["detail"]
        assert "approve" in failed["next_step"]
        assert "Events tab" in failed["next_step"]


async def test_approval_withdrawn_on_the_running_gateway(setup: Setup) -> None:
    await setup.control.approval(setup.chain, False)
    failed = stopped_at(await setup.doctor(), "subscription")
    assert "4403" in failed["detail"]


async def test_another_client_connected(setup: Setup) -> None:
    async with setup.other_client() as other:
        report = await setup.doctor()
        failed = stopped_at(report, "single_client")
        assert "4409" in failed["detail"]
        assert by_name(report)["subscription"]["status"] == "skipped"
        assert "stop the other client" in failed["next_step"]
        # the client that was there first keeps its subscription and its events
        setup.gateway.emit(3)
        async with asyncio.timeout(10):
            frames = [json.loads(await other.recv()) for _ in range(3)]
        assert [f["type"] for f in frames] == ["next"] * 3
    assert setup.gateway.streaming.conflicts == 1


# -- the Poll API ----------------------------------------------------------------------------------


async def test_poll_api_failing(setup: Setup) -> None:
    await setup.control.poll_fault("5xx", status=503)
    failed = stopped_at(await setup.doctor(), "poll_api")
    assert "unavailable (HTTP 503)" in failed["detail"]
    assert "retry" in failed["next_step"]


async def test_unknown_external_system(setup: Setup) -> None:
    failed = stopped_at(await setup.doctor(OHIP_EXTERNAL_SYSTEM="NOSUCHSYS"), "poll_api")
    assert "NOSUCHSYS" in failed["detail"]
    assert "404" in failed["detail"]
    assert "External Systems" in failed["next_step"]


async def test_hotel_not_configured_for_the_external_system(setup: Setup) -> None:
    failed = stopped_at(await setup.doctor(OHIP_HOTEL_IDS="HOTEL1,NOHOTEL"), "poll_api")
    assert "hotel NOHOTEL" in failed["detail"]
    assert "OHIP_HOTEL_IDS" in failed["next_step"]


# -- AWS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "variable", "replace"),
    [
        ("aws_queue", "RELAY_QUEUE_URL", ("events", "no-such-queue")),
        ("aws_table", "RELAY_TABLE_NAME", ("state", "no-such-table")),
        ("aws_bucket", "RELAY_BUCKET_NAME", ("oversize", "no-such-bucket")),
    ],
)
async def test_aws_resource_missing(
    setup: Setup, check: str, variable: str, replace: tuple[str, str]
) -> None:
    # Credentials that may read any resource (an administrator's): AWS then answers "no such
    # resource". The operator role covers the stack's own resources only (next test).
    value = setup.env[variable].replace(*replace)
    failed = stopped_at(await setup.doctor(**{variable: value}, **ADMINISTRATOR), check)
    assert "does not exist" in failed["detail"]
    assert "sam deploy" in failed["next_step"]
    assert variable in failed["next_step"]


@pytest.mark.denials_expected
@pytest.mark.parametrize(
    ("check", "variable", "replace"),
    [
        ("aws_queue", "RELAY_QUEUE_URL", ("events", "other-queue")),
        ("aws_table", "RELAY_TABLE_NAME", ("state", "other-table")),
    ],
)
async def test_aws_resource_outside_the_operator_role_is_denied(
    setup: Setup, check: str, variable: str, replace: tuple[str, str]
) -> None:
    # IAM decides before the service looks the resource up: another (or a mistyped) queue or table
    # is denied to OperatorRole whether it exists or not. (S3 answers 404 for a missing bucket
    # first; moto does not, so the bucket is left out here: docs/permissions.md.)
    value = setup.env[variable].replace(*replace)
    failed = stopped_at(await setup.doctor(**{variable: value}), check)
    assert "denied" in failed["detail"]
    assert value in failed["detail"]


async def test_no_bucket_configured_is_a_skip(setup: Setup) -> None:
    report = await setup.doctor(RELAY_BUCKET_NAME=None)
    assert report.ok
    assert by_name(report)["aws_bucket"]["status"] == "skipped"
    assert report.to_text().endswith("No check failed (some were skipped, see above).")
