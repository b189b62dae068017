"""Wiring shared by the entry points: AWS clients and secrets from the settings."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any

import boto3
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

from .config import ConfigError, Settings

# Standard retry mode: botocore retries throttling and 5xx with backoff before our own retries.
BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=20)

_SECRET_FIELDS = {"clientId": "client_id", "clientSecret": "client_secret", "appKey": "app_key"}

log = logging.getLogger("ohip_relay.aws")

# Error codes botocore's standard mode retries (besides HTTP 5xx and connection errors).
_RETRIED_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def aws_client(settings: Settings, service: str, *, config: Config | None = None) -> Any:
    """A boto3 client honouring AWS_ENDPOINT_URL (moto locally) and AWS_REGION; `config` is merged
    into BOTO_CONFIG."""
    session = boto3.session.Session(region_name=settings.aws_region or None)
    merged = BOTO_CONFIG if config is None else BOTO_CONFIG.merge(config)
    client = session.client(  # type: ignore[call-overload]
        service, endpoint_url=settings.aws_endpoint_url or None, config=merged
    )
    log_retries(client, merged)
    return client


def log_retries(client: Any, config: Config) -> None:
    """Log each failed attempt that botocore is about to try again: its retries (with backoff,
    seconds in all) are otherwise silent, and only what still fails reaches our own logs."""
    retries = getattr(config, "retries", None) or {}
    total = retries.get("total_max_attempts") or retries.get("max_attempts", 2) + 1
    client.meta.events.register("needs-retry", functools.partial(_log_retry, total=total))


def _log_retry(
    *,
    total: int,
    attempts: int,
    operation: Any,
    response: tuple[Any, dict[str, Any]] | None = None,
    caught_exception: Exception | None = None,
    **_: Any,
) -> None:
    """A `needs-retry` handler that only logs (it returns None, so botocore's decision stands)."""
    if attempts >= total:
        return
    if caught_exception is not None:
        why = type(caught_exception).__name__
    elif response is not None:
        parsed = response[1] if len(response) > 1 else {}
        code = str(parsed.get("Error", {}).get("Code", ""))
        status = parsed.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code not in _RETRIED_CODES and not (isinstance(status, int) and status >= 500):
            return
        why = f"{code or 'HTTP'} {status}".strip()
    else:
        return
    service = operation.service_model.service_id
    log.warning("%s %s failed (%s), attempt %d of at most %d", service, operation.name, why, attempts, total)


def aws_credentials(settings: Settings) -> Credentials | None:
    """The credentials `aws_client` would sign with (the default chain; None if there are none)."""
    return boto3.session.Session(region_name=settings.aws_region or None).get_credentials()


def resolve_secrets(settings: Settings) -> Settings:
    """With OHIP_SECRET_ARN set, read clientId, clientSecret and appKey from Secrets Manager.

    The secret is a JSON object with those three keys. Values already given in the environment win,
    so that a local run can override one of them.
    """
    if not settings.secret_arn:
        return settings
    try:
        raw = aws_client(settings, "secretsmanager").get_secret_value(SecretId=settings.secret_arn)[
            "SecretString"
        ]
    except (BotoCoreError, ClientError) as exc:
        raise ConfigError(f"OHIP_SECRET_ARN: cannot read the secret ({type(exc).__name__})") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError("OHIP_SECRET_ARN: the secret is not a JSON object") from exc
    if not isinstance(data, dict):
        raise ConfigError("OHIP_SECRET_ARN: the secret is not a JSON object")
    values: dict[str, str] = {}
    for key, attribute in _SECRET_FIELDS.items():
        current: str = getattr(settings, attribute)
        if current:
            values[attribute] = current
            continue
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"OHIP_SECRET_ARN: the secret has no {key!r} string")
        values[attribute] = value
    return dataclasses.replace(
        settings,
        client_id=values["client_id"],
        client_secret=values["client_secret"],
        app_key=values["app_key"],
    )
