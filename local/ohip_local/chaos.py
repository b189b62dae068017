"""The chaos suite (`make chaos`, `ohip-relay local chaos`): seeded, reproducible fault schedules
against the local stack, with the real consumer process and real poll ticks, and the delivery
invariants checked after each schedule.

A schedule is a list of steps drawn from `random.Random(seed)` (`generate_schedule`): emit bursts
(paced or not, in the background so that other faults land mid-stream), connection drops (1006),
closes with 4401, 4403, 4409, 4500 and 1011, token expiry (with or without a close), stalled pongs,
backpressure bursts, SQS and DynamoDB errors, throttling, slowness and ambiguous failures through
`faultproxy` (the relay's and the ticks' `AWS_ENDPOINT_URL`), kill -9 of the relay and a restart,
an overlapping second relay (a deployment: the old one gets SIGTERM), an outage covered by poll
ticks, Poll API 5xx / 429 / slow answers, and ticks that run out of time (`--time-limit`).

Some emits draw adversarial events from the gateway (`adversarial.py`: lookalikes, odd Unicode,
missing fields), some jump the offsets forward, and some seeds run a chain whose offsets start at
0 or at 19-20 digits (`Schedule.first_offset`). Those are drawn from a second generator seeded by
the seed, so the base plan of a seed (its faults and emits) is the one it had before adversarial
data existed (`generate_schedule(seed, adversarial=False)` is that plan alone). No schedule resets
the offsets backwards: the relay stops streaming on a regression and leaves the events to the poll
fallback until a human intervenes, so such a schedule would never finish delivering by stream.

Replay one schedule with `ohip-relay local chaos --seed N --schedules 1 -v`. `--jobs N` runs N
schedules at once, each in a worker process with its own moto (`motoproc`), gateway and fault proxy;
a schedule's plan depends on its seed only, so a seed replays the same whatever the jobs.

The steps take no time of their own (emits run in the background): an AWS fault stays on through
the steps after it. After the steps: the emits finish, the AWS faults run out (count or duration,
at most `FAULT_GRACE`), a relay runs until every emitted event is on the queue (with a poll tick
whenever no new event reached the queue for `TICK_EVERY`, as the scheduled Lambda would run one
every minute), SIGTERM, the reader drains the queue, then the invariants (`check_invariants`):

- nothing lost or merged, by identity (`reconcile.py`): for every content key K, the distinct
  eventIds on the queue with key K are at least the events the gateway emitted with key K
  (`lost` = 0; two lookalikes delivered as one are a loss); an emitted event on the queue by
  neither its stream offset nor its businessEventId is reported (`missing`) and counts as lost only
  when its key's count fails (else a stream copy was suppressed against a lookalike's poll copy);
  nothing the gateway never emitted is on the queue (`unexpected` = 0);
- duplicates only of documented kinds (docs/event-format.md "Duplicates a consumer can still see",
  docs/poll-fallback.md "Duplicates"), by eventId: `stream replay` (one stream eventId twice),
  `poll repeat` (one poll eventId twice: the fallback publishes when the seen-set is unavailable,
  and re-delivers spilled pages), `channel overlap` (stream and poll copies of the same events,
  beyond the events emitted with that key); a message under an eventId the gateway never emitted,
  or under another key than its event's, is `unexpected`;
- the checkpoint (sampled a few times a second, read from DynamoDB) never moved backward;
- never two gateway connections at once (sampled `live_connections` <= 1, `conflicts` == 0);
- no personal value of any emitted event (`StoredEvent.personal_values()`) in any relay or tick
  log line;
- every relay stopped with SIGTERM exited 0 (a relay is let finish its start-up, up to holding the
  lease, before the harness stops it: ECS stops tasks that run).

Deadlines are generous and the invariants hold whatever the timing: the machine may be slow.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ohip_relay.state import StateStore

from .aws import DEFAULT_REGION, POLL_ROLE, STREAM_ROLE, ProvisionedStack, local_client, provision
from .control import ControlClient
from .faultproxy import FaultProxy, FaultRule, running_fault_proxy
from .gateway import GatewayConfig, LocalGateway
from .harness import HarnessError, QueueReader, RelayProcess, wait_until
from .iam import denials, describe_denials
from .motoproc import moto_process
from .reconcile import (
    CHANNEL_OVERLAP,
    DOCUMENTED_KINDS,
    POLL_REPEAT,
    STREAM_REPLAY,
    UNDOCUMENTED,
    EmittedEvent,
    emitted_events,
    reconcile,
)
from .source import FIRST_OFFSET
from .stack import environment_for, find_template
from .threaded import call_in_gateway, running_gateway

__all__ = [
    "CHANNEL_OVERLAP",
    "DOCUMENTED_KINDS",
    "POLL_REPEAT",
    "STREAM_REPLAY",
    "UNDOCUMENTED",
    "EmittedEvent",
    "RunRecord",
    "Schedule",
    "ScheduleResult",
    "Step",
    "Verdict",
    "await_delivery",
    "check_invariants",
    "checkpoint_regressions",
    "classify_duplicates",
    "fresh_stack",
    "generate_schedule",
    "personal_data_hits",
    "run_chaos",
    "run_schedule",
    "run_tick",
    "wait_out_faults",
]

log = logging.getLogger(__name__)

# -- tunables --------------------------------------------------------------------------------------

LEASE_SECONDS = 4.0  # a restart after kill -9 waits this long for the lease
HEALTH_SECONDS = 3.0  # stale / grace / recover thresholds of the poll fallback
DELIVERY_TIMEOUT = 420.0  # after the steps: every event on the queue within this (generous: slow CI)
TICK_EVERY = 10.0  # while waiting for delivery: a poll tick after this long with no new event on the queue
SAMPLE_INTERVAL = 0.25
FAULT_GRACE = 15.0  # after the steps, AWS faults stay on at most this long (until they run out)

# Adversarial draws (a second generator, so that a seed's base plan stays what it was).
ADVERSARIAL_EMITS = ("lookalike", "unicode", "missing", "all")
ADVERSARIAL_SHARE = 0.3  # of the emit steps
OFFSET_JUMP_SHARE = 0.08  # of the emit steps: the offsets skip ahead first
OFFSET_JUMPS = (1, 1000, 10**12)
ZERO_START_SHARE = 0.12  # of the seeds: the chain's offsets start at 0
HUGE_START_SHARE = 0.12  # of the seeds: they start just below 10**19 and reach 20 digits

STEP_KINDS = (
    "emit",
    "drop",
    "close",
    "expire_tokens",
    "stall_pongs",
    "backpressure",
    "aws_fault",
    "kill_restart",
    "deploy",
    "outage",
    "poll_fault_tick",
    "short_tick",
    "pause",
)


# -- schedules (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.params:
            return self.kind
        inner = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({inner})"


@dataclass(frozen=True)
class Schedule:
    seed: int
    steps: tuple[Step, ...]
    first_offset: int | None = None  # where the chain's offsets start (None: the gateway's default)

    def emitted_by_plan(self) -> int:
        return sum(int(s.params.get("count", 0)) for s in self.steps if s.kind in ("emit", "backpressure"))

    def describe(self) -> str:
        start = [] if self.first_offset is None else [f"offsets from {self.first_offset}"]
        return "; ".join(start + [step.describe() for step in self.steps])


_WEIGHTS: dict[str, float] = {
    "drop": 3,
    "close": 4,
    "expire_tokens": 2,
    "stall_pongs": 1.5,
    "backpressure": 1.5,
    "aws_fault": 5,
    "kill_restart": 3,
    "deploy": 1,
    "outage": 1.5,
    "poll_fault_tick": 1.5,
    "short_tick": 1,
    "pause": 1.5,
}
_SHORT_EXCLUDED = {"deploy"}  # each needs a second relay start: kept out of the CI cut


def _fault_params(rng: random.Random) -> dict[str, Any]:
    service = rng.choice(("sqs", "sqs", "dynamodb", "dynamodb", "dynamodb"))
    errors = ["internal", "unavailable", "throttle", "slow"]
    if service == "sqs":
        errors += ["partial", "partial"]
    error = rng.choice(errors)
    operations: dict[str, tuple[str | None, ...]] = {
        "sqs": (None, None, "SendMessageBatch"),
        "dynamodb": (None, None, "UpdateItem", "PutItem", "GetItem", "BatchGetItem"),
    }
    params: dict[str, Any] = {
        "service": service,
        "error": error,
        "operation": rng.choice(operations[service]),
        "phase": rng.choice(("before", "after")) if error not in ("slow", "partial") else "before",
    }
    if rng.random() < 0.5:
        params["count"] = rng.randint(1, 15)
    else:
        params["duration"] = round(rng.uniform(0.5, 6.0), 2)
        params["probability"] = round(rng.uniform(0.2, 1.0), 2)
    if error == "slow":
        params["delay"] = round(rng.uniform(0.05, 1.5), 2)
    return params


def _step(kind: str, rng: random.Random, short: bool) -> Step:
    if kind == "emit":
        return Step(
            kind,
            {
                "count": rng.randint(5, 60 if short else 150),
                "rate": rng.choice((0, 50, 200, 1000)),
            },
        )
    if kind == "close":
        codes = (4401, 4401, 4500, 4500, 1011) if short else (4401, 4401, 4500, 4500, 1011, 4409, 4403)
        code = rng.choice(codes)
        params: dict[str, Any] = {"code": code}
        # 4403: the relay would wait 300 s, so kill and restart it instead; 4409: at least 10 s,
        # sometimes waited, sometimes not.
        if code == 4403 or (code == 4409 and rng.random() < 0.5):
            params["then_restart_after"] = round(rng.uniform(0.2, 3.0), 2)
        return Step(kind, params)
    if kind == "expire_tokens":
        return Step(kind, {"close": rng.random() < 0.7})
    if kind == "stall_pongs":
        return Step(kind, {"seconds": round(rng.uniform(0.5, 6.0), 2)})
    if kind == "backpressure":
        return Step(kind, {"count": rng.randint(20, 80 if short else 250)})
    if kind == "aws_fault":
        return Step(kind, _fault_params(rng))
    if kind == "kill_restart":
        return Step(kind, {"delay": round(rng.uniform(0.0, 2.0), 2)})
    if kind == "deploy":
        return Step(kind, {"overlap": round(rng.uniform(0.5, 5.0), 2)})
    if kind == "outage":
        fault = rng.choice((None, None, "5xx", "429", "slow"))
        outage: dict[str, Any] = {"ticks": rng.randint(1, 2), "poll_fault": fault}
        if rng.random() < 0.4:
            outage["aws_fault"] = _fault_params(rng)
        return Step(kind, outage)
    if kind == "poll_fault_tick":
        mode = rng.choice(("5xx", "429", "slow"))
        pf: dict[str, Any] = {"mode": mode, "count": rng.randint(1, 3)}
        if mode == "slow":
            pf["delay"] = round(rng.uniform(0.5, 3.0), 2)
        return Step(kind, pf)
    if kind == "short_tick":
        return Step(kind, {"time_limit": round(rng.uniform(0.3, 3.0), 2)})
    if kind == "pause":
        return Step(kind, {"seconds": round(rng.uniform(0.1, 3.0), 2)})
    if kind == "drop":
        return Step(kind)
    raise ValueError(f"unknown step kind {kind!r}")


def generate_schedule(seed: int, *, short: bool = False, adversarial: bool = True) -> Schedule:
    """The schedule of `seed`: the same steps for the same seed, on any machine.

    Faults and emits alternate (an emit at least every other step, so every fault has traffic
    around it); `short` (CI) draws fewer steps, smaller bursts, and no 4403/4409 or deployment.
    `adversarial` (default) adds, from a second generator, adversarial emits, offset jumps and an
    unusual first offset for some seeds; without it the plan is the seed's base plan alone.
    """
    rng = random.Random(seed)
    kinds = [k for k in _WEIGHTS if not (short and k in _SHORT_EXCLUDED)]
    weights = [_WEIGHTS[k] for k in kinds]
    faults = rng.randint(2, 3) if short else rng.randint(3, 8)
    steps: list[Step] = [_step("emit", rng, short)]
    for _ in range(faults):
        steps.append(_step(rng.choices(kinds, weights)[0], rng, short))
        if rng.random() < 0.7:
            steps.append(_step("emit", rng, short))
    if steps[-1].kind != "emit":
        steps.append(_step("emit", rng, short))
    if not adversarial:
        return Schedule(seed, tuple(steps))
    return _with_adversarial_data(Schedule(seed, tuple(steps)))


def _with_adversarial_data(schedule: Schedule) -> Schedule:
    """`schedule` with adversarial emits, forward offset jumps and maybe an unusual first offset,
    drawn from a generator of their own (the base plan is left as it is). Never an offset reset."""
    rng = random.Random(f"ohip-chaos-adversarial-{schedule.seed}")
    roll = rng.random()
    first_offset: int | None = None
    if roll < ZERO_START_SHARE:
        first_offset = 0
    elif roll < ZERO_START_SHARE + HUGE_START_SHARE:
        first_offset = 10**19 - rng.randint(5, 400)  # 19 digits, then 20 within the schedule
    steps: list[Step] = []
    for step in schedule.steps:
        if step.kind == "emit":
            params = dict(step.params)
            if rng.random() < ADVERSARIAL_SHARE:
                params["adversarial"] = rng.choice(ADVERSARIAL_EMITS)
            if rng.random() < OFFSET_JUMP_SHARE:
                params["offset_jump"] = rng.choice(OFFSET_JUMPS)
            step = Step(step.kind, params)
        steps.append(step)
    return Schedule(schedule.seed, tuple(steps), first_offset)


# -- invariants (pure) ----------------------------------------------------------------------------


def classify_duplicates(bodies: Iterable[Mapping[str, Any]], emitted: Sequence[EmittedEvent]) -> Counter[str]:
    """Extra copies on the queue, by kind, by identity (see `reconcile.py`): `stream replay`,
    `poll repeat`, `channel overlap`. (Copies the gateway never emitted are `unexpected`.)"""
    return reconcile(emitted, list(bodies)).duplicates


def checkpoint_regressions(samples: Sequence[int | None]) -> list[tuple[int, int]]:
    """(before, after) pairs where a later sample is lower than an earlier one."""
    out: list[tuple[int, int]] = []
    highest: int | None = None
    for value in samples:
        if value is None:
            continue
        if highest is not None and value < highest:
            out.append((highest, value))
        highest = value if highest is None else max(highest, value)
    return out


def _plain(ch: str) -> bool:
    """A character a log line shows as itself: printable ASCII."""
    return " " <= ch <= "~"


def _needles(value: str) -> list[str]:
    """What to look for in a log for one personal value: the value itself when it is readable
    (no control, format, surrogate, private-use or unassigned/noncharacter code point) and has a
    letter or digit; and, when it has anything but printable ASCII, its printable ASCII runs of
    three letters or digits or more (a log may escape, replace or drop the rest: a fictional name
    next to an emoji or a lone surrogate still shows)."""
    out: list[str] = []
    readable = all(unicodedata.category(ch)[0] != "C" for ch in value)
    if readable and value.strip() and any(ch.isalnum() for ch in value):
        out.append(value)
    if not all(_plain(ch) for ch in value):
        run: list[str] = []
        for ch in [*value, "\0"]:
            if _plain(ch):
                run.append(ch)
                continue
            fragment = "".join(run).strip()
            run = []
            if sum(c.isalnum() for c in fragment) >= 3:
                out.append(fragment)
    return out


def personal_data_hits(lines: Iterable[str], values: Iterable[str]) -> list[str]:
    """Log lines that contain a personal value as a whole word (case-sensitive). Values with odd
    characters (control characters, lone surrogates, emoji...) are looked for by their readable
    parts too (`_needles`)."""
    wanted = sorted({n for v in values if v for n in _needles(v)}, key=len, reverse=True)
    if not wanted:
        return []
    pattern = re.compile(r"(?<![\w@.+-])(?:" + "|".join(re.escape(v) for v in wanted) + r")(?![\w@-])")
    return [line for line in lines if pattern.search(line)]


@dataclass
class Verdict:
    emitted: int
    messages: int
    delivered: int  # distinct emitted events accounted for on the queue
    lost: list[str]  # eventIds (stream form) of the events counted lost
    unexpected: list[str]
    duplicates: Counter[str]
    regressions: list[tuple[int, int]]
    max_live_connections: int
    conflicts: int
    pii_lines: list[str]
    bad_exits: list[int]
    missing: list[str] = field(default_factory=list)  # on the queue by neither identity (lost or covered)

    @property
    def duplicate_total(self) -> int:
        return sum(self.duplicates.values())

    @property
    def covered(self) -> list[str]:
        """Missing by identity but not lost: stream copies suppressed against a lookalike's poll copy."""
        lost = set(self.lost)
        return [event_id for event_id in self.missing if event_id not in lost]

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} lost")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected")
        if self.duplicates.get(UNDOCUMENTED):
            out.append(f"{self.duplicates[UNDOCUMENTED]} undocumented duplicates")
        if self.regressions:
            out.append(f"checkpoint moved backward {self.regressions[:3]}")
        if self.max_live_connections > 1:
            out.append(f"{self.max_live_connections} gateway connections at once")
        if self.conflicts:
            out.append(f"{self.conflicts} gateway conflicts (4409 for a second subscriber)")
        if self.pii_lines:
            out.append(f"personal data in {len(self.pii_lines)} log lines")
        if self.bad_exits:
            out.append(f"relay exit status after SIGTERM {self.bad_exits}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()


def check_invariants(
    *,
    emitted: Sequence[EmittedEvent],
    bodies: Sequence[Mapping[str, Any]],
    checkpoints: Sequence[int | None],
    live_connections: Sequence[int],
    conflicts: int,
    personal_values: Iterable[str],
    log_lines: Iterable[str],
    sigterm_exits: Sequence[int] = (),
) -> Verdict:
    """Every invariant of a finished schedule. `emitted`: every event the gateway emitted (its
    identity and content key); `bodies`: every message read from the queue, in order."""
    accounts = reconcile(emitted, bodies)
    return Verdict(
        emitted=accounts.emitted,
        messages=accounts.messages,
        delivered=accounts.delivered,
        lost=accounts.lost,
        unexpected=accounts.unexpected,
        duplicates=accounts.duplicates,
        regressions=checkpoint_regressions(checkpoints),
        max_live_connections=max(live_connections, default=0),
        conflicts=conflicts,
        pii_lines=personal_data_hits(log_lines, personal_values),
        bad_exits=[code for code in sigterm_exits if code != 0],
        missing=accounts.missing,
    )


# -- results ---------------------------------------------------------------------------------------


@dataclass
class ScheduleResult:
    seed: int
    steps: int
    plan: str
    emitted: int = 0
    messages: int = 0
    delivered: int = 0
    lost: int = 0
    unexpected: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    proxied: dict[str, int] = field(default_factory=dict)  # requests passed through, not faulted
    close_codes: dict[str, int] = field(default_factory=dict)
    lost_keys: list[str] = field(default_factory=list)  # eventIds of lost events (the first 20)
    covered: int = 0  # missing by identity, suppressed against a lookalike's poll copy: no loss
    duration: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase (see _Run.phase)
    # Fleet schedules (fleet_chaos.py): one row per subscription (fleet_demo.ChainAccount, with its
    # environment's connection detector), and the events of disabled chains held by OHIP.
    chains: list[dict[str, Any]] = field(default_factory=list)
    held: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def row(self) -> str:
        dups = sum(self.duplicates.values())
        status = "ok" if self.ok else "FAIL: " + "; ".join(self.problems)
        if self.held:  # fleet: events of disabled chains that OHIP keeps (neither delivered nor lost)
            status += f" ({self.held} held)"
        return (
            f"{self.seed:>6} {self.steps:>5} {self.emitted:>7} {self.delivered:>9} {dups:>5} "
            f"{self.lost:>4} {self.duration:>7.1f}s  {status}"
        )


TABLE_HEADER = (
    f"{'seed':>6} {'steps':>5} {'emitted':>7} {'delivered':>9} {'dups':>5} {'lost':>4} {'time':>8}  verdict"
)


def summarise(results: Sequence[ScheduleResult], wall: float) -> list[str]:
    kinds: Counter[str] = Counter()
    for r in results:
        kinds.update(r.duplicates)
    failed = [r for r in results if not r.ok]
    seeds = sorted(r.seed for r in results)
    lines = [
        f"schedules {len(results)} (seeds {seeds[0]}-{seeds[-1]})" if seeds else "schedules 0",
        f"  events emitted {sum(r.emitted for r in results)}, "
        f"messages read {sum(r.messages for r in results)}",
        f"  lost {sum(r.lost for r in results)}, unexpected {sum(r.unexpected for r in results)}"
        f" (missing by identity but covered by a lookalike's poll copy: {sum(r.covered for r in results)})",
        "  duplicates " + (", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) if kinds else "none"),
        *(
            [
                f"  chains {sum(len(r.chains) for r in results)}; held (disabled, after their final "
                f"checkpoint) {sum(r.held for r in results)}; most live subscriptions of one chain "
                f"{max((int(c.get('max_live', 0)) for r in results for c in r.chains), default=0)}"
            ]
            if any(r.chains for r in results)
            else []
        ),
        f"  failed schedules {len(failed)}"
        + (f" (seeds {', '.join(str(r.seed) for r in failed)})" if failed else ""),
        f"  took {wall:.0f}s ({wall / max(1, len(results)):.1f}s per schedule)",
    ]
    return lines


# -- the runner ------------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, flush=True)


def _dynamodb(endpoint: str, region: str) -> Any:
    return local_client("dynamodb", endpoint, region)


def _sqs(endpoint: str, region: str) -> Any:
    return local_client("sqs", endpoint, region)


class _Sampler:
    """Samples the stored checkpoint and the gateway's live connections while a schedule runs."""

    def __init__(self, state: StateStore, control: ControlClient) -> None:
        self.state = state
        self.control = control
        self.checkpoints: list[int | None] = []
        self.live: list[int] = []
        self.conflicts = 0
        self.close_codes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-sampler")

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.sample()

    def sample(self) -> None:
        try:
            checkpoint = self.state.get_checkpoint()
            self.checkpoints.append(checkpoint.offset if checkpoint else None)
        except Exception as exc:  # a sample is best effort
            log.debug("checkpoint sample failed: %s", exc)
        try:
            streaming = self.control.state()["streaming"]
            self.live.append(int(streaming["live_connections"]))
            self.conflicts = int(streaming["conflicts"])
            self.close_codes = dict(streaming.get("close_codes", {}))
        except Exception as exc:
            log.debug("gateway sample failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.sample()


def run_tick(
    env: Mapping[str, str], cwd: Path, time_limit: float = 30.0, *, drop: Iterable[str] = ()
) -> tuple[int, list[str], str]:
    """`ohip-relay poll` as the scheduled Lambda runs it, a child process with `env` over ours
    (less the variables in `drop`): (exit status, its output lines, its last line)."""
    full = {**os.environ, **env}
    for name in drop:
        full.pop(name, None)
    tick = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "ohip_relay.cli", "poll", "--time-limit", f"{time_limit:g}"],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=max(120.0, time_limit * 4),
        check=False,
    )
    summary = (tick.stdout.strip() or tick.stderr.strip() or "(no output)").splitlines()[-1]
    return tick.returncode, tick.stdout.splitlines() + tick.stderr.splitlines(), summary


def wait_out_faults(proxy: FaultProxy, done: Callable[[], bool], keep_alive: Callable[[], object]) -> float:
    """After the steps: let the AWS faults run out (their count or duration) for at most
    `FAULT_GRACE`, or until `done()`; then clear them. Returns the seconds waited."""
    started = time.monotonic()
    while proxy.active() and time.monotonic() < started + FAULT_GRACE:
        keep_alive()
        if done():
            break
        time.sleep(0.2)
    proxy.clear()
    return time.monotonic() - started


def await_delivery(
    on_queue: Callable[[], int],
    wanted: int,
    *,
    tick: Callable[[], object],
    keep_alive: Callable[[], object],
    say: Callable[[str], None],
) -> bool:
    """Until `on_queue()` reaches `wanted` (False after `DELIVERY_TIMEOUT`): `keep_alive()` between
    looks, and `tick()` whenever no new event reached the queue for `TICK_EVERY`, as the scheduled
    Lambda would run one (it re-delivers spilled pages and covers a stream that is down)."""
    started = time.monotonic()
    count = on_queue()
    moved = started  # when the last new event reached the queue, or the last tick ended
    next_report = started + 5
    while count < wanted:
        now = time.monotonic()
        if now > started + DELIVERY_TIMEOUT:
            return False
        keep_alive()
        if now - moved > TICK_EVERY:
            tick()
            moved = time.monotonic()
        if now > next_report:
            say(f"delivery: {count} of {wanted} on the queue")
            next_report = now + 5
        time.sleep(0.2)
        arrived = on_queue()
        if arrived > count:
            count, moved = arrived, time.monotonic()
    return True


class RunRecord:
    """What the run of a schedule has (its gateway, stack, fault proxy and the gateway's control
    client) and keeps besides its verdict: notes, where its time went (`phase`), its ticks' log
    lines and its relays' exit statuses after SIGTERM; `say` prints a line about it with -v.
    (The single chain's `_Run` and the fleet's `fleet_chaos._FleetRun`.)"""

    def __init__(
        self, seed: int, *, gateway: LocalGateway, stack: ProvisionedStack, proxy: FaultProxy, verbose: bool
    ) -> None:
        self.seed = seed
        self.gateway = gateway
        self.stack = stack
        self.proxy = proxy
        self.verbose = verbose
        self.control = ControlClient(gateway.control_url, timeout=120)
        self.tick_lines: list[str] = []
        self.sigterm_exits: list[int] = []
        self.notes: list[str] = []
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to `timings[name]` (where a schedule's time goes)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - started, 3)

    def say(self, text: str) -> None:
        if self.verbose:
            _say(f"  [{self.seed}] {text}")

    def run_step(self, step: Step) -> None:
        """One step, timed under its kind (said with -v)."""
        with self.phase(f"step {step.kind}"):
            self.say(step.describe())
            self._run_step(step)

    def _run_step(self, step: Step) -> None:
        raise NotImplementedError


class _Run(RunRecord):
    """One schedule on a fresh gateway, a freshly provisioned table and queue, and a fault proxy."""

    def __init__(
        self,
        schedule: Schedule,
        *,
        gateway: LocalGateway,
        config: GatewayConfig,
        stack: ProvisionedStack,
        proxy: FaultProxy,
        verbose: bool,
    ) -> None:
        super().__init__(schedule.seed, gateway=gateway, stack=stack, proxy=proxy, verbose=verbose)
        self.schedule = schedule
        self.config = config
        self.chain = config.chains[0]
        self.cwd = Path(os.getcwd())
        self.env = {  # the stream's (StreamTaskRole); a tick adds the poll role's credentials
            **environment_for(stack, role=STREAM_ROLE),
            "AWS_ENDPOINT_URL": proxy.url,  # the relay and the ticks go through the fault proxy
            "OHIP_GATEWAY_URL": gateway.url,
            "OHIP_CLIENT_ID": config.client_id,
            "OHIP_CLIENT_SECRET": config.client_secret,
            "OHIP_APP_KEY": config.app_key,
            "OHIP_ENTERPRISE_ID": config.enterprise_id,
            "OHIP_CHAIN_CODE": self.chain,
            "OHIP_EXTERNAL_SYSTEM": config.external_systems[0],
            "RELAY_START_POSITION": "earliest",
            "RELAY_LEASE_SECONDS": f"{LEASE_SECONDS:g}",
            "RELAY_HEARTBEAT_SECONDS": f"{HEALTH_SECONDS / 3:g}",  # well inside the stale threshold
            "RELAY_HEALTH_STALE_SECONDS": f"{HEALTH_SECONDS:g}",
            "RELAY_HEALTH_GRACE_SECONDS": f"{HEALTH_SECONDS:g}",
            "RELAY_HEALTH_RECOVER_SECONDS": f"{HEALTH_SECONDS:g}",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        }
        self.state = StateStore(_dynamodb(stack.endpoint_url, stack.region), stack.table_name, self.chain)
        self.sqs = _sqs(stack.endpoint_url, stack.region)  # moto itself, not the fault proxy
        self.relays: list[RelayProcess] = []
        self.relay: RelayProcess | None = None

    # -- helpers -----------------------------------------------------------------------------

    def start_relay(self) -> RelayProcess:
        echo = (lambda line: _say(f"      relay | {line}")) if self.verbose else None
        relay = RelayProcess(["stream"], self.env, echo=echo, cwd=self.cwd).start()
        self.relays.append(relay)
        return relay

    def ensure_relay(self) -> RelayProcess:
        """The current relay, restarted if it exited on its own (noted: it should not)."""
        if self.relay is None or self.relay.returncode is not None:
            if self.relay is not None:
                code = self.relay.wait(10)
                self.notes.append(f"relay exited on its own with {code}")
                self.say(f"relay exited on its own with {code}; restarting")
            self.relay = self.start_relay()
        return self.relay

    def kill(self) -> None:
        if self.relay is not None and self.relay.returncode is None:
            self.relay.kill()

    def await_running(self, relay: RelayProcess, timeout: float = 180.0) -> None:
        """Until `relay` holds the lease (it is past its start-up, its SIGTERM handler installed)
        or has exited; an exit here is a harness error with the relay's last log lines."""
        with self.phase("await lease"):
            wait_until(
                lambda: relay.saw("lease acquired") or relay.returncode is not None,
                timeout=timeout,
                interval=0.1,
                what="the relay to acquire the lease",
            )
        if relay.returncode is not None and not relay.saw("lease acquired"):
            tail = " | ".join(relay.lines[-5:])
            raise HarnessError(f"the relay exited with {relay.returncode} while starting: {tail}")

    def sigterm(self, relay: RelayProcess, timeout: float = 120.0) -> None:
        """The clean stop of a running task. A relay still starting up is first let start, as ECS
        stops a task that has been running: a SIGTERM before Python installed the handler would
        only end a process that has not read anything yet."""
        if relay.returncode is not None:
            return
        try:
            self.await_running(relay)
        except HarnessError as exc:
            self.notes.append(str(exc))
        if relay.returncode is not None:
            return
        try:
            with self.phase("sigterm"):
                self.sigterm_exits.append(relay.terminate(timeout=timeout))
        except subprocess.TimeoutExpired:
            self.notes.append(f"relay did not stop within {timeout:g}s of SIGTERM; killed")
            self.sigterm_exits.append(-9)
            relay.kill()

    def tick(self, time_limit: float = 30.0) -> str:
        with self.phase("ticks"):
            return self._tick(time_limit)

    def _tick(self, time_limit: float) -> str:
        env = {**self.env, **self.stack.credentials(POLL_ROLE).environment()}
        code, lines, summary = run_tick(env, self.cwd, time_limit)
        self.tick_lines += lines
        self.say(f"tick (limit {time_limit:g}s, exit {code}): {summary}")
        return summary

    def events(self) -> list[Any]:
        return call_in_gateway(self.gateway, lambda: self.gateway.source.all_events(self.chain), timeout=60)

    def heartbeat_age(self) -> float:
        heartbeat = self.state.get_heartbeat()
        return float("inf") if heartbeat is None else heartbeat.age(time.time())

    # -- steps -------------------------------------------------------------------------------

    def _run_step(self, step: Step) -> None:
        p = step.params
        if step.kind == "emit":
            if "offset_jump" in p:
                self.control.offset_jump(skip=int(p["offset_jump"]))
            self.control.emit(
                int(p["count"]), rate=float(p["rate"]), wait=False, adversarial=p.get("adversarial")
            )
        elif step.kind == "drop":
            self.control.drop()
        elif step.kind == "close":
            self.control.close(int(p["code"]), "chaos")
            if "then_restart_after" in p:
                time.sleep(float(p["then_restart_after"]))
                self.kill()
                self.relay = self.start_relay()
        elif step.kind == "expire_tokens":
            self.control.expire_tokens(close_connections=bool(p["close"]))
        elif step.kind == "stall_pongs":
            self.control.stall_pongs(True)
            try:
                time.sleep(float(p["seconds"]))
            finally:
                self.control.stall_pongs(False)
        elif step.kind == "backpressure":
            self.control.backpressure(int(p["count"]))
            self.control.emit(int(p["count"]), rate=0, wait=False)
        elif step.kind == "aws_fault":
            self.proxy.add(FaultRule(**p))
        elif step.kind == "kill_restart":
            self.kill()
            time.sleep(float(p["delay"]))
            self.relay = self.start_relay()
        elif step.kind == "deploy":
            old = self.ensure_relay()
            self.await_running(old)  # the old task was running when the deployment began
            self.relay = self.start_relay()
            time.sleep(float(p["overlap"]))
            self.sigterm(old)
        elif step.kind == "outage":
            self.kill()
            if p.get("aws_fault"):
                self.proxy.add(FaultRule(**p["aws_fault"]))
            if p.get("poll_fault"):
                mode = p["poll_fault"]
                extra: dict[str, Any] = {"delay": 1.0} if mode == "slow" else {"count": 1}
                self.control.poll_fault(mode, **extra)
            try:
                wait_until(
                    lambda: self.heartbeat_age() > HEALTH_SECONDS + 0.5,
                    timeout=120,
                    interval=0.2,
                    what="the heartbeat to go stale",
                )
            except HarnessError as exc:
                self.notes.append(str(exc))
            for _ in range(int(p["ticks"])):
                self.tick()
            self.control.poll_fault("off")
            self.relay = self.start_relay()
        elif step.kind == "poll_fault_tick":
            extra = {k: p[k] for k in ("count", "delay") if k in p}
            self.control.poll_fault(p["mode"], **extra)
            self.tick()
            self.control.poll_fault("off")
        elif step.kind == "short_tick":
            self.tick(float(p["time_limit"]))
        elif step.kind == "pause":
            time.sleep(float(p["seconds"]))
        else:  # pragma: no cover - generate_schedule only draws known kinds
            raise ValueError(step.kind)

    # -- the whole schedule ------------------------------------------------------------------

    def run(self, reader: QueueReader, sampler: _Sampler) -> None:
        self.relay = self.start_relay()
        self.await_running(self.relay)
        for step in self.schedule.steps:
            if step.kind not in ("kill_restart", "outage", "deploy"):
                self.ensure_relay()
            self.run_step(step)
        self.settle(reader)

    def settle(self, reader: QueueReader) -> None:
        """The emits finished and the AWS faults run out, then every event awaited on the queue with
        a relay up, SIGTERM, and the queue drained."""
        self.control.poll_fault("off")
        self.control.stall_pongs(False)
        with self.phase("settle emits"):
            wait_until(
                lambda: self.control.state()["background_emits"] == 0, timeout=300, interval=0.2, what="emits"
            )
        emitted = self.emitted_events()

        def on_queue() -> int:
            return reconcile(emitted, reader.snapshot().bodies).delivered

        # An AWS fault stays on through the steps after it (the steps themselves take no time, the
        # emits run in the background): until its count or duration runs out, every event is on
        # the queue, or FAULT_GRACE passes.
        waited = wait_out_faults(self.proxy, lambda: on_queue() >= len(emitted), self.ensure_relay)
        self.timings["settle grace"] = round(waited, 3)
        self.ensure_relay()
        delivery_started = time.monotonic()
        if not await_delivery(
            on_queue, len(emitted), tick=self.tick, keep_alive=self.ensure_relay, say=self.say
        ):
            self.notes.append(f"not every event on the queue after {DELIVERY_TIMEOUT:g}s")
        self.timings["settle delivery"] = round(time.monotonic() - delivery_started, 3)
        assert self.relay is not None
        self.sigterm(self.relay)
        # Every writer has stopped: what the SIGTERM flushed is on the queue. The reader appends a
        # message before it deletes it, so an empty queue (nothing visible, in flight or delayed)
        # means the reader holds every message.
        try:
            with self.phase("settle drain"):
                wait_until(self.queue_empty, timeout=120, interval=0.2, what="the reader to drain the queue")
        except HarnessError as exc:
            self.notes.append(str(exc))

    def queue_empty(self) -> bool:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.stack.queue_url, AttributeNames=names)
        return all(int(attributes["Attributes"].get(name, "0")) == 0 for name in names)

    def emitted_events(self) -> list[EmittedEvent]:
        """Every event the gateway emitted, with its identity and content key."""
        return emitted_events(self.events())

    def cleanup(self) -> None:
        for relay in self.relays:
            if relay.returncode is None:
                relay.kill()


def _reset_moto(endpoint: str) -> None:
    httpx.post(f"{endpoint}/moto-api/reset", timeout=60).raise_for_status()


def fresh_stack(
    moto_endpoint: str, template: Path, stack_name: str, timings: dict[str, float]
) -> ProvisionedStack:
    """A clean local stack for one schedule: moto reset, the template provisioned again (the
    seconds each took in `timings`)."""
    mark = time.monotonic()
    _reset_moto(moto_endpoint)
    timings["moto reset"] = round(time.monotonic() - mark, 3)
    mark = time.monotonic()
    stack = provision(moto_endpoint, template, stack_name=stack_name, region=DEFAULT_REGION)
    timings["provision"] = round(time.monotonic() - mark, 3)
    return stack


def run_schedule(
    schedule: Schedule, *, moto_endpoint: str, template: Path, verbose: bool = False
) -> ScheduleResult:
    """Run one schedule on a clean local stack (moto reset and provisioned again) and check it."""
    started = time.monotonic()
    result = ScheduleResult(seed=schedule.seed, steps=len(schedule.steps), plan=schedule.describe())
    stack = fresh_stack(moto_endpoint, template, "ohip-relay-chaos", result.timings)
    first_offset = FIRST_OFFSET if schedule.first_offset is None else schedule.first_offset
    config = GatewayConfig(seed=schedule.seed, first_offset=first_offset)
    mark = time.monotonic()
    with running_gateway(config) as gateway, running_fault_proxy(moto_endpoint, seed=schedule.seed) as proxy:
        result.timings["gateway+proxy start"] = round(time.monotonic() - mark, 3)
        run = _Run(schedule, gateway=gateway, config=config, stack=stack, proxy=proxy, verbose=verbose)
        reader = QueueReader(stack.queue_url, endpoint_url=moto_endpoint, region=stack.region)
        sampler = _Sampler(run.state, run.control)
        try:
            with reader, sampler:
                try:
                    mark = time.monotonic()
                    run.run(reader, sampler)
                    run.timings["run total"] = round(time.monotonic() - mark, 3)
                except (HarnessError, subprocess.TimeoutExpired) as exc:
                    run.notes.append(f"harness: {exc}")
                    result.problems.append(f"harness: {exc}")
                finally:
                    run.cleanup()
            emitted = run.emitted_events()
            personal: set[str] = set()
            for event in run.events():
                personal |= event.personal_values()
        finally:
            run.cleanup()
        lines = [line for relay in run.relays for line in relay.lines] + run.tick_lines
        verdict = check_invariants(
            emitted=emitted,
            bodies=reader.snapshot().bodies,
            checkpoints=sampler.checkpoints,
            live_connections=sampler.live,
            conflicts=sampler.conflicts,
            personal_values=personal,
            log_lines=lines,
            sigterm_exits=run.sigterm_exits,
        )
        result.injected = dict(proxy.stats()["injected"])
        result.proxied = dict(proxy.stats()["requests"])
    result.emitted = verdict.emitted
    result.messages = verdict.messages
    result.delivered = verdict.delivered
    result.lost = len(verdict.lost)
    result.lost_keys = verdict.lost[:20]
    result.covered = len(verdict.covered)
    result.unexpected = len(verdict.unexpected)
    result.duplicates = dict(verdict.duplicates)
    result.problems += verdict.problems()
    # Every component ran under its template role: a denial is a missing permission (or a call the
    # component should not make), whatever the component did with the error.
    result.problems += describe_denials(denials(moto_endpoint))
    result.notes = run.notes
    result.close_codes = sampler.close_codes
    result.duration = time.monotonic() - started
    result.timings.update(run.timings)
    if verdict.lost or result.problems:
        # Any failed schedule keeps its logs: a timing-dependent one may not fail again on replay.
        what = f"LOST {len(verdict.lost)} events" if verdict.lost else "; ".join(result.problems)
        _say(f"  seed {schedule.seed}: {what}")
        dump = Path(f"chaos-{'lost' if verdict.lost else 'failed'}-seed-{schedule.seed}.log")
        dump.write_text(
            "\n".join(
                [f"plan: {schedule.describe()}", f"problems: {result.problems}", f"notes: {run.notes}"]
                + [f"lost events: {verdict.lost}", f"missing by identity: {verdict.missing}"]
                + [
                    f"unexpected: {verdict.unexpected}",
                    f"injected: {result.injected}",
                    f"timings: {run.timings}",
                ]
                + [f"--- relay {i} ---\n" + relay.log() for i, relay in enumerate(run.relays)]
                + ["--- ticks ---"]
                + run.tick_lines
            )
        )
        _say(f"  details in {dump}")
    return result


def run_chaos(
    *,
    schedules: int = 1,
    seed: int = 1,
    short: bool = False,
    verbose: bool = False,
    out: Path | None = None,
    on_result: Callable[[ScheduleResult], None] | None = None,
    minutes: float | None = None,
    jobs: int = 1,
    seeds: Sequence[int] | None = None,
    fleet: bool = False,
) -> list[ScheduleResult]:
    """Run schedules `seed` .. `seed + schedules - 1` (or exactly `seeds`, when given: the failed
    seeds of an earlier run, say); print a row per schedule and a summary.
    `fleet`: the fleet's schedules (fleet_chaos.py) instead of the single chain's.
    `minutes`: start no schedule after this much wall time (the summary says how many ran).
    `jobs`: how many schedules run at once, each job in a worker process with its own moto,
    gateway and fault proxy (rows are printed as schedules finish; the result list is in seed
    order)."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    chosen = list(seeds) if seeds is not None else list(range(seed, seed + schedules))
    noisy = ["werkzeug", "botocore", "urllib3", "aiohttp", "httpx", "httpcore", "moto", "asyncio"]
    quieted = {name: logging.getLogger(name).level for name in noisy + ([] if verbose else ["ohip_local"])}
    for name in quieted:
        logging.getLogger(name).setLevel(logging.WARNING)
    # SIGTERM (`kill`, a CI timeout) unwinds like Ctrl-C, so that no relay process outlives the run.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _run_chaos(
            seeds=chosen,
            short=short,
            verbose=verbose,
            out=out,
            on_result=on_result,
            minutes=minutes,
            jobs=max(1, min(jobs, len(chosen))),
            fleet=fleet,
        )
    finally:
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _seed_range(seeds: Sequence[int]) -> str:
    if seeds and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"from seed {seeds[0]}"
    return f"seeds {', '.join(str(n) for n in seeds)}"


def _plan(n: int, *, short: bool, fleet: bool) -> tuple[int, str]:
    """(steps, description) of schedule `n`."""
    if fleet:
        from .fleet_chaos import generate_fleet_schedule

        plan = generate_fleet_schedule(n, short=short)
        return len(plan.steps), plan.describe()
    schedule = generate_schedule(n, short=short)
    return len(schedule.steps), schedule.describe()


def _run_one(
    n: int, *, short: bool, verbose: bool, endpoint: str, template: Path, fleet: bool = False
) -> ScheduleResult:
    """Schedule `n`, run and checked; a harness failure (its relays killed) is a failed result."""
    steps, plan = _plan(n, short=short, fleet=fleet)
    if verbose:
        _say(f"  [{n}] plan: {plan}")
    try:
        if fleet:
            from .fleet_chaos import generate_fleet_schedule, run_fleet_schedule

            return run_fleet_schedule(
                generate_fleet_schedule(n, short=short),
                moto_endpoint=endpoint,
                template=template,
                verbose=verbose,
            )
        return run_schedule(
            generate_schedule(n, short=short), moto_endpoint=endpoint, template=template, verbose=verbose
        )
    except Exception as exc:
        log.exception("schedule %s: the harness failed", n)
        result = ScheduleResult(seed=n, steps=steps, plan=plan)
        result.problems.append(f"harness: {type(exc).__name__}: {exc}")
        return result


def _run_chaos(
    *,
    seeds: Sequence[int],
    short: bool,
    verbose: bool,
    out: Path | None,
    on_result: Callable[[ScheduleResult], None] | None,
    minutes: float | None,
    jobs: int,
    fleet: bool = False,
) -> list[ScheduleResult]:
    template = find_template()
    started = time.monotonic()
    results: list[ScheduleResult] = []
    jobs_note = f", {jobs} at a time" if jobs > 1 else ""
    kind = (" fleet" if fleet else "") + (" (short)" if short else "")
    flags = (" --fleet" if fleet else "") + (" --short" if short else "")
    _say(f"ohip-relay chaos: {len(seeds)}{kind} schedule(s) {_seed_range(seeds)}{jobs_note}")
    _say(f"  replay one: ohip-relay local chaos{flags} --seed N --schedules 1 -v")
    _say(TABLE_HEADER)

    def record(result: ScheduleResult) -> None:
        results.append(result)
        _say(result.row())
        if verbose and result.notes:
            _say(f"         notes: {'; '.join(result.notes)}")
        if verbose and result.timings:
            _say("         timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
        if out is not None:
            with out.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({**asdict(result), "short": short, "fleet": fleet}) + "\n")
        if on_result is not None:
            on_result(result)

    def budget_left(n: int) -> bool:
        if minutes is not None and time.monotonic() - started > minutes * 60:
            _say(f"  time budget of {minutes:g} min used: stopping before seed {n}")
            return False
        return True

    try:
        if jobs == 1:
            with moto_process() as endpoint:
                for n in seeds:
                    if not budget_left(n):
                        break
                    record(
                        _run_one(
                            n, short=short, verbose=verbose, endpoint=endpoint, template=template, fleet=fleet
                        )
                    )
        else:
            _run_parallel(
                seeds,
                jobs=jobs,
                short=short,
                verbose=verbose,
                record=record,
                budget_left=budget_left,
                fleet=fleet,
            )
    except KeyboardInterrupt:
        # Ctrl-C, or SIGTERM from a CI timeout: what finished is still worth its summary.
        _say(f"  interrupted: the summary below covers the {len(results)} schedule(s) that finished")
        _summary(results, started)
        raise
    _summary(results, started)
    return results


def _summary(results: list[ScheduleResult], started: float) -> None:
    results.sort(key=lambda r: r.seed)
    for line in summarise(results, time.monotonic() - started):
        _say(line)


# -- parallel jobs ---------------------------------------------------------------------------------
#
# Each job is a worker process (`python -m ohip_local.chaos --worker`) with its own moto process,
# gateway, fault proxy, queue reader and relays. The parent hands out seeds one at a time on the
# worker's stdin (so that the time budget is checked before every schedule and a slow schedule
# does not hold up the others); the worker answers with one result line per seed. Each worker is
# the leader of its own process group: on Ctrl-C or SIGTERM the parent kills every group, the
# relays, ticks and moto processes in them included.

_RESULT_MARK = "@@chaos-result "
_WORKER_RESTARTS = 3  # workers that died mid-schedule are replaced this many times in all


class _Worker:
    def __init__(
        self,
        number: int,
        *,
        short: bool,
        verbose: bool,
        events: queue.Queue[tuple[_Worker, str | None]],
        fleet: bool = False,
    ) -> None:
        self.number = number
        self.seed: int | None = None
        self.finished = False
        command = [sys.executable, "-m", "ohip_local.chaos", "--worker"]
        command += ["--short"] if short else []
        command += ["--fleet"] if fleet else []
        command += ["-v"] if verbose else []
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: killed as a whole
        )
        self._events = events
        threading.Thread(target=self._read, daemon=True, name=f"chaos-worker-{number}").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._events.put((self, line.rstrip("\n")))
        self._events.put((self, None))

    def give(self, seed: int | None) -> None:
        """The next seed to run, or None: no more (the worker exits when its stdin closes)."""
        self.seed = seed
        assert self.proc.stdin is not None
        try:
            if seed is None:
                self.proc.stdin.close()
            else:
                self.proc.stdin.write(f"{seed}\n")
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: its end of stdout says so

    def kill_group(self) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def _run_parallel(
    seeds: Sequence[int],
    *,
    jobs: int,
    short: bool,
    verbose: bool,
    record: Callable[[ScheduleResult], None],
    budget_left: Callable[[int], bool],
    fleet: bool = False,
) -> None:
    events: queue.Queue[tuple[_Worker, str | None]] = queue.Queue()
    pending = iter(seeds)
    stopped = False
    restarts = 0
    workers: list[_Worker] = []

    def next_seed() -> int | None:
        nonlocal stopped
        if stopped:
            return None
        n = next(pending, None)
        if n is not None and not budget_left(n):
            stopped = True
            return None
        return n

    def start(number: int) -> None:
        worker = _Worker(number, short=short, verbose=verbose, events=events, fleet=fleet)
        workers.append(worker)
        worker.give(next_seed())

    try:
        for number in range(jobs):
            start(number)
        while any(not w.finished for w in workers):
            worker, line = events.get()
            if line is None:
                worker.finished = True
                code = worker.proc.wait()
                if worker.seed is not None:  # it died with a schedule in hand
                    steps, plan = _plan(worker.seed, short=short, fleet=fleet)
                    result = ScheduleResult(seed=worker.seed, steps=steps, plan=plan)
                    result.problems.append(
                        f"harness: the worker process exited with {code} during the schedule"
                    )
                    record(result)
                    worker.kill_group()  # whatever it left behind
                    if restarts < _WORKER_RESTARTS:
                        restarts += 1
                        start(worker.number)
                continue
            if line.startswith(_RESULT_MARK):
                record(ScheduleResult(**json.loads(line[len(_RESULT_MARK) :])))
                worker.give(next_seed())
            else:
                _say(line if worker.seed is None else f"{worker.seed:>6}| {line}")
    finally:
        for worker in workers:
            if worker.proc.poll() is None or not worker.finished:
                worker.kill_group()


def _worker(
    *, short: bool, verbose: bool, fleet: bool = False
) -> int:  # pragma: no cover - _Worker's process
    """One job of a parallel run: seeds from stdin, one result line per seed on stdout."""
    from ohip_relay.cli import configure_logging

    # Logged as `ohip-relay local chaos` logs (masked), on stdout: the parent prefixes each line with
    # the seed the worker is running.
    configure_logging("text", logging.DEBUG if verbose else logging.INFO)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stdout)
    for name in ["werkzeug", "botocore", "urllib3", "aiohttp", "httpx", "httpcore", "moto", "asyncio"]:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose:
        logging.getLogger("ohip_local").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the job (it kills the group)
    template = find_template()
    with moto_process() as endpoint:
        for line in sys.stdin:
            if not line.strip():
                continue
            result = _run_one(
                int(line), short=short, verbose=verbose, endpoint=endpoint, template=template, fleet=fleet
            )
            print(_RESULT_MARK + json.dumps(asdict(result)), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - `python -m ohip_local.chaos`
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ohip_local.chaos")
    parser.add_argument("--schedules", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--fleet", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(short=args.short, verbose=args.verbose, fleet=args.fleet)
    results = run_chaos(
        schedules=args.schedules,
        seed=args.seed,
        short=args.short,
        verbose=args.verbose,
        out=args.out,
        minutes=args.minutes,
        jobs=args.jobs,
        fleet=args.fleet,
    )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
