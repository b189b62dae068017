"""The local gateway's REST resources, over a real socket: what the enricher's tests rely on."""

from __future__ import annotations

import httpx
import pytest

from ohip_local.gateway import LocalGateway
from ohip_local.threaded import call_in_gateway
from ohip_relay.auth import OAuthParams, SyncTokenProvider

pytestmark = pytest.mark.integration


def _headers(gateway: LocalGateway, http: httpx.Client, hotel: str = "HOTEL1") -> dict[str, str]:
    cfg = gateway.config
    params = OAuthParams(
        gateway_url=gateway.url,
        client_id=cfg.client_id,
        client_secret=cfg.client_secret,
        app_key=cfg.app_key,
        enterprise_id=cfg.enterprise_id,
    )
    token = SyncTokenProvider(params, http, clock=lambda: 0.0).get()
    return {"Authorization": token.authorization(), "x-app-key": cfg.app_key, "x-hotelid": hotel}


def test_resources_follow_the_events_and_refuse_bad_requests(gateway: LocalGateway) -> None:
    stored = call_in_gateway(gateway, lambda: gateway.emit(30))
    reservation = next(e for e in stored if e.module == "RESERVATION")
    profile = next(e for e in stored if e.module == "PROFILE")
    last = [e for e in stored if (e.hotel, e.primary_key) == (reservation.hotel, reservation.primary_key)][-1]
    rsv_path = f"/rsv/v1/hotels/{reservation.hotel}/reservations/{reservation.primary_key}"
    with httpx.Client(base_url=gateway.url, trust_env=False) as http:
        headers = _headers(gateway, http, reservation.hotel)
        answer = http.get(rsv_path, headers=headers)
        assert answer.status_code == 200
        (body,) = answer.json()["reservations"]["reservation"]
        assert {"id": reservation.primary_key, "type": "Reservation"} in body["reservationIdList"]
        assert body["hotelId"] == reservation.hotel
        assert body["lastModifierId"] == last.publisher_id
        assert http.get(f"/crm/v1/profiles/{profile.primary_key}", headers=headers).status_code == 200

        assert http.get(rsv_path).status_code == 401
        assert http.get(rsv_path, headers={**headers, "x-app-key": "other"}).status_code == 401
        assert http.get(rsv_path, headers={**headers, "x-hotelid": ""}).status_code == 400
        assert http.get("/rsv/v1/hotels/NOPE/reservations/1", headers=headers).status_code == 404
        assert http.get("/crm/v1/profiles/no-such-profile", headers=headers).status_code == 404

        call_in_gateway(gateway, lambda: gateway.rest.set_fault("5xx", status=502, count=1))
        assert http.get(rsv_path, headers=headers).status_code == 502
        assert http.get(rsv_path, headers=headers).status_code == 200  # count=1: over
        call_in_gateway(gateway, lambda: gateway.rest.set_fault("429", retry_after=9))
        throttled = http.get(rsv_path, headers=headers)
        assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "9")
        call_in_gateway(gateway, lambda: gateway.rest.set_fault("off"))
        deleted = call_in_gateway(
            gateway, lambda: gateway.rest.delete("reservation", reservation.primary_key, reservation.hotel)
        )
        assert deleted
        assert http.get(rsv_path, headers=headers).status_code == 404
