"""The local gateway's OAuth token endpoint, over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from ohip_local.gateway import LocalGateway

from .conftest import GatewayFactory

pytestmark = pytest.mark.integration

TOKENS = "/oauth/v1/tokens"


class FakeClock:
    def __init__(self, now: float = 1_795_601_738.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http(gateway: LocalGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=5.0) as client:
        yield client


def form(gw: LocalGateway, **changes: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "enterpriseId": gw.config.enterprise_id,
        "scope": "urn:opc:hgbu:ws:__myscopes__",
        **changes,
    }


async def token_request(
    http: httpx.AsyncClient,
    gw: LocalGateway,
    *,
    data: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    app_key: str | None = None,
) -> httpx.Response:
    return await http.post(
        TOKENS,
        data=data if data is not None else form(gw),
        auth=auth or (gw.config.client_id, gw.config.client_secret),
        headers={"x-app-key": app_key if app_key is not None else gw.config.app_key},
    )


async def poll(http: httpx.AsyncClient, gw: LocalGateway, token: str) -> httpx.Response:
    return await http.get(
        f"/int/v1/externalSystem/{gw.config.external_systems[0]}/businessEvents",
        headers={
            "Authorization": f"Bearer {token}",
            "x-app-key": gw.config.app_key,
            "x-hotelid": gw.config.hotels[0],
        },
    )


async def test_client_credentials_issue_a_bearer_token(
    http: httpx.AsyncClient, gateway: LocalGateway
) -> None:
    response = await token_request(http, gateway)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert isinstance(body["access_token"], str)
    assert len(body["access_token"]) >= 32
    assert gateway.tokens.issued == 1


async def test_each_request_gets_a_new_token(http: httpx.AsyncClient, gateway: LocalGateway) -> None:
    first = (await token_request(http, gateway)).json()["access_token"]
    second = (await token_request(http, gateway)).json()["access_token"]
    assert first != second


async def test_enterprise_id_may_be_left_out(http: httpx.AsyncClient, gateway: LocalGateway) -> None:
    data = {"grant_type": "client_credentials", "scope": "x"}
    assert (await token_request(http, gateway, data=data)).status_code == 200


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong secret", 401),
        ("wrong client id", 401),
        ("no basic auth", 401),
        ("wrong app key", 401),
        ("no app key", 401),
        ("wrong enterprise", 401),
        ("unknown grant", 400),
    ],
)
async def test_bad_requests_are_refused(
    http: httpx.AsyncClient, gateway: LocalGateway, case: str, expected: int
) -> None:
    cfg = gateway.config
    data, auth, headers = form(gateway), (cfg.client_id, cfg.client_secret), {"x-app-key": cfg.app_key}
    if case == "wrong secret":
        auth = (cfg.client_id, "not-the-secret")
    elif case == "wrong client id":
        auth = ("someone-else", cfg.client_secret)
    elif case == "wrong app key":
        headers = {"x-app-key": "not-the-key"}
    elif case == "no app key":
        headers = {}
    elif case == "wrong enterprise":
        data = form(gateway, enterpriseId="OTHERENT")
    elif case == "unknown grant":
        data = form(gateway, grant_type="authorization_code")
    if case == "no basic auth":
        response = await http.post(TOKENS, data=data, headers=headers)
    else:
        response = await http.post(TOKENS, data=data, auth=auth, headers=headers)
    assert response.status_code == expected
    body = response.json()
    assert "access_token" not in body
    assert cfg.client_secret not in response.text
    assert gateway.tokens.issued == 0


async def test_json_body_is_unsupported_media_type(http: httpx.AsyncClient, gateway: LocalGateway) -> None:
    cfg = gateway.config
    response = await http.post(
        TOKENS,
        json=form(gateway),
        auth=(cfg.client_id, cfg.client_secret),
        headers={"x-app-key": cfg.app_key},
    )
    assert response.status_code == 415


async def test_password_grant(http: httpx.AsyncClient, gateway: LocalGateway) -> None:
    cfg = gateway.config
    good = {"grant_type": "password", "username": cfg.client_id, "password": cfg.client_secret}
    response = await http.post(TOKENS, data=good, headers={"x-app-key": cfg.app_key})
    assert response.status_code == 200
    assert response.json()["token_type"] == "Bearer"
    bad = {**good, "password": "wrong"}
    assert (await http.post(TOKENS, data=bad, headers={"x-app-key": cfg.app_key})).status_code == 401
    assert (await http.post(TOKENS, data=good, headers={"x-app-key": "wrong"})).status_code == 401


async def test_issued_token_opens_the_poll_api_until_expired(
    http: httpx.AsyncClient, gateway: LocalGateway
) -> None:
    token = (await token_request(http, gateway)).json()["access_token"]
    assert (await poll(http, gateway, token)).status_code == 204
    assert (await poll(http, gateway, token + "x")).status_code == 401
    assert gateway.tokens.expire_all() == 1
    assert (await poll(http, gateway, token)).status_code == 401
    fresh = (await token_request(http, gateway)).json()["access_token"]
    assert (await poll(http, gateway, fresh)).status_code == 204


async def test_token_lifetime_follows_the_gateways_clock(make_gateway: GatewayFactory) -> None:
    clock = FakeClock()
    async with (
        make_gateway(clock=clock, token_lifetime=600.0) as gw,
        httpx.AsyncClient(base_url=gw.url, trust_env=False, timeout=5.0) as http,
    ):
        body = (await token_request(http, gw)).json()
        assert body["expires_in"] == 600
        token = body["access_token"]
        assert gw.tokens.expires_at(token) == clock.now + 600
        clock.now += 599
        assert (await poll(http, gw, token)).status_code == 204
        clock.now += 1
        assert (await poll(http, gw, token)).status_code == 401
