"""`ohip-relay local ...`: the local stack's commands, registered as a plugin of the product's CLI.

The product package never imports the local stack: `ohip_relay.cli` finds this module through the
`ohip_relay.commands` entry point group (see pyproject.toml) and calls `add_local_parser`. Without
the `[local]` extra installed, `ohip-relay local` simply does not exist. The handlers import their
parts lazily, so that every `ohip-relay` command starts as fast as before.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from ohip_relay.errors import StartupError

EXIT_OK = 0
EXIT_FAILED = 1


class LocalCommandError(StartupError):
    """A `local` command cannot go on; the message is the one line the user sees."""


MAX_ENVIRONMENTS = 50
MAX_CHAINS_PER_ENVIRONMENT = 1000
ENVIRONMENT_PORT_STEP = 10  # environment i listens on --port + 10 * i


def _gateway(args: argparse.Namespace) -> int:
    from .gateway import GatewayConfig, fleet_config, serve_forever

    environments: int = args.environments
    chains: int = args.chains_per_environment
    if not 1 <= environments <= MAX_ENVIRONMENTS:
        raise LocalCommandError(
            f"local gateway: --environments must be from 1 to {MAX_ENVIRONMENTS}, not {environments}"
        )
    if not 1 <= chains <= MAX_CHAINS_PER_ENVIRONMENT:
        raise LocalCommandError(
            f"local gateway: --chains-per-environment must be from 1 to {MAX_CHAINS_PER_ENVIRONMENT}, "
            f"not {chains}"
        )
    last_port = args.port + ENVIRONMENT_PORT_STEP * (environments - 1)
    if args.port and last_port > 65535:
        raise LocalCommandError(
            f"local gateway: environment {environments - 1} would listen on port {last_port} "
            f"(--port + {ENVIRONMENT_PORT_STEP} per environment): choose a lower --port"
        )
    ports = {args.port + ENVIRONMENT_PORT_STEP * i for i in range(environments)} if args.port else set()
    if args.control_port and args.control_port in ports:
        raise LocalCommandError(
            f"local gateway: --control-port {args.control_port} is an environment's port "
            f"(--port + {ENVIRONMENT_PORT_STEP} per environment)"
        )
    base = GatewayConfig(
        host=args.host,
        port=args.port,
        control_port=args.control_port,
        token_lifetime=args.token_lifetime,
        seed=args.seed,
    )
    asyncio.run(serve_forever(fleet_config(environments, chains, base, port_step=ENVIRONMENT_PORT_STEP)))
    return EXIT_OK


def _aws(args: argparse.Namespace) -> int:
    from .stack import serve_aws_forever

    serve_aws_forever(host=args.host, port=args.port, stack_name=args.stack_name)
    return EXIT_OK


DEMO_EVENTS = 300
DEMO_RATE = 100.0
# `local demo --fleet`: its flags, their defaults and limits (the local stack runs on one machine).
FLEET_FLAGS = {  # dest -> (flag, default, low, high)
    "environments": ("--environments", 2, 1, 10),
    "chains_per_environment": ("--chains-per-environment", 10, 1, 50),
    "relays": ("--relays", 3, 2, 10),
}
FLEET_CHAIN_RATE = 2.0
MAX_FLEET_CHAIN_RATE = 20.0


def _demo(args: argparse.Namespace) -> int:
    if args.fleet:
        return _fleet_demo(args)
    from .demo import run_demo

    given = [flag for dest, (flag, *_) in FLEET_FLAGS.items() if getattr(args, dest) is not None]
    given += [
        flag
        for dest, flag in (("chain_rate", "--chain-rate"), ("run_dir", "--run-dir"))
        if getattr(args, dest)
    ]
    if given:
        raise LocalCommandError(f"local demo: {given[0]} applies to the fleet demo only (add --fleet)")
    events = DEMO_EVENTS if args.events is None else args.events
    rate = DEMO_RATE if args.rate is None else args.rate
    if events < 1:
        raise LocalCommandError(f"local demo: --events must be at least 1, not {events}")
    status: int = run_demo(events=events, rate=rate, seed=args.seed, verbose=args.verbose)
    return status


def _fleet_demo(args: argparse.Namespace) -> int:
    from .fleet_demo import FleetDemoOptions, run_fleet_demo

    for dest, flag in (("events", "--events"), ("rate", "--rate")):
        if getattr(args, dest) is not None:
            raise LocalCommandError(
                f"local demo: {flag} applies to the plain demo; the fleet demo emits --chain-rate events "
                "per second on every chain for the whole run"
            )
    values: dict[str, int] = {}
    for dest, (flag, default, low, high) in FLEET_FLAGS.items():
        value = getattr(args, dest)
        value = default if value is None else value
        if not low <= value <= high:
            raise LocalCommandError(f"local demo: {flag} must be from {low} to {high}, not {value}")
        values[dest] = value
    rate = FLEET_CHAIN_RATE if args.chain_rate is None else args.chain_rate
    if rate > MAX_FLEET_CHAIN_RATE:
        raise LocalCommandError(
            f"local demo: --chain-rate must be at most {MAX_FLEET_CHAIN_RATE:g} events per second, "
            f"not {rate:g}"
        )
    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise LocalCommandError(f"local demo: --run-dir {run_dir} exists and is not a directory")
    options = FleetDemoOptions(
        environments=values["environments"],
        chains_per_environment=values["chains_per_environment"],
        relays=values["relays"],
        chain_rate=rate,
        seed=args.seed,
        run_dir=run_dir,
        verbose=args.verbose,
    )
    status: int = run_fleet_demo(options)
    return status


def _chaos(args: argparse.Namespace) -> int:
    from .chaos import run_chaos

    if args.schedules < 1:
        raise LocalCommandError("local chaos: --schedules must be at least 1")
    if args.jobs < 1:
        raise LocalCommandError("local chaos: --jobs must be at least 1")
    out = Path(args.out) if args.out else None
    results = run_chaos(
        schedules=args.schedules,
        seed=args.seed,
        short=args.short,
        verbose=args.verbose,
        out=out,
        minutes=args.minutes,
        jobs=args.jobs,
        fleet=args.fleet,
    )
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, not {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, not {value}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return value


def add_local_parser(commands: Any) -> None:
    """Add `local` and its parts to the `ohip-relay` sub-command parsers (`commands`)."""
    local = commands.add_parser("local", help="the local stack: OHIP gateway and AWS endpoint")
    parts = local.add_subparsers(dest="local_command", required=True, metavar="PART")

    gateway = parts.add_parser("gateway", help="run the local OHIP gateway until Ctrl-C")
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument(
        "--port", type=_port, default=8700, help="OAuth, streaming and Poll API (default 8700)"
    )
    gateway.add_argument("--control-port", type=_port, default=8701, help="control interface (default 8701)")
    gateway.add_argument("--token-lifetime", type=_positive, default=3600.0, help="seconds (default 3600)")
    gateway.add_argument("--seed", type=int, default=1, help="event generator seed (default 1)")
    gateway.add_argument(
        "--environments",
        type=int,
        default=1,
        help=f"OPERA environments, each with its own credentials and chains; environment i listens "
        f"on --port + {ENVIRONMENT_PORT_STEP}*i (default 1, at most {MAX_ENVIRONMENTS})",
    )
    gateway.add_argument(
        "--chains-per-environment",
        type=int,
        default=1,
        help=f"chains of each environment, ENV<i>CHAIN001 and on (default 1; at most "
        f"{MAX_CHAINS_PER_ENVIRONMENT}); one environment of one chain is LOCALCHAIN, as always",
    )
    gateway.set_defaults(handler=_gateway)

    aws = parts.add_parser("aws", help="run moto server with the template's resources until Ctrl-C")
    aws.add_argument("--host", default="127.0.0.1")
    aws.add_argument("--port", type=_port, default=8702, help="default 8702")
    aws.add_argument("--stack-name", default="ohip-relay-local")
    aws.set_defaults(handler=_aws)

    demo = parts.add_parser("demo", help="the `make run` scenario: the whole pipeline on the local stack")
    demo.add_argument("--events", type=int, help=f"events to emit (default {DEMO_EVENTS})")
    demo.add_argument("--rate", type=_positive, help=f"events per second (default {DEMO_RATE:g})")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument(
        "--fleet",
        action="store_true",
        help="the fleet scenario instead: chains of several environments over relay processes, one "
        "killed, one added, a chain added and one disabled, a reconciliation per chain",
    )
    for dest, (flag, default, low, high) in FLEET_FLAGS.items():
        demo.add_argument(flag, dest=dest, type=int, help=f"--fleet: default {default}, {low} to {high}")
    demo.add_argument(
        "--chain-rate",
        type=_positive,
        help=f"--fleet: events per second on each chain (default {FLEET_CHAIN_RATE:g})",
    )
    demo.add_argument(
        "--run-dir", help="--fleet: where the relays' logs go (default: a new temporary directory)"
    )
    demo.set_defaults(handler=_demo)

    chaos = parts.add_parser(
        "chaos", help="the `make chaos` suite: seeded fault schedules, delivery invariants checked"
    )
    chaos.add_argument("--schedules", type=int, default=20, help="how many schedules (default 20)")
    chaos.add_argument("--seed", type=int, default=1, help="the first schedule's seed (default 1)")
    chaos.add_argument("--short", action="store_true", help="the CI cut: fewer steps, smaller bursts")
    chaos.add_argument(
        "--fleet",
        action="store_true",
        help="fleet schedules: relays killed and started, registry changes, per-chain faults; "
        "the invariants per chain (docs/chaos.md)",
    )
    chaos.add_argument("--out", help="append one JSON line per schedule to this file")
    chaos.add_argument("--minutes", type=_positive, help="start no schedule after this many minutes")
    chaos.add_argument(
        "--jobs", type=int, default=1, help="schedules run at once, each with its own local stack (default 1)"
    )
    chaos.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="each step, the relay's log"
    )
    chaos.set_defaults(handler=_chaos)
