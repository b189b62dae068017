"""OAuth for OHIP: building the token request, reading the answer, and caching the token.

The pure part (`token_request`, `parse_token_response`, `TokenCache`) does no I/O and reads no
clock; `AsyncTokenProvider` and `SyncTokenProvider` are thin httpx wrappers used by the stream
consumer (asyncio) and the poll fallback (Lambda).

Tokens are renewed `refresh_margin` seconds before they expire, so that a new connection never
starts with a token about to lapse; after a 4401 the caller invalidates the cache and the next
`get()` fetches a fresh one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from .config import Settings

TOKEN_PATH = "/oauth/v1/tokens"  # noqa: S105 - a path, not a secret


class AuthError(Exception):
    """The token endpoint refused or failed. `permanent` is True when retrying cannot help
    (credentials or app key rejected) until a human fixes the configuration."""

    def __init__(self, message: str, *, status: int | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = permanent


@dataclass(frozen=True)
class OAuthParams:
    """What the token request needs. The exact form fields vary by OHIP environment: the client
    credentials grant (newer integration users) is the default, the password grant the older one."""

    gateway_url: str
    client_id: str
    client_secret: str = field(repr=False)
    app_key: str = field(repr=False)
    enterprise_id: str = ""
    scope: str = ""
    grant_type: str = "client_credentials"
    username: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> OAuthParams:
        """The token request of the relay's settings (every command asks for its token this way)."""
        return cls(
            gateway_url=settings.gateway_url,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            app_key=settings.app_key,
            enterprise_id=settings.enterprise_id,
            scope=settings.oauth_scope,
        )


@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)
    issued_at: float  # seconds on the caller's clock
    expires_at: float

    def authorization(self) -> str:
        return f"Bearer {self.access_token}"


@dataclass(frozen=True)
class TokenRequest:
    url: str
    headers: dict[str, str] = field(repr=False)
    form: dict[str, str] = field(repr=False)


def token_request(params: OAuthParams) -> TokenRequest:
    """The HTTP request for a new token: form-encoded, client id/secret as HTTP Basic, x-app-key."""
    basic = base64.b64encode(f"{params.client_id}:{params.client_secret}".encode()).decode("ascii")
    headers = {
        "Authorization": f"Basic {basic}",
        "x-app-key": params.app_key,
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
    }
    form: dict[str, str] = {"grant_type": params.grant_type}
    if params.grant_type == "password":
        form["username"] = params.username
        form["password"] = params.password
    if params.enterprise_id:
        form["enterpriseId"] = params.enterprise_id
    if params.scope:
        form["scope"] = params.scope
    return TokenRequest(url=params.gateway_url.rstrip("/") + TOKEN_PATH, headers=headers, form=form)


def parse_token_response(status: int, body: bytes, now: float) -> Token:
    """Turn the token endpoint's answer into a `Token`, or raise `AuthError` saying why."""
    if status in (400, 401, 403):
        raise AuthError(
            f"the OHIP token endpoint refused the credentials or app key (HTTP {status}); "
            "check OHIP_CLIENT_ID, OHIP_CLIENT_SECRET, OHIP_APP_KEY and OHIP_ENTERPRISE_ID",
            status=status,
            permanent=True,
        )
    if status == 429 or status >= 500:
        raise AuthError(f"the OHIP token endpoint is unavailable (HTTP {status})", status=status)
    if status != 200:
        raise AuthError(f"unexpected answer from the OHIP token endpoint (HTTP {status})", status=status)
    try:
        data: Any = json.loads(body)
        access_token = data["access_token"]
        expires_in = float(data.get("expires_in", 3600))
    except (ValueError, KeyError, TypeError) as exc:
        raise AuthError("the OHIP token endpoint answered 200 without a usable access_token") from exc
    if not isinstance(access_token, str) or not access_token or expires_in <= 0:
        raise AuthError("the OHIP token endpoint answered 200 without a usable access_token")
    return Token(access_token=access_token, issued_at=now, expires_at=now + expires_in)


class TokenCache:
    """Holds the current token and says when a new one is needed (pure: time is passed in).

    A token is renewed `refresh_margin` seconds before it expires, or at half its life when its
    whole life is shorter than twice the margin.
    """

    def __init__(self, refresh_margin: float = 300.0) -> None:
        self.refresh_margin = refresh_margin
        self._token: Token | None = None

    def current(self, now: float) -> Token | None:
        token = self._token
        if token is None:
            return None
        margin = min(self.refresh_margin, (token.expires_at - token.issued_at) / 2)
        return token if now < token.expires_at - margin else None

    def store(self, token: Token) -> None:
        self._token = token

    def invalidate(self) -> None:
        self._token = None

    def expires_at(self) -> float | None:
        return self._token.expires_at if self._token else None


class _Provider:
    """What the async and sync providers share: the cache, the clock and reading the answer."""

    def __init__(self, params: OAuthParams, *, clock: Callable[[], float], refresh_margin: float) -> None:
        self._params = params
        self._clock = clock
        self._cache = TokenCache(refresh_margin)
        self.fetches = 0

    def _cached(self) -> Token | None:
        return self._cache.current(self._clock())

    def _accept(self, response: httpx.Response) -> Token:
        token = parse_token_response(response.status_code, response.content, self._clock())
        self.fetches += 1
        self._cache.store(token)
        return token

    def invalidate(self) -> None:
        """Forget the token (after the server said 4401); the next `get()` fetches a new one."""
        self._cache.invalidate()

    def use(self, params: OAuthParams) -> None:
        """Ask with other credentials from now on (re-read after a refusal); the cached token goes."""
        self._params = params
        self._cache.invalidate()

    def expires_at(self) -> float | None:
        return self._cache.expires_at()


def _unreachable(exc: httpx.HTTPError, url: str) -> AuthError:
    why = type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        why += " (nothing answers there: check OHIP_GATEWAY_URL and the network path)"
    elif isinstance(exc, httpx.TimeoutException):
        why += " (no answer in time)"
    return AuthError(f"cannot reach the OHIP token endpoint {url}: {why}")


class AsyncTokenProvider(_Provider):
    """A cached token for asyncio code; concurrent callers share one fetch."""

    def __init__(
        self,
        params: OAuthParams,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float],
        refresh_margin: float = 300.0,
    ) -> None:
        super().__init__(params, clock=clock, refresh_margin=refresh_margin)
        self._client = client
        self._lock = asyncio.Lock()

    async def get(self) -> Token:
        async with self._lock:
            token = self._cached()
            if token is not None:
                return token
            request = token_request(self._params)
            try:
                response = await self._client.post(request.url, headers=request.headers, data=request.form)
            except httpx.HTTPError as exc:
                raise _unreachable(exc, request.url) from exc
            return self._accept(response)


class SyncTokenProvider(_Provider):
    """A cached token for synchronous code (the Lambda poll fallback)."""

    def __init__(
        self,
        params: OAuthParams,
        client: httpx.Client,
        *,
        clock: Callable[[], float],
        refresh_margin: float = 300.0,
    ) -> None:
        super().__init__(params, clock=clock, refresh_margin=refresh_margin)
        self._client = client
        self._lock = threading.Lock()

    def get(self) -> Token:
        with self._lock:
            token = self._cached()
            if token is not None:
                return token
            request = token_request(self._params)
            try:
                response = self._client.post(request.url, headers=request.headers, data=request.form)
            except httpx.HTTPError as exc:
                raise _unreachable(exc, request.url) from exc
            return self._accept(response)
