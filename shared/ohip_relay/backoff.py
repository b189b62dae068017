"""Reconnect policy, pure: what a close code means, and how long to wait before the next attempt.

Nothing here does I/O, reads a clock or owns a random source: `Backoff` draws from the
`random.Random` it is given, so tests are deterministic.

Close codes (ohip-api.md section 1, "Connecting"): the OHIP guide names 4401, 4403, 4409 and 4504 and
asks that each be treated as transient or permanent; the graphql-transport-ws protocol adds 4400,
4406, 4408, 4429 and 4500; the rest are WebSocket codes (RFC 6455). Every code maps to a
`CloseOutcome`; a code we do not know is transient, so a gateway that invents a new code gets a
backoff, never a stop.

Handshake refusals (an HTTP status instead of a WebSocket) and token-endpoint failures map onto the
same `CloseOutcome` so the I/O layer has one decision path; for those `code` holds the HTTP status
(below 1000, so it never collides with a WebSocket close code) or None.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

#: After a 4409 (another client holds the stream) wait at least this long, then back off on top.
#: The guide asks for a lockout but gives no number; ohip-api.md sets the floor at 10 s.
CONFLICT_LOCKOUT = 10.0
#: A 4403 needs a human (app not approved / not subscribed): retry, but only every few minutes.
FORBIDDEN_RETRY = 300.0
#: Credentials the token endpoint refuses (HTTP 400/401/403) need a human too, but the fix (a new
#: secret in Secrets Manager, a corrected variable and a restart) is often quick: the first retry
#: comes after AUTH_RETRY_FIRST seconds, each next one after twice as long, at most
#: AUTH_RETRY_CAP (30, 60, 120, 240, 300, 300... seconds), plus the usual jitter on top.
AUTH_RETRY_FIRST = 30.0
AUTH_RETRY_CAP = FORBIDDEN_RETRY
#: Servers that say "too many requests" (4429, HTTP 429, 1013) get a floor too.
THROTTLED_RETRY = 10.0

_MAX_PEER_REASON = 123  # the longest reason a WebSocket close frame can carry (RFC 6455 5.5.1)


class CloseKind(StrEnum):
    """What the I/O layer should do after a connection ended."""

    EXPECTED = "expected"  # a clean close after our own `complete`: shutdown went as planned
    TRANSIENT = "transient"  # reconnect with backoff
    RENEW_TOKEN = "renew_token"  # noqa: S105 - a kind, not a secret. Drop the cached OAuth token, then reconnect
    CONFLICT = "conflict"  # someone else holds the stream: wait out the lockout, then back off
    PERMANENT = "permanent"  # needs a human: alarm, and retry only slowly


@dataclass(frozen=True, slots=True)
class CloseOutcome:
    """The classification of one ended connection.

    `reason` is our own wording (safe to log); `peer_reason` is what the server put in its close
    frame, trimmed to one printable line. `min_delay` is a floor in seconds that `Backoff` adds its
    jittered delay on top of. `alarm` means a human should look (log at error, raise an alarm).
    """

    code: int | None
    kind: CloseKind
    reason: str
    renew_token: bool = False
    min_delay: float = 0.0
    alarm: bool = False
    peer_reason: str = ""

    @property
    def expected(self) -> bool:
        return self.kind is CloseKind.EXPECTED

    @property
    def permanent(self) -> bool:
        return self.kind is CloseKind.PERMANENT

    @classmethod
    def for_handshake_status(cls, status: int) -> CloseOutcome:
        """See `classify_handshake_status`."""
        return classify_handshake_status(status)

    @classmethod
    def for_auth_failure(
        cls, *, permanent: bool, refusals: int = 1, first: float = AUTH_RETRY_FIRST
    ) -> CloseOutcome:
        """The OAuth token endpoint failed before we could connect.

        Permanent (bad credentials, unknown client): an alarm, and a retry after `auth_retry_floor`
        (`refusals` counts the refusals in a row, this one included). Otherwise (timeout, 5xx,
        unreachable): transient.
        """
        if permanent:
            return cls(
                None,
                CloseKind.PERMANENT,
                "the OAuth token request was refused: check the client credentials",
                min_delay=auth_retry_floor(refusals, first=first),
                alarm=True,
            )
        return cls(None, CloseKind.TRANSIENT, "the OAuth token request failed")


def auth_retry_floor(refusals: int, *, first: float = AUTH_RETRY_FIRST) -> float:
    """Seconds to wait after the `refusals`-th refusal of the credentials in a row (1-based):
    `first` (AUTH_RETRY_FIRST), doubling, at most AUTH_RETRY_CAP."""
    if refusals < 1:
        raise ValueError("refusals counts from 1")
    return min(AUTH_RETRY_CAP, first * 2.0 ** min(refusals - 1, 16))


# code -> (kind, our reason, min_delay, alarm). `renew_token` follows from the kind.
_CLOSE_CODES: dict[int, tuple[CloseKind, str, float, bool]] = {
    # WebSocket (RFC 6455)
    1000: (CloseKind.TRANSIENT, "the server closed the stream without being asked", 0.0, False),
    1001: (CloseKind.TRANSIENT, "the server is going away", 0.0, False),
    1005: (CloseKind.TRANSIENT, "closed without a status code", 0.0, False),
    1006: (CloseKind.TRANSIENT, "the connection was lost without a close frame", 0.0, False),
    # 1009 is raised locally when a frame exceeds our max_size: replay will bring the same frame
    # back, so it keeps happening until someone raises the limit.
    1009: (CloseKind.TRANSIENT, "a frame was larger than the configured maximum", 0.0, True),
    1011: (CloseKind.TRANSIENT, "the server hit an internal error", 0.0, False),
    1012: (CloseKind.TRANSIENT, "the server is restarting", 0.0, False),
    1013: (CloseKind.TRANSIENT, "the server asked us to try again later", THROTTLED_RETRY, False),
    1014: (CloseKind.TRANSIENT, "bad gateway", 0.0, False),
    # graphql-transport-ws (graphql-ws PROTOCOL.md) and OHIP (STMIG Troubleshooting)
    4400: (CloseKind.TRANSIENT, "the server rejected a message as invalid", 0.0, False),
    4401: (CloseKind.RENEW_TOKEN, "unauthorised: the token is bad or expired", 0.0, False),
    4403: (CloseKind.PERMANENT, "forbidden: app not approved or not subscribed", FORBIDDEN_RETRY, True),
    # Not acceptable means client and gateway disagree on the subprotocol: it will not fix itself.
    4406: (CloseKind.TRANSIENT, "the server does not accept the graphql-transport-ws subprotocol", 0.0, True),
    4408: (CloseKind.TRANSIENT, "connection_init was not received in time", 0.0, False),
    4409: (CloseKind.CONFLICT, "another client is connected for this key and chain", CONFLICT_LOCKOUT, False),
    4429: (CloseKind.TRANSIENT, "too many initialisation requests", THROTTLED_RETRY, False),
    4500: (CloseKind.TRANSIENT, "the server hit an internal error", 0.0, False),
    4504: (CloseKind.TRANSIENT, "gateway timeout", 0.0, False),
}


def _clean_peer_reason(reason: str) -> str:
    printable = "".join(ch if ch.isprintable() else " " for ch in reason)
    return printable.strip()[:_MAX_PEER_REASON]


def classify_close(code: int | None, reason: str = "", *, after_complete: bool = False) -> CloseOutcome:
    """Classify a WebSocket close code (None when the connection ended without one).

    `after_complete`: we had sent `complete`. The guide has the server close the socket itself
    once it has sent what remains (ohip-api.md section 1, "Stopping"), so a 1000 then is the
    planned end, EXPECTED; any other code is classified as usual.
    """
    peer_reason = _clean_peer_reason(reason)
    if code is None:
        code = 1006
    if code == 1000 and after_complete:
        return CloseOutcome(
            code,
            CloseKind.EXPECTED,
            "the server closed the stream after our complete",
            peer_reason=peer_reason,
        )
    entry = _CLOSE_CODES.get(code)
    if entry is None:
        return CloseOutcome(
            code,
            CloseKind.TRANSIENT,
            f"unknown close code {code}: treated as transient",
            peer_reason=peer_reason,
        )
    kind, text, min_delay, alarm = entry
    return CloseOutcome(
        code,
        kind,
        text,
        renew_token=kind is CloseKind.RENEW_TOKEN,
        min_delay=min_delay,
        alarm=alarm,
        peer_reason=peer_reason,
    )


def classify_handshake_status(status: int) -> CloseOutcome:
    """Classify an HTTP status that refused the WebSocket upgrade.

    Gateways may refuse before the WebSocket exists; the meanings mirror the close codes:
    401 -> renew the token, 403 -> permanent, 409 -> conflict, 429 -> throttled, 404 (wrong gateway
    URL or path) -> permanent, anything else (5xx, proxies) -> transient.
    """
    if status == 401:
        return CloseOutcome(
            status, CloseKind.RENEW_TOKEN, "HTTP 401 on the upgrade: token bad or expired", renew_token=True
        )
    if status == 403:
        return CloseOutcome(
            status,
            CloseKind.PERMANENT,
            "HTTP 403 on the upgrade: app not allowed",
            min_delay=FORBIDDEN_RETRY,
            alarm=True,
        )
    if status == 404:
        return CloseOutcome(
            status,
            CloseKind.PERMANENT,
            "HTTP 404 on the upgrade: check the gateway URL",
            min_delay=FORBIDDEN_RETRY,
            alarm=True,
        )
    if status == 409:
        return CloseOutcome(
            status,
            CloseKind.CONFLICT,
            "HTTP 409 on the upgrade: another client connected",
            min_delay=CONFLICT_LOCKOUT,
        )
    if status == 429:
        return CloseOutcome(
            status, CloseKind.TRANSIENT, "HTTP 429 on the upgrade: throttled", min_delay=THROTTLED_RETRY
        )
    return CloseOutcome(status, CloseKind.TRANSIENT, f"HTTP {status} on the upgrade")


def full_jitter(attempt: int, base: float, cap: float, u: float) -> float:
    """Exponential backoff with full jitter: `u * min(cap, base * 2**attempt)`, `u` in [0, 1).

    Full jitter (a uniform draw from zero to the exponential ceiling) spreads reconnects of many
    clients and of repeated failures better than a fixed or equal-jitter delay.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt}")
    if not 0.0 <= u < 1.0:
        raise ValueError(f"u must be in [0, 1), not {u}")
    ceiling = cap if attempt >= 63 else min(cap, base * (2.0**attempt))
    return u * ceiling


class Backoff:
    """Reconnect delays: exponential with full jitter, a floor per close outcome, reset when healthy.

        backoff = Backoff(base=1.0, cap=60.0, rng=random.Random())
        delay = backoff.next_delay(closed.outcome, healthy_for=closed.connected_for)

    `next_delay` first resets the attempt counter when the connection that just ended had been
    up (acknowledged) for at least `healthy_after` seconds, so one drop after hours of service
    starts again from `base`, while a connection that keeps failing within seconds keeps
    climbing to `cap`. The outcome's `min_delay` is then added to the jittered delay: a 4409
    waits at least the lockout and still spreads out, a 4403 retries only every few minutes.
    """

    __slots__ = ("_attempt", "_base", "_cap", "_healthy_after", "_rng")

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 60.0,
        *,
        rng: random.Random,
        healthy_after: float = 60.0,
    ) -> None:
        if base <= 0:
            raise ValueError(f"base must be > 0, not {base}")
        if cap < base:
            raise ValueError(f"cap ({cap}) must be >= base ({base})")
        if healthy_after < 0:
            raise ValueError(f"healthy_after must be >= 0, not {healthy_after}")
        self._base = base
        self._cap = cap
        self._healthy_after = healthy_after
        self._rng = rng
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self, outcome: CloseOutcome | None = None, *, healthy_for: float | None = None) -> float:
        """Seconds to wait before the next connection attempt."""
        if healthy_for is not None and healthy_for >= self._healthy_after:
            self._attempt = 0
        delay = full_jitter(self._attempt, self._base, self._cap, self._rng.random())
        self._attempt += 1
        if outcome is not None:
            delay += outcome.min_delay
        return delay


__all__ = [
    "AUTH_RETRY_CAP",
    "AUTH_RETRY_FIRST",
    "CONFLICT_LOCKOUT",
    "FORBIDDEN_RETRY",
    "THROTTLED_RETRY",
    "Backoff",
    "CloseKind",
    "CloseOutcome",
    "auth_retry_floor",
    "classify_close",
    "classify_handshake_status",
    "full_jitter",
]
