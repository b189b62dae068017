"""`ohip-relay local chaos`: its arguments (a real run is in test_chaos_run.py)."""

from __future__ import annotations

import pytest

from ohip_local import chaos
from ohip_local.cli import LocalCommandError as CommandError
from ohip_relay.cli import build_parser


def test_the_chaos_command_takes_the_make_target_arguments() -> None:
    args = build_parser().parse_args(["local", "chaos", "--seed", "17", "--schedules", "3", "-v"])
    assert (args.seed, args.schedules, args.verbose, args.short, args.minutes) == (17, 3, True, False, None)
    quiet = build_parser().parse_args(["local", "chaos", "--short"])
    assert (quiet.seed, quiet.schedules, quiet.verbose, quiet.short) == (1, 20, False, True)
    assert build_parser().parse_args(["-v", "local", "chaos"]).verbose is True
    assert (quiet.jobs, build_parser().parse_args(["local", "chaos", "--jobs", "3"]).jobs) == (1, 3)


def test_the_fleet_suite_takes_the_same_arguments(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        ["local", "chaos", "--fleet", "--seed", "5001", "--schedules", "2", "-v"]
    )
    assert (args.fleet, args.seed, args.schedules, args.verbose, args.jobs) == (True, 5001, 2, True, 1)
    assert build_parser().parse_args(["local", "chaos"]).fleet is False
    ran: list[tuple[int, bool]] = []

    def one(n: int, *, fleet: bool = False, **_: object) -> chaos.ScheduleResult:
        ran.append((n, fleet))
        return chaos.ScheduleResult(seed=n, steps=7, plan="", emitted=40, delivered=40, messages=41)

    monkeypatch.setattr(chaos, "_run_one", one)
    assert args.handler(args) == 0
    assert ran == [(5001, True), (5002, True)]
    printed = capsys.readouterr().out
    assert "2 fleet schedule(s) from seed 5001" in printed
    assert "replay one: ohip-relay local chaos --fleet --seed N --schedules 1 -v" in printed


def test_zero_schedules_is_a_usage_error() -> None:
    args = build_parser().parse_args(["local", "chaos", "--schedules", "0"])
    with pytest.raises(CommandError, match="--schedules must be at least 1"):
        args.handler(args)


def test_zero_jobs_is_a_usage_error() -> None:
    args = build_parser().parse_args(["local", "chaos", "--jobs", "0"])
    with pytest.raises(CommandError, match="--jobs must be at least 1"):
        args.handler(args)


def test_an_interrupted_run_still_prints_the_summary_of_what_finished(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The schedules themselves are stood in for (test_chaos_run.py runs real ones): the first
    # finishes, the second is interrupted as Ctrl-C or a CI timeout's SIGTERM would.
    def one(n: int, **_: object) -> chaos.ScheduleResult:
        if n == 2:
            raise KeyboardInterrupt
        return chaos.ScheduleResult(seed=n, steps=3, plan="", emitted=40, delivered=40, messages=41)

    monkeypatch.setattr(chaos, "_run_one", one)
    with pytest.raises(KeyboardInterrupt):
        chaos.run_chaos(seed=1, schedules=3)
    printed = capsys.readouterr().out
    assert "interrupted: the summary below covers the 1 schedule(s) that finished" in printed
    assert "schedules 1 (seeds 1-1)" in printed
    assert "lost 0, unexpected 0" in printed
