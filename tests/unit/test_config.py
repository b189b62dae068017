"""The settings object: every variable is checked, and errors name the variable without secrets."""

from __future__ import annotations

import pytest

from ohip_relay.config import ConfigError, Need, Settings, SqsTransport

FULL = {
    "OHIP_GATEWAY_URL": "https://ohip.example.com/",
    "OHIP_CLIENT_ID": "client",
    "OHIP_CLIENT_SECRET": "s3cr3t-value",
    "OHIP_APP_KEY": "app-key-value",
    "OHIP_CHAIN_CODE": "CHAIN1",
    "OHIP_HOTEL_IDS": "HOTEL1, HOTEL2",
    "OHIP_EXTERNAL_SYSTEM": "RELAY",
    "RELAY_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/relay-events.fifo",
    "RELAY_TABLE_NAME": "relay-state",
    "AWS_REGION": "eu-west-1",
}


def test_full_environment_parses() -> None:
    settings = Settings.from_env(FULL, Need.OHIP, Need.STREAM, Need.POLL, Need.AWS)
    assert settings.gateway_url == "https://ohip.example.com"
    assert settings.hotel_ids == ("HOTEL1", "HOTEL2")
    assert settings.queue_is_fifo


def test_secrets_are_not_in_repr() -> None:
    text = repr(Settings.from_env(FULL, Need.OHIP))
    assert "s3cr3t-value" not in text
    assert "app-key-value" not in text


@pytest.mark.parametrize(
    "missing",
    [
        "OHIP_GATEWAY_URL",
        "OHIP_CLIENT_ID",
        "OHIP_CLIENT_SECRET",
        "OHIP_APP_KEY",
        "OHIP_CHAIN_CODE",
        "RELAY_QUEUE_URL",
        "RELAY_TABLE_NAME",
    ],
)
def test_missing_required_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in FULL.items() if k != missing}
    with pytest.raises(ConfigError, match=rf"^{missing}: missing$"):
        Settings.from_env(env, Need.OHIP, Need.STREAM, Need.AWS)


def test_secret_arn_replaces_plain_credentials() -> None:
    env = {k: v for k, v in FULL.items() if k not in ("OHIP_CLIENT_ID", "OHIP_CLIENT_SECRET", "OHIP_APP_KEY")}
    env["OHIP_SECRET_ARN"] = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ohip"
    assert Settings.from_env(env, Need.OHIP).client_id == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OHIP_GATEWAY_URL", "ftp://ohip.example.com"),
        ("OHIP_GATEWAY_URL", "http://ohip.example.com"),  # plain http only on loopback
        ("OHIP_GATEWAY_URL", "https://ohip.example.com?x=1"),
        ("OHIP_GATEWAY_URL", "https://ohip.example.com:notaport"),
        ("OHIP_CHAIN_CODE", "CHAIN*1"),
        ("OHIP_CHAIN_CODE", "C" * 21),
        ("OHIP_HOTEL_IDS", "HOTEL1,,HOTEL2"),
        ("OHIP_HOTEL_IDS", "HOTEL1,HOTEL1"),
        ("RELAY_QUEUE_URL", "queue"),
        ("RELAY_TABLE_NAME", "x"),
    ],
)
def test_malformed_value_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        Settings.from_env({**FULL, name: value}, Need.OHIP, Need.STREAM, Need.AWS)


def test_loopback_gateway_may_use_plain_http() -> None:
    settings = Settings.from_env({**FULL, "OHIP_GATEWAY_URL": "http://127.0.0.1:8080"}, Need.OHIP)
    assert settings.gateway_url == "http://127.0.0.1:8080"


def test_malformed_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**FULL, "OHIP_CLIENT_SECRET": "top\nsecret"}, Need.OHIP)
    assert "top" not in str(info.value)


def test_region_required_for_aws() -> None:
    env = {k: v for k, v in FULL.items() if k != "AWS_REGION"}
    with pytest.raises(ConfigError, match=r"^AWS_REGION: missing"):
        Settings.from_env(env, Need.AWS)


def test_heartbeat_interval_is_read_and_bounded() -> None:
    settings = Settings.from_env({**FULL, "RELAY_HEARTBEAT_SECONDS": "2"}, Need.STREAM)
    assert settings.heartbeat_seconds == 2.0
    assert Settings.from_env(FULL, Need.STREAM).heartbeat_seconds == 5.0
    with pytest.raises(ConfigError, match=r"^RELAY_HEARTBEAT_SECONDS: "):
        Settings.from_env({**FULL, "RELAY_HEARTBEAT_SECONDS": "0"}, Need.STREAM)


@pytest.mark.parametrize(
    ("heartbeat", "stale", "ok"), [("5", "10", True), ("5", "9", False), ("1", "2", True)]
)
def test_stale_threshold_must_cover_two_heartbeats(heartbeat: str, stale: str, ok: bool) -> None:
    env = {**FULL, "RELAY_HEARTBEAT_SECONDS": heartbeat, "RELAY_HEALTH_STALE_SECONDS": stale}
    if ok:
        Settings.from_env(env, Need.POLL)
    else:
        with pytest.raises(ConfigError, match=r"^RELAY_HEALTH_STALE_SECONDS: must be at least twice"):
            Settings.from_env(env, Need.POLL)


def test_sqs_transport_defaults_to_http_and_accepts_boto3() -> None:
    assert Settings.from_env(FULL, Need.STREAM).sqs_transport is SqsTransport.HTTP
    settings = Settings.from_env({**FULL, "RELAY_SQS_TRANSPORT": "BOTO3"}, Need.STREAM)
    assert settings.sqs_transport is SqsTransport.BOTO3
    with pytest.raises(ConfigError, match=r"^RELAY_SQS_TRANSPORT: expected one of http, boto3"):
        Settings.from_env({**FULL, "RELAY_SQS_TRANSPORT": "grpc"}, Need.STREAM)


@pytest.mark.parametrize("value", ["0", "17", "four", "2.5", "-1"])
def test_poll_concurrency_is_a_bounded_whole_number(value: str) -> None:
    assert Settings.from_env(FULL, Need.POLL).poll_concurrency == 4
    assert Settings.from_env({**FULL, "RELAY_POLL_CONCURRENCY": "16"}, Need.POLL).poll_concurrency == 16
    with pytest.raises(ConfigError, match=r"^RELAY_POLL_CONCURRENCY: expected a whole number from 1 to 16"):
        Settings.from_env({**FULL, "RELAY_POLL_CONCURRENCY": value}, Need.POLL)
