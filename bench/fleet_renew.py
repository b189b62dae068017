"""The fleet's lease-renewal batch (`FleetStore.renew_many`): sequential or on a thread pool?

One conditional UpdateItem per held lease, every 10 s. What that costs a task, for n leases, with
the batch run on 1 (sequential), 4, 8 or 16 threads, against moto in a process of its own (so that
moto's work does not share this interpreter's lock), IAM not enforced (moto's policy checks are not
DynamoDB's work). moto on loopback answers in about a millisecond of its own work; a DynamoDB call
inside a region takes a few milliseconds of network and service time, which a botocore hook adds
here as a sleep per request (`--rtt-ms`, default 0 and 5).

Printed per configuration: the batch's wall time, and the client's CPU per renewal (this process's
CPU time over the batch divided by n: botocore's signing, serialising and parsing).

    .venv/bin/python -m bench.fleet_renew [leases...]        # default: 200 (1000: about 8 minutes)

Measured (1000 leases; best of 3 batches; moto answers one request at a time, about 5 ms each at
this table size, which bounds every pooled run):

| simulated round trip | 1 thread | 4 threads | 8 threads | 16 threads |
| --- | --- | --- | --- | --- |
| 0 ms (moto's own time) | 6.7 s | 6.1 s | 6.3 s | 5.3 s |
| 5 ms | 14.4 s | 5.8 s | 5.1 s | 6.7 s |

Client CPU: 1.6 to 2.3 ms per renewal whatever the threads (the interpreter's lock serialises it).
Choice: a pool of 8 (`fleet_state.DEFAULT_RENEW_WORKERS`, under botocore's 10 pooled connections).
Sequentially, the round trips add up: 1000 renewals at 5 ms exceed the 10 s renewal interval, and a
batch that runs late closes sessions (the lease keeper's `safe_until`). With 8 threads the round
trips overlap and the batch is bound by client CPU, about 1.7 s per 1000 leases: the per-task limit
docs/fleet-design.md section 7 names, which worker-scoped leases or a lean signed-HTTP client lift.
More threads only add contention.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from botocore.config import Config

from ohip_local.aws import local_client, provision
from ohip_relay.fleet_state import FleetStore

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
T0 = 1_764_000_000.0
THREADS = (1, 4, 8, 16)
RTTS_MS = (0.0, 5.0)

_SERVER = (
    "import sys\n"
    "from ohip_local.aws import moto_server\n"
    "with moto_server(enforce_iam=False) as endpoint:\n"
    "    print(endpoint, flush=True)\n"
    "    sys.stdin.read()\n"
)


@contextmanager
def moto_child() -> Iterator[str]:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def measure(leases: int, rtt_ms: float, threads: int, endpoint: str, table: str) -> dict[str, float]:
    ddb: Any = local_client("dynamodb", endpoint, config=Config(max_pool_connections=max(10, threads)))
    if rtt_ms:
        ddb.meta.events.register("before-send.dynamodb.*", lambda **_: time.sleep(rtt_ms / 1000))
    store = FleetStore(ddb, table, max_workers=threads)
    chains = [f"R{leases}-{i:05d}" for i in range(leases)]
    for chain in chains:
        if store.acquire(chain, "bench", T0, 30.0, None) is None:
            store.acquire(chain, "bench", T0, 30.0, store.read_leases([chain]).get(chain))
    store.renew_many(chains[:10], "bench", T0, 30.0)  # warm the connections
    best_wall, best_cpu = float("inf"), float("inf")
    for round_ in range(3):
        cpu, wall = time.process_time(), time.perf_counter()
        out = store.renew_many(chains, "bench", T0 + 1 + round_, 30.0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if sum(r.renewed for r in out.values()) != leases:
            raise SystemExit("a renewal was not renewed")
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
    return {
        "leases": leases,
        "rtt_ms": rtt_ms,
        "threads": threads,
        "wall_s": best_wall,
        "cpu_ms_per_renewal": best_cpu * 1000 / leases,
    }


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv[1:]] or [200]
    results: list[dict[str, float]] = []
    with moto_child() as endpoint:
        stack = provision(endpoint, TEMPLATE, stack_name="fleetrenew")
        print("renew_many: wall time of one batch, client CPU per renewal (moto in its own process)")
        print(f"{'leases':>7} {'rtt ms':>7} {'threads':>8} {'wall s':>8} {'cpu ms/renewal':>15}")
        for leases in sizes:
            for rtt in RTTS_MS:
                for threads in THREADS:
                    r = measure(leases, rtt, threads, endpoint, stack.table_name)
                    results.append(r)
                    print(
                        f"{leases:>7} {rtt:>7.1f} {threads:>8} {r['wall_s']:>8.3f} "
                        f"{r['cpu_ms_per_renewal']:>15.3f}"
                    )
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "fleet_renew.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
