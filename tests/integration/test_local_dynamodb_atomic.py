"""The local AWS endpoint applies each DynamoDB item write atomically, as DynamoDB does: of writers
racing with one conditional write on one item, exactly one wins (aws.py `SerialDynamoDB`).

Without it, moto's threaded server let two of eight racing `attribute_not_exists` UpdateItems win on
2 of 60 keys (moto in its own process); in the fleet chaos suite (seed 13) two relays both took
generation 1 of one lease. In this process the race shows less often (about one run in three
without the lock): a regression guard, not a proof.
"""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError

from ohip_local.aws import DEFAULT_REGION, local_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RACERS = 8
KEYS = 80


def test_of_racing_conditional_writes_on_one_item_exactly_one_wins(aws_endpoint: str) -> None:
    table = "atomic-writes"
    admin = local_client("dynamodb", aws_endpoint, DEFAULT_REGION)
    admin.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    clients = [local_client("dynamodb", aws_endpoint, DEFAULT_REGION) for _ in range(RACERS)]
    winners: dict[str, list[int]] = {}
    refused: list[str] = []

    def take(racer: int, key: str, start: threading.Barrier, won: list[int]) -> None:
        start.wait()
        try:
            clients[racer].update_item(
                TableName=table,
                Key={"pk": {"S": key}},
                UpdateExpression="SET #owner = :me ADD #generation :one",
                ConditionExpression="attribute_not_exists(#pk)",
                ExpressionAttributeNames={"#pk": "pk", "#owner": "owner", "#generation": "generation"},
                ExpressionAttributeValues={":me": {"S": str(racer)}, ":one": {"N": "1"}},
            )
            won.append(racer)
        except ClientError as exc:
            refused.append(exc.response["Error"]["Code"])

    try:
        for n in range(KEYS):
            key = f"lease#{n}"
            start = threading.Barrier(RACERS)
            won = winners.setdefault(key, [])
            racers = [threading.Thread(target=take, args=(i, key, start, won)) for i in range(RACERS)]
            for racer in racers:
                racer.start()
            for racer in racers:
                racer.join(30)
            item = admin.get_item(TableName=table, Key={"pk": {"S": key}}, ConsistentRead=True)["Item"]
            assert item["generation"] == {"N": "1"}, (key, item)
            assert [int(item["owner"]["S"])] == won, (key, won)
    finally:
        admin.delete_table(TableName=table)
    assert all(len(won) == 1 for won in winners.values()), winners
    assert set(refused) == {"ConditionalCheckFailedException"}
    assert len(refused) == KEYS * (RACERS - 1)
