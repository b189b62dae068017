"""The benchmark's SQS sink speaks the protocol boto3 uses for SQS (AWS JSON 1.0): a smoke test.

Speed is never asserted here; `make bench` measures it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future

import boto3
import pytest
from bench.sqs_sink import Records, start
from botocore.exceptions import ClientError

pytestmark = pytest.mark.integration


@pytest.fixture
def sink() -> Iterator[tuple[str, Records]]:
    ready: Future[tuple[str, Records]] = Future()
    stop: Future[None] = Future()

    async def main() -> None:
        runner, url, records = await start()
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        stop.add_done_callback(lambda _: loop.call_soon_threadsafe(done.set))
        ready.set_result((url, records))
        await done.wait()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    yield ready.result(10)
    stop.set_result(None)
    thread.join(10)


def test_boto3_sqs_calls_are_acknowledged_and_counted(sink: tuple[str, Records]) -> None:
    url, records = sink
    sqs = boto3.client(
        "sqs", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    queue = f"{url}/123456789012/bench.fifo"
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["MaximumMessageSize"])
    assert attributes["Attributes"]["MaximumMessageSize"] == "1048576"
    response = sqs.send_message_batch(
        QueueUrl=queue,
        Entries=[
            {
                "Id": str(i),
                "MessageBody": f'{{"offset":"{1001 + i}"}}',
                "MessageGroupId": "g",
                "MessageDeduplicationId": f"d{i}",
                "MessageAttributes": {"source": {"DataType": "String", "StringValue": "stream"}},
            }
            for i in range(10)
        ],
    )
    assert sorted(int(ok["Id"]) for ok in response["Successful"]) == list(range(10))
    assert response["Failed"] == []
    single = sqs.send_message(
        QueueUrl=queue, MessageBody="{}", MessageGroupId="g", MessageDeduplicationId="e"
    )
    assert single["MessageId"]
    assert list(records.offsets) == [*range(1001, 1011), -1]
    with pytest.raises(ClientError) as refused:
        sqs.receive_message(QueueUrl=queue)
    assert refused.value.response["Error"]["Code"] == "UnsupportedOperation"


def test_dynamodb_put_item_is_acknowledged(sink: tuple[str, Records]) -> None:
    url, records = sink
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    dynamodb.put_item(TableName="t", Item={"pk": {"S": "checkpoint"}, "offset": {"N": "5"}})
    assert records.dynamodb_puts == 1
