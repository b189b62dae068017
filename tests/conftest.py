"""Fixtures shared by the whole suite.

`aws_endpoint` is one moto server (HTTP on loopback) for the test session; `aws_stack` gives each
test its own copy of the template's resources under a unique stack name, so tests never see each
other's messages or items.

IAM is enforced on that server (docs/permissions.md): the harness signs as the local administrator
(the "testing" keys below), each component under its template role (`environment_for(stack,
role=...)`). A request denied while a test runs fails that test, naming the role, the action and the
resource, unless the test is marked `denials_expected` (it provokes them on purpose).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ohip_local.aws import DEFAULT_REGION, LOCAL_CREDENTIALS, ProvisionedStack, moto_server, provision
from ohip_local.iam import denials, describe_denials, journal_mark

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "template.yaml"

_stack_numbers = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def _local_aws_environment() -> Iterator[None]:
    """No test may reach real AWS: fake credentials and a fixed region for every boto3 client."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["AWS_ACCESS_KEY_ID"] = LOCAL_CREDENTIALS["aws_access_key_id"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = LOCAL_CREDENTIALS["aws_secret_access_key"]
    os.environ["AWS_DEFAULT_REGION"] = DEFAULT_REGION
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    """A moto server on loopback, for the whole test session."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def _no_access_denied(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that uses the local AWS endpoint if moto denied anything while it ran."""
    if "aws_endpoint" not in request.fixturenames or request.node.get_closest_marker("denials_expected"):
        yield
        return
    endpoint: str = request.getfixturevalue("aws_endpoint")
    mark = journal_mark(endpoint)
    yield
    found = describe_denials(denials(endpoint, since=mark))
    if found:
        pytest.fail("IAM denied requests during the test:\n" + "\n".join(found), pytrace=False)


@pytest.fixture
def aws_stack(aws_endpoint: str) -> ProvisionedStack:
    """The template's queue, dead-letter queue, table and bucket, fresh for this test (FIFO queue)."""
    return provision(aws_endpoint, TEMPLATE, stack_name=f"t{next(_stack_numbers)}")


@pytest.fixture
def aws_stack_standard(aws_endpoint: str) -> ProvisionedStack:
    """The same resources with a standard (non-FIFO) queue."""
    return provision(
        aws_endpoint, TEMPLATE, stack_name=f"t{next(_stack_numbers)}", parameters={"QueueType": "standard"}
    )
