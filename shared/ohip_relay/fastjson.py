"""JSON on the stream consumer's hot path: orjson's speed, the standard library's answers.

Every frame is decoded once and every event is encoded twice (its event key and its SQS body),
then once more inside a SendMessageBatch request. With the standard library that was about a
fifth of the relay's CPU per event; orjson does the same work in a fraction of the time.

The answers must not change, because the event key is a SHA-256 over the encoded bytes and the
body is documented as compact ASCII JSON. So orjson is used only where its output is provably the
standard library's, and the standard library decides everything else:

- `loads`: orjson's result when it accepts the text (it accepts a subset of what `json` accepts
  and parses it to the same values), except for text holding a run of 19 or more digits, where
  orjson would turn an integer beyond 64 bits into a float; otherwise the given
  `json.JSONDecoder` runs and raises, or accepts, exactly as before (lone surrogate escapes,
  NaN/Infinity through the decoder's own `parse_constant`).
- `dumps_ascii_bytes` / `dumps_ascii`: what `json.dumps(value, separators=(",", ":"),
  ensure_ascii=True)` gives, byte for byte, for values made of dicts with string keys, lists,
  tuples, strings, integers, booleans and None (no floats: the two libraries spell some floats
  differently, and nothing encoded here holds one). orjson writes UTF-8 and leaves DEL (0x7F)
  unescaped, where `ensure_ascii` escapes both; an output with either falls back to the standard
  library, as does a value orjson refuses (a non-string key, an integer beyond 64 bits).
  `tests/unit/test_fastjson.py` compares the two on generated values.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# json.dumps(value, separators=(",", ":"), ensure_ascii=True), built once.
_COMPACT_ASCII = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
_PLAIN = json.JSONDecoder()
_DEL = b"\x7f"
# 19 digits can exceed 2**63; orjson reads such integers as floats. Strings with long digit runs
# count too, which only costs them the slower decoder. Found by mapping every digit to "0" and
# looking for 19 of them in a row: a tenth of the time a regular expression takes.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19


def loads(text: str | bytes, decoder: json.JSONDecoder = _PLAIN) -> Any:
    """`decoder.decode(text)`, through orjson when orjson accepts the text."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if _LONG_DIGITS not in data.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(data)  # a lone surrogate is invalid UTF-8 to orjson: refused
        except orjson.JSONDecodeError:
            pass
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return decoder.decode(text)


def dumps_ascii_bytes(value: Any) -> bytes:
    """Compact, ASCII-only JSON of `value` as bytes (see the module docstring for what it takes)."""
    try:
        out = orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _COMPACT_ASCII.encode(value).encode("ascii")
    if out.isascii() and _DEL not in out:
        return out
    return _COMPACT_ASCII.encode(value).encode("ascii")


def dumps_ascii(value: Any) -> str:
    """Compact, ASCII-only JSON of `value` as text."""
    return dumps_ascii_bytes(value).decode("ascii")
