"""Parking: what the relay cannot publish is kept raw in S3 under `malformed/<chain>/`, never dropped.

A stream frame whose event cannot be read or published (an offset outside the documented form, a
field the canonical format cannot carry, a body SQS refuses for its content) is written here with
the reason (which names the field, never a value) and, when it has one, its offset. The stream's
checkpoint passes such an event only once its object is written. The poll fallback parks its own
malformed items under the same prefix (`fallback.SpillStore.park_malformed`).

Object: `malformed/<chain>/<epoch ms, 15 digits>-stream-<offset or "none">-<uuid>.json`, a JSON
document `{"schemaVersion": 1, "chainCode", "source": "stream", "offset", "writtenAt", "reason",
"frame"}` where `frame` is the WebSocket text frame exactly as received (JSON-escaped; so a lone
surrogate or a control character survives the round trip), or, for an event SQS refused for its
content, the message body the relay built from it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

MALFORMED_PREFIX = "malformed/"
PARK_SCHEMA_VERSION = 1


def parked_frame_key(chain_code: str, offset: str | None, now: float) -> str:
    stamp = f"{int(now * 1000):015d}"
    return f"{MALFORMED_PREFIX}{chain_code}/{stamp}-stream-{offset or 'none'}-{uuid.uuid4().hex}.json"


def parked_frame_document(
    chain_code: str, frame: str | bytes, reason: str, offset: str | None, now: float
) -> bytes:
    text = frame if isinstance(frame, str) else frame.decode("utf-8", "surrogateescape")
    document = {
        "schemaVersion": PARK_SCHEMA_VERSION,
        "chainCode": chain_code,
        "source": "stream",
        "offset": offset,
        "writtenAt": datetime.fromtimestamp(now, UTC).isoformat(),
        "reason": reason,
        "frame": text,
    }
    # ensure_ascii: any str, lone surrogates included, becomes valid ASCII JSON.
    return json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def park_frame(
    s3: S3Client,
    bucket: str,
    chain_code: str,
    frame: str | bytes,
    reason: str,
    offset: str | None,
    now: float,
) -> str:
    """Write one frame to `malformed/`; returns the object key. Raises what boto3 raises."""
    key = parked_frame_key(chain_code, offset, now)
    body = parked_frame_document(chain_code, frame, reason, offset, now)
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return key
