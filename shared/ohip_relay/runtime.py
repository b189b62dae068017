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
from botocore.retries.standard import RetryContext, StandardRetryConditions

from .config import ConfigError, Settings

# Standard retry mode: botocore retries throttling and 5xx with backoff before our own retries.
BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=20)

_SECRET_FIELDS = {"clientId": "client_id", "clientSecret": "client_secret", "appKey": "app_key"}

log = logging.getLogger("ohip_relay.aws")


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
    # botocore's own standard-mode conditions decide what counts as retried: no list of ours to drift.
    conditions = StandardRetryConditions(max_attempts=total)
    client.meta.events.register(
        "needs-retry", functools.partial(_log_retry, conditions=conditions, total=total)
    )


def _log_retry(
    *,
    conditions: StandardRetryConditions,
    total: int,
    attempts: int,
    operation: Any,
    response: tuple[Any, dict[str, Any]] | None = None,
    caught_exception: Exception | None = None,
    **_: Any,
) -> None:
    """A `needs-retry` handler that only logs (it returns None, so botocore's decision stands)."""
    http, parsed = response if response is not None else (None, None)
    context = RetryContext(
        attempt_number=attempts,
        operation_model=operation,
        parsed_response=parsed,
        http_response=http,
        caught_exception=caught_exception,
    )
    if not conditions.is_retryable(context):
        return
    if caught_exception is not None:
        why = type(caught_exception).__name__
    else:
        status = (parsed or {}).get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        why = f"{context.get_error_code() or 'HTTP'} {status}".strip()
    service = operation.service_model.service_id
    log.warning("%s %s failed (%s), attempt %d of at most %d", service, operation.name, why, attempts, total)


def aws_credentials(settings: Settings) -> Credentials | None:
    """The credentials `aws_client` would sign with (the default chain; None if there are none)."""
    return boto3.session.Session(region_name=settings.aws_region or None).get_credentials()


def resolve_secrets(settings: Settings, *, client: Any = None) -> Settings:
    """With OHIP_SECRET_ARN set, read clientId, clientSecret and appKey from Secrets Manager.

    The secret is a JSON object with those three keys. Values already given in the environment win,
    so that a local run can override one of them. `client`: the Secrets Manager client to use (a
    fleet task builds one at start and reads every registry entry's secret with it).
    """
    if not settings.secret_arn:
        return settings
    secrets = client if client is not None else aws_client(settings, "secretsmanager")
    try:
        raw = secrets.get_secret_value(SecretId=settings.secret_arn)["SecretString"]
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
