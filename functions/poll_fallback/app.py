"""Lambda entry point of the poll fallback (scheduled every minute): wiring only, the logic lives in
`ohip_relay.fallback` (one chain) and `ohip_relay.fleet_fallback` (many chains, `RELAY_FLEET=true`).

Each invocation runs one tick, bounded by the invocation's remaining time: no Poll API page is
requested once less than the safety margin (10 s) is left, so nothing fetched is left unhandled
when the function times out. Settings come from the environment and, for the OHIP credentials,
from Secrets Manager (`OHIP_SECRET_ARN`; in fleet mode each registry entry's secret); metrics are
written as EMF by Powertools.

The schedule's input says which shard of the registry the invocation covers (`{"shard": k,
"shards": n}`, one schedule per shard, template parameter `PollShards`); without it the invocation
is shard 0 of 1. One chain (not fleet mode) is polled by shard 0 only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.typing import LambdaContext

from ohip_relay.config import Need, Settings
from ohip_relay.fallback import FallbackError, open_fallback
from ohip_relay.fleet_fallback import open_fleet_fallback
from ohip_relay.fleet_health import Shard, shard_from_input
from ohip_relay.redact import get_logger
from ohip_relay.runtime import resolve_secrets
from ohip_relay.telemetry import NAMESPACE, Telemetry

logger = get_logger("poll")
copy_config_to_registered_loggers(source_logger=logger, include={"ohip_relay"})
metrics = Metrics(namespace=NAMESPACE, service="poll")

_settings: Settings | None = None  # read once per execution environment


def _load_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = resolve_secrets(Settings.from_env(os.environ, Need.OHIP, Need.POLL, Need.AWS))
    return _settings


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = _load_settings()
    shard = shard_from_input(event)

    def remaining() -> float:
        return context.get_remaining_time_in_millis() / 1000.0

    if settings.fleet:
        return _fleet_tick(settings, shard, remaining)
    if shard.index != 0:
        logger.info("poll tick skipped: one chain is polled by shard 0 only", extra={"shard": str(shard)})
        return {"skipped": True, "shard": shard.index, "shards": shard.count}
    telemetry = Telemetry(service="poll", metrics=metrics)
    try:
        with open_fallback(settings, telemetry) as fallback:
            report = fallback.tick(remaining)
    finally:
        telemetry.flush()
    logger.info("poll tick done", extra={"summary": report.summary()})
    return {
        "healthy": report.healthy,
        "active": report.active,
        "fetched": report.fetched,
        "published": report.published,
        "discarded": report.discarded,
        "duplicates": report.duplicates,
        "malformed": report.malformed,
        "spilled": report.spilled,
        "redelivered": report.redelivered,
        "ended": report.ended,
        "errors": len(report.errors),
    }


def _fleet_tick(settings: Settings, shard: Shard, remaining: Callable[[], float]) -> dict[str, Any]:
    telemetry = Telemetry(service="poll", metrics=metrics)
    try:
        with open_fleet_fallback(settings, telemetry) as fleet:
            report = fleet.tick(remaining, shard)
    finally:
        telemetry.flush()
    fields = report.fields()
    logger.info("fleet poll tick done", extra={"summary": report.summary(), "fleet": fields})
    if report.at_risk:
        # The Lambda's error alarm: polled events could be neither sent nor spilled (ids logged).
        raise FallbackError(
            f"{len(report.at_risk)} chain(s) hold events at risk: " + "; ".join(report.at_risk)
        )
    return fields
