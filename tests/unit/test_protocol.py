"""The sans-I/O stream protocol: one test per rule of ohip-api.md / graphql-transport-ws."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from ohip_relay.protocol import (
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_VIOLATION,
    CLOSE_TIMEOUT,
    SUBPROTOCOL,
    Closed,
    CloseKind,
    ConnectionAcked,
    ConnectionDead,
    DuplicateSkipped,
    Event,
    EventReceived,
    OffsetRegression,
    PingReceived,
    PongReceived,
    ProtocolStateError,
    ProtocolViolation,
    State,
    StreamProtocol,
    SubscriptionCompleted,
    SubscriptionError,
    SubscriptionInput,
    UnreadableEvent,
    complete,
    connection_init,
    ping,
    pong,
    resubscribe_at,
    stream_url,
    subscribe,
    subscription_query,
)

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events" / "stream"
TOKEN = "eyJhbGciOi.test.token"
APP_KEY = "0a1b2c3d-app-key"

# The streaming schema as far as ohip-api.md describes it: enough to validate our document.
OHIP_SDL = """
type Query { ok: Boolean }
input NewEventInput {
  chainCode: String offset: String offsetType: String hotelCode: String delta: Boolean
}
type Metadata { offset: String uniqueEventId: String }
type Detail {
  elementName: String oldValue: String newValue: String scopeFrom: String scopeTo: String
  elementSequence: String elementType: String elementRole: String
}
type NewEvent {
  metadata: Metadata moduleName: String eventName: String primaryKey: String timestamp: String
  hotelId: String publisherId: String actionInstanceId: String detail: [Detail]
}
type Subscription { newEvent(input: NewEventInput!): NewEvent }
"""


# -- helpers ------------------------------------------------------------------------------------


def sample_frame(name: str = "next-new-reservation.json") -> dict[str, Any]:
    frame: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return frame


def next_frame(offset: Any, subscription_id: str = "1", unique_event_id: Any = "u-1") -> str:
    return json.dumps(
        {
            "id": subscription_id,
            "type": "next",
            "payload": {
                "data": {"newEvent": {"metadata": {"offset": offset, "uniqueEventId": unique_event_id}}}
            },
        }
    )


def started(now: float = 0.0, **options: Any) -> StreamProtocol:
    core = StreamProtocol(token=TOKEN, app_key=APP_KEY, **options)
    core.start(now)
    core.data_to_send()
    return core


def acked(now: float = 0.0, **options: Any) -> StreamProtocol:
    core = started(now, **options)
    core.receive('{"type":"connection_ack"}', now)
    return core


def subscribed(now: float = 0.0, resume_after: int | None = None, **options: Any) -> StreamProtocol:
    core = acked(now, **options)
    core.send_subscribe(SubscriptionInput("CHAIN1"), now, resume_after=resume_after)
    core.data_to_send()
    return core


def sent(core: StreamProtocol) -> list[dict[str, Any]]:
    return [json.loads(frame) for frame in core.data_to_send()]


def only(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


# -- URL ----------------------------------------------------------------------------------------


def test_stream_url_is_wss_subscriptions_with_sha256_of_the_key() -> None:
    abc_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # echo -n abc | sha256sum
    assert (
        stream_url("https://gw.example.com", "abc") == f"wss://gw.example.com/subscriptions?key={abc_sha256}"
    )
    assert SUBPROTOCOL == "graphql-transport-ws"


def test_stream_url_keeps_the_base_path_and_port() -> None:
    url = stream_url("https://gw.example.com:8443/tenant/api/", APP_KEY)
    key = hashlib.sha256(APP_KEY.encode()).hexdigest()
    assert url == f"wss://gw.example.com:8443/tenant/api/subscriptions?key={key}"


def test_stream_url_maps_http_to_ws_for_local_runs() -> None:
    assert stream_url("http://127.0.0.1:8080", "k").startswith("ws://127.0.0.1:8080/subscriptions?key=")


@pytest.mark.parametrize(
    "url", ["ftp://gw.example.com", "wss://gw.example.com", "gw.example.com", "https://"]
)
def test_stream_url_rejects_other_schemes_and_hostless_urls(url: str) -> None:
    with pytest.raises(ValueError, match="gateway URL"):
        stream_url(url, "k")


def test_stream_url_rejects_a_query_on_the_gateway_url() -> None:
    with pytest.raises(ValueError, match="query"):
        stream_url("https://gw.example.com/?key=x", "k")


# -- outbound messages --------------------------------------------------------------------------


def test_connection_init_carries_bearer_token_and_plain_app_key() -> None:
    assert json.loads(connection_init(TOKEN, APP_KEY)) == {
        "type": "connection_init",
        "payload": {"Authorization": f"Bearer {TOKEN}", "x-app-key": APP_KEY},
    }


@pytest.mark.parametrize("token", ["", f"Bearer {TOKEN}", "tok\n"])
def test_connection_init_wants_a_bare_token(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        connection_init(token, APP_KEY)


def test_subscribe_has_the_graphql_transport_ws_shape() -> None:
    message = json.loads(subscribe("7", SubscriptionInput("CHAIN1")))
    assert message["id"] == "7"
    assert message["type"] == "subscribe"
    assert set(message["payload"]) == {"query", "variables", "operationName", "extensions"}
    assert message["payload"]["operationName"] is None
    assert message["payload"]["extensions"] == {}


def test_subscribe_query_is_valid_against_the_schema_and_selects_every_field() -> None:
    graphql = pytest.importorskip("graphql")
    schema = graphql.build_schema(OHIP_SDL)
    query = subscription_query(SubscriptionInput("CHAIN1", offset="42", hotel_code="H1,H2", delta=True))
    document = graphql.parse(query)
    assert graphql.validate(schema, document) == []
    selected = set(_field_names(document))
    expected = {
        "newEvent", "metadata", "offset", "uniqueEventId", "moduleName", "eventName", "primaryKey",
        "timestamp", "hotelId", "publisherId", "actionInstanceId", "detail", "elementName", "oldValue",
        "newValue", "scopeFrom", "scopeTo", "elementSequence", "elementType", "elementRole",
    }  # fmt: skip
    assert selected == expected


def _field_names(document: Any) -> list[str]:
    import graphql

    names: list[str] = []

    class Collect(graphql.Visitor):
        def enter_field(self, node: Any, *_: Any) -> None:
            names.append(node.name.value)

    graphql.visit(document, Collect())
    return names


def test_subscribe_query_escapes_string_values() -> None:
    graphql = pytest.importorskip("graphql")
    tricky = 'H1"}) { x } #\\\n\u00e9'
    query = subscription_query(SubscriptionInput("CHAIN1", hotel_code=tricky))
    document = graphql.parse(query)  # an injection attempt would either fail here or add fields
    argument = document.definitions[0].selection_set.selections[0].arguments[0]
    values = {f.name.value: f.value.value for f in argument.value.fields}
    assert values == {"chainCode": "CHAIN1", "hotelCode": tricky}
    assert query.isascii()


def test_subscribe_mirrors_the_input_in_variables() -> None:
    subscription = SubscriptionInput("CHAIN1", offset="42", delta=True)
    message = json.loads(subscribe("1", subscription))
    assert message["payload"]["variables"] == {
        "input": {"chainCode": "CHAIN1", "offset": "42", "delta": True}
    }
    assert 'offset: "42"' in message["payload"]["query"]


def test_delta_is_a_boolean_literal_and_omitted_when_false() -> None:
    assert "delta: true" in subscription_query(SubscriptionInput("C", delta=True))
    assert "delta" not in subscription_query(SubscriptionInput("C", delta=False))


def test_offset_type_highest_is_sent_as_a_string() -> None:
    assert 'offsetType: "highest"' in subscription_query(SubscriptionInput("C", offset_type="highest"))


def test_ping_pong_complete_frames() -> None:
    assert json.loads(ping()) == {"type": "ping"}
    assert json.loads(pong()) == {"type": "pong"}
    assert json.loads(complete("3")) == {"id": "3", "type": "complete"}


# -- NewEventInput validation -------------------------------------------------------------------


def test_chain_code_accepts_every_allowed_character() -> None:
    assert SubscriptionInput("Az09 _%#$&-").chain_code == "Az09 _%#$&-"
    assert SubscriptionInput("X" * 20).chain_code == "X" * 20


@pytest.mark.parametrize("chain_code", ["", "X" * 21, "CHAIN!", "CHAIN\n", 'CH"AIN', "CHAÏN"])
def test_chain_code_is_validated(chain_code: str) -> None:
    with pytest.raises(ValueError, match="chainCode"):
        SubscriptionInput(chain_code)


@pytest.mark.parametrize("offset", ["", "12a", "-1", "1" * 21, "12\n", "\u0661\u0662", " 12"])
def test_offset_must_be_up_to_twenty_ascii_digits(offset: str) -> None:
    with pytest.raises(ValueError, match="offset"):
        SubscriptionInput("C", offset=offset)


@pytest.mark.parametrize("offset", ["0", "1" * 11, "9" * 20])
def test_offsets_from_zero_to_twenty_digits_can_be_subscribed_from(offset: str) -> None:
    # Finding 4 of issue 16: an 11-digit checkpoint made every subscribe raise (a crash loop).
    core = acked()
    core.send_subscribe(SubscriptionInput("CHAIN1"), 0.0, resume_after=int(offset))
    assert f'offset: \\"{offset}\\"' in core.data_to_send()[0]


def test_offset_type_accepts_only_highest() -> None:
    with pytest.raises(ValueError, match="offsetType"):
        SubscriptionInput("C", offset_type="earliest")


def test_hotel_code_is_at_most_fifty_characters() -> None:
    assert SubscriptionInput("C", hotel_code="H" * 50).hotel_code == "H" * 50
    with pytest.raises(ValueError, match="hotelCode"):
        SubscriptionInput("C", hotel_code="H" * 51)


def test_delta_must_be_a_boolean() -> None:
    with pytest.raises(ValueError, match="delta"):
        SubscriptionInput("C", delta=1)  # type: ignore[arg-type]


# -- connecting and subscribing -----------------------------------------------------------------


def test_start_queues_connection_init_at_once() -> None:
    core = StreamProtocol(token=TOKEN, app_key=APP_KEY)
    before = core.state
    assert core.data_to_send() == []
    core.start(100.0)
    assert [m["type"] for m in sent(core)] == ["connection_init"]
    assert (before, core.state) == (State.CONNECTING, State.INIT_SENT)
    with pytest.raises(ProtocolStateError):
        core.start(100.0)


def test_connection_ack_is_reported_once() -> None:
    core = started()
    assert isinstance(only(core.receive('{"type":"connection_ack","payload":{"v":1}}', 1.0)), ConnectionAcked)
    assert core.state is State.ACKED
    assert core.receive('{"type":"connection_ack"}', 2.0) == []


def test_subscribe_needs_an_ack() -> None:
    core = started()
    with pytest.raises(ProtocolStateError, match="init_sent"):
        core.send_subscribe(SubscriptionInput("C"), 1.0)


def test_subscription_ids_are_unique_on_a_connection() -> None:
    core = acked()
    first = core.send_subscribe(SubscriptionInput("C"), 1.0)
    core.receive(json.dumps({"id": first, "type": "complete"}), 2.0)
    second = core.send_subscribe(SubscriptionInput("C"), 3.0)
    assert (first, second) == ("1", "2")
    assert [m["id"] for m in sent(core)] == ["1", "2"]
    core.receive(json.dumps({"id": second, "type": "complete"}), 4.0)
    with pytest.raises(ProtocolStateError, match="reused"):
        core.send_subscribe(SubscriptionInput("C"), 5.0, subscription_id="1")


def test_resume_after_replays_from_the_checkpoint_itself() -> None:
    core = acked()
    core.send_subscribe(SubscriptionInput("C"), 1.0, resume_after=48213)
    message = only_message(core)
    assert 'offset: "48213"' in message["payload"]["query"]
    assert core.high_water == 48213


def test_an_explicit_offset_wins_over_resume_after_in_the_request() -> None:
    core = acked()
    core.send_subscribe(SubscriptionInput("C", offset="100"), 1.0, resume_after=150)
    assert 'offset: "100"' in only_message(core)["payload"]["query"]
    assert core.high_water == 150


def only_message(core: StreamProtocol) -> dict[str, Any]:
    messages = sent(core)
    assert len(messages) == 1
    return messages[0]


# -- events and replay de-duplication -----------------------------------------------------------


def test_next_is_reported_with_integer_offset_and_frame_size() -> None:
    core = subscribed()
    text = json.dumps(sample_frame())
    event = only(core.receive(text, 1.0))
    assert isinstance(event, EventReceived)
    assert (event.offset, event.offset_str) == (48213, "48213")
    assert event.unique_event_id == "2f6b8a4e-3c1d-4e7a-9b52-7d0c1e9a6f13"
    assert event.new_event["eventName"] == "NEW RESERVATION"
    assert event.frame_size == len(text.encode("utf-8"))
    assert "Testperson" not in repr(event)  # personal data stays out of reprs


def test_bytes_frames_are_decoded_as_utf8() -> None:
    core = subscribed()
    data = next_frame("5", unique_event_id="é").encode("utf-8")
    event = only(core.receive(data, 1.0))
    assert isinstance(event, EventReceived)
    assert event.frame_size == len(data)


def test_the_checkpointed_event_is_skipped_on_replay() -> None:
    core = subscribed(resume_after=48213)
    assert only(core.receive(json.dumps(sample_frame()), 1.0)) == DuplicateSkipped(
        48213, "48213", "2f6b8a4e-3c1d-4e7a-9b52-7d0c1e9a6f13", len(json.dumps(sample_frame()))
    )
    assert isinstance(
        only(core.receive(json.dumps(sample_frame("next-update-profile.json")), 2.0)), EventReceived
    )


def test_offsets_compare_as_integers_not_strings() -> None:
    core = subscribed(resume_after=9)
    assert isinstance(only(core.receive(next_frame("10"), 1.0)), EventReceived)
    assert isinstance(only(core.receive(next_frame("0010"), 2.0)), DuplicateSkipped)
    assert core.last_offset == 10


def test_the_same_offset_again_is_a_duplicate() -> None:
    core = subscribed()
    assert isinstance(only(core.receive(next_frame("200"), 1.0)), EventReceived)
    assert isinstance(only(core.receive(next_frame("200"), 2.0)), DuplicateSkipped)
    assert isinstance(only(core.receive(next_frame("200", unique_event_id=None), 2.0)), DuplicateSkipped)
    assert core.high_water == 200


def test_the_inclusive_replay_of_the_checkpoint_is_a_duplicate() -> None:
    core = subscribed(resume_after=200)
    assert isinstance(only(core.receive(next_frame("200", unique_event_id="any"), 1.0)), DuplicateSkipped)
    assert isinstance(only(core.receive(next_frame("201"), 1.0)), EventReceived)


def test_an_offset_below_the_highest_seen_is_a_regression_not_a_duplicate() -> None:
    # Finding 9 of issue 16: offsets going backwards (a reset on OHIP's side) were skipped as
    # duplicates while the heartbeat said "connected".
    core = subscribed(resume_after=500)
    event = only(core.receive(next_frame("150"), 3.0))
    assert isinstance(event, OffsetRegression)
    assert (event.offset, event.high_water) == (150, 500)
    assert core.high_water == 500  # unchanged: what was handled stays handled
    assert isinstance(only(core.receive(next_frame("501"), 4.0)), EventReceived)


def test_the_same_offset_with_another_unique_event_id_is_a_regression() -> None:
    core = subscribed()
    assert isinstance(only(core.receive(next_frame("7", unique_event_id="a"), 1.0)), EventReceived)
    assert isinstance(only(core.receive(next_frame("7", unique_event_id="b"), 2.0)), OffsetRegression)


def test_offset_zero_is_an_event_when_nothing_is_handled() -> None:
    # Finding 2 of issue 16: a log that starts at offset 0. resume_after=-1 subscribes from "0" and
    # does not take the first event for the already handled one.
    core = acked()
    core.send_subscribe(SubscriptionInput("CHAIN1"), 0.0, resume_after=-1)
    assert 'offset: \\"0\\"' in core.data_to_send()[0]
    assert isinstance(only(core.receive(next_frame("0"), 1.0)), EventReceived)
    assert isinstance(only(core.receive(next_frame("0"), 1.0)), DuplicateSkipped)


def test_offset_zero_from_the_start_is_an_event() -> None:
    assert isinstance(only(subscribed().receive(next_frame("0"), 1.0)), EventReceived)


def test_a_twenty_digit_offset_is_an_event() -> None:
    event = only(subscribed().receive(next_frame("9" * 20), 1.0))
    assert isinstance(event, EventReceived)
    assert event.offset == 10**20 - 1


def test_a_missing_unique_event_id_is_left_to_the_normaliser() -> None:
    event = only(subscribed().receive(next_frame("1", unique_event_id=None), 1.0))
    assert isinstance(event, EventReceived)
    assert event.unique_event_id is None


# -- protocol violations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["not json", "[1, 2]", '"ping"', '{"type": 1}', "{}", '{"type":"ping","x":NaN}']
)
def test_malformed_frames_are_violations(text: str) -> None:
    event = only(subscribed().receive(text, 1.0))
    assert isinstance(event, ProtocolViolation)
    assert event.close_code == CLOSE_PROTOCOL_VIOLATION


def test_an_unknown_message_type_is_a_violation() -> None:
    event = only(subscribed().receive('{"type":"ka"}', 1.0))
    assert isinstance(event, ProtocolViolation)
    assert "unknown" in event.reason


@pytest.mark.parametrize("kind", ["connection_init", "subscribe"])
def test_client_only_types_from_the_server_are_violations(kind: str) -> None:
    assert isinstance(
        only(subscribed().receive(json.dumps({"type": kind, "id": "1"}), 1.0)), ProtocolViolation
    )


def test_next_for_an_unknown_id_is_a_violation() -> None:
    assert isinstance(
        only(subscribed().receive(next_frame("1", subscription_id="99"), 1.0)), ProtocolViolation
    )


def test_next_before_the_ack_is_a_violation() -> None:
    assert isinstance(only(started().receive(next_frame("1"), 1.0)), ProtocolViolation)


@pytest.mark.parametrize(
    "offset", [5, "", "5a", "\u0665", None, "jane@example.com", "1" * 21, "9" * 5000, "-1"]
)
def test_an_event_without_a_readable_offset_is_unreadable_not_a_violation(offset: Any) -> None:
    # Finding 4 of issue 16: over 4,300 digits int() raised outside the violation handling; any
    # such event is data to park, not a reason to drop the connection (which would replay it).
    core = subscribed()
    event = only(core.receive(next_frame(offset), 1.0))
    assert isinstance(event, UnreadableEvent)
    assert "offset" in event.reason
    assert "jane" not in event.reason  # never echo payload content
    assert isinstance(only(core.receive(next_frame("3"), 1.0)), EventReceived)  # reading goes on


def test_an_event_without_metadata_is_unreadable() -> None:
    text = json.dumps({"id": "1", "type": "next", "payload": {"data": {"newEvent": {"metadata": "x"}}}})
    assert isinstance(only(subscribed().receive(text, 1.0)), UnreadableEvent)


@pytest.mark.parametrize("payload", [None, [], {"data": None}, {"data": {"newEvent": None}}])
def test_next_without_an_event_object_is_a_violation(payload: Any) -> None:
    text = json.dumps({"id": "1", "type": "next", "payload": payload})
    assert isinstance(only(subscribed().receive(text, 1.0)), ProtocolViolation)


def test_invalid_utf8_is_a_violation() -> None:
    assert isinstance(only(subscribed().receive(b'{"type":"ping"}\xff', 1.0)), ProtocolViolation)


def test_a_violation_is_terminal() -> None:
    core = subscribed()
    core.receive("garbage", 1.0)
    assert core.receive('{"type":"ping"}', 2.0) == []
    assert core.receive(next_frame("7"), 2.0) == []
    assert core.data_to_send() == []
    assert core.next_deadline() is None
    assert core.tick(1000.0) == []


# -- errors and completion ----------------------------------------------------------------------


def test_an_error_message_ends_the_subscription() -> None:
    core = subscribed()
    text = json.dumps(
        {"id": "1", "type": "error", "payload": [{"message": "bad chain", "extensions": {"code": "E1"}}]}
    )
    event = only(core.receive(text, 1.0))
    assert isinstance(event, SubscriptionError)
    assert event.terminal
    assert event.summary() == "bad chain [E1]"
    assert core.state is State.ACKED
    assert core.subscription_id is None


def test_errors_in_a_next_without_an_event_are_reported_non_terminal() -> None:
    core = subscribed()
    text = json.dumps({"id": "1", "type": "next", "payload": {"data": None, "errors": [{"message": "slow"}]}})
    event = only(core.receive(text, 1.0))
    assert isinstance(event, SubscriptionError)
    assert not event.terminal
    assert core.state is State.SUBSCRIBED


def test_server_complete_ends_the_subscription_and_repeats_are_harmless() -> None:
    core = subscribed()
    event = only(core.receive('{"id":"1","type":"complete"}', 1.0))
    assert event == SubscriptionCompleted("1", after_client_complete=False)
    assert core.state is State.ACKED
    assert core.receive('{"id":"1","type":"complete"}', 2.0) == []
    assert isinstance(only(core.receive('{"id":"8","type":"complete"}', 3.0)), ProtocolViolation)


def test_error_summary_is_trimmed() -> None:
    error = SubscriptionError("1", [{"message": "x" * 1000}])
    assert len(error.summary(limit=50)) == 50


# -- ping / pong --------------------------------------------------------------------------------


def test_a_server_ping_is_answered_with_a_pong() -> None:
    core = subscribed()
    assert isinstance(only(core.receive('{"type":"ping","payload":{"a":1}}', 1.0)), PingReceived)
    assert sent(core) == [{"type": "pong"}]


def test_the_client_pings_every_fifteen_seconds() -> None:
    core = subscribed(now=0.0)
    core.receive('{"type":"pong"}', 10.0)  # keep liveness out of the way
    assert core.tick(14.9) == []
    assert core.data_to_send() == []
    core.tick(15.0)
    assert sent(core) == [{"type": "ping"}]
    assert core.next_deadline() == 30.0


def test_a_late_tick_sends_one_ping_not_a_burst() -> None:
    core = subscribed(now=0.0)
    core.receive('{"type":"pong"}', 50.0)
    core.tick(50.0)
    assert sent(core) == [{"type": "ping"}]
    assert core.next_deadline() == 65.0


def test_a_pong_reports_the_round_trip_time() -> None:
    core = subscribed(now=0.0)
    core.tick(15.0)
    core.tick(30.0)
    rtts = [only(core.receive('{"type":"pong"}', now)) for now in (30.5, 30.7, 31.0)]
    assert all(isinstance(event, PongReceived) for event in rtts)
    assert [getattr(event, "rtt", "?") for event in rtts] == [pytest.approx(15.5), pytest.approx(0.7), None]


# -- timers -------------------------------------------------------------------------------------


def test_no_ack_in_time_declares_the_connection_dead() -> None:
    core = started(now=0.0, ack_timeout=8.0)
    assert core.next_deadline() == 8.0
    assert core.tick(7.9) == []
    event = only(core.tick(8.0))
    assert isinstance(event, ConnectionDead)
    assert event.close_code == CLOSE_TIMEOUT
    assert "connection_ack" in event.reason


def test_silence_for_the_liveness_timeout_declares_the_connection_dead() -> None:
    core = subscribed(now=0.0, liveness_timeout=45.0)
    core.receive('{"type":"pong"}', 10.0)
    assert not any(isinstance(e, ConnectionDead) for e in core.tick(54.9))
    event = only(core.tick(55.0))
    assert isinstance(event, ConnectionDead)
    assert event.silent_for == 45.0
    assert core.tick(56.0) == []  # reported once


def test_next_frames_are_proof_of_life_while_pongs_are_held_back() -> None:
    core = subscribed(now=0.0)
    events: list[Event] = []
    for second in range(5, 400, 5):  # backpressure: no pong for minutes, events keep flowing
        events += core.receive(next_frame(str(second)), float(second))
        events += core.tick(float(second))
    assert not any(isinstance(e, ConnectionDead) for e in events)
    assert core.state is State.SUBSCRIBED


def test_next_deadline_is_the_earliest_armed_timer() -> None:
    core = started(now=100.0)
    assert core.next_deadline() == 110.0  # ack
    core.receive('{"type":"connection_ack"}', 101.0)
    assert core.next_deadline() == 115.0  # ping
    assert StreamProtocol(token=TOKEN, app_key=APP_KEY).next_deadline() is None


def test_liveness_must_outlast_the_ping_interval() -> None:
    with pytest.raises(ValueError, match="liveness_timeout"):
        StreamProtocol(token=TOKEN, app_key=APP_KEY, ping_interval=15.0, liveness_timeout=15.0)


# -- shutdown -----------------------------------------------------------------------------------


def test_complete_is_sent_and_events_are_still_read_until_the_server_closes() -> None:
    core = subscribed()
    core.send_complete(5.0)
    assert sent(core) == [{"id": "1", "type": "complete"}]
    assert core.state is State.COMPLETING
    assert isinstance(only(core.receive(next_frame("77"), 6.0)), EventReceived)
    assert only(core.receive('{"id":"1","type":"complete"}', 7.0)) == SubscriptionCompleted("1", True)
    with pytest.raises(ProtocolStateError):  # nothing left to complete
        core.send_complete(8.0)


def test_send_complete_needs_a_subscription_and_is_idempotent_while_completing() -> None:
    with pytest.raises(ProtocolStateError):
        acked().send_complete(1.0)
    core = subscribed()
    core.send_complete(1.0)
    core.send_complete(2.0)
    assert len(core.data_to_send()) == 1


def test_the_next_subscribe_waits_ten_seconds_after_complete() -> None:
    first = subscribed(now=0.0)
    first.send_complete(100.0)
    core = acked(now=101.0, last_complete_at=first.last_complete_at)
    assert core.earliest_resubscribe(101.0) == 110.0
    assert core.resubscribe_delay(105.0) == 5.0
    with pytest.raises(ProtocolStateError, match="too early"):
        core.send_subscribe(SubscriptionInput("C"), 109.9)
    assert core.send_subscribe(SubscriptionInput("C"), 110.0) == "1"
    assert resubscribe_at(None, 5.0) == 5.0


def test_a_drain_that_never_ends_times_out_with_a_normal_close() -> None:
    core = subscribed(now=0.0, drain_timeout=20.0, ping_interval=40.0)
    core.send_complete(10.0)
    core.receive('{"type":"pong"}', 29.0)
    assert core.next_deadline() == 30.0
    event = only(core.tick(30.0))
    assert isinstance(event, ConnectionDead)
    assert event.close_code == CLOSE_NORMAL


# -- closing ------------------------------------------------------------------------------------


def test_a_clean_close_after_our_complete_is_expected() -> None:
    core = subscribed()
    core.send_complete(1.0)
    closed = core.connection_closed(1000, "bye", 2.0)
    assert closed.outcome.kind is CloseKind.EXPECTED
    assert closed.after_complete


def test_a_clean_close_without_our_complete_is_transient() -> None:
    closed = subscribed().connection_closed(1000, "", 2.0)
    assert closed.outcome.kind is CloseKind.TRANSIENT


def test_closed_carries_uptime_last_offset_and_the_classification() -> None:
    core = subscribed(now=10.0)
    core.receive(next_frame("300"), 20.0)
    closed = core.connection_closed(4401, "expired", 70.0)
    assert isinstance(closed, Closed)
    assert (closed.code, closed.connected_for, closed.last_offset) == (4401, 60.0, 300)
    assert closed.outcome.renew_token
    assert closed.outcome.peer_reason == "expired"
    assert started().connection_closed(None, "", 1.0).connected_for is None


def test_the_core_refuses_work_after_the_socket_closed() -> None:
    core = subscribed()
    core.connection_closed(1006, "", 1.0)
    assert core.state is State.CLOSED
    assert core.next_deadline() is None
    with pytest.raises(ProtocolStateError):
        core.receive('{"type":"ping"}', 2.0)
    with pytest.raises(ProtocolStateError):
        core.send_complete(2.0)


def test_the_token_never_shows_in_the_repr() -> None:
    assert TOKEN not in repr(started())
