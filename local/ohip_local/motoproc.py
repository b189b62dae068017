"""moto in a process of its own, made fast enough for the chaos suite.

moto's SQS (5.x) reads the clock through `datetime` several times per message held, for every
message it accepts or hands out: `Queue.attributes` counts the visible, in-flight and delayed
messages (a pass over the queue each, two clock reads per message), and `SendMessage` (per batch
entry) and `ReceiveMessage` (per message returned) compute `attributes` several times. Sending a
burst of a few hundred events and reading it back is quadratic: measured here, 700 messages took
64 s to send and 36 s to read in batches of 10, which is most of a chaos schedule's wall time and
has nothing to do with the relay.

`speed_up_moto()` keeps moto's behaviour and replaces only how it gets there:

- the SQS models' clock (`unix_time`, `unix_time_millis` without an argument) is `time.time()`,
  the same value (seconds since the epoch, UTC) without building datetimes;
- a message's `visible` / `delayed` and a queue's visible, in-flight and delayed counts read the
  clock once per pass instead of once per message (the same comparisons: visible when now >
  `visible_at`, delayed when now < `delayed_until`);
- the retention check of `ReceiveMessage` reads the queue's `message_retention_period` directly
  instead of through `get_queue_attributes` (which builds every attribute, counts included).

The chaos harness runs moto in its own process (`moto_process`), so that moto's work does not
compete with the gateway, the fault proxy and the queue reader for one interpreter's lock, and so
that parallel jobs each get their own:

    with moto_process() as endpoint:
        ...  # "http://127.0.0.1:<port>"

`python -m ohip_local.motoproc` prints the endpoint on its first line and serves until its stdin
closes or it gets SIGTERM. IAM is enforced in the child as in any `aws.moto_server` (iam.py): the
parent reads denials from its journal over HTTP (`iam.denials`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .aws import LocalStackError

START_TIMEOUT = 60.0  # only a safety net: moto starts in a second or two

_patched = False


def speed_up_moto() -> None:
    """Apply the SQS speed-ups described in the module docstring (idempotent)."""
    global _patched
    if _patched:
        return
    from moto.core import utils as core_utils
    from moto.sqs import models

    original_unix_time = core_utils.unix_time

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else original_unix_time(dt)

    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000.0 if dt is None else original_unix_time(dt) * 1000.0

    patches: list[tuple[Any, str, Any]] = [
        (models, "unix_time", unix_time),
        (models, "unix_time_millis", unix_time_millis),
    ]

    def visible(self: Any) -> bool:
        return bool(time.time() * 1000.0 > self.visible_at)

    def delayed(self: Any) -> bool:
        return bool(time.time() * 1000.0 < self.delayed_until)

    def messages(self: Any) -> list[Any]:
        now = time.time() * 1000.0
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    def delayed_count(self: Any) -> int:
        now = time.time() * 1000.0
        return sum(1 for m in self._messages if now < m.delayed_until)

    def not_visible_count(self: Any) -> int:
        now = time.time() * 1000.0
        return sum(1 for m in self._messages if not now > m.visible_at)

    def visible_count(self: Any) -> int:
        return len(self.messages)

    def retention_ok(self: Any, queue_name: str, message: Any) -> bool:
        retention = float(self.get_queue(queue_name).message_retention_period)
        return bool(retention + message.sent_timestamp / 1000 > time.time())

    patches += [
        (models.Message, "visible", property(visible)),
        (models.Message, "delayed", property(delayed)),
        (models.Queue, "messages", property(messages)),
        (models.Queue, "approximate_number_of_messages_delayed", property(delayed_count)),
        (models.Queue, "approximate_number_of_messages_not_visible", property(not_visible_count)),
        (models.Queue, "approximate_number_of_messages", property(visible_count)),
        (models.SQSBackend, "is_message_valid_based_on_retention_period", retention_ok),
    ]
    for owner, name, replacement in patches:
        if not hasattr(owner, name):  # another moto version: fail loudly rather than run unpatched
            raise LocalStackError(f"moto changed: {getattr(owner, '__name__', owner)}.{name} is gone")
        setattr(owner, name, replacement)
    _patched = True


@contextmanager
def moto_process(host: str = "127.0.0.1") -> Iterator[str]:
    """Run a sped-up moto server in a child process for the life of the block; yields its URL."""
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "ohip_local.motoproc", "--host", host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    first: list[str] = []

    def read_endpoint() -> None:
        assert proc.stdout is not None
        first.append(proc.stdout.readline())

    try:
        reader = threading.Thread(target=read_endpoint, daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        line = first[0].strip() if first else ""
        if not line.startswith("http://"):
            raise LocalStackError(
                f"the moto process did not start (exit {proc.poll()}): {line or 'no output'}"
            )
        yield line
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - runs as moto_process's child
    import argparse

    from .aws import moto_server

    parser = argparse.ArgumentParser(prog="python -m ohip_local.motoproc")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    speed_up_moto()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when moto stops

    def watch_stdin() -> None:
        sys.stdin.read()  # EOF: the parent has gone
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    with moto_server(args.host, args.port) as endpoint:
        print(endpoint, flush=True)
        sys.stdout = sys.stderr  # nobody reads the pipe after the first line
        stop.wait()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
