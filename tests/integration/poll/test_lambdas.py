"""The Lambda handlers (poll fallback, example consumer) and `ohip-relay poll`, invoked in-process
with a fake Lambda context against the local gateway and moto."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest

from ohip_local.aws import CONSUMER_ROLE
from ohip_local.lambdas import load_function
from ohip_local.poll import business_event_data
from ohip_relay.cli import main
from ohip_relay.events import from_poll

from .conftest import PollRig

pytestmark = pytest.mark.integration


@dataclass
class FakeContext:
    remaining_ms: int = 60_000
    function_name: str = "test-function"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test-function"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def env(rig: PollRig, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    values = rig.env()
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_poll_lambda_runs_one_tick(rig: PollRig, env: dict[str, str]) -> None:
    emitted = rig.emit(5)  # no heartbeat: the fallback is active
    app = load_function("poll_fallback")
    result = app.handler({}, FakeContext())
    assert result["active"]
    assert result["published"] == 5
    assert result["errors"] == 0
    ids = {body["eventId"] for body in rig.receive()}
    assert ids == {f"poll:{rig.chain}:{e.business_event_id}" for e in emitted}
    assert set().union(*rig.recorded().values()) == ids  # recorded for the stream, once on the queue
    # too little time left: nothing is fetched
    rig.emit(3)
    result = app.handler({}, FakeContext(remaining_ms=5_000))
    assert (result["fetched"], result["ended"]) == (0, "time")
    assert rig.queued() == 3


def test_cli_poll_prints_a_one_line_summary(
    rig: PollRig, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    rig.emit(4)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(["poll"]) == 0
    finally:  # main() points the root logger at this test's captured stderr: put it back
        root.handlers[:] = handlers
        root.setLevel(level)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "fallback active" in out[0]
    assert "published 4" in out[0]


# -- the example consumer -------------------------------------------------------------------------


@pytest.fixture
def consumer(rig: PollRig, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    table = rig.stack.refs.get("IdempotencyTable")
    if table is None:  # a template without the example consumer's table: the same layout by hand
        table = f"{rig.stack.stack_name}-idempotency"
        rig.dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
    monkeypatch.setenv("IDEMPOTENCY_TABLE_NAME", table)
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED", raising=False)
    # Its own role (ConsumerRole), not the poll rig's: the module builds its clients on import.
    for name, value in rig.stack.credentials(CONSUMER_ROLE).environment().items():
        monkeypatch.setenv(name, value)
    return load_function("example_consumer")


def events_for(rig: PollRig, count: int, **kw: Any) -> list[dict[str, Any]]:
    relayed = datetime.now(UTC)
    return [from_poll(business_event_data(e), rig.chain, relayed).to_dict() for e in rig.emit(count, **kw)]


def sqs_event(bodies: list[str], *, fifo: bool, groups: list[str] | None = None) -> dict[str, Any]:
    arn = "arn:aws:sqs:us-east-1:123456789012:events" + (".fifo" if fifo else "")
    records = []
    for i, body in enumerate(bodies):
        attributes = {"ApproximateReceiveCount": "1", "SentTimestamp": "0"}
        if groups:
            attributes["MessageGroupId"] = groups[i]
            attributes["MessageDeduplicationId"] = f"d{i}"
        records.append(
            {
                "messageId": f"m{i}",
                "receiptHandle": f"r{i}",
                "body": body,
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "us-east-1",
            }
        )
    return {"Records": records}


def test_example_consumer_reports_partial_failures_and_is_idempotent(
    rig: PollRig, consumer: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[str] = []
    monkeypatch.setattr(consumer, "handle_event", lambda event: handled.append(event["eventKey"]))
    a, b, big = events_for(rig, 3)
    # `big` travels as a claim check
    rig.s3.put_object(Bucket=rig.stack.bucket_name, Key="oversize/big.json", Body=json.dumps(big).encode())
    pointer = {
        "schemaVersion": 1,
        "eventKey": big["eventKey"],
        "eventId": big["eventId"],
        "claimCheck": {"bucket": rig.stack.bucket_name, "key": "oversize/big.json", "bytes": 1},
    }
    bodies = [json.dumps(a), "not json", json.dumps(pointer), json.dumps(b), json.dumps({"no": "key"})]
    event = sqs_event(bodies, fifo=False)

    result = consumer.handler(event, FakeContext())
    assert result == {"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m4"}]}
    assert handled == [a["eventKey"], big["eventKey"], b["eventKey"]]

    # The same events again (a redelivery, or a duplicate from the relay): not processed twice.
    result = consumer.handler(
        sqs_event([json.dumps(b), json.dumps(a), json.dumps(pointer)], fifo=False), FakeContext()
    )
    assert result == {"batchItemFailures": []}
    assert handled == [a["eventKey"], big["eventKey"], b["eventKey"]]


def test_example_consumer_processes_lookalikes_once_each(
    rig: PollRig, consumer: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 16: two distinct events with one content key (the same field set twice within a
    # second). Idempotent on eventKey the consumer dropped the second; on eventId it handles both,
    # and a redelivery of either is still handled once.
    handled: list[str] = []
    monkeypatch.setattr(consumer, "handle_event", lambda event: handled.append(event["eventId"]))
    (first,) = events_for(rig, 1)
    twin = {**first, "eventId": first["eventId"] + "-twin"}
    assert twin["eventKey"] == first["eventKey"]
    bodies = [json.dumps(first), json.dumps(twin), json.dumps(first)]
    assert consumer.handler(sqs_event(bodies, fifo=False), FakeContext()) == {"batchItemFailures": []}
    assert handled == [first["eventId"], twin["eventId"]]


def test_example_consumer_on_fifo_holds_back_the_failed_group_only(
    rig: PollRig, consumer: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[str] = []
    monkeypatch.setattr(consumer, "handle_event", lambda event: handled.append(event["eventKey"]))
    a, b, c = events_for(rig, 3)
    bodies = [json.dumps(a), "not json", json.dumps(b), json.dumps(c)]
    event = sqs_event(bodies, fifo=True, groups=["g1", "g2", "g2", "g3"])
    result = consumer.handler(event, FakeContext())
    assert result == {"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]}
    assert handled == [a["eventKey"], c["eventKey"]]
