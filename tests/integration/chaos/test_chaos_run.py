"""A short real chaos run (the CI cut of `make chaos`): two seeded schedules of the short kind
against the local stack, with the real relay process, a fault proxy in front of moto and real
ticks, and every invariant checked.

Seed 4: kill -9 of the relay and a restart, then DynamoDB 500s answered after the write went
through (ambiguous failures). Seed 7: an SQS partial batch failure, a 4401 close, a dropped
connection. Both run at once (`jobs=2`), each in its own worker process with its own moto, gateway
and fault proxy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ohip_local.chaos import generate_schedule, run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SEEDS = (4, 7)


def test_short_seeded_schedules_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # a failing schedule writes its evidence to the working directory
    out = tmp_path / "chaos.jsonl"
    finished: list[int] = []
    results = run_chaos(
        seeds=SEEDS,
        short=True,
        out=out,
        jobs=2,
        on_result=lambda r: finished.append(r.seed),
    )

    printed = capsys.readouterr().out
    assert "2 at a time" in printed
    assert "lost 0, unexpected 0" in printed
    assert [r.seed for r in results] == list(SEEDS)  # in seed order, whichever finished first
    for seed, result in zip(SEEDS, results, strict=True):
        assert result.ok, f"seed {seed}: {result.problems}; notes {result.notes}"
        assert result.plan == generate_schedule(seed, short=True).describe()
        assert result.emitted == generate_schedule(seed, short=True).emitted_by_plan()
        assert result.delivered == result.emitted
        assert result.lost == 0
        assert result.duplicates.get("undocumented", 0) == 0
    assert results[0].injected, "the fault proxy injected nothing for seed 4"
    assert sorted(finished) == list(SEEDS)
    assert sorted(json.loads(line)["seed"] for line in out.read_text().splitlines()) == list(SEEDS)
