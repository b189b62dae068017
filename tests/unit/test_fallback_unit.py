"""Pure parts of the poll fallback: options, the tick report, the outbound message, its settings,
the batch sender (against a fake SQS client) and the spill document format (against a fake S3)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ohip_relay.config import ConfigError, Need, Settings
from ohip_relay.events import deduplication_id, from_poll
from ohip_relay.fallback import (
    FallbackOptions,
    SpillStore,
    SqsBatchSender,
    TickReport,
    deadline_after,
    spill_stand_in,
)
from ohip_relay.publish import OutboundMessage, outbound_message

ITEM = {
    "businessEvent": {
        "header": {
            "moduleName": "Reservation",
            "actionType": "UPDATE RESERVATION",
            "actionId": 3311001,
            "primaryKey": "2241871",
            "publisherId": 7,
            "createdDateTime": "2026-11-25 10:15:38.0",
            "hotelId": "HOTEL1",
        },
        "details": [{"dataElement": "ROOM", "oldValue": "101", "newValue": "202"}],
    },
    "businessEventId": {"id": "7311001"},
}


def test_outbound_carries_the_same_ids_and_attributes_as_the_stream() -> None:
    event = from_poll(ITEM, "CHAIN", datetime(2026, 11, 25, 10, 16, tzinfo=UTC))
    message = outbound_message(event)
    assert message.body == event.to_json()
    assert message.group_id == "HOTEL1:2241871"
    # Identity, never content: the deduplication id comes from the businessEventId.
    assert message.event_id == event.event_id == "poll:CHAIN:7311001"
    assert message.event_key == event.event_key
    assert message.dedup_id == deduplication_id("poll:CHAIN:7311001") != event.event_key
    assert message.attributes == {
        "eventName": "UPDATE RESERVATION",
        "moduleName": "RESERVATION",
        "hotelId": "HOTEL1",
        "source": "poll",
        "schemaVersion": "1",
    }


def test_the_summary_is_one_line_of_counts() -> None:
    report = TickReport(healthy=False, active=True, started=True, reason="no heartbeat", fetched=3)
    report.published = 3
    text = report.summary()
    assert "\n" not in text
    assert text.startswith("stream unhealthy (no heartbeat); fallback active (started)")
    assert "published 3" in text
    assert report.counters()["activations"] == 1


@pytest.mark.parametrize(
    "changes",
    [{"page_limit": 0}, {"page_limit": 101}, {"handoff_reserve_s": 11.0}, {"send_attempts": 0}],
)
def test_options_are_validated(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        FallbackOptions(**changes)  # type: ignore[arg-type]


def test_deadline_after_counts_down_on_the_given_clock() -> None:
    now = [100.0]
    remaining = deadline_after(30, clock=lambda: now[0])
    assert remaining() == 30
    now[0] = 125.0
    assert remaining() == 5


BASE = {"OHIP_CHAIN_CODE": "CHAIN", "OHIP_EXTERNAL_SYSTEM": "RELAY"}


def test_fallback_settings_have_defaults() -> None:
    s = Settings.from_env(BASE, Need.POLL)
    assert (s.health_stale_seconds, s.health_grace_seconds, s.health_recover_seconds) == (30, 60, 120)
    assert (s.seen_ttl_days, s.poll_page_limit) == (8, 100)


def test_fallback_settings_are_read() -> None:
    env = {
        **BASE,
        "RELAY_HEALTH_STALE_SECONDS": "15",
        "RELAY_HEALTH_GRACE_SECONDS": "0",
        "RELAY_HEALTH_RECOVER_SECONDS": "300",
        "RELAY_SEEN_TTL_DAYS": "10",
        "RELAY_POLL_PAGE_LIMIT": "25",
    }
    s = Settings.from_env(env, Need.POLL)
    assert (s.health_stale_seconds, s.health_grace_seconds, s.health_recover_seconds) == (15, 0, 300)
    assert (s.seen_ttl_days, s.poll_page_limit) == (10, 25)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_SEEN_TTL_DAYS", "7"),  # must outlive OHIP's 7-day retention
        ("RELAY_SEEN_TTL_DAYS", "soon"),
        ("RELAY_POLL_PAGE_LIMIT", "0"),
        ("RELAY_POLL_PAGE_LIMIT", "101"),
        ("RELAY_POLL_PAGE_LIMIT", "2.5"),
        ("RELAY_HEALTH_STALE_SECONDS", "0"),
        ("RELAY_HEALTH_RECOVER_SECONDS", "-1"),
    ],
)
def test_bad_fallback_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        Settings.from_env({**BASE, name: value}, Need.POLL)


def test_the_ticks_aws_calls_cannot_hang_past_the_lambda_timeout() -> None:
    # Events the Poll API removed are held until SQS or S3 takes them: no AWS call may wait for
    # botocore's defaults (60 s connect and read, 5 attempts) inside a 50 s Lambda.
    from ohip_relay.fallback import _aws_clients

    settings = Settings.from_env({**BASE, "AWS_REGION": "eu-west-1"}, Need.POLL)
    for client in _aws_clients(settings):
        config = client.meta.config
        attempts = config.retries["total_max_attempts"]  # the first try included
        assert attempts * (config.connect_timeout + config.read_timeout) <= 25


# -- the batch sender ---------------------------------------------------------------------------

QUEUE = "https://sqs.local/123/events.fifo"


def error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "SendMessageBatch",
    )


class FakeSqs:
    """Refuses a whole request (as SQS may) when one body holds `poison`; else takes everything."""

    def __init__(self, *, poison: str = "POISON", fail: ClientError | None = None, max_size: int = 4096):
        self.poison = poison
        self.fail = fail
        self.max_size = max_size
        self.requests: list[list[str]] = []  # the message ids of each SendMessageBatch
        self.queued: list[dict[str, Any]] = []

    def get_queue_attributes(self, **_: Any) -> dict[str, Any]:
        return {"Attributes": {"MaximumMessageSize": str(self.max_size)}}

    def send_message_batch(self, *, QueueUrl: str, Entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
        self.requests.append([e["Id"] for e in Entries])
        if self.fail is not None:
            raise self.fail
        if any(self.poison in e["MessageBody"] for e in Entries):
            raise error("InvalidMessageContents", 400)
        self.queued.extend(Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self.objects[Key] = Body

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        return {"Body": io.BytesIO(self.objects[Key])}


def message(n: int, body: str = "") -> OutboundMessage:
    return OutboundMessage(
        body=body or json.dumps({"n": n}),
        attributes={"source": "poll"},
        group_id=f"g{n}",
        dedup_id=f"i-{n}",
        event_key=f"v1-{n}",
        event_id=f"poll:CHAIN:{n}",
    )


def sender(sqs: FakeSqs, s3: FakeS3 | None = None) -> SqsBatchSender:
    return SqsBatchSender(
        sqs,  # type: ignore[arg-type]
        QUEUE,
        s3=s3,  # type: ignore[arg-type]
        claim_check_bucket="bucket" if s3 else "",
        attempts=2,
        sleep=lambda _: None,
    )


def test_a_message_too_large_without_a_claim_check_bucket_is_refused_alone() -> None:
    sqs = FakeSqs()
    result = sender(sqs).send([message(0), message(1, "x" * 5000), message(2)])
    assert (result.acknowledged, result.unsent, result.rejected) == ([0, 2], [], [1])
    assert result.reasons == {1: "MessageTooLarge"}
    assert result.complete


def test_a_request_refused_for_one_messages_content_is_sent_one_by_one() -> None:
    sqs = FakeSqs()
    messages = [message(0), message(1), message(2, '{"v":"POISON"}'), message(3)]
    result = sender(sqs).send(messages)
    assert (result.acknowledged, result.unsent, result.rejected) == ([0, 1, 3], [], [2])
    assert result.reasons == {2: "InvalidMessageContents"}
    assert [e["Id"] for e in sqs.queued] == ["0", "1", "3"]  # in order
    assert sqs.requests == [["0", "1", "2", "3"], ["0"], ["1"], ["2"], ["3"]]


@pytest.mark.parametrize(
    ("code", "status"), [("AWS.SimpleQueueService.NonExistentQueue", 400), ("ServiceUnavailable", 503)]
)
def test_trouble_of_the_queue_leaves_everything_unsent_for_the_spill(code: str, status: int) -> None:
    sqs = FakeSqs(fail=error(code, status))
    result = sender(sqs).send([message(0), message(1)])
    assert (result.acknowledged, result.unsent, result.rejected, result.code) == ([], [0, 1], [], code)
    assert len(sqs.requests) == (2 if status == 503 else 1)  # retried only when it may pass


def test_a_claim_check_pointer_names_the_event() -> None:
    sqs, s3 = FakeSqs(), FakeS3()
    result = sender(sqs, s3).send([message(7, "y" * 5000)])
    assert result.acknowledged == [0]
    pointer = json.loads(sqs.queued[0]["MessageBody"])
    assert (pointer["eventKey"], pointer["eventId"]) == ("v1-7", "poll:CHAIN:7")
    assert pointer["claimCheck"]["key"] == "oversize/i-7.json"
    assert s3.objects["oversize/i-7.json"] == b"y" * 5000


# -- spill documents ----------------------------------------------------------------------------


def test_a_spill_keeps_the_stand_in_ids_and_old_documents_stay_readable() -> None:
    s3 = FakeS3()
    store = SpillStore(s3, "bucket", "CHAIN", clock=lambda: 1_800_000_000.0)  # type: ignore[arg-type]
    with_id = {"businessEvent": {}, "businessEventId": {"id": "1"}}
    without = {"businessEvent": {}}
    key = store.spill([(with_id, None), (without, "abc123")], "ServiceUnavailable")
    document = json.loads(s3.objects[key])
    assert document["schemaVersion"] == 2
    assert document["items"] == [with_id, without]
    assert document["standInIds"] == [None, "abc123"]
    loaded = store.load(key)
    assert loaded[1] == (without, "abc123")
    assert loaded[0][0] == with_id
    # Version 1 (no standInIds): a stand-in derived from the object, the same on every read.
    old = "spill/CHAIN/000000000000001-old.json"
    s3.objects[old] = json.dumps({"schemaVersion": 1, "items": [with_id, without]}).encode()
    first, second = store.load(old), store.load(old)
    assert first == second
    assert first[1] == (without, spill_stand_in(old, 1))
    assert spill_stand_in(old, 1) != spill_stand_in(old, 0)
