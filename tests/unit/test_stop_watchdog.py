"""A stop that hangs explains itself: after the watchdog's time the pending asyncio tasks and every
thread's stack reach the log (chaos seeds 569 and 597 had relays that did not exit after SIGTERM,
with nothing in the log to say where they waited)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap

import pytest

from ohip_relay.stream import log_task_stacks


async def test_pending_tasks_are_logged_with_where_they_wait(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def waits_for_ever() -> None:
        await release.wait()

    task = asyncio.create_task(waits_for_ever(), name="stuck-flush")
    await asyncio.sleep(0)  # let it start and block
    with caplog.at_level(logging.ERROR, logger="ohip_relay.stream"):
        log_task_stacks()
    release.set()
    await task
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "still running stuck-flush" in text
    assert "waits_for_ever" in text


def test_the_watchdog_dumps_every_thread_when_the_process_outlives_it() -> None:
    script = textwrap.dedent(
        """
        import asyncio, threading
        from ohip_relay.stream import arm_stop_watchdog

        async def main():
            arm_stop_watchdog(asyncio.get_running_loop(), 0.2)
            await asyncio.sleep(1.0)  # the stop that hangs

        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "Thread" in done.stderr  # faulthandler's dump of every thread
    assert "still running" in done.stderr  # the loop's task stacks, through logging's last resort
