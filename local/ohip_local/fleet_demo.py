"""`ohip-relay local demo --fleet`: one deployment, many chains, several relay processes (issue #18).

1. moto server on loopback with the template's resources, IAM enforced; the local gateway with
   E OPERA environments (2) of N chains each (10), environment 0 serving one chain more that the
   registry does not list yet; one Secrets Manager secret per environment, `ohip/<stack>/env<i>`;
2. R relay processes (3): `ohip-relay stream` with `RELAY_FLEET=true` under StreamTaskRole, each
   logging to its own file in the run directory; the registry's E x N subscriptions are written
   once they have joined the fleet, so that each takes its share at once;
3. events at a steady rate on every chain for the whole run, while the demo, step by step: kills
   one relay with SIGKILL, starts one more, adds the extra chain (`ohip-relay chains add`) and
   disables one (`ohip-relay chains disable`). After each step it waits, polling with a deadline,
   until the fleet has settled: every enabled chain held and connected by exactly one live worker,
   the loads even (at most one apart), from the worker items (`FleetStore.read_fleet`);
4. the relays stop with SIGTERM (complete, drain, checkpoint, release), a reader drains the queue
   as a consumer would, and every chain is reconciled by event identity (reconcile.py): emitted,
   delivered, duplicates by kind, lost. The disabled chain's events after its final checkpoint are
   not expected: OHIP keeps them (7 days) and replays them when the chain is enabled again;
5. the gateway's connection detector is read for every chain of every environment.

It exits 0 only when nothing was lost, no chain ever had two live subscriptions, every step
settled and every relay stopped cleanly (exit 0 after SIGTERM; the killed one aside).

The decisions (has the fleet settled, what a chain's row says) are pure functions of what was
read (`judge_fleet`, `account_chain`); the rest drives processes and reads the local stack.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ohip_relay.balance import WorkerRecord
from ohip_relay.config import SINGLE_CHAIN_VARIABLES, Settings
from ohip_relay.fleet_state import FleetStore
from ohip_relay.registry import RegistryStore, Subscription
from ohip_relay.scheduler import options_from
from ohip_relay.state import StateStore, StreamState

from .aws import DEFAULT_REGION, STREAM_ROLE, ProvisionedStack, local_client, provision
from .control import ControlClient
from .gateway import GatewayConfig, LocalGateway, fleet_config
from .harness import HarnessError, QueueReader, RelayProcess, wait_until
from .iam import denials, describe_denials
from .motoproc import moto_process
from .reconcile import (
    CHANNEL_OVERLAP,
    POLL_REPEAT,
    STREAM_REPLAY,
    EmittedEvent,
    emitted_event,
    reconcile,
)
from .source import StoredEvent
from .stack import environment_for, find_template
from .threaded import call_in_gateway, running_gateway

STACK_NAME = "ohip-relay-fleet-demo"
LEASE_SECONDS = 6.0  # as the plain demo: a killed relay's chains move within seconds, not 40 s
SETTLE_TIMEOUT = 60.0  # per step; the design's worst case at this lease is about 25 s
DELIVERY_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
EMIT_INTERVAL = 0.25  # the emitter's pacing tick
POLL_INTERVAL = 0.25  # how often the worker items are read while waiting for the fleet to settle
CONNECTED = StreamState.CONNECTED.value

# Variables of the single-chain shape: a fleet relay refuses to start with any of them set, so
# they are not passed on from the caller's environment.
_SINGLE_CHAIN = SINGLE_CHAIN_VARIABLES

_JOINED = re.compile(r"worker (\S+) joins the fleet")


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class FleetDemoOptions:
    environments: int = 2
    chains_per_environment: int = 10  # registered at the start; environment 0 serves one more
    relays: int = 3  # at the start; one is killed and one added
    chain_rate: float = 2.0  # events per second on each chain
    seed: int = 1
    run_dir: Path | None = None  # None: a new temporary directory
    verbose: bool = False


# -- the decisions (no I/O) ------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetJudgement:
    """Whether the fleet has settled, and if not the first reason why (one line)."""

    settled: bool
    problem: str
    holders: Mapping[str, str]  # enabled chain -> the live worker that holds it connected
    loads: Mapping[str, int]  # live worker -> chains it lists


def judge_fleet(
    records: Mapping[str, WorkerRecord],
    *,
    workers: Collection[str],
    enabled: Collection[str],
    now: float,
    worker_timeout: float,
    balanced: bool = True,
) -> FleetJudgement:
    """Settled: exactly the `workers` are live (heartbeat younger than `worker_timeout`), every
    enabled chain is listed by exactly one live worker and is connected there, no live worker lists
    anything else (a disabled chain, a chain on its way out), and the loads differ by at most one
    (balance.py moves a chain only between workers two or more apart; not asked when `balanced`
    is False: every chain connected once is enough)."""
    live = {w: r for w, r in records.items() if now - r.heartbeat_at < worker_timeout}
    loads = {w: len(r.chains) for w, r in live.items()}
    listed: dict[str, list[str]] = {}
    for worker, record in sorted(live.items()):
        for chain in record.chains:
            listed.setdefault(chain, []).append(worker)
    holders = {
        chain: by[0]
        for chain, by in listed.items()
        if chain in enabled and len(by) == 1 and live[by[0]].chains[chain].state == CONNECTED
    }

    def verdict(problem: str) -> FleetJudgement:
        return FleetJudgement(not problem, problem, holders, loads)

    absent = sorted(set(workers) - set(live))
    if absent:
        return verdict(f"worker {absent[0]} is not live (yet)")
    extra = sorted(set(live) - set(workers))
    if extra:
        return verdict(f"worker {extra[0]} is still live")
    for chain in sorted(enabled):
        by = listed.get(chain, [])
        if not by:
            return verdict(f"{chain} is held by no live worker")
        if len(by) > 1:
            return verdict(f"{chain} is listed by {len(by)} live workers")
        state = live[by[0]].chains[chain].state
        if state != CONNECTED:
            return verdict(f"{chain} is {state} on worker {by[0]}")
    stray = sorted(set(listed) - set(enabled))
    if stray:
        return verdict(f"{stray[0]} is not enabled but still listed by worker {listed[stray[0]][0]}")
    if balanced and loads and max(loads.values()) - min(loads.values()) > 1:
        return verdict(f"loads {_loads(loads.values())} are not even yet")
    return verdict("")


@dataclass(frozen=True)
class ChainAccount:
    """One chain's row of the reconciliation."""

    subscription: str
    environment: int
    emitted: int
    delivered: int
    duplicates: Mapping[str, int]
    lost: int
    unexpected: int
    held: int = 0  # not expected: after the final checkpoint of a disabled chain, still in OHIP
    emitted_after_disable: int = 0
    checkpoint: int | None = None


def account_chain(
    subscription: str,
    environment: int,
    emitted: Sequence[EmittedEvent],
    bodies: Sequence[Mapping[str, Any]],
    *,
    disabled_at: float | None = None,
    emitted_at: Mapping[str, float] | None = None,
    checkpoint: int | None = None,
) -> ChainAccount:
    """Reconcile one chain (reconcile.py). For a chain disabled at `disabled_at`, an event is not
    expected when it is missing from the queue and lies after the chain's final `checkpoint` (or
    there is none): the relay never claimed it, OHIP keeps it and replays it from the checkpoint
    when the chain is enabled again. A missing event at or before the checkpoint is lost."""
    accounts = reconcile(emitted, bodies)
    held: list[EmittedEvent] = []
    if disabled_at is not None:
        missing = set(accounts.missing)
        held = [
            e for e in emitted if e.stream_id in missing and (checkpoint is None or e.offset > checkpoint)
        ]
        if held:
            kept = set(held)
            accounts = reconcile([e for e in emitted if e not in kept], bodies)
    after = 0
    if disabled_at is not None and emitted_at is not None:
        after = sum(1 for e in emitted if emitted_at.get(e.stream_id, 0.0) >= disabled_at)
    return ChainAccount(
        subscription=subscription,
        environment=environment,
        emitted=len(emitted),
        delivered=accounts.delivered,
        duplicates={
            kind: accounts.duplicates[kind] for kind in (STREAM_REPLAY, CHANNEL_OVERLAP, POLL_REPEAT)
        },
        lost=len(accounts.lost),
        unexpected=len(accounts.unexpected),
        held=len(held),
        emitted_after_disable=after,
        checkpoint=checkpoint,
    )


def subscription_of(body: Mapping[str, Any]) -> str:
    """The subscription a message came from: `subscriptionId` when it has one, else `chainCode`."""
    return str(body.get("subscriptionId") or body.get("chainCode") or "")


def _loads(values: Collection[int]) -> str:
    return "/".join(str(v) for v in sorted(values, reverse=True)) or "none"


# -- the parts that do I/O ---------------------------------------------------------------------------


class _Emitter:
    """Emits `rate` events per second on every chain, on the gateway's own loop, until stopped;
    keeps what it emitted per chain with the wall-clock time it was emitted."""

    def __init__(self, gateway: LocalGateway, chains: Sequence[tuple[int, str]], rate: float) -> None:
        self._gateway = gateway
        self._chains = list(chains)
        self._rate = rate
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[float, StoredEvent]]] = {chain: [] for _, chain in chains}
        self._thread = threading.Thread(target=self._run, name="fleet-demo-emitter", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def count(self) -> int:
        with self._lock:
            return sum(len(events) for events in self._events.values())

    def events(self, chain: str) -> list[tuple[float, StoredEvent]]:
        with self._lock:
            return list(self._events[chain])

    def _emit(self, count: int) -> list[tuple[str, list[StoredEvent]]]:
        gateway = self._gateway
        return [(chain, gateway.environment(env).emit(count, chain=chain)) for env, chain in self._chains]

    def _run(self) -> None:
        start = time.monotonic()
        done = 0
        try:
            while not self._stop.is_set():
                due = int((time.monotonic() - start) * self._rate) + 1
                if due > done:
                    batch = call_in_gateway(self._gateway, functools.partial(self._emit, due - done))
                    at = time.time()
                    with self._lock:
                        for chain, stored in batch:
                            self._events[chain] += [(at, event) for event in stored]
                    done = due
                self._stop.wait(EMIT_INTERVAL)  # pacing, not synchronisation
        except BaseException as exc:  # reported by the demo
            self.error = exc


@dataclass
class _Relay:
    """One `ohip-relay stream` fleet process and its log file."""

    name: str
    process: RelayProcess
    log_path: Path
    log_file: IO[str]
    worker: str = ""
    killed: bool = False
    status: int | None = None

    def worker_id(self) -> str:
        if not self.worker:
            for line in list(self.process.lines):
                match = _JOINED.search(line)
                if match:
                    self.worker = match.group(1)
                    break
        return self.worker


@dataclass
class _Fleet:
    """What the demo drives: the relays, the registry (as the demo wrote it) and the fleet's items."""

    stack: ProvisionedStack
    relay_env: dict[str, str]
    admin_env: dict[str, str]
    run_dir: Path
    verbose: bool
    worker_timeout: float
    relays: list[_Relay] = field(default_factory=list)
    enabled: set[str] = field(default_factory=set)
    echo_warnings: bool = True  # a relay's WARNING and ERROR lines on stdout even when not verbose

    def __post_init__(self) -> None:
        ddb = local_client("dynamodb", self.stack.endpoint_url, self.stack.region)
        self.store = FleetStore(ddb, self.stack.table_name)
        self.registry = RegistryStore(ddb, self.stack.table_name)
        self.dynamodb = ddb

    def start_relay(self) -> _Relay:
        name = f"relay-{len(self.relays) + 1}"
        path = self.run_dir / f"{name}.log"
        log_file = path.open("w", encoding="utf-8")
        echo = _relay_echo(name, log_file, self.verbose, self.echo_warnings)
        process = RelayProcess(["stream"], self.relay_env, echo=echo, cwd=Path(os.getcwd()))
        for variable in _SINGLE_CHAIN:
            process.env.pop(variable, None)
        relay = _Relay(name, process.start(), path, log_file)
        self.relays.append(relay)
        return relay

    def running(self) -> list[_Relay]:
        return [r for r in self.relays if not r.killed and r.status is None]

    def wait_joined(self, relays: Sequence[_Relay]) -> None:
        for relay in relays:

            def joined(r: _Relay = relay) -> bool:
                return bool(r.worker_id()) or r.process.returncode is not None

            wait_until(joined, timeout=SETTLE_TIMEOUT, what=f"{relay.name} to join the fleet")
            if not relay.worker_id():
                raise HarnessError(
                    f"{relay.name} exited with status {relay.process.returncode} before joining the fleet; "
                    f"see {relay.log_path}"
                )

    def judge(self, balanced: bool = True) -> FleetJudgement:
        view = self.store.read_fleet()
        return judge_fleet(
            view.workers,
            workers={r.worker_id() for r in self.running()},
            enabled=self.enabled,
            now=time.time(),
            worker_timeout=self.worker_timeout,
            balanced=balanced,
        )

    def settle(
        self, since: float, *, balanced: bool = True, timeout: float = SETTLE_TIMEOUT
    ) -> tuple[float, FleetJudgement]:
        """Poll the worker items until the fleet has settled; (seconds since `since`, judgement).
        Raises `HarnessError` naming what was still wrong at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            judgement = self.judge(balanced)
            if judgement.settled:
                return time.monotonic() - since, judgement
            dead = [r for r in self.running() if r.process.returncode is not None]
            if dead:
                raise HarnessError(
                    f"{dead[0].name} exited with status {dead[0].process.returncode}; see {dead[0].log_path}"
                )
            if time.monotonic() >= deadline:
                raise HarnessError(f"the fleet did not settle within {timeout:g}s: {judgement.problem}")
            time.sleep(POLL_INTERVAL)

    def name_of(self, worker: str) -> str:
        return next((r.name for r in self.relays if r.worker == worker), worker)

    def describe(self, judgement: FleetJudgement) -> str:
        running = [r for r in self.relays if r.worker in judgement.loads]
        names = "/".join(r.name for r in running)
        return f"{_loads([judgement.loads[r.worker] for r in running])} chains on {names}"

    def chains_command(self, *arguments: str) -> str:
        """`ohip-relay chains ...` as an operator runs it (as the administrator: managing the
        registry is no part of OperatorRole, docs/permissions.md); its output line."""
        env = {**os.environ, **self.admin_env}
        for variable in _SINGLE_CHAIN:
            env.pop(variable, None)
        run = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "ohip_relay.cli", "chains", *arguments],
            env=env,
            cwd=os.getcwd(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise HarnessError(f"`ohip-relay chains {arguments[0]}` exited with {run.returncode}: {last}")
        return run.stdout.strip()

    def close_logs(self) -> None:
        for relay in self.relays:
            if not relay.log_file.closed:
                relay.log_file.close()


def _relay_echo(name: str, log_file: IO[str], verbose: bool, warnings: bool = True) -> Callable[[str], None]:
    lock = threading.Lock()

    def echo(line: str) -> None:
        with lock:
            if not log_file.closed:
                log_file.write(line + "\n")
                log_file.flush()
        if verbose or (warnings and (" WARNING " in line or " ERROR " in line)):
            print(f"    {name} | {line[24:] if line[:4].isdigit() else line}", flush=True)

    return echo


def _secret(stack: ProvisionedStack, name: str, config: GatewayConfig) -> str:
    """One environment's credentials in Secrets Manager, as a partner stores them (partner-guide.md)."""
    client = local_client("secretsmanager", stack.endpoint_url, stack.region)
    value = json.dumps(
        {"clientId": config.client_id, "clientSecret": config.client_secret, "appKey": config.app_key}
    )
    return str(client.create_secret(Name=name, SecretString=value)["ARN"])


def _check_stream_role_reads(stack: ProvisionedStack, arn: str) -> None:
    """The relays run under StreamTaskRole, which reads the registry's secrets by name pattern
    (template.yaml `RegistrySecrets`, parameter `RegistrySecretArnPattern`, default ohip/*)."""
    session = stack.credentials(STREAM_ROLE).session(stack.region)
    client = session.client("secretsmanager", endpoint_url=stack.endpoint_url)
    try:
        client.get_secret_value(SecretId=arn)
    except Exception as exc:  # botocore's ClientError, AccessDenied in particular
        raise HarnessError(
            f"StreamTaskRole may not read {arn} ({type(exc).__name__}): template.yaml must grant "
            "secretsmanager:GetSecretValue on the registry's secrets (RegistrySecretArnPattern, ohip/*)"
        ) from None


def _gateway_config(options: FleetDemoOptions) -> GatewayConfig:
    """`fleet_config` with one chain more in environment 0: the chain added to the registry mid-run."""
    n = options.chains_per_environment
    config = fleet_config(options.environments, n + 1, GatewayConfig(seed=options.seed))
    others = tuple(dataclasses.replace(env, chains=env.chains[:n]) for env in config.environments)
    return dataclasses.replace(config, environments=others)


@contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    if verbose:
        yield
        return
    names = ("ohip_local", "ohip_relay", "werkzeug", "botocore", "urllib3", "aiohttp", "httpx")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


# -- the scenario ------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    accounts: list[ChainAccount] = field(default_factory=list)
    connections: list[dict[str, Any]] = field(default_factory=list)
    statuses: dict[str, int | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)
    disabled: str = ""
    disabled_step: int = 0


def run_fleet_demo(options: FleetDemoOptions | None = None) -> int:
    options = options or FleetDemoOptions()
    started = time.monotonic()
    run_dir = options.run_dir or Path(tempfile.mkdtemp(prefix="ohip-relay-fleet-demo-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    template = find_template()
    e = options.environments
    _say("ohip-relay local demo --fleet")
    _say(f"  template      {template}")
    with _quiet(options.verbose), moto_process() as endpoint:
        stack = provision(endpoint, template, stack_name=STACK_NAME, region=DEFAULT_REGION)
        _say(
            f"  local AWS     {endpoint} (queue {stack.queue_url.rsplit('/', 1)[-1]}, "
            f"table {stack.table_name})"
        )
        config = _gateway_config(options)
        with running_gateway(config) as gateway:
            served = [(env.index, chain) for env in gateway.environments for chain in env.chains]
            _say(
                f"  local OHIP    {e} environment{'s' if e > 1 else ''}: "
                + ", ".join(
                    f"env{env.index} {env.url} ({len(env.chains)} chains)" for env in gateway.environments
                )
                + f"; control {gateway.control_url}"
            )
            arns = [_secret(stack, f"ohip/{STACK_NAME}/env{i}", config.for_environment(i)) for i in range(e)]
            _say(f"  secrets       {', '.join(f'ohip/{STACK_NAME}/env{i}' for i in range(e))}")
            _check_stream_role_reads(stack, arns[0])
            _say(
                "  IAM           enforced: the relays under StreamTaskRole, `ohip-relay chains` as "
                "the administrator"
            )
            _say(
                f"  events        {options.chain_rate:g}/s on each of the {len(served)} chains, "
                "for the whole run"
            )
            _say(f"  relay logs    {run_dir}/relay-<n>.log")
            outcome = _scenario(options, stack, gateway, arns, run_dir)
            outcome.denied = describe_denials(denials(endpoint))
    return _report(outcome, time.monotonic() - started)


def _scenario(
    options: FleetDemoOptions,
    stack: ProvisionedStack,
    gateway: LocalGateway,
    arns: Sequence[str],
    run_dir: Path,
) -> _Outcome:
    n = options.chains_per_environment
    relay_env = {
        **environment_for(stack, role=STREAM_ROLE),
        "RELAY_FLEET": "true",
        "RELAY_START_POSITION": "earliest",
        "RELAY_LEASE_SECONDS": f"{LEASE_SECONDS:g}",  # renewals and passes every 2 s, dead after 4 s
        "POWERTOOLS_METRICS_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    }
    fleet = _Fleet(
        stack,
        relay_env,
        environment_for(stack, role=None),
        run_dir,
        options.verbose,
        worker_timeout=options_from(Settings(lease_seconds=LEASE_SECONDS)).balance.worker_timeout,
    )
    served = [(env.index, chain) for env in gateway.environments for chain in env.chains]
    environment_of = dict((chain, index) for index, chain in served)
    extra_env = gateway.environment(0)
    extra = extra_env.chains[n]  # served, not registered at first
    disabled = gateway.environments[-1].chains[n - 1]  # the last registered chain of the last environment
    emitter = _Emitter(gateway, served, options.chain_rate)
    reader = QueueReader(stack.queue_url, endpoint_url=stack.endpoint_url, region=stack.region)
    outcome = _Outcome(disabled=disabled)
    disabled_at: float | None = None
    step = 0

    def subscription(index: int, chain: str) -> Subscription:
        env = gateway.environment(index)
        return Subscription(
            gateway_url=env.url,
            chain_code=chain,
            secret_arn=arns[index],
            enterprise_id=env.config.enterprise_id,
            external_system=env.config.external_systems[0],
        )

    def settled(
        label: str, what: str, since: float, before: Mapping[str, str] | None = None
    ) -> FleetJudgement:
        try:
            seconds, judgement = fleet.settle(since)
        except HarnessError as exc:
            outcome.failures.append(f"{label}: {exc}")
            _say(f"{label}: {what}; FAILED: {exc}")
            return fleet.judge()
        changes = _changes(before, judgement.holders, fleet.name_of) if before is not None else ""
        _say(f"{label}: {what}; settled in {seconds:.1f}s: {fleet.describe(judgement)}{changes}")
        return judgement

    with ExitStack() as stack_of:
        stack_of.callback(fleet.close_logs)
        stack_of.enter_context(reader)
        stack_of.callback(emitter.stop)
        stack_of.callback(_kill_all, fleet)
        emitter.start()

        since = time.monotonic()
        first = [fleet.start_relay() for _ in range(options.relays)]
        fleet.wait_joined(first)
        settled("start", f"{len(first)} relays joined the fleet (empty registry)", since)

        since = time.monotonic()
        for index in range(options.environments):
            for chain in gateway.environment(index).chains[:n]:
                fleet.registry.add(subscription(index, chain))
                fleet.enabled.add(chain)
        judgement = settled(
            "start",
            f"{len(fleet.enabled)} subscriptions registered (RegistryStore.add, as `ohip-relay chains add`)",
            since,
        )

        step += 1
        victim = max(fleet.running(), key=lambda r: judgement.loads.get(r.worker, 0))
        held = judgement.loads.get(victim.worker, 0)
        before = dict(judgement.holders)
        since = time.monotonic()
        victim.process.kill()
        victim.killed = True
        judgement = settled(
            f"step {step}", f"{victim.name} killed (SIGKILL) holding {held} chains", since, before
        )

        step += 1
        before = dict(judgement.holders)
        since = time.monotonic()
        added = fleet.start_relay()
        fleet.wait_joined([added])
        judgement = settled(f"step {step}", f"{added.name} started", since, before)

        step += 1
        before = dict(judgement.holders)
        since = time.monotonic()
        fleet.chains_command(
            "add",
            "--chain-code",
            extra,
            "--gateway-url",
            extra_env.url,
            "--secret-arn",
            arns[0],
            "--enterprise-id",
            extra_env.config.enterprise_id,
            "--external-system",
            extra_env.config.external_systems[0],
        )
        fleet.enabled.add(extra)
        judgement = settled(
            f"step {step}", f"`ohip-relay chains add --chain-code {extra} ...`", since, before
        )

        step += 1
        before = dict(judgement.holders)
        holder = fleet.name_of(before.get(disabled, "?"))
        since = time.monotonic()
        disabled_at = time.time()
        fleet.chains_command("disable", disabled)
        fleet.enabled.discard(disabled)
        outcome.disabled_step = step
        settled(f"step {step}", f"`ohip-relay chains disable {disabled}`: stopped on {holder}", since, before)

        emitter.stop()
        if emitter.error is not None:
            outcome.failures.append(f"the emitter failed: {type(emitter.error).__name__}: {emitter.error}")
        _say(f"end: emitted {emitter.count()} events; waiting until every expected one is on the queue")
        expected = {chain: {event.offset for _, event in emitter.events(chain)} for chain in fleet.enabled}
        try:
            wait_until(
                lambda: _all_on_queue(expected, reader),
                timeout=DELIVERY_TIMEOUT,
                interval=0.2,
                what="every expected event on the queue",
            )
        except HarnessError as exc:
            _say(f"  {exc}")
        outcome.statuses = _stop_all(fleet)
        _drain(stack, reader)
        bodies = reader.snapshot().bodies
        checkpoint = StateStore(fleet.dynamodb, stack.table_name, disabled).get_checkpoint()

    by_subscription: dict[str, list[Mapping[str, Any]]] = {}
    for body in bodies:
        by_subscription.setdefault(subscription_of(body), []).append(body)
    for _, chain in served:
        if chain not in fleet.enabled and chain != disabled:
            continue
        events = emitter.events(chain)
        emitted = [emitted_event(event) for _, event in events]
        outcome.accounts.append(
            account_chain(
                chain,
                environment_of[chain],
                emitted,
                by_subscription.pop(chain, []),
                disabled_at=disabled_at if chain == disabled else None,
                emitted_at={e.stream_id: at for e, (at, _) in zip(emitted, events, strict=True)},
                checkpoint=checkpoint.offset if checkpoint is not None and chain == disabled else None,
            )
        )
    strays = sum(len(b) for b in by_subscription.values())
    if strays:
        outcome.failures.append(f"{strays} messages of subscriptions the registry never listed")
    report = ControlClient(gateway.control_url).connections()
    for env in report["environments"]:
        for chain, entry in env["chains"].items():
            outcome.connections.append({"environment": env["environment"], "chain": chain, **entry})
    return outcome


def _changes(before: Mapping[str, str], after: Mapping[str, str], name: Callable[[str], str]) -> str:
    """What moved between two settled fleets, for a step's line: "; 6 chains moved to relay-4"."""
    moved: dict[str, int] = {}
    for chain, worker in after.items():
        if before.get(chain) not in (None, worker):
            moved[name(worker)] = moved.get(name(worker), 0) + 1
    new = sorted(chain for chain in after if chain not in before)
    parts = []
    if moved:
        count = sum(moved.values())
        to = (
            ": " + ", ".join(f"{n} to {w}" for w, n in sorted(moved.items()))
            if len(moved) > 1
            else f" to {next(iter(moved))}"
        )
        parts.append(f"{count} chain{'s' if count > 1 else ''} moved{to}")
    parts += [f"{chain} taken by {name(after[chain])}" for chain in new]
    return "".join(f"; {part}" for part in parts)


def _all_on_queue(expected: Mapping[str, set[int]], reader: QueueReader) -> bool:
    got: dict[str, set[int]] = {}
    for body in reader.snapshot().bodies:
        offset = body.get("offset")
        if body.get("source") == "stream" and offset is not None:
            got.setdefault(subscription_of(body), set()).add(int(str(offset)))
    return all(want <= got.get(chain, set()) for chain, want in expected.items())


def _stop_all(fleet: _Fleet) -> dict[str, int | None]:
    """SIGTERM to every running relay at once (complete, drain, checkpoint, release), then wait."""
    running = fleet.running()
    for relay in running:
        if relay.process.returncode is None:  # one that ended by itself is reported with its status
            with suppress(ProcessLookupError):
                os.kill(relay.process.pid, signal.SIGTERM)
    statuses: dict[str, int | None] = {}
    for relay in fleet.relays:
        if relay.killed:
            statuses[relay.name] = None
            continue
        try:
            relay.status = relay.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            relay.process.kill()
            relay.status = -int(signal.SIGKILL)
        statuses[relay.name] = relay.status
    shown = ", ".join(
        f"{name} {'killed in step 1' if status is None else f'exit {status}'}"
        for name, status in statuses.items()
    )
    _say(f"end: SIGTERM to the {len(running)} running relays: {shown}")
    return statuses


def _kill_all(fleet: _Fleet) -> None:
    for relay in fleet.relays:
        if relay.process.returncode is None:
            relay.process.kill()


def _drain(stack: ProvisionedStack, reader: QueueReader) -> None:
    """Wait until the reader has taken everything off the queue (visible and in flight)."""
    sqs = local_client("sqs", stack.endpoint_url, stack.region)
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]

    def empty() -> bool:
        attributes = sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=names)["Attributes"]
        return all(int(attributes.get(name, "0")) == 0 for name in names)

    wait_until(empty, timeout=DELIVERY_TIMEOUT, interval=0.2, what="the queue to be drained")


# -- the report ----------------------------------------------------------------------------------------

_KINDS = (STREAM_REPLAY, CHANNEL_OVERLAP, POLL_REPEAT)


def _report(outcome: _Outcome, took: float) -> int:
    accounts = outcome.accounts
    header = (
        "chain",
        "env",
        "emitted",
        "delivered",
        "replay",
        "overlap",
        "poll rep.",
        "lost",
        "held",
        "max live",
    )
    live = {c["chain"]: c for c in outcome.connections}
    rows = [
        (
            a.subscription,
            str(a.environment),
            str(a.emitted),
            str(a.delivered),
            *(str(a.duplicates[k]) for k in _KINDS),
            str(a.lost),
            str(a.held) + (" *" if a.subscription == outcome.disabled else ""),
            str(live.get(a.subscription, {}).get("max_concurrent_subscribed", "?")),
        )
        for a in accounts
    ]
    totals = (
        "total",
        "",
        str(sum(a.emitted for a in accounts)),
        str(sum(a.delivered for a in accounts)),
        *(str(sum(a.duplicates[k] for a in accounts)) for k in _KINDS),
        str(sum(a.lost for a in accounts)),
        str(sum(a.held for a in accounts)),
        "",
    )
    widths = [max(len(row[i]) for row in (header, *rows, totals)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  " + "  ".join(cells).rstrip()

    _say("")
    _say("reconciliation per chain (by event identity: eventId; duplicates by kind: stream replay, channel")
    _say(
        "overlap, poll repeat; max live: most live subscriptions at once, the gateway's connection detector)"
    )
    _say(line(header))
    for row in rows:
        _say(line(row))
    _say(line(totals))
    for a in accounts:
        if a.subscription == outcome.disabled:
            at = "none" if a.checkpoint is None else str(a.checkpoint)
            _say(
                f"  * {a.subscription} was disabled in step {outcome.disabled_step}; "
                f"{a.emitted_after_disable} events were emitted on it after that."
            )
            _say(f"    held: the {a.held} after its final checkpoint ({at}) are not expected on the stream.")
            _say("    OHIP keeps them for 7 days and replays them when the chain is enabled again:")
            _say("    neither delivered nor lost.")
    unexpected = sum(a.unexpected for a in accounts)
    if unexpected:
        _say(f"  unexpected messages (eventIds the gateway never emitted): {unexpected}")

    doubled = [c for c in outcome.connections if c["max_concurrent_subscribed"] > 1]
    refusals = sum(int(c["refusals_4409"]) for c in outcome.connections)
    overlaps = sum(int(c["handover_overlaps"]) for c in outcome.connections)
    _say(
        f"double connections: {len(doubled)} (max_concurrent_subscribed <= 1 on "
        f"{len(outcome.connections) - len(doubled)} of {len(outcome.connections)} chains, "
        "every environment); "
        f"refusals_4409 {refusals}, handover_overlaps {overlaps}"
    )
    for c in doubled:
        _say(
            f"  env{c['environment']} {c['chain']}: {c['max_concurrent_subscribed']} at once ({c['moments']})"
        )
    unclean = [
        f"{name} exit {status}" for name, status in outcome.statuses.items() if status not in (None, 0)
    ]
    for problem in outcome.failures:
        _say(f"  {problem}")
    for denial in outcome.denied:  # a relay's role lacks what it did (docs/permissions.md)
        _say(f"  {denial}")
    _say(f"took {took:.1f}s")
    lost = sum(a.lost for a in accounts)
    ok = (
        not lost
        and not unexpected
        and not doubled
        and not unclean
        and not outcome.failures
        and not outcome.denied
    )
    stops = "every relay stopped cleanly" if not unclean else f"not stopped cleanly: {', '.join(unclean)}"
    verdict = "OK" if ok else "FAILED"
    _say(f"{verdict}: {lost} lost, {len(doubled)} double connections, {stops}")
    return 0 if ok else 1
