"""The fleet benchmark's own arithmetic (bench/fleet.py): the capacity units it bills each DynamoDB
request counted at moto, and the gateway configuration whose offsets name their chain. Speed is
never asserted here; `python -m bench.fleet` measures it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from bench.fleet import CountingApp, capacity_units, idle_per_chain, requests_between
from bench.gateway_proc import OFFSET_SPACING, fleet_gateway_config

from ohip_local.source import FIRST_OFFSET


def _lease(owner: str = "w1") -> dict[str, Any]:
    return {"pk": {"S": "lease#CHAIN"}, "owner": {"S": owner}, "leaseUntil": {"N": "1764000030.5"}}


def test_a_renewal_is_one_write_unit_and_a_failed_condition_too() -> None:
    assert capacity_units("UpdateItem", {}, {"Attributes": _lease()}) == (0.0, 1.0)
    assert capacity_units("UpdateItem", {}, {"__type": "ConditionalCheckFailedException"}) == (0.0, 1.0)


def test_a_put_is_billed_per_kilobyte_of_its_item() -> None:
    item = {"pk": {"S": "worker#w1"}, "chains": {"S": "x" * 2500}}
    assert capacity_units("PutItem", {"Item": item}, {}) == (0.0, 3.0)


def test_reads_are_billed_per_4_kb_and_half_when_eventually_consistent() -> None:
    big = {"pk": {"S": "worker#w1"}, "chains": {"S": "x" * 5000}}
    assert capacity_units("GetItem", {"ConsistentRead": True}, {"Item": big}) == (2.0, 0.0)
    assert capacity_units("GetItem", {}, {"Item": big}) == (1.0, 0.0)
    assert capacity_units("GetItem", {"ConsistentRead": True}, {}) == (1.0, 0.0)  # not found


def test_a_batch_get_bills_every_key_found_or_not() -> None:
    request = {"RequestItems": {"t": {"Keys": [{"pk": {"S": f"lease#{i}"}} for i in range(3)]}}}
    answer = {"Responses": {"t": [_lease(), _lease()]}}
    assert capacity_units("BatchGetItem", request, answer) == (1.5, 0.0)


def test_idle_per_chain_subtracts_the_baseline_and_says_what_a_task_holds() -> None:
    ops = {"UpdateItem": {"n": 2.0, "rru": 0.0, "wru": 2.0}}
    result = {
        "chains": 2,
        "window_s": 10.0,
        "relay": {"rss_mib": 102.0, "uss_mib": 92.0, "cpu_s": 0.21, "cpu_share_of_one_core": 0.021},
        "baseline": {"rss_mib": 100.0, "uss_mib": 90.0, "cpu_s": 0.01, "cpu_share_of_one_core": 0.001},
        "dynamodb": {"relay": ops, "baseline": {}},
    }
    out = idle_per_chain(result)
    assert out["rss_mib"] == pytest.approx(1.0)
    assert out["cpu_share_of_one_vcpu"] == pytest.approx(0.01)  # 0.2 s over 10 s, 2 chains
    assert out["chains_per_task_by_memory"] == pytest.approx((512 * 0.7 - 100) / 1.0)
    assert out["chains_per_task_by_cpu"] == pytest.approx((0.25 * 0.7 - 0.001) / 0.01)
    # one write unit per chain every 10 s: the design's $0.164 per chain-month
    assert out["dynamodb"]["usd_per_chain_month"] == pytest.approx(0.164, abs=0.001)


def test_requests_between_two_snapshots_are_per_client() -> None:
    before = {"relay": {"GetItem": {"n": 1, "rru": 1.0, "wru": 0.0}}}
    after = {
        "relay": {"GetItem": {"n": 3, "rru": 2.0, "wru": 0.0}},
        "bench": {"GetItem": {"n": 9, "rru": 9.0, "wru": 0.0}},
    }
    assert requests_between(before, after, "relay") == {"GetItem": {"n": 2, "rru": 1.0, "wru": 0.0}}


def test_the_counting_layer_attributes_requests_to_the_client_named_in_the_user_agent() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield json.dumps({"Attributes": _lease()}).encode()

    counting = CountingApp(app)
    body = json.dumps({"TableName": "t"}).encode()
    environ = {
        "HTTP_USER_AGENT": "Boto3/1.43 md/Botocore#1.43 app/relay Botocore/1.43",
        "HTTP_X_AMZ_TARGET": "DynamoDB_20120810.UpdateItem",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    assert b"".join(counting(environ, lambda *_: None)) == json.dumps({"Attributes": _lease()}).encode()
    assert counting.counts == {"relay": {"UpdateItem": {"n": 1, "rru": 0.0, "wru": 1.0}}}


def test_every_chain_of_the_fleet_gateway_starts_at_an_offset_of_its_own() -> None:
    config = fleet_gateway_config(2, 3)
    starts = [dict(config.first_offsets)] + [dict(env.first_offsets) for env in config.environments]
    chains = [chain for env in starts for chain in env]
    assert chains == [f"ENV{e}CHAIN00{n}" for e in (0, 1) for n in (1, 2, 3)]
    offsets = [offset for env in starts for offset in env.values()]
    assert offsets == [FIRST_OFFSET + k * OFFSET_SPACING for k in range(6)]
