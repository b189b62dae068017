"""Running the local AWS endpoint on its own (`ohip-relay local aws`), and the environment of a
component on the local stack."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .aws import (
    DEFAULT_REGION,
    LOCAL_CREDENTIALS,
    LocalStackError,
    ProvisionedStack,
    moto_server,
    provision,
)

_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def find_template() -> Path:
    """The SAM template the local stack is built from: $OHIP_RELAY_TEMPLATE, ./template.yaml, or the
    checkout this package was installed from (editable installs)."""
    candidates = []
    if os.environ.get("OHIP_RELAY_TEMPLATE"):
        candidates.append(Path(os.environ["OHIP_RELAY_TEMPLATE"]))
    candidates.append(Path.cwd() / "template.yaml")
    candidates.append(Path(__file__).resolve().parents[2] / "template.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise LocalStackError("template.yaml not found: run from the checkout or set OHIP_RELAY_TEMPLATE")


def environment_for(stack: ProvisionedStack, *, role: str | None) -> dict[str, str]:
    """The relay's AWS variables pointing at the local stack, with temporary credentials of the
    template role `role` (a logical id, `aws.STREAM_ROLE`...): what ECS or Lambda gives the
    component in AWS. `role=None`: the local administrator's credentials, for harness processes
    that are no component (never for one that is)."""
    if role is None:
        credentials = {
            "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
        }
    else:
        credentials = stack.credentials(role).environment()
    return {
        "AWS_ENDPOINT_URL": stack.endpoint_url,
        "AWS_REGION": stack.region,
        "AWS_DEFAULT_REGION": stack.region,  # what plain boto3 reads (a consumer script, say)
        **credentials,
        "RELAY_QUEUE_URL": stack.queue_url,
        "RELAY_TABLE_NAME": stack.table_name,
        "RELAY_BUCKET_NAME": stack.bucket_name,
    }


@contextmanager
def credentials_in_environment(env: dict[str, str]) -> Iterator[None]:
    """`os.environ` carries the credentials of `env` (AWS_ACCESS_KEY_ID, ..., AWS_SESSION_TOKEN or
    none) for the block: boto3 clients built inside it, by component code run in-process (a
    Lambda handler, `open_fallback`, `open_consumer`), sign with them for their whole life."""
    saved = {name: os.environ.get(name) for name in _CREDENTIAL_VARIABLES}
    try:
        for name in _CREDENTIAL_VARIABLES:
            if name in env:
                os.environ[name] = env[name]
            else:
                os.environ.pop(name, None)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def serve_aws_forever(host: str, port: int, stack_name: str, stop: threading.Event | None = None) -> None:
    """Start moto on loopback, create the template's resources, print the variables, wait."""
    template = find_template()
    with moto_server(host, port) as endpoint:
        stack = provision(endpoint, template, stack_name=stack_name, region=DEFAULT_REGION)
        print(f"local AWS endpoint on {endpoint} (resources from {template}; IAM enforced)")
        print("# the local administrator (set-up, inspection); a component runs under its role:")
        for name, value in environment_for(stack, role=None).items():
            print(f"export {name}={value}")
        print(
            f"# the OHIP credentials secret (empty: put yours in): export OHIP_SECRET_ARN={stack.secret_arn}"
        )
        print("# to run a component under its template role, export its temporary credentials instead:")
        for role in sorted(stack.roles):
            if role == "StreamExecutionRole":  # ECS's own, no component runs under it
                continue
            exports = " ".join(f"{k}={v}" for k, v in stack.credentials(role).environment().items())
            print(f"#   {role}: export {exports}")
        print("Ctrl-C to stop", flush=True)
        (stop or threading.Event()).wait()
