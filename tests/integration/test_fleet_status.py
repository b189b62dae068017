"""`ohip-relay status` in the fleet shape against moto over HTTP, under OperatorRole (IAM enforced:
any denial fails the test). The registry holds three subscriptions; the worker items are written by
hand (`FleetStore.put_worker` and `join`), as two workers would write them, one of them silent."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from ohip_local.aws import OPERATOR_ROLE, ProvisionedStack, local_client, provision
from ohip_local.stack import environment_for
from ohip_relay.balance import ChainSummary, worker_items
from ohip_relay.cli import main as cli_main
from ohip_relay.fleet_state import FleetStore
from ohip_relay.fleet_status import read_fleet_status
from ohip_relay.registry import RegistryStore, Subscription
from ohip_relay.state import FallbackRecord, StateStore

from ..conftest import TEMPLATE

pytestmark = pytest.mark.integration

ODD = "CH B%2"  # an id with a space and a %: ids allow them
LIVE = f"task-{uuid.uuid4().hex}-live"
SILENT = f"task-{uuid.uuid4().hex}-silent"


@pytest.fixture(scope="module")
def stack(aws_endpoint: str) -> ProvisionedStack:
    """A stack of its own: OperatorRole's grants name its state table, and the registry and the
    fleet index are one per table."""
    stack = provision(aws_endpoint, TEMPLATE, stack_name=f"fs-{uuid.uuid4().hex[:6]}")
    admin = local_client("dynamodb", stack.endpoint_url, stack.region)
    table, now = stack.table_name, time.time()
    registry = RegistryStore(admin, table)
    for subscription_id, enabled in (("CH-A", True), (ODD, True), ("CH-C", False)):
        registry.add(
            Subscription(
                id=subscription_id,
                gateway_url="https://ohip.example.com",
                chain_code=subscription_id.replace("%", "")[:20],
                secret_arn=f"arn:aws:secretsmanager:{stack.region}:123456789012:secret:ohip/prod-AbCdEf",
                external_system="RELAY",
                enabled=enabled,
            )
        )
    fleet = FleetStore(admin, table)
    live = {"CH-A": ChainSummary("connected", now - 600, now - 12, 42, 0.8)}
    fleet.put_worker(worker_items(LIVE, now, live, started_at=now - 3600))
    fleet.join(LIVE, now)
    silent = {ODD: ChainSummary("connected", now - 900)}  # it stopped writing 5 minutes ago
    fleet.put_worker(worker_items(SILENT, now - 300, silent, started_at=now - 7200))
    fleet.join(SILENT, now - 300)
    if fleet.acquire("CH-A", LIVE, now, 30.0, None) is None:
        raise AssertionError("the lease was not taken")
    StateStore(admin, table, "CH-A").advance_checkpoint(42, LIVE, now=now)
    StateStore(admin, table, ODD).save_fallback(FallbackRecord(active=True, since=now - 60), now=now)
    return stack


@pytest.fixture
def operator(stack: ProvisionedStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment of an operator who assumed OperatorRole, with RELAY_FLEET=true and no
    single-chain variable; the root logger put back after `main()` pointed it at stderr."""
    for name in ("OHIP_CHAIN_CODE", "OHIP_GATEWAY_URL", "OHIP_SECRET_ARN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment_for(stack, role=OPERATOR_ROLE).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RELAY_FLEET", "true")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli_main(["status", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("operator")
def test_the_fleet_table_under_the_operator_role(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _status(capsys, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["totals"] == {
        "workersAlive": 1,
        "workersSilent": 1,
        "chainsEnabled": 2,
        "chainsDisabled": 1,
        "chainsHeld": 1,
        "chainsConnected": 1,
        "chainsWithoutHolder": 1,
        "chainsUnhealthy": 1,
        "chainsFallbackActive": 1,
    }
    rows = {row["id"]: row for row in report["subscriptions"]}
    assert list(rows) == ["CH B%2", "CH-A", "CH-C"]
    assert rows["CH-A"]["state"] == "connected"
    assert rows["CH-A"]["holder"] == LIVE
    assert rows["CH-A"]["checkpoint"] == 42
    assert rows["CH-A"]["lagSeconds"] == 0.8
    assert rows[ODD]["state"] == "no holder"
    assert rows[ODD]["fallbackActive"] is True
    assert rows["CH-C"]["state"] == "disabled"
    assert report["worst"] == [ODD]
    assert report["problems"] == []

    code, out, err = _status(capsys)
    assert code == 0, err
    assert "None" not in out
    assert "workers   1 alive, 1 silent (last heard 5 min ago)" in out
    assert f"worst     {ODD} (no holder)" in out
    (row,) = [line for line in out.splitlines() if line.startswith("CH-A ")]
    assert row.split()[2:5] == ["connected", "0.8", "s"]
    assert LIVE[:12] in row


@pytest.mark.usefixtures("operator")
def test_one_subscription_in_detail(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _status(capsys, "--chain", "CH-A", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["id"] == "CH-A"
    assert report["healthy"] is True
    assert report["holder"] == LIVE
    assert report["leaseOwner"] == LIVE
    assert report["leaseHeld"] is True
    assert report["leaseGeneration"] == 1
    assert report["checkpoint"] == 42
    assert report["registry"]["externalSystem"] == "RELAY"

    code, out, err = _status(capsys, "--chain", ODD)
    assert code == 0, err
    assert "None" not in out
    assert "holder           nobody" in out
    assert "health           unhealthy (no live worker runs it)" in out
    assert "fallback         active since" in out


@pytest.mark.usefixtures("operator")
def test_an_unknown_id_is_one_line(stack: ProvisionedStack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _status(capsys, "--chain", "NOPE")
    assert code == 1
    assert out == ""
    assert err.strip().splitlines() == [
        f"ohip-relay: status: no subscription 'NOPE' in the registry of table {stack.table_name}; "
        "`ohip-relay chains list` shows the ids"
    ]


@pytest.mark.usefixtures("operator")
def test_the_reads_are_batched(stack: ProvisionedStack) -> None:
    """3 subscriptions, 2 workers: 2 GetItems of the registry index and one BatchGetItem of its
    entries, a GetItem of the fleet index and a BatchGetItem of the worker items, a BatchGetItem
    of the leases, one of the checkpoints and fallback records: 7 requests (fleet_status.py)."""
    session = stack.credentials(OPERATOR_ROLE).session(stack.region)
    client: Any = session.client("dynamodb", endpoint_url=stack.endpoint_url)
    calls: Counter[str] = Counter()
    client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.update([model.name]))
    reads = read_fleet_status(client, stack.table_name)
    assert len(reads.subscriptions) == 3
    assert calls == Counter({"GetItem": 3, "BatchGetItem": 4})
