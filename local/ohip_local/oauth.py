"""The gateway's OAuth token endpoint (`POST /oauth/v1/tokens`) and the tokens it has issued.

Client credentials come as HTTP Basic (`grant_type=client_credentials`, with `enterpriseId`) or,
for the older integration users, as `grant_type=password` with `username`/`password` (the local
gateway accepts the client id/secret there too). The `x-app-key` header must carry the
application key. Wrong credentials or key: 401. Tokens are opaque random strings that live
`token_lifetime` seconds on the gateway's clock; `expire_all` ends them early (the control
interface uses it to provoke 4401).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from aiohttp import web

from .source import Clock


@dataclass(frozen=True)
class IssuedToken:
    value: str
    issued_at: float
    expires_at: float


class TokenStore:
    def __init__(self, lifetime: float, clock: Clock) -> None:
        self.lifetime = lifetime
        self._clock = clock
        self._tokens: dict[str, IssuedToken] = {}
        self.issued = 0

    def issue(self) -> IssuedToken:
        now = self._clock()
        token = IssuedToken(secrets.token_urlsafe(32), now, now + self.lifetime)
        self._tokens[token.value] = token
        self.issued += 1
        return token

    def valid(self, value: str) -> bool:
        token = self._tokens.get(value)
        return token is not None and token.expires_at > self._clock()

    def expires_at(self, value: str) -> float | None:
        token = self._tokens.get(value)
        return token.expires_at if token else None

    def expire_all(self) -> int:
        """Make every issued token expired now; returns how many were live."""
        now = self._clock()
        live = [t for t in self._tokens.values() if t.expires_at > now]
        for t in live:
            self._tokens[t.value] = IssuedToken(t.value, t.issued_at, now)
        return len(live)

    def bearer_valid(self, header: str | None) -> bool:
        """True for an `Authorization: Bearer <token>` value naming a live token."""
        if not header or not header.startswith("Bearer "):
            return False
        return self.valid(header[len("Bearer ") :].strip())


def _unauthorised(reason: str) -> web.Response:
    return web.json_response(
        {
            "type": "https://tools.ietf.org/html/rfc7235#section-3.1",
            "title": "Unauthorized",
            "detail": reason,
        },
        status=401,
    )


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class OAuthEndpoint:
    def __init__(
        self, *, client_id: str, client_secret: str, app_key: str, enterprise_id: str, tokens: TokenStore
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._app_key = app_key
        self._enterprise_id = enterprise_id
        self.tokens = tokens

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("x-app-key") != self._app_key:
            return _unauthorised("missing or unknown x-app-key")
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"title": "Unsupported Media Type"}, status=415)
        form = await request.post()
        grant = form.get("grant_type")
        creds = _basic(request.headers.get("Authorization"))
        if grant == "client_credentials":
            if creds != (self._client_id, self._client_secret):
                return _unauthorised("invalid client credentials")
            enterprise = form.get("enterpriseId")
            if enterprise is not None and enterprise != self._enterprise_id:
                return _unauthorised("unknown enterpriseId")
        elif grant == "password":
            if (form.get("username"), form.get("password")) != (self._client_id, self._client_secret):
                return _unauthorised("invalid username or password")
        else:
            return web.json_response({"title": "Bad Request", "detail": "unsupported grant_type"}, status=400)
        token = self.tokens.issue()
        return web.json_response(
            {
                "access_token": token.value,
                "token_type": "Bearer",
                "expires_in": int(self.tokens.lifetime),
            }
        )
