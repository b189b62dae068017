"""template.yaml's optional enricher: off by default, self-contained when on. Its role's grants are
proven by use in tests/integration/test_permissions.py (EnricherRole), like every other role's.

With `EnableEnricher=false` (the default) no enricher resource exists and nothing else refers to
one; with `true` the enricher is the relay queue's only consumer and publishes to its own queue.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ohip_local.aws import load_template

from ..conftest import TEMPLATE

ENRICHER_RESOURCES = {
    "EnrichedQueue",
    "EnrichedDeadLetterQueue",
    "EnricherRole",
    "EnricherFunction",
    "EnricherLogGroup",
    "EnrichErrorsAlarm",
    "EnrichedDeadLetterQueueNotEmptyAlarm",
}
ENRICHER_OUTPUTS = {"EnrichedQueueUrl", "EnrichedQueueArn", "EnrichedDeadLetterQueueUrl"}
CONDITION = "EnricherEnabled"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = template["Resources"]
    return res


def _references(value: Any) -> Iterator[str]:
    """Logical ids a value refers to (Ref, GetAtt, ${X} and ${X.Attr} in Sub), outside Fn::If branches."""
    if isinstance(value, list):
        for item in value:
            yield from _references(item)
    elif isinstance(value, dict):
        if "Fn::If" in value:  # a conditional reference is checked by cfn-lint; skip it here
            return
        for key, arg in value.items():
            if key == "Ref":
                yield str(arg)
            elif key == "Fn::GetAtt":
                yield str(arg[0] if isinstance(arg, list) else str(arg).split(".")[0])
            elif key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                yield from (m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text))
                if isinstance(arg, list):
                    yield from _references(arg[1])
            else:
                yield from _references(arg)


def test_the_enricher_is_off_by_default(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["EnableEnricher"]
    assert parameter["Default"] == "false"
    assert set(parameter["AllowedValues"]) == {"true", "false"}
    assert template["Conditions"][CONDITION] == {"Fn::Equals": [{"Ref": "EnableEnricher"}, "true"]}


def test_every_enricher_resource_and_output_depends_on_the_condition(template: dict[str, Any]) -> None:
    conditional = {k for k, v in template["Resources"].items() if v.get("Condition") == CONDITION}
    assert conditional == ENRICHER_RESOURCES
    outputs = {k for k, v in template["Outputs"].items() if v.get("Condition") == CONDITION}
    assert outputs == ENRICHER_OUTPUTS


def test_nothing_unconditional_refers_to_an_enricher_resource(template: dict[str, Any]) -> None:
    for name, resource in template["Resources"].items():
        if resource.get("Condition") == CONDITION:
            continue
        assert not set(_references(resource)) & ENRICHER_RESOURCES, name
    for name, output in template["Outputs"].items():
        if output.get("Condition") != CONDITION:
            assert not set(_references(output)) & ENRICHER_RESOURCES, name


def test_the_enriched_queue_has_its_own_dead_letter_queue(resources: dict[str, Any]) -> None:
    queue = resources["EnrichedQueue"]["Properties"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["EnrichedDeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    for name in ("EnrichedQueue", "EnrichedDeadLetterQueue"):
        props = resources[name]["Properties"]
        assert props["SqsManagedSseEnabled"] is True
        # FIFO exactly when the relay queue is (the same ordering per resource)
        assert props["FifoQueue"] == resources["EventsQueue"]["Properties"]["FifoQueue"]


def test_the_enricher_function(resources: dict[str, Any]) -> None:
    props = resources["EnricherFunction"]["Properties"]
    assert props["Handler"] == "app.handler"
    assert props["CodeUri"] == "functions/enricher/"
    assert (TEMPLATE.parent / "functions" / "enricher" / "app.py").is_file()
    assert props["Runtime"] == "python3.12"
    assert props["Architectures"] == ["arm64"]
    assert props["Layers"] == [{"Ref": "SharedLayer"}]
    assert props["Role"] == {"Fn::GetAtt": ["EnricherRole", "Arn"]}
    assert props["Timeout"] <= resources["EventsQueue"]["Properties"]["VisibilityTimeout"]
    (source,) = props["Events"].values()
    assert source["Type"] == "SQS"
    assert source["Properties"]["Queue"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    assert source["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # bounded: at most MaximumConcurrency invocations, each with EnrichConcurrency REST calls
    scaling = source["Properties"]["ScalingConfig"]
    assert scaling["MaximumConcurrency"] <= props["ReservedConcurrentExecutions"]
    env = props["Environment"]["Variables"]
    assert env["RELAY_ENRICHED_QUEUE_URL"] == {"Ref": "EnrichedQueue"}
    assert env["RELAY_ENRICH_CONCURRENCY"] == {"Ref": "EnrichConcurrency"}
    assert {"OHIP_GATEWAY_URL", "OHIP_SECRET_ARN", "RELAY_BUCKET_NAME"} <= set(env)
    app = (TEMPLATE.parent / "functions" / "enricher" / "app.py").read_text(encoding="utf-8")
    assert f'SERVICE = "{env["POWERTOOLS_SERVICE_NAME"]}"' in app


def test_the_example_consumer_leaves_the_relay_queue_to_the_enricher(resources: dict[str, Any]) -> None:
    (source,) = resources["ExampleConsumerFunction"]["Properties"]["Events"].values()
    assert source["Properties"]["Enabled"] == {"Fn::If": [CONDITION, False, True]}


def test_the_routing_file_ships_in_the_shared_layer(resources: dict[str, Any]) -> None:
    layer = Path(TEMPLATE.parent / resources["SharedLayer"]["Properties"]["ContentUri"])
    assert (layer / "ohip_relay" / "routes" / "enrich-routes.json").is_file()
