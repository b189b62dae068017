"""The publisher's pure parts: sizes, claim-check pointer, batch scheduling, error classes, backoff."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError, ReadTimeoutError

from ohip_relay.publish import (
    SQS_LEGACY_PAYLOAD_BYTES,
    SQS_MAX_PAYLOAD_BYTES,
    BatchScheduler,
    Entry,
    OutboundMessage,
    PublisherConfig,
    attributes_size,
    backoff_delay,
    batch_payload_limit,
    claim_check_key,
    claim_check_pointer,
    classify_error,
    message_size,
)


def _entry(seq: int, group: str | None = "g", size: int = 100) -> Entry:
    message = OutboundMessage(
        body="{}", attributes={}, group_id=group or "", dedup_id=f"d{seq}", ack_token=seq
    )
    return Entry(seq=seq, message=message, wire_body="{}", size=size, group=group)


# -- sizes and pointer --------------------------------------------------------------------------


def test_message_size_counts_utf8_bytes_and_attribute_parts() -> None:
    assert attributes_size({"hotelId": "H1"}) == len("hotelId") + len("String") + len("H1")
    assert message_size("é", {}) == 2
    assert message_size("abc", {"k": "vé"}) == 3 + 1 + 6 + 3


def test_batch_limit_follows_the_queue_generation() -> None:
    assert batch_payload_limit(262_144) == SQS_LEGACY_PAYLOAD_BYTES
    assert batch_payload_limit(1024) == SQS_LEGACY_PAYLOAD_BYTES
    assert batch_payload_limit(1_048_576) == SQS_MAX_PAYLOAD_BYTES


def test_claim_check_pointer_document() -> None:
    key = claim_check_key("oversize/", "abc123")
    assert key == "oversize/abc123.json"
    pointer = json.loads(claim_check_pointer("abc123", "bucket-1", key, 300_000))
    assert pointer == {
        "schemaVersion": 1,
        "eventKey": "abc123",
        "claimCheck": {"bucket": "bucket-1", "key": "oversize/abc123.json", "bytes": 300_000},
    }


def test_message_repr_never_shows_the_body() -> None:
    message = OutboundMessage(body="Jane Doe jane@example.com", attributes={}, group_id="g", dedup_id="d")
    assert "jane" not in repr(message).lower()


# -- scheduling ---------------------------------------------------------------------------------


def test_one_active_entry_per_group_in_submit_order() -> None:
    scheduler = BatchScheduler()
    entries = [_entry(0, "a"), _entry(1, "a"), _entry(2, "b"), _entry(3, "a"), _entry(4, "c")]
    for entry in entries:
        scheduler.add(entry)
    assert (scheduler.ready_count, scheduler.waiting_count) == (3, 2)
    first = scheduler.take_batch(10, 10_000)
    assert [e.seq for e in first] == [0, 2, 4]  # one per group, oldest first
    assert scheduler.take_batch(10, 10_000) == []  # group a is busy until entry 0 settles
    scheduler.finish(entries[0])
    assert [e.seq for e in scheduler.take_batch(10, 10_000)] == [1]
    scheduler.finish(entries[1])
    scheduler.finish(entries[2])
    assert [e.seq for e in scheduler.take_batch(10, 10_000)] == [3]


def test_retried_entry_keeps_its_group_blocked_and_goes_first() -> None:
    scheduler = BatchScheduler()
    entries = [_entry(0, "a"), _entry(1, "a"), _entry(2, "b")]
    for entry in entries:
        scheduler.add(entry)
    batch = scheduler.take_batch(10, 10_000)
    assert [e.seq for e in batch] == [0, 2]
    scheduler.finish(entries[2])  # b acknowledged; a failed and is retried later
    assert scheduler.take_batch(10, 10_000) == []
    scheduler.requeue(entries[0])
    scheduler.add(_entry(3, "c"))
    assert [e.seq for e in scheduler.take_batch(10, 10_000)] == [0, 3]  # entry 1 still waits behind 0


def test_without_groups_everything_is_ready() -> None:
    scheduler = BatchScheduler()
    for seq in range(25):
        scheduler.add(_entry(seq, None))
    sizes = [len(scheduler.take_batch(10, 10_000)) for _ in range(4)]
    assert sizes == [10, 10, 5, 0]


def test_batch_respects_the_payload_limit() -> None:
    scheduler = BatchScheduler()
    for seq, size in enumerate([400, 400, 300, 100]):
        scheduler.add(_entry(seq, None, size=size))
    assert scheduler.ready_bytes == 1200
    assert [e.seq for e in scheduler.take_batch(10, 1000)] == [0, 1]  # 400 + 400; + 300 would not fit
    assert [e.seq for e in scheduler.take_batch(10, 1000)] == [2, 3]
    big = _entry(9, None, size=5000)
    scheduler.add(big)
    assert scheduler.take_batch(10, 1000) == [big]  # alone, even over the limit: SQS will judge


def test_solo_entries_go_alone() -> None:
    scheduler = BatchScheduler()
    entries = [_entry(seq, None) for seq in range(4)]
    for entry in entries:
        entry.solo = True
        scheduler.requeue(entry)
    assert [[e.seq for e in scheduler.take_batch(10, 10_000)] for _ in range(4)] == [[0], [1], [2], [3]]


def test_drain_returns_everything_owned() -> None:
    scheduler = BatchScheduler()
    for seq in range(5):
        scheduler.add(_entry(seq, "a" if seq < 3 else "b"))
    assert sorted(e.seq for e in scheduler.drain()) == [0, 1, 2, 3, 4]
    assert (scheduler.ready_count, scheduler.waiting_count, scheduler.ready_bytes) == (0, 0, 0)


@pytest.mark.parametrize("seed", range(10))
def test_random_schedules_never_run_two_of_a_group_at_once(seed: int) -> None:
    """Property: whatever the mix of acks, retries and new entries, at most one entry per group is
    taken at a time and each group's entries are acknowledged in submit order."""
    rng = random.Random(seed)
    scheduler = BatchScheduler()
    groups = ["a", "b", "c", "d"]
    submitted: dict[str, list[int]] = {g: [] for g in groups}
    acked: dict[str, list[int]] = {g: [] for g in groups}
    in_flight: list[Entry] = []
    seq = 0
    for _ in range(400):
        action = rng.random()
        if action < 0.4:
            group = rng.choice(groups)
            scheduler.add(_entry(seq, group))
            submitted[group].append(seq)
            seq += 1
        elif action < 0.6:
            batch = scheduler.take_batch(rng.randint(1, 10), 10_000)
            in_flight.extend(batch)
            busy = [e.group for e in in_flight]
            assert len(busy) == len(set(busy))
        elif in_flight:
            entry = in_flight.pop(rng.randrange(len(in_flight)))
            if rng.random() < 0.3:
                scheduler.requeue(entry)  # retried
            else:
                assert entry.group is not None
                acked[entry.group].append(entry.seq)
                scheduler.finish(entry)
    for group in groups:
        assert acked[group] == submitted[group][: len(acked[group])]


# -- errors and backoff -------------------------------------------------------------------------


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "SendMessageBatch")


@pytest.mark.parametrize(
    ("exc", "retryable", "code"),
    [
        (_client_error("ThrottlingException", 400), True, "ThrottlingException"),
        (_client_error("RequestThrottled", 403), True, "RequestThrottled"),
        (_client_error("InternalError", 500), True, "InternalError"),
        (_client_error("Whatever", 503), True, "Whatever"),
        (_client_error("AccessDenied", 403), False, "AccessDenied"),
        (_client_error("InvalidParameterValue", 400), False, "InvalidParameterValue"),
        (EndpointConnectionError(endpoint_url="http://x"), True, "EndpointConnectionError"),
        (ReadTimeoutError(endpoint_url="http://x"), True, "ReadTimeoutError"),
        (ParamValidationError(report="bad"), False, "ParamValidationError"),
        (RuntimeError("boom"), False, "RuntimeError"),
    ],
)
def test_classify_error(exc: BaseException, retryable: bool, code: str) -> None:
    got_retryable, got_code, _ = classify_error(exc)
    assert (got_retryable, got_code) == (retryable, code)


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(2.0, 0.1 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 0.1, 2.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_buffered": 0},
        {"max_batches_in_flight": 0},
        {"max_batch_entries": 11},
        {"batch_window_s": -1},
        {"max_attempts": 0},
    ],
)
def test_config_is_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must"):
        PublisherConfig(**kwargs)  # type: ignore[arg-type]
