"""Lambda's SQS event source mapping, locally: the calls the Lambda service makes for a function
that reads a queue, signed with the function's own role, as in AWS.

In AWS the event source mapping's poller uses the function's execution role, which therefore needs
`sqs:ReceiveMessage`, `sqs:DeleteMessage` and `sqs:GetQueueAttributes` on the queue (Lambda
developer guide, "Amazon SQS": execution role permissions). The poller here makes those calls and
no other: it reads the queue's attributes when the mapping starts, receives a batch, hands the
function the records in Lambda's event shape, and deletes what the function did not report as a
batch item failure (`ReportBatchItemFailures`). A failed record stays in flight until its
visibility timeout ends; the poller never changes it (a harness that does not want to wait makes
it visible again with its own credentials).

    source = SqsEventSource(sqs_client_of_the_role, queue_url, region="us-east-1")
    source.start()                           # GetQueueAttributes
    batch = source.receive()                 # ReceiveMessage; None when the queue gave nothing
    result = handler(batch.event, context)   # the function
    source.complete(batch, result)           # DeleteMessageBatch of the records that succeeded
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The attributes Lambda hands a function in each record (`attributes`).
_RECORD_ATTRIBUTES = [
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "MessageGroupId",
    "MessageDeduplicationId",
    "SequenceNumber",
]


@dataclass
class Batch:
    """One batch handed to the function: its event and each record's receipt handle."""

    event: dict[str, Any]
    handles: dict[str, str] = field(default_factory=dict)  # messageId -> receipt handle

    @property
    def message_ids(self) -> list[str]:
        return [record["messageId"] for record in self.event["Records"]]


class SqsEventSource:
    """The poller of one SQS event source mapping. `sqs` is a client with the function's role."""

    def __init__(self, sqs: Any, queue_url: str, *, region: str, batch_size: int = 10) -> None:
        if not 1 <= batch_size <= 10:
            raise ValueError("batch_size must be 1..10 (SQS receives at most 10 messages at once)")
        self._sqs = sqs
        self.queue_url = queue_url
        self.region = region
        self.batch_size = batch_size
        self.queue_arn = ""

    def start(self) -> dict[str, str]:
        """What Lambda checks when a mapping is created or enabled: the queue exists, its ARN,
        whether it is FIFO, its visibility timeout (GetQueueAttributes)."""
        attributes: dict[str, str] = self._sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn", "VisibilityTimeout", "FifoQueue"]
        )["Attributes"]
        self.queue_arn = attributes["QueueArn"]
        return attributes

    def receive(self) -> Batch | None:
        """One ReceiveMessage (no wait); the batch in Lambda's event shape, or None."""
        if not self.queue_arn:
            self.start()
        messages = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=_RECORD_ATTRIBUTES,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return None
        batch = Batch({"Records": [self._record(m) for m in messages]})
        batch.handles = {m["MessageId"]: m["ReceiptHandle"] for m in messages}
        return batch

    def complete(self, batch: Batch, response: Any) -> list[str]:
        """Delete the records the function did not fail (its `batchItemFailures`; a response that
        is not a dict fails the whole batch, as a function error does). Returns the failed ids."""
        if isinstance(response, dict):
            failures = response.get("batchItemFailures") or []
            failed = [str(f["itemIdentifier"]) for f in failures]
        else:
            failed = list(batch.message_ids)
        done = [i for i in batch.message_ids if i not in failed]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(n), "ReceiptHandle": batch.handles[i]} for n, i in enumerate(done)],
            )
        return failed

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": dict(message.get("Attributes", {})),
            "messageAttributes": {
                name: {
                    "stringValue": value.get("StringValue"),
                    "binaryValue": value.get("BinaryValue"),
                    "stringListValues": [],
                    "binaryListValues": [],
                    "dataType": value.get("DataType", "String"),
                }
                for name, value in message.get("MessageAttributes", {}).items()
            },
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.region,
        }
