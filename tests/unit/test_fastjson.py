"""fastjson gives the standard library's answers: the event key hashes its bytes, and the SQS body
is documented as compact ASCII JSON, so a difference of one byte would be a breaking change."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from ohip_relay import fastjson
from ohip_relay.events import from_stream

# Every kind of character the two libraries might treat differently: controls, quote, backslash,
# slash, DEL, Latin-1, BMP, surrogate pairs (astral), and a lone surrogate (orjson refuses it).
ALPHABET = [chr(c) for c in range(0x00, 0x21)] + list('"\\/ azAZ09&<>{}[],:')
ALPHABET += ["\x7f", "\x80", "é", "\u2028", "\u2029", "\ufeff", "\ufffe", "\uffff", "😀", "\U0010ffff"]
LONE = "\ud800"


def text(rng: random.Random, *, lone: bool = False) -> str:
    chars = [rng.choice(ALPHABET) for _ in range(rng.randrange(0, 12))]
    if lone and rng.random() < 0.1:
        chars.insert(rng.randrange(len(chars) + 1), LONE)
    return "".join(chars)


def value(rng: random.Random, depth: int = 0, *, floats: bool = False) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 7, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**70)])
    if kind in (3, 4):
        return text(rng, lone=True)
    if kind == 5:
        if floats and rng.random() < 0.5:
            return rng.choice([0.1, -0.0, 1e16, 1.5e-7, 2.5e300, rng.random() * 10 ** rng.randrange(-30, 30)])
        return rng.choice(["1234567890123456789", "9" * 30, "x" + "0" * 25, "phone 4420794600"])
    if kind == 6:
        return [value(rng, depth + 1, floats=floats) for _ in range(rng.randrange(4))]
    if kind == 7:
        return tuple(value(rng, depth + 1, floats=floats) for _ in range(rng.randrange(3)))
    return {text(rng, lone=True): value(rng, depth + 1, floats=floats) for _ in range(rng.randrange(4))}


def reference(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


@pytest.mark.parametrize("seed", range(20))
def test_dumps_ascii_is_the_standard_librarys_output_byte_for_byte(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        obj = value(rng)
        assert fastjson.dumps_ascii(obj) == reference(obj)
        assert fastjson.dumps_ascii_bytes(obj) == reference(obj).encode("ascii")


def test_dumps_ascii_falls_back_where_orjson_differs_or_refuses() -> None:
    for obj in ["\x7f", "é", LONE, {1: "int key"}, 2**64, ["ok", "\u2028"]]:
        assert fastjson.dumps_ascii(obj) == reference(obj)


@pytest.mark.parametrize("seed", range(20))
def test_loads_is_the_standard_librarys_result(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        obj = value(rng, floats=True)
        for encoded in (reference(obj), json.dumps(obj, ensure_ascii=False)):
            try:
                expected = json.loads(encoded)
            except ValueError:
                continue
            assert fastjson.loads(encoded) == expected
            assert type(fastjson.loads(encoded)) is type(expected)


def test_loads_lets_the_given_decoder_decide_what_orjson_refuses() -> None:
    def reject(name: str) -> Any:
        raise LookupError(name)

    strict = json.JSONDecoder(parse_constant=reject)
    with pytest.raises(LookupError):
        fastjson.loads('{"a": NaN}', strict)
    assert math.isnan(fastjson.loads('{"a": NaN}')["a"])  # the plain decoder's
    assert fastjson.loads('"\\ud800"') == LONE
    assert fastjson.loads(str(2**70)) == 2**70
    assert fastjson.loads(b'{"a": 1}') == {"a": 1}
    with pytest.raises(json.JSONDecodeError):
        fastjson.loads("{not json")
    with pytest.raises(UnicodeDecodeError):
        fastjson.loads(b"\xff")


def test_a_body_with_non_ascii_values_is_still_ascii_and_the_same_event() -> None:
    event = from_stream(
        {
            "metadata": {"offset": "5", "uniqueEventId": "u-5"},
            "moduleName": "Profile",
            "eventName": "UPDATE PROFILE",
            "primaryKey": "77",
            "timestamp": "2026-11-25T10:15:38.123Z",
            "hotelId": "H1",
            "detail": [{"elementName": "NAME", "oldValue": "Müller\x7f", "newValue": "Mül😀ler"}],
        },
        "CHAIN",
        datetime(2026, 11, 25, 10, 15, 39, tzinfo=UTC),
    )
    body = event.to_json()
    assert body.isascii()
    assert body == reference(event.to_dict())
