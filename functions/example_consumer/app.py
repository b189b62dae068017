"""A reference SQS consumer of ohip-relay events: copy it to start your own.

* Powertools batch processing with partial batch failures: only the records that failed return to
  the queue (the event source mapping needs `FunctionResponseTypes: [ReportBatchItemFailures]`). On
  a FIFO queue (the default) the FIFO processor is used with `skip_group_on_error`: after a failed
  record, the later records of the same message group (the same reservation or profile) are
  returned too, so a resource's events are never processed out of order; other groups go on.
* Idempotency on the body's `eventId` (Powertools idempotency, DynamoDB persistence layer in the
  table named by `IDEMPOTENCY_TABLE_NAME`, hash key `id`, TTL attribute `expiration`): the relay
  delivers at least once, so the same event (the same `eventId`) may arrive twice; it is processed
  once. Not on `eventKey`: two distinct changes that look alike (a field set, cleared and set again
  within one second) share it, and both must be processed (docs/event-format.md, "Which key to
  use"). Messages of relays older than `eventId` fall back to `eventKey`.
* Claim checks: an event too large for SQS arrives as `{"schemaVersion": 1, "eventKey": ...,
  "eventId": ..., "claimCheck": {"bucket", "key", "bytes"}}`; the event itself is read from S3.

Put your logic in `handle_event`. Event bodies carry personal data: log identifiers, not bodies.
"""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    SqsFifoPartialProcessor,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from ohip_relay.redact import get_logger

logger = get_logger("example-consumer")

_ENDPOINT = os.environ.get("AWS_ENDPOINT_URL") or None  # a local endpoint (moto) in tests
_s3 = boto3.client("s3", endpoint_url=_ENDPOINT)
persistence = DynamoDBPersistenceLayer(
    table_name=os.environ["IDEMPOTENCY_TABLE_NAME"],
    boto3_client=boto3.client("dynamodb", endpoint_url=_ENDPOINT),
)
idempotency = IdempotencyConfig(
    event_key_jmespath="eventId || eventKey",
    raise_on_no_idempotency_key=True,
    expires_after_seconds=8 * 24 * 3600,  # longer than OHIP's 7-day replay window
)

standard_processor = BatchProcessor(event_type=EventType.SQS)
fifo_processor = SqsFifoPartialProcessor(skip_group_on_error=True)


def handle_event(event: dict[str, Any]) -> None:
    """Your business logic, called once per `eventId`. Raise to have the record retried."""
    logger.info(
        "event received",
        extra={
            "eventId": event.get("eventId"),
            "eventKey": event["eventKey"],
            "eventName": event.get("eventName"),
            "source": event.get("source"),
        },
    )


@idempotent_function(data_keyword_argument="event", persistence_store=persistence, config=idempotency)
def process_once(event: dict[str, Any]) -> dict[str, Any]:
    handle_event(event)
    return {"eventId": event.get("eventId"), "eventKey": event["eventKey"]}


def resolve_body(body: str) -> dict[str, Any]:
    """The event a message carries: its body, or the S3 object a claim-check pointer names."""
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("the message body is not a JSON object")
    pointer = document.get("claimCheck")
    if isinstance(pointer, dict):
        stored = _s3.get_object(Bucket=str(pointer["bucket"]), Key=str(pointer["key"]))["Body"].read()
        document = json.loads(stored)
        if not isinstance(document, dict):
            raise ValueError("the claim-checked payload is not a JSON object")
    if not isinstance(document.get("eventKey"), str):
        raise ValueError("the event has no eventKey")
    return document


def record_handler(record: SQSRecord) -> None:
    process_once(event=resolve_body(record.body))


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    records = event.get("Records") or []
    fifo = any(str(r.get("eventSourceARN", "")).endswith(".fifo") for r in records)
    processor = fifo_processor if fifo else standard_processor
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
