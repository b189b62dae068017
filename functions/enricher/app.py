"""Lambda entry point of the optional enricher: wiring only, the logic lives in `ohip_relay.enrich`.

Consumes the relay queue (event source mapping with `ReportBatchItemFailures`), reads each
event's resource through the OHIP REST APIs and publishes the event plus `resource` to the
enriched queue. Records that cannot be enriched now (429 beyond the remaining time, 5xx after
retries, an unreadable body) are reported as batch item failures through the Powertools batch
processor: SQS delivers them again and, after maxReceiveCount, moves them to the dead-letter
queue. On a FIFO queue the FIFO processor returns the later records of a failed message group too.

Settings: OHIP_GATEWAY_URL, OHIP_SECRET_ARN (or OHIP_CLIENT_ID/OHIP_CLIENT_SECRET/OHIP_APP_KEY),
RELAY_ENRICHED_QUEUE_URL, AWS_REGION; optional OHIP_ENRICH_ROUTES, RELAY_ENRICH_CONCURRENCY,
RELAY_BUCKET_NAME (claim checks). Without them the handler refuses to run with one line naming the
missing variable. Idempotency: the enriched queue deduplicates on `eventKey` (FIFO); consumers
stay idempotent on `eventKey` as for the raw queue.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    SqsFifoPartialProcessor,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from ohip_relay.config import ConfigError, Need, Settings
from ohip_relay.enrich import Enricher, InputRecord, open_enricher
from ohip_relay.redact import get_logger
from ohip_relay.runtime import resolve_secrets
from ohip_relay.telemetry import NAMESPACE, Telemetry

SERVICE = "enricher"

logger = get_logger(SERVICE)
copy_config_to_registered_loggers(source_logger=logger, include={"ohip_relay"})
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
telemetry = Telemetry(service=SERVICE, metrics=metrics)

# The whole batch failing is an answer like any other (every record goes back to SQS), not an error.
standard_processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
fifo_processor = SqsFifoPartialProcessor(skip_group_on_error=True)
fifo_processor.raise_on_entire_batch_failure = False

_enricher: Enricher | None = None  # built once per execution environment (token and connections)


class RecordNotEnriched(Exception):
    """Raised for the records the enricher could not hand on; the processor reports them."""


def _load() -> Enricher:
    global _enricher
    if _enricher is None:
        try:
            settings = resolve_secrets(Settings.from_env(os.environ, Need.OHIP, Need.ENRICH))
            _enricher = open_enricher(settings, telemetry)
        except ConfigError as exc:
            logger.error(f"enricher not started: {exc}")
            raise
    return _enricher


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    enricher = _load()
    records = event.get("Records") or []
    try:
        report = enricher.run(
            [InputRecord.from_lambda(r) for r in records],
            lambda: context.get_remaining_time_in_millis() / 1000.0,
        )
    finally:
        telemetry.flush()
    failed = set(report.failed)

    def record_handler(record: SQSRecord) -> None:
        if record.message_id in failed:
            raise RecordNotEnriched(record.message_id)

    fifo = any(str(r.get("eventSourceARN", "")).endswith(".fifo") for r in records)
    processor = fifo_processor if fifo else standard_processor
    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    logger.info("batch enriched", extra={"records": len(records), "summary": report.summary()})
    return dict(response)
