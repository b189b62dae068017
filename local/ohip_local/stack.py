"""Running the local AWS endpoint on its own (`ohip-relay local aws`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .aws import DEFAULT_REGION, LocalStackError, ProvisionedStack, moto_server, provision


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


def environment_for(stack: ProvisionedStack) -> dict[str, str]:
    """The relay's AWS variables pointing at the local stack."""
    return {
        "AWS_ENDPOINT_URL": stack.endpoint_url,
        "AWS_REGION": stack.region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "RELAY_QUEUE_URL": stack.queue_url,
        "RELAY_TABLE_NAME": stack.table_name,
        "RELAY_BUCKET_NAME": stack.bucket_name,
    }


def serve_aws_forever(host: str, port: int, stack_name: str, stop: threading.Event | None = None) -> None:
    """Start moto on loopback, create the template's resources, print the variables, wait."""
    template = find_template()
    with moto_server(host, port) as endpoint:
        stack = provision(endpoint, template, stack_name=stack_name, region=DEFAULT_REGION)
        print(f"local AWS endpoint on {endpoint} (resources from {template})")
        for name, value in environment_for(stack).items():
            print(f"export {name}={value}")
        print("Ctrl-C to stop", flush=True)
        (stop or threading.Event()).wait()
