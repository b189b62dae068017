"""`make bench`: ohip-relay's throughput, latency, memory and catch-up on this machine, side by side
with a bare WebSocket reader (the limit) and a naive consumer.

Every moving part is its own process, as in production, so that no two share a GIL:

    gateway   bench/gateway_proc.py   the local OHIP gateway (ohip_local), one per scenario
    sink      bench/sqs_sink.py       acknowledges SQS SendMessageBatch/SendMessage, timestamps each message
    moto      moto_server             DynamoDB (the relay's checkpoint, lease, heartbeat, seen-set) and S3
    relay     ohip-relay stream       the real command, configured from the environment
    raw/naive bench/clients.py        the reference clients

moto's SQS slows down as its queue grows, so SQS throughput and latency figures use the sink; a
small functional run against moto alone is reported separately. Results: bench/results/latest.json
and bench/results/latest.png (earlier runs: git history).

    BENCH_SCALE=0.2 .venv/bin/python -m bench.run     # a smaller, quicker run (default 1.0)
    BENCH_PROFILE=1 .venv/bin/python -m bench.run     # also sample the relay with py-spy during the replay
    BENCH_RESULTS=/tmp/b .venv/bin/python -m bench.run    # results elsewhere (default bench/results)

Nothing here asserts a speed: the figures are printed, stored and compared with the targets.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx

from ohip_local.aws import DEFAULT_REGION, LOCAL_CREDENTIALS, ProvisionedStack, provision
from ohip_relay.state import StateStore

ROOT = Path(__file__).resolve().parent.parent
# BENCH_RESULTS=/some/dir keeps a trial run from replacing the results the README quotes
RESULTS = Path(os.environ.get("BENCH_RESULTS") or ROOT / "bench" / "results")
TEMPLATE = ROOT / "template.yaml"
PY = sys.executable
# BENCH_PROFILE=1 writes the relay's collapsed stacks here (large; not a result to keep)
PROFILE = Path(tempfile.gettempdir()) / "ohip-relay-bench" / "relay-profile.txt"
ACCOUNT = "123456789012"

# What `ohip-relay stream` logs once it has sent its subscribe message (both start positions).
SUBSCRIBED = "subscribed to chain"

TARGETS = {
    "relay_vs_raw_min": 0.5,
    "relay_vs_naive_min": 10.0,
    "p99_ms_at_1000_max": 50.0,
    "rss_mib_max": 150.0,
}


def scale() -> float:
    try:
        value = float(os.environ.get("BENCH_SCALE", "1"))
    except ValueError:
        raise SystemExit("BENCH_SCALE must be a number (1 = the full run, 0.2 = a fifth)") from None
    if not 0.01 <= value <= 10:
        raise SystemExit("BENCH_SCALE must be between 0.01 and 10")
    return value


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- processes ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:g}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident set size) of a live process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Child:
    """A child process whose stdin is a pipe (closing it, or our death, stops the well-behaved ones)."""

    name: str
    proc: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @classmethod
    def start(
        cls, name: str, argv: list[str], env: dict[str, str] | None = None, *, log_stderr: bool = False
    ) -> Child:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and scripts
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if log_stderr else subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        child = cls(name, proc)
        if log_stderr:
            assert proc.stderr is not None
            child._reader = threading.Thread(target=child._read, args=(proc.stderr,), daemon=True)
            child._reader.start()
        return child

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append((time.time(), line.rstrip("\n")))

    def first_line_time(self, text: str) -> float | None:
        return next((t for t, line in list(self.lines) if text in line), None)

    def wait_line(self, text: str, timeout: float) -> float:
        """When the child's stderr first had a line containing `text` (polled, with a deadline)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            at = self.first_line_time(text)
            if at is not None:
                return at
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        tail = "\n".join(line for _, line in self.lines[-20:])
        raise RuntimeError(f"{self.name} never logged {text!r} (exit {self.proc.poll()}):\n{tail}")

    def readline(self, timeout: float = 30.0) -> str:
        stdout = self.proc.stdout
        assert stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(f"{self.name} printed nothing (exit {self.proc.poll()})")
        return result[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode


@contextlib.contextmanager
def child(
    name: str, argv: list[str], env: dict[str, str] | None = None, *, log_stderr: bool = False
) -> Iterator[Child]:
    c = Child.start(name, argv, env, log_stderr=log_stderr)
    try:
        yield c
    finally:
        c.stop()


def profiling() -> bool:
    """BENCH_PROFILE=1: sample the relay with py-spy during the replay (it perturbs the figures a little)."""
    return os.environ.get("BENCH_PROFILE", "") not in ("", "0")


_LINE = re.compile(r":\d+\)$")
# Leaf frames of a thread that waits (py-spy's idle detection misses some of them in a VM).
_WAITING = (
    "_worker (concurrent/futures/thread.py",
    "select (selectors.py",
    "readinto (socket.py",
    "do_poll (",
)
# Frames on every stack of a thread (entry points, the event loop, the pool): no information.
_WRAPPERS = ("<frozen runpy>", "asyncio/", "threading.py", "concurrent/futures/", "ohip_relay/cli.py")
# Where a busy sample's innermost frame is, by package: the CPU split of the process.
_AREAS = (
    ("ohip_relay/", "ohip-relay code"),
    ("botocore/", "botocore"),
    ("urllib3/", "HTTP (urllib3, http.client, ssl, socket)"),
    ("http/", "HTTP (urllib3, http.client, ssl, socket)"),
    ("socket.py", "HTTP (urllib3, http.client, ssl, socket)"),
    ("json/", "json"),
    ("websockets/", "websockets"),
    ("asyncio/", "asyncio machinery"),
    ("concurrent/", "thread pool hand-offs"),
    ("threading.py", "thread pool hand-offs"),
    ("queue.py", "thread pool hand-offs"),
)


class Profiler:
    """py-spy attached to a running process, writing collapsed stacks ("raw" format) to `path`."""

    def __init__(self, proc: subprocess.Popen[bytes], path: Path) -> None:
        self.proc = proc
        self.path = path

    @classmethod
    def attach(cls, pid: int, path: Path) -> Profiler | None:
        spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
        if spy is None:
            say("BENCH_PROFILE: py-spy is not installed (make bench installs it); not profiling")
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "100", "--threads"]
        argv += ["--nonblocking", "-o", str(path)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        return cls(proc, path)

    def finish(self) -> dict[str, Any]:
        """Stop sampling and summarise what the process was busy with."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return summarise_profile(self.path)


def _area(frame: str) -> str:
    return next((name for marker, name in _AREAS if marker in frame), "other")


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Shares of the busy samples (waiting leaves dropped): by thread, by the package of the
    innermost frame, and by function (inclusive, entry points and the event loop left out)."""
    threads: dict[str, int] = {}
    areas: dict[str, int] = {}
    functions: dict[str, int] = {}
    busy = 0
    try:
        text = path.read_text()
    except OSError:
        return {"error": f"py-spy wrote no profile to {path}"}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or len(frames) < 2 or any(w in frames[-1] for w in _WAITING):
            continue
        n = int(count)
        busy += n
        name = frames[0].partition(": ")[2].rstrip("_0123456789") or "unnamed"
        threads[name] = threads.get(name, 0) + n
        area = _area(frames[-1])
        areas[area] = areas.get(area, 0) + n
        for frame in {_LINE.sub(")", f) for f in frames[1:]}:
            if not any(w in frame for w in _WRAPPERS):
                functions[frame] = functions.get(frame, 0) + n

    def share(counts: dict[str, int], limit: int) -> dict[str, float]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
        return {k: round(v / busy, 3) for k, v in ranked}

    return {
        "file": str(path),
        "busy_samples": busy,
        "by_thread": share(threads, 10) if busy else {},
        "by_area_self": share(areas, 12) if busy else {},
        "top_functions_inclusive": share(functions, top) if busy else {},
    }


@contextlib.contextmanager
def moto() -> Iterator[str]:
    port = _free_port()
    binary = str(Path(PY).with_name("moto_server"))
    with child("moto", [binary, "-H", "127.0.0.1", "-p", str(port)]) as c:
        _wait_port(port)
        yield f"http://127.0.0.1:{port}"
        say(f"moto used {cpu_seconds(c.pid):.1f} s of CPU")


@dataclass
class Sink:
    url: str
    pid: int

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/_bench/stats", trust_env=False).json())

    def reset(self) -> None:
        httpx.post(self.url + "/_bench/reset", trust_env=False).raise_for_status()

    def records(self) -> tuple[list[float], list[int]]:
        data = httpx.get(self.url + "/_bench/records", trust_env=False, timeout=60).json()
        return data["t"], data["offset"]

    def wait_for(self, count: int, timeout: float, *, alive: Child | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()["messages"] >= count:
                return True
            if alive is not None and alive.proc.poll() is not None:
                return False
            # the sink timestamps each message itself: polling more often would only cost CPU
            time.sleep(0.2)
        return False


@contextlib.contextmanager
def sink() -> Iterator[Sink]:
    with child("sink", [PY, "-m", "bench.sqs_sink", "--port", "0"]) as c:
        url = c.readline().split()[-1]
        yield Sink(url, c.pid)


@dataclass
class Gateway:
    info: dict[str, Any]
    pid: int

    @property
    def control(self) -> str:
        return str(self.info["control_url"])

    def emit(self, count: int, rate: float = 0.0) -> dict[str, Any]:
        """Append `count` events (`rate` per second, 0: at once), in chunks the control interface allows."""
        first = last = None
        left = count
        while left > 0:
            n = min(left, 100_000)
            out = httpx.post(
                self.control + "/emit",
                json={"count": n, "rate": rate, "wait": True},
                trust_env=False,
                timeout=max(60.0, n / rate * 2 if rate else 60.0),
            ).json()
            first = out["first_offset"] if first is None else first
            last = out["last_offset"]
            left -= n
        return {"first_offset": first, "last_offset": last}

    def state(self) -> dict[str, Any]:
        return dict(httpx.get(self.control + "/state", trust_env=False).json())

    def created(self, first: int, last: int) -> dict[int, float]:
        data = httpx.get(
            self.info["bench_url"] + "/bench/created",
            params={"first": first, "last": last},
            trust_env=False,
            timeout=60,
        ).json()
        return dict(zip(data["offset"], data["created_at"], strict=True))

    def wait_subscribed(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state()["streaming"]["sessions"]:
                return
            time.sleep(0.05)
        raise RuntimeError("the relay did not subscribe")


@contextlib.contextmanager
def gateway(chain: str = "BENCH") -> Iterator[Gateway]:
    with child(f"gateway-{chain}", [PY, "-m", "bench.gateway_proc", "--chain", chain]) as c:
        yield Gateway(json.loads(c.readline()), c.pid)


# -- the relay -----------------------------------------------------------------------------------


def relay_env(
    gw: Gateway, stack: ProvisionedStack, sqs_endpoint: str, moto_url: str, queue_url: str, **extra: str
) -> dict[str, str]:
    """`ohip-relay` settings: SQS at `sqs_endpoint` (the sink or moto), DynamoDB and S3 at moto."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    info = gw.info
    env.update(
        {
            "OHIP_GATEWAY_URL": info["url"],
            "OHIP_CLIENT_ID": info["client_id"],
            "OHIP_CLIENT_SECRET": info["client_secret"],
            "OHIP_APP_KEY": info["app_key"],
            "OHIP_ENTERPRISE_ID": info["enterprise_id"],
            "OHIP_CHAIN_CODE": info["chain"],
            "OHIP_EXTERNAL_SYSTEM": info["external_system"],
            "RELAY_QUEUE_URL": queue_url,
            "RELAY_TABLE_NAME": stack.table_name,
            "RELAY_BUCKET_NAME": stack.bucket_name,
            "AWS_REGION": stack.region,
            "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
            "AWS_EC2_METADATA_DISABLED": "true",
            # Service-specific endpoints (botocore reads them when no endpoint_url is passed, i.e.
            # with AWS_ENDPOINT_URL unset): SQS to the sink, the rest to moto.
            "AWS_ENDPOINT_URL_SQS": sqs_endpoint,
            "AWS_ENDPOINT_URL_DYNAMODB": moto_url,
            "AWS_ENDPOINT_URL_S3": moto_url,
        }
    )
    env.update(extra)
    return env


def sink_queue(sink_url: str) -> str:
    # The template's default queue type is FIFO; the URL's suffix is what makes the relay treat it so.
    return f"{sink_url}/{ACCOUNT}/ohip-relay-bench.fifo"


def state_store(stack: ProvisionedStack, chain: str) -> StateStore:
    client = boto3.client(
        "dynamodb",
        endpoint_url=stack.endpoint_url,
        region_name=stack.region,
        aws_access_key_id=LOCAL_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=LOCAL_CREDENTIALS["aws_secret_access_key"],
    )
    return StateStore(client, stack.table_name, chain)


def wait_checkpoint(store: StateStore, offset: int, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checkpoint = store.get_checkpoint()
        if checkpoint is not None and checkpoint.offset >= offset:
            return time.time()
        time.sleep(0.05)
    return None


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- scenarios -------------------------------------------------------------------------------------


def run_throughput(moto_url: str, snk: Sink, n: int, naive_seconds: float) -> dict[str, Any]:
    """One gateway holding a backlog of `n` events; the raw reader, ohip-relay and the naive consumer
    each read it from the start (the same stream), one after the other."""
    out: dict[str, Any] = {"backlog": n}
    with gateway() as gw:
        t = time.perf_counter()
        offsets = gw.emit(n)
        first_offset, last_offset = offsets["first_offset"], offsets["last_offset"]
        say(f"gateway holds {n} events ({time.perf_counter() - t:.1f} s to generate)")

        # 1. raw receive rate: the limit
        cpu0 = cpu_seconds(gw.pid)
        with child(
            "raw", [PY, "-m", "bench.clients", "raw", "--gateway", json.dumps(gw.info), "--count", str(n)]
        ) as c:
            raw = json.loads(c.readline(timeout=600))
            raw["gateway_cpu_s"] = cpu_seconds(gw.pid) - cpu0
        raw["seconds"] = raw["last_at"] - raw["subscribed_at"]
        out["raw"] = raw
        say(
            f"raw websockets reader: {raw['rate']:,.0f} frames/s ({n} frames in {raw['seconds']:.2f} s, "
            f"{raw['cpu_s'] * 1000 / n:.3f} ms CPU per frame in the reader)"
        )

        # 2. ohip-relay end to end: frames in -> SQS acknowledged (sink) -> checkpointed (DynamoDB)
        stack = provision(moto_url, TEMPLATE, stack_name=f"bench-e2e-{os.getpid()}", region=DEFAULT_REGION)
        snk.reset()
        env = relay_env(gw, stack, snk.url, moto_url, sink_queue(snk.url), RELAY_START_POSITION="earliest")
        cpu_gw0, cpu_sink0 = cpu_seconds(gw.pid), cpu_seconds(snk.pid)
        started = time.time()
        with child("relay", [PY, "-m", "ohip_relay.cli", "stream"], env, log_stderr=True) as relay:
            relay.wait_line(SUBSCRIBED, timeout=120.0)
            # CPU from here on is the streaming work only (not the interpreter's start and imports)
            relay_cpu0 = cpu_seconds(relay.pid)
            profiler = Profiler.attach(relay.pid, PROFILE) if profiling() else None
            # generous: a loaded machine may run at a small fraction of its quiet rate
            complete = snk.wait_for(n, timeout=120.0 + n / 50, alive=relay)
            acked_at = time.time()
            if profiler is not None:
                out["profile"] = profiler.finish()
            checkpointed_at = (
                wait_checkpoint(state_store(stack, gw.info["chain"]), last_offset, 30.0) if complete else None
            )
            rss = peak_rss_mib(relay.pid)
            relay_cpu = cpu_seconds(relay.pid) - relay_cpu0
            gw_cpu, sink_cpu = cpu_seconds(gw.pid) - cpu_gw0, cpu_seconds(snk.pid) - cpu_sink0
            stopped = time.time()
            code = relay.stop()
            stop_seconds = time.time() - stopped
        if not complete:
            tail = "\n".join(line for _, line in relay.lines[-20:])
            raise RuntimeError(f"the relay did not deliver {n} events (exit {code}):\n{tail}")
        subscribed_at = relay.first_line_time(SUBSCRIBED) or started
        times, got = snk.records()
        stats = snk.stats()
        distinct = len(set(got))
        relay_out = {
            "events": n,
            "process_started_at": started,
            "subscribed_at": subscribed_at,
            "first_ack_at": times[0],
            "last_ack_at": max(times),
            "ack_seconds": max(times) - subscribed_at,
            "acked_rate": n / (max(times) - subscribed_at),
            "checkpointed_at": checkpointed_at,
            "checkpoint_lag_after_last_ack_s": (checkpointed_at - max(times)) if checkpointed_at else None,
            "seconds": (checkpointed_at - subscribed_at) if checkpointed_at else None,
            "rate": n / (checkpointed_at - subscribed_at) if checkpointed_at else None,
            "messages_received_by_sink": len(got),
            "distinct_offsets": distinct,
            "all_offsets_present": set(range(first_offset, last_offset + 1)) <= set(got),
            "sink_requests": stats["requests"],
            "peak_rss_mib": rss,
            "relay_cpu_s": relay_cpu,
            "relay_cpu_ms_per_event": relay_cpu * 1000 / n,
            "relay_cpu_share_of_one_core": relay_cpu / max(1e-9, acked_at - subscribed_at),
            "gateway_cpu_s": gw_cpu,
            "sink_cpu_s": sink_cpu,
            "wall_s": acked_at - started,
            "startup_s": subscribed_at - started,
            "exit_code": code,
            "stop_seconds": stop_seconds,
        }
        out["relay"] = relay_out
        rate = relay_out["rate"]
        say(
            f"ohip-relay: {relay_out['acked_rate']:,.0f} events/s acknowledged, {rate:,.0f} events/s to "
            f"the checkpoint ({n} events, checkpoint {relay_out['checkpoint_lag_after_last_ack_s']:.2f} s "
            f"after the last ack), {relay_out['relay_cpu_ms_per_event']:.2f} ms CPU per event "
            f"({relay_out['relay_cpu_share_of_one_core']:.0%} of a core), peak RSS {rss:.0f} MiB, exit {code}"
        )

        # 3. the naive consumer, with its checkpoint PutItem on moto, then on the sink
        out["naive"] = {}
        for where, ddb in (("moto", moto_url), ("sink", snk.url)):
            snk.reset()
            stack_n = provision(
                moto_url, TEMPLATE, stack_name=f"bench-naive-{where}-{os.getpid()}", region=DEFAULT_REGION
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
            env.update(
                AWS_ENDPOINT_URL_SQS=snk.url,
                AWS_ENDPOINT_URL_DYNAMODB=ddb,
                AWS_REGION=DEFAULT_REGION,
                AWS_DEFAULT_REGION=DEFAULT_REGION,
                AWS_EC2_METADATA_DISABLED="true",
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106
            )
            argv = [
                PY,
                "-m",
                "bench.clients",
                "naive",
                "--gateway",
                json.dumps(gw.info),
                "--count",
                str(n),
                "--seconds",
                str(naive_seconds),
                "--queue-url",
                sink_queue(snk.url),
                "--table",
                stack_n.table_name,
            ]
            with child("naive", argv, env) as c:
                result = json.loads(c.readline(timeout=naive_seconds + 120))
            result["sink_messages"] = snk.stats()["messages"]
            out["naive"][f"checkpoint_on_{where}"] = result
            say(
                f"naive consumer (checkpoint PutItem on {where}): {result['rate']:,.0f} events/s "
                f"over {result['seconds']:.1f} s"
            )
    return out


def run_latency(moto_url: str, snk: Sink, rates: list[int], seconds: float) -> dict[str, Any]:
    """The relay subscribed live ("latest"); the gateway emits at a fixed rate; emit time (the
    gateway's StoredEvent.created_at) to the sink's receive time, per event."""
    out: dict[str, Any] = {}
    with gateway("LIVE") as gw:
        stack = provision(moto_url, TEMPLATE, stack_name=f"bench-live-{os.getpid()}", region=DEFAULT_REGION)
        snk.reset()
        env = relay_env(gw, stack, snk.url, moto_url, sink_queue(snk.url))
        with child("relay", [PY, "-m", "ohip_relay.cli", "stream"], env, log_stderr=True) as relay:
            gw.wait_subscribed()
            relay.wait_line(SUBSCRIBED, timeout=60.0)
            # warm-up: the first event of a fresh relay anchors its checkpoint (a DynamoDB write)
            gw.emit(1)
            if not snk.wait_for(1, timeout=60.0, alive=relay):
                raise RuntimeError("latency run: the warm-up event did not reach the sink")
            for rate in rates:
                count = max(50, int(rate * seconds))
                snk.reset()
                cpu0 = cpu_seconds(relay.pid)
                t0 = time.time()
                offsets = gw.emit(count, rate=rate)
                emit_s = time.time() - t0
                if not snk.wait_for(count, timeout=60.0 + count / 50, alive=relay):
                    raise RuntimeError(f"latency run at {rate}/s: not every event reached the sink")
                cpu = cpu_seconds(relay.pid) - cpu0
                times, got = snk.records()
                created = gw.created(offsets["first_offset"], offsets["last_offset"])
                seen: dict[int, float] = {}
                for t, off in zip(times, got, strict=True):
                    if off in created and off not in seen:
                        seen[off] = t
                lat = [(seen[o] - created[o]) * 1000 for o in sorted(seen)]
                row = {
                    "rate": rate,
                    "events": count,
                    "emit_seconds": emit_s,
                    "achieved_emit_rate": count / emit_s,
                    "p50_ms": percentile(lat, 50),
                    "p90_ms": percentile(lat, 90),
                    "p99_ms": percentile(lat, 99),
                    "max_ms": max(lat),
                    "mean_ms": statistics.fmean(lat),
                    "relay_cpu_share_of_one_core": cpu / emit_s,
                    "sink_requests": snk.stats()["requests"],
                    "samples_ms": [round(x, 3) for x in lat[:: max(1, len(lat) // 2000)]],
                }
                out[str(rate)] = row
                say(
                    f"latency at {rate}/s ({count} events): p50 {row['p50_ms']:.1f} ms, "
                    f"p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.1f} ms; "
                    f"relay CPU {row['relay_cpu_share_of_one_core']:.0%} of a core"
                )
            out["peak_rss_mib"] = peak_rss_mib(relay.pid)
    return out


def run_fallback(moto_url: str, snk: Sink, n: int) -> dict[str, Any]:
    """One poll tick (fallback active: no heartbeat) draining `n` events from the Poll API to the sink."""
    from ohip_relay.config import Need, Settings
    from ohip_relay.fallback import _aws_clients, deadline_after, open_fallback
    from ohip_relay.telemetry import Telemetry

    with gateway("POLL") as gw:
        gw.emit(n)
        stack = provision(moto_url, TEMPLATE, stack_name=f"bench-poll-{os.getpid()}", region=DEFAULT_REGION)
        snk.reset()
        env = relay_env(gw, stack, snk.url, moto_url, sink_queue(snk.url))
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            settings = Settings.from_env(env, Need.OHIP, Need.POLL, Need.AWS)
            _aws_clients.cache_clear()
            with open_fallback(settings, Telemetry(service="poll")) as fallback:
                t0 = time.perf_counter()
                report = fallback.tick(deadline_after(600.0))
                seconds = time.perf_counter() - t0
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        result = {
            "events": n,
            "published": report.published,
            "pages": report.pages,
            "seconds": seconds,
            "rate": report.published / seconds,
            "ended": report.ended,
            "errors": report.errors,
            "sink_messages": snk.stats()["messages"],
        }
    say(
        f"poll fallback tick: {result['rate']:,.0f} events/s ({report.published} events, "
        f"{report.pages} pages, {seconds:.1f} s)"
    )
    return result


def run_functional_moto(moto_url: str, n: int) -> dict[str, Any]:
    """The relay against moto alone (SQS too): every event arrives; moto's rate, for the record."""
    from ohip_local.harness import QueueReader

    with gateway("FUNC") as gw:
        offsets = gw.emit(n)
        stack = provision(moto_url, TEMPLATE, stack_name=f"bench-func-{os.getpid()}", region=DEFAULT_REGION)
        env = relay_env(gw, stack, moto_url, moto_url, stack.queue_url, RELAY_START_POSITION="earliest")
        with QueueReader(stack.queue_url, endpoint_url=moto_url, region=stack.region) as reader:
            started = time.time()
            with child("relay", [PY, "-m", "ohip_relay.cli", "stream"], env, log_stderr=True) as relay:
                checkpointed_at = wait_checkpoint(
                    state_store(stack, gw.info["chain"]), offsets["last_offset"], 120.0
                )
                subscribed_at = relay.first_line_time(SUBSCRIBED) or started
                code = relay.stop()
            deadline = time.monotonic() + 30
            while reader.count() < n and time.monotonic() < deadline:
                time.sleep(0.1)
            delivered = reader.snapshot()
        got = delivered.offsets()
        expected = set(range(offsets["first_offset"], offsets["last_offset"] + 1))
        result = {
            "events": n,
            "delivered": len(got),
            "missing": len(expected - set(got)),
            "duplicates": len(got) - len(set(got)),
            "checkpointed": checkpointed_at is not None,
            "seconds_to_checkpoint": (checkpointed_at - subscribed_at) if checkpointed_at else None,
            "rate": n / (checkpointed_at - subscribed_at) if checkpointed_at else None,
            "exit_code": code,
        }
    say(
        f"functional run on moto: {result['delivered']}/{n} delivered, {result['missing']} missing, "
        f"{result['duplicates']} duplicates, {result['rate'] or 0:,.0f} events/s (moto-bound), exit {code}"
    )
    return result


# -- report --------------------------------------------------------------------------------------


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    tp, lat = results["throughput"], results["latency"]
    raw_rate = tp["raw"]["rate"]
    relay_rate = tp["relay"]["rate"] or 0.0
    naive_best = max(v["rate"] for v in tp["naive"].values())
    rss = max(x for x in (tp["relay"]["peak_rss_mib"], lat.get("peak_rss_mib")) if x is not None)
    p99 = lat["1000"]["p99_ms"] if "1000" in lat else float("nan")
    summary = {
        "raw_rate": raw_rate,
        "relay_rate": relay_rate,
        "relay_acked_rate": tp["relay"]["acked_rate"],
        "relay_cpu_ms_per_event": tp["relay"]["relay_cpu_ms_per_event"],
        "raw_cpu_ms_per_frame": tp["raw"]["cpu_s"] * 1000 / tp["raw"]["frames"],
        "naive_rate_checkpoint_on_moto": tp["naive"]["checkpoint_on_moto"]["rate"],
        "naive_rate_checkpoint_on_sink": tp["naive"]["checkpoint_on_sink"]["rate"],
        "relay_vs_raw": relay_rate / raw_rate,
        "relay_vs_naive": relay_rate / naive_best,
        "relay_vs_naive_note": "against the faster of the two naive runs (checkpoint on the sink)",
        "latency": {r: {k: lat[r][k] for k in ("p50_ms", "p99_ms", "max_ms")} for r in lat if r.isdigit()},
        "peak_rss_mib": rss,
        "catch_up": {
            "events": tp["backlog"],
            "seconds": tp["relay"]["seconds"],
            "rate": relay_rate,
        },
        "fallback_rate": results["fallback"]["rate"],
        "functional_moto": results["functional_moto"],
    }
    summary["cpu_budget"] = cpu_budget(results)
    summary["targets"] = {
        "relay_vs_raw >= 0.5": summary["relay_vs_raw"] >= TARGETS["relay_vs_raw_min"],
        "relay_vs_naive >= 10": summary["relay_vs_naive"] >= TARGETS["relay_vs_naive_min"],
        "p99 at 1000/s < 50 ms": p99 < TARGETS["p99_ms_at_1000_max"],
        "peak RSS < 150 MiB": rss < TARGETS["rss_mib_max"],
    }
    return summary


def task_vcpu() -> float:
    """The stream task's vCPUs in template.yaml (`Cpu: "256"` is a quarter of one)."""
    found = re.search(r'^\s+Cpu:\s*"?(\d+)', TEMPLATE.read_text(), re.MULTILINE)
    return int(found.group(1)) / 1024 if found else float("nan")


def cpu_budget(results: dict[str, Any]) -> dict[str, Any]:
    """What the measured CPU per event means: the relay's ceiling on one core, the CPU the whole
    bench needs at half the raw rate, and the rate the template's Fargate task can sustain (this
    machine's core taken for a Fargate vCPU: an estimate)."""
    tp = results["throughput"]
    relay, n = tp["relay"], tp["backlog"]
    ms = {
        "relay": relay["relay_cpu_ms_per_event"],
        "gateway": relay["gateway_cpu_s"] * 1000 / n,
        "sqs_endpoint": relay["sink_cpu_s"] * 1000 / n,
    }
    half_raw = tp["raw"]["rate"] / 2
    vcpu = task_vcpu()
    return {
        "cpu_ms_per_event": ms,
        "relay_one_core_ceiling_events_per_s": 1000 / ms["relay"],
        "half_raw_events_per_s": half_raw,
        "relay_cores_needed_at_half_raw": ms["relay"] * half_raw / 1000,
        "all_cores_needed_at_half_raw": sum(ms.values()) * half_raw / 1000,
        "cpus": results["cpus"],
        "task_vcpu": vcpu,
        "task_sustained_events_per_s_estimate": vcpu * 1000 / ms["relay"],
    }


def print_table(results: dict[str, Any]) -> None:
    s = results["summary"]
    raw_rate = s["raw_rate"]

    def row(name: str, rate: float) -> str:
        return f"  {name:40}{rate:>12,.0f}{rate / raw_rate:>10.2f}"

    fm = s["functional_moto"]
    cu = s["catch_up"]
    b = s["cpu_budget"]
    lines = [
        "",
        f"ohip-relay benchmark, {results['started']} (scale {results['scale']}, {results['cpus']} CPUs, "
        f"load {results['load_before']} -> {results['load_after']})",
        "",
        f"  {'':40}{'events/s':>12}{'vs raw':>10}",
        row("raw websockets reader (the limit)", raw_rate),
        row("ohip-relay, acked + checkpointed", s["relay_rate"]),
        row("ohip-relay, acked by SQS (sink)", s["relay_acked_rate"]),
        row("naive, checkpoint PutItem on moto", s["naive_rate_checkpoint_on_moto"]),
        row("naive, checkpoint PutItem on sink", s["naive_rate_checkpoint_on_sink"]),
        row("poll fallback tick (Poll API -> sink)", s["fallback_rate"]),
        "",
        f"  ohip-relay / naive: {s['relay_vs_naive']:.1f}x ({s['relay_vs_naive_note']})",
        f"  CPU per event: ohip-relay {s['relay_cpu_ms_per_event']:.2f} ms (all threads), "
        f"raw reader {s['raw_cpu_ms_per_frame']:.3f} ms",
    ]
    for rate, lat in s["latency"].items():
        lines.append(
            f"  emit -> SQS latency at {int(rate):>5}/s: p50 {lat['p50_ms']:7.1f} ms   "
            f"p99 {lat['p99_ms']:7.1f} ms   max {lat['max_ms']:7.1f} ms"
        )
    lines += [
        f"  peak RSS of the consumer: {s['peak_rss_mib']:.0f} MiB",
        f"  catch-up: {cu['events']:,} replayed events in {cu['seconds']:.1f} s ({cu['rate']:,.0f} events/s)",
        f"  functional run on moto (SQS too): {fm['delivered']}/{fm['events']} delivered, {fm['missing']} "
        f"missing, {fm['duplicates']} duplicates, {(fm['rate'] or 0):,.0f} events/s (moto-bound)",
        f"  CPU budget: one core (one interpreter) caps the relay at "
        f"{b['relay_one_core_ceiling_events_per_s']:,.0f} events/s; at half the raw rate",
        f"    ({b['half_raw_events_per_s']:,.0f}/s) the relay would need "
        f"{b['relay_cores_needed_at_half_raw']:.2f} cores, relay + gateway + SQS endpoint "
        f"{b['all_cores_needed_at_half_raw']:.2f} of {b['cpus']}",
        f"  the template's stream task ({b['task_vcpu']:g} vCPU) sustains about "
        f"{b['task_sustained_events_per_s_estimate']:,.0f} events/s (this machine's core taken for a vCPU)",
        "",
        "  targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in s["targets"].items()),
        "",
    ]
    profile = results["throughput"].get("profile")
    if profile and profile.get("busy_samples"):
        lines.append(f"  relay profile (py-spy, share of busy samples; stacks in {profile['file']})")
        lines.append("   by thread: " + ", ".join(f"{k} {v:.0%}" for k, v in profile["by_thread"].items()))
        lines.append("   by package of the innermost frame:")
        lines += [f"    {share:6.1%}  {name}" for name, share in profile["by_area_self"].items()]
        lines.append("   by function, inclusive:")
        lines += [f"    {share:6.1%}  {name}" for name, share in profile["top_functions_inclusive"].items()]
        lines.append("")
    print("\n".join(lines), flush=True)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.3, 1]})
    names = [
        "raw reader\n(limit)",
        "ohip-relay\nend to end",
        "naive\n(ckpt on sink)",
        "naive\n(ckpt on moto)",
        "poll fallback\ntick",
    ]
    values = [
        s["raw_rate"],
        s["relay_rate"],
        s["naive_rate_checkpoint_on_sink"],
        s["naive_rate_checkpoint_on_moto"],
        s["fallback_rate"],
    ]
    colours = ["#888888", "#1f77b4", "#d62728", "#ff9896", "#2ca02c"]
    bars = left.bar(names, values, color=colours)
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=2)
    left.set_ylabel("events/s")
    left.set_title(f"Throughput ({results['throughput']['backlog']:,}-event replay; SQS = bench sink)")
    for rate, row in sorted(results["latency"].items()):
        if not rate.isdigit():
            continue
        samples = sorted(row["samples_ms"])
        ys = [(i + 1) / len(samples) for i in range(len(samples))]
        right.plot(
            samples, ys, label=f"{int(rate)}/s: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"
        )
    right.axvline(
        TARGETS["p99_ms_at_1000_max"], color="red", linestyle="--", linewidth=1, label="p99 target 50 ms"
    )
    right.set_xscale("log")
    right.set_xlabel("emit -> SQS acknowledged (ms)")
    right.set_ylabel("fraction of events")
    right.set_title("Latency at fixed emit rates (CDF)")
    right.legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"ohip-relay bench {results['started']} - {results['cpus']} CPUs, load {results['load_before']}, "
        f"peak RSS {s['peak_rss_mib']:.0f} MiB",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    k = scale()
    backlog = max(2_000, int(100_000 * k))
    naive_seconds = max(3.0, 10.0 * k)
    latency_seconds = max(2.0, 10.0 * k)
    poll_events = max(500, int(5_000 * k))
    functional = max(100, int(300 * min(k, 1.0)))
    results: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scale": k,
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "queue": "FIFO (template default), bench sink",
            "dynamodb": "moto",
            "relay": "ohip-relay stream with default options",
        },
    }
    say(
        f"scale {k}: backlog {backlog:,}, naive {naive_seconds:g} s, latency {latency_seconds:g} s per rate, "
        f"poll {poll_events:,} events; load {results['load_before']}"
    )
    t0 = time.perf_counter()
    with moto() as moto_url, sink() as snk:
        results["throughput"] = run_throughput(moto_url, snk, backlog, naive_seconds)
        results["latency"] = run_latency(moto_url, snk, [100, 1000], latency_seconds)
        results["fallback"] = run_fallback(moto_url, snk, poll_events)
        results["functional_moto"] = run_functional_moto(moto_url, functional)
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["duration_s"] = time.perf_counter() - t0
    results["summary"] = summarise(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / "latest.json"
    latest.write_text(json.dumps(results, indent=1) + "\n")
    try:
        chart(results, RESULTS / "latest.png")
    except ImportError:
        say("matplotlib is not installed: no chart (make bench installs it)")
    print_table(results)
    say(f"done in {results['duration_s']:.0f} s; results in {latest} and latest.png beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
