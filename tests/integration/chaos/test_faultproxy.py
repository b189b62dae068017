"""The chaos suite's fault proxy in front of the moto server, seen by real boto3 clients over HTTP.

botocore's retries are off in these clients so that each call meets the proxy once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ohip_local.aws import ProvisionedStack, local_client
from ohip_local.faultproxy import FaultProxy, FaultRule, classify_request, running_fault_proxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def client(service: str, endpoint: str) -> Any:
    return local_client(service, endpoint, config=NO_RETRIES)


@pytest.fixture
def proxy(aws_endpoint: str) -> Iterator[FaultProxy]:
    with running_fault_proxy(aws_endpoint, seed=3) as running:
        yield running


def queued_bodies(aws_stack: ProvisionedStack) -> list[str]:
    sqs = client("sqs", aws_stack.endpoint_url)
    bodies: list[str] = []
    while True:
        got = sqs.receive_message(QueueUrl=aws_stack.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if not got.get("Messages"):
            return sorted(bodies)
        bodies += [m["Body"] for m in got["Messages"]]


def send(sqs: Any, stack: ProvisionedStack, body: str) -> None:
    sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=body, MessageGroupId="g", MessageDeduplicationId=body
    )


def test_requests_pass_through_unfaulted(proxy: FaultProxy, aws_stack: ProvisionedStack) -> None:
    send(client("sqs", proxy.url), aws_stack, "a")
    assert queued_bodies(aws_stack) == ["a"]
    assert proxy.stats() == {"injected": {}, "requests": {"sqs.SendMessage": 1}}


def test_an_sqs_throttle_before_sends_nothing_and_runs_out(
    proxy: FaultProxy, aws_stack: ProvisionedStack
) -> None:
    proxy.add(FaultRule("sqs", error="throttle", operation="SendMessage", count=1))
    sqs = client("sqs", proxy.url)
    with pytest.raises(ClientError) as raised:
        send(sqs, aws_stack, "a")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert raised.value.response["Error"]["Code"] in ("RequestThrottled", "ThrottlingException")
    assert queued_bodies(aws_stack) == []
    send(sqs, aws_stack, "b")  # the rule ran out
    assert queued_bodies(aws_stack) == ["b"]
    assert proxy.active() == []
    assert proxy.stats()["injected"] == {"sqs.SendMessage throttle/before": 1}


def test_an_error_after_the_write_is_ambiguous(proxy: FaultProxy, aws_stack: ProvisionedStack) -> None:
    proxy.add(FaultRule("sqs", error="internal", phase="after", count=1))
    with pytest.raises(ClientError) as raised:
        send(client("sqs", proxy.url), aws_stack, "a")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert queued_bodies(aws_stack) == ["a"]  # it happened; the client was told it did not


def test_a_partial_batch_reports_accepted_entries_as_failed(
    proxy: FaultProxy, aws_stack: ProvisionedStack
) -> None:
    proxy.add(FaultRule("sqs", error="partial", count=1))
    entries = [
        {"Id": str(i), "MessageBody": body, "MessageGroupId": "g", "MessageDeduplicationId": body}
        for i, body in enumerate(("a", "b", "c"))
    ]
    answer = client("sqs", proxy.url).send_message_batch(QueueUrl=aws_stack.queue_url, Entries=entries)
    assert answer["Failed"]
    assert {e["Code"] for e in answer["Failed"]} == {"InternalError"}
    assert len(answer.get("Successful", [])) + len(answer["Failed"]) == 3
    assert queued_bodies(aws_stack) == ["a", "b", "c"]


def test_dynamodb_throttling_matches_its_operation_only(
    proxy: FaultProxy, aws_stack: ProvisionedStack
) -> None:
    proxy.add(FaultRule("dynamodb", error="throttle", operation="PutItem", count=1))
    dynamodb = client("dynamodb", proxy.url)
    key = {"pk": {"S": "chaos-test"}}
    assert "Item" not in dynamodb.get_item(TableName=aws_stack.table_name, Key=key)
    with pytest.raises(ClientError) as raised:
        dynamodb.put_item(TableName=aws_stack.table_name, Item=key)
    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    dynamodb.put_item(TableName=aws_stack.table_name, Item=key)
    assert dynamodb.get_item(TableName=aws_stack.table_name, Key=key)["Item"] == key


def test_a_slow_rule_forwards_late(proxy: FaultProxy, aws_stack: ProvisionedStack) -> None:
    proxy.add(FaultRule("sqs", error="slow", delay=0.05, count=1))
    send(client("sqs", proxy.url), aws_stack, "a")
    assert queued_bodies(aws_stack) == ["a"]
    assert proxy.stats()["injected"] == {"sqs.SendMessage slow/before": 1}


def test_rules_are_validated_and_requests_classified() -> None:
    with pytest.raises(ValueError, match="service"):
        FaultRule("lambda")
    with pytest.raises(ValueError, match="partial"):
        FaultRule("dynamodb", error="partial")
    with pytest.raises(ValueError, match="count"):
        FaultRule("sqs", count=0)
    assert classify_request({"X-Amz-Target": "AmazonSQS.SendMessageBatch"}) == ("sqs", "SendMessageBatch")
    assert classify_request({"X-Amz-Target": "DynamoDB_20120810.UpdateItem"}) == ("dynamodb", "UpdateItem")
    assert classify_request({}) == ("s3", "")
