"""The local AWS endpoint is provisioned from template.yaml, so the two cannot drift."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import boto3
import pytest

from ohip_local.aws import LocalStackError, ProvisionedStack, load_template, moto_server, provision

from ..conftest import TEMPLATE

pytestmark = pytest.mark.integration


def _client(stack: ProvisionedStack, service: str) -> Any:
    return boto3.client(service, endpoint_url=stack.endpoint_url, region_name=stack.region)  # type: ignore[call-overload]


def test_fifo_queue_matches_template(aws_stack: ProvisionedStack) -> None:
    template = load_template(TEMPLATE)["Resources"]
    sqs = _client(aws_stack, "sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=aws_stack.queue_url, AttributeNames=["All"])["Attributes"]
    assert aws_stack.queue_url.endswith(".fifo")
    assert attrs["FifoQueue"] == "true"
    assert attrs["VisibilityTimeout"] == str(template["EventsQueue"]["Properties"]["VisibilityTimeout"])
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(aws_stack.dlq_url.rsplit("/", 1)[1])
    assert int(redrive["maxReceiveCount"]) == 5


def test_standard_queue_parameter(aws_stack_standard: ProvisionedStack) -> None:
    assert not aws_stack_standard.queue_url.endswith(".fifo")
    attrs = _client(aws_stack_standard, "sqs").get_queue_attributes(
        QueueUrl=aws_stack_standard.queue_url, AttributeNames=["All"]
    )["Attributes"]
    assert "FifoQueue" not in attrs


def test_table_has_ttl_and_key(aws_stack: ProvisionedStack) -> None:
    ddb = _client(aws_stack, "dynamodb")
    table = ddb.describe_table(TableName=aws_stack.table_name)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    ttl = ddb.describe_time_to_live(TableName=aws_stack.table_name)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expiresAt"


def test_bucket_blocks_public_access(aws_stack: ProvisionedStack) -> None:
    block = _client(aws_stack, "s3").get_public_access_block(Bucket=aws_stack.bucket_name)
    assert all(block["PublicAccessBlockConfiguration"].values())


def test_unknown_property_is_refused(aws_endpoint: str, tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    text = "Resources:\n  Q:\n    Type: AWS::SQS::Queue\n    Properties:\n      SomethingNew: 1\n"
    template.write_text(text, encoding="utf-8")
    with pytest.raises(LocalStackError, match="does not reproduce SomethingNew"):
        provision(aws_endpoint, template, stack_name="bad")


def test_busy_port_is_one_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with (
            pytest.raises(LocalStackError, match=f"port {port} on 127.0.0.1 is already in use"),
            moto_server(port=port),
        ):
            pass
