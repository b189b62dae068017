"""`failures.explain`: what a command says when it cannot go on (pure: the environment is passed in)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ProfileNotFound

from ohip_relay.auth import AuthError
from ohip_relay.config import ConfigError
from ohip_relay.failures import EXIT_FAILED, EXIT_USAGE, explain
from ohip_relay.state import StateStoreError

LOCAL = {"AWS_ENDPOINT_URL": "http://127.0.0.1:8702", "RELAY_TABLE_NAME": "relay-state"}
AWS = {"AWS_REGION": "eu-west-1", "RELAY_TABLE_NAME": "relay-state"}


def _state_error(code: str, *, retryable: bool = False) -> StateStoreError:
    return StateStoreError(
        f"DynamoDB GetItem on table relay-state failed ({code})",
        operation="GetItem",
        code=code,
        retryable=retryable,
    )


def test_a_configuration_error_is_its_own_line_exit_2() -> None:
    failure = explain(ConfigError("OHIP_CHAIN_CODE: missing"), LOCAL)
    assert (failure.message, failure.exit_code, failure.unexpected) == (
        "OHIP_CHAIN_CODE: missing",
        EXIT_USAGE,
        False,
    )


def test_a_missing_table_names_the_table_the_endpoint_and_the_variable() -> None:
    failure = explain(_state_error("ResourceNotFoundException"), LOCAL)
    assert failure.exit_code == EXIT_USAGE
    assert "'relay-state' does not exist in http://127.0.0.1:8702 (AWS_ENDPOINT_URL)" in failure.message
    assert "RELAY_TABLE_NAME" in failure.message
    assert "AWS region eu-west-1" in explain(_state_error("ResourceNotFoundException"), AWS).message


def test_an_unreachable_endpoint_is_a_failed_run_naming_where() -> None:
    failure = explain(_state_error("EndpointConnectionError", retryable=True), LOCAL)
    assert failure.exit_code == EXIT_FAILED
    assert "cannot reach AWS at http://127.0.0.1:8702" in failure.message


@pytest.mark.parametrize("code", ["AccessDeniedException", "UnrecognizedClientException"])
def test_permissions_and_credentials_are_configuration(code: str) -> None:
    failure = explain(_state_error(code), AWS)
    assert failure.exit_code == EXIT_USAGE
    assert code in failure.message


def test_botocore_errors_outside_the_state_store() -> None:
    assert explain(NoCredentialsError(), AWS).exit_code == EXIT_USAGE
    assert "AWS_ENDPOINT_URL" in explain(NoCredentialsError(), AWS).message
    assert explain(ProfileNotFound(profile="x"), AWS).exit_code == EXIT_USAGE
    assert explain(EndpointConnectionError(endpoint_url="http://x"), LOCAL).exit_code == EXIT_FAILED
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "SendMessage")
    assert "docs/permissions.md" in explain(denied, AWS).message


def test_oauth_refusals_are_configuration_and_outages_a_failed_run() -> None:
    assert explain(AuthError("refused", status=401, permanent=True), AWS).exit_code == EXIT_USAGE
    assert explain(AuthError("cannot reach", permanent=False), AWS).exit_code == EXIT_FAILED


def test_anything_else_is_one_line_that_asks_for_minus_v() -> None:
    failure = explain(RuntimeError("boom\nsecond line"), AWS)
    assert failure.unexpected
    assert failure.exit_code == EXIT_FAILED
    assert failure.message.startswith("RuntimeError: boom (unexpected: run again with -v")
    assert "\n" not in failure.message
