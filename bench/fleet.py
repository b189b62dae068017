"""The fleet (issue #18, docs/fleet-design.md): idle chain sessions per task, aggregate throughput of
many busy chains in one task, and how long a dead task's chains take to move.

Every moving part is its own process, as in `bench/run.py`:

    gateway   bench/gateway_proc.py      the local OHIP gateway, 2 OPERA environments (fleet shape)
    moto      python -m bench.fleet moto moto (DynamoDB, S3, Secrets Manager), IAM not enforced, behind
                                         a WSGI middleware that counts the DynamoDB requests and their
                                         capacity units per client (the `app/<id>` in the User-Agent,
                                         set by AWS_SDK_UA_APP_ID)
    sink      bench/sqs_sink.py          the SQS endpoint
    relay     ohip-relay stream          the real command with RELAY_FLEET=true, default timings

Three measurements:

1. Idle sessions per task. A registry of N chains (default 200, over 2 environments) and one relay
   process that takes them all, at the scheduler's default 10 takes per pass (the time to take
   them all is reported). Once every chain is connected (the relay's worker item says so) and one
   more pass has gone by, a window of W seconds (default 60) with no events: the relay's RSS (VmRSS)
   and USS (Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup, what psutil calls USS) and
   its CPU (utime + stime), against a relay with an empty registry (its own table) measured over the
   same window. Per idle chain: (relay - baseline) / N. From those, how many idle chains a 0.25 vCPU /
   0.5 GB task holds with 30 % headroom (this machine's core taken for a vCPU). The relay's DynamoDB
   requests in the window are counted at the moto server, turned into capacity units (the item
   sizes of the requests and answers, by DynamoDB's rules) and into dollars per idle chain per month
   at the list prices of docs/fleet-design.md section 7.
2. Aggregate throughput. One relay holding K busy chains (default 50) against one relay holding 1,
   the same total backlog E (default 100,000 events) split evenly, each chain reading at its
   maximum: the relay's CPU is then the limit in both runs (one chain alone keeps a core about 80 %
   busy on a quiet machine), and the ratio says what running many chains in one event loop costs.
   A fixed total offered rate below that limit would say nothing about capacity. The chains are
   connected first (idle); the gateway then generates the whole backlog in one go and sends it
   (`/bench/burst`); events/s = E / (last SQS acknowledgement - end of generation). Two pairs of
   runs, taken in turn (one in a quick run); CPU per event is the steadier figure on a shared machine.
3. Dead task move time. Two relays share M chains (default 40); once they are balanced one is
   killed (SIGKILL); the time until every chain it held is connected under the other, from the
   survivor's worker item (`FleetStore.read_fleet()`, written every 10 s), and more precisely from
   the survivor's log (lease taken, subscribed), against the design's D + P = 40 s.

Nothing is asserted: the figures are printed and written to bench/results/fleet.json.

    .venv/bin/python -m bench.fleet                  # about 13 minutes on 2 cores
    .venv/bin/python -m bench.fleet --quick          # a fifth of the sizes (BENCH_SCALE=0.2), about 4 minutes
    .venv/bin/python -m bench.fleet --only idle      # one part: idle, throughput, move
    BENCH_PROFILE=1 .venv/bin/python -m bench.fleet  # also sample the idle and the busy relays (py-spy)

moto's server (werkzeug) closes the connection after every answer, so every DynamoDB request opens
a TCP connection: the relay's CPU per request is somewhat higher here than against DynamoDB, where
connections are kept (docs/benchmarks.md, "Fleet", has the share).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

from bench.run import (
    PY,
    RESULTS,
    TEMPLATE,
    Child,
    Profiler,
    Sink,
    child,
    cpu_seconds,
    profiling,
    say,
    scale,
    sink,
    sink_queue,
)
from ohip_local.aws import DEFAULT_REGION, LOCAL_CREDENTIALS, ProvisionedStack, provision
from ohip_relay.balance import WorkerRecord, item_size
from ohip_relay.fleet_state import FleetStore
from ohip_relay.registry import RegistryStore, Subscription

# The task the issue sizes for, and the headroom left when saying how many chains it holds.
TASK_VCPU = 0.25
TASK_MEMORY_MIB = 512.0
HEADROOM = 0.30
# docs/fleet-design.md section 7: list prices (us-east-1, on-demand) and a month of 730 h.
PRICE_PER_WRU = 0.625 / 1e6
PRICE_PER_RRU = 0.125 / 1e6
SECONDS_PER_MONTH = 2_628_000
# Section 7's DynamoDB estimate per idle chain for one task (W = 1): renewal 0.164, share of the
# worker item 0.0115, fallback mark 0.005, view reads 0.016 x W.
DESIGN_DYNAMODB_PER_CHAIN_ONE_TASK = 0.164 + 0.0115 + 0.005 + 0.016
DESIGN_MOVE_SECONDS = 40.0  # D + P
CONNECTED = "connected"
PROFILE = Path(tempfile.gettempdir()) / "ohip-relay-bench" / "fleet-idle-profile.txt"
DDB_TARGET = "DynamoDB_20120810."
_APP = re.compile(r"\bapp/(\S+)")
_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/")
TAKEN = re.compile(r"chain (\S+): lease taken")
SUBSCRIBED = re.compile(r"subscribed to chain (\S+) ")
_STACKS = itertools.count(1)


# -- moto with a request counter ---------------------------------------------------------------


def _rru(size: int, consistent: bool) -> float:
    units = max(1, math.ceil(size / 4096))
    return float(units) if consistent else units / 2


def _wru(size: int) -> float:
    return float(max(1, math.ceil(size / 1024)))


def capacity_units(operation: str, request: dict[str, Any], answer: dict[str, Any]) -> tuple[float, float]:
    """(read units, write units) DynamoDB would bill for one request, from the item sizes in the
    request and the answer: a read unit per 4 KB (half for an eventually consistent read), a write
    unit per KB, at least one per item. An update is billed on the item it returns (the relay's
    updates return the old or the new item), a failed condition as one unit."""
    consistent = bool(request.get("ConsistentRead"))
    if operation == "GetItem":
        item = answer.get("Item")
        return _rru(item_size(item) if item else 0, consistent), 0.0
    if operation == "BatchGetItem":
        reads = 0.0
        found = answer.get("Responses", {})
        for table, spec in request.get("RequestItems", {}).items():
            strong = bool(spec.get("ConsistentRead"))
            items = found.get(table, [])
            reads += sum(_rru(item_size(i), strong) for i in items)
            reads += _rru(0, strong) * max(0, len(spec.get("Keys", [])) - len(items))
        return reads, 0.0
    if operation in ("Query", "Scan"):
        return _rru(sum(item_size(i) for i in answer.get("Items", [])), consistent), 0.0
    if operation == "PutItem":
        return 0.0, _wru(item_size(request.get("Item", {})))
    if operation in ("UpdateItem", "DeleteItem"):
        item = answer.get("Attributes")
        return 0.0, _wru(item_size(item) if item else 0)
    if operation == "TransactWriteItems":
        return 0.0, 2.0 * len(request.get("TransactItems", []))
    if operation == "TransactGetItems":
        return 2.0 * len(request.get("TransactItems", [])), 0.0
    return 0.0, 0.0


class CountingApp:
    """WSGI middleware: per client (`app/<id>` in the User-Agent) and operation, the requests and
    the capacity units; `GET /_bench/requests` answers with the totals so far."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, dict[str, float]]] = {}

    def _add(self, client: str, operation: str, reads: float, writes: float) -> None:
        with self.lock:
            row = self.counts.setdefault(client, {}).setdefault(operation, {"n": 0, "rru": 0.0, "wru": 0.0})
            row["n"] += 1
            row["rru"] += reads
            row["wru"] += writes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/_bench/requests":
            with self.lock:
                body = json.dumps(self.counts).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        agent = environ.get("HTTP_USER_AGENT", "")
        found = _APP.search(agent)
        client = found.group(1) if found else "-"
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith(DDB_TARGET):
            scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
            self._add(client, scope.group(1) if scope else "other", 0.0, 0.0)
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)
        answer_iter = self.app(environ, start_response)
        try:
            chunks = list(answer_iter)
        finally:
            close = getattr(answer_iter, "close", None)
            if close is not None:
                close()
        operation = target[len(DDB_TARGET) :]
        try:
            reads, writes = capacity_units(
                operation, json.loads(raw or b"{}"), json.loads(b"".join(chunks) or b"{}")
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            reads, writes = 0.0, 0.0
        self._add(client, operation, reads, writes)
        return chunks


def serve_moto() -> None:
    """`python -m bench.fleet moto`: moto (its own application, as `ohip_local.aws.moto_server`
    runs it, IAM not enforced) behind `CountingApp`; prints the endpoint, serves until stdin closes."""
    import logging

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = CountingApp(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-server", daemon=True)
    thread.start()
    print(f"http://127.0.0.1:{server.server_port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()
    server.shutdown()


@dataclass
class Moto:
    url: str
    pid: int

    def counts(self) -> dict[str, dict[str, dict[str, float]]]:
        return dict(httpx.get(self.url + "/_bench/requests", trust_env=False, timeout=30).json())


@contextlib.contextmanager
def moto() -> Iterator[Moto]:
    with child("moto", [PY, "-m", "bench.fleet", "moto"]) as c:
        yield Moto(c.readline(60).strip(), c.pid)
        say(f"moto used {cpu_seconds(c.pid):.1f} s of CPU")


def requests_between(
    before: dict[str, dict[str, dict[str, float]]], after: dict[str, dict[str, dict[str, float]]], client: str
) -> dict[str, dict[str, float]]:
    """One client's requests and units by operation between two snapshots."""
    out: dict[str, dict[str, float]] = {}
    old = before.get(client, {})
    for operation, row in after.get(client, {}).items():
        prev = old.get(operation, {"n": 0, "rru": 0.0, "wru": 0.0})
        delta = {k: row[k] - prev[k] for k in ("n", "rru", "wru")}
        if delta["n"]:
            out[operation] = delta
    return out


# -- the gateway, the stack, the registry ------------------------------------------------------


@dataclass
class FleetGateway:
    info: dict[str, Any]
    pid: int

    @property
    def chains(self) -> list[tuple[int, str]]:
        return [(env["index"], chain) for env in self.info["environments"] for chain in env["chains"]]

    def burst(self, count: int, chains: list[str]) -> dict[str, Any]:
        return dict(
            httpx.post(
                self.info["bench_url"] + "/bench/burst",
                json={"count": count, "chains": chains},
                trust_env=False,
                timeout=600,
            ).json()
        )

    def connections(self) -> dict[str, dict[str, Any]]:
        """Per chain, the gateway's connection detector (subscribed now, most at once, 4409s)."""
        data = httpx.get(self.info["control_url"] + "/connections", trust_env=False, timeout=30).json()
        return {chain: report for env in data["environments"] for chain, report in env["chains"].items()}


@contextlib.contextmanager
def fleet_gateway(environments: int, per_environment: int) -> Iterator[FleetGateway]:
    argv = [PY, "-m", "bench.gateway_proc", "--environments", str(environments)]
    argv += ["--chains-per-environment", str(per_environment)]
    with child("gateway", argv) as c:
        yield FleetGateway(json.loads(c.readline(60)), c.pid)


def bench_client(stack: ProvisionedStack, service: str) -> Any:
    """The bench's own AWS client (`app/bench`: its requests are not counted as the relay's)."""
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=stack.endpoint_url,
        region_name=stack.region,
        config=Config(user_agent_extra="app/bench", retries={"mode": "standard", "max_attempts": 5}),
        **LOCAL_CREDENTIALS,
    )


@dataclass
class Fleet:
    """A provisioned stack with a registry of chains of the gateway, one secret per environment."""

    stack: ProvisionedStack
    moto_url: str
    chains: list[str]
    store: FleetStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = FleetStore(bench_client(self.stack, "dynamodb"), self.stack.table_name)

    @classmethod
    def create(cls, moto_url: str, name: str, gw: FleetGateway | None, chains: list[str]) -> Fleet:
        stack_name = f"{name}-{os.getpid()}-{next(_STACKS)}"
        stack = provision(moto_url, TEMPLATE, stack_name=stack_name, region=DEFAULT_REGION)
        fleet = cls(stack, moto_url, chains)
        if gw is None or not chains:
            return fleet
        secrets = bench_client(stack, "secretsmanager")
        registry = RegistryStore(bench_client(stack, "dynamodb"), stack.table_name)
        wanted = set(chains)
        for env in gw.info["environments"]:
            value = {
                "clientId": env["client_id"],
                "clientSecret": env["client_secret"],
                "appKey": env["app_key"],
            }
            arn = secrets.create_secret(
                Name=f"{stack.stack_name}/ohip-env{env['index']}", SecretString=json.dumps(value)
            )["ARN"]
            for chain in env["chains"]:
                if chain in wanted:
                    registry.add(
                        Subscription(
                            id=chain,
                            gateway_url=env["url"],
                            chain_code=chain,
                            secret_arn=arn,
                            enterprise_id=env["enterprise_id"],
                            external_system=env["external_system"],
                        )
                    )
        return fleet

    def env(self, sink_url: str, client: str, **extra: str) -> dict[str, str]:
        """`ohip-relay stream` in the fleet shape: SQS at the sink, the rest at moto."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_ENDPOINT_URL", "OHIP_", "RELAY_", "AWS_SDK_UA_APP_ID"))
        }
        env.update(
            {
                "RELAY_FLEET": "true",
                "RELAY_QUEUE_URL": sink_queue(sink_url),
                "RELAY_TABLE_NAME": self.stack.table_name,
                "RELAY_BUCKET_NAME": self.stack.bucket_name,
                "RELAY_METRICS": "off",
                "AWS_REGION": self.stack.region,
                "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_ENDPOINT_URL_SQS": sink_url,
                "AWS_ENDPOINT_URL_DYNAMODB": self.moto_url,
                "AWS_ENDPOINT_URL_S3": self.moto_url,
                "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.moto_url,
                "AWS_SDK_UA_APP_ID": client,
            }
        )
        env.update(extra)
        return env

    def workers(self) -> dict[str, WorkerRecord]:
        return dict(self.store.read_fleet().workers)


def connected(records: Iterable[WorkerRecord]) -> dict[str, str]:
    """chain -> worker, for every chain a worker item reports connected."""
    return {chain: r.worker for r in records for chain, s in r.chains.items() if s.state == CONNECTED}


def log_times(relay: Child, pattern: re.Pattern[str], since: float = 0.0) -> dict[str, float]:
    """chain -> when the relay first logged a line matching `pattern` for it (after `since`)."""
    out: dict[str, float] = {}
    for at, line in list(relay.lines):
        if at < since:
            continue
        found = pattern.search(line)
        if found and found.group(1) not in out:
            out[found.group(1)] = at
    return out


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, *, every: float = 1.0, alive: Iterable[Child] = ()
) -> float:
    """Poll `check` until it holds (returns the time it first did), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.time()
        for c in alive:
            if c.proc.poll() is not None:
                tail = "\n".join(line for _, line in c.lines[-20:])
                raise RuntimeError(f"{c.name} exited ({c.proc.returncode}) while waiting for {what}:\n{tail}")
        time.sleep(every)
    tails = "".join(f"\n{c.name}:\n" + "\n".join(line for _, line in c.lines[-15:]) for c in alive)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}{tails}")


# -- /proc ----------------------------------------------------------------------------------------


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (/proc/<pid>/status) and USS (private pages, /proc/<pid>/smaps_rollup), MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) / 1024
    private = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Private_Clean", "Private_Dirty"):
            private += int(value.split()[0])
    out["USS"] = private / 1024
    return out


@dataclass
class Sampled:
    """A process over a window: CPU seconds and memory at both ends."""

    pid: int
    cpu0: float = 0.0
    cpu1: float = 0.0
    mem0: dict[str, float] = field(default_factory=dict)
    mem1: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.cpu0, self.mem0 = cpu_seconds(self.pid), memory_mib(self.pid)

    def end(self) -> None:
        self.cpu1, self.mem1 = cpu_seconds(self.pid), memory_mib(self.pid)

    def row(self, seconds: float) -> dict[str, Any]:
        cpu = self.cpu1 - self.cpu0
        return {
            "cpu_s": cpu,
            "cpu_share_of_one_core": cpu / seconds,
            "rss_mib": self.mem1["VmRSS"],
            "rss_mib_at_start": self.mem0["VmRSS"],
            "peak_rss_mib": self.mem1["VmHWM"],
            "uss_mib": self.mem1["USS"],
        }


# -- 1. idle sessions per task --------------------------------------------------------------------


def run_idle(moto_srv: Moto, snk: Sink, n: int, window: float) -> dict[str, Any]:
    per_env = n // 2
    with fleet_gateway(2, per_env) as gw:
        chains = [chain for _, chain in gw.chains]
        fleet = Fleet.create(moto_srv.url, "bench-idle", gw, chains)
        empty = Fleet.create(moto_srv.url, "bench-idle-empty", None, [])
        say(f"idle: registry of {n} chains over 2 environments; starting the relay and a 0-chain baseline")
        started = time.time()
        with (
            child(
                "relay", [PY, "-m", "ohip_relay.cli", "stream"], fleet.env(snk.url, "relay"), log_stderr=True
            ) as relay,
            child(
                "baseline",
                [PY, "-m", "ohip_relay.cli", "stream"],
                empty.env(snk.url, "baseline"),
                log_stderr=True,
            ) as base,
        ):
            cpu_start = cpu_seconds(relay.pid)
            # generous: 10 takes per pass every 10 s, on a loaded machine
            all_connected_at = wait_until(
                f"{n} chains connected",
                lambda: len(connected(fleet.workers().values())) == n,
                timeout=n * 1.5 + 180,
                every=2.0,
                alive=(relay, base),
            )
            taken = log_times(relay, TAKEN, started)
            subscribed = log_times(relay, SUBSCRIBED, started)
            taking_cpu = cpu_seconds(relay.pid) - cpu_start
            say(
                f"idle: all {n} chains taken {max(taken.values()) - started:.0f} s after the start, "
                f"subscribed {max(subscribed.values()) - started:.0f} s "
                f"(worker item: {all_connected_at - started:.0f} s)"
            )
            # One more balancing pass and renewal tick before the window: the last sessions settle.
            time.sleep(12.0)
            samples = {"relay": Sampled(relay.pid), "baseline": Sampled(base.pid)}
            counts0 = moto_srv.counts()
            for s in samples.values():
                s.start()
            t0 = time.monotonic()
            profiler = Profiler.attach(relay.pid, PROFILE) if profiling() else None
            time.sleep(window)  # the measurement itself: nothing happens, and nothing is asked
            seconds = time.monotonic() - t0
            for s in samples.values():
                s.end()
            counts1 = moto_srv.counts()
            profile = profiler.finish() if profiler is not None else None
            still = len(connected(fleet.workers().values()))
            report = gw.connections()
            relay_row, base_row = samples["relay"].row(seconds), samples["baseline"].row(seconds)
            requests = {c: requests_between(counts0, counts1, c) for c in ("relay", "baseline")}
            stop_at = time.time()
            code = relay.stop(120)
            stop_seconds = time.time() - stop_at
            base.stop(60)
    result = {
        "chains": n,
        "environments": 2,
        "window_s": seconds,
        "take": {
            "last_taken_s": max(taken.values()) - started,
            "last_subscribed_s": max(subscribed.values()) - started,
            "all_connected_in_worker_item_s": all_connected_at - started,
            "takes_per_pass": 10,
            "relay_cpu_s_while_taking": taking_cpu,
        },
        "relay": relay_row,
        "baseline": base_row,
        "still_connected_after_window": still,
        "gateway_subscribed": sum(r["subscribed"] for r in report.values()),
        "max_concurrent_subscribed": max(r["max_concurrent_subscribed"] for r in report.values()),
        "refusals_4409": sum(r["refusals_4409"] for r in report.values()),
        "dynamodb": requests,
        "relay_exit": code,
        "relay_stop_s": stop_seconds,
    }
    if profile is not None:
        result["profile"] = profile
    result["per_chain"] = idle_per_chain(result)
    return result


def _units(rows: dict[str, dict[str, float]]) -> tuple[float, float, float]:
    n = sum(r["n"] for r in rows.values())
    return n, sum(r["rru"] for r in rows.values()), sum(r["wru"] for r in rows.values())


def idle_per_chain(r: dict[str, Any]) -> dict[str, Any]:
    """Per idle chain (relay minus baseline, over N), and what a 0.25 vCPU / 0.5 GB task holds."""
    n, seconds = r["chains"], r["window_s"]
    relay, base = r["relay"], r["baseline"]
    rss = (relay["rss_mib"] - base["rss_mib"]) / n
    uss = (relay["uss_mib"] - base["uss_mib"]) / n
    cpu = (relay["cpu_s"] - base["cpu_s"]) / seconds / n  # share of one core (a vCPU) per chain
    mem_budget = TASK_MEMORY_MIB * (1 - HEADROOM)
    cpu_budget = TASK_VCPU * (1 - HEADROOM)
    by_memory = (mem_budget - base["rss_mib"]) / rss if rss > 0 else float("inf")
    by_cpu = (cpu_budget - base["cpu_share_of_one_core"]) / cpu if cpu > 0 else float("inf")
    reqs, rru, wru = _units(r["dynamodb"]["relay"])
    b_reqs, b_rru, b_wru = _units(r["dynamodb"]["baseline"])
    scale_month = SECONDS_PER_MONTH / seconds
    zero = {"n": 0.0, "rru": 0.0, "wru": 0.0}
    per_op = {}
    for op, row in sorted(r["dynamodb"]["relay"].items()):
        fixed = r["dynamodb"]["baseline"].get(op, zero)
        more = {k: row[k] - fixed[k] for k in zero}
        usd = (more["rru"] * PRICE_PER_RRU + more["wru"] * PRICE_PER_WRU) * scale_month
        per_op[op] = {"requests_per_chain_per_s": more["n"] / seconds / n, "usd_per_chain_month": usd / n}
    usd_relay = (rru * PRICE_PER_RRU + wru * PRICE_PER_WRU) * scale_month
    usd_base = (b_rru * PRICE_PER_RRU + b_wru * PRICE_PER_WRU) * scale_month
    return {
        "rss_mib": rss,
        "uss_mib": uss,
        "cpu_share_of_one_vcpu": cpu,
        "cpu_ms_per_s": cpu * 1000,
        "task": {"vcpu": TASK_VCPU, "memory_mib": TASK_MEMORY_MIB, "headroom": HEADROOM},
        "chains_per_task_by_memory": by_memory,
        "chains_per_task_by_cpu": by_cpu,
        "chains_per_task": min(by_memory, by_cpu),
        "at_n": {
            "rss_mib": relay["rss_mib"],
            "share_of_task_memory": relay["rss_mib"] / TASK_MEMORY_MIB,
            "cpu_share_of_task": relay["cpu_share_of_one_core"] / TASK_VCPU,
        },
        "dynamodb": {
            "relay_requests_per_s": reqs / seconds,
            "baseline_requests_per_s": b_reqs / seconds,
            "relay_rru_per_s": rru / seconds,
            "relay_wru_per_s": wru / seconds,
            "usd_per_chain_month": (usd_relay - usd_base) / n,
            "usd_per_task_month_fixed": usd_base,
            "usd_per_task_month_at_n": usd_relay,
            "design_estimate_usd_per_chain_month": DESIGN_DYNAMODB_PER_CHAIN_ONE_TASK,
            "by_operation": per_op,
        },
    }


# -- 2. aggregate throughput ----------------------------------------------------------------------


def run_busy(moto_srv: Moto, snk: Sink, k: int, events: int) -> dict[str, Any]:
    """One relay with `k` chains connected (idle), then `events` split evenly over them at once."""
    environments, per_env = (1, 1) if k == 1 else (2, math.ceil(k / 2))
    with fleet_gateway(environments, per_env) as gw:
        chains = [chain for _, chain in gw.chains][:k]
        fleet = Fleet.create(moto_srv.url, f"bench-busy{k}", gw, chains)
        per_chain = events // k
        started = time.time()
        env = fleet.env(snk.url, f"busy{k}")
        with child("relay", [PY, "-m", "ohip_relay.cli", "stream"], env, log_stderr=True) as relay:
            wait_until(
                f"{k} chains connected",
                lambda: len(connected(fleet.workers().values())) == k,
                timeout=k * 1.5 + 180,
                every=1.0,
                alive=(relay,),
            )
            # subscribed is logged once the server acknowledged the connection: wait for every chain's
            subscribed = log_times(relay, SUBSCRIBED, started)
            connect_s = max(subscribed.values()) - started
            snk.reset()
            counts0 = moto_srv.counts()
            cpu0, gw_cpu0, sink_cpu0 = cpu_seconds(relay.pid), cpu_seconds(gw.pid), cpu_seconds(snk.pid)
            profiler = (
                Profiler.attach(relay.pid, PROFILE.with_name(f"fleet-busy{k}-profile.txt"))
                if profiling()
                else None
            )
            burst = gw.burst(per_chain, chains)
            total = int(burst["events"])
            complete = snk.wait_for(total, timeout=120.0 + total / 50, alive=relay)
            profile = profiler.finish() if profiler is not None else None
            requests = requests_between(counts0, moto_srv.counts(), f"busy{k}")
            relay_cpu = cpu_seconds(relay.pid) - cpu0
            gw_cpu, sink_cpu = cpu_seconds(gw.pid) - gw_cpu0, cpu_seconds(snk.pid) - sink_cpu0
            times, offsets = snk.records()
            report = gw.connections()
            code = relay.stop(120)
    if not complete:
        raise RuntimeError(f"the relay with {k} chains did not deliver {total} events (exit {code})")
    expected = {o for first, last in burst["ranges"].values() for o in range(first, last + 1)}
    got = set(offsets)
    start = float(burst["generated_at"])
    last = max(times)
    seconds = last - start
    result = {
        "chains": k,
        "events": total,
        "events_per_chain": per_chain,
        "generation_s": burst["seconds"],
        "connect_all_s": connect_s,
        "seconds": seconds,
        "rate": total / seconds,
        "first_to_last_ack_rate": total / max(1e-9, last - min(times)),
        "delivered_distinct": len(got & expected),
        "missing": len(expected - got),
        "duplicates": len(offsets) - len(got),
        "relay_cpu_s": relay_cpu,
        "relay_cpu_ms_per_event": relay_cpu * 1000 / total,
        "relay_cpu_share_of_one_core": relay_cpu / seconds,
        "gateway_cpu_s_incl_generation": gw_cpu,
        "sink_cpu_s": sink_cpu,
        "max_concurrent_subscribed": max(r["max_concurrent_subscribed"] for r in report.values()),
        "relay_exit": code,
        # checkpoints (UpdateItem, one per chain per second while it moves), renewals, fallback marks
        "dynamodb_requests": {op: int(row["n"]) for op, row in requests.items()},
        "dynamodb_requests_per_s": sum(row["n"] for row in requests.values()) / seconds,
    }
    if profile is not None:
        result["profile"] = profile
    say(
        f"busy, {k} chain{'s' if k > 1 else ''}: {result['rate']:,.0f} events/s to the sink "
        f"({total:,} events, {per_chain:,} per chain), "
        f"{result['relay_cpu_ms_per_event']:.2f} ms relay CPU per event "
        f"({result['relay_cpu_share_of_one_core']:.0%} of a core), {result['missing']} missing, "
        f"{result['dynamodb_requests_per_s']:.0f} DynamoDB requests/s"
    )
    return result


def run_throughput(moto_srv: Moto, snk: Sink, k: int, events: int, rounds: int) -> dict[str, Any]:
    """`rounds` pairs of runs, 1 chain then `k`, taken in turn: this machine's speed drifts (others
    use it), and alternating spreads the drift over both. CPU per event drifts far less than events/s."""
    one: list[dict[str, Any]] = []
    many: list[dict[str, Any]] = []
    for _ in range(rounds):
        one.append(run_busy(moto_srv, snk, 1, events))
        many.append(run_busy(moto_srv, snk, k, events))

    def mean(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.fmean(r[key] for r in runs)

    summary = {
        name: {
            "chains": runs[0]["chains"],
            "rate": mean(runs, "rate"),
            "relay_cpu_ms_per_event": mean(runs, "relay_cpu_ms_per_event"),
            "relay_cpu_share_of_one_core": mean(runs, "relay_cpu_share_of_one_core"),
            "missing": sum(r["missing"] for r in runs),
            "max_concurrent_subscribed": max(r["max_concurrent_subscribed"] for r in runs),
        }
        for name, runs in (("one", one), ("many", many))
    }
    s1, sk = summary["one"], summary["many"]
    return {
        "offered": "the same total backlog, split evenly; every chain reads at its maximum",
        "rounds": rounds,
        "one": s1,
        "many": sk,
        "runs": {"one": one, "many": many},
        "ratio": sk["rate"] / s1["rate"],
        "cpu_per_event_ratio": sk["relay_cpu_ms_per_event"] / s1["relay_cpu_ms_per_event"],
        "capacity_ratio": s1["relay_cpu_ms_per_event"] / sk["relay_cpu_ms_per_event"],
    }


# -- 3. dead task move time -----------------------------------------------------------------------


def run_move(moto_srv: Moto, snk: Sink, m: int) -> dict[str, Any]:
    with fleet_gateway(2, m // 2) as gw:
        chains = [chain for _, chain in gw.chains]
        fleet = Fleet.create(moto_srv.url, "bench-move", gw, chains)
        started = time.time()
        argv = [PY, "-m", "ohip_relay.cli", "stream"]
        with (
            child("relay-a", argv, fleet.env(snk.url, "move-a"), log_stderr=True) as a,
            child("relay-b", argv, fleet.env(snk.url, "move-b"), log_stderr=True) as b,
        ):

            def balanced() -> bool:
                records = fleet.workers().values()
                held = connected(records)
                per = [sum(1 for w in held.values() if w == r.worker) for r in records]
                return len(held) == m and len(per) == 2 and max(per) - min(per) <= 1

            balanced_at = wait_until("two balanced relays", balanced, timeout=m * 3 + 240, alive=(a, b))
            say(f"move: {m} chains balanced over two relays {balanced_at - started:.0f} s after the start")
            records = fleet.workers()
            # relay-a dies: its worker id carries its pid (host-pid-nonce, scheduler.new_worker_id).
            victim_worker = next(w for w in records if int(w.rsplit("-", 2)[-2]) == a.pid)
            survivor_worker = next(w for w in records if w != victim_worker)
            moving = {c for c, w in connected(records.values()).items() if w == victim_worker}
            killed_at = time.time()
            os.kill(a.pid, signal.SIGKILL)
            a.proc.wait(10)
            say(f"move: relay-a (holding {len(moving)} chains) killed")

            def moved() -> bool:
                rec = fleet.workers().get(survivor_worker)
                return rec is not None and moving <= {
                    c for c, s in rec.chains.items() if s.state == CONNECTED
                }

            moved_at = wait_until(
                "the dead relay's chains connected elsewhere", moved, timeout=300, every=0.5, alive=(b,)
            )
            taken = {c: t for c, t in log_times(b, TAKEN, killed_at).items() if c in moving}
            subscribed = {c: t for c, t in log_times(b, SUBSCRIBED, killed_at).items() if c in moving}
            report = gw.connections()
            b.stop(120)
    result = {
        "chains": m,
        "moved": len(moving),
        "lease_seconds": 30.0,
        "balanced_after_start_s": balanced_at - started,
        "worker_item_all_connected_s": moved_at - killed_at,
        "first_taken_s": min(taken.values()) - killed_at if taken else None,
        "last_taken_s": max(taken.values()) - killed_at if len(taken) == len(moving) else None,
        "last_subscribed_s": max(subscribed.values()) - killed_at if len(subscribed) == len(moving) else None,
        "design_s": DESIGN_MOVE_SECONDS,
        "max_concurrent_subscribed": max(r["max_concurrent_subscribed"] for r in report.values()),
        "refusals_4409": sum(r["refusals_4409"] for r in report.values()),
    }
    say(
        f"move: {len(moving)} chains of the killed relay taken {result['first_taken_s'] or 0:.0f}-"
        f"{result['last_taken_s'] or 0:.0f} s after the kill, all subscribed after "
        f"{result['last_subscribed_s'] or 0:.0f} s "
        f"(worker item: {result['worker_item_all_connected_s']:.0f} s)"
    )
    return result


# -- report -------------------------------------------------------------------------------------


def profile_lines(title: str, profile: dict[str, Any] | None, top: int = 12) -> list[str]:
    """A py-spy summary (bench.run.summarise_profile) as report lines."""
    if not profile or not profile.get("busy_samples"):
        return []
    lines = [f"     {title} (py-spy, share of busy samples; stacks in {profile['file']})"]
    lines.append("       by thread: " + ", ".join(f"{k} {v:.0%}" for k, v in profile["by_thread"].items()))
    lines += [f"       {share:6.1%}  {name}" for name, share in profile["by_area_self"].items()]
    lines.append("       by function, inclusive:")
    ranked = list(profile["top_functions_inclusive"].items())[:top]
    lines += [f"       {share:6.1%}  {name}" for name, share in ranked]
    return lines


def print_report(results: dict[str, Any]) -> None:
    lines = [
        "",
        f"ohip-relay fleet benchmark, {results['started']} (scale {results['scale']}, "
        f"{results['cpus']} CPUs, load {results['load_before']} -> {results['load_after']})",
    ]
    idle = results.get("idle")
    if idle:
        p, r, b = idle["per_chain"], idle["relay"], idle["baseline"]
        d = p["dynamodb"]
        lines += [
            "",
            f"  1. idle sessions: {idle['chains']} chains in one relay, "
            f"{idle['window_s']:.0f} s without events",
            f"     taking them all: last taken {idle['take']['last_taken_s']:.0f} s, last subscribed "
            f"{idle['take']['last_subscribed_s']:.0f} s after the start (10 takes per pass every 10 s)",
            f"     relay:    RSS {r['rss_mib']:.1f} MiB, USS {r['uss_mib']:.1f} MiB, CPU "
            f"{r['cpu_share_of_one_core']:.2%} of a core",
            f"     baseline: RSS {b['rss_mib']:.1f} MiB, USS {b['uss_mib']:.1f} MiB, CPU "
            f"{b['cpu_share_of_one_core']:.2%} of a core (empty registry)",
            f"     per idle chain: RSS {p['rss_mib'] * 1024:.0f} KiB, USS {p['uss_mib'] * 1024:.0f} KiB, CPU "
            f"{p['cpu_share_of_one_vcpu']:.4%} of a vCPU ({p['cpu_ms_per_s']:.3f} ms/s)",
            f"     a {TASK_VCPU:g} vCPU / {TASK_MEMORY_MIB / 1024:g} GB task with {HEADROOM:.0%} headroom "
            f"holds {p['chains_per_task_by_memory']:,.0f} idle chains by memory, "
            f"{p['chains_per_task_by_cpu']:,.0f} by CPU",
            f"     at {idle['chains']}: {p['at_n']['share_of_task_memory']:.0%} of the task's memory, "
            f"{p['at_n']['cpu_share_of_task']:.0%} of its CPU",
            f"     DynamoDB: {d['relay_requests_per_s']:.1f} requests/s ({d['relay_wru_per_s']:.1f} WRU/s, "
            f"{d['relay_rru_per_s']:.1f} RRU/s); ${d['usd_per_chain_month']:.3f} per idle chain-month "
            f"(design: ${d['design_estimate_usd_per_chain_month']:.3f}), "
            f"${d['usd_per_task_month_fixed']:.2f} per task-month fixed",
        ]
        for op, row in d["by_operation"].items():
            lines.append(
                f"       {op:18} {row['requests_per_chain_per_s'] * 10:7.3f} per chain per 10 s   "
                f"${row['usd_per_chain_month']:.4f} per chain-month"
            )
        lines.append(
            f"     gateway: {idle['gateway_subscribed']} subscribed, most at once per chain "
            f"{idle['max_concurrent_subscribed']}, 4409s {idle['refusals_4409']}"
        )
        lines += profile_lines("idle relay", idle.get("profile"))
    tp = results.get("throughput")
    if tp:
        one, many = tp["one"], tp["many"]
        lines += [
            "",
            f"  2. aggregate throughput ({tp['offered']})",
            f"     1 chain:   {one['rate']:8,.0f} events/s, {one['relay_cpu_ms_per_event']:.3f} ms relay CPU "
            f"per event ({one['relay_cpu_share_of_one_core']:.0%} of a core), {one['missing']} missing",
            f"     {many['chains']} chains: {many['rate']:8,.0f} events/s, "
            f"{many['relay_cpu_ms_per_event']:.3f} ms relay CPU per event "
            f"({many['relay_cpu_share_of_one_core']:.0%} of a core), {many['missing']} missing",
            f"     means of {tp['rounds']} runs each, taken in turn; ratio {tp['ratio']:.2f} "
            f"(target: no loss, 1.0); CPU per event x{tp['cpu_per_event_ratio']:.2f}, events per CPU-second "
            f"x{tp['capacity_ratio']:.2f}",
        ]
        for name in ("one", "many"):
            run = tp["runs"][name][0]
            lines += profile_lines(f"relay with {run['chains']} busy chains", run.get("profile"))
    mv = results.get("move")
    if mv:
        lines += [
            "",
            f"  3. dead task: {mv['moved']} of {mv['chains']} chains on the killed relay "
            f"(lease {mv['lease_seconds']:.0f} s)",
            f"     taken {mv['first_taken_s'] or 0:.0f}-{mv['last_taken_s'] or 0:.0f} s after the kill, all "
            f"subscribed {mv['last_subscribed_s'] or 0:.0f} s, in the survivor's worker item "
            f"{mv['worker_item_all_connected_s']:.0f} s (design: D + P = {mv['design_s']:.0f} s)",
            f"     most at once per chain {mv['max_concurrent_subscribed']}, 4409s {mv['refusals_4409']}",
        ]
    print("\n".join(lines) + "\n", flush=True)


def save(results: dict[str, Any]) -> Path:
    """Write what was measured so far (a later part that fails keeps the earlier ones)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "fleet.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    return out


def main(argv: list[str]) -> int:
    if argv[1:2] == ["moto"]:
        serve_moto()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the sizes (as BENCH_SCALE=0.2)")
    parser.add_argument(
        "--only", default="idle,throughput,move", help="comma-separated: idle, throughput, move"
    )
    parser.add_argument("--idle-chains", type=int, help="chains of the idle run (default 200 x scale)")
    parser.add_argument(
        "--window", type=float, help="seconds of the idle window (default 60 x scale, at least 20)"
    )
    args = parser.parse_args(argv[1:])
    k = 0.2 if args.quick else scale()
    idle_n = args.idle_chains or max(10, 2 * round(100 * k))
    window = args.window or max(20.0, 60.0 * k)
    busy = max(5, round(50 * k))
    events = max(10_000, int(100_000 * k))
    move = max(10, 2 * round(20 * k))
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    results: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scale": k,
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "relay": "ohip-relay stream, RELAY_FLEET=true, default timings "
            "(lease 30 s, renewals and passes every 10 s)",
            "dynamodb": "moto, IAM not enforced, requests counted at the server",
            "sqs": "bench sink",
        },
    }
    say(
        f"scale {k}: idle {idle_n} chains / {window:g} s window, busy {busy} chains / {events:,} events, "
        f"move {move} chains; load {results['load_before']}"
    )
    t0 = time.perf_counter()
    with moto() as moto_srv, sink() as snk:
        if "idle" in parts:
            results["idle"] = run_idle(moto_srv, snk, idle_n, window)
            save(results)
        if "throughput" in parts:
            results["throughput"] = run_throughput(moto_srv, snk, busy, events, 1 if k < 0.5 else 2)
            save(results)
        if "move" in parts:
            results["move"] = run_move(moto_srv, snk, move)
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["duration_s"] = time.perf_counter() - t0
    out = save(results)
    print_report(results)
    say(f"done in {results['duration_s']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
