"""`ohip-relay doctor`: check an OHIP + AWS setup step by step and say what to do next.

The checks run in the order a new setup fails in, and stop at the first failure with a plain
explanation and the concrete next step (which portal page or OPERA screen, whom to ask):

1. configuration        the environment variables (and the Secrets Manager secret) are present and well formed
2. gateway              DNS, TCP and TLS to the gateway host
3. oauth                the token endpoint accepts the client credentials, enterprise id and app key
4. stream_lease         no deployed relay holds the stream (DynamoDB lease and heartbeat): if one
                        does, the live streaming checks (5-8) are SKIPPED, never forced: OHIP allows
                        one client per app key and chain, and a second one earns a 4409 and a lockout
5. app_key              the WebSocket handshake accepts the key hash (HTTP 401 otherwise) and
                        connection_init's `x-app-key` (4401 otherwise)
6. stream_connection    the `graphql-transport-ws` subprotocol and `connection_ack`
7. subscription         the chain's subscription is approved (4403 otherwise)
8. single_client        no other client is connected for the app key and chain (4409 otherwise)
9. poll_api             the Poll API answers for the external system and each configured hotel
10. aws_queue, aws_table, aws_bucket    reachable with the calls the relay makes

What the checks never do:

- consume events. The subscription probe subscribes with an explicit offset far above any real
  one (`PROBE_OFFSET`), sends `complete` straight away and reads until the server closes, as the
  guide's "Stopping" asks. Replay is inclusive from an explicit offset, so there is nothing to
  replay; `complete` ends the subscription with what remains up to the newest event at that
  moment, which is nothing above the probe's offset. The only server-side position the guide
  documents is the replay floor that `offsetType: highest` sets, which the probe never uses. The
  relay resumes from its own DynamoDB checkpoint with an explicit offset (only its very first start
  uses `offsetType: highest`), so nothing the server might remember about the probe decides what
  the relay gets. After the probe's `complete` the next subscribe should wait 10 s: the result
  says so. What a server does with
  an offset above its newest event is not stated; any frame that arrives anyway is counted and
  dropped unread (it can be replayed: replays are repeatable within the 7-day retention).
- hold the stream from a running relay: when the lease or a fresh heartbeat says a relay holds it,
  the live streaming checks are skipped (see 4 above), and the probe respects the 10 s gap after
  a relay's `complete`.
- dequeue from the Poll API: see `POLL_PROBE_LIMIT`.
- print a secret: every text is scrubbed of the client secret, the app key and the token.

Each check's verdict comes from a small pure function (`explain_*`) returning a `CheckResult`, so
unit tests cover the wording; `run_doctor` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx
from botocore.exceptions import BotoCoreError, ClientError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from .auth import AuthError, OAuthParams, parse_token_response, token_request
from .config import ConfigError, Need, Settings
from .protocol import (
    RESUBSCRIBE_GAP,
    SUBPROTOCOL,
    ConnectionAcked,
    ConnectionDead,
    DuplicateSkipped,
    EventReceived,
    ProtocolViolation,
    StreamProtocol,
    SubscriptionError,
    SubscriptionInput,
    stream_url,
)
from .state import Heartbeat, Lease, StateStore, StateStoreError, StreamState

#: The subscription probe's offset: the largest value `NewEventInput.offset` allows (10 digits).
#: Replay is inclusive from the offset, so the server has nothing to send from here; unlike
#: `offsetType: highest` (whose subscribe keeps earlier events out of later replays) an explicit
#: offset sets no documented server-side position.
PROBE_OFFSET: Final = "9999999999"

#: The Poll API probe's `limit`. The Poll API removes whatever it returns from OPERA's queue and
#: has no read-only call (the Integration Processor spec has only the two dequeuing GETs), so the
#: probe sends a request that cannot be served: `limit` is declared an integer, and a value that is
#: not a number is refused (400) by the gateway's validation or by any Java parameter binding before
#: a dequeue can start. Not 0 or a negative number: those are integers, and a server that maps
#: "less than 1" to the default of 1 would dequeue an event. A 400 therefore proves gateway, token,
#: app key and path; the local gateway checks the external system and hotel (404) before the limit,
#: OHIP's order is not documented (so a 400 there does not prove the external system exists).
POLL_PROBE_LIMIT: Final = "not-a-number"

_STALE_STATES = frozenset({StreamState.STOPPED, StreamState.FAILED})
_SERVER_TEXT_MAX = 160


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    NOT_RUN = "not_run"


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict. `detail` says what was found, `next_step` what to do (failures and skips)."""

    name: str
    ok: bool
    detail: str
    next_step: str = ""
    skipped: bool = False
    not_run: bool = False

    @property
    def status(self) -> Status:
        if self.not_run:
            return Status.NOT_RUN
        if self.skipped:
            return Status.SKIPPED
        return Status.OK if self.ok else Status.FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": TITLES.get(self.name, self.name),
            "status": str(self.status),
            "ok": self.ok,
            "detail": self.detail,
            "next_step": self.next_step,
        }


#: Every check, in the order they run, with the title the report prints.
TITLES: Final[dict[str, str]] = {
    "configuration": "Configuration",
    "gateway": "Gateway reachable",
    "oauth": "OAuth credentials",
    "stream_lease": "Stream not held by a running relay",
    "app_key": "Application key",
    "stream_connection": "Streaming connection",
    "subscription": "Subscription approved for the chain",
    "single_client": "No other client connected",
    "poll_api": "Poll API",
    "aws_queue": "SQS queue",
    "aws_table": "DynamoDB table",
    "aws_bucket": "S3 bucket",
}
CHECKS: Final = tuple(TITLES)
STREAM_CHECKS: Final = ("app_key", "stream_connection", "subscription", "single_client")


def _ok(name: str, detail: str, next_step: str = "") -> CheckResult:
    return CheckResult(name, True, detail, next_step)


def _fail(name: str, detail: str, next_step: str) -> CheckResult:
    return CheckResult(name, False, detail, next_step)


def _skip(name: str, detail: str, next_step: str = "") -> CheckResult:
    return CheckResult(name, True, detail, next_step, skipped=True)


def server_text(body: bytes | str, limit: int = _SERVER_TEXT_MAX) -> str:
    """The `detail` or `title` of an error body (problem details), one printable line, trimmed.
    Error bodies carry no event data; anything that is not such an object is left out."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [str(data[k]) for k in ("title", "detail", "error_description", "error") if data.get(k)]
    text = ": ".join(dict.fromkeys(parts))
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _said(text: str) -> str:
    return f" (the server said: {text!r})" if text else ""


# -- 1. configuration ---------------------------------------------------------------------------

NEEDS: Final = (Need.OHIP, Need.STREAM, Need.POLL, Need.AWS)

_CONFIG_NEXT: Final[dict[str, str]] = {
    "OHIP_GATEWAY_URL": "copy the gateway URL from the OHIP developer portal: Environments tab, your "
    "environment's card, View details",
    "OHIP_CLIENT_ID": "copy the client id from the OHIP developer portal (Environments, View details), "
    "or set OHIP_SECRET_ARN to the Secrets Manager secret that holds it",
    "OHIP_CLIENT_SECRET": "copy the client secret from the OHIP developer portal (Environments, View "
    "details), or set OHIP_SECRET_ARN to the Secrets Manager secret that holds it",
    "OHIP_APP_KEY": "copy the application key from the OHIP developer portal (Applications tab, your "
    "application), or set OHIP_SECRET_ARN to the Secrets Manager secret that holds it",
    "OHIP_CHAIN_CODE": "set the OPERA chain code whose events you subscribed to (ask the chain admin)",
    "OHIP_EXTERNAL_SYSTEM": "set the external system code configured in OPERA Cloud for polling "
    "(Administration > Interfaces > Business Events > External Systems)",
    "OHIP_HOTEL_IDS": "list hotel codes separated by commas, or leave it empty to poll the whole "
    "external system",
    "OHIP_SECRET_ARN": "check the ARN, that the secret is a JSON object with clientId, clientSecret and "
    "appKey, and that you may call secretsmanager:GetSecretValue on it (and kms:Decrypt on its key)",
    "RELAY_QUEUE_URL": "set it to the stack's QueueUrl output (sam deploy prints it)",
    "RELAY_TABLE_NAME": "set it to the stack's TableName output",
    "RELAY_BUCKET_NAME": "set it to the stack's BucketName output",
    "AWS_REGION": "set AWS_REGION to the region the stack is deployed in",
}


def explain_config(error: ConfigError | None, settings: Settings | None = None) -> CheckResult:
    """Configuration: `error` from `Settings.from_env` / `resolve_secrets`, or the settings read."""
    if error is not None:
        message = str(error)
        variable = message.split(":", 1)[0].strip()
        step = _CONFIG_NEXT.get(variable, "fix the variable named above (docs/configuration.md)")
        return _fail("configuration", message, step + "; docs/configuration.md lists every variable")
    assert settings is not None
    hotels = ",".join(settings.hotel_ids) or "all hotels of the external system"
    source = "Secrets Manager" if settings.secret_arn else "the environment"
    return _ok(
        "configuration",
        f"gateway {settings.gateway_url}, chain {settings.chain_code}, external system "
        f"{settings.external_system} ({hotels}); credentials from {source}",
    )


# -- 2. gateway -----------------------------------------------------------------------------------


def explain_gateway(
    exc: BaseException | None, host: str, port: int, *, tls: bool, timeout: float
) -> CheckResult:
    """Gateway reachable: `exc` is what resolving, connecting or the TLS handshake raised, or None."""
    where = f"{host}:{port}"
    portal = (
        "compare OHIP_GATEWAY_URL with the gateway URL in the OHIP developer portal (Environments tab, "
        "View details)"
    )
    if exc is None:
        return _ok("gateway", f"{where} resolves and accepts {'TLS ' if tls else ''}connections")
    if isinstance(exc, socket.gaierror):
        return _fail(
            "gateway",
            f"cannot resolve the host name {host} (DNS: {exc.strerror or exc})",
            f"{portal}; from inside a VPC, check that the subnets have DNS and a route to the internet",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
        return _fail(
            "gateway",
            f"the TLS certificate of {host} is not trusted: {why}",
            "if a company proxy inspects TLS, point SSL_CERT_FILE at its CA bundle; otherwise check "
            f"that {host} really is the OHIP gateway ({portal})",
        )
    if isinstance(exc, ssl.SSLError):
        return _fail(
            "gateway",
            f"the TLS handshake with {where} failed ({getattr(exc, 'reason', None) or type(exc).__name__})",
            f"check that the port speaks HTTPS and that no proxy interferes; {portal}",
        )
    if isinstance(exc, ConnectionRefusedError):
        return _fail(
            "gateway",
            f"{where} refused the connection (nothing listens there)",
            f"{portal}; the gateway URL normally has no port (HTTPS, 443)",
        )
    if isinstance(exc, TimeoutError):
        return _fail(
            "gateway",
            f"no answer from {where} within {timeout:g}s",
            "allow outbound HTTPS (TCP 443) to the gateway: security group, network ACL, NAT gateway or "
            f"company firewall/proxy; {portal}",
        )
    return _fail(
        "gateway",
        f"cannot connect to {where} ({type(exc).__name__}: {getattr(exc, 'strerror', None) or exc})",
        f"check the network path to the gateway; {portal}",
    )


# -- 3. OAuth ---------------------------------------------------------------------------------------


def explain_token(
    status: int | None, body: bytes, *, error: str = "", enterprise_id: str = ""
) -> CheckResult:
    """OAuth: the token endpoint's answer (`status` None when the request itself failed)."""
    portal = "the OHIP developer portal: Environments tab, your environment's card, View details"
    if status is None:
        return _fail(
            "oauth",
            f"the token request to the gateway failed ({error or 'no answer'})",
            "the gateway was reachable a moment ago: check proxies and retry; if it persists, check the "
            "OHIP status page",
        )
    said = _said(server_text(body))
    if status == 200:
        try:
            token = parse_token_response(status, body, 0.0)
        except AuthError as exc:
            return _fail("oauth", str(exc), "report this to Oracle support with the time of the attempt")
        return _ok("oauth", f"a token was issued (valid {token.expires_at:g}s)")
    if status == 401:
        enterprise = (
            f"the enterprise id ({enterprise_id})"
            if enterprise_id
            else "the enterprise id (OHIP_ENTERPRISE_ID, not set)"
        )
        return _fail(
            "oauth",
            f"the token endpoint refused the request with HTTP 401{said}: the client id or secret, "
            f"{enterprise}, or the application key sent as x-app-key is wrong for this environment",
            f"copy the client id, client secret and enterprise id again from {portal}, and the application "
            "key from the Applications tab; they must all belong to the environment of OHIP_GATEWAY_URL. "
            "A secret that was regenerated in the portal invalidates the old one: update the Secrets "
            "Manager secret too",
        )
    if status == 403:
        return _fail(
            "oauth",
            f"the token endpoint answered HTTP 403 (forbidden){said}: the credentials are known but not "
            "allowed to get a token here",
            "the integration user or OAuth client may be disabled or lack access to this environment: ask "
            "the customer's OHIP administrator (the chain admin) to check it in the developer portal",
        )
    if status == 400:
        return _fail(
            "oauth",
            f"the token endpoint rejected the request as malformed (HTTP 400){said}",
            "some environments need OHIP_ENTERPRISE_ID and/or OHIP_OAUTH_SCOPE: copy them from " + portal,
        )
    if status == 429 or status >= 500:
        return _fail(
            "oauth",
            f"the token endpoint is unavailable (HTTP {status}){said}",
            "a temporary problem on Oracle's side: retry in a few minutes, check the OHIP status page",
        )
    return _fail(
        "oauth",
        f"unexpected answer from the token endpoint (HTTP {status}){said}",
        "check that OHIP_GATEWAY_URL is the gateway's base URL (no path), as shown in " + portal,
    )


# -- 4. the deployed relay's lease -------------------------------------------------------------------


def relay_holds_stream(
    lease: Lease | None, heartbeat: Heartbeat | None, now: float, *, stale_after: float
) -> str | None:
    """Who holds the stream according to DynamoDB (a description), or None when nobody does."""
    if lease is not None and lease.owner and lease.is_held(now):
        return f"relay {lease.owner!r} holds the stream lease for another {lease.lease_until - now:.0f}s"
    if heartbeat is not None and heartbeat.age(now) < stale_after and heartbeat.state not in _STALE_STATES:
        return f"relay {heartbeat.owner!r} reported state {heartbeat.state} {heartbeat.age(now):.0f}s ago"
    return None


def resubscribe_wait(heartbeat: Heartbeat | None, now: float) -> float:
    """Seconds to wait before the probe's `subscribe`: a relay that stopped (sent `complete`) less
    than 10 s ago gets the documented gap (ohip-api.md 1, "Stopping")."""
    if heartbeat is None or heartbeat.state is not StreamState.STOPPED:
        return 0.0
    return max(0.0, heartbeat.updated_at + RESUBSCRIBE_GAP - now)


def explain_lease(
    holder: str | None, *, read_error: str = "", lease_seconds: float = 30.0
) -> tuple[CheckResult, CheckResult | None]:
    """The lease check, and (when a relay holds the stream) the result every live stream check gets."""
    if read_error:
        return (
            _ok(
                "stream_lease",
                f"could not read the relay's lease and heartbeat ({read_error}); going on with the "
                "streaming checks: a 4409 below would mean a relay or another client is connected",
            ),
            None,
        )
    if holder is None:
        return _ok("stream_lease", "no relay holds the stream (lease free, no fresh heartbeat)"), None
    detail = (
        f"{holder}: the live streaming checks are skipped. OHIP allows one client per application key "
        "and chain; a second connection would be refused with 4409 and lock the app and chain out for a "
        "while, which the relay could run into on its next reconnect"
    )
    step = (
        "the relay's heartbeat already shows whether streaming works (ohip-relay status). To run these "
        "checks, stop the relay (ECS service desired count 0), wait for the lease to lapse (up to "
        f"{lease_seconds:g}s), run ohip-relay doctor, then start the relay again"
    )
    return _ok("stream_lease", detail), _skip("-", f"skipped: {holder}", step)


# -- 5-8. the streaming probe ------------------------------------------------------------------------


@dataclass
class StreamProbe:
    """What one probe connection saw."""

    handshake_status: int | None = None  # an HTTP status that refused the upgrade
    handshake_body: bytes = b""
    connect_error: str = ""  # the exception class when the connection could not be opened
    subprotocol: str | None = None
    acked: bool = False
    subscribed: bool = False
    close_code: int | None = None
    close_reason: str = ""
    closed_after_complete: bool = False
    subscription_error: str = ""
    protocol_problem: str = ""  # a ProtocolViolation or ConnectionDead reason
    frames_dropped: int = 0  # events the server sent anyway; counted, never kept
    waited_for_gap: float = 0.0


_PORTAL_APP = "the OHIP developer portal, Applications tab, your application"


def explain_stream(probe: StreamProbe, *, chain: str, timeout: float) -> list[CheckResult]:
    """The four live streaming checks from one probe connection, in order; the list stops at the
    first failure (the checks after it are not run)."""
    out: list[CheckResult] = []
    said = _said(probe.close_reason.strip())

    # app_key: the handshake (hash) -----------------------------------------------------------
    if probe.handshake_status is not None:
        status = probe.handshake_status
        text = _said(server_text(probe.handshake_body))
        if status == 401:
            out.append(
                _fail(
                    "app_key",
                    f"the streaming endpoint refused the WebSocket handshake with HTTP 401{text}: it does "
                    "not know the application key whose SHA-256 is in the URL (?key=...), although the token "
                    "endpoint accepted the key",
                    f"check OHIP_APP_KEY against {_PORTAL_APP}; the application must be registered for the "
                    "environment of OHIP_GATEWAY_URL, and streaming must be enabled for that environment "
                    "(customers: Oracle Professional Services or a technical SR; partners: a technical SR)",
                )
            )
            return out
        if status in (403, 404):
            meaning = "forbidden" if status == 403 else "no streaming endpoint at this URL"
            out.append(_ok("app_key", "the key hash was not refused (not verified further)"))
            out.append(
                _fail(
                    "stream_connection",
                    f"the gateway refused the WebSocket handshake with HTTP {status} ({meaning}){text}",
                    "streaming is probably not enabled for this environment: customers ask Oracle "
                    "Professional Services (first environment) or raise a technical SR (further ones) "
                    "with the details on the environment's card; partners raise a technical SR",
                )
            )
            return out
        out.append(_ok("app_key", "the key hash was not refused (not verified further)"))
        out.append(
            _fail(
                "stream_connection",
                f"the gateway refused the WebSocket handshake with HTTP {status}{text}",
                "retry in a few minutes (a temporary problem on Oracle's side) and check the OHIP status page"
                if status == 429 or status >= 500
                else "check for a proxy that blocks WebSocket upgrades between you and the gateway",
            )
        )
        return out
    if probe.connect_error:
        out.append(_ok("app_key", "not verified: the WebSocket could not be opened"))
        out.append(
            _fail(
                "stream_connection",
                f"cannot open the WebSocket to the streaming endpoint ({probe.connect_error})",
                "the gateway answers HTTPS but the WebSocket upgrade did not complete: a proxy or "
                "firewall may block WebSocket traffic (wss://.../subscriptions); allow it",
            )
        )
        return out

    # app_key: connection_init (plain key) ------------------------------------------------------
    if not probe.acked and probe.close_code == 4401:
        out.append(
            _fail(
                "app_key",
                f"the streaming endpoint accepted the key hash but closed with 4401 (unauthorised) after "
                f"connection_init{said}: it refused the plain application key (x-app-key) or the OAuth token",
                f"OHIP_APP_KEY must be the key exactly as shown in {_PORTAL_APP} (its hash and the key "
                "itself must match), and the OAuth client must belong to the same environment as the "
                "application. If both are right, the token is not valid for streaming: ask Oracle support",
            )
        )
        return out
    if not probe.acked:
        out.append(_ok("app_key", "the key hash was accepted (x-app-key not verified: no connection_ack)"))
        if probe.subprotocol != SUBPROTOCOL or probe.close_code == 4406:
            detail = "the server did not accept the graphql-transport-ws subprotocol" + (
                f" (close code {probe.close_code}){said}" if probe.close_code else ""
            )
            step = (
                "a proxy may strip the Sec-WebSocket-Protocol header: allow it, or connect without the proxy"
            )
        elif probe.close_code is not None:
            detail = f"the server closed the connection with {probe.close_code} before connection_ack{said}"
            step = "retry; if it persists, ask Oracle support with the time of the attempt and the close code"
        else:
            detail = f"no connection_ack ({probe.protocol_problem or f'nothing within {timeout:g}s'})"
            step = "retry; if it persists, ask Oracle support with the time of the attempt"
        out.append(_fail("stream_connection", detail, step))
        return out
    out.append(_ok("app_key", "the key hash (handshake) and x-app-key (connection_init) were accepted"))
    out.append(_ok("stream_connection", f"{SUBPROTOCOL} negotiated, connection_ack received"))

    # subscription and single client ----------------------------------------------------------------
    gap_note = (
        f" The probe sent complete: leave at least {RESUBSCRIBE_GAP:g}s before the relay (or another "
        "doctor run) subscribes again."
    )
    if probe.close_code == 4409:
        out.append(
            _skip(
                "subscription",
                "not verified: the server reported another client before it would start the subscription",
            )
        )
        out.append(
            _fail(
                "single_client",
                f"closed with 4409{said}: another client is already connected for this application key and "
                f"chain {chain}. Only one may be, so this is probably the deployed relay (its lease or "
                "heartbeat may be missing from the table you pointed doctor at), a second relay stack, or a "
                "test client (Postman, GraphiQL) someone left open",
                "stop the other client (ecs update-service --desired-count 0 for a relay), wait at least "
                f"{RESUBSCRIBE_GAP:g}s for the lockout that follows a 4409, then run doctor again",
            )
        )
        return out
    if probe.close_code == 4403:
        out.append(
            _fail(
                "subscription",
                f"closed with 4403 (forbidden){said}: the application is not subscribed to chain {chain}'s "
                "events, or the subscription is not approved for any hotel yet",
                f"in {_PORTAL_APP}: add the business events to the Events tab (the template), then "
                "subscribe the application to the environment; the environment owner (the customer's chain "
                "admin in the developer portal) must approve the subscription for one or more hotels. "
                "Also check OHIP_CHAIN_CODE",
            )
        )
        return out
    if probe.subscription_error:
        out.append(
            _fail(
                "subscription",
                f"the server refused the subscribe request: {probe.subscription_error}",
                "check OHIP_CHAIN_CODE; if it is right, report the message to Oracle support",
            )
        )
        return out
    if probe.closed_after_complete:
        dropped = (
            f" The server sent {probe.frames_dropped} event(s) anyway; doctor dropped them unread (the relay "
            "replays from its own checkpoint)."
            if probe.frames_dropped
            else ""
        )
        waited = (
            f" Waited {probe.waited_for_gap:.1f}s first (a relay had just sent complete)."
            if probe.waited_for_gap
            else ""
        )
        out.append(
            _ok(
                "subscription",
                f"chain {chain} accepted a subscription (probe at offset {PROBE_OFFSET}, so nothing to "
                f"replay; the server closed after complete).{waited}{dropped}{gap_note}",
            )
        )
        out.append(_ok("single_client", "no other client is connected for this application key and chain"))
        return out
    reason = (
        f"closed with {probe.close_code}{said}"
        if probe.close_code is not None
        else probe.protocol_problem or "the connection ended without a close code"
    )
    out.append(
        _fail(
            "subscription",
            f"the subscription probe did not finish: {reason}",
            "retry in a minute; if it persists, ask Oracle support with the time of the attempt and the "
            "close code",
        )
    )
    return out


# -- 9. Poll API ----------------------------------------------------------------------------------------


def explain_poll(
    answers: Sequence[tuple[str | None, int | None, bytes, str]], *, system: str, chain: str
) -> CheckResult:
    """Poll API: one (hotel or None for the chain-wide path, status or None, body, error) per probe."""
    opera = (
        "in OPERA Cloud: Administration > Interfaces > Business Events > External Systems (and Configure "
        "Business Events for it); the chain admin grants the role permissions for these screens"
    )
    checked: list[str] = []
    for hotel, status, body, error in answers:
        what = f"hotel {hotel}" if hotel else f"chain {chain} (all hotels)"
        said = _said(server_text(body))
        if status is None:
            return _fail(
                "poll_api",
                f"the Poll API request for {what} failed ({error})",
                "the gateway answered a moment ago: check proxies and retry",
            )
        if status == 400:
            checked.append(what)
            continue
        if status in (200, 204):
            lost = (
                " and returned events, which the Poll API has now dequeued (doctor did not read them; the "
                "stream carries the same changes and the relay replays them from its checkpoint)"
                if status == 200
                else ""
            )
            return _ok(
                "poll_api",
                f"the Poll API answered HTTP {status} for {what}: it ignored the deliberately invalid limit"
                f"{lost}; doctor stopped probing so as not to dequeue anything else",
                "nothing to fix in your setup; report this answer (the server ignores an invalid limit) so "
                "the probe can be changed",
            )
        if status == 404:
            return _fail(
                "poll_api",
                f"the Poll API does not know external system {system} for {what} (HTTP 404){said}",
                f"create or activate external system {system} for "
                f"{'hotel ' + hotel if hotel else 'the hotels'} {opera}; OHIP_EXTERNAL_SYSTEM must be its "
                "code and OHIP_HOTEL_IDS only hotels it is configured for",
            )
        if status == 401:
            return _fail(
                "poll_api",
                f"the Poll API refused the token or the application key for {what} (HTTP 401){said}",
                "the token endpoint accepted them, so the application may lack access to the Integration "
                f"Processor API: check {_PORTAL_APP}",
            )
        if status == 403:
            return _fail(
                "poll_api",
                f"the Poll API refused {what} (HTTP 403){said}: the integration user may not read business "
                "events for it",
                "ask the chain admin to give the integration user access to this hotel and to the external "
                "system's business events (OPERA Cloud Role Manager)",
            )
        if status == 429 or status >= 500:
            return _fail(
                "poll_api",
                f"the Poll API is unavailable (HTTP {status}) for {what}{said}",
                "a temporary problem on Oracle's side: retry in a few minutes",
            )
        return _fail(
            "poll_api",
            f"unexpected Poll API answer for {what} (HTTP {status}){said}",
            "report the answer to Oracle support with the time of the attempt",
        )
    return _ok(
        "poll_api",
        f"external system {system} answered for {', '.join(checked)}: the request was refused (HTTP 400) "
        f"for its deliberately invalid limit, before anything could be dequeued",
    )


# -- 10. AWS ---------------------------------------------------------------------------------------------


def _aws_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or "ClientError"
    return type(exc).__name__


_MISSING: Final[dict[str, frozenset[str]]] = {
    "aws_queue": frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}),
    "aws_table": frozenset({"ResourceNotFoundException"}),
    "aws_bucket": frozenset({"404", "NoSuchBucket", "NotFound"}),
}
_DENIED: Final = frozenset({"AccessDenied", "AccessDeniedException", "403", "UnauthorizedOperation"})
_AWS_WHAT: Final[dict[str, tuple[str, str, str]]] = {
    # name -> (resource, variable, the permission the relay uses)
    "aws_queue": ("queue", "RELAY_QUEUE_URL", "sqs:GetQueueAttributes and sqs:SendMessage"),
    "aws_table": ("table", "RELAY_TABLE_NAME", "dynamodb:GetItem, PutItem and UpdateItem"),
    "aws_bucket": ("bucket", "RELAY_BUCKET_NAME", "s3:PutObject on oversize/*"),
}


def explain_aws(name: str, resource_id: str, exc: BaseException | None) -> CheckResult:
    """The queue, table or bucket check: `exc` is what the probe call raised, or None."""
    resource, variable, permission = _AWS_WHAT[name]
    if exc is None:
        return _ok(name, f"{resource} {resource_id} is reachable")
    code = _aws_code(exc)
    if code in _MISSING[name]:
        return _fail(
            name,
            f"the {resource} {resource_id} does not exist in this account and region ({code})",
            f"deploy the stack (sam deploy) or set {variable} from the stack's outputs; check AWS_REGION",
        )
    if name == "aws_bucket" and code in _DENIED:
        return _ok(
            name,
            f"bucket {resource_id} exists; your identity may not list it (HEAD answered 403), which the "
            f"relay does not need: it only uses {permission}",
        )
    if code in _DENIED:
        return _fail(
            name,
            f"access to the {resource} {resource_id} was denied ({code})",
            f"run doctor under the stack's OperatorRole (output OperatorRoleArn; docs/permissions.md), which "
            f"may read it, and check {variable}: the roles cover the stack's own {resource} only (the relay "
            f"uses {permission})",
        )
    if name == "aws_table" and code == "ValidationException":
        return _fail(
            name,
            f"the table {resource_id} exists but its key is not the relay's (hash key pk, a string)",
            f"set {variable} to the stack's TableName output",
        )
    if isinstance(exc, BotoCoreError):
        return _fail(
            name,
            f"cannot call AWS for the {resource} {resource_id} ({code}: {exc})",
            "check the AWS credentials (AWS_PROFILE, aws sso login), AWS_REGION and the network path to AWS; "
            "for the local stack, AWS_ENDPOINT_URL and the other exports `ohip-relay local aws` printed",
        )
    return _fail(
        name,
        f"the {resource} {resource_id} could not be checked ({code})",
        "check the AWS credentials, AWS_REGION and the resource in the AWS console",
    )


# -- the report ----------------------------------------------------------------------------------------


EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2


@dataclass(frozen=True)
class DoctorReport:
    results: tuple[CheckResult, ...]  # every check in `CHECKS` order; after a failure: not run

    @property
    def failed(self) -> CheckResult | None:
        return next((r for r in self.results if r.status is Status.FAILED), None)

    @property
    def ok(self) -> bool:
        return self.failed is None

    @property
    def exit_code(self) -> int:
        failed = self.failed
        if failed is None:
            return EXIT_OK
        return EXIT_CONFIG if failed.name == "configuration" else EXIT_FAILED

    def to_dict(self) -> dict[str, Any]:
        failed = self.failed
        return {
            "ok": self.ok,
            "failed": failed.name if failed else None,
            "checks": [r.to_dict() for r in self.results],
        }

    def to_text(self) -> str:
        marks = {
            Status.OK: "ok",
            Status.FAILED: "FAILED",
            Status.SKIPPED: "skipped",
            Status.NOT_RUN: "not run",
        }
        lines: list[str] = []
        said: set[str] = set()  # a next step shared by several skipped checks is printed once
        for r in self.results:
            status = r.status
            if status is Status.NOT_RUN:
                lines.append(f"  {marks[status]:<8} {TITLES[r.name]}")
                continue
            lines.append(f"  {marks[status]:<8} {TITLES[r.name]}: {r.detail}")
            if r.next_step and r.next_step not in said:  # failures and skips; an ok with one: a report
                said.add(r.next_step)
                lines.append(f"  {'':<8} next step: {r.next_step}")
        failed = self.failed
        if failed is None:
            lines.append(
                "All checks passed."
                if not any(r.skipped for r in self.results)
                else "No check failed (some were skipped, see above)."
            )
        else:
            lines.append(f"Stopped at: {TITLES[failed.name]}.")
        return "\n".join(lines)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret replaced by `***`."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


# -- the I/O -------------------------------------------------------------------------------------------


Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class DoctorOptions:
    timeout: float = 10.0  # each network step
    clock: Callable[[], float] = time.time
    sleep: Sleep = asyncio.sleep
    max_frame_bytes: int = 4 * 1024 * 1024


class _Run:
    def __init__(self, options: DoctorOptions) -> None:
        self.options = options
        self.results: dict[str, CheckResult] = {}
        self.secrets: list[str] = []
        self._clients: dict[str, Any] = {}

    def aws(self, settings: Settings, service: str) -> Any:
        """One boto3 client per service for the whole run."""
        if service not in self._clients:
            from .runtime import aws_client

            self._clients[service] = aws_client(settings, service)
        return self._clients[service]

    def add(self, result: CheckResult) -> bool:
        """Record `result` (scrubbed); True when the run goes on."""
        self.results[result.name] = replace(
            result, detail=scrub(result.detail, self.secrets), next_step=scrub(result.next_step, self.secrets)
        )
        return result.ok

    def report(self) -> DoctorReport:
        return DoctorReport(
            tuple(
                self.results.get(name)
                or CheckResult(name, False, "not run: an earlier check failed", not_run=True)
                for name in CHECKS
            )
        )


async def run_doctor(env: Mapping[str, str], options: DoctorOptions | None = None) -> DoctorReport:
    """Run the checks in order, stopping at the first failure."""
    run = _Run(options or DoctorOptions())
    with contextlib.suppress(_Stop):
        await _checks(run, env)
    return run.report()


class _Stop(Exception):
    pass


async def _checks(run: _Run, env: Mapping[str, str]) -> None:
    opts = run.options

    def need(result: CheckResult) -> None:
        if not run.add(result):
            raise _Stop

    settings = await _configuration(run, env)
    need(explain_config(None, settings))
    parts = urlsplit(settings.gateway_url)
    tls = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if tls else 80)
    need(
        explain_gateway(
            await _reach(host, port, tls, opts.timeout), host, port, tls=tls, timeout=opts.timeout
        )
    )

    async with httpx.AsyncClient(timeout=httpx.Timeout(opts.timeout)) as http:
        token = await _oauth(run, http, settings)
        if token is None:
            raise _Stop

        dynamodb = await asyncio.to_thread(run.aws, settings, "dynamodb")
        store = StateStore(dynamodb, settings.table_name, settings.chain_code)
        holder: str | None = None
        heartbeat: Heartbeat | None = None
        read_error = ""
        try:
            lease = await asyncio.to_thread(store.get_lease)
            heartbeat = await asyncio.to_thread(store.get_heartbeat)
            holder = relay_holds_stream(
                lease, heartbeat, opts.clock(), stale_after=settings.health_stale_seconds
            )
        except (StateStoreError, BotoCoreError, ClientError) as exc:
            read_error = getattr(exc, "code", "") or type(exc).__name__
        lease_result, skipped = explain_lease(
            holder, read_error=read_error, lease_seconds=settings.lease_seconds
        )
        need(lease_result)
        if skipped is not None:
            for name in STREAM_CHECKS:
                run.add(replace(skipped, name=name))
        else:
            wait = resubscribe_wait(heartbeat, opts.clock())
            probe = await probe_stream(settings, token, opts, wait=wait)
            for result in explain_stream(probe, chain=settings.chain_code, timeout=opts.timeout):
                need(result)

        answers = await _poll(http, settings, token)
        need(explain_poll(answers, system=settings.external_system, chain=settings.chain_code))

    need(
        explain_aws(
            "aws_queue",
            settings.queue_url,
            await _call(
                lambda: run.aws(settings, "sqs").get_queue_attributes(
                    QueueUrl=settings.queue_url, AttributeNames=["QueueArn"]
                )
            ),
        )
    )
    # A GetItem on a key no relay item can have: proves the table, its key schema and the GetItem
    # permission the relay uses (DescribeTable is not in the relay's roles).
    need(
        explain_aws(
            "aws_table",
            settings.table_name,
            await _call(
                lambda: run.aws(settings, "dynamodb").get_item(
                    TableName=settings.table_name,
                    Key={"pk": {"S": "doctor#probe"}},
                    ProjectionExpression="pk",
                )
            ),
        )
    )
    if not settings.bucket_name:
        run.add(
            _skip(
                "aws_bucket",
                "RELAY_BUCKET_NAME is not set: events over the SQS size limit cannot be stored",
                "set it to the stack's BucketName output",
            )
        )
    else:
        need(
            explain_aws(
                "aws_bucket",
                settings.bucket_name,
                await _call(lambda: run.aws(settings, "s3").head_bucket(Bucket=settings.bucket_name)),
            )
        )


async def _call(action: Callable[[], Any]) -> BaseException | None:
    try:
        await asyncio.to_thread(action)
    except (BotoCoreError, ClientError) as exc:
        return exc
    return None


async def _configuration(run: _Run, env: Mapping[str, str]) -> Settings:
    from .runtime import resolve_secrets

    # Before anything can fail: a message that quoted a raw value must not show a secret either.
    run.secrets.extend(env.get(name, "") for name in ("OHIP_CLIENT_SECRET", "OHIP_APP_KEY"))
    try:
        settings = Settings.from_env(env, *NEEDS)
        settings = await asyncio.to_thread(resolve_secrets, settings)
    except ConfigError as exc:
        run.add(explain_config(exc))
        raise _Stop from None
    run.secrets.extend([settings.client_secret, settings.app_key])
    return settings


async def _reach(host: str, port: int, tls: bool, within: float) -> BaseException | None:
    """Resolve, connect and (for https) shake hands; returns what failed, or None."""
    try:
        async with asyncio.timeout(within):
            await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            context = ssl.create_default_context() if tls else None
            _, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if tls else None
            )
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return exc
    return None


async def _oauth(run: _Run, http: httpx.AsyncClient, settings: Settings) -> str | None:
    request = token_request(OAuthParams.from_settings(settings))
    try:
        response = await http.post(request.url, headers=request.headers, data=request.form)
    except httpx.HTTPError as exc:
        run.add(explain_token(None, b"", error=type(exc).__name__))
        return None
    token: str | None = None
    if response.status_code == 200:
        with contextlib.suppress(AuthError):
            token = parse_token_response(200, response.content, 0.0).access_token
            run.secrets.append(token)
    result = explain_token(response.status_code, response.content, enterprise_id=settings.enterprise_id)
    return token if run.add(result) else None


async def probe_stream(
    settings: Settings, token: str, options: DoctorOptions, *, wait: float = 0.0
) -> StreamProbe:
    """One connection: handshake, connection_init, subscribe at `PROBE_OFFSET`, complete at once,
    read until the server closes. Events that arrive anyway are counted and dropped."""
    probe = StreamProbe()
    if wait > 0:
        await options.sleep(wait)
        probe.waited_for_gap = wait
    timeout = options.timeout
    core = StreamProtocol(token=token, app_key=settings.app_key, ack_timeout=timeout, drain_timeout=timeout)
    loop = asyncio.get_running_loop()
    try:
        async with connect(
            stream_url(settings.gateway_url, settings.app_key),
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            ping_interval=None,
            open_timeout=timeout,
            close_timeout=2.0,
            max_size=options.max_frame_bytes,
            user_agent_header="ohip-relay-doctor",
        ) as ws:
            probe.subprotocol = ws.subprotocol
            core.start(loop.time())
            try:
                await _drive(ws, core, probe, settings.chain_code, loop)
            except ConnectionClosed as exc:
                frame = exc.rcvd
                probe.close_code = frame.code if frame is not None else None
                probe.close_reason = frame.reason if frame is not None else ""
                closed = core.connection_closed(probe.close_code, probe.close_reason, loop.time())
                probe.closed_after_complete = closed.outcome.expected
    except InvalidStatus as exc:
        probe.handshake_status = exc.response.status_code
        probe.handshake_body = bytes(exc.response.body or b"")
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        probe.connect_error = type(exc).__name__
    return probe


async def _drive(
    ws: Any, core: StreamProtocol, probe: StreamProbe, chain: str, loop: asyncio.AbstractEventLoop
) -> None:
    """Read frames until the server closes (raises ConnectionClosed) or the probe gives up."""
    while True:
        for frame in core.data_to_send():
            await ws.send(frame)
        deadline = core.next_deadline()
        try:
            async with asyncio.timeout_at(deadline):
                data = await ws.recv()
        except TimeoutError:
            events = core.tick(loop.time())
        else:
            events = core.receive(data, loop.time())
        for event in events:
            if isinstance(event, ConnectionAcked):
                probe.acked = True
                now = loop.time()
                core.send_subscribe(SubscriptionInput(chain, offset=PROBE_OFFSET), now)
                core.send_complete(now)
                probe.subscribed = True
            elif isinstance(event, EventReceived | DuplicateSkipped):
                probe.frames_dropped += 1
            elif isinstance(event, SubscriptionError) and event.terminal:
                probe.subscription_error = event.summary()
                await ws.close()
                return
            elif isinstance(event, ProtocolViolation | ConnectionDead):
                probe.protocol_problem = event.reason
                await ws.close(code=event.close_code)
                return


async def _poll(
    http: httpx.AsyncClient, settings: Settings, token: str
) -> list[tuple[str | None, int | None, bytes, str]]:
    """One probe per path (chain-wide, then each hotel) with `POLL_PROBE_LIMIT`; stops early when
    the server served a probe (it ignored the limit) or refused one."""
    base = settings.gateway_url.rstrip("/")
    system = quote(settings.external_system, safe="")
    answers: list[tuple[str | None, int | None, bytes, str]] = []
    for hotel in (None, *settings.hotel_ids):
        # The same URLs and headers as `poll.PollClient`, whose `fetch` only sends valid limits.
        url = (
            f"{base}/int/v1/externalSystem/{system}/businessEvents"
            if hotel is None
            else f"{base}/int/v1/externalSystem/{system}/hotels/{quote(hotel, safe='')}/businessEvents"
        )
        headers = {
            "Authorization": f"Bearer {token}",
            "x-app-key": settings.app_key,
            "x-hotelid": hotel or settings.chain_code,
            "x-externalsystem": settings.external_system,
            "Accept": "application/json",
        }
        try:
            response = await http.get(url, params={"limit": POLL_PROBE_LIMIT}, headers=headers)
        except httpx.HTTPError as exc:
            answers.append((hotel, None, b"", type(exc).__name__))
            break
        # a served probe's body holds events (personal data): never kept
        body = b"" if response.status_code in (200, 204) else response.content
        answers.append((hotel, response.status_code, body, ""))
        if response.status_code != 400:
            break
    return answers


__all__ = [
    "CHECKS",
    "POLL_PROBE_LIMIT",
    "PROBE_OFFSET",
    "CheckResult",
    "DoctorOptions",
    "DoctorReport",
    "Status",
    "StreamProbe",
    "explain_aws",
    "explain_config",
    "explain_gateway",
    "explain_lease",
    "explain_poll",
    "explain_stream",
    "explain_token",
    "relay_holds_stream",
    "resubscribe_wait",
    "run_doctor",
    "scrub",
]
