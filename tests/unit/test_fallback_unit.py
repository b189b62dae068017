"""Pure parts of the poll fallback: options, the tick report, the outbound message, its settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ohip_relay.config import ConfigError, Need, Settings
from ohip_relay.events import from_poll
from ohip_relay.fallback import FallbackOptions, TickReport, deadline_after, outbound

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
    message = outbound(event)
    assert message.body == event.to_json()
    assert message.group_id == "HOTEL1:2241871"
    assert message.dedup_id == event.event_key
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
