"""`ohip-relay local demo --fleet`, run as a user runs it (a child process), at a smaller size: two
environments of four chains (the first serving a fifth, added mid-run) over two relay processes.
Its own checks are the fleet's invariants: the test reads its verdict, its table and its logs."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ohip_local.cli import LocalCommandError
from ohip_relay.cli import build_parser

_RELAY_PREFIXES = ("OHIP_", "RELAY_", "AWS_")


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_the_fleet_demo_loses_nothing_and_never_opens_two_connections(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_RELAY_PREFIXES)}
    args = ["local", "demo", "--fleet", "--chains-per-environment", "4", "--relays", "2"]
    run = subprocess.run(
        [sys.executable, "-m", "ohip_relay.cli", *args, "--run-dir", str(tmp_path)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    for step in range(1, 5):
        assert re.search(rf"^step {step}: .*; settled in \d+\.\d+s", out, re.MULTILINE), out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if re.match(r"  ENV\dCHAIN\d+ ", line)}
    chains = [f"ENV0CHAIN{n:03d}" for n in range(1, 6)] + [f"ENV1CHAIN{n:03d}" for n in range(1, 5)]
    assert sorted(rows) == chains, out
    for chain, cells in rows.items():
        # chain, env, emitted, delivered, replay, overlap, poll repeat, lost, held [*], max live
        emitted, delivered, lost, held = int(cells[2]), int(cells[3]), int(cells[7]), int(cells[8])
        assert emitted > 0, out
        assert lost == 0, out
        assert delivered + held == emitted, out
        assert int(cells[-1]) <= 1, out
        if chain != "ENV1CHAIN004":  # the one disabled in step 4
            assert held == 0, out
    assert re.search(r"^  total\s+\d+", out, re.MULTILINE), out
    assert "ENV1CHAIN004 was disabled in step 4" in out
    assert "double connections: 0 (max_concurrent_subscribed <= 1 on 9 of 9 chains" in out
    last = out.strip().splitlines()[-1]
    assert last == "OK: 0 lost, 0 double connections, every relay stopped cleanly", out
    logs = sorted(p.name for p in tmp_path.glob("relay-*.log"))
    assert logs == ["relay-1.log", "relay-2.log", "relay-3.log"]
    assert "joins the fleet" in (tmp_path / "relay-3.log").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fleet", "--relays", "1"], "--relays must be from 2 to 10, not 1"),
        (["--fleet", "--environments", "11"], "--environments must be from 1 to 10, not 11"),
        (["--fleet", "--chains-per-environment", "0"], "--chains-per-environment must be from 1 to 50"),
        (["--fleet", "--chain-rate", "50"], "--chain-rate must be at most 20 events per second"),
        (["--fleet", "--events", "10"], "--events applies to the plain demo"),
        (["--relays", "3"], "--relays applies to the fleet demo only"),
        (["--chain-rate", "1"], "--chain-rate applies to the fleet demo only"),
    ],
)
def test_the_demo_validates_its_fleet_flags(argv: list[str], message: str) -> None:
    args: argparse.Namespace = build_parser().parse_args(["local", "demo", *argv])
    with pytest.raises(LocalCommandError, match=re.escape(message)):
        args.handler(args)
