"""DynamoDB helpers for the integration tests of the state table's stores (registry, fleet):
a client that does not retry, a hook that plays a rival's call once, a fresh copy of the state
table per test, and an item as stored."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from ohip_local.aws import ProvisionedStack

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient


def client(stack: ProvisionedStack) -> DynamoDBClient:
    """A client of the local endpoint (the harness's credentials) that tries each call once."""
    return boto3.client(
        "dynamodb",
        endpoint_url=stack.endpoint_url,
        region_name=stack.region,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


def once(action: Callable[[], Any]) -> Callable[..., None]:
    """A botocore hook that runs `action` the first time it fires."""
    fired: list[bool] = []

    def hook(**_: Any) -> None:
        if not fired:
            fired.append(True)
            action()

    return hook


def with_fresh_table(stack: ProvisionedStack) -> ProvisionedStack:
    """`stack` with a fresh copy of its state table as `table_name` (~10 ms, where a whole stack
    takes most of a second)."""
    ddb = client(stack)
    table = ddb.describe_table(TableName=stack.table_name)["Table"]
    name = f"{stack.table_name}-{uuid.uuid4().hex[:8]}"
    ddb.create_table(
        TableName=name,
        KeySchema=table["KeySchema"],
        AttributeDefinitions=table["AttributeDefinitions"],
        BillingMode="PAY_PER_REQUEST",
    )
    return dataclasses.replace(stack, outputs={**stack.outputs, "TableName": name})


def raw_item(stack: ProvisionedStack, pk: str) -> dict[str, Any] | None:
    """The item `pk` of the stack's state table as DynamoDB stores it, or None."""
    item: dict[str, Any] | None = (
        client(stack).get_item(TableName=stack.table_name, Key={"pk": {"S": pk}}).get("Item")
    )
    return item
