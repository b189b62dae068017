"""The pure OAuth pieces: the request we send, how answers are read, when a token is renewed."""

from __future__ import annotations

import base64
import json

import pytest

from ohip_relay.auth import AuthError, OAuthParams, Token, TokenCache, parse_token_response, token_request

PARAMS = OAuthParams(
    gateway_url="https://ohip.example.com/",
    client_id="cid",
    client_secret="csecret",
    app_key="appkey",
    enterprise_id="ENT",
    scope="urn:opc:hgbu:ws:__myscopes__",
)


def test_client_credentials_request() -> None:
    request = token_request(PARAMS)
    assert request.url == "https://ohip.example.com/oauth/v1/tokens"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"cid:csecret").decode()
    assert request.headers["x-app-key"] == "appkey"
    assert request.form == {
        "grant_type": "client_credentials",
        "enterpriseId": "ENT",
        "scope": "urn:opc:hgbu:ws:__myscopes__",
    }


def test_password_grant_request() -> None:
    params = OAuthParams("https://g", "cid", "cs", "key", grant_type="password", username="u", password="p")
    assert token_request(params).form == {"grant_type": "password", "username": "u", "password": "p"}


def test_secrets_not_in_repr() -> None:
    assert "csecret" not in repr(PARAMS)
    assert "appkey" not in repr(PARAMS)
    assert "csecret" not in repr(token_request(PARAMS))


def test_ok_answer() -> None:
    token = parse_token_response(200, json.dumps({"access_token": "t", "expires_in": 3600}).encode(), 100.0)
    assert token == Token(access_token="t", issued_at=100.0, expires_at=3700.0)
    assert token.authorization() == "Bearer t"


@pytest.mark.parametrize("status", [400, 401, 403])
def test_refused_credentials_are_permanent(status: int) -> None:
    with pytest.raises(AuthError) as info:
        parse_token_response(status, b"{}", 0.0)
    assert info.value.permanent
    assert info.value.status == status


@pytest.mark.parametrize("status", [429, 500, 503])
def test_unavailable_is_transient(status: int) -> None:
    with pytest.raises(AuthError) as info:
        parse_token_response(status, b"", 0.0)
    assert not info.value.permanent


@pytest.mark.parametrize(
    "body", [b"not json", b"{}", b'{"access_token": ""}', b'{"access_token": "t", "expires_in": 0}']
)
def test_unusable_ok_answer(body: bytes) -> None:
    with pytest.raises(AuthError, match="without a usable access_token"):
        parse_token_response(200, body, 0.0)


def test_cache_renews_before_expiry() -> None:
    cache = TokenCache(refresh_margin=300)
    cache.store(Token("t", issued_at=0.0, expires_at=3600.0))
    assert cache.current(3299.0) is not None
    assert cache.current(3300.0) is None


def test_short_lived_token_renewed_at_half_life() -> None:
    cache = TokenCache(refresh_margin=300)
    cache.store(Token("t", issued_at=0.0, expires_at=60.0))
    assert cache.current(29.0) is not None
    assert cache.current(30.0) is None


def test_invalidate_forgets_token() -> None:
    cache = TokenCache()
    cache.store(Token("t", issued_at=0.0, expires_at=3600.0))
    cache.invalidate()
    assert cache.current(1.0) is None
