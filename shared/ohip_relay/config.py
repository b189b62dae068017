"""One typed settings object, read from the environment.

The same variable names are used in Fargate, in Lambda and locally. A missing or malformed value
stops start-up with one `ConfigError` whose message names the variable and says what is expected;
secret values are never echoed back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar
from urllib.parse import urlsplit

from .errors import StartupError

_E = TypeVar("_E", bound=Enum)


class ConfigError(StartupError):
    """A setting is missing or malformed. `str(error)` is one line naming the variable."""


class StartPosition(Enum):
    """Where the stream starts when no checkpoint exists yet (`RELAY_START_POSITION`)."""

    LATEST = "latest"  # offsetType highest: events from now on
    EARLIEST = "earliest"  # the whole retention (7 days)


class LogFormat(Enum):
    """How log lines look (`RELAY_LOG_FORMAT`, or `--log-format`)."""

    TEXT = "text"  # one human line each, on stderr
    JSON = "json"  # Powertools-style JSON lines (the template sets it for the Fargate task and Lambdas)


class MetricsOutput(Enum):
    """Where metrics go (`RELAY_METRICS`). CloudWatch reads Embedded Metric Format documents from a
    task's or function's log stream; in a terminal they are noise among the human lines."""

    AUTO = "auto"  # EMF when the log format is json (AWS), nothing when it is text (a terminal)
    EMF = "emf"  # EMF documents on stdout, whatever the log format
    OFF = "off"  # no metrics output (counters still drive the logs and `status`)


class SqsTransport(Enum):
    """How the stream consumer sends its SendMessageBatch requests (`RELAY_SQS_TRANSPORT`)."""

    HTTP = "http"  # one signed request from the event loop (sqs_http.py): about 5x less CPU per batch
    BOTO3 = "boto3"  # boto3 calls in a thread pool: the fallback if a network setup needs botocore's


class Need(Enum):
    """What a command needs; each adds its variables to the required set."""

    OHIP = "ohip"  # gateway URL, credentials, app key
    STREAM = "stream"  # chain code
    POLL = "poll"  # external system (hotel ids optional)
    AWS = "aws"  # queue and table
    ENRICH = "enrich"  # the enricher's output queue (and the AWS region)


# Same rule as the streaming schema's chainCode (NewEventInput), so a bad value fails at start-up
# rather than as an `error` message from the server.
_CHAIN_CODE = re.compile(r"^[A-Za-z0-9 _%#$&-]{1,20}$")
_CHAIN_CODE_EXPECTED = "1-20 letters, digits, spaces or _%#$&-"
_HOTEL_ID = re.compile(r"^[A-Za-z0-9_-]{1,20}$")
_EXTERNAL_SYSTEM = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_EXTERNAL_SYSTEM_EXPECTED = "1-40 letters, digits or _.-"
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
# OHIP keeps events 7 days: a seen-set entry must outlive any replay of its event.
_OHIP_RETENTION_DAYS = 7.0


@dataclass(frozen=True)
class Settings:
    """Everything the relay reads from its environment.

    `client_secret` and `app_key` are kept out of `repr()` so that a settings object can be logged.
    With `OHIP_SECRET_ARN` set (AWS deployments), the client id, client secret and app key come from
    Secrets Manager and may be absent here.
    """

    gateway_url: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    app_key: str = field(default="", repr=False)
    enterprise_id: str = ""
    oauth_scope: str = ""
    chain_code: str = ""
    hotel_ids: tuple[str, ...] = ()
    external_system: str = ""
    stream_delta: bool = False  # the subscription's `delta`: only changed elements in `detail`
    hotel_code: str = ""  # the subscription's `hotelCode` filter; "" means every hotel of the chain
    secret_arn: str = ""
    queue_url: str = ""
    table_name: str = ""
    bucket_name: str = ""
    aws_endpoint_url: str = ""
    aws_region: str = ""
    start_position: StartPosition = StartPosition.LATEST
    lease_seconds: float = 30.0
    health_stale_seconds: float = 30.0
    health_grace_seconds: float = 60.0
    health_recover_seconds: float = 120.0
    heartbeat_seconds: float = 5.0
    sqs_transport: SqsTransport = SqsTransport.HTTP
    seen_ttl_days: float = 8.0
    poll_page_limit: int = 100
    enriched_queue_url: str = ""
    enrich_routes: str = ""  # path of a routing file; "" means the packaged default
    enrich_concurrency: int = 4
    poll_concurrency: int = 4  # fleet mode: chains the poll fallback ticks at once per invocation
    log_format: LogFormat = LogFormat.TEXT
    metrics_output: MetricsOutput = MetricsOutput.AUTO
    # Many chains in one deployment (docs/fleet-design.md): the chains come from the registry in
    # the state table, not from the OHIP_* variables of the single-chain shape.
    fleet: bool = False

    @property
    def emit_metrics(self) -> bool:
        """Whether EMF documents are written (see `MetricsOutput`)."""
        if self.metrics_output is MetricsOutput.AUTO:
            return self.log_format is LogFormat.JSON
        return self.metrics_output is MetricsOutput.EMF

    @property
    def queue_is_fifo(self) -> bool:
        return self.queue_url.endswith(".fifo")

    @classmethod
    def from_env(cls, env: Mapping[str, str], *needs: Need) -> Settings:
        """Read and validate the settings that `needs` require; optional ones are checked when set."""
        required = set(needs)
        reader = _Reader(env)
        secret_arn = reader.text("OHIP_SECRET_ARN")
        fleet = reader.boolean("RELAY_FLEET", default=False)
        if fleet:
            # The chains and their credentials come from the registry: the single-chain variables
            # are not read (a stray OHIP_CHAIN_CODE would suggest a chain the fleet does not serve).
            stray = sorted(name for name in SINGLE_CHAIN_VARIABLES if env.get(name, "").strip())
            if stray:
                raise ConfigError(
                    f"RELAY_FLEET: true serves the chains of the registry (ohip-relay chains list), so "
                    f"{', '.join(stray)} must not be set; unset them, or set RELAY_FLEET to false for "
                    "one chain"
                )
            required.discard(Need.OHIP)
            required.discard(Need.STREAM)
            required.discard(Need.POLL)
        credentials_required = Need.OHIP in required and not secret_arn
        settings = cls(
            gateway_url=reader.url("OHIP_GATEWAY_URL", required=Need.OHIP in required, https_only=True),
            client_id=reader.text("OHIP_CLIENT_ID", required=credentials_required),
            client_secret=reader.text("OHIP_CLIENT_SECRET", required=credentials_required, secret=True),
            app_key=reader.text("OHIP_APP_KEY", required=credentials_required, secret=True),
            enterprise_id=reader.text("OHIP_ENTERPRISE_ID"),
            oauth_scope=reader.text("OHIP_OAUTH_SCOPE"),
            chain_code=reader.chain_code(
                "OHIP_CHAIN_CODE", required=Need.STREAM in required or Need.POLL in required
            ),
            hotel_ids=reader.hotel_ids("OHIP_HOTEL_IDS"),
            external_system=reader.external_system("OHIP_EXTERNAL_SYSTEM", required=Need.POLL in required),
            stream_delta=reader.boolean("OHIP_STREAM_DELTA", default=False),
            hotel_code=reader.hotel_code("OHIP_HOTEL_CODE"),
            secret_arn=secret_arn,
            queue_url=reader.url("RELAY_QUEUE_URL", required=Need.AWS in required, https_only=False),
            table_name=reader.pattern(
                "RELAY_TABLE_NAME",
                _TABLE_NAME,
                "a DynamoDB table name (3-255 of A-Z a-z 0-9 _.-)",
                required=Need.AWS in required,
            ),
            bucket_name=reader.pattern("RELAY_BUCKET_NAME", _BUCKET_NAME, "an S3 bucket name"),
            aws_endpoint_url=reader.url("AWS_ENDPOINT_URL", required=False, https_only=False),
            aws_region=reader.text("AWS_REGION") or reader.text("AWS_DEFAULT_REGION"),
            start_position=reader.choice("RELAY_START_POSITION", StartPosition, StartPosition.LATEST),
            lease_seconds=reader.number("RELAY_LEASE_SECONDS", default=30.0, low=3.0, high=600.0),
            health_stale_seconds=reader.number(
                "RELAY_HEALTH_STALE_SECONDS", default=30.0, low=1.0, high=3600.0
            ),
            health_grace_seconds=reader.number(
                "RELAY_HEALTH_GRACE_SECONDS", default=60.0, low=0.0, high=3600.0
            ),
            health_recover_seconds=reader.number(
                "RELAY_HEALTH_RECOVER_SECONDS", default=120.0, low=0.0, high=86400.0
            ),
            heartbeat_seconds=reader.number("RELAY_HEARTBEAT_SECONDS", default=5.0, low=0.5, high=60.0),
            sqs_transport=reader.choice("RELAY_SQS_TRANSPORT", SqsTransport, SqsTransport.HTTP),
            seen_ttl_days=reader.days(
                "RELAY_SEEN_TTL_DAYS", default=8.0, above=_OHIP_RETENTION_DAYS, high=365.0
            ),
            poll_page_limit=reader.integer("RELAY_POLL_PAGE_LIMIT", default=100, low=1, high=100),
            enriched_queue_url=reader.url(
                "RELAY_ENRICHED_QUEUE_URL", required=Need.ENRICH in required, https_only=False
            ),
            enrich_routes=reader.text("OHIP_ENRICH_ROUTES"),
            enrich_concurrency=reader.integer("RELAY_ENRICH_CONCURRENCY", default=4, low=1, high=32),
            poll_concurrency=reader.integer("RELAY_POLL_CONCURRENCY", default=4, low=1, high=16),
            log_format=log_format_from_env(env),
            metrics_output=reader.choice("RELAY_METRICS", MetricsOutput, MetricsOutput.AUTO),
            fleet=fleet,
        )
        if settings.health_stale_seconds < 2 * settings.heartbeat_seconds:
            # A heartbeat written every N s is up to N s old in normal operation: a stale threshold
            # below 2 N would call a healthy stream down and start the poll fallback for nothing.
            raise ConfigError(
                f"RELAY_HEALTH_STALE_SECONDS: must be at least twice RELAY_HEARTBEAT_SECONDS "
                f"({settings.heartbeat_seconds:g}), got {settings.health_stale_seconds:g}"
            )
        if Need.AWS in required and not settings.aws_region:
            raise ConfigError("AWS_REGION: missing (the AWS region of the queue and table, e.g. eu-west-1)")
        if Need.ENRICH in required and not settings.aws_region:
            raise ConfigError("AWS_REGION: missing (the AWS region of the enriched queue, e.g. eu-west-1)")
        return settings


def log_format_from_env(env: Mapping[str, str]) -> LogFormat:
    """`RELAY_LOG_FORMAT`, validated (the command line reads it before any other setting)."""
    return _Reader(env).choice("RELAY_LOG_FORMAT", LogFormat, LogFormat.TEXT)


def fleet_from_env(env: Mapping[str, str]) -> bool:
    """`RELAY_FLEET` alone, validated (a command that serves one chain only refuses a fleet)."""
    return _Reader(env).boolean("RELAY_FLEET", default=False)


#: The variables that describe the one chain of the single-chain shape (not read with RELAY_FLEET).
SINGLE_CHAIN_VARIABLES = (
    "OHIP_GATEWAY_URL",
    "OHIP_CHAIN_CODE",
    "OHIP_CLIENT_ID",
    "OHIP_CLIENT_SECRET",
    "OHIP_APP_KEY",
    "OHIP_SECRET_ARN",
    "OHIP_HOTEL_IDS",
    "OHIP_EXTERNAL_SYSTEM",
    "OHIP_HOTEL_CODE",
    "OHIP_STREAM_DELTA",
    "OHIP_ENTERPRISE_ID",
    "OHIP_OAUTH_SCOPE",
)


class _Reader:
    """Reads named values from a mapping (the environment, or a command's flags) and validates them.

    Every problem is a `ConfigError` that names the value (its key in the mapping) and says what is
    expected; values read with `secret=True` are never echoed back. Public as `Reader`.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, *, required: bool = False, secret: bool = False) -> str:
        value = self.env.get(name, "").strip()
        if required and not value:
            raise ConfigError(f"{name}: missing")
        if value and any(ch in value for ch in "\r\n\x00"):
            shown = "" if secret else f" (got {value!r})"
            raise ConfigError(f"{name}: must be a single line{shown}")
        return value

    def pattern(self, name: str, regex: re.Pattern[str], expected: str, *, required: bool = False) -> str:
        value = self.text(name, required=required)
        if value and not regex.fullmatch(value):
            raise ConfigError(f"{name}: expected {expected} (got {value!r})")
        return value

    def chain_code(self, name: str, *, required: bool = False) -> str:
        return self.pattern(name, _CHAIN_CODE, _CHAIN_CODE_EXPECTED, required=required)

    def external_system(self, name: str, *, required: bool = False) -> str:
        return self.pattern(name, _EXTERNAL_SYSTEM, _EXTERNAL_SYSTEM_EXPECTED, required=required)

    def hotel_code(self, name: str) -> str:
        """A subscription's `hotelCode` filter, checked by the protocol core's own rule."""
        value = self.text(name)
        if value:
            from .protocol import SubscriptionInput  # here: most commands never set it

            try:
                SubscriptionInput("X", hotel_code=value)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc} (got {value!r})") from None
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self.text(name).lower()
        if not value:
            return default
        if value not in ("true", "false"):
            raise ConfigError(f"{name}: expected true or false (got {value!r})")
        return value == "true"

    def number(self, name: str, *, default: float, low: float, high: float) -> float:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise ConfigError(f"{name}: expected a number of seconds from {low:g} to {high:g} (got {raw!r})")
        return value

    def days(self, name: str, *, default: float, above: float, high: float) -> float:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not above < value <= high:
            raise ConfigError(
                f"{name}: expected a number of days above {above:g} and at most {high:g} (got {raw!r})"
            )
        return value

    def integer(self, name: str, *, default: int, low: int, high: int) -> int:
        raw = self.text(name)
        if not raw:
            return default
        if not re.fullmatch(r"[0-9]{1,9}", raw) or not low <= int(raw) <= high:
            raise ConfigError(f"{name}: expected a whole number from {low} to {high} (got {raw!r})")
        return int(raw)

    def choice(self, name: str, kind: type[_E], default: _E) -> _E:
        value = self.text(name).lower()
        if not value:
            return default
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(str(member.value) for member in kind)
            raise ConfigError(f"{name}: expected one of {allowed} (got {value!r})") from None

    def url(self, name: str, *, required: bool, https_only: bool) -> str:
        value = self.text(name, required=required)
        if not value:
            return value
        parts = urlsplit(value)
        allowed = {"https"} if https_only else {"https", "http"}
        loopback = parts.hostname in _LOOPBACK_HOSTS if parts.hostname else False
        if parts.scheme == "http" and https_only and loopback:
            allowed.add("http")  # the local gateway; a real gateway is always https
        if parts.scheme not in allowed or not parts.hostname:
            wanted = "an https:// URL" if https_only else "an http(s):// URL"
            raise ConfigError(f"{name}: expected {wanted} (got {value!r})")
        if parts.query or parts.fragment:
            raise ConfigError(f"{name}: must not carry a query or fragment (got {value!r})")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ConfigError(f"{name}: bad port in {value!r}") from exc
        return value.rstrip("/")

    def hotel_ids(self, name: str) -> tuple[str, ...]:
        raw = self.text(name)
        if not raw:
            return ()
        ids = tuple(part.strip() for part in raw.split(","))
        for hotel in ids:
            if not _HOTEL_ID.fullmatch(hotel):
                raise ConfigError(f"{name}: expected comma-separated hotel codes (got {raw!r})")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{name}: lists a hotel twice (got {raw!r})")
        return ids


#: The validating reader, for other modules that check values by the same rules (the chain registry).
Reader = _Reader
