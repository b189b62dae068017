"""The seen-set's cost per event, and what the stream pays when it does not need it.

Three numbers, each per event, against a DynamoDB endpoint (moto server on loopback here, so the
absolute times are moto's; on DynamoDB add the network round trip, which the threads amortise):

* `record`: the poll fallback's UpdateItem (ADD to the key's poll copies) per published event, a
  Poll API page (100) at a time, in parallel (8 threads), after SQS acknowledged the page;
* `match`: the stream's conditional UpdateItem per replayed event that occurred at or before the
  fallback's mark (one call per event: it takes one poll copy, "match once");
* `stream hot path`: the cost of the seen-set check for events newer than the fallback's mark,
  which is the check the stream does for every live event: a comparison, no request.

Request units per event (the DynamoDB bill) follow from the calls: one write unit per record and
one per match (a match whose condition fails is billed too), items under 1 KB.

    .venv/bin/python -m bench.seen_cost [events]       # default 1000
"""

from __future__ import annotations

import json
import sys
import time
import timeit
from pathlib import Path

from ohip_local.aws import local_client, moto_server, provision
from ohip_relay.seen import SeenSet

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"


def measure(events: int) -> dict[str, float]:
    # IAM not enforced: the cost of moto's signature and policy checks is not DynamoDB's
    # (docs/permissions.md, "The benchmarks").
    with moto_server(enforce_iam=False) as endpoint:
        stack = provision(endpoint, TEMPLATE, stack_name="seencost")
        ddb = local_client("dynamodb", endpoint)
        seen = SeenSet(ddb, stack.table_name)
        copies = [(f"bench-{i:08d}", f"poll:BENCH:{i}") for i in range(events)]
        page = 100  # a Poll API page
        started = time.perf_counter()
        for start in range(0, events, page):
            seen.record(copies[start : start + page])
        record = (time.perf_counter() - started) / events
        started = time.perf_counter()
        matched = sum(seen.match(key, f"stream:BENCH:{i}:") for i, (key, _) in enumerate(copies))
        match = (time.perf_counter() - started) / events
        if matched != events:
            raise SystemExit(f"seen-set lost poll copies: {events - matched} of {events}")
        if seen.match(copies[0][0], "stream:BENCH:lookalike:"):
            raise SystemExit("one poll copy cancelled two stream events")
    # What the stream does for a live event: compare its time with the fallback's mark.
    mark = "2026-11-30T00:00:00Z"
    occurred = "2026-11-30T00:00:01Z"
    loops = 1_000_000
    hot = timeit.timeit(lambda: occurred <= mark, number=loops) / loops
    return {
        "events": float(events),
        "record_ms_per_event": record * 1000,
        "match_ms_per_event": match * 1000,
        "hot_path_us_per_event": hot * 1e6,
        "record_write_units_per_event": 1.0,
        "match_write_units_per_event": 1.0,
    }


def main(argv: list[str]) -> int:
    events = int(argv[1]) if len(argv) > 1 else 1000
    result = measure(events)
    print(f"seen-set cost per event ({events} events, DynamoDB = moto server on loopback)")
    print(f"  record (poll fallback, UpdateItem x8 threads) {result['record_ms_per_event']:8.3f} ms   1 WCU")
    print(f"  match (stream replay, conditional UpdateItem) {result['match_ms_per_event']:8.3f} ms   1 WCU")
    print(f"  live stream event (no lookup, a comparison)   {result['hot_path_us_per_event']:8.3f} us   0")
    print(
        "  ratio match / live event: "
        f"{result['match_ms_per_event'] * 1000 / result['hot_path_us_per_event']:,.0f}x"
    )
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "seen_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
