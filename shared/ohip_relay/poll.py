"""The OHIP Poll API client (synchronous httpx: the Lambda poll fallback).

    GET {gateway}/int/v1/externalSystem/{system}/businessEvents?limit=N
    GET {gateway}/int/v1/externalSystem/{system}/hotels/{hotel}/businessEvents?limit=N

Each call removes the events it returns from OPERA's queue (no offset, no acknowledgement), so the
caller must hand every returned item on durably before asking for the next page.

Outcomes of `fetch()`:

* a list of raw `businessEventData` items (empty on 204: the queue is empty);
* 401: the token is dropped and the request sent once more with a fresh one;
* `PollError(retryable=True)`: 429, 5xx, a timeout or a connection error. Nothing was dequeued that
  we know of; stop for now, the next tick tries again;
* `PollError(retryable=False)`: any other answer (400, 403, 404, a second 401...): configuration;
* `PollResponseMalformed`: a 200 whose body is not a `businessEventData` list. The server may have
  dequeued events with it, so the raw body travels with the exception for the caller to park.

Headers: `Authorization: Bearer`, `x-app-key`, `x-hotelid`, `x-externalsystem`. For the chain-wide
path (no hotel) `x-hotelid` carries the chain code (OHIP requires the header; which value it
expects there is not documented).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from .auth import AuthError, SyncTokenProvider

MAX_LIMIT = 100


class PollError(Exception):
    """The Poll API did not deliver a page. The message names the status or error class only."""

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class PollResponseMalformed(PollError):
    """A 200 that is not a `businessEventData` list. `body` is the raw answer (personal data: park
    it, never log it)."""

    def __init__(self, message: str, body: bytes) -> None:
        super().__init__(message, status=200, retryable=False)
        self.body = body


class PollClient:
    """Fetches pages of business events for one external system of one chain."""

    def __init__(
        self,
        http: httpx.Client,
        tokens: SyncTokenProvider,
        *,
        gateway_url: str,
        app_key: str,
        external_system: str,
        chain_code: str,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self._base = gateway_url.rstrip("/")
        self._app_key = app_key
        self._system = external_system
        self._chain = chain_code
        self.requests = 0

    def url(self, hotel: str | None) -> str:
        system = quote(self._system, safe="")
        if hotel is None:
            return f"{self._base}/int/v1/externalSystem/{system}/businessEvents"
        return f"{self._base}/int/v1/externalSystem/{system}/hotels/{quote(hotel, safe='')}/businessEvents"

    def fetch(
        self, hotel: str | None, limit: int, *, timeout: float | None = None
    ) -> list[Mapping[str, Any]]:
        """One page (see the module docstring). `timeout` bounds the whole request in seconds."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be from 1 to {MAX_LIMIT}")
        response = self._get(hotel, limit, timeout)
        if response.status_code == 401:
            self._tokens.invalidate()
            response = self._get(hotel, limit, timeout)
        return self._read(response)

    def _get(self, hotel: str | None, limit: int, timeout: float | None) -> httpx.Response:
        try:
            token = self._tokens.get()
        except AuthError as exc:
            raise PollError(str(exc), status=exc.status, retryable=not exc.permanent) from exc
        headers = {
            "Authorization": token.authorization(),
            "x-app-key": self._app_key,
            "x-hotelid": hotel or self._chain,
            "x-externalsystem": self._system,
            "Accept": "application/json",
        }
        self.requests += 1
        try:
            return self._http.get(
                self.url(hotel),
                params={"limit": str(limit)},
                headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else httpx.Timeout(timeout),
            )
        except httpx.TimeoutException as exc:
            raise PollError(f"Poll API timed out ({type(exc).__name__})", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise PollError(f"Poll API unreachable ({type(exc).__name__})", retryable=True) from exc

    def _read(self, response: httpx.Response) -> list[Mapping[str, Any]]:
        status = response.status_code
        if status == 204:
            return []
        if status == 200:
            return _items(response.content)
        if status == 429 or status >= 500:
            raise PollError(
                f"Poll API unavailable (HTTP {status})",
                status=status,
                retryable=True,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        raise PollError(f"Poll API refused the request (HTTP {status})", status=status, retryable=False)


def _items(body: bytes) -> list[Mapping[str, Any]]:
    if not body.strip():
        return []
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PollResponseMalformed("Poll API answered 200 with a body that is not JSON", body) from None
    if not isinstance(data, Mapping):
        raise PollResponseMalformed("Poll API answered 200 with a body that is not an object", body)
    items = data.get("businessEventData", [])
    if not isinstance(items, list):
        raise PollResponseMalformed("Poll API answered 200 without a businessEventData list", body)
    # Items that are not objects are kept: the caller reports and parks them as malformed events.
    return items


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
