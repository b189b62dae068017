"""botocore's retries are logged as they happen, not only what still fails after them.

The relay's clients retry throttling and 5xx with backoff (seconds in all); without these lines a
slow checkpoint or a late lease renewal would have no explanation in the logs. Real clients from
`runtime.aws_client`, the chaos suite's fault proxy in front of moto, over HTTP.
"""

from __future__ import annotations

import logging

import pytest
from botocore.config import Config

from ohip_local.aws import ProvisionedStack
from ohip_local.faultproxy import FaultRule, running_fault_proxy
from ohip_relay.config import Settings
from ohip_relay.runtime import aws_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 3})


def _retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ohip_relay.aws"]


def test_each_retried_failure_is_logged_with_its_code_and_attempt(
    aws_stack: ProvisionedStack, caplog: pytest.LogCaptureFixture
) -> None:
    with running_fault_proxy(aws_stack.endpoint_url) as proxy:
        settings = Settings.from_env({"AWS_ENDPOINT_URL": proxy.url, "AWS_REGION": aws_stack.region})
        client = aws_client(settings, "dynamodb", config=FAST_RETRIES)
        proxy.add(FaultRule("dynamodb", error="throttle", operation="DescribeTable", count=1))
        proxy.add(FaultRule("dynamodb", error="unavailable", operation="DescribeTable", count=1))
        with caplog.at_level(logging.WARNING, logger="ohip_relay.aws"):
            client.describe_table(TableName=aws_stack.table_name)  # the third attempt succeeds
    assert _retry_lines(caplog) == [
        "DynamoDB DescribeTable failed (ProvisionedThroughputExceededException 400), attempt 1 of at most 3",
        "DynamoDB DescribeTable failed (ServiceUnavailableException 503), attempt 2 of at most 3",
    ]


def test_the_last_attempt_and_errors_not_retried_are_left_to_the_caller(
    aws_stack: ProvisionedStack, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.from_env({"AWS_ENDPOINT_URL": aws_stack.endpoint_url, "AWS_REGION": aws_stack.region})
    client = aws_client(settings, "dynamodb", config=FAST_RETRIES)
    with caplog.at_level(logging.WARNING, logger="ohip_relay.aws"):
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.describe_table(TableName="no-such-table")  # a 400 botocore does not retry
        with running_fault_proxy(aws_stack.endpoint_url) as proxy:
            slow = aws_client(
                Settings.from_env({"AWS_ENDPOINT_URL": proxy.url, "AWS_REGION": aws_stack.region}),
                "dynamodb",
                config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
            )
            proxy.add(FaultRule("dynamodb", error="internal", operation="DescribeTable", count=1))
            with pytest.raises(slow.exceptions.ClientError):
                slow.describe_table(TableName=aws_stack.table_name)  # one attempt only: nothing retried
    assert _retry_lines(caplog) == []
