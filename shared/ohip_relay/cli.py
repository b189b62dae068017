"""The `ohip-relay` command line.

Every command reads its settings from the environment (see `ohip_relay.config`); a bad setting or
a busy port ends the command with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from .errors import StartupError
from .failures import EXIT_FAILED, EXIT_USAGE, explain

if TYPE_CHECKING:
    from .config import Need, Settings
    from .health import StreamHealth
    from .state import Checkpoint, FallbackRecord, Heartbeat, Lease
    from .telemetry import Telemetry

EXIT_OK = 0
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class CommandError(StartupError):
    """A command cannot go on; the message is the one line the user sees."""


def _settings(args: argparse.Namespace, *needs: Need, secrets: bool = False) -> Settings:
    """The settings from the environment, with the command line's --log-format applied."""
    from .config import LogFormat, Settings
    from .runtime import resolve_secrets

    settings = Settings.from_env(os.environ, *needs)
    settings = dataclasses.replace(settings, log_format=LogFormat(args.log_format))
    return resolve_secrets(settings) if secrets else settings


def _stream(args: argparse.Namespace) -> int:
    from .config import Need
    from .runtime import resolve_secrets
    from .stream import run_stream

    base = _settings(args, Need.OHIP, Need.STREAM, Need.AWS)
    if base.fleet:
        from .scheduler import run_fleet

        return asyncio.run(run_fleet(base))
    # With OHIP_SECRET_ARN the secret is read again after a refusal: a corrected secret is used
    # without a restart.
    reload = (lambda: resolve_secrets(base)) if base.secret_arn else None
    return asyncio.run(run_stream(resolve_secrets(base), reload_credentials=reload))


def _seconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds within [low, high] (no nan, no inf), checked like the
    environment variables are."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds from {low:g} to {high:g} (got {text!r})"
            )
        return value

    return parse


def _poll(args: argparse.Namespace) -> int:
    from .config import Need
    from .fallback import FallbackError, deadline_after, open_fallback
    from .telemetry import Telemetry

    settings = _settings(args, Need.OHIP, Need.POLL, Need.AWS, secrets=True)
    telemetry = Telemetry(service="poll", emit=settings.emit_metrics)
    if settings.fleet:
        return _poll_fleet(args, settings, telemetry)
    try:
        with open_fallback(settings, telemetry) as fallback:
            report = fallback.tick(deadline_after(args.time_limit))
        telemetry.flush()
    except FallbackError as exc:
        print(f"ohip-relay: poll: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    if report.never_seen:
        print(
            f"note: chain {settings.chain_code} has never been seen in table {settings.table_name} "
            "(no stream heartbeat, no earlier tick), so the stream counts as down; if a stream consumer "
            "runs, check that its OHIP_CHAIN_CODE and RELAY_TABLE_NAME are these",
            file=sys.stderr,
        )
    return EXIT_FAILED if report.errors else EXIT_OK


def _poll_fleet(args: argparse.Namespace, settings: Settings, telemetry: Telemetry) -> int:
    """`ohip-relay poll` with RELAY_FLEET=true: one tick of the fleet's fallback (this shard of the
    registry's enabled chains), its one-line summary on stdout."""
    from .fallback import deadline_after
    from .fleet_fallback import open_fleet_fallback
    from .fleet_health import Shard

    try:
        shard = Shard(args.shard, args.shards)
    except ValueError as exc:
        raise CommandError(f"--shard/--shards: {exc}") from None
    try:
        with open_fleet_fallback(settings, telemetry) as fleet:
            report = fleet.tick(deadline_after(args.time_limit), shard)
    finally:
        telemetry.flush()
    print(report.summary())
    for line in report.at_risk:
        print(f"ohip-relay: poll: events at risk: {line}", file=sys.stderr)
    return EXIT_FAILED if report.error_count else EXIT_OK


def status_report(
    chain: str,
    checkpoint: Checkpoint | None,
    heartbeat: Heartbeat | None,
    lease: Lease | None,
    fallback: FallbackRecord | None,
    health: StreamHealth,
    now: float,
) -> dict[str, object]:
    """`ohip-relay status --json`: one object; absent values are null, numbers are numbers
    (checkpoint -1 means "before offset 0": the log is read from offset 0, nothing handled yet)."""
    return {
        "chain": chain,
        "seen": any(item is not None for item in (checkpoint, heartbeat, lease, fallback)),
        "checkpoint": checkpoint.offset if checkpoint else None,
        "checkpointAgeSeconds": round(now - checkpoint.updated_at, 1) if checkpoint else None,
        "state": str(heartbeat.state) if heartbeat else None,
        "healthy": health.healthy,
        "health": health.reason,
        "heartbeatAgeSeconds": round(heartbeat.age(now), 1) if heartbeat else None,
        "lastOffset": heartbeat.last_offset if heartbeat else None,
        "lagSeconds": heartbeat.lag_seconds if heartbeat else None,
        "detail": heartbeat.detail if heartbeat else None,
        "leaseOwner": lease.owner if lease and lease.is_held(now) else None,
        "fallbackActive": fallback.active if fallback else False,
        "fallbackSince": fallback.since if fallback and fallback.active else None,
        "fallbackLastTickAgeSeconds": (
            round(now - fallback.last_tick_at, 1) if fallback and fallback.last_tick_at else None
        ),
        "fallbackPublished": fallback.counter("published") if fallback else 0,
    }


def _ago(seconds: object) -> str:
    return f"{seconds}s ago" if isinstance(seconds, int | float) else "never"


def render_status(report: Mapping[str, object]) -> list[str]:
    """`ohip-relay status`: one line per field, in words where a number alone would mislead."""
    from .state import describe_checkpoint

    checkpoint = report["checkpoint"]
    rows = [
        ("chain", str(report["chain"])),
        ("state", str(report["state"] or "no heartbeat yet")),
        ("health", f"{'healthy' if report['healthy'] else 'unhealthy'} ({report['health']})"),
        (
            "checkpoint",
            describe_checkpoint(checkpoint if isinstance(checkpoint, int) else None)
            + (f" (written {_ago(report['checkpointAgeSeconds'])})" if checkpoint is not None else ""),
        ),
        ("last offset", "none yet" if report["lastOffset"] is None else str(report["lastOffset"])),
        ("lag", "unknown" if report["lagSeconds"] is None else f"{report['lagSeconds']}s"),
        ("heartbeat", _ago(report["heartbeatAgeSeconds"])),
        ("detail", str(report["detail"] or "-")),
        ("lease holder", str(report["leaseOwner"] or "nobody")),
        (
            "fallback",
            (
                "active since " + _ago_epoch(report["fallbackSince"])
                if report["fallbackActive"]
                else "inactive"
            )
            + f"; last tick {_ago(report['fallbackLastTickAgeSeconds'])}"
            + f"; published {report['fallbackPublished']} in all",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]


def _ago_epoch(epoch: object) -> str:
    if not isinstance(epoch, int | float):
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _status(args: argparse.Namespace) -> int:
    from botocore.config import Config

    from .config import Need
    from .health import HealthThresholds, judge_stream
    from .runtime import aws_client
    from .state import StateStore

    # --chain names the chain (single-chain shape) or the subscription (fleet) instead of OHIP_CHAIN_CODE.
    settings = _settings(args, *((Need.AWS,) if args.chain else (Need.STREAM, Need.AWS)))
    # A status query is one-shot: short timeouts and one retry, and botocore's retries not logged.
    if not args.verbose:
        logging.getLogger("ohip_relay.aws").setLevel(logging.ERROR)
    quick = Config(retries={"mode": "standard", "total_max_attempts": 2}, connect_timeout=5, read_timeout=10)
    dynamodb = aws_client(settings, "dynamodb", config=quick)
    if settings.fleet:
        from .fleet_status import status_command

        return status_command(dynamodb, settings, chain=args.chain, as_json=args.json)
    chain = args.chain or settings.chain_code
    store = StateStore(dynamodb, settings.table_name, chain)
    now = time.time()
    checkpoint = store.get_checkpoint()
    heartbeat = store.get_heartbeat()
    lease = store.get_lease()
    fallback = store.get_fallback()
    health = judge_stream(
        heartbeat,
        now,
        HealthThresholds(
            stale_seconds=settings.health_stale_seconds,
            grace_seconds=settings.health_grace_seconds,
            recover_seconds=settings.health_recover_seconds,
        ),
        seen_down_since=fallback.stream_down_since if fallback else None,
    )
    report = status_report(chain, checkpoint, heartbeat, lease, fallback, health, now)
    if args.json:
        print(json.dumps(report))
    elif report["seen"]:
        print("\n".join(render_status(report)))
    if not report["seen"]:
        print(
            f"ohip-relay: status: chain {chain} has never been seen in table "
            f"{settings.table_name} (no checkpoint, heartbeat, lease or fallback record): start "
            "`ohip-relay stream` for it, or check OHIP_CHAIN_CODE and RELAY_TABLE_NAME",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _subscription_id(text: str) -> str:
    """An argparse type: a subscription id as the registry allows it."""
    from .registry import SUBSCRIPTION_ID, SUBSCRIPTION_ID_EXPECTED

    if not SUBSCRIPTION_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected {SUBSCRIPTION_ID_EXPECTED} (got {text!r})")
    return text


def _doctor(args: argparse.Namespace) -> int:
    from .config import ConfigError, fleet_from_env
    from .doctor import DoctorOptions, run_doctor

    if fleet_from_env(os.environ):
        raise ConfigError(
            "RELAY_FLEET: doctor checks the setup of one chain, described by the OHIP_* variables; "
            "for a fleet, `ohip-relay status` shows every chain, and a chain's credentials and gateway "
            "can be checked before `chains add` by running doctor with its OHIP_* variables and "
            "RELAY_FLEET unset"
        )
    report = asyncio.run(run_doctor(os.environ, DoctorOptions(timeout=args.timeout)))
    print(json.dumps(report.to_dict()) if args.json else report.to_text())
    return report.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ohip-relay",
        description="Relay OHIP (OPERA Cloud) business events into AWS SQS.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines as text or as JSON (default: $RELAY_LOG_FORMAT or text). Metrics (EMF) are written "
        "to stdout with json and not with text, unless RELAY_METRICS=emf|off says otherwise",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stream = commands.add_parser("stream", help="run the stream consumer until SIGTERM (the Fargate task)")
    stream.set_defaults(handler=_stream)

    poll = commands.add_parser("poll", help="run one poll fallback tick and print a one-line summary")
    poll.add_argument(
        "--time-limit",
        type=_seconds(1.0, 900.0),
        default=60.0,
        help="seconds the tick may take, 1 to 900 (default 60)",
    )
    poll.add_argument(
        "--shard", type=int, default=0, help="fleet mode: the shard of the registry to poll (default 0)"
    )
    poll.add_argument(
        "--shards", type=int, default=1, help="fleet mode: how many shards there are (default 1)"
    )
    poll.set_defaults(handler=_poll)

    status = commands.add_parser(
        "status",
        help="print checkpoint, heartbeat, lag and lease; with RELAY_FLEET=true, every subscription of the "
        "registry in one table",
    )
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument(
        "--chain",
        metavar="ID",
        type=_subscription_id,
        help="one subscription in detail (fleet), or this chain instead of OHIP_CHAIN_CODE (single chain)",
    )
    status.set_defaults(handler=_status)

    doctor = commands.add_parser(
        "doctor",
        help="check the setup (configuration, OHIP, AWS) step by step; stops at the first failure with the "
        "next step to take; exit 0 when nothing failed, 1 on a failed check, 2 on bad configuration",
    )
    doctor.add_argument("--json", action="store_true", help="one JSON object")
    doctor.add_argument(
        "--timeout",
        type=_seconds(0.1, 300.0),
        default=10.0,
        help="seconds for each network step (default 10)",
    )
    doctor.set_defaults(handler=_doctor)

    from .chains_cli import add_chains_parser

    add_chains_parser(commands)

    for register in _plugins():
        register(commands)
    return parser


def _plugins() -> Iterator[Callable[[Any], None]]:
    """Commands other packages add (`ohip-relay local ...` comes from the local stack this way: the
    product never imports it). Entry point group `ohip_relay.commands`; each is called with the
    sub-command parsers."""
    for point in entry_points(group="ohip_relay.commands"):
        try:
            register = point.load()
        except ImportError:  # a plugin whose own dependencies are missing: its commands are absent
            continue
        yield register


class ShortExceptions(logging.Filter):
    """Without -v a logged exception is one line, `[Type: message]` after the record's message,
    never a traceback: the first hour with a tool should not read like Python's internals."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            from .errors import one_line

            record.msg = f"{record.getMessage()} [{one_line(record.exc_info[1])}]"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(fmt: str, level: int, *, tracebacks: bool | None = None) -> None:
    """Log to stderr, every line masked for personal data (see `ohip_relay.redact`). Tracebacks are
    logged only at debug level (-v), unless `tracebacks` says otherwise."""
    from .logcontext import SubscriptionFilter
    from .redact import RedactingFilter, RedactingFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SubscriptionFilter(prefix=fmt != "json"))
    if not (level <= logging.DEBUG if tracebacks is None else tracebacks):
        handler.addFilter(ShortExceptions())
    if fmt == "json":
        handler.setFormatter(RedactingFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "websockets", "aiohttp.access", "httpx", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Whatever ends it early is one line on stderr that names what failed and the
    next step (`failures.explain`): exit 2 for configuration, credentials or permissions, 1 for a
    run that failed; the traceback only with -v."""
    from .config import ConfigError, log_format_from_env

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format is None:
        try:
            args.log_format = log_format_from_env(os.environ).value
        except ConfigError as exc:
            print(f"ohip-relay: {exc}", file=sys.stderr)
            return EXIT_USAGE
    configure_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except Exception as exc:
        failure = explain(exc, os.environ)
        print(f"ohip-relay: {failure.message}", file=sys.stderr)
        if args.verbose:
            traceback.print_exception(exc, file=sys.stderr)
        return failure.exit_code
    except KeyboardInterrupt:
        # Ctrl-C, or SIGTERM where a command turns it into one (the chaos suite): not a success,
        # so that a run cut short (a CI timeout) never reads as a passed one.
        print("ohip-relay: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
