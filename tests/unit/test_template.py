"""template.yaml keeps the promises the issue and the README make about the deployed stack.

The alarms and the dashboard may only watch metrics the code emits: every OhipRelay metric named in
the template must be a value of `ohip_relay.telemetry.Metric`, with the `service` dimension that
Powertools Metrics adds ("stream" for the Fargate task, "poll" for the poll Lambda).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ohip_local.aws import load_template
from ohip_relay.telemetry import NAMESPACE, Metric

from ..conftest import TEMPLATE

SERVICES = {"stream", "poll", "enricher"}
METRIC_NAMES = {m.value for m in Metric}

# Which metric (namespace, name) each required alarm watches, and on which dimension values.
REQUIRED_ALARMS: dict[str, tuple[str, str, dict[str, str]]] = {
    "StreamUnhealthyAlarm": (NAMESPACE, "StreamHealthy", {"service": "poll"}),
    "FallbackActiveAlarm": (NAMESPACE, "FallbackActive", {"service": "poll"}),
    "DeadLetterQueueNotEmptyAlarm": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", {}),
    "OldestMessageAgeAlarm": ("AWS/SQS", "ApproximateAgeOfOldestMessage", {}),
    "PublishErrorsAlarm": (NAMESPACE, "PublishErrors", {"service": "stream"}),
    "PollErrorsAlarm": (NAMESPACE, "PollErrors", {"service": "poll"}),
    "ParkedEventsAlarm": (NAMESPACE, "MalformedEvents", {"service": "stream"}),
    "OffsetRegressionAlarm": (NAMESPACE, "OffsetRegressions", {"service": "stream"}),
    "LookalikeMatchesAlarm": (NAMESPACE, "LookalikeMatches", {"service": "stream"}),
    "AuthRefusedAlarm": (NAMESPACE, "AuthRefusals", {"service": "stream"}),
    "PollFunctionErrorsAlarm": ("AWS/Lambda", "Errors", {}),
    "NoRunningTaskAlarm": ("ECS/ContainerInsights", "RunningTaskCount", {}),
    # FleetMode=true only (issue #18): "a chain unhealthy", "chains without a holder", "fleet saturated"
    "ChainUnhealthyAlarm": (NAMESPACE, "ChainsUnhealthy", {"service": "poll"}),
    "ChainsWithoutHolderAlarm": (NAMESPACE, "ChainsWithoutHolder", {"service": "poll"}),
    "FleetSaturatedAlarm": (NAMESPACE, "ChainsRunning", {"service": "stream"}),
}
# The condition of each alarm that exists in one shape only (the rest exist in both).
ALARM_CONDITIONS = {
    "StreamUnhealthyAlarm": "IsSingleChain",
    "FallbackActiveAlarm": "IsSingleChain",
    "ChainUnhealthyAlarm": "IsFleet",
    "ChainsWithoutHolderAlarm": "IsFleet",
    "FleetSaturatedAlarm": "IsFleet",
    "EnrichErrorsAlarm": "EnricherEnabled",
    "EnrichedDeadLetterQueueNotEmptyAlarm": "EnricherEnabled",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = template["Resources"]
    return res


def _of_type(resources: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v.get("Properties") or {} for k, v in resources.items() if v["Type"] == kind}


def _one(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    found = _of_type(resources, kind)
    assert len(found) == 1, f"expected one {kind}, found {sorted(found)}"
    return next(iter(found.values()))


def _dimensions(alarm: dict[str, Any]) -> dict[str, Any]:
    return {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])}


# -- queue -------------------------------------------------------------------------------------


def test_queue_redrives_to_the_dead_letter_queue(resources: dict[str, Any]) -> None:
    redrive = resources["EventsQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]}
    assert redrive["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}


def test_queue_type_parameter_defaults_to_fifo(template: dict[str, Any]) -> None:
    assert template["Parameters"]["QueueType"]["Default"] == "fifo"
    assert set(template["Parameters"]["QueueType"]["AllowedValues"]) == {"fifo", "standard"}


@pytest.mark.parametrize("queue", ["EventsQueue", "EventsDeadLetterQueue"])
def test_queues_are_encrypted(resources: dict[str, Any], queue: str) -> None:
    props = resources[queue]["Properties"]
    assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props


def test_consumer_timeout_fits_the_visibility_timeout(resources: dict[str, Any]) -> None:
    visibility = resources["EventsQueue"]["Properties"]["VisibilityTimeout"]
    # AWS's advice for SQS event sources: visibility timeout >= 6 x the function's timeout.
    for name in ("ExampleConsumerFunction", "EnricherFunction"):
        assert 6 * resources[name]["Properties"]["Timeout"] <= visibility, name


# -- tables and bucket -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "ttl"), [("StateTable", "pk", "expiresAt"), ("IdempotencyTable", "id", "expiration")]
)
def test_tables(resources: dict[str, Any], table: str, key: str, ttl: str) -> None:
    props = resources[table]["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [{"AttributeName": key, "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": key, "AttributeType": "S"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["SSESpecification"]["SSEEnabled"] is True


def test_bucket_is_encrypted_private_and_expires_payloads(resources: dict[str, Any]) -> None:
    props = resources["OversizeBucket"]["Properties"]
    rules = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert all(v is True for v in props["PublicAccessBlockConfiguration"].values())
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    lifecycle = props["LifecycleConfiguration"]["Rules"]
    assert any(r.get("ExpirationInDays") and r.get("Prefix") == "oversize/" for r in lifecycle)


def test_bucket_policy_denies_plain_http(resources: dict[str, Any]) -> None:
    policy = _one(resources, "AWS::S3::BucketPolicy")
    assert policy["Bucket"] == {"Ref": "OversizeBucket"}
    statements = policy["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": False}}
        for s in statements
    )


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(resources: dict[str, Any]) -> None:
    topic = _one(resources, "AWS::SNS::Topic")
    assert topic["KmsMasterKeyId"] == {"Ref": "RelayKey"}
    key = resources["RelayKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    principals = [s["Principal"] for s in key["KeyPolicy"]["Statement"]]
    assert {"Service": "cloudwatch.amazonaws.com"} in principals


def test_log_groups_have_retention_and_encryption(resources: dict[str, Any]) -> None:
    groups = _of_type(resources, "AWS::Logs::LogGroup")
    assert set(groups) == {"StreamLogGroup", "PollLogGroup", "ConsumerLogGroup", "EnricherLogGroup"}
    for props in groups.values():
        assert props["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert props["KmsKeyId"] == {"Fn::GetAtt": ["RelayKey", "Arn"]}


# -- stream consumer (Fargate) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def container(resources: dict[str, Any]) -> dict[str, Any]:
    (definition,) = resources["StreamTaskDefinition"]["Properties"]["ContainerDefinitions"]
    return dict(definition)


def _branch(value: Any, fleet: bool) -> Any:
    """The value in one shape: the matching branch of `Fn::If` on IsFleet (NoValue: None)."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        condition, when_true, when_false = value["Fn::If"]
        assert condition == "IsFleet", value
        value = when_true if fleet else when_false
    return None if value == {"Ref": "AWS::NoValue"} else value


def _environment(container: dict[str, Any], *, fleet: bool) -> dict[str, Any]:
    entries = [_branch(e, fleet) for e in container["Environment"]]
    return {e["Name"]: e["Value"] for e in entries if e is not None}


def test_container_is_locked_down(container: dict[str, Any]) -> None:
    assert container["ReadonlyRootFilesystem"] is True
    user = str(container["User"]).split(":")
    assert user[0].isdigit()
    assert int(user[0]) != 0
    assert container["StopTimeout"] == 120
    assert container["LinuxParameters"]["Capabilities"]["Drop"] == ["ALL"]
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert _branch(container["HealthCheck"], fleet=False)["Command"][0] == "CMD-SHELL"
    # The fleet writes no per-chain heartbeat item: its check reads the scheduler's alive file.
    from ohip_relay.scheduler import ALIVE_FILE

    fleet_check = _branch(container["HealthCheck"], fleet=True)
    assert fleet_check["Command"][0] == "CMD-SHELL"
    assert ALIVE_FILE in fleet_check["Command"][1]


def test_dockerfile_runs_as_the_same_non_root_user(container: dict[str, Any]) -> None:
    dockerfile = (TEMPLATE.parent / "functions" / "stream_consumer" / "Dockerfile").read_text(
        encoding="utf-8"
    )
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users
    assert users[-1] == container["User"]
    assert re.search(r"^HEALTHCHECK ", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^ARG BASE=\S+:[\d.]+-slim\S*@sha256:[0-9a-f]{64}$", dockerfile, flags=re.MULTILINE)


def test_task_environment(container: dict[str, Any], resources: dict[str, Any]) -> None:
    env = _environment(container, fleet=False)
    assert {
        "OHIP_GATEWAY_URL",
        "OHIP_CHAIN_CODE",
        "OHIP_SECRET_ARN",
        "OHIP_ENTERPRISE_ID",
        "RELAY_QUEUE_URL",
        "RELAY_TABLE_NAME",
        "RELAY_BUCKET_NAME",
        "RELAY_LOG_FORMAT",
        "RELAY_START_POSITION",
        "RELAY_LEASE_SECONDS",
    } <= set(env)
    assert env["RELAY_LOG_FORMAT"] == "json"
    assert env["POWERTOOLS_SERVICE_NAME"] == "stream"
    assert env["RELAY_FLEET"] == {"Ref": "FleetMode"}
    task = resources["StreamTaskDefinition"]["Properties"]
    assert task["RuntimePlatform"]["CpuArchitecture"] == "ARM64"
    assert task["ExecutionRoleArn"] != task["TaskRoleArn"]


def test_fleet_task_gets_no_single_chain_variable(container: dict[str, Any]) -> None:
    """config.py refuses the OHIP_* variables with RELAY_FLEET=true: the fleet's task has none."""
    from ohip_relay.config import SINGLE_CHAIN_VARIABLES

    fleet = _environment(container, fleet=True)
    assert not set(fleet) & set(SINGLE_CHAIN_VARIABLES)
    assert set(_environment(container, fleet=False)) - set(fleet) == {
        "OHIP_GATEWAY_URL",
        "OHIP_CHAIN_CODE",
        "OHIP_SECRET_ARN",
        "OHIP_ENTERPRISE_ID",
    }


def test_fleet_parameters(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert parameters["FleetMode"]["Default"] == "false"
    assert parameters["FleetMode"]["AllowedValues"] == ["false", "true"]
    assert parameters["StreamTasks"]["Type"] == "Number"
    assert (parameters["StreamTasks"]["Default"], parameters["StreamTasks"]["MinValue"]) == (1, 1)
    assert parameters["StreamTasks"]["MaxValue"] == 100
    assert parameters["FleetChainsPerTaskAlarm"]["Default"] == 200
    assert parameters["RegistrySecretArnPattern"]["Default"] == "ohip/*"
    assert template["Conditions"]["IsFleet"] == {"Fn::Equals": [{"Ref": "FleetMode"}, "true"]}
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    (stream,) = [g for g in groups if g["Label"]["default"] == "Stream consumer (Fargate)"]
    assert {"FleetMode", "StreamTasks"} <= set(stream["Parameters"])


def test_the_enricher_is_refused_with_a_fleet(template: dict[str, Any]) -> None:
    """The enricher knows one OPERA environment (the OHIP_* parameters); a fleet serves many."""
    rule = template["Rules"]["EnricherServesOneEnvironment"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "FleetMode"}, "true"]}
    assert rule["Assertions"][0]["Assert"] == {"Fn::Equals": [{"Ref": "EnableEnricher"}, "false"]}


def test_service_never_runs_two_tasks_for_one_chain(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    service = resources["StreamService"]["Properties"]
    assert service["DesiredCount"] == {"Ref": "StreamTasks"}
    # More than one task only in the fleet, where the leases keep one connection per chain.
    rule = template["Rules"]["OneTaskPerChain"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "FleetMode"}, "false"]}
    assert rule["Assertions"][0]["Assert"] == {"Fn::Equals": [{"Ref": "StreamTasks"}, "1"]}
    deployment = service["DeploymentConfiguration"]
    # Single chain: stop the old task, then start the new one. Fleet: rolling (fleet-design.md, 6).
    assert _branch(deployment["MaximumPercent"], fleet=False) == 100
    assert _branch(deployment["MinimumHealthyPercent"], fleet=False) == 0
    assert _branch(deployment["MaximumPercent"], fleet=True) == 200
    assert _branch(deployment["MinimumHealthyPercent"], fleet=True) == 50
    assert deployment["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}


def test_cluster_has_container_insights(resources: dict[str, Any]) -> None:
    settings = resources["Cluster"]["Properties"]["ClusterSettings"]
    assert {"Name": "containerInsights", "Value": "enabled"} in settings


# -- Lambdas -----------------------------------------------------------------------------------


def test_poll_function(resources: dict[str, Any]) -> None:
    props = resources["PollFunction"]["Properties"]
    assert props["Handler"] == "app.handler"
    assert props["CodeUri"] == "functions/poll_fallback/"
    assert props["Runtime"] == "python3.12"
    assert props["Architectures"] == ["arm64"]
    assert props["ReservedConcurrentExecutions"] == {"Ref": "PollShards"}  # one tick per shard at a time
    assert props["Timeout"] < 60  # ticks never overlap on a one-minute schedule
    assert props["Layers"] == [{"Ref": "SharedLayer"}]
    for event in props["Events"].values():
        assert event["Type"] == "Schedule"
        assert event["Properties"]["Schedule"] == {"Ref": "PollSchedule"}
    env = props["Environment"]["Variables"]
    assert {
        "OHIP_GATEWAY_URL",
        "OHIP_CHAIN_CODE",
        "OHIP_HOTEL_IDS",
        "OHIP_EXTERNAL_SYSTEM",
        "OHIP_SECRET_ARN",
        "RELAY_QUEUE_URL",
        "RELAY_TABLE_NAME",
        "RELAY_BUCKET_NAME",
        "RELAY_HEALTH_STALE_SECONDS",
        "RELAY_HEALTH_GRACE_SECONDS",
        "RELAY_HEALTH_RECOVER_SECONDS",
        "RELAY_SEEN_TTL_DAYS",
        "RELAY_POLL_PAGE_LIMIT",
    } <= set(env)
    assert env["POWERTOOLS_SERVICE_NAME"] == "poll"


def test_schedule_default_is_every_minute(template: dict[str, Any]) -> None:
    assert template["Parameters"]["PollSchedule"]["Default"] == "rate(1 minute)"


def _condition(template: dict[str, Any], value: Any, parameters: dict[str, str]) -> Any:
    """A condition's value for these parameter values (Fn::And/Or/Not/Equals, Condition, Ref)."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return parameters[arg]
        if key in ("Condition", "Fn::Condition"):
            return _condition(template, template["Conditions"][arg], parameters)
        values = [_condition(template, a, parameters) for a in arg] if isinstance(arg, list) else arg
        if key == "Fn::Equals":
            return str(values[0]) == str(values[1])
        if key == "Fn::Not":
            return not values[0]
        if key == "Fn::And":
            return all(values)
        if key == "Fn::Or":
            return any(values)
    return value


@pytest.mark.parametrize("fleet", ["true", "false"])
@pytest.mark.parametrize("shards", range(1, 9))
def test_one_poll_schedule_per_shard(template: dict[str, Any], fleet: str, shards: int) -> None:
    """Shard 0's schedule always runs; shard k's only in fleet mode with more than k shards. Each
    schedule's input names its shard and the number of shards."""
    spec = template["Parameters"]["PollShards"]
    assert (spec["Default"], spec["MinValue"], spec["MaxValue"]) == (1, 1, 8)
    events = template["Resources"]["PollFunction"]["Properties"]["Events"]
    parameters = {"FleetMode": fleet, "PollShards": str(shards)}
    running = []
    for name, event in events.items():
        props = event["Properties"]
        if "State" in props:
            condition, on, off = props["State"]["Fn::If"]
            assert (on, off) == ("ENABLED", "DISABLED")
            enabled = _condition(template, {"Condition": condition}, parameters)
        else:
            enabled = props["Enabled"] is True
        if enabled:
            text = props["Input"]["Fn::Sub"].replace("${PollShards}", str(shards))
            running.append((name, json.loads(text)))
    expected = shards if fleet == "true" else 1
    assert [shard["shard"] for _, shard in running] == list(range(expected))
    assert all(shard["shards"] == shards for _, shard in running)


def test_poll_function_in_fleet_mode_gets_no_single_chain_variables(resources: dict[str, Any]) -> None:
    env = resources["PollFunction"]["Properties"]["Environment"]["Variables"]
    for name in (
        "OHIP_GATEWAY_URL",
        "OHIP_CHAIN_CODE",
        "OHIP_HOTEL_IDS",
        "OHIP_EXTERNAL_SYSTEM",
        "OHIP_SECRET_ARN",
    ):
        condition, when_fleet, _ = env[name]["Fn::If"]
        assert (condition, when_fleet) == ("IsFleet", {"Ref": "AWS::NoValue"})
    assert env["RELAY_FLEET"] == {"Ref": "FleetMode"}
    assert env["RELAY_POLL_CONCURRENCY"] == {"Ref": "PollConcurrency"}


def test_shared_layer_is_built_from_shared(resources: dict[str, Any]) -> None:
    layer = resources["SharedLayer"]
    assert layer["Metadata"]["BuildMethod"] == "python3.12"
    assert layer["Properties"]["ContentUri"] == "shared/"
    assert (TEMPLATE.parent / "shared" / "requirements.txt").is_file()


def test_example_consumer(resources: dict[str, Any]) -> None:
    props = resources["ExampleConsumerFunction"]["Properties"]
    assert props["Handler"] == "app.handler"
    assert props["CodeUri"] == "functions/example_consumer/"
    (event,) = props["Events"].values()
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["Environment"]["Variables"]["IDEMPOTENCY_TABLE_NAME"] == {"Ref": "IdempotencyTable"}


# -- IAM -----------------------------------------------------------------------------------------
# What each role may do is proven by use, not listed here: tests/integration/test_permissions.py
# runs, for every grant of every role, the scenario that needs it with and without the grant (IAM
# enforced on the local stack), and docs/permissions.md lists the grants no local scenario can
# exercise. These tests keep the shape that proof relies on.


def _roles(resources: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in resources.items() if v["Type"] == "AWS::IAM::Role")


def _statements(resources: dict[str, Any], role: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for policy in resources[role]["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in statement:  # optional statement: check the branch that adds it
                statement = statement["Fn::If"][1]
            out.append(statement)
    return out


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_every_component_role_is_in_the_template(resources: dict[str, Any]) -> None:
    assert _roles(resources) == [
        "ConsumerRole",
        "EnricherRole",
        "OperatorRole",
        "PollRole",
        "StreamExecutionRole",
        "StreamTaskRole",
    ]


@pytest.mark.parametrize(
    "role",
    ["ConsumerRole", "EnricherRole", "OperatorRole", "PollRole", "StreamExecutionRole", "StreamTaskRole"],
)
def test_roles_have_named_allow_statements_only(resources: dict[str, Any], role: str) -> None:
    props = resources[role]["Properties"]
    assert "ManagedPolicyArns" not in props  # every permission is in the template, where it is proven
    sids = [s.get("Sid") for s in _statements(resources, role)]
    assert all(sids), f"{role}: every statement needs a Sid (docs/permissions.md names them)"
    assert len(set(sids)) == len(sids), f"{role}: Sids repeat"
    for statement in _statements(resources, role):
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, f"{role}: {statement}"
        for action in _actions(statement):
            assert "*" not in action, f"{role}: {action}"
        if statement["Resource"] == "*":
            assert _actions(statement) == ["ecr:GetAuthorizationToken"], f"{role}: {statement}"


def test_functions_use_their_own_roles(resources: dict[str, Any]) -> None:
    # Without an explicit role SAM attaches AWS managed policies with Resource "*".
    assert resources["PollFunction"]["Properties"]["Role"] == {"Fn::GetAtt": ["PollRole", "Arn"]}
    assert resources["ExampleConsumerFunction"]["Properties"]["Role"] == {
        "Fn::GetAtt": ["ConsumerRole", "Arn"]
    }
    task = resources["StreamTaskDefinition"]["Properties"]
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["StreamTaskRole", "Arn"]}
    assert task["ExecutionRoleArn"] == {"Fn::GetAtt": ["StreamExecutionRole", "Arn"]}


def test_the_operator_role_is_assumed_from_the_account(resources: dict[str, Any]) -> None:
    trust = resources["OperatorRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [
        {
            "Effect": "Allow",
            "Principal": {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}},
            "Action": "sts:AssumeRole",
        }
    ]


# -- alarms and dashboard: only metrics the code emits -------------------------------------------


def test_every_required_alarm_is_present(resources: dict[str, Any]) -> None:
    alarms = _of_type(resources, "AWS::CloudWatch::Alarm")
    assert set(REQUIRED_ALARMS) <= set(alarms)
    for name, (namespace, metric, dimensions) in REQUIRED_ALARMS.items():
        alarm = alarms[name]
        assert (alarm["Namespace"], alarm["MetricName"]) == (namespace, metric), name
        assert dimensions.items() <= _dimensions(alarm).items(), name
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], name


def test_alarms_on_relay_metrics_name_emitted_metrics(resources: dict[str, Any]) -> None:
    alarms = _of_type(resources, "AWS::CloudWatch::Alarm")
    relay = {k: v for k, v in alarms.items() if v.get("Namespace") == NAMESPACE}
    assert relay, "no alarm watches the relay's own metrics"
    for name, alarm in relay.items():
        assert alarm["MetricName"] in METRIC_NAMES, f"{name}: {alarm['MetricName']} is not a telemetry.Metric"
        dimensions = _dimensions(alarm)
        assert set(dimensions) == {"service"}, f"{name}: Powertools emits only the service dimension"
        assert dimensions["service"] in SERVICES, name


def _dashboard_body(resources: dict[str, Any], *, fleet: bool) -> str:
    body = _branch(resources["Dashboard"]["Properties"]["DashboardBody"], fleet)["Fn::Sub"]
    assert isinstance(body, str)
    return body


def _dashboard_widgets(resources: dict[str, Any], *, fleet: bool) -> list[dict[str, Any]]:
    widgets: list[dict[str, Any]] = json.loads(
        re.sub(r"\$\{[^}]+\}", "x", _dashboard_body(resources, fleet=fleet))
    )["widgets"]
    return widgets


def _dashboard_metrics(resources: dict[str, Any], *, fleet: bool | None = None) -> list[list[Any]]:
    """The metrics of the dashboard's widgets, in one shape or (None) in both."""
    metrics: list[list[Any]] = []
    for shape in (False, True) if fleet is None else (fleet,):
        for widget in _dashboard_widgets(resources, fleet=shape):
            metrics.extend(widget["properties"].get("metrics", []))
    return metrics


def test_dashboard_metrics_in_the_relay_namespace_are_emitted(resources: dict[str, Any]) -> None:
    relay = [m for m in _dashboard_metrics(resources) if m[0] == NAMESPACE]
    assert relay
    for metric in relay:
        name, *rest = metric[1:]
        dimensions = [x for x in rest if not isinstance(x, dict)]
        assert name in METRIC_NAMES, f"dashboard: {name} is not a telemetry.Metric"
        assert dimensions[::2] == ["service"], f"dashboard: {metric} has other dimensions than service"
        assert dimensions[1] in SERVICES, f"dashboard: {metric}"


def test_dashboard_shows_lag_throughput_health_and_fallback(resources: dict[str, Any]) -> None:
    shown = {(m[1], m[3]) for m in _dashboard_metrics(resources, fleet=False) if m[0] == NAMESPACE}
    assert {
        (Metric.STREAM_LAG.value, "stream"),
        (Metric.EVENTS_PUBLISHED.value, "stream"),
        (Metric.POLL_EVENTS_PUBLISHED.value, "poll"),
        (Metric.STREAM_HEALTHY.value, "poll"),
        (Metric.FALLBACK_ACTIVE.value, "poll"),
    } <= shown


def test_dashboard_shows_fleet_totals_and_the_worst_chains(resources: dict[str, Any]) -> None:
    widgets = _dashboard_widgets(resources, fleet=True)
    stat = {
        (metric[1], metric[3], widget["properties"].get("stat"))
        for widget in widgets
        for metric in widget["properties"].get("metrics", [])
        if metric[0] == NAMESPACE
    }
    assert {
        (Metric.CHAINS_RUNNING.value, "stream", "Sum"),
        (Metric.CHAINS_CONNECTED.value, "stream", "Sum"),
        (Metric.CHAINS_DOWN.value, "stream", "Sum"),
        (Metric.CHAINS_UNHEALTHY.value, "poll", "Maximum"),
        (Metric.CHAINS_WITHOUT_HOLDER.value, "poll", "Maximum"),
        (Metric.MAX_STREAM_LAG.value, "stream", "Maximum"),
    } <= stat
    queries = [w["properties"]["query"] for w in widgets if w["type"] == "log"]
    assert any("worst.0" in q for q in queries), "a Logs Insights widget lists the worst chains"
    assert any("by subscription" in q for q in queries), "and the chains' state changes"
    assert _dashboard_body(resources, fleet=True).count("SOURCE '${StreamLogGroup}'") == len(queries)


def test_dashboard_alarm_widget_lists_every_alarm(resources: dict[str, Any]) -> None:
    alarms = _of_type(resources, "AWS::CloudWatch::Alarm")
    conditions = {name: resources[name].get("Condition") for name in alarms}
    assert {k: v for k, v in conditions.items() if v} == ALARM_CONDITIONS
    for fleet, other_shape in ((False, "IsFleet"), (True, "IsSingleChain")):
        listed = set(re.findall(r"\$\{(\w+Alarm)\.Arn\}", _dashboard_body(resources, fleet=fleet)))
        # Every alarm of the shape; not the enricher's (the dashboard cannot name a missing one).
        assert listed == {n for n, c in conditions.items() if c not in (other_shape, "EnricherEnabled")}, (
            fleet
        )


def test_fleet_alarms(resources: dict[str, Any]) -> None:
    """ "a chain unhealthy" 3 of 3 minutes, "chains without a holder" 2 of 2, "fleet saturated" 5."""
    alarms = _of_type(resources, "AWS::CloudWatch::Alarm")
    for name, minutes, threshold in (
        ("ChainUnhealthyAlarm", 3, 0),
        ("ChainsWithoutHolderAlarm", 2, 0),
        ("FleetSaturatedAlarm", 5, {"Ref": "FleetChainsPerTaskAlarm"}),
    ):
        alarm = alarms[name]
        assert alarm["Statistic"] == "Maximum", name
        assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (
            60,
            minutes,
            minutes,
        )
        assert alarm["Threshold"] == threshold, name
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold", name
        assert alarm["OKActions"] == [{"Ref": "AlarmTopic"}], name


# -- suppressions and outputs ------------------------------------------------------------------


def test_every_checkov_suppression_carries_a_reason(resources: dict[str, Any]) -> None:
    for name, resource in resources.items():
        for skip in ((resource.get("Metadata") or {}).get("checkov") or {}).get("skip", []):
            assert re.fullmatch(r"CKV_AWS_\d+", skip["id"]), name
            assert len(skip.get("comment", "")) >= 40, f"{name}: {skip['id']} needs a written reason"


def test_outputs(template: dict[str, Any]) -> None:
    assert {
        "QueueUrl",
        "DeadLetterQueueUrl",
        "TableName",
        "BucketName",
        "DashboardUrl",
        "OperatorRoleArn",
    } <= set(template["Outputs"])
