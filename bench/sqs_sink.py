"""A minimal SQS-protocol endpoint for benchmarks: it acknowledges, counts and timestamps.

moto's SQS slows down as a queue grows (tens to a few hundred messages/s), so it cannot be the sink of a
throughput figure. This endpoint speaks just enough of the AWS JSON 1.0 protocol that boto3 1.43
uses for SQS (`POST /`, `X-Amz-Target: AmazonSQS.<Operation>`, `Content-Type:
application/x-amz-json-1.0`) for a publisher to run against it:

- `SendMessageBatch`: every entry listed under `Successful` (with MessageId and MD5OfMessageBody);
- `SendMessage`: one MessageId;
- `GetQueueAttributes`: a queue with a 1 MiB MaximumMessageSize (what SQS says since 2025);
- `DynamoDB_20120810.PutItem` (optional, same port): `{}`, for a checkpoint writer that only puts;
- anything else: a 400 `UnsupportedOperation` in the JSON error shape botocore parses.

Each received message is recorded as (receive time, offset): the time is `time.time()` once the
request body is read (the same machine clock as the gateway's `StoredEvent.created_at`), the offset
is read from the canonical body (`"offset":"1234"`) with a regular expression, so the sink stays
cheap. Nothing is stored but those two numbers.

Bench control (not AWS): `GET /_bench/stats`, `POST /_bench/reset`, `GET /_bench/records` (JSON
arrays `t` and `offset`, offset -1 when the body has none).

    python -m bench.sqs_sink --port 8799        # prints "listening on http://127.0.0.1:8799"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import re
import socket
import time
from array import array
from typing import Any

import orjson
from aiohttp import web

SQS_TARGET = "AmazonSQS."
DYNAMODB_TARGET = "DynamoDB_20120810."
JSON_10 = "application/x-amz-json-1.0"
MAX_MESSAGE_SIZE = 1_048_576
_OFFSET = re.compile(rb'"offset":"(\d+)"')


class Records:
    """What the sink received, as parallel arrays (compact for 100k+ messages)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.times = array("d")
        self.offsets = array("q")
        self.requests: dict[str, int] = {}
        self.dynamodb_puts = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def add(self, now: float, body: str) -> None:
        match = _OFFSET.search(body.encode())
        self.times.append(now)
        self.offsets.append(int(match.group(1)) if match else -1)
        if self.first_at is None:
            self.first_at = now
        self.last_at = now

    def stats(self) -> dict[str, Any]:
        return {
            "messages": len(self.times),
            "requests": dict(self.requests),
            "dynamodb_puts": self.dynamodb_puts,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "max_offset": max(self.offsets) if self.offsets else None,
        }


# Message ids: unique and UUID-shaped, without uuid4()'s system randomness for every message.
_IDS = itertools.count(1)
_ID_PREFIX = f"{time.time_ns() & 0xFFFFFFFF:08x}-0000-4000-8000-"


def _message_id() -> str:
    return f"{_ID_PREFIX}{next(_IDS):012x}"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _error(code: str, message: str, status: int = 400) -> web.Response:
    body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message})
    return web.Response(
        status=status,
        body=body.encode(),
        content_type=JSON_10,
        headers={"x-amzn-query-error": f"{code};Sender"},
    )


def _ok(document: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(document), content_type=JSON_10)


def build_app(records: Records | None = None) -> web.Application:
    rec = records if records is not None else Records()

    async def aws(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        raw = await request.read()
        now = time.time()
        try:
            params = orjson.loads(raw) if raw else {}
        except ValueError:
            return _error("MalformedQueryString", "the body is not JSON")
        operation = target.rpartition(".")[2]
        rec.requests[operation] = rec.requests.get(operation, 0) + 1
        if target.startswith(DYNAMODB_TARGET):
            if operation == "PutItem":
                rec.dynamodb_puts += 1
                return _ok({})
            return _error("UnsupportedOperation", f"the bench sink does not implement DynamoDB {operation}")
        if not target.startswith(SQS_TARGET):
            return _error("UnsupportedOperation", f"unknown target {target!r}")
        if operation == "SendMessageBatch":
            successful = []
            for entry in params.get("Entries", []):
                body = entry.get("MessageBody", "")
                rec.add(now, body)
                successful.append(
                    {"Id": entry["Id"], "MessageId": _message_id(), "MD5OfMessageBody": _md5(body)}
                )
            return _ok({"Successful": successful, "Failed": []})
        if operation == "SendMessage":
            body = params.get("MessageBody", "")
            rec.add(now, body)
            return _ok({"MessageId": _message_id(), "MD5OfMessageBody": _md5(body)})
        if operation == "GetQueueAttributes":
            return _ok(
                {
                    "Attributes": {
                        "MaximumMessageSize": str(MAX_MESSAGE_SIZE),
                        "ApproximateNumberOfMessages": str(len(rec.times)),
                        "FifoQueue": str(str(params.get("QueueUrl", "")).endswith(".fifo")).lower(),
                    }
                }
            )
        return _error("UnsupportedOperation", f"the bench sink does not implement SQS {operation}")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(rec.stats())

    async def reset(request: web.Request) -> web.Response:
        rec.reset()
        return web.json_response({"ok": True})

    async def records_(request: web.Request) -> web.Response:
        return web.json_response({"t": rec.times.tolist(), "offset": rec.offsets.tolist()})

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_get("/_bench/stats", stats)
    app.router.add_post("/_bench/reset", reset)
    app.router.add_get("/_bench/records", records_)
    app.router.add_post("/", aws)
    return app


async def start(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str, Records]:
    """Start a sink on the running loop; returns (runner, endpoint URL, records)."""
    records = Records()
    runner = web.AppRunner(build_app(records), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(256)
    sock.setblocking(False)
    await web.SockSite(runner, sock).start()
    return runner, f"http://{host}:{sock.getsockname()[1]}", records


async def _serve(host: str, port: int) -> None:
    runner, url, _ = await start(host, port)
    print(f"listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
