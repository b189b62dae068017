"""`ohip-relay status` in words: the checkpoint's edge values the protocol allows (offset 0 handled,
nothing handled yet, 20 digits) and absent values never print as None."""

from __future__ import annotations

from ohip_relay.cli import render_status, status_report
from ohip_relay.health import StreamHealth
from ohip_relay.state import CHECKPOINT_MAX, CHECKPOINT_MIN, Checkpoint, describe_checkpoint

NOW = 1_764_000_000.0


def test_describe_checkpoint_says_the_edges_in_words() -> None:
    assert describe_checkpoint(None) == "none yet"
    assert describe_checkpoint(CHECKPOINT_MIN) == "before offset 0"
    assert describe_checkpoint(0) == "0"
    assert describe_checkpoint(CHECKPOINT_MAX) == str(CHECKPOINT_MAX)


def _lines(offset: int | None) -> list[str]:
    checkpoint = None if offset is None else Checkpoint(offset=offset, updated_at=NOW - 2, owner="t")
    report = status_report(
        "CHAIN1", checkpoint, None, None, None, StreamHealth(False, "no heartbeat", NOW), NOW
    )
    return render_status(report)


def test_status_lines_for_checkpoints_the_protocol_allows() -> None:
    for offset, shown in (
        (CHECKPOINT_MIN, "before offset 0"),
        (0, "0"),
        (CHECKPOINT_MAX, str(CHECKPOINT_MAX)),
    ):
        lines = _lines(offset)
        assert any(
            line.startswith("checkpoint") and line.endswith(f"{shown} (written 2.0s ago)") for line in lines
        ), lines
        assert not any("None" in line for line in lines), lines


def test_absent_values_are_words() -> None:
    text = "\n".join(_lines(None))
    assert "None" not in text
    assert "no heartbeat yet" in text
    assert "nobody" in text
