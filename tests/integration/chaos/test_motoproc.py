"""The chaos suite's moto process (`ohip_local.motoproc`): its SQS speed-ups keep moto's answers.

A standard queue holds one message ready, one received (in flight) and one delayed; the counts,
what a receive hands out, and a FIFO queue's order and deduplication are what moto itself answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ohip_local.aws import local_client
from ohip_local.motoproc import moto_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

COUNTS = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]


@pytest.fixture(scope="module")
def sqs() -> Iterator[Any]:
    with moto_process() as endpoint:
        yield local_client("sqs", endpoint)


def test_counts_and_receives_match_moto(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="counts")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="first")
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)["Messages"]
    assert [m["Body"] for m in received] == ["first"]
    sqs.send_message(QueueUrl=url, MessageBody="ready")
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)

    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=COUNTS)["Attributes"]
    assert [int(attributes[name]) for name in COUNTS] == [1, 1, 1]
    again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in again] == ["ready"]  # neither the in-flight nor the delayed one


def test_fifo_order_and_deduplication(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="order.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    for batch in range(3):
        entries = [
            {
                "Id": str(i),
                "MessageBody": f"{batch}-{i}",
                "MessageGroupId": "g",
                "MessageDeduplicationId": f"{batch}-{i}",
            }
            for i in range(10)
        ]
        assert len(sqs.send_message_batch(QueueUrl=url, Entries=entries)["Successful"]) == 10
    sqs.send_message(QueueUrl=url, MessageBody="again", MessageGroupId="g", MessageDeduplicationId="0-0")

    bodies: list[str] = []
    while len(bodies) < 30:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        assert messages, f"the queue ran dry after {len(bodies)} messages"
        bodies += [m["Body"] for m in messages]
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    assert bodies == [f"{b}-{i}" for b in range(3) for i in range(10)]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=COUNTS)["Attributes"]
    assert [int(attributes[name]) for name in COUNTS] == [0, 0, 0]
