"""The stream consumer's CPU per event, stage by stage, without any I/O.

`make bench` measures the relay end to end; this says where its pure per-event work goes, so that
a change to one stage can be judged on its own (the end-to-end figure moves by a tenth between
runs on a shared machine, more than most single changes save). Frames are the local gateway's
own rendering of generated events (the same as the benchmark's stream). Each stage runs over all
frames, several rounds, and the least CPU time (`time.process_time`) per event is printed:

    protocol.receive     the sans-I/O core: decode the frame (fastjson), check it, an EventReceived
    events.from_stream   normalise to the canonical event, with its event key
    body                 CanonicalEvent.to_json (the SQS message body)
    entry                attributes, group and deduplication ids, the batch entry
    batch request        the SendMessageBatch JSON (per event: a tenth of a 10-entry request)
    sign                 SigV4 over the request (botocore; per event, a tenth)
    parse response       botocore's parser over a 10-entry answer (per event, a tenth)

plus the standard library's decode and body encode of the same frames, for comparison.

    .venv/bin/python -m bench.hot_path [frames]      # default 3000; results in bench/results/hot_path.json
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.parsers import create_parser

from ohip_local.generator import EventGenerator
from ohip_local.source import EventSource
from ohip_local.streaming import parse_subscription, render_event
from ohip_relay import protocol as proto
from ohip_relay.events import CanonicalEvent, from_stream
from ohip_relay.fastjson import dumps_ascii_bytes
from ohip_relay.publish import sqs_attributes

CHAIN = "BENCH"
ROUNDS = 7
RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def gateway_frames(count: int) -> list[str]:
    """`next` frames as the local gateway renders them for the relay's own subscription."""
    source = EventSource([CHAIN], ["BENCH_EXT"])
    generator = EventGenerator(seed=1, hotels=["HOTEL1", "HOTEL2", "HOTEL3"])
    request = parse_subscription(
        json.loads(proto.subscribe("1", proto.SubscriptionInput(CHAIN, offset="0")))["payload"]
    )
    frames = []
    for _ in range(count):
        event = source.append(CHAIN, generator.next_draft())
        payload = {"data": {"newEvent": render_event(event, request)}}
        frames.append(json.dumps({"id": "1", "type": "next", "payload": payload}, separators=(",", ":")))
    return frames


def cpu_us_per_item(run: Callable[[], object], items: int) -> float:
    samples = []  # the fastest round: the least disturbed by whatever else runs on the machine
    for _ in range(ROUNDS):
        started = time.process_time()
        run()
        samples.append((time.process_time() - started) / items * 1e6)
    return min(samples)


def measure(count: int) -> dict[str, Any]:
    frames = gateway_frames(count)
    relayed = datetime.now(UTC)

    def receive_all() -> list[proto.EventReceived]:
        # a new subscribed core each round: the same frames again would be duplicates to the old one
        core = proto.StreamProtocol(token="bench-token", app_key="bench-app-key")  # noqa: S106
        core.start(0.0)
        core.receive(json.dumps({"type": "connection_ack"}), 0.0)
        core.send_subscribe(proto.SubscriptionInput(CHAIN, offset="0"), 0.0, subscription_id="1")
        out = []
        for frame in frames:
            for event in core.receive(frame, 1.0):
                if isinstance(event, proto.EventReceived):
                    out.append(event)
        return out

    received = receive_all()
    assert len(received) == count, "every frame must be an event"
    canonical: list[CanonicalEvent] = [from_stream(e.new_event, CHAIN, relayed) for e in received]
    bodies = [c.to_json() for c in canonical]

    def entries() -> list[dict[str, Any]]:
        return [
            {
                "Id": str(i),
                "MessageBody": bodies[i],
                "MessageAttributes": sqs_attributes(c.attribute_values()),
                "MessageGroupId": c.message_group_id(),
                "MessageDeduplicationId": c.deduplication_id(),
            }
            for i, c in enumerate(canonical)
        ]

    batch_entries = entries()
    batches = [batch_entries[i : i + 10] for i in range(0, count, 10)]
    requests = [dumps_ascii_bytes({"QueueUrl": "http://127.0.0.1/q.fifo", "Entries": b}) for b in batches]
    frozen = Credentials("AKIDEXAMPLE", "secret").get_frozen_credentials()

    def sign_all() -> None:
        for body in requests:
            request = AWSRequest(
                method="POST",
                url="http://127.0.0.1:4566/",
                data=body,
                headers={
                    "Content-Type": "application/x-amz-json-1.0",
                    "X-Amz-Target": "AmazonSQS.SendMessageBatch",
                },
            )
            SigV4Auth(frozen, "sqs", "us-east-1").add_auth(request)

    model = boto3.session.Session().client("sqs", region_name="us-east-1").meta.service_model
    shape = model.operation_model("SendMessageBatch").output_shape
    assert shape is not None
    parser = create_parser(model.protocol)
    answer = json.dumps(
        {
            "Successful": [
                {"Id": str(i), "MessageId": f"m-{i}", "MD5OfMessageBody": "0" * 32} for i in range(10)
            ],
            "Failed": [],
        }
    ).encode()

    def parse_all() -> None:
        for _ in batches:
            parser.parse({"status_code": 200, "headers": {}, "body": answer}, shape)

    gc.collect()
    gc.freeze()  # as the relay does after start-up
    stages = {
        "protocol.receive": cpu_us_per_item(receive_all, count),
        "events.from_stream": cpu_us_per_item(
            lambda: [from_stream(e.new_event, CHAIN, relayed) for e in received], count
        ),
        "body": cpu_us_per_item(lambda: [c.to_json() for c in canonical], count),
        "entry": cpu_us_per_item(entries, count),
        "batch request": cpu_us_per_item(
            lambda: [
                dumps_ascii_bytes({"QueueUrl": "http://127.0.0.1/q.fifo", "Entries": b}) for b in batches
            ],
            count,
        ),
        "sign": cpu_us_per_item(sign_all, count),
        "parse response": cpu_us_per_item(parse_all, count),
    }
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
    reference = {
        "json.loads frame (stdlib)": cpu_us_per_item(lambda: [json.loads(f) for f in frames], count),
        "body with the stdlib encoder": cpu_us_per_item(
            lambda: [encoder.encode(c.to_dict()) for c in canonical], count
        ),
    }
    return {
        "frames": count,
        "frame_bytes_mean": sum(map(len, frames)) / count,
        "body_bytes_mean": sum(map(len, bodies)) / count,
        "us_per_event": stages,
        "total_us_per_event": sum(stages.values()),
        "reference_us_per_event": reference,
    }


def main(argv: list[str]) -> int:
    count = int(argv[1]) if len(argv) > 1 else 3000
    result = measure(count)
    print(
        f"stream consumer CPU per event, pure work without I/O ({count} gateway frames, "
        f"{result['frame_bytes_mean']:,.0f} bytes each, fastest of {ROUNDS} rounds)"
    )
    for name, value in result["us_per_event"].items():
        print(f"  {name:<30} {value:8.1f} us")
    print(f"  {'total':<30} {result['total_us_per_event']:8.1f} us")
    for name, value in result["reference_us_per_event"].items():
        print(f"  ({name:<28} {value:8.1f} us)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hot_path.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
