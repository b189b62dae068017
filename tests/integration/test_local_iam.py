"""The local AWS endpoint enforces IAM (ohip_local/iam.py, docs/permissions.md): authentication,
the resources and actions AWS authorizes, and a denial reported with its role, action and resource."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from ohip_local.aws import LOCAL_ADMIN_ARN, ProvisionedStack, local_client
from ohip_local.iam import denials, journal_mark
from ohip_local.motoproc import moto_process

pytestmark = [pytest.mark.integration, pytest.mark.denials_expected]


def _role(stack: ProvisionedStack, statements: list[dict[str, Any]]) -> boto3.session.Session:
    """A role of its own with `statements`, assumed: a session with its temporary credentials."""
    iam = local_client("iam", stack.endpoint_url)
    name = f"probe-{uuid.uuid4().hex[:10]}"
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": LOCAL_ADMIN_ARN}, "Action": "sts:AssumeRole"}],
    }
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    policy = {"Version": "2012-10-17", "Statement": statements}
    iam.put_role_policy(RoleName=name, PolicyName="probe", PolicyDocument=json.dumps(policy))
    arn = f"arn:aws:iam::123456789012:role/{name}"
    answer = local_client("sts", stack.endpoint_url).assume_role(RoleArn=arn, RoleSessionName="probe")
    credentials = answer["Credentials"]
    return boto3.session.Session(
        region_name=stack.region,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )


def _code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def _queue_arn(stack: ProvisionedStack) -> str:
    return f"arn:aws:sqs:{stack.region}:123456789012:{stack.queue_url.rsplit('/', 1)[1]}"


def _table_arn(stack: ProvisionedStack) -> str:
    return f"arn:aws:dynamodb:{stack.region}:123456789012:table/{stack.table_name}"


def test_an_unknown_access_key_is_refused(aws_stack: ProvisionedStack) -> None:
    sqs = boto3.client(
        "sqs",
        endpoint_url=aws_stack.endpoint_url,
        region_name=aws_stack.region,
        aws_access_key_id="AKIAUNKNOWN000000000",
        aws_secret_access_key="whatever",
    )
    with pytest.raises(ClientError) as caught:
        sqs.get_queue_attributes(QueueUrl=aws_stack.queue_url)
    assert _code(caught.value) == "InvalidClientTokenId"


def test_temporary_credentials_need_their_session_token(aws_stack: ProvisionedStack) -> None:
    credentials = aws_stack.credentials("StreamTaskRole")
    without_token = boto3.client(
        "sqs",
        endpoint_url=aws_stack.endpoint_url,
        region_name=aws_stack.region,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
    )
    with pytest.raises(ClientError) as caught:
        without_token.get_queue_attributes(QueueUrl=aws_stack.queue_url)
    assert _code(caught.value) == "InvalidClientTokenId"
    with_token = credentials.session(aws_stack.region).client("sqs", endpoint_url=aws_stack.endpoint_url)
    with_token.get_queue_attributes(QueueUrl=aws_stack.queue_url, AttributeNames=["MaximumMessageSize"])


def test_a_denial_names_the_role_the_action_and_the_resource(aws_stack: ProvisionedStack) -> None:
    session = _role(
        aws_stack,
        [{"Effect": "Allow", "Action": "sqs:GetQueueAttributes", "Resource": _queue_arn(aws_stack)}],
    )
    mark = journal_mark(aws_stack.endpoint_url)
    dynamodb = session.client("dynamodb", endpoint_url=aws_stack.endpoint_url)
    with pytest.raises(ClientError) as caught:
        dynamodb.get_item(TableName=aws_stack.table_name, Key={"pk": {"S": "x"}})
    # In the JSON protocol's shape, so botocore reads the code DynamoDB sends.
    assert _code(caught.value) == "AccessDeniedException"
    message = str(caught.value)
    assert "dynamodb:GetItem" in message
    assert _table_arn(aws_stack) in message
    sqs = session.client("sqs", endpoint_url=aws_stack.endpoint_url)
    with pytest.raises(ClientError) as caught:
        sqs.receive_message(QueueUrl=aws_stack.queue_url)
    assert _code(caught.value) == "AccessDenied"
    (first, second) = denials(aws_stack.endpoint_url, since=mark)
    assert (first.action, first.resource) == ("dynamodb:GetItem", _table_arn(aws_stack))
    assert (second.action, second.resource) == ("sqs:ReceiveMessage", _queue_arn(aws_stack))
    assert first.role.startswith("probe-")
    assert (
        first.describe()
        == f"AccessDenied: role {first.role} may not dynamodb:GetItem on {_table_arn(aws_stack)}"
    )


def test_batch_operations_are_authorized_as_aws_does(aws_stack: ProvisionedStack) -> None:
    session = _role(
        aws_stack,
        [
            {
                "Effect": "Allow",
                "Action": ["sqs:SendMessage", "sqs:ReceiveMessage"],
                "Resource": _queue_arn(aws_stack),
            },
            {
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{aws_stack.bucket_name}",
            },
        ],
    )
    sqs = session.client("sqs", endpoint_url=aws_stack.endpoint_url)
    entry = {
        "Id": "1",
        "MessageBody": "{}",
        "MessageGroupId": "g",
        "MessageDeduplicationId": uuid.uuid4().hex,
    }
    sqs.send_message_batch(QueueUrl=aws_stack.queue_url, Entries=[entry])  # as sqs:SendMessage
    (message,) = sqs.receive_message(QueueUrl=aws_stack.queue_url)["Messages"]
    with pytest.raises(ClientError):  # sqs:DeleteMessage is not granted: the batch is not either
        sqs.delete_message_batch(
            QueueUrl=aws_stack.queue_url, Entries=[{"Id": "1", "ReceiptHandle": message["ReceiptHandle"]}]
        )
    session.client("s3", endpoint_url=aws_stack.endpoint_url).head_bucket(Bucket=aws_stack.bucket_name)


def test_a_prefix_condition_limits_listings(aws_stack: ProvisionedStack) -> None:
    session = _role(
        aws_stack,
        [
            {
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{aws_stack.bucket_name}",
                "Condition": {"StringLike": {"s3:prefix": "spill/*"}},
            }
        ],
    )
    s3 = session.client("s3", endpoint_url=aws_stack.endpoint_url)
    s3.list_objects_v2(Bucket=aws_stack.bucket_name, Prefix="spill/CHAIN/")
    for other in ({"Prefix": "oversize/"}, {}):
        with pytest.raises(ClientError) as caught:
            s3.list_objects_v2(Bucket=aws_stack.bucket_name, **other)
        assert _code(caught.value) == "AccessDenied"


def test_each_item_of_a_transaction_is_authorized(aws_stack: ProvisionedStack) -> None:
    session = _role(
        aws_stack, [{"Effect": "Allow", "Action": "dynamodb:PutItem", "Resource": _table_arn(aws_stack)}]
    )
    dynamodb = session.client("dynamodb", endpoint_url=aws_stack.endpoint_url)
    put = {"Put": {"TableName": aws_stack.table_name, "Item": {"pk": {"S": "a"}}}}
    dynamodb.transact_write_items(TransactItems=[put])
    check = {
        "ConditionCheck": {
            "TableName": aws_stack.table_name,
            "Key": {"pk": {"S": "a"}},
            "ConditionExpression": "attribute_exists(pk)",
        }
    }
    mark = journal_mark(aws_stack.endpoint_url)
    with pytest.raises(ClientError):
        dynamodb.transact_write_items(
            TransactItems=[{"Put": {**put["Put"], "Item": {"pk": {"S": "b"}}}}, check]
        )
    (denied,) = denials(aws_stack.endpoint_url, since=mark)
    assert (denied.action, denied.resource) == ("dynamodb:ConditionCheckItem", _table_arn(aws_stack))


@pytest.fixture
def own_moto() -> Iterator[str]:
    with moto_process() as endpoint:
        yield endpoint


def test_a_reset_keeps_the_local_administrator_and_clears_the_journal(own_moto: str) -> None:
    sqs = local_client("sqs", own_moto)
    sqs.create_queue(QueueName="before-reset")
    httpx.post(f"{own_moto}/moto-api/reset", timeout=60).raise_for_status()
    assert "QueueUrls" not in sqs.list_queues()  # moto's state is gone...
    sqs.create_queue(QueueName="after-reset")  # ...the administrator is not
    assert denials(own_moto) == []
