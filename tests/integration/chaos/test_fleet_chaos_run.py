"""A short real fleet chaos run, as a user runs it: `ohip-relay local chaos --fleet --short --seed 39
--schedules 2 --jobs 2` (a child process). Two seeded fleet schedules at once, each with its own
moto, gateway and fault proxy, relay processes under StreamTaskRole and real fleet poll ticks.

Seed 39: offsets of 19 digits, lookalike events, two fleet poll ticks, a relay stopped with SIGTERM.
Seed 40: two environments serving one chain code under two subscription ids, a relay killed (-9),
one of the two disabled, more events on the other.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ohip_local.fleet_chaos import TWIN, generate_fleet_schedule

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SEEDS = (39, 40)
_RELAY_PREFIXES = ("OHIP_", "RELAY_", "AWS_")
_ROW = re.compile(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+s  (.*)$", re.MULTILINE)


def test_two_short_fleet_schedules_pass_and_print_their_rows(tmp_path: Path) -> None:
    plans = [generate_fleet_schedule(seed, short=True) for seed in SEEDS]
    kinds = {step.kind for plan in plans for step in plan.steps}
    assert kinds >= {"emit", "kill", "sigterm", "disable", "poll_tick"}
    assert any(c.chain == TWIN for c in plans[1].chains)

    clean = {k: v for k, v in os.environ.items() if not k.startswith(_RELAY_PREFIXES)}
    out = tmp_path / "fleet.jsonl"
    args = [
        "--fleet",
        "--short",
        "--seed",
        str(SEEDS[0]),
        "--schedules",
        "2",
        "--jobs",
        "2",
        "--out",
        str(out),
    ]
    run = subprocess.run(
        [sys.executable, "-m", "ohip_relay.cli", "local", "chaos", *args],
        env=clean,
        cwd=tmp_path,  # a failing schedule writes its evidence to the working directory
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    printed = run.stdout
    assert run.returncode == 0, printed + run.stderr
    assert "2 fleet (short) schedule(s) from seed 39, 2 at a time" in printed
    rows = {int(m.group(1)): m for m in _ROW.finditer(printed)}
    assert sorted(rows) == list(SEEDS), printed
    for seed, plan in zip(SEEDS, plans, strict=True):
        row = rows[seed]
        assert int(row.group(2)) == len(plan.steps)
        assert int(row.group(6)) == 0  # lost
        assert re.fullmatch(r"ok( \(\d+ held\))?", row.group(7)), row.group(0)
    assert "lost 0, unexpected 0" in printed
    assert "failed schedules 0" in printed
    results = {r["seed"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(results) == list(SEEDS)
    for result in results.values():
        assert result["fleet"] is True
        assert result["problems"] == [], result
        assert result["emitted"] == result["delivered"] + result["held"] > 0
        assert all(chain["max_live"] <= 1 for chain in result["chains"])
        assert all(chain["lost"] == 0 for chain in result["chains"])
    assert {chain["environment"] for chain in results[40]["chains"]} == {0, 1}
