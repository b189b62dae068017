"""A tick killed at any point loses nothing (docs/poll-fallback.md, "Crashes").

Each test runs a scenario once to list the calls its tick makes (every AWS call, and each Poll API
request), then runs it again for each call, killing the tick just before that call reaches the
service, and once just after the last call went through (`conftest.CrashPlan`: a `Crash` is a
BaseException, so nothing in the tick catches it, and every later call fails too, as in a killed
Lambda). Between two calls the tick only computes, so "after one call" is the state "before the
next": the runs cover a crash between any two steps, a call that went through unanswered included. After the
crash, and again after a clean tick that follows it, every item the Poll API served must be on the
queue, in the spill, or unrecorded in the seen-set (`SeenSet.match` answers False for its stream
copy, so the stream publishes it when it replays); nothing may be recorded, and no mark raised,
for what is not on the queue. Runs of one call repeated (the seen-set's UpdateItems of one record)
are crashed at their first and last call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ohip_local.source import Detail, EventDraft, StoredEvent
from ohip_relay.fallback import FallbackOptions, TickReport

from .conftest import (
    Crash,
    CrashPlan,
    PollRig,
    PollTap,
    Wrapped,
    assert_nothing_lost,
    client_error,
    poll_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OPTIONS = FallbackOptions(page_limit=20, send_attempts=1, retry_delay_s=0.0)
MAX_MESSAGE = 4096  # a small queue limit, so that a 6 KB event travels as a claim check


@dataclass
class Run:
    rig: PollRig
    emitted: list[StoredEvent] = field(default_factory=list)
    served: list[Any] = field(default_factory=list)
    on_queue: set[str] = field(default_factory=set)
    reports: list[TickReport | None] = field(default_factory=list)

    def emit(self, count: int) -> None:
        self.emitted += self.rig.emit(count)

    def emit_page(self) -> None:
        """11 events, one too large for the queue, one malformed: two batches, a claim check and
        a parked item."""
        self.emit(11)
        big = EventDraft(
            hotel="HOTEL2",
            module="RESERVATION",
            event_name="UPDATE RESERVATION",
            primary_key="777",
            publisher_id="9",
            details=(Detail("COMMENTS", None, "c" * 6000),),
        )
        bad = EventDraft(
            hotel="HOTEL1",
            module="RESERVATION",
            event_name=" ",
            primary_key="1",
            publisher_id="9",
            details=(),
        )
        self.emitted += [self.rig.append(big), self.rig.append(bad)]

    def tick(self, plan: CrashPlan | None = None, *, refuse_second_batch: bool = False) -> TickReport | None:
        rig = self.rig
        intercept = refuse_short_batches if refuse_second_batch else None
        tap = PollTap(plan=plan)
        clients = {
            "sqs": Wrapped(rig.sqs, "sqs", plan, intercept),
            "s3": Wrapped(rig.s3, "s3", plan),
            "dynamodb": Wrapped(rig.dynamodb, "dynamodb", plan),
        }
        report: TickReport | None = None
        try:
            with rig.built(tap=tap, options=OPTIONS, **clients) as fb:
                report = fb.tick(lambda: 60.0)
        except Crash:
            assert plan is not None
            assert plan.crashed
        self.served += tap.served
        self.on_queue |= {body["eventId"] for body in rig.receive()}
        self.reports.append(report)
        return report

    def check(self, where: str) -> None:
        streamed = {
            poll_id(self.rig.chain, {"businessEventId": e.business_event_id}): e for e in self.emitted
        }
        assert_nothing_lost(self.rig, self.served, streamed, self.on_queue, where)


def refuse_short_batches(operation: str, kwargs: dict[str, Any]) -> None:
    """SQS unavailable for any batch of fewer than 10 entries (the page's second batch)."""
    if operation == "send_message_batch" and len(kwargs["Entries"]) < 10:
        raise client_error("ServiceUnavailable", 503)


def crash_points(calls: list[str]) -> list[int]:
    """The first and the last of each run of equal labels."""
    return [
        i
        for i, label in enumerate(calls)
        if i == 0 or i == len(calls) - 1 or calls[i - 1] != label or calls[i + 1] != label
    ]


def crash_everywhere(
    rig: PollRig, prepare: Callable[[Run], None], crash: Callable[[Run, CrashPlan], TickReport | None]
) -> list[str]:
    """Run the scenario clean, then crashed at each point; returns where it crashed."""
    rig.sqs.set_queue_attributes(
        QueueUrl=rig.stack.queue_url, Attributes={"MaximumMessageSize": str(MAX_MESSAGE)}
    )
    dry = Run(rig)
    prepare(dry)
    plan = CrashPlan()
    assert crash(dry, plan) is not None
    calls = plan.calls
    crashed: list[str] = []
    points = [(at, "before") for at in crash_points(calls)] + [(len(calls) - 1, "after")]
    for at, phase in points:
        rig.reset()
        run = Run(rig)
        prepare(run)
        plan = CrashPlan(at, phase)
        assert crash(run, plan) is None, f"no crash {phase} call {at} ({calls[at]})"
        # (calls made in parallel with the crashed one, by the seen-set's threads, may follow it)
        assert plan.calls[: at + 1] == calls[: at + 1], f"a different path: {plan.calls} vs {calls}"
        run.check(plan.crashed)
        run.tick()  # the next tick, clean
        assert rig.objects(f"spill/{rig.chain}/") == [], plan.crashed
        run.check(f"the tick after a crash {plan.crashed}")
        crashed.append(plan.crashed)
    return crashed


def test_a_crash_while_a_page_is_handed_on_loses_nothing(rig: PollRig) -> None:
    def crash(run: Run, plan: CrashPlan) -> TickReport | None:
        report = run.tick(plan)
        if report is not None:
            assert (report.published, report.malformed, report.spilled) == (12, 1, 0)
        return report

    crashed = crash_everywhere(rig, Run.emit_page, crash)
    labels = {point.split(" ", 1)[1].split(" (")[0] for point in crashed}
    assert {
        "poll.GET",
        "s3.put_object(malformed)",
        "s3.put_object(oversize)",
        "sqs.send_message_batch",
        "dynamodb.update_item(seen)",
        "dynamodb.update_item(mark)",
    } <= labels


def test_a_crash_while_a_page_is_spilled_loses_nothing(rig: PollRig) -> None:
    def crash(run: Run, plan: CrashPlan) -> TickReport | None:
        report = run.tick(plan, refuse_second_batch=True)
        if report is not None:
            assert (report.published, report.spilled, report.ended) == (10, 2, "sqs-error")
        return report

    crashed = crash_everywhere(rig, Run.emit_page, crash)
    assert any("s3.put_object(spill)" in point for point in crashed)


def test_a_crash_while_a_spill_is_re_delivered_loses_nothing(rig: PollRig) -> None:
    def prepare(run: Run) -> None:
        run.emit_page()
        report = run.tick(refuse_second_batch=True)
        assert report is not None
        assert report.spilled == 2
        run.emit(3)

    def crash(run: Run, plan: CrashPlan) -> TickReport | None:
        report = run.tick(plan)
        if report is not None:
            assert (report.redelivered, report.published, report.spills_pending) == (2, 5, 0)
        return report

    crashed = crash_everywhere(rig, prepare, crash)
    labels = {point.split(" ", 1)[1].split(" (")[0] for point in crashed}
    assert {"s3.get_object(spill)", "s3.delete_object(spill)", "dynamodb.update_item(seen)"} <= labels
