"""Fleet chaos (`ohip-relay local chaos --fleet`, `make chaos-fleet`): seeded schedules against a
fleet on the local stack, with the fleet's invariants checked per chain (issue #18).

A schedule (`generate_fleet_schedule`, from `random.Random(seed)`; a seed is the same plan on any
machine) is a fleet and steps:

- the fleet: 1-2 OPERA environments, 3-6 subscriptions in the registry (sometimes one chain code in
  both environments under two subscription ids), 0-2 more chains the gateway serves that a step may
  add, some chains whose offsets start at 0 or at 19 digits, and 2-3 relay processes
  (`ohip-relay stream` with `RELAY_FLEET=true` under StreamTaskRole, a lease of `LEASE_SECONDS`,
  start position earliest). Each chain has an external system of its own: two subscriptions must
  not poll one Poll API queue (docs/poll-fallback.md, "Known limits");
- 6-12 steps (4-6 with `short`): emit bursts on 1-3 chains (some adversarial, some after an offset
  jump), kill -9 of a relay, start of a relay, SIGTERM of a relay, registry disable / enable / add
  (`ohip-relay chains` as a child process, or `RegistryStore`), per-chain gateway faults (drop,
  close 4401 / 4409 / 4500), token expiry of an environment, a fleet poll tick (`ohip-relay poll`
  with `RELAY_FLEET=true`, as the scheduled Lambda), DynamoDB / SQS faults through the fault proxy
  (half of them an UpdateItem outage of 2-8 s: the lease renewals fail and every session must close
  at its safe_until, never two connections), and pauses.

Then the emits finish, the AWS faults run out (chaos.py `wait_out_faults`), every enabled chain
settles (connected on exactly one live relay, fleet_demo.py `judge_fleet`), every event of every
enabled chain reaches the queue (a poll tick whenever nothing new arrived for `TICK_EVERY`), every
relay gets SIGTERM, and the reader drains the queue. The invariants, per chain (subscription):

- nothing lost by identity, only documented duplicates, no unexpected message (fleet_demo.py
  `account_chain`, reconcile.py); a disabled chain's events after its final checkpoint are not
  expected (OHIP keeps them), any before it are;
- no message of a subscription the registry never listed;
- never two live subscriptions of one chain: the gateway's connection detector
  `max_concurrent_subscribed <= 1` for every chain of every environment;
- no personal value of any emitted event in any relay or tick log line;
- every relay stopped with SIGTERM (a step, or the end) exited 0; none was denied by IAM.

A relay that exits on its own is noted and replaced, as ECS would. The rows, the summary, `--jobs`
and `--out` are chaos.py's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ohip_relay.config import Settings
from ohip_relay.registry import RegistryStore, Subscription
from ohip_relay.scheduler import options_from
from ohip_relay.state import StateStore

from .aws import POLL_ROLE, STREAM_ROLE, ProvisionedStack
from .chaos import (
    ADVERSARIAL_EMITS,
    ADVERSARIAL_SHARE,
    HEALTH_SECONDS,
    HUGE_START_SHARE,
    OFFSET_JUMP_SHARE,
    OFFSET_JUMPS,
    ZERO_START_SHARE,
    RunRecord,
    ScheduleResult,
    Step,
    _fault_params,
    _say,
    await_delivery,
    fresh_stack,
    personal_data_hits,
    run_tick,
    wait_out_faults,
)
from .control import ControlClient
from .faultproxy import FaultProxy, FaultRule, running_fault_proxy
from .fleet_demo import (
    _SINGLE_CHAIN,
    ChainAccount,
    _drain,
    _Fleet,
    _Relay,
    _secret,
    account_chain,
    subscription_of,
)
from .gateway import GatewayConfig, LocalGateway, fleet_config
from .harness import HarnessError, QueueReader, wait_until
from .iam import denials, describe_denials
from .reconcile import DOCUMENTED_KINDS, EmittedEvent, emitted_events, reconcile
from .source import StoredEvent
from .stack import environment_for
from .threaded import call_in_gateway, running_gateway

__all__ = [
    "FLEET_STEP_KINDS",
    "FleetChain",
    "FleetSchedule",
    "generate_fleet_schedule",
    "run_fleet_schedule",
]

log = logging.getLogger(__name__)

STACK_NAME = "ohip-relay-fleet-chaos"
LEASE_SECONDS = 4.0  # renewals and passes every 1.3 s, a session closed 2.7 s after its last renewal
SETTLE_TIMEOUT = 90.0  # after the steps: every enabled chain connected once (a handover takes ~12 s)
# A relay's graceful stop (complete, drain, flush, checkpoint, release): past the relay's own stop
# watchdog (90 s, stream.py), so that a stop that hangs logs where it waits before it is killed.
STOP_TIMEOUT = 120.0
MAX_RELAYS = 4
TWIN = "TWINCHAIN"  # the chain code served by both environments, when a schedule has one

FLEET_STEP_KINDS = (
    "emit",
    "kill",
    "start",
    "sigterm",
    "disable",
    "enable",
    "add",
    "drop",
    "close",
    "expire_tokens",
    "poll_tick",
    "aws_fault",
    "pause",
)
_WEIGHTS: dict[str, float] = {
    "emit": 6,
    "kill": 1.5,
    "start": 1.5,
    "sigterm": 1.2,
    "disable": 1,
    "enable": 1.5,
    "add": 1.5,
    "drop": 1.2,
    "close": 1.5,
    "expire_tokens": 1,
    "poll_tick": 1.2,
    "aws_fault": 1.5,
    "pause": 1,
}
assert set(_WEIGHTS) == set(FLEET_STEP_KINDS)


# -- schedules (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetChain:
    """One chain the gateway serves, and the subscription the registry has (or a step adds) for it."""

    subscription: str
    chain: str
    environment: int
    system: str  # its external system: its own Poll API queue
    first_offset: int | None = None  # None: the gateway's default
    registered: bool = True  # in the registry from the start; else an `add` step may add it

    def describe(self) -> str:
        name = self.chain if self.subscription == self.chain else f"{self.subscription}={self.chain}"
        start = "" if self.first_offset is None else f" from {self.first_offset}"
        return f"{name}@env{self.environment}{start}{'' if self.registered else ' (unregistered)'}"


@dataclass(frozen=True)
class FleetSchedule:
    seed: int
    environments: int
    relays: int
    chains: tuple[FleetChain, ...]
    steps: tuple[Step, ...]

    def chain(self, subscription: str) -> FleetChain:
        return next(c for c in self.chains if c.subscription == subscription)

    def emitted_by_plan(self) -> int:
        return sum(int(s.params["count"]) * len(s.params["chains"]) for s in self.steps if s.kind == "emit")

    def describe(self) -> str:
        fleet = f"{self.environments} env, {self.relays} relays, chains " + " ".join(
            c.describe() for c in self.chains
        )
        return "; ".join([fleet] + [step.describe() for step in self.steps])


def _first_offset(rng: random.Random) -> int | None:
    roll = rng.random()
    if roll < ZERO_START_SHARE:
        return 0
    if roll < ZERO_START_SHARE + HUGE_START_SHARE:
        return 10**19 - rng.randint(5, 400)  # 19 digits, then maybe 20
    return None


def _chains(rng: random.Random, environments: int) -> tuple[FleetChain, ...]:
    registered = rng.randint(3, 6)
    extra = rng.randint(0, 2)
    twin = environments == 2 and rng.random() < 0.4
    chains: list[FleetChain] = []
    for n in range(1, registered + extra + 1):
        env = rng.randrange(environments)
        env = n - 1 if n <= environments else env  # every environment serves a chain at least
        code = f"ENV{env}CHAIN{n:02d}"
        chains.append(FleetChain(code, code, env, f"SYS{n:02d}", _first_offset(rng), n <= registered))
    if twin:  # the last two registered: one chain code in both environments, two subscription ids
        a, b = registered - 2, registered - 1
        chains[a] = dataclasses.replace(chains[a], subscription=TWIN, chain=TWIN, environment=0)
        chains[b] = dataclasses.replace(chains[b], subscription=f"{TWIN}-ENV1", chain=TWIN, environment=1)
    return tuple(chains)


def _renewal_outage(rng: random.Random) -> dict[str, Any]:
    """DynamoDB UpdateItem (lease renewals, checkpoints) failing or hanging for a few seconds."""
    error = rng.choice(("unavailable", "internal", "throttle", "slow"))
    params: dict[str, Any] = {
        "service": "dynamodb",
        "error": error,
        "operation": "UpdateItem",
        "phase": "before",
        "duration": round(rng.uniform(2.0, 8.0), 2),
        "probability": 1.0,
    }
    if error == "slow":
        params["delay"] = round(rng.uniform(1.5, 4.0), 2)
    return params


def _allowed(kind: str, running: int, enabled: set[str], disabled: set[str], unregistered: list[str]) -> bool:
    if kind in ("kill", "sigterm"):
        return running >= 2  # one relay at least keeps running
    if kind == "start":
        return running < MAX_RELAYS
    if kind == "disable":
        return len(enabled) >= 2
    if kind == "enable":
        return bool(disabled)
    if kind == "add":
        return bool(unregistered)
    return True


def _emit(rng: random.Random, chains: Sequence[FleetChain], short: bool) -> Step:
    on = rng.sample([c.subscription for c in chains], k=min(len(chains), rng.randint(1, 3)))
    params: dict[str, Any] = {
        "chains": sorted(on),
        "count": rng.randint(5, 30 if short else 60),
        "rate": rng.choice((0, 20, 100)),
    }
    if rng.random() < ADVERSARIAL_SHARE:
        params["adversarial"] = rng.choice(ADVERSARIAL_EMITS)
    if rng.random() < OFFSET_JUMP_SHARE:
        params["offset_jump"] = rng.choice(OFFSET_JUMPS)
    return Step("emit", params)


def generate_fleet_schedule(seed: int, *, short: bool = False) -> FleetSchedule:
    """The fleet schedule of `seed`: the same fleet and steps for the same seed, on any machine.
    The generator keeps track of the registry and the running relays, so that every step applies
    (a disable leaves one chain enabled at least, a kill or SIGTERM one relay running)."""
    rng = random.Random(seed)
    environments = rng.randint(1, 2)
    chains = _chains(rng, environments)
    relays = rng.randint(2, 3)
    running = relays
    enabled = {c.subscription for c in chains if c.registered}
    disabled: set[str] = set()
    unregistered = [c.subscription for c in chains if not c.registered]
    kinds = list(_WEIGHTS)
    if short:
        kinds.remove("pause")
    count = rng.randint(4, 6) if short else rng.randint(6, 12)
    steps = [_emit(rng, chains, short)]
    while len(steps) < count:
        kind = rng.choices(kinds, [_WEIGHTS[k] for k in kinds])[0]
        if not _allowed(kind, running, enabled, disabled, unregistered):
            continue
        params: dict[str, Any] = {}
        if kind == "emit":
            steps.append(_emit(rng, chains, short))
            continue
        if kind in ("kill", "sigterm"):
            params = {"pick": rng.randrange(1000)}
            running -= 1
        elif kind == "start":
            running += 1
        elif kind in ("disable", "enable", "add"):
            pool = {"disable": sorted(enabled), "enable": sorted(disabled), "add": unregistered}[kind]
            chosen = rng.choice(pool)
            params = {"subscription": chosen, "via": "cli" if rng.random() < 0.3 else "store"}
            if kind == "disable":
                enabled.discard(chosen)
                disabled.add(chosen)
            else:
                disabled.discard(chosen)
                enabled.add(chosen)
                if kind == "add":
                    unregistered.remove(chosen)
        elif kind == "drop":
            params = {"subscription": rng.choice(chains).subscription}
        elif kind == "close":
            codes = (4401, 4500) if short else (4401, 4401, 4500, 4500, 4409)
            params = {"subscription": rng.choice(chains).subscription, "code": rng.choice(codes)}
        elif kind == "expire_tokens":
            params = {"environment": rng.randrange(environments), "close": rng.random() < 0.7}
        elif kind == "aws_fault":
            params = _renewal_outage(rng) if rng.random() < 0.5 else _fault_params(rng)
        elif kind == "pause":
            params = {"seconds": round(rng.uniform(0.2, 3.0), 2)}
        steps.append(Step(kind, params))
    return FleetSchedule(seed, environments, relays, chains, tuple(steps))


def gateway_config(schedule: FleetSchedule) -> GatewayConfig:
    """The gateway of a schedule: `fleet_config`'s environments (their own credentials and ports)
    with the schedule's chains, each with its external system and first offset."""
    base = fleet_config(schedule.environments, 1, GatewayConfig(seed=schedule.seed))

    def fields(env: int) -> dict[str, Any]:
        mine = [c for c in schedule.chains if c.environment == env]
        return {
            "chains": tuple(c.chain for c in mine),
            "external_systems": tuple(c.system for c in mine),
            "system_chains": tuple((c.system, c.chain) for c in mine),
            "first_offsets": tuple((c.chain, c.first_offset) for c in mine if c.first_offset is not None),
        }

    more = tuple(dataclasses.replace(env, **fields(i + 1)) for i, env in enumerate(base.environments))
    return dataclasses.replace(base, **fields(0), approved_chains=None, environments=more)


# -- the run --------------------------------------------------------------------------------------


def _relay_variables(stack: ProvisionedStack, proxy: FaultProxy) -> dict[str, str]:
    return {
        **environment_for(stack, role=STREAM_ROLE),
        "AWS_ENDPOINT_URL": proxy.url,  # the relays and the ticks go through the fault proxy
        "RELAY_FLEET": "true",
        "RELAY_START_POSITION": "earliest",
        "RELAY_LEASE_SECONDS": f"{LEASE_SECONDS:g}",
        "RELAY_HEARTBEAT_SECONDS": f"{HEALTH_SECONDS / 3:g}",  # read by the settings' checks only
        "RELAY_HEALTH_STALE_SECONDS": f"{HEALTH_SECONDS:g}",
        "RELAY_HEALTH_GRACE_SECONDS": f"{HEALTH_SECONDS:g}",
        "RELAY_HEALTH_RECOVER_SECONDS": f"{HEALTH_SECONDS:g}",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    }


class _FleetRun(RunRecord):
    """One fleet schedule on a fresh gateway, table, queue and fault proxy."""

    def __init__(
        self,
        schedule: FleetSchedule,
        *,
        gateway: LocalGateway,
        stack: ProvisionedStack,
        proxy: FaultProxy,
        arns: Sequence[str],
        run_dir: Path,
        verbose: bool,
    ) -> None:
        super().__init__(schedule.seed, gateway=gateway, stack=stack, proxy=proxy, verbose=verbose)
        self.schedule = schedule
        self.arns = arns
        relay_env = _relay_variables(stack, proxy)
        self.tick_env = {**relay_env, **stack.credentials(POLL_ROLE).environment()}
        worker_timeout = options_from(Settings(lease_seconds=LEASE_SECONDS)).balance.worker_timeout
        self.fleet = _Fleet(
            stack,
            relay_env,
            environment_for(stack, role=None),
            run_dir,
            verbose,
            worker_timeout=worker_timeout,
            echo_warnings=False,
        )
        self.registry: RegistryStore = self.fleet.registry  # moto itself, not the fault proxy
        self.listed = {c.subscription for c in schedule.chains if c.registered}  # what the registry lists
        self.emitted: dict[str, list[EmittedEvent]] = {}
        self.disabled_at: dict[str, float] = {}
        self.unsettled = ""  # why the fleet did not settle after the steps (a failure)

    def subscription(self, chain: FleetChain) -> Subscription:
        env = self.gateway.environment(chain.environment)
        return Subscription(
            id=chain.subscription,
            gateway_url=env.url,
            chain_code=chain.chain,
            secret_arn=self.arns[chain.environment],
            enterprise_id=env.config.enterprise_id,
            external_system=chain.system,
        )

    # -- relays ----------------------------------------------------------------------------------

    def keep_alive(self) -> None:
        """A relay that exited on its own is noted and replaced (as ECS replaces a task)."""
        for relay in self.fleet.running():
            code = relay.process.returncode
            if code is not None:
                relay.status = code
                self.notes.append(f"{relay.name} exited on its own with {code}; see its log")
                self.say(f"{relay.name} exited on its own with {code}; starting another")
                self.fleet.start_relay()
        if not self.fleet.running():
            self.fleet.start_relay()

    def pick(self, n: int) -> _Relay | None:
        running = self.fleet.running()
        return running[n % len(running)] if running else None

    def sigterm(self, relays: Sequence[_Relay]) -> None:
        """The graceful stop of running tasks, all at once: each is first let join the fleet (ECS
        stops a task that runs: a SIGTERM before the handler exists ends a process that has read
        nothing), then SIGTERM, then its exit status (a relay still running after `STOP_TIMEOUT`
        is killed and counts as -9)."""
        for relay in relays:
            try:
                self.fleet.wait_joined([relay])
            except HarnessError as exc:
                self.notes.append(str(exc))
        stopping = [r for r in relays if r.process.returncode is None]
        for relay in stopping:
            os.kill(relay.process.pid, signal.SIGTERM)
        for relay in relays:
            if relay not in stopping:
                relay.status = relay.process.returncode
                self.notes.append(f"{relay.name} exited on its own with {relay.status} before its SIGTERM")
                continue
            try:
                relay.status = relay.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.notes.append(f"{relay.name} did not stop within {STOP_TIMEOUT:g}s of SIGTERM; killed")
                relay.process.kill()
                relay.status = -int(signal.SIGKILL)
            self.sigterm_exits.append(relay.status)

    # -- steps -----------------------------------------------------------------------------------

    def tick(self) -> str:
        with self.phase("ticks"):
            code, lines, summary = run_tick(self.tick_env, Path(os.getcwd()), drop=_SINGLE_CHAIN)
        self.tick_lines += lines
        self.say(f"fleet tick (exit {code}): {summary}")
        return summary

    def registry_change(self, kind: str, chain: FleetChain, via: str) -> None:
        if via == "cli":
            if kind == "add":
                sub = self.subscription(chain)
                self.fleet.chains_command(
                    "add",
                    *("--id", sub.id, "--chain-code", sub.chain_code, "--gateway-url", sub.gateway_url),
                    *("--secret-arn", sub.secret_arn, "--enterprise-id", sub.enterprise_id),
                    *("--external-system", sub.external_system),
                )
            else:
                self.fleet.chains_command(kind, chain.subscription)
        elif kind == "add":
            self.registry.add(self.subscription(chain))
        else:
            self.registry.set_enabled(chain.subscription, kind == "enable")
        self.listed.add(chain.subscription)
        if kind == "disable":
            self.fleet.enabled.discard(chain.subscription)
            self.disabled_at[chain.subscription] = time.time()
        else:
            self.fleet.enabled.add(chain.subscription)
            self.disabled_at.pop(chain.subscription, None)

    def _run_step(self, step: Step) -> None:
        p = step.params
        if step.kind == "emit":
            for subscription in p["chains"]:
                chain = self.schedule.chain(subscription)
                where: dict[str, Any] = {"chain": chain.chain, "environment": chain.environment}
                if "offset_jump" in p:
                    self.control.offset_jump(skip=int(p["offset_jump"]), **where)
                self.control.emit(
                    int(p["count"]),
                    rate=float(p["rate"]),
                    wait=False,
                    adversarial=p.get("adversarial"),
                    **where,
                )
        elif step.kind in ("kill", "sigterm"):
            relay = self.pick(int(p["pick"]))
            if relay is None:
                return
            if step.kind == "kill":
                relay.process.kill()
                relay.killed = True
            else:
                self.sigterm([relay])
        elif step.kind == "start":
            self.fleet.start_relay()
        elif step.kind in ("disable", "enable", "add"):
            self.registry_change(step.kind, self.schedule.chain(p["subscription"]), p["via"])
        elif step.kind in ("drop", "close"):
            target = self.schedule.chain(p["subscription"])
            if step.kind == "drop":
                self.control.drop(chain=target.chain, environment=target.environment)
            else:
                self.control.close(
                    int(p["code"]), "chaos", chain=target.chain, environment=target.environment
                )
        elif step.kind == "expire_tokens":
            self.control.expire_tokens(bool(p["close"]), environment=int(p["environment"]))
        elif step.kind == "poll_tick":
            self.tick()
        elif step.kind == "aws_fault":
            self.proxy.add(FaultRule(**p))
        elif step.kind == "pause":
            time.sleep(float(p["seconds"]))  # the schedule's own timing, not a synchronisation
        else:  # pragma: no cover - generate_fleet_schedule draws known kinds only
            raise ValueError(step.kind)

    # -- the whole schedule ----------------------------------------------------------------------

    def run(self, reader: QueueReader) -> None:
        with self.phase("start relays"):
            first = [self.fleet.start_relay() for _ in range(self.schedule.relays)]
            self.fleet.wait_joined(first)
        for chain in self.schedule.chains:
            if chain.registered:
                self.registry.add(self.subscription(chain))
                self.fleet.enabled.add(chain.subscription)
        for step in self.schedule.steps:
            self.keep_alive()
            self.run_step(step)
        self.settle(reader)

    def events(self, chain: FleetChain) -> list[StoredEvent]:
        source = self.gateway.environment(chain.environment).source
        return call_in_gateway(self.gateway, lambda: source.all_events(chain.chain), timeout=60)

    def expected(self) -> dict[str, list[EmittedEvent]]:
        """Every event the gateway emitted, per subscription the registry lists (enabled or not);
        kept in `emitted` for the evidence of a failed schedule."""
        self.emitted = {
            c.subscription: emitted_events(self.events(c), subscription=c.subscription)
            for c in self.schedule.chains
            if c.subscription in self.listed
        }
        return self.emitted

    def settle(self, reader: QueueReader) -> None:
        with self.phase("settle emits"):
            wait_until(
                lambda: self.control.state()["background_emits"] == 0, timeout=300, interval=0.2, what="emits"
            )
        expected = self.expected()
        enabled = {s: e for s, e in expected.items() if s in self.fleet.enabled}
        wanted = sum(len(e) for e in enabled.values())

        def on_queue() -> int:
            by: dict[str, list[Mapping[str, Any]]] = {}
            for body in reader.snapshot().bodies:
                by.setdefault(subscription_of(body), []).append(body)
            return sum(reconcile(e, by.get(s, [])).delivered for s, e in enabled.items())

        with self.phase("settle grace"):
            wait_out_faults(self.proxy, lambda: on_queue() >= wanted, self.keep_alive)
        with self.phase("settle fleet"):
            self.settle_fleet()
        with self.phase("settle delivery"):
            if not await_delivery(on_queue, wanted, tick=self.tick, keep_alive=self.keep_alive, say=self.say):
                self.notes.append("not every expected event reached the queue in time")
        with self.phase("settle stop"):
            self.sigterm(self.fleet.running())
        try:
            with self.phase("settle drain"):
                _drain(self.stack, reader)
        except HarnessError as exc:
            self.notes.append(str(exc))

    def settle_fleet(self) -> None:
        """Until every enabled chain is connected on exactly one live relay (loads need not be even:
        balancing moves are no invariant); a relay that died meanwhile is replaced."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            self.keep_alive()
            try:
                seconds, _ = self.fleet.settle(
                    time.monotonic(), balanced=False, timeout=max(1.0, deadline - time.monotonic())
                )
                self.say(f"fleet settled ({seconds:.1f}s)")
                return
            except HarnessError as exc:
                if time.monotonic() >= deadline:
                    self.unsettled = str(exc)
                    return

    def cleanup(self) -> None:
        for relay in self.fleet.relays:
            if relay.process.returncode is None:
                relay.process.kill()
        self.fleet.close_logs()


# -- checking -------------------------------------------------------------------------------------


def _account(run: _FleetRun, bodies: Sequence[Mapping[str, Any]]) -> tuple[list[ChainAccount], list[str]]:
    """Every listed chain's account, and the problems of the messages no listed chain claims."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for body in bodies:
        by.setdefault(subscription_of(body), []).append(body)
    accounts: list[ChainAccount] = []
    for subscription, emitted in run.expected().items():
        chain = run.schedule.chain(subscription)
        disabled_at = run.disabled_at.get(subscription)
        checkpoint = None
        if disabled_at is not None:
            stored = StateStore(run.fleet.dynamodb, run.stack.table_name, subscription).get_checkpoint()
            checkpoint = None if stored is None else stored.offset
        accounts.append(
            account_chain(
                subscription,
                chain.environment,
                emitted,
                by.pop(subscription, []),
                disabled_at=disabled_at,
                checkpoint=checkpoint,
            )
        )
    strays = [
        f"{len(b)} messages of subscription {s!r}, which the registry never listed" for s, b in by.items()
    ]
    return accounts, strays


def _chain_problems(account: ChainAccount, live: int) -> list[str]:
    out = []
    if account.lost:
        out.append(f"{account.subscription}: {account.lost} lost")
    if account.unexpected:
        out.append(f"{account.subscription}: {account.unexpected} unexpected")
    odd = {k: v for k, v in account.duplicates.items() if v and k not in DOCUMENTED_KINDS}
    if odd:
        out.append(f"{account.subscription}: undocumented duplicates {odd}")
    if live > 1:
        out.append(f"{account.subscription}: {live} live subscriptions at once")
    return out


def _detector(control: ControlClient) -> dict[tuple[int, str], Mapping[str, Any]]:
    """The gateway's connection detector, per (environment, chain code)."""
    report = control.connections()
    return {
        (int(env["environment"]), chain): entry
        for env in report["environments"]
        for chain, entry in env["chains"].items()
    }


def run_fleet_schedule(
    schedule: FleetSchedule, *, moto_endpoint: str, template: Path, verbose: bool = False
) -> ScheduleResult:
    """Run one fleet schedule on a clean local stack and check its invariants per chain."""
    started = time.monotonic()
    result = ScheduleResult(seed=schedule.seed, steps=len(schedule.steps), plan=schedule.describe())
    stack = fresh_stack(moto_endpoint, template, STACK_NAME, result.timings)
    config = gateway_config(schedule)
    with (
        tempfile.TemporaryDirectory(prefix="ohip-fleet-chaos-") as tmp,
        running_gateway(config) as gateway,
        running_fault_proxy(moto_endpoint, seed=schedule.seed) as proxy,
    ):
        arns = [
            _secret(stack, f"ohip/{STACK_NAME}/env{i}", config.for_environment(i))
            for i in range(schedule.environments)
        ]
        run = _FleetRun(
            schedule, gateway=gateway, stack=stack, proxy=proxy, arns=arns, run_dir=Path(tmp), verbose=verbose
        )
        reader = QueueReader(stack.queue_url, endpoint_url=moto_endpoint, region=stack.region)
        try:
            with reader:
                try:
                    run.run(reader)
                except (HarnessError, subprocess.TimeoutExpired) as exc:
                    result.problems.append(f"harness: {exc}")
                finally:
                    run.cleanup()
            bodies = reader.snapshot().bodies
            accounts, strays = _account(run, bodies)
            detector = _detector(run.control)
            personal = {
                v for chain in schedule.chains for e in run.events(chain) for v in e.personal_values()
            }
            for env in range(schedule.environments):
                codes = run.control.state(environment=env)["streaming"].get("close_codes", {})
                for code, n in codes.items():
                    result.close_codes[code] = result.close_codes.get(code, 0) + int(n)
        finally:
            run.cleanup()
        lines = [line for relay in run.fleet.relays for line in relay.process.lines] + run.tick_lines
        duplicates: Counter[str] = Counter()
        for account in accounts:
            live = int(
                detector.get((account.environment, schedule.chain(account.subscription).chain), {}).get(
                    "max_concurrent_subscribed", 0
                )
            )
            result.problems += _chain_problems(account, live)
            duplicates.update({k: v for k, v in account.duplicates.items() if v})
            result.chains.append({**dataclasses.asdict(account), "max_live": live})
        doubled = [
            f"env{e} {c}" for (e, c), entry in detector.items() if int(entry["max_concurrent_subscribed"]) > 1
        ]
        if doubled:
            result.problems.append(f"two live subscriptions at once: {', '.join(doubled)}")
        result.problems += strays
        if run.unsettled:
            result.problems.append(f"the fleet did not settle: {run.unsettled}")
        pii = personal_data_hits(lines, personal)
        if pii:
            result.problems.append(f"personal data in {len(pii)} log lines")
        bad = [code for code in run.sigterm_exits if code != 0]
        if bad:
            result.problems.append(f"relay exit status after SIGTERM {bad}")
        result.problems += describe_denials(denials(moto_endpoint))
        stats = proxy.stats()
        result.injected = dict(stats["injected"])
        result.proxied = dict(stats["requests"])
    result.emitted = sum(a.emitted for a in accounts)
    result.delivered = sum(a.delivered for a in accounts)
    result.messages = len(bodies)
    result.lost = sum(a.lost for a in accounts)
    result.unexpected = sum(a.unexpected for a in accounts)
    result.held = sum(a.held for a in accounts)
    result.duplicates = dict(duplicates)
    result.notes = run.notes
    result.timings.update(run.timings)
    result.duration = time.monotonic() - started
    if result.problems:
        _dump(schedule, result, run, bodies)
    return result


def _dump(
    schedule: FleetSchedule, result: ScheduleResult, run: _FleetRun, bodies: Sequence[Mapping[str, Any]]
) -> None:
    """A failed schedule keeps its evidence: the plan, the chains, the lost ids and every log."""
    what = f"LOST {result.lost} events" if result.lost else "; ".join(result.problems)
    _say(f"  seed {schedule.seed}: {what}")
    dump = Path(f"chaos-fleet-{'lost' if result.lost else 'failed'}-seed-{schedule.seed}.log")
    by: dict[str, list[Mapping[str, Any]]] = {}
    for body in bodies:
        by.setdefault(subscription_of(body), []).append(body)
    lost = {
        s: reconcile(e, by.get(s, [])).lost[:20]
        for s, e in run.emitted.items()
        if any(c["subscription"] == s and c["lost"] for c in result.chains)
    }
    parts = [
        f"plan: {schedule.describe()}",
        f"problems: {result.problems}",
        f"notes: {result.notes}",
        f"chains: {result.chains}",
        f"lost event ids (first 20 per chain): {lost}",
        f"injected: {result.injected}",
        f"timings: {result.timings}",
    ]
    parts += [f"--- {relay.name} ---\n{relay.process.log()}" for relay in run.fleet.relays]
    parts += ["--- ticks ---", *run.tick_lines]
    dump.write_text("\n".join(parts))
    _say(f"  details in {dump}")
