"""The two reference clients of `make bench`, each run as its own process; each prints one JSON line.

raw    a bare `websockets` client: OAuth token, connection_init, subscribe, count `next` frames.
       Nothing else is done per frame, so its receive rate is the limit of the gateway + socket.
naive  what simple samples do: for each `next` frame, json-decode it, one SQS SendMessage and one
       DynamoDB PutItem (the checkpoint), sequentially, with boto3 clients (blocking calls).

    python -m bench.clients raw   --gateway '<json from gateway_proc>' --count N
    python -m bench.clients naive --gateway '<json>' --count N --seconds S --queue-url U --table T
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from ohip_relay import protocol as proto


def _token(gw: dict[str, Any]) -> str:
    response = httpx.post(
        gw["url"] + "/oauth/v1/tokens",
        headers={"x-app-key": gw["app_key"]},
        data={"grant_type": "client_credentials", "enterpriseId": gw["enterprise_id"]},
        auth=(gw["client_id"], gw["client_secret"]),
        trust_env=False,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


async def _session(gw: dict[str, Any], offset: str) -> ClientConnection:
    token = _token(gw)
    ws = await connect(
        proto.stream_url(gw["url"], gw["app_key"]),
        subprotocols=[Subprotocol(proto.SUBPROTOCOL)],
        ping_interval=None,
        max_size=16 * 1024 * 1024,
    )
    await ws.send(
        json.dumps(
            {
                "type": "connection_init",
                "payload": {"Authorization": f"Bearer {token}", "x-app-key": gw["app_key"]},
            }
        )
    )
    ack = json.loads(await ws.recv())
    if ack.get("type") != "connection_ack":
        raise SystemExit(f"no connection_ack: {ack.get('type')}")
    await ws.send(proto.subscribe("bench", proto.SubscriptionInput(gw["chain"], offset=offset)))
    return ws


async def raw(gw: dict[str, Any], count: int, offset: str) -> dict[str, Any]:
    ws = await _session(gw, offset)
    subscribed = time.time()
    cpu0 = time.process_time()
    frames = 0
    first = last = None
    byte_count = 0
    while frames < count:
        message = await ws.recv()
        if '"type":"next"' in message[:120]:
            frames += 1
            byte_count += len(message)
            last = time.time()
            if first is None:
                first = last
        elif '"type":"ping"' in message[:40]:
            await ws.send('{"type":"pong"}')
    cpu = time.process_time() - cpu0
    await ws.close()
    assert first is not None
    assert last is not None
    return {
        "frames": frames,
        "cpu_s": cpu,
        "bytes": byte_count,
        "subscribed_at": subscribed,
        "first_at": first,
        "last_at": last,
        "rate": frames / (last - subscribed),
    }


async def naive(
    gw: dict[str, Any], count: int, seconds: float, offset: str, queue_url: str, table: str
) -> dict[str, Any]:
    import boto3

    sqs = boto3.client("sqs")  # endpoints from AWS_ENDPOINT_URL_SQS / _DYNAMODB
    dynamodb = boto3.client("dynamodb")
    fifo = queue_url.endswith(".fifo")
    ws = await _session(gw, offset)
    subscribed = time.time()
    cpu0 = time.process_time()
    done = 0
    deadline = subscribed + seconds
    while done < count and time.time() < deadline:
        message = json.loads(await ws.recv())
        if message.get("type") == "ping":
            await ws.send('{"type":"pong"}')
            continue
        if message.get("type") != "next":
            continue
        event = message["payload"]["data"]["newEvent"]
        extra = {}
        if fifo:
            extra = {
                "MessageGroupId": f"{event['hotelId']}:{event['primaryKey']}",
                "MessageDeduplicationId": event["metadata"]["uniqueEventId"],
            }
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event, separators=(",", ":")), **extra)
        dynamodb.put_item(
            TableName=table,
            Item={
                "pk": {"S": f"naive-checkpoint#{gw['chain']}"},
                "offset": {"N": event["metadata"]["offset"]},
            },
        )
        done += 1
    elapsed = time.time() - subscribed
    cpu = time.process_time() - cpu0
    await ws.close()
    return {
        "events": done,
        "subscribed_at": subscribed,
        "seconds": elapsed,
        "rate": done / elapsed,
        "cpu_s": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("raw", "naive"))
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--offset", default="0")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--queue-url", default="")
    parser.add_argument("--table", default="")
    args = parser.parse_args()
    gw = json.loads(args.gateway)
    if args.mode == "raw":
        result = asyncio.run(raw(gw, args.count, args.offset))
    else:
        result = asyncio.run(naive(gw, args.count, args.seconds, args.offset, args.queue_url, args.table))
    result["max_rss_kib"] = _peak_rss_kib()
    print(json.dumps(result), flush=True)


def _peak_rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


if __name__ == "__main__":
    main()
