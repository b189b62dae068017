"""The local gateway's Poll API (businessEvents, dequeue semantics), over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from ohip_local.gateway import LocalGateway
from ohip_local.generator import EVENT_MODULES
from ohip_local.poll import business_event_data
from ohip_local.source import StoredEvent
from ohip_relay.events import MODULES, from_poll, from_stream, load_schema

from .conftest import GatewayFactory

pytestmark = pytest.mark.integration

RELAYED_AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SAMPLE = Path(__file__).resolve().parents[3] / "events" / "poll" / "business-events-200.json"


class FakeClock:
    def __init__(self, now: float = 1_795_601_738.0) -> None:  # 2026-11-25 10:15:38 UTC
        self.now = now

    def __call__(self) -> float:
        return self.now


class Poller:
    """A Poll API client with a valid token (issued by the gateway's own token store)."""

    def __init__(self, gw: LocalGateway, http: httpx.AsyncClient) -> None:
        self.gw = gw
        self.http = http
        self.token = gw.tokens.issue().value

    def headers(self, **changes: str | None) -> dict[str, str]:
        cfg = self.gw.config
        headers: dict[str, str | None] = {
            "Authorization": f"Bearer {self.token}",
            "x-app-key": cfg.app_key,
            "x-hotelid": cfg.hotels[0],
            "x-externalsystem": cfg.external_systems[0],
        }
        headers.update(changes)
        return {k: v for k, v in headers.items() if v is not None}

    async def get(
        self, *, system: str | None = None, hotel: str | None = None, limit: Any = None, **headers: str | None
    ) -> httpx.Response:
        system = system or self.gw.config.external_systems[0]
        path = f"/int/v1/externalSystem/{system}"
        path += f"/hotels/{hotel}/businessEvents" if hotel else "/businessEvents"
        params = {} if limit is None else {"limit": str(limit)}
        return await self.http.get(path, params=params, headers=self.headers(**headers))

    async def items(self, **kw: Any) -> list[dict[str, Any]]:
        response = await self.get(**kw)
        if response.status_code == 204:
            return []
        assert response.status_code == 200, response.text
        return list(response.json()["businessEventData"])

    async def drain(self, **kw: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while batch := await self.items(limit=100, **kw):
            out += batch
        return out


@pytest.fixture
async def http(gateway: LocalGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=5.0) as client:
        yield client


@pytest.fixture
def poller(gateway: LocalGateway, http: httpx.AsyncClient) -> Poller:
    return Poller(gateway, http)


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["businessEventId"]["id"] for item in items]


def event_ids(events: list[StoredEvent]) -> list[str]:
    return [str(e.business_event_id) for e in events]


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


# -- access rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": None},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic bG9jYWw6c2VjcmV0"},
        {"x-app-key": None},
        {"x-app-key": "someone-elses-key"},
    ],
    ids=["no token", "unknown token", "basic auth", "no app key", "wrong app key"],
)
async def test_unauthorised_requests_get_401_and_dequeue_nothing(
    poller: Poller, gateway: LocalGateway, headers: dict[str, str | None]
) -> None:
    gateway.emit(3)
    assert_problem(await poller.get(**headers), 401)
    assert gateway.source.queued("RELAY") == 3


async def test_expired_token_gets_401(poller: Poller, gateway: LocalGateway) -> None:
    gateway.emit(1)
    gateway.tokens.expire_all()
    assert_problem(await poller.get(), 401)
    assert gateway.source.queued("RELAY") == 1


async def test_unknown_external_system_is_404(poller: Poller) -> None:
    assert_problem(await poller.get(system="NOSUCH"), 404)
    assert_problem(await poller.get(system="NOSUCH", hotel="HOTEL1"), 404)


async def test_unknown_hotel_in_the_path_is_404(poller: Poller, gateway: LocalGateway) -> None:
    gateway.emit(2)
    assert_problem(await poller.get(hotel="NOHOTEL"), 404)
    assert gateway.source.queued("RELAY") == 2


@pytest.mark.parametrize("hotel", [None, "HOTEL2"])
async def test_x_hotelid_is_required_on_both_paths(
    poller: Poller, gateway: LocalGateway, hotel: str | None
) -> None:
    gateway.emit(2, hotel="HOTEL2")
    assert_problem(await poller.get(hotel=hotel, **{"x-hotelid": None}), 400)
    assert_problem(await poller.get(hotel=hotel, **{"x-hotelid": ""}), 400)
    assert gateway.source.queued("RELAY") == 2


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", "", "²", "1e2"])
async def test_bad_limit_is_400(poller: Poller, gateway: LocalGateway, limit: str) -> None:
    gateway.emit(2)
    body = assert_problem(await poller.get(limit=limit), 400)
    assert "limit" in body["detail"]
    assert gateway.source.queued("RELAY") == 2


async def test_error_bodies_carry_no_event_data(poller: Poller, gateway: LocalGateway) -> None:
    events = gateway.emit(5)
    responses = [
        await poller.get(Authorization=None),
        await poller.get(system="NOSUCH"),
        await poller.get(limit="0"),
        await poller.get(**{"x-hotelid": None}),
    ]
    personal = set().union(*(e.personal_values() for e in events))
    for response in responses:
        assert response.status_code >= 400
        assert not any(value in response.text for value in personal)
        assert not any(e.primary_key in response.text for e in events)


async def test_other_methods_are_not_allowed(http: httpx.AsyncClient, poller: Poller) -> None:
    response = await http.post("/int/v1/externalSystem/RELAY/businessEvents", headers=poller.headers())
    assert response.status_code == 405


# -- the queue ----------------------------------------------------------------------------------------


async def test_empty_queue_is_204_with_an_empty_body(poller: Poller) -> None:
    response = await poller.get(limit=10)
    assert response.status_code == 204
    assert response.content == b""


async def test_limit_defaults_to_one_and_caps_the_batch(poller: Poller, gateway: LocalGateway) -> None:
    events = gateway.emit(120)
    assert ids(await poller.items()) == event_ids(events[:1])
    assert ids(await poller.items(limit=5)) == event_ids(events[1:6])
    assert ids(await poller.items(limit=100)) == event_ids(events[6:106])
    assert ids(await poller.items(limit=100)) == event_ids(events[106:])
    assert (await poller.get(limit=100)).status_code == 204


async def test_each_event_is_dequeued_once_across_clients(
    gateway: LocalGateway, http: httpx.AsyncClient
) -> None:
    events = gateway.emit(300)
    pollers = [Poller(gateway, http) for _ in range(4)]

    async def drain(p: Poller) -> list[str]:
        got: list[str] = []
        while batch := await p.items(limit=7):
            got += ids(batch)
        return got

    results = await asyncio.gather(*(drain(p) for p in pollers))
    every = [i for r in results for i in r]
    assert len(every) == len(set(every)) == 300
    assert set(every) == set(event_ids(events))
    assert all(results), "each client got some events"
    assert gateway.source.queued("RELAY") == 0


async def test_hotel_path_returns_only_that_hotels_events(poller: Poller, gateway: LocalGateway) -> None:
    events = gateway.emit(60)
    by_hotel = Counter(e.hotel for e in events)
    assert len(by_hotel) == 3
    hotel2 = await poller.drain(hotel="HOTEL2")
    assert ids(hotel2) == event_ids([e for e in events if e.hotel == "HOTEL2"])
    assert {item["businessEvent"]["header"]["hotelId"] for item in hotel2} == {"HOTEL2"}
    rest = await poller.drain()
    assert ids(rest) == event_ids([e for e in events if e.hotel != "HOTEL2"])


async def test_every_external_system_has_its_own_queue(make_gateway: GatewayFactory) -> None:
    async with (
        make_gateway(external_systems=("RELAY", "OTHER")) as gw,
        httpx.AsyncClient(base_url=gw.url, trust_env=False) as http,
    ):
        events = gw.emit(5)
        poller = Poller(gw, http)
        assert ids(await poller.drain(system="RELAY")) == event_ids(events)
        assert ids(await poller.drain(system="OTHER")) == event_ids(events)


# -- the payload ----------------------------------------------------------------------------------------


async def test_body_shape_and_header_fields(make_gateway: GatewayFactory) -> None:
    clock = FakeClock()
    async with make_gateway(clock=clock) as gw, httpx.AsyncClient(base_url=gw.url, trust_env=False) as http:
        event = gw.emit(1)[0]
        response = await Poller(gw, http).get()
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        (item,) = response.json()["businessEventData"]
    assert set(item) == {"businessEvent", "businessEventId"}
    assert item["businessEventId"] == {"id": str(event.business_event_id)}
    header = item["businessEvent"]["header"]
    assert set(header) == {
        "moduleName",
        "actionType",
        "actionId",
        "parentActionId",
        "primaryKey",
        "publisherId",
        "createdDateTime",
        "hotelId",
    }
    assert header["actionType"] == event.event_name
    assert str(header["actionId"]) == str(event.action_instance_id)
    assert str(header["parentActionId"]) == str(event.parent_action_id)
    assert str(header["primaryKey"]) == event.primary_key
    assert str(header["publisherId"]) == event.publisher_id
    assert header["hotelId"] == event.hotel
    assert header["createdDateTime"] == "2026-11-25 10:15:38.0"
    details = item["businessEvent"]["details"]
    assert [d["dataElement"] for d in details] == [d.element_name for d in event.details]


async def test_details_leave_out_empty_values(gateway: LocalGateway, poller: Poller) -> None:
    events = gateway.emit(200)
    items = await poller.drain()
    saw_scope = saw_old = False
    for event, item in zip(events, items, strict=True):
        for detail, out in zip(event.details, item["businessEvent"]["details"], strict=True):
            assert set(out) <= {"dataElement", "oldValue", "newValue", "scopeFrom", "scopeTo"}
            assert all(value != "" for value in out.values())
            assert out.get("oldValue") == (detail.old_value or None)
            assert out.get("newValue") == (detail.new_value or None)
            saw_scope |= "scopeFrom" in out
            saw_old |= "oldValue" in out
    assert saw_scope
    assert saw_old


async def test_real_world_quirks_all_appear(gateway: LocalGateway, poller: Poller) -> None:
    gateway.emit(80)
    headers = [item["businessEvent"]["header"] for item in await poller.drain()]
    modules = [h["moduleName"] for h in headers]
    assert {m for m in modules if isinstance(m, str) and not m.isdigit()} == {"Reservation", "Profile"}
    assert {m for m in modules if isinstance(m, int)} == {14, 16}  # numbers as JSON numbers...
    assert {m for m in modules if isinstance(m, str) and m.isdigit()} == {"14", "16"}  # ...and as strings
    assert {MODULES[14], MODULES[16]} == {"PROFILE", "RESERVATION"}
    for field in ("actionId", "primaryKey", "publisherId", "parentActionId"):
        assert {type(h[field]) for h in headers} == {int, str}, field


async def test_module_number_matches_the_module(gateway: LocalGateway, poller: Poller) -> None:
    events = gateway.emit(60)
    for event, item in zip(events, await poller.drain(), strict=True):
        module = item["businessEvent"]["header"]["moduleName"]
        if str(module).isdigit():
            assert MODULES[int(module)] == event.module
        else:
            assert module.upper() == event.module


async def test_faithful_to_the_sample_file(gateway: LocalGateway, poller: Poller) -> None:
    """Same keys and value types as the recorded sample in events/poll/."""
    sample = json.loads(SAMPLE.read_text())
    gateway.emit(1)
    (item,) = await poller.items()
    sample_item = sample["businessEventData"][0]
    assert set(item) == set(sample_item)
    assert set(item["businessEvent"]) == set(sample_item["businessEvent"])
    assert set(item["businessEvent"]["header"]) == set(sample_item["businessEvent"]["header"])


async def test_the_relay_normalises_every_generated_kind(gateway: LocalGateway, poller: Poller) -> None:
    events = gateway.emit(250)
    items = await poller.drain()
    schema = load_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    kinds: Counter[str] = Counter()
    for event, item in zip(events, items, strict=True):
        canonical = from_poll(item, event.chain, RELAYED_AT)
        validator.validate(canonical.to_dict())
        assert canonical.source == "poll"
        assert canonical.event_name == event.event_name
        assert canonical.module_name == event.module == EVENT_MODULES[event.event_name]
        assert canonical.primary_key == event.primary_key
        assert canonical.hotel_id == event.hotel
        assert canonical.publisher_id == event.publisher_id
        assert canonical.occurred_at == datetime.fromtimestamp(int(event.created_at), UTC)
        assert [d.element_name for d in canonical.detail] == [d.element_name for d in event.details]
        kinds[event.event_name] += 1
        # The same change read from the stream has the same event key.
        assert from_stream(stream_event(event), event.chain, RELAYED_AT).event_key == canonical.event_key
    assert set(kinds) == set(EVENT_MODULES)
    assert len({from_poll(item, "LOCALCHAIN", RELAYED_AT).event_key for item in items}) == len(items)


def stream_event(event: StoredEvent) -> dict[str, Any]:
    """The Streaming API `newEvent` for a stored event, as documented (the test's own rendering)."""
    return {
        "metadata": {"offset": str(event.offset), "uniqueEventId": event.unique_event_id},
        "moduleName": event.module,
        "eventName": event.event_name,
        "primaryKey": event.primary_key,
        "timestamp": event.created_datetime.isoformat(),
        "hotelId": event.hotel,
        "publisherId": event.publisher_id,
        "actionInstanceId": str(event.action_instance_id),
        "detail": [
            {
                "elementName": d.element_name,
                "oldValue": d.old_value or "",
                "newValue": d.new_value or "",
                "scopeFrom": d.scope_from,
                "scopeTo": d.scope_to,
                "elementSequence": d.element_sequence,
                "elementType": d.element_type,
                "elementRole": d.element_role,
            }
            for d in event.details
        ],
    }


def test_rendering_is_json_and_deterministic() -> None:
    from ohip_local.source import Detail, EventDraft, EventSource

    source = EventSource(("C",), ("S",), clock=FakeClock())
    event = source.append(
        "C",
        EventDraft(
            "H",
            "PROFILE",
            "NEW PROFILE",
            "1280001",
            "57489",
            (Detail("NAME", "", "Testperson", personal=True),),
        ),
    )
    rendered = business_event_data(event)
    assert json.loads(json.dumps(rendered)) == rendered == business_event_data(event)


# -- faults ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_fault_for_a_count_loses_no_event(
    poller: Poller, gateway: LocalGateway, status: int
) -> None:
    events = gateway.emit(3)
    gateway.poll.set_fault("5xx", status=status, count=2)
    assert_problem(await poller.get(limit=10), status)
    assert_problem(await poller.get(limit=10), status)
    assert gateway.source.queued("RELAY") == 3
    assert ids(await poller.items(limit=10)) == event_ids(events)
    snapshot = gateway.poll.snapshot()
    assert snapshot["faulted"] == 2
    assert snapshot["fault"]["mode"] == "off"
    assert snapshot["responses"] == {"200": 1, str(status): 2}


async def test_fault_without_count_lasts_until_turned_off(poller: Poller, gateway: LocalGateway) -> None:
    gateway.emit(2)
    gateway.poll.set_fault("5xx", status=502)
    for _ in range(5):
        assert_problem(await poller.get(), 502)
    assert gateway.poll.snapshot()["fault"]["remaining"] is None
    gateway.poll.set_fault("off")
    assert len(await poller.drain()) == 2


async def test_429_fault_with_retry_after(poller: Poller, gateway: LocalGateway) -> None:
    gateway.emit(1)
    gateway.poll.set_fault("429", count=1, retry_after=7)
    response = await poller.get()
    assert_problem(response, 429)
    assert response.headers["Retry-After"] == "7"
    gateway.poll.set_fault("429", count=1)
    assert "Retry-After" not in (await poller.get()).headers
    assert len(await poller.items()) == 1


async def test_faults_apply_before_authentication(poller: Poller, gateway: LocalGateway) -> None:
    gateway.poll.set_fault("5xx", status=503, count=1)
    assert_problem(await poller.get(Authorization=None), 503)
    assert_problem(await poller.get(Authorization=None), 401)


async def test_slow_fault_delays_then_serves(poller: Poller, gateway: LocalGateway) -> None:
    events = gateway.emit(2)
    gateway.poll.set_fault("slow", delay=0.2, count=1)
    started = time.monotonic()
    got = await poller.items(limit=10)
    assert time.monotonic() - started >= 0.2
    assert ids(got) == event_ids(events)
    # count=1: used up by that request (no upper bound on the next one's time: CI machines are loaded)
    assert gateway.poll.snapshot()["fault"]["mode"] == "off"
    assert (await poller.get()).status_code == 204


async def test_set_fault_validates(gateway: LocalGateway) -> None:
    gw = gateway
    with pytest.raises(ValueError, match="mode"):
        gw.poll.set_fault("teapot")
    with pytest.raises(ValueError, match="status"):
        gw.poll.set_fault("5xx", status=404)
    with pytest.raises(ValueError, match="count"):
        gw.poll.set_fault("5xx", count=0)
    with pytest.raises(ValueError, match="delay"):
        gw.poll.set_fault("slow", delay=-1)
    assert gw.poll.set_fault("429", retry_after=3) == {
        "mode": "429",
        "status": 429,
        "remaining": None,
        "delay": 0.0,
        "retry_after": 3,
    }
    json.dumps(gw.poll.snapshot())
