"""The enricher's pure parts: routing, Retry-After, the HTTP rules per answer (over httpx's in-memory
transport), the enriched document, batch bookkeeping, settings, and that the relay never loads it."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ohip_relay.auth import OAuthParams, SyncTokenProvider
from ohip_relay.config import ConfigError, Need, Settings
from ohip_relay.enrich import (
    ENRICHED_FIELDS,
    BatchReport,
    Enricher,
    EnrichOptions,
    Fetched,
    InputRecord,
    RecordFailed,
    ResourceFetcher,
    ResourceStatus,
    RoutingTable,
    _retry_after,
    enriched_document,
    enriched_message,
)
from ohip_relay.events import CanonicalEvent
from ohip_relay.fallback import SendResult
from ohip_relay.publish import OutboundMessage
from ohip_relay.telemetry import Metric, Telemetry

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "https://ohip.example.test"
WHEN = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def event(
    module: str = "RESERVATION",
    name: str = "UPDATE RESERVATION",
    key: str = "919074",
    hotel: str | None = "HOTEL1",
    event_key: str = "e" * 64,
) -> CanonicalEvent:
    return CanonicalEvent(
        event_key=event_key,
        event_id="stream:CHAIN:12:u-1",
        source="stream",
        chain_code="CHAIN",
        hotel_id=hotel,
        module_name=module,
        event_name=name,
        primary_key=key,
        offset="12",
        unique_event_id="u-1",
        business_event_id=None,
        publisher_id="p",
        action_instance_id="a",
        occurred_at=WHEN,
        relayed_at=WHEN,
    )


# -- routing -------------------------------------------------------------------------------------


def test_default_routes_cover_reservations_and_profiles() -> None:
    table = RoutingTable.load()
    assert table.path_for(event()) == "/rsv/v1/hotels/HOTEL1/reservations/919074"
    assert table.path_for(event("PROFILE", "NEW PROFILE", key="77")) == "/crm/v1/profiles/77"
    assert table.path_for(event("BLOCK", "NEW BLOCK")) is None
    # a reservation route needs a hotel: a chain-level event is passed on unenriched
    assert table.path_for(event(hotel=None)) is None


def test_identifiers_are_escaped_into_one_path_segment() -> None:
    assert RoutingTable.load().path_for(event(key="a/b c")) == "/rsv/v1/hotels/HOTEL1/reservations/a%2Fb%20c"


def test_an_event_entry_wins_over_its_module_and_null_leaves_events_unenriched() -> None:
    table = RoutingTable.parse(
        json.dumps(
            {
                "version": 1,
                "routes": [
                    {"module": "Reservation", "path": "/rsv/v1/hotels/{hotelId}/reservations/{primaryKey}"},
                    {"module": "reservation", "events": ["cancel  reservation"], "path": None},
                    {"module": "BlockOffsets", "path": "/blk/v1/chains/{chainCode}/blocks/{primaryKey}"},
                ],
            }
        )
    )
    assert table.path_for(event(name="UPDATE RESERVATION")) is not None
    assert table.path_for(event(name="CANCEL RESERVATION")) is None
    assert table.path_for(event("BLOCK_OFFSETS", "NEW BLOCK")) == "/blk/v1/chains/CHAIN/blocks/919074"


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("[", "not JSON"),
        ('{"version": 2, "routes": []}', '"version": 1'),
        ('{"version": 1}', '"routes" list'),
        ('{"version": 1, "routes": [{"module": "X", "path": "/x/{reservationId}"}]}', "'reservationId'"),
        ('{"version": 1, "routes": [{"module": "X", "path": "/x?id={primaryKey}"}]}', "without query"),
        ('{"version": 1, "routes": [{"module": "X", "path": "x/{primaryKey}"}]}', "absolute path"),
        ('{"version": 1, "routes": [{"module": "X", "path": "/x/{primaryKey!r}"}]}', "format spec"),
        ('{"version": 1, "routes": [{"module": "X", "path": "/x/{primaryKey"}]}', "unbalanced"),
        ('{"version": 1, "routes": [{"module": "X"}]}', "path: missing"),
        ('{"version": 1, "routes": [{"module": "X", "path": null, "verb": "GET"}]}', "'verb'"),
        ('{"version": 1, "routes": [{"module": "", "path": null}]}', "module"),
        ('{"version": 1, "routes": [{"module": "X", "events": [], "path": null}]}', "events"),
        ('{"version": 1, "routes": [{"module": "X", "path": null}, {"module": "x", "path": null}]}', "twice"),
    ],
)
def test_bad_routing_files_are_refused_with_the_reason(document: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        RoutingTable.parse(document)


def test_loading_names_the_setting_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^OHIP_ENRICH_ROUTES: cannot read .*missing\.json"):
        RoutingTable.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "routes.json"
    bad.write_text('{"version": 1, "routes": [{"module": "X", "path": "/{hotel}"}]}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^OHIP_ENRICH_ROUTES: .*routes\.json: routes\[0\]\.path"):
        RoutingTable.load(str(bad))


def test_the_packaged_routes_file_is_valid_and_documented() -> None:
    text = (ROOT / "shared" / "ohip_relay" / "routes" / "enrich-routes.json").read_text(encoding="utf-8")
    modules = {route.module for route in RoutingTable.parse(text).routes}
    assert modules == {"RESERVATION", "PROFILE"}
    assert "enrich-routes.json" in (ROOT / "docs" / "enrichment.md").read_text(encoding="utf-8")


# -- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),
        ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),  # in the past: go now
        ("-3", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert _retry_after(value, WHEN.timestamp()) == seconds


# -- the HTTP rules ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


Answer = Callable[[httpx.Request], httpx.Response]


class Gateway:
    """An in-memory OHIP gateway: a token endpoint and scripted answers to the REST GETs."""

    def __init__(self, *answers: httpx.Response | Answer) -> None:
        self.answers = list(answers)
        self.tokens = 0
        self.gets: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/v1/tokens":
            self.tokens += 1
            return httpx.Response(200, json={"access_token": f"t{self.tokens}", "expires_in": 3600})
        self.gets.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(request) if callable(answer) else answer


def fetcher(gateway: Gateway, clock: Clock, **options: Any) -> ResourceFetcher:
    http = httpx.Client(transport=httpx.MockTransport(gateway))
    params = OAuthParams(gateway_url=GATEWAY, client_id="id", client_secret="s", app_key="key")
    return ResourceFetcher(
        http,
        SyncTokenProvider(params, http, clock=clock),
        RoutingTable.load(),
        gateway_url=GATEWAY,
        app_key="key",
        options=EnrichOptions(**options),
        sleep=clock.sleep,
        clock=clock,
        wall_clock=lambda: WHEN.timestamp() + clock.now,
    )


def ok(body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, json=body if body is not None else {"reservations": {"reservation": []}})


def time_left(seconds: float = 40.0) -> Callable[[], float]:
    return lambda: seconds


def test_a_found_resource_and_the_request_it_took() -> None:
    gateway, clock = Gateway(ok({"id": 1})), Clock()
    fetched = fetcher(gateway, clock).fetch(event(), time_left())
    assert (fetched.status, fetched.resource, fetched.retries) == (ResourceStatus.FOUND, {"id": 1}, 0)
    (request,) = gateway.gets
    assert str(request.url) == f"{GATEWAY}/rsv/v1/hotels/HOTEL1/reservations/919074"
    assert request.headers["Authorization"] == "Bearer t1"
    assert request.headers["x-app-key"] == "key"
    assert request.headers["x-hotelid"] == "HOTEL1"
    assert clock.sleeps == []


def test_404_is_not_found_not_an_error() -> None:
    fetched = fetcher(Gateway(httpx.Response(404)), Clock()).fetch(event(), time_left())
    assert (fetched.status, fetched.resource) == (ResourceStatus.NOT_FOUND, None)
    assert fetched.fetched_at is not None


def test_401_refreshes_the_token_once() -> None:
    gateway = Gateway(httpx.Response(401), ok())
    fetched = fetcher(gateway, Clock()).fetch(event(), time_left())
    assert fetched.status is ResourceStatus.FOUND
    assert fetched.retries == 1
    assert [r.headers["Authorization"] for r in gateway.gets] == ["Bearer t1", "Bearer t2"]


def test_a_second_401_fails_the_record() -> None:
    gateway = Gateway(httpx.Response(401))
    with pytest.raises(RecordFailed, match="401"):
        fetcher(gateway, Clock()).fetch(event(), time_left())
    assert (len(gateway.gets), gateway.tokens) == (2, 2)


def test_429_waits_for_retry_after() -> None:
    gateway, clock = Gateway(httpx.Response(429, headers={"Retry-After": "3"}), ok()), Clock()
    assert fetcher(gateway, clock).fetch(event(), time_left()).status is ResourceStatus.FOUND
    assert clock.sleeps == [3.0]


def test_429_without_retry_after_waits_the_default() -> None:
    gateway, clock = Gateway(httpx.Response(429), ok()), Clock()
    fetcher(gateway, clock, default_retry_after_s=1.5).fetch(event(), time_left())
    assert clock.sleeps == [1.5]


def test_429_longer_than_the_remaining_time_fails_at_once() -> None:
    gateway, clock = Gateway(httpx.Response(429, headers={"Retry-After": "60"})), Clock()
    with pytest.raises(RecordFailed, match="Retry-After"):
        fetcher(gateway, clock).fetch(event(), time_left(40.0))
    assert (clock.sleeps, len(gateway.gets)) == ([], 1)


def test_429_again_and_again_gives_up() -> None:
    gateway, clock = Gateway(httpx.Response(429, headers={"Retry-After": "1"})), Clock()
    with pytest.raises(RecordFailed, match="too many times"):
        fetcher(gateway, clock, throttle_attempts=2).fetch(event(), time_left())
    assert len(gateway.gets) == 3


def test_a_429_pauses_the_other_calls_too() -> None:
    gateway, clock = Gateway(httpx.Response(429, headers={"Retry-After": "4"}), ok()), Clock()
    shared = fetcher(gateway, clock)
    shared._throttle.pause(4.0)  # another worker was told to wait 4 s a moment ago
    shared.fetch(event(key="other"), time_left())
    assert clock.sleeps[0] == 4.0


def test_5xx_is_retried_with_growing_backoff_then_fails() -> None:
    gateway, clock = Gateway(httpx.Response(503)), Clock()
    with pytest.raises(RecordFailed, match=r"HTTP 503\), 3 times"):
        fetcher(gateway, clock, backoff_base_s=0.5).fetch(event(), time_left())
    assert len(gateway.gets) == 3
    assert len(clock.sleeps) == 2
    assert 0.25 <= clock.sleeps[0] <= 0.5
    assert 0.5 <= clock.sleeps[1] <= 1.0


def test_transport_errors_count_as_5xx() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    gateway, clock = Gateway(broken, ok()), Clock()
    fetched = fetcher(gateway, clock).fetch(event(), time_left())
    assert (fetched.status, fetched.retries) == (ResourceStatus.FOUND, 1)


def test_no_backoff_beyond_the_remaining_time() -> None:
    gateway, clock = Gateway(httpx.Response(500)), Clock()
    with pytest.raises(RecordFailed, match="no time left"):
        fetcher(gateway, clock, backoff_base_s=4.0).fetch(event(), time_left(7.0))
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(403),
        httpx.Response(400),
        httpx.Response(200, content=b"<html>"),
        httpx.Response(200, json=[]),
    ],
)
def test_other_answers_fail_the_record(answer: httpx.Response) -> None:
    with pytest.raises(RecordFailed):
        fetcher(Gateway(answer), Clock()).fetch(event(), time_left())


def test_unrouted_events_make_no_call() -> None:
    gateway = Gateway(ok())
    fetched = fetcher(gateway, Clock()).fetch(event("BLOCK", "NEW BLOCK"), time_left())
    assert fetched.status is ResourceStatus.UNROUTED
    assert gateway.gets == []


# -- the enriched message --------------------------------------------------------------------------


def test_the_enriched_document_is_the_canonical_event_plus_three_fields() -> None:
    raw = event()
    document = enriched_document(raw, Fetched(ResourceStatus.FOUND, {"id": 1}, WHEN))
    assert list(document)[-3:] == list(ENRICHED_FIELDS)
    assert {k: v for k, v in document.items() if k not in ENRICHED_FIELDS} == raw.to_dict()
    assert document["resource"] == {"id": 1}
    assert document["resourceFetchedAt"] == "2026-03-01T12:00:00.000Z"
    unrouted = enriched_document(raw, Fetched(ResourceStatus.UNROUTED))
    assert (unrouted["resourceStatus"], unrouted["resource"], unrouted["resourceFetchedAt"]) == (
        "unrouted",
        None,
        None,
    )
    message = enriched_message(raw, Fetched(ResourceStatus.NOT_FOUND, None, WHEN))
    assert message.attributes["resourceStatus"] == "not_found"
    assert (message.group_id, message.dedup_id) == (raw.message_group_id(), raw.deduplication_id())


# -- a batch -------------------------------------------------------------------------------------


class Sent:
    def __init__(self) -> None:
        self.messages: list[OutboundMessage] = []

    def send(self, messages: Sequence[OutboundMessage]) -> SendResult:
        self.messages.extend(messages)
        return SendResult(list(range(len(messages))), [])


def record(n: int, body: str, group: str | None = None) -> InputRecord:
    return InputRecord(message_id=f"m{n}", body=body, group_id=group)


def test_a_failed_record_holds_back_its_group_only_and_poison_is_counted() -> None:
    # resource A: its first GET answers 503 for good; resource B is fine
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503) if request.url.path.endswith("/A") else ok()

    sender, telemetry = Sent(), Telemetry(service="enricher")
    enricher = Enricher(fetcher(Gateway(answer), Clock()), sender, telemetry)
    a1, a2 = event(key="A", event_key="a" * 64), event(key="A", event_key="b" * 64)
    b1 = event(key="B", event_key="c" * 64)
    records = [
        record(1, a1.to_json(), "HOTEL1:A"),
        record(2, b1.to_json(), "HOTEL1:B"),
        record(3, "{not json", "poison"),
        record(4, a2.to_json(), "HOTEL1:A"),
    ]
    report = enricher.run(records, time_left())
    assert report.failed == ["m1", "m3", "m4"]  # in the batch's order
    assert (report.enriched, report.poison) == (1, 1)
    assert [json.loads(m.body)["eventKey"] for m in sender.messages] == [b1.event_key]
    totals = telemetry.totals()
    assert totals[Metric.ENRICH_ERRORS.value] == 3
    assert totals[Metric.ENRICHED.value] == 1


def test_records_sqs_did_not_take_fail_too() -> None:
    class Refusing(Sent):
        def send(self, messages: Sequence[OutboundMessage]) -> SendResult:
            return SendResult([0], [1], "ServiceUnavailable")

    enricher = Enricher(fetcher(Gateway(ok()), Clock()), Refusing(), Telemetry(service="enricher"))
    records = [record(1, event(event_key="a" * 64).to_json()), record(2, event(event_key="b" * 64).to_json())]
    report = enricher.run(records, time_left())
    assert report.failed == ["m2"]
    assert report.enriched == 1
    assert isinstance(report, BatchReport)
    assert "failed 1" in report.summary()


def test_a_lambda_record_keeps_its_message_group() -> None:
    rec = InputRecord.from_lambda({"messageId": "x", "body": "{}", "attributes": {"MessageGroupId": "g"}})
    assert (rec.message_id, rec.group_id) == ("x", "g")
    assert InputRecord.from_lambda({"messageId": "y", "body": "{}", "attributes": {}}).group_id is None


# -- settings --------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    return {
        "OHIP_GATEWAY_URL": GATEWAY,
        "OHIP_CLIENT_ID": "id",
        "OHIP_CLIENT_SECRET": "secret",
        "OHIP_APP_KEY": "key",
        "AWS_REGION": "eu-west-1",
        **extra,
    }


def test_enricher_settings() -> None:
    with pytest.raises(ConfigError, match=r"^RELAY_ENRICHED_QUEUE_URL"):
        Settings.from_env(_env(), Need.OHIP, Need.ENRICH)
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/r-enriched.fifo"
    settings = Settings.from_env(_env(RELAY_ENRICHED_QUEUE_URL=url), Need.OHIP, Need.ENRICH)
    assert (settings.enriched_queue_url, settings.enrich_routes, settings.enrich_concurrency) == (url, "", 4)
    with pytest.raises(ConfigError, match=r"^RELAY_ENRICH_CONCURRENCY"):
        Settings.from_env(_env(RELAY_ENRICHED_QUEUE_URL=url, RELAY_ENRICH_CONCURRENCY="0"), Need.ENRICH)
    with pytest.raises(ValueError, match="at least 1"):
        EnrichOptions(concurrency=0)


# -- off unless configured: the relay never loads the enricher --------------------------------------


def test_no_relay_module_imports_the_enricher() -> None:
    relay = [*sorted((ROOT / "shared" / "ohip_relay").glob("*.py")), *sorted(ROOT.glob("functions/*/app.py"))]
    for path in relay:
        if path.name == "enrich.py" or path.parent.name == "enricher":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(a.name for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "enrich" or n.endswith(".enrich") for n in names), f"{path} imports it"


def test_the_relay_entry_points_run_without_loading_the_enricher() -> None:
    code = (
        "import sys, ohip_relay.cli, ohip_relay.stream, ohip_relay.fallback, ohip_relay.publish; "
        "sys.exit(1 if 'ohip_relay.enrich' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
