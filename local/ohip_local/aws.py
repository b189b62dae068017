"""The local AWS endpoint: moto in server mode on loopback, provisioned from `template.yaml`.

The queues, the table and the bucket are created from the SAM template itself, so that the local
stack and a real deployment cannot drift: a property this module does not know how to reproduce is
an error, not something silently skipped. Resource types that have no local counterpart (ECS,
Lambda, alarms...) are left out; they are listed in `ProvisionedStack.skipped`.

IAM is enforced (`iam.py`, docs/permissions.md): each IAM role of the template is created with its
policies resolved against the local resources (log groups, which nothing writes locally, count
only for their ARNs), and each component runs with temporary credentials of its own role
(`ProvisionedStack.credentials`, STS AssumeRole). The harness signs as the local administrator
(`LOCAL_CREDENTIALS`). The OHIP credentials secret (`OhipSecretArn`) is a local Secrets Manager
secret unless the caller passes that parameter.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
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
# The local administrator (iam.py): the harness signs with it, never a component.
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
LOCAL_ADMIN_ARN = f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:user/ohip-local-admin"

# The template role each component runs under (docs/permissions.md).
STREAM_ROLE = "StreamTaskRole"  # `ohip-relay stream` (the Fargate task) and its health check `status`
POLL_ROLE = "PollRole"  # `ohip-relay poll` and functions/poll_fallback
CONSUMER_ROLE = "ConsumerRole"  # functions/example_consumer and its SQS event source
ENRICHER_ROLE = "EnricherRole"  # functions/enricher and its SQS event source
OPERATOR_ROLE = "OperatorRole"  # `ohip-relay doctor` and `ohip-relay status` on an operator's machine


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


@dataclass(frozen=True)
class RoleStatement:
    """One statement of a role's policy: as IAM gets it (`document`, intrinsics resolved against the
    local stack) and as template.yaml writes its resources (`written`: `EventsQueue` for
    `!GetAtt EventsQueue.Arn`, `OversizeBucket/spill/*` for `${OversizeBucket.Arn}/spill/*`,
    `OhipSecretArn` for `!Ref OhipSecretArn`), position for position with `resources`."""

    policy: str
    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    written: tuple[str, ...]
    document: dict[str, Any]


@dataclass(frozen=True)
class RoleSpec:
    """An IAM role of the template, resolved for the local stack (created on first use)."""

    logical_id: str
    name: str
    arn: str
    statements: tuple[RoleStatement, ...]

    def policies(self, *, without: tuple[str, str, str] | None = None) -> dict[str, dict[str, Any]]:
        """Policy name -> document. `without` = (Sid, action, resource ARN): that one grant taken
        out, everything else of its statement kept (the other actions on every resource, that
        action on the other resources)."""
        out: dict[str, dict[str, Any]] = {}
        for statement in self.statements:
            policy = out.setdefault(statement.policy, {"Version": "2012-10-17", "Statement": []})
            sid, action, resource = without or ("", "", "")
            if statement.sid != sid or action not in statement.actions or resource not in statement.resources:
                policy["Statement"].append(statement.document)
                continue
            other_actions = [a for a in statement.actions if a != action]
            other_resources = [r for r in statement.resources if r != resource]
            if other_actions:
                policy["Statement"].append({**statement.document, "Action": other_actions})
            if other_resources:
                policy["Statement"].append(
                    {**statement.document, "Sid": f"{sid}Rest", "Action": action, "Resource": other_resources}
                )
        return out


@dataclass(frozen=True)
class RoleCredentials:
    """Temporary credentials of a role (STS AssumeRole), as a component's environment carries them."""

    role: str
    access_key_id: str
    secret_access_key: str
    session_token: str

    def environment(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
        }

    def session(self, region: str) -> boto3.session.Session:
        return boto3.session.Session(
            region_name=region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token,
        )


@dataclass
class ProvisionedStack:
    """What the local stack holds, by logical id, plus the template's resolved outputs."""

    endpoint_url: str
    region: str
    stack_name: str
    refs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    roles: dict[str, RoleSpec] = field(default_factory=dict)
    secret_arn: str = ""
    _credentials: dict[str, RoleCredentials] = field(default_factory=dict, repr=False, compare=False)
    _created_roles: set[str] = field(default_factory=set, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def role(self, logical_id: str) -> RoleSpec:
        try:
            return self.roles[logical_id]
        except KeyError:
            raise LocalStackError(
                f"the local stack has no role {logical_id} (roles: {', '.join(sorted(self.roles))})"
            ) from None

    def credentials(self, logical_id: str) -> RoleCredentials:
        """Temporary credentials of the template role `logical_id`: the role is created with its
        policies on first use, then assumed once (STS AssumeRole) by the local administrator, as
        ECS and Lambda assume a task's or function's role in AWS."""
        with self._lock:
            if logical_id not in self._credentials:
                spec = self.role(logical_id)
                self._create_role(spec)
                answer = local_client("sts", self.endpoint_url, self.region).assume_role(
                    RoleArn=spec.arn,
                    RoleSessionName=re.sub(r"[^\w+=,.@-]", "-", logical_id)[:64],
                    DurationSeconds=3600,
                )["Credentials"]
                self._credentials[logical_id] = RoleCredentials(
                    logical_id, answer["AccessKeyId"], answer["SecretAccessKey"], answer["SessionToken"]
                )
            return self._credentials[logical_id]

    def put_role_policies(self, logical_id: str, policies: Mapping[str, dict[str, Any]]) -> None:
        """Replace the inline policies of a role (created if needed); moto applies them to the
        credentials already issued from the next request on, as IAM does."""
        with self._lock:
            spec = self.role(logical_id)
            self._create_role(spec)
            iam = local_client("iam", self.endpoint_url, self.region)
            for name, document in policies.items():
                if document["Statement"]:
                    iam.put_role_policy(
                        RoleName=spec.name, PolicyName=name, PolicyDocument=json.dumps(document)
                    )
                else:
                    iam.delete_role_policy(RoleName=spec.name, PolicyName=name)

    def role_for(self, role_name: str) -> str | None:
        """The logical id of the role named `role_name` in IAM (None: not one of this stack's)."""
        return next((k for k, v in self.roles.items() if v.name == role_name), None)

    def _create_role(self, spec: RoleSpec) -> None:
        if spec.logical_id in self._created_roles:
            return
        iam = local_client("iam", self.endpoint_url, self.region)
        # In AWS the trust policy names ECS or Lambda; locally the administrator stands in for them.
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": LOCAL_ADMIN_ARN}, "Action": "sts:AssumeRole"}
            ],
        }
        iam.create_role(
            RoleName=spec.name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description=f"{self.stack_name}: {spec.logical_id} of template.yaml",
        )
        for name, document in spec.policies().items():
            iam.put_role_policy(RoleName=spec.name, PolicyName=name, PolicyDocument=json.dumps(document))
        self._created_roles.add(spec.logical_id)

    def store_ohip_credentials(self, *, client_id: str, client_secret: str, app_key: str) -> dict[str, str]:
        """Put the OHIP credentials in the stack's secret (as `aws secretsmanager create-secret` does
        in README "Deploy"); returns the variable that points a component at it."""
        if not self.secret_arn:
            raise LocalStackError("the local stack has no OHIP secret (OhipSecretArn was given)")
        value = {"clientId": client_id, "clientSecret": client_secret, "appKey": app_key}
        local_client("secretsmanager", self.endpoint_url, self.region).put_secret_value(
            SecretId=self.secret_arn, SecretString=json.dumps(value)
        )
        return {"OHIP_SECRET_ARN": self.secret_arn}

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
        # Resources that take no AWS call here: given their raw properties, they resolve only
        # what they need (a log group's KMS key, say, has no local counterpart).
        self.describers: dict[str, Callable[[str, dict[str, Any]], _Created]] = {
            "AWS::IAM::Role": self._describe_role,
            "AWS::Logs::LogGroup": self._describe_log_group,
        }
        self.roles: dict[str, RoleSpec] = {}

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
        kind = spec.get("Type", "")
        creator, describer = self.creators.get(kind), self.describers.get(kind)
        if creator is None and describer is None:
            raise LocalStackError(f"{logical_id} ({kind}) is needed locally but has no local counterpart")
        if "Condition" in spec and not self._condition(spec["Condition"]):
            raise LocalStackError(f"{logical_id} is needed locally but its condition is false")
        self.in_progress.add(logical_id)
        try:
            if describer is not None:
                created = describer(logical_id, spec.get("Properties") or {})
            else:
                assert creator is not None
                created = creator(logical_id, self.resolve(spec.get("Properties") or {}))
        finally:
            self.in_progress.discard(logical_id)
        self.created[logical_id] = created
        log.info("local stack: %s %s (%s)", "described" if describer else "created", logical_id, kind)
        return created

    def provision_all(self) -> None:
        for logical_id, spec in self.resources.items():
            if spec.get("Type") not in self.creators and spec.get("Type") not in self.describers:
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

    def _describe_log_group(self, logical_id: str, raw: dict[str, Any]) -> _Created:
        """A log group's name and ARN (nothing writes logs locally: statements on it are listed in
        docs/permissions.md as not exercised)."""
        self._take(raw, logical_id, {"LogGroupName", "RetentionInDays", "KmsKeyId", "Tags"})
        name = str(self.resolve(raw.get("LogGroupName")) or f"/{self.stack_name}/{logical_id}")
        arn = f"arn:aws:logs:{self.region}:{LOCAL_ACCOUNT_ID}:log-group:{name}:*"
        self.skipped[logical_id] = "AWS::Logs::LogGroup (its ARN only: nothing writes logs locally)"
        return _Created(ref=name, attributes={"Arn": arn})

    def _describe_role(self, logical_id: str, raw: dict[str, Any]) -> _Created:
        """A role's policies resolved against the local resources, statement by statement; the role
        itself is created on first use (`ProvisionedStack.credentials`)."""
        self._take(raw, logical_id, {"Description", "AssumeRolePolicyDocument", "Policies", "Tags"})
        name = f"{self.stack_name}-{logical_id}"[:64]
        statements: list[RoleStatement] = []
        for policy in raw.get("Policies") or []:
            self._take(policy, f"{logical_id} policy", {"PolicyName", "PolicyDocument"})
            policy_name = str(self.resolve(policy["PolicyName"]))
            for raw_statement in policy["PolicyDocument"].get("Statement", []):
                written = self._chosen(raw_statement)
                if written is _NO_VALUE:
                    continue
                statements.append(self._statement(logical_id, policy_name, written))
        arn = f"arn:aws:iam::{LOCAL_ACCOUNT_ID}:role/{name}"
        self.roles[logical_id] = RoleSpec(logical_id, name, arn, tuple(statements))
        return _Created(ref=name, attributes={"Arn": arn, "RoleId": name})

    def _chosen(self, value: Any) -> Any:
        """The branch of a conditional (`Fn::If`) statement that applies, still unresolved."""
        while isinstance(value, dict) and set(value) == {"Fn::If"}:
            condition, when_true, when_false = value["Fn::If"]
            value = when_true if self._condition(condition) else when_false
        if value == {"Ref": "AWS::NoValue"}:
            return _NO_VALUE
        return value

    def _statement(self, role: str, policy: str, written: dict[str, Any]) -> RoleStatement:
        self._take(written, f"{role} statement", {"Sid", "Effect", "Action", "Resource", "Condition"})
        if "Sid" not in written:
            raise LocalStackError(f"{role}: every statement needs a Sid (docs/permissions.md names them)")
        document: dict[str, Any] = self.resolve(written)
        raw_resources = (
            written["Resource"] if isinstance(written["Resource"], list) else [written["Resource"]]
        )
        actions = document["Action"] if isinstance(document["Action"], list) else [document["Action"]]
        resources = document["Resource"] if isinstance(document["Resource"], list) else [document["Resource"]]
        return RoleStatement(
            policy=policy,
            sid=str(document["Sid"]),
            actions=tuple(str(a) for a in actions),
            resources=tuple(str(r) for r in resources),
            written=tuple(written_resource(r) for r in raw_resources),
            document=document,
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


def written_resource(value: Any) -> str:
    """A statement's resource as template.yaml writes it, shortly: `EventsQueue` for `!GetAtt
    EventsQueue.Arn`, `OversizeBucket/spill/*` for `!Sub "${OversizeBucket.Arn}/spill/*"`,
    `OhipSecretArn` for `!Ref OhipSecretArn`, `*` for `*`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return str(arg)
        if key == "Fn::GetAtt":
            parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
            return str(parts[0]) if parts[1] == "Arn" else ".".join(str(p) for p in parts)
        if key == "Fn::Sub" and isinstance(arg, str):
            return re.sub(r"\$\{([^}.]+)\.Arn\}", r"\1", arg)
    return json.dumps(value, sort_keys=True)


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
    """Create the template's queues, tables and buckets on `endpoint_url` (a moto server), and
    describe its roles (created on first use). Without an `OhipSecretArn` parameter the stack gets
    a secret of its own for the OHIP credentials (empty until `store_ohip_credentials`)."""
    template = load_template(template_path)
    given = dict(parameters or {})
    secret_arn = ""
    if "OhipSecretArn" in (template.get("Parameters") or {}) and "OhipSecretArn" not in given:
        secret_arn = _local_secret(endpoint_url, region, f"{stack_name}/ohip")
        given["OhipSecretArn"] = secret_arn
    provisioner = _Provisioner(
        template, endpoint_url=endpoint_url, region=region, stack_name=stack_name, parameters=given
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
        roles=provisioner.roles,
        secret_arn=secret_arn,
    )


def _local_secret(endpoint_url: str, region: str, name: str) -> str:
    client = local_client("secretsmanager", endpoint_url, region)
    try:
        return str(client.create_secret(Name=name, SecretString="{}")["ARN"])
    except client.exceptions.ResourceExistsException:  # the same stack name, provisioned again
        client.put_secret_value(SecretId=name, SecretString="{}")
        return str(client.describe_secret(SecretId=name)["ARN"])


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


class SerialDynamoDB:
    """WSGI middleware in front of moto's application: one DynamoDB request at a time.

    moto's DynamoDB reads an item, evaluates the ConditionExpression and writes, with nothing
    between them that keeps another thread of the threaded server out: two conditional writes
    racing on one item can both pass `attribute_not_exists` (measured: 8 threads racing for each of
    60 keys with a conditional UpdateItem, 2 keys had two winners). DynamoDB applies each item write
    atomically, and the fleet's leases, the registry's versions and the seen-set rely on it: the
    local endpoint must too. Other services pass through as they are."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_"):
            return self.app(environ, start_response)
        length = str(environ.get("CONTENT_LENGTH") or "")
        if length.isdigit():  # the body is read first: a slow client never holds the lock
            environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].read(int(length)))
        with self._lock:
            return list(self.app(environ, start_response))


@contextmanager
def moto_server(host: str = "127.0.0.1", port: int = 0, *, enforce_iam: bool = True) -> Iterator[str]:
    """Run moto in server mode on loopback for the life of the block; yields its endpoint URL.

    The relay talks to it over HTTP exactly as it would talk to AWS. With `enforce_iam` (the
    default) every request is authenticated and authorized (iam.py); that switch is moto's, for
    the whole process. The server is moto's own application (as `ThreadedMotoServer` runs it)
    behind `SerialDynamoDB` (item writes atomic, as in DynamoDB) and `iam.JournalApp`, which
    serves the IAM journal.
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from .iam import JournalApp, enforce

    check_port_free(host, port)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    app = JournalApp(SerialDynamoDB(DomainDispatcherApplication(create_backend_app)))
    server = make_server(
        host, port or _free_port(host), app, threaded=True, request_handler=MotoRequestHandler
    )
    if enforce_iam:
        enforce()
    thread = threading.Thread(target=server.serve_forever, name="moto-server", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
