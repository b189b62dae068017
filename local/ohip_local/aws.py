"""The local AWS endpoint: moto in server mode on loopback, provisioned from `template.yaml`.

The queues, the table and the bucket are created from the SAM template itself, so that the local
stack and a real deployment cannot drift: a property this module does not know how to reproduce is
an error, not something silently skipped. Resource types that have no local counterpart (ECS,
Lambda, alarms...) are left out; they are listed in `ProvisionedStack.skipped`.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config

from ohip_relay.errors import StartupError

log = logging.getLogger(__name__)

LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_REGION = "us-east-1"
DEFAULT_STACK_NAME = "ohip-relay-local"
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class LocalStackError(StartupError):
    """The local stack could not be set up; the message is one line that says why."""


# --------------------------------------------------------------------------------------------
# Reading the template: YAML with CloudFormation's short-form intrinsic tags.
# --------------------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    pass


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def local_client(
    service: str, endpoint: str, region: str = DEFAULT_REGION, *, config: Config | None = None
) -> Any:
    """A boto3 client of the local AWS endpoint (moto), with its fixed credentials (and `config`,
    for example other retries)."""
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name=region,
        config=config,
        aws_access_key_id=LOCAL_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=LOCAL_CREDENTIALS["aws_secret_access_key"],
    )


def load_template(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation/SAM template, turning `!Ref x` into `{"Ref": "x"}` and so on."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LocalStackError(f"cannot read the template {path}: {exc.strerror}") from exc
    try:
        data = yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise LocalStackError(f"the template {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise LocalStackError(f"the template {path} has no Resources section")
    return data


# --------------------------------------------------------------------------------------------
# Resolving intrinsic functions, creating each resource the first time something needs it.
# --------------------------------------------------------------------------------------------

_NO_VALUE = object()


@dataclass
class _Created:
    ref: str
    attributes: dict[str, str]


@dataclass
class ProvisionedStack:
    """What the local stack holds, by logical id, plus the template's resolved outputs."""

    endpoint_url: str
    region: str
    stack_name: str
    refs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def queue_url(self) -> str:
        return self.outputs["QueueUrl"]

    @property
    def dlq_url(self) -> str:
        return self.outputs["DeadLetterQueueUrl"]

    @property
    def table_name(self) -> str:
        return self.outputs["TableName"]

    @property
    def bucket_name(self) -> str:
        return self.outputs["BucketName"]


class _Provisioner:
    def __init__(
        self,
        template: dict[str, Any],
        *,
        endpoint_url: str,
        region: str,
        stack_name: str,
        parameters: Mapping[str, str],
    ) -> None:
        self.template = template
        self.region = region
        self.stack_name = stack_name
        self.resources: dict[str, Any] = template["Resources"]
        self.parameters = self._parameter_values(parameters)
        self.created: dict[str, _Created] = {}
        self.in_progress: set[str] = set()
        self.skipped: dict[str, str] = {}
        session = boto3.session.Session(
            region_name=region,
            aws_access_key_id=LOCAL_CREDENTIALS["aws_access_key_id"],
            aws_secret_access_key=LOCAL_CREDENTIALS["aws_secret_access_key"],
        )
        # Typed as Any: the arguments are built from template properties, checked by _take().
        self.sqs: Any = session.client("sqs", endpoint_url=endpoint_url)
        self.dynamodb: Any = session.client("dynamodb", endpoint_url=endpoint_url)
        self.s3: Any = session.client("s3", endpoint_url=endpoint_url)
        self.creators: dict[str, Callable[[str, dict[str, Any]], _Created]] = {
            "AWS::SQS::Queue": self._create_queue,
            "AWS::DynamoDB::Table": self._create_table,
            "AWS::S3::Bucket": self._create_bucket,
        }

    def _parameter_values(self, overrides: Mapping[str, str]) -> dict[str, str]:
        declared: dict[str, Any] = self.template.get("Parameters") or {}
        unknown = sorted(set(overrides) - set(declared))
        if unknown:
            raise LocalStackError(f"unknown template parameter(s): {', '.join(unknown)}")
        values: dict[str, str] = {}
        for name, spec in declared.items():
            if name in overrides:
                value = str(overrides[name])
            elif "Default" in spec:
                value = str(spec["Default"])
            else:
                continue  # only an error if something local needs it
            allowed = spec.get("AllowedValues")
            if allowed is not None and value not in [str(a) for a in allowed]:
                raise LocalStackError(f"template parameter {name}={value!r} is not one of {allowed}")
            values[name] = value
        return values

    # -- intrinsic functions ------------------------------------------------------------------

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self._ref(str(arg))
            if key.startswith("Fn::"):
                return self._function(key[4:], arg)
            if key == "Condition":
                return self._condition(str(arg))
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::StackName": self.stack_name,
            "AWS::Region": self.region,
            "AWS::AccountId": LOCAL_ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources:
            return self.create(name).ref
        raise LocalStackError(f"template refers to {name!r}, which has no value in the local stack")

    def _get_att(self, logical_id: str, attribute: str) -> str:
        created = self.create(logical_id)
        if attribute not in created.attributes:
            raise LocalStackError(f"the local stack has no attribute {logical_id}.{attribute}")
        return created.attributes[attribute]

    def _function(self, name: str, arg: Any) -> Any:
        if name == "GetAtt":
            logical_id, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
            return self._get_att(str(logical_id), str(self.resolve(attribute)))
        if name == "Sub":
            template, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
            return re.sub(r"\$\{([^}!][^}]*)\}", lambda m: self._sub_var(m.group(1), variables), template)
        if name == "If":
            condition, when_true, when_false = arg
            return self.resolve(when_true if self._condition(condition) else when_false)
        if name == "Join":
            separator, items = arg
            return str(separator).join(str(v) for v in self.resolve(items))
        if name == "Select":
            index, items = arg
            return self.resolve(items)[int(self.resolve(index))]
        if name in ("Equals", "Not", "And", "Or"):
            return self._evaluate(name, arg)
        raise LocalStackError(f"the local stack cannot evaluate Fn::{name}")

    def _sub_var(self, name: str, variables: Mapping[str, Any]) -> str:
        if name in variables:
            return str(variables[name])
        if "." in name and not name.startswith("AWS::"):
            logical_id, attribute = name.split(".", 1)
            return self._get_att(logical_id, attribute)
        return str(self._ref(name))

    def _condition(self, name: str) -> bool:
        conditions: dict[str, Any] = self.template.get("Conditions") or {}
        if name not in conditions:
            raise LocalStackError(f"the template uses an undefined condition {name!r}")
        return bool(self.resolve(conditions[name]))

    def _evaluate(self, name: str, arg: Any) -> bool:
        if name == "Equals":
            left, right = self.resolve(arg)
            return str(left) == str(right)
        values = [bool(self.resolve(a)) for a in arg]
        if name == "Not":
            return not values[0]
        return all(values) if name == "And" else any(values)

    # -- resources ----------------------------------------------------------------------------

    def create(self, logical_id: str) -> _Created:
        if logical_id in self.created:
            return self.created[logical_id]
        if logical_id in self.in_progress:
            raise LocalStackError(f"the template has a reference cycle through {logical_id}")
        spec = self.resources[logical_id]
        creator = self.creators.get(spec.get("Type", ""))
        if creator is None:
            raise LocalStackError(
                f"{logical_id} ({spec.get('Type')}) is needed locally but has no local counterpart"
            )
        if "Condition" in spec and not self._condition(spec["Condition"]):
            raise LocalStackError(f"{logical_id} is needed locally but its condition is false")
        self.in_progress.add(logical_id)
        try:
            properties = self.resolve(spec.get("Properties") or {})
            created = creator(logical_id, properties)
        finally:
            self.in_progress.discard(logical_id)
        self.created[logical_id] = created
        log.info("local stack: created %s (%s)", logical_id, spec["Type"])
        return created

    def provision_all(self) -> None:
        for logical_id, spec in self.resources.items():
            if spec.get("Type") not in self.creators:
                self.skipped[logical_id] = str(spec.get("Type"))
                continue
            if "Condition" in spec and not self._condition(spec["Condition"]):
                self.skipped[logical_id] = f"{spec['Type']} (condition {spec['Condition']} is false)"
                continue
            self.create(logical_id)

    @staticmethod
    def _take(properties: dict[str, Any], logical_id: str, known: set[str]) -> None:
        unknown = sorted(set(properties) - known)
        if unknown:
            raise LocalStackError(
                f"{logical_id}: the local stack does not reproduce {', '.join(unknown)};"
                " teach local/ohip_local/aws.py before using it in template.yaml"
            )

    def _create_queue(self, logical_id: str, props: dict[str, Any]) -> _Created:
        attribute_names = {
            "FifoQueue",
            "ContentBasedDeduplication",
            "DeduplicationScope",
            "FifoThroughputLimit",
            "MessageRetentionPeriod",
            "VisibilityTimeout",
            "SqsManagedSseEnabled",
            "DelaySeconds",
            "MaximumMessageSize",
            "ReceiveMessageWaitTimeSeconds",
            "KmsMasterKeyId",
            "KmsDataKeyReusePeriodSeconds",
        }
        self._take(props, logical_id, attribute_names | {"QueueName", "RedrivePolicy", "Tags"})
        name = str(props.get("QueueName") or f"{self.stack_name}-{logical_id}")
        attributes = {k: _attribute(v) for k, v in props.items() if k in attribute_names}
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
        url = self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = f"arn:aws:sqs:{self.region}:{LOCAL_ACCOUNT_ID}:{name}"
        return _Created(ref=url, attributes={"Arn": arn, "QueueName": name, "QueueUrl": url})

    def _create_table(self, logical_id: str, props: dict[str, Any]) -> _Created:
        self._take(
            props,
            logical_id,
            {
                "TableName",
                "BillingMode",
                "AttributeDefinitions",
                "KeySchema",
                "TimeToLiveSpecification",
                "PointInTimeRecoverySpecification",
                "SSESpecification",
                "GlobalSecondaryIndexes",
                "DeletionProtectionEnabled",
                "Tags",
            },
        )
        name = str(props.get("TableName") or f"{self.stack_name}-{logical_id}")
        args: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PROVISIONED"),
        }
        if "GlobalSecondaryIndexes" in props:
            args["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        if "SSESpecification" in props:
            args["SSESpecification"] = {"Enabled": bool(props["SSESpecification"].get("SSEEnabled"))}
        arn = self.dynamodb.create_table(**args)["TableDescription"]["TableArn"]
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            self.dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={
                    "AttributeName": ttl["AttributeName"],
                    "Enabled": bool(ttl["Enabled"]),
                },
            )
        pitr = props.get("PointInTimeRecoverySpecification")
        if pitr:
            self.dynamodb.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={
                    "PointInTimeRecoveryEnabled": bool(pitr["PointInTimeRecoveryEnabled"])
                },
            )
        return _Created(ref=name, attributes={"Arn": arn})

    def _create_bucket(self, logical_id: str, props: dict[str, Any]) -> _Created:
        self._take(
            props,
            logical_id,
            {
                "BucketName",
                "BucketEncryption",
                "PublicAccessBlockConfiguration",
                "LifecycleConfiguration",
                "VersioningConfiguration",
                "OwnershipControls",
                "Tags",
            },
        )
        name = str(props.get("BucketName") or f"{self.stack_name}-{logical_id}".lower())
        if self.region == "us-east-1":
            self.s3.create_bucket(Bucket=name)
        else:
            self.s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region})
        if "BucketEncryption" in props:
            rules = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            self.s3.put_bucket_encryption(
                Bucket=name, ServerSideEncryptionConfiguration={"Rules": [_encryption_rule(r) for r in rules]}
            )
        if "PublicAccessBlockConfiguration" in props:
            self.s3.put_public_access_block(
                Bucket=name,
                PublicAccessBlockConfiguration={
                    k: bool(v) for k, v in props["PublicAccessBlockConfiguration"].items()
                },
            )
        if "VersioningConfiguration" in props:
            self.s3.put_bucket_versioning(
                Bucket=name, VersioningConfiguration={"Status": props["VersioningConfiguration"]["Status"]}
            )
        lifecycle = (props.get("LifecycleConfiguration") or {}).get("Rules")
        if lifecycle:
            self.s3.put_bucket_lifecycle_configuration(
                Bucket=name, LifecycleConfiguration={"Rules": [_lifecycle_rule(r) for r in lifecycle]}
            )
        return _Created(ref=name, attributes={"Arn": f"arn:aws:s3:::{name}"})


def _attribute(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _encryption_rule(rule: dict[str, Any]) -> Any:
    unknown = sorted(set(rule) - {"ServerSideEncryptionByDefault", "BucketKeyEnabled"})
    if unknown:
        raise LocalStackError(f"bucket encryption: the local stack does not reproduce {', '.join(unknown)}")
    out: dict[str, Any] = {"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}
    if "BucketKeyEnabled" in rule:
        out["BucketKeyEnabled"] = bool(rule["BucketKeyEnabled"])
    return out


def _lifecycle_rule(rule: dict[str, Any]) -> Any:
    known = {
        "Id",
        "Status",
        "ExpirationInDays",
        "Prefix",
        "AbortIncompleteMultipartUpload",
        "NoncurrentVersionExpiration",
    }
    unknown = sorted(set(rule) - known)
    if unknown:
        raise LocalStackError(f"bucket lifecycle: the local stack does not reproduce {', '.join(unknown)}")
    out: dict[str, Any] = {"Status": rule["Status"], "Filter": {"Prefix": rule.get("Prefix", "")}}
    if "Id" in rule:
        out["ID"] = rule["Id"]
    if "ExpirationInDays" in rule:
        out["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        days = int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
        out["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": days}
    if "NoncurrentVersionExpiration" in rule:
        days = int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
        out["NoncurrentVersionExpiration"] = {"NoncurrentDays": days}
    return out


def provision(
    endpoint_url: str,
    template_path: Path,
    *,
    stack_name: str = DEFAULT_STACK_NAME,
    region: str = DEFAULT_REGION,
    parameters: Mapping[str, str] | None = None,
) -> ProvisionedStack:
    """Create the template's queues, tables and buckets on `endpoint_url` (a moto server)."""
    template = load_template(template_path)
    provisioner = _Provisioner(
        template, endpoint_url=endpoint_url, region=region, stack_name=stack_name, parameters=parameters or {}
    )
    provisioner.provision_all()
    outputs: dict[str, str] = {}
    for name, spec in (template.get("Outputs") or {}).items():
        try:
            outputs[name] = str(provisioner.resolve(spec["Value"]))
        except LocalStackError as exc:
            log.debug("local stack: output %s has no local value (%s)", name, exc)
    return ProvisionedStack(
        endpoint_url=endpoint_url,
        region=region,
        stack_name=stack_name,
        refs={k: v.ref for k, v in provisioner.created.items()},
        outputs=outputs,
        skipped=provisioner.skipped,
    )


# --------------------------------------------------------------------------------------------
# The moto server.
# --------------------------------------------------------------------------------------------


def check_port_free(host: str, port: int) -> None:
    """Fail with one clear line when a fixed port is already taken (port 0 is always fine)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LocalStackError(f"port {port} on {host} is already in use ({exc.strerror})") from exc


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def moto_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run moto in server mode on loopback for the life of the block; yields its endpoint URL.

    The relay talks to it over HTTP exactly as it would talk to AWS.
    """
    from moto.server import ThreadedMotoServer

    check_port_free(host, port)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address=host, port=port or _free_port(host), verbose=False)
    server.start()
    try:
        actual_host, actual_port = server.get_host_and_port()
        yield f"http://{actual_host}:{actual_port}"
    finally:
        server.stop()
