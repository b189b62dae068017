"""The `ohip-relay` command line.

Every command reads its settings from the environment (see `ohip_relay.config`); a bad setting or
a busy port ends the command with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

from .errors import StartupError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class CommandError(StartupError):
    """A command cannot go on; the message is the one line the user sees."""


def _stream(args: argparse.Namespace) -> int:
    from .config import Need, Settings
    from .runtime import resolve_secrets
    from .stream import run_stream

    settings = resolve_secrets(Settings.from_env(os.environ, Need.OHIP, Need.STREAM, Need.AWS))
    return asyncio.run(run_stream(settings))


def _poll(args: argparse.Namespace) -> int:
    from .config import Need, Settings
    from .fallback import FallbackError, deadline_after, open_fallback
    from .runtime import resolve_secrets
    from .telemetry import Telemetry

    settings = resolve_secrets(Settings.from_env(os.environ, Need.OHIP, Need.POLL, Need.AWS))
    telemetry = Telemetry(service="poll")
    try:
        with open_fallback(settings, telemetry) as fallback:
            report = fallback.tick(deadline_after(args.time_limit))
    except FallbackError as exc:
        print(f"ohip-relay poll: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    return EXIT_FAILED if report.errors else EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from .config import Need, Settings
    from .health import HealthThresholds, judge_stream
    from .runtime import aws_client
    from .state import StateStore

    settings = Settings.from_env(os.environ, Need.STREAM, Need.AWS)
    store = StateStore(aws_client(settings, "dynamodb"), settings.table_name, settings.chain_code)
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
    report: dict[str, object] = {
        "chain": settings.chain_code,
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
    if args.json:
        print(json.dumps(report))
    else:
        width = max(len(k) for k in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {'-' if value is None else value}")
    return EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import DoctorOptions, run_doctor

    if not args.timeout > 0:
        raise CommandError(f"doctor: --timeout must be a positive number of seconds, not {args.timeout:g}")
    report = asyncio.run(run_doctor(os.environ, DoctorOptions(timeout=args.timeout)))
    print(json.dumps(report.to_dict()) if args.json else report.to_text())
    return report.exit_code


def _local_gateway(args: argparse.Namespace) -> int:
    try:
        from ohip_local.gateway import GatewayConfig, serve_forever
    except ImportError as exc:  # pragma: no cover - only without the [local] extra
        raise CommandError("the local stack is not installed: pip install 'ohip-relay[local]'") from exc

    config = GatewayConfig(
        host=args.host,
        port=args.port,
        control_port=args.control_port,
        token_lifetime=args.token_lifetime,
        seed=args.seed,
    )
    asyncio.run(serve_forever(config))
    return EXIT_OK


def _local_aws(args: argparse.Namespace) -> int:
    try:
        from ohip_local.stack import serve_aws_forever
    except ImportError as exc:  # pragma: no cover - only without the [local] extra
        raise CommandError("the local stack is not installed: pip install 'ohip-relay[local]'") from exc
    serve_aws_forever(host=args.host, port=args.port, stack_name=args.stack_name)
    return EXIT_OK


def _local_demo(args: argparse.Namespace) -> int:
    try:
        from ohip_local.demo import run_demo
    except ImportError as exc:  # pragma: no cover - only without the [local] extra
        raise CommandError("the local stack is not installed: pip install 'ohip-relay[local]'") from exc
    status: int = run_demo(events=args.events, rate=args.rate, seed=args.seed, verbose=args.verbose)
    return status


def _local_chaos(args: argparse.Namespace) -> int:
    try:
        from ohip_local.chaos import run_chaos
    except ImportError as exc:  # pragma: no cover - only without the [local] extra
        raise CommandError("the local stack is not installed: pip install 'ohip-relay[local]'") from exc
    if args.schedules < 1:
        raise CommandError("--schedules must be at least 1")
    if args.jobs < 1:
        raise CommandError("--jobs must be at least 1")
    from pathlib import Path

    out = Path(args.out) if args.out else None
    results = run_chaos(
        schedules=args.schedules,
        seed=args.seed,
        short=args.short,
        verbose=args.verbose,
        out=out,
        minutes=args.minutes,
        jobs=args.jobs,
    )
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ohip-relay",
        description="Relay OHIP (OPERA Cloud) business events into AWS SQS.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("RELAY_LOG_FORMAT", "text"),
        help="log lines as text or as JSON (default: $RELAY_LOG_FORMAT or text)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stream = commands.add_parser("stream", help="run the stream consumer until SIGTERM (the Fargate task)")
    stream.set_defaults(handler=_stream)

    poll = commands.add_parser("poll", help="run one poll fallback tick and print a one-line summary")
    poll.add_argument("--time-limit", type=float, default=60.0, help="seconds the tick may take (default 60)")
    poll.set_defaults(handler=_poll)

    status = commands.add_parser("status", help="print checkpoint, heartbeat, lag and lease")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=_status)

    doctor = commands.add_parser(
        "doctor",
        help="check the setup (configuration, OHIP, AWS) step by step; stops at the first failure with the "
        "next step to take; exit 0 when nothing failed, 1 on a failed check, 2 on bad configuration",
    )
    doctor.add_argument("--json", action="store_true", help="one JSON object")
    doctor.add_argument(
        "--timeout", type=float, default=10.0, help="seconds for each network step (default 10)"
    )
    doctor.set_defaults(handler=_doctor)

    local = commands.add_parser("local", help="the local stack: OHIP gateway and AWS endpoint")
    local_commands = local.add_subparsers(dest="local_command", required=True, metavar="PART")

    gateway = local_commands.add_parser("gateway", help="run the local OHIP gateway until Ctrl-C")
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument(
        "--port", type=int, default=8700, help="OAuth, streaming and Poll API (default 8700)"
    )
    gateway.add_argument("--control-port", type=int, default=8701, help="control interface (default 8701)")
    gateway.add_argument("--token-lifetime", type=float, default=3600.0, help="seconds (default 3600)")
    gateway.add_argument("--seed", type=int, default=1, help="event generator seed (default 1)")
    gateway.set_defaults(handler=_local_gateway)

    aws = local_commands.add_parser("aws", help="run moto server with the template's resources until Ctrl-C")
    aws.add_argument("--host", default="127.0.0.1")
    aws.add_argument("--port", type=int, default=8702, help="default 8702")
    aws.add_argument("--stack-name", default="ohip-relay-local")
    aws.set_defaults(handler=_local_aws)

    demo = local_commands.add_parser(
        "demo", help="the `make run` scenario: the whole pipeline on the local stack"
    )
    demo.add_argument("--events", type=int, default=300, help="events to emit (default 300)")
    demo.add_argument("--rate", type=float, default=100.0, help="events per second (default 100)")
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(handler=_local_demo)

    chaos = local_commands.add_parser(
        "chaos", help="the `make chaos` suite: seeded fault schedules, delivery invariants checked"
    )
    chaos.add_argument("--schedules", type=int, default=20, help="how many schedules (default 20)")
    chaos.add_argument("--seed", type=int, default=1, help="the first schedule's seed (default 1)")
    chaos.add_argument("--short", action="store_true", help="the CI cut: fewer steps, smaller bursts")
    chaos.add_argument("--out", help="append one JSON line per schedule to this file")
    chaos.add_argument("--minutes", type=float, help="start no schedule after this many minutes")
    chaos.add_argument(
        "--jobs", type=int, default=1, help="schedules run at once, each with its own local stack (default 1)"
    )
    chaos.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="each step, the relay's log"
    )
    chaos.set_defaults(handler=_local_chaos)
    return parser


def configure_logging(fmt: str, level: int) -> None:
    """Log to stderr, every line masked for personal data (see `ohip_relay.redact`)."""
    from .redact import RedactingFilter, RedactingFormatter

    handler = logging.StreamHandler(sys.stderr)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except StartupError as exc:
        print(f"ohip-relay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Ctrl-C, or SIGTERM where a command turns it into one (the chaos suite): not a success,
        # so that a run cut short (a CI timeout) never reads as a passed one.
        print("ohip-relay: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
