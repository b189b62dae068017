"""Pieces the demo and the integration tests share: the relay as a real process, and a reader that
drains the SQS queue the way a downstream consumer would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3

from .reconcile import body_event_id


class HarnessError(RuntimeError):
    pass


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll `condition` until it holds; raise `HarnessError` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class RelayProcess:
    """`ohip-relay <command>` as a child process (the Fargate task, locally).

    Its stderr (the relay's log) is captured line by line into `lines` and optionally echoed.
    """

    def __init__(
        self,
        command: list[str],
        env: Mapping[str, str],
        *,
        echo: Callable[[str], None] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.command = command
        self.env = {**os.environ, **env}
        self.echo = echo
        self.cwd = cwd
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> RelayProcess:
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "ohip_relay.cli", *self.command],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self._proc.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self._proc.stderr,), daemon=True)
        self._reader.start()
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            line = line.rstrip("\n")
            with self._lock:
                self.lines.append(line)
            if self.echo:
                self.echo(line)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def saw(self, text: str) -> bool:
        with self._lock:
            return any(text in line for line in self.lines)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the clean shutdown path (complete, drain, flush, checkpoint)."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        code = self._proc.wait(timeout)
        self._join()
        return code

    def kill(self) -> int:
        """SIGKILL: a crash at an arbitrary point."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.kill()
        code = self._proc.wait(10)
        self._join()
        return code

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        code = self._proc.wait(timeout)
        self._join()
        return code

    def _join(self) -> None:
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.kill()


@dataclass
class Delivered:
    """What a downstream consumer saw on the queue."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    attributes: list[dict[str, str]] = field(default_factory=list)

    def offsets(self) -> list[int]:
        return [int(b["offset"]) for b in self.bodies if b.get("offset") is not None]

    def keys(self) -> list[str]:
        """Content keys: equal for one change on both channels, and for two lookalike changes."""
        return [str(b["eventKey"]) for b in self.bodies]

    def event_ids(self) -> list[str]:
        """Event identities (`eventId`; derived for a body of an older relay, see reconcile.py)."""
        return [body_event_id(b) for b in self.bodies]


class QueueReader:
    """Receives and deletes every message of a queue in a background thread, as a consumer would."""

    def __init__(self, queue_url: str, *, endpoint_url: str, region: str) -> None:
        self.queue_url = queue_url
        self._sqs = boto3.client(
            "sqs",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - the local administrator (iam.py)
        )
        self.delivered = Delivered()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="queue-reader")

    def __enter__(self) -> QueueReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def count(self) -> int:
        with self._lock:
            return len(self.delivered.bodies)

    def snapshot(self) -> Delivered:
        with self._lock:
            return Delivered(list(self.delivered.bodies), list(self.delivered.attributes))

    def _run(self) -> None:
        while not self._stop.is_set():
            response = self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
            )
            messages = response.get("Messages", [])
            if not messages:
                continue
            with self._lock:
                for message in messages:
                    self.delivered.bodies.append(json.loads(message["Body"]))
                    self.delivered.attributes.append(
                        {k: v.get("StringValue", "") for k, v in message.get("MessageAttributes", {}).items()}
                    )
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
