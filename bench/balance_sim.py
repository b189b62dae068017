"""The fleet in one process: workers balancing chain leases with `balance.plan()`, on a simulated clock.

Pure and deterministic: no I/O, no randomness beyond what a scenario passes in. The lease table is
modelled with DynamoDB's conditional-write semantics as the fleet uses them (state.py, and the
handover fields of docs/fleet-design.md): an acquire succeeds only when the lease is free, expired
by the acquirer's clock, or its own, and increments the generation; a renewal, a handover mark and
a release succeed only for the owner; a handover request only while the named holder owns the lease
and no other handover is pending. Each worker has its own clock offset (`skew`); time inside the
table is whatever the writer's clock said, as in the real table.

A worker does, like the scheduler of docs/fleet-design.md: every `renew_interval` one batch of
lease renewals followed by its heartbeat; every `pass_interval` (at its own phase) a balancing pass.
The passes due in one tick all read the table first and then write, so workers whose passes
coincide race on views that the others' writes make stale. And, per session, today's lease-keeper
rule (stream.py): the connection closes at `confirmed + lease - renew_interval` unless a renewal
succeeded since. A handover or a stop sends
`complete`, drains for `drain_seconds`, closes, then releases. A killed worker's sessions end at
once (its process is gone); a partitioned one keeps its sessions until the keeper closes them.

What is recorded, for the checks (tests/unit/test_balance.py) and the report below:

* `intervals`: every session of every chain, from its successful acquire to its socket's close,
  drain included: two intervals of one chain must never overlap;
* `moves`: every acquire (who, when, from whom, how: free, expired, handed over);
* `gaps`: between a `complete` and the next subscribe of the same chain (OHIP's 10 s rule).

    .venv/bin/python -m bench.balance_sim [chains] [workers]     # default 200 chains, 6 workers
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ohip_relay.balance import BalanceConfig, LeaseView, LeaseWatch, Plan, plan, subscribe_after
from ohip_relay.protocol import RESUBSCRIBE_GAP


@dataclass
class LeaseItem:
    """`lease#<chain>`, with the fleet's handover fields. `completed_real` is the simulator's own
    note (the true time of the last `complete`), not an attribute of the item."""

    owner: str | None = None
    lease_until: float = 0.0
    generation: int = 0
    handover_to: str | None = None
    handover_at: float | None = None
    completed_at: float | None = None
    completed_real: float | None = None


class Table:
    """The lease items and worker heartbeats, written only through DynamoDB-like conditional writes."""

    def __init__(self, *, versioned: bool = False) -> None:
        self.versioned = versioned  # every acquire also checks the version its taker saw
        self.leases: dict[str, LeaseItem] = {}
        self.heartbeats: dict[str, float] = {}
        self.writes = 0
        self.failed_writes = 0

    def _done(self, ok: bool) -> bool:
        self.writes += 1
        self.failed_writes += not ok
        return ok

    def acquire(
        self, chain: str, me: str, now: float, duration: float, *, expect: LeaseView | None = None
    ) -> LeaseItem | None:
        """The item as it was before a successful acquire; None when the condition failed.

        `expect`: the version the taker saw (owner, generation, leaseUntil; None: no item), which
        the item must still have: KCL's take, the versioned acquire of docs/fleet-design.md.
        """
        item = self.leases.setdefault(chain, LeaseItem())
        if not (item.owner is None or item.lease_until <= now or item.owner == me):
            self._done(False)
            return None
        if expect is not None or self.versioned:
            seen = (None, 0, 0.0) if expect is None else (expect.owner, expect.generation, expect.lease_until)
            if (item.owner, item.generation, item.lease_until) != seen:
                self._done(False)
                return None
        before = LeaseItem(**vars(item))
        item.owner, item.lease_until, item.generation = me, now + duration, item.generation + 1
        item.handover_to = item.handover_at = None
        self._done(True)
        return before

    def renew(self, chain: str, me: str, now: float, duration: float) -> bool:
        item = self.leases.get(chain)
        if item is None or item.owner != me:
            return self._done(False)
        item.lease_until = now + duration
        return self._done(True)

    def mark(self, chain: str, me: str, to: str, now: float) -> bool:
        """The holder starts a handover: `handoverTo = to, handoverAt = now` if `me` owns it."""
        item = self.leases.get(chain)
        if item is None or item.owner != me:
            return self._done(False)
        item.handover_to, item.handover_at = to, now
        return self._done(True)

    def release(self, chain: str, me: str, now: float, completed: tuple[float, float], keep: bool) -> bool:
        """Owner removed, `completedAt` stored; the handover reservation kept (refreshed) or cleared."""
        item = self.leases.get(chain)
        if item is None or item.owner != me:
            return self._done(False)
        item.owner, item.lease_until = None, 0.0
        item.completed_at, item.completed_real = completed
        if keep and item.handover_to is not None:
            item.handover_at = now
        else:
            item.handover_to = item.handover_at = None
        return self._done(True)

    def request(self, chain: str, me: str, holder: str, now: float, timeout: float) -> bool:
        item = self.leases.get(chain)
        pending = (
            item is not None and item.handover_to is not None and (item.handover_at or 0) > now - timeout
        )
        if item is None or item.owner != holder or pending:
            return self._done(False)
        item.handover_to, item.handover_at = me, now
        return self._done(True)

    def clear(self, chain: str, me: str) -> bool:
        item = self.leases.get(chain)
        if item is None or item.owner != me or item.handover_to is None:
            return self._done(False)
        item.handover_to = item.handover_at = None
        return self._done(True)

    def view(self) -> dict[str, LeaseView]:
        return {
            chain: LeaseView(i.owner, i.lease_until, i.generation, i.handover_to, i.handover_at)
            for chain, i in self.leases.items()
        }


@dataclass
class Session:
    chain: str
    generation: int
    started: float  # true time of the acquire
    confirmed: float  # the holder's clock at its last successful acquire or renewal
    subscribe_at: float  # true time of the first subscribe
    drain_until: float | None = None  # true time the socket closes, once a handover or stop began
    to: str | None = None
    completed: tuple[float, float] | None = None  # the `complete`: holder's clock, true time


@dataclass(frozen=True)
class Interval:
    chain: str
    worker: str
    generation: int
    start: float
    end: float


@dataclass(frozen=True)
class Move:
    at: float
    chain: str
    worker: str
    previous: str | None  # the lease's owner before the acquire (None: released or never taken)
    how: str  # "free" | "expired" | "handover" | "own"


@dataclass
class Worker:
    id: str
    skew: float
    next_pass: float
    next_renew: float
    alive: bool = True
    partitioned: bool = False
    sessions: dict[str, Session] = field(default_factory=dict)
    watch: LeaseWatch = field(default_factory=LeaseWatch)


@dataclass(frozen=True)
class SimConfig:
    dt: float = 0.5
    pass_interval: float = 10.0
    renew_interval: float = 10.0  # the lease's third, as today; the heartbeat goes with the renewals
    drain_seconds: float = 3.0  # complete -> the server closes; plus the checkpoint
    use_watch: bool = True  # judge expiry and liveness also by the LeaseWatch (KCL's rule)
    versioned_takes: bool = False  # acquire only the version of the lease the pass saw
    resubscribe_gap: float = RESUBSCRIBE_GAP


class Simulation:
    def __init__(
        self,
        chains: Iterable[str],
        *,
        balance: BalanceConfig | None = None,
        config: SimConfig | None = None,
    ) -> None:
        self.balance = balance or BalanceConfig()
        self.config = config or SimConfig()
        if self.config.renew_interval * 2 >= self.balance.lease_seconds:
            raise ValueError("renew_interval must be under half the lease")
        self.enabled: set[str] = set(chains)
        self.table = Table(versioned=self.config.versioned_takes)
        self.workers: dict[str, Worker] = {}
        self.now = 0.0
        self.intervals: list[Interval] = []
        self.moves: list[Move] = []
        self.gaps: list[tuple[str, float]] = []  # chain, seconds from `complete` to the next subscribe
        self.handovers: list[tuple[float, str, str, str]] = []  # at, chain, from, to
        self.plans = 0
        self._events: list[tuple[float, int, Callable[[], None]]] = []

    # -- scenario ------------------------------------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._events.append((when, len(self._events), action))
        self._events.sort(key=lambda e: (e[0], e[1]))

    def join(self, worker: str, *, skew: float = 0.0, phase: float = 0.0) -> None:
        """Start a worker now: its heartbeat at once, its first pass `phase` seconds later."""
        if worker in self.workers and self.workers[worker].alive:
            raise ValueError(f"{worker} is running already")
        self.workers[worker] = Worker(worker, skew, next_pass=self.now + phase, next_renew=self.now)

    def kill(self, worker: str) -> None:
        """The process ends: its sockets with it (OHIP may hold its side a while: not ours)."""
        w = self.workers[worker]
        w.alive = False
        for session in list(w.sessions.values()):
            self._end(w, session)

    def partition(self, worker: str, seconds: float) -> None:
        """No DynamoDB for `seconds`; the sessions go on until the lease keeper closes them."""
        w = self.workers[worker]
        w.partitioned = True

        def heal() -> None:
            w.partitioned = False

        self.at(self.now + seconds, heal)

    def enable(self, chain: str) -> None:
        self.enabled.add(chain)

    def disable(self, chain: str) -> None:
        self.enabled.discard(chain)

    # -- the clock -----------------------------------------------------------------------------

    def run_until(self, until: float) -> None:
        while self.now < until - 1e-9:
            while self._events and self._events[0][0] <= self.now + 1e-9:
                _, _, action = self._events.pop(0)
                action()
            for worker in sorted(self.workers):
                self._step(self.workers[worker])
            # Passes due in this tick all read the table as it is now, then write: workers whose
            # passes coincide race on the same (soon stale) view, as they would on DynamoDB.
            due = [w for _, w in sorted(self.workers.items()) if self._pass_due(w)]
            plans = [(w, *self._plan(w)) for w in due]
            for w, p, view in plans:
                self._carry_out(w, p, view)
            self.now = round(self.now + self.config.dt, 6)

    def finish(self) -> None:
        """Close the books: sessions still running end now."""
        for w in self.workers.values():
            for session in w.sessions.values():
                self.intervals.append(
                    Interval(session.chain, w.id, session.generation, session.started, self.now)
                )
            w.sessions.clear()

    # -- one worker, one tick ------------------------------------------------------------------

    def _step(self, w: Worker) -> None:
        if not w.alive:
            return
        cfg, bal = self.config, self.balance
        wall = self.now + w.skew
        for session in list(w.sessions.values()):
            if wall >= session.confirmed + bal.lease_seconds - cfg.renew_interval:
                self._end(w, session)  # the lease keeper: no renewal confirmed in time
            elif session.drain_until is not None and self.now >= session.drain_until:
                self._end(w, session)
                if not w.partitioned:
                    assert session.completed is not None
                    self.table.release(
                        session.chain, w.id, wall, session.completed, keep=session.to is not None
                    )
                    if session.to is not None:
                        self.handovers.append((self.now, session.chain, w.id, session.to))
        if self.now >= w.next_renew - 1e-9:
            w.next_renew += cfg.renew_interval
            if not w.partitioned:
                for session in list(w.sessions.values()):
                    if self.table.renew(session.chain, w.id, wall, bal.lease_seconds):
                        session.confirmed = wall
                    else:
                        self._end(w, session)  # someone else owns it: stop at once
                self.table.heartbeats[w.id] = wall

    def _pass_due(self, w: Worker) -> bool:
        if not w.alive or self.now < w.next_pass - 1e-9:
            return False
        w.next_pass += self.config.pass_interval
        return not w.partitioned

    def _plan(self, w: Worker) -> tuple[Plan, dict[str, LeaseView]]:
        view = self.table.view()
        wall = self.now + w.skew
        heartbeats = self.table.heartbeats
        if self.config.use_watch:
            view = w.watch.observe(view, self.now)
            heartbeats = w.watch.observe_workers(heartbeats, wall)
        draining = {c for c, s in w.sessions.items() if s.drain_until is not None}
        p = plan(
            enabled=self.enabled,
            leases=view,
            workers=heartbeats,
            me=w.id,
            now=wall,
            running=w.sessions.keys(),
            draining=draining,
            config=self.balance,
        )
        self.plans += 1
        return p, view

    def _carry_out(self, w: Worker, p: Plan, view: dict[str, LeaseView]) -> None:
        bal, wall = self.balance, self.now + w.skew
        for gone in p.forget:
            self.table.heartbeats.pop(gone, None)
        for chain in p.stop:
            if chain in w.sessions:
                self._drain(w, w.sessions[chain], None, wall)
        for handover in p.release:
            if handover.chain in w.sessions and self.table.mark(handover.chain, w.id, handover.to, wall):
                self._drain(w, w.sessions[handover.chain], handover.to, wall)
        for chain in p.decline:
            self.table.clear(chain, w.id)
        spares = list(p.spare)
        for chain in p.take:
            if self._acquire(w, chain, wall, view):
                continue
            while spares and not self._acquire(w, spares.pop(0), wall, view):
                pass
        request = p.request_handover
        if request is not None:
            self.table.request(request.chain, w.id, request.holder, wall, bal.handover_timeout)

    def _acquire(self, w: Worker, chain: str, wall: float, view: dict[str, LeaseView]) -> bool:
        expect = view.get(chain) if self.config.versioned_takes else None
        before = self.table.acquire(chain, w.id, wall, self.balance.lease_seconds, expect=expect)
        if before is None:
            return False
        item = self.table.leases[chain]
        if before.owner is not None and before.owner != w.id:
            how = "expired"
        elif before.owner == w.id:
            how = "own"
        elif before.handover_to == w.id:
            how = "handover"
        else:
            how = "free"
        self.moves.append(Move(self.now, chain, w.id, before.owner, how))
        subscribe_wall = subscribe_after(before.completed_at, wall, gap=self.config.resubscribe_gap)
        subscribe_at = self.now + (subscribe_wall - wall)
        if before.completed_real is not None:
            self.gaps.append((chain, subscribe_at - before.completed_real))
        w.sessions[chain] = Session(chain, item.generation, self.now, wall, subscribe_at)
        return True

    def _drain(self, w: Worker, session: Session, to: str | None, wall: float) -> None:
        session.drain_until = self.now + self.config.drain_seconds
        session.to = to
        session.completed = (wall, self.now)

    def _end(self, w: Worker, session: Session) -> None:
        self.intervals.append(Interval(session.chain, w.id, session.generation, session.started, self.now))
        del w.sessions[session.chain]

    # -- what the checks read ------------------------------------------------------------------

    def overlaps(self) -> list[tuple[Interval, Interval]]:
        """Pairs of sessions of one chain that were open at the same time (there must be none)."""
        found = []
        by_chain: dict[str, list[Interval]] = {}
        for interval in self.intervals:
            by_chain.setdefault(interval.chain, []).append(interval)
        for intervals in by_chain.values():
            intervals.sort(key=lambda i: (i.start, i.end))
            for before, after in itertools.pairwise(intervals):
                if after.start < before.end - 1e-9:
                    found.append((before, after))
        return found

    def running(self) -> dict[str, list[str]]:
        """Chain -> the workers with a session for it now (draining included)."""
        out: dict[str, list[str]] = {}
        for w in self.workers.values():
            for chain in w.sessions:
                out.setdefault(chain, []).append(w.id)
        return out

    def loads(self) -> dict[str, int]:
        """Live, connected workers -> how many chains they run (draining sessions not counted)."""
        return {
            w.id: sum(1 for s in w.sessions.values() if s.drain_until is None)
            for w in self.workers.values()
            if w.alive and not w.partitioned
        }

    def settled(self) -> bool:
        """Every enabled chain has exactly one session, none draining, none of a disabled chain, and
        the loads of the live workers differ by at most one."""
        running = self.running()
        if set(running) != self.enabled or any(len(ws) != 1 for ws in running.values()):
            return False
        if any(s.drain_until is not None for w in self.workers.values() for s in w.sessions.values()):
            return False
        loads = self.loads()
        return not loads or max(loads.values()) - min(loads.values()) <= 1


def report(chains: int, workers: int) -> dict[str, float]:
    """A larger run: a cold start staggered over a minute, then a worker joins, then one dies: how
    long each takes to settle (the cold start counted from the last join), how many handovers the
    join caused, and what one `plan()` costs at this size."""
    sim = Simulation([f"C{i:04d}" for i in range(chains)])

    def joiner(i: int) -> Callable[[], None]:
        return lambda: sim.join(f"w{i:02d}", phase=(i * 3.7) % 10)

    for i in range(workers):
        sim.at(i * 60.0 / workers, joiner(i))
    settle: dict[str, float] = {}

    def until_settled(name: str, start: float, limit: float) -> None:
        sim.run_until(start + 1)
        while not sim.settled() and sim.now < start + limit:
            sim.run_until(sim.now + 1)
        settle[name] = sim.now - start

    sim.run_until(60.0)
    until_settled("cold_start_s", 60.0, 1800)
    before = len(sim.handovers)
    sim.join("w-new", phase=5.0)
    until_settled("join_s", sim.now, 1800)
    joined = len(sim.handovers) - before
    victim = max(sim.loads(), key=lambda w: sim.loads()[w])
    sim.kill(victim)
    until_settled("death_s", sim.now, 1800)
    sim.finish()
    view = sim.table.view()
    heartbeats = dict(sim.table.heartbeats)
    me = sorted(sim.loads())[0]
    started = time.perf_counter()
    loops = 200
    for _ in range(loops):
        plan(enabled=sim.enabled, leases=view, workers=heartbeats, me=me, now=sim.now, running=())
    per_plan = (time.perf_counter() - started) / loops
    return {
        "chains": float(chains),
        "workers": float(workers),
        **settle,
        "handovers_after_join": float(joined),
        "overlaps": float(len(sim.overlaps())),
        "min_resubscribe_gap_s": min((gap for _, gap in sim.gaps), default=float("nan")),
        "plan_ms": per_plan * 1000,
        "conditional_writes_failed": float(sim.table.failed_writes),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    chains = int(args[0]) if args else 200
    workers = int(args[1]) if len(args) > 1 else 6
    print(json.dumps(report(chains, workers), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
