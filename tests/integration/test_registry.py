"""The chain registry against the moto server over HTTP: conditional transactions decide, not the
client; and `ohip-relay chains` on top of it, in-process and as a real subprocess.

Races are played as the interleavings DynamoDB would impose (it serialises writes to an item; moto
does not): a botocore hook runs the other party's call at the exact moment between one call's read
and its write.

The template's resources are provisioned once for the module; each test gets its own copy of the
state table (the same key schema, read from the provisioned one), because the registry is one per
table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import uuid
from contextlib import redirect_stderr, redirect_stdout
from typing import TYPE_CHECKING, Any

import pytest

from ohip_local.aws import ProvisionedStack, provision
from ohip_local.stack import environment_for
from ohip_relay.chains_cli import add_chains_parser
from ohip_relay.errors import StartupError
from ohip_relay.registry import (
    RegistryError,
    RegistryStore,
    Subscription,
    SubscriptionExists,
    SubscriptionNotFound,
    VersionConflict,
    encode_item,
)
from ohip_relay.state import StateStore

from ..conftest import TEMPLATE
from .dynamo import client as _client
from .dynamo import once as _once
from .dynamo import raw_item as _raw
from .dynamo import with_fresh_table

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.integration

T0 = 1_764_000_000.0
ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ohip/prod-AbCdEf"
ARN_UAT = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ohip/uat-GhIjKl"


def _sub(chain: str = "CHAIN1", **changes: Any) -> Subscription:
    fields: dict[str, Any] = {
        "gateway_url": "https://ohip.example.com",
        "chain_code": chain,
        "secret_arn": ARN,
    }
    return Subscription(**{**fields, **changes})


@pytest.fixture(scope="module")
def stack(aws_endpoint: str) -> ProvisionedStack:
    return provision(aws_endpoint, TEMPLATE, stack_name=f"registry-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def aws_stack(stack: ProvisionedStack) -> ProvisionedStack:
    """The module's stack, with a fresh copy of its state table as `table_name` (~10 ms, where a
    whole stack takes most of a second)."""
    return with_fresh_table(stack)


@pytest.fixture
def store(aws_stack: ProvisionedStack) -> RegistryStore:
    return RegistryStore(_client(aws_stack), aws_stack.table_name)


# -- add, get, list -----------------------------------------------------------------------------


def test_add_then_get_round_trip_and_item_layout(store: RegistryStore, aws_stack: ProvisionedStack) -> None:
    wanted = _sub(hotel_ids=("HOTEL1",), hotel_code="HOTEL1", delta=True, external_system="RELAY")
    stored = store.add(wanted, now=T0 + 0.1234)
    assert stored == Subscription(
        **{**wanted.__dict__, "created_at": T0 + 0.123, "updated_at": T0 + 0.123, "version": 1}
    )
    assert store.get("CHAIN1") == stored
    assert store.get("NOPE") is None
    item = _raw(aws_stack, "registry#CHAIN1")
    assert item is not None
    assert item["kind"] == {"S": "registry"}
    assert item["secretArn"] == {"S": ARN}
    assert "expiresAt" not in item
    assert not {"clientId", "clientSecret", "appKey"} & set(item)
    index = _raw(aws_stack, "registry-index")
    assert index is not None
    assert index["ids"] == {"SS": ["CHAIN1"]}
    assert index["revision"] == {"N": "1"}
    assert index["kind"] == {"S": "registry-index"}


def test_duplicate_add_is_refused_and_changes_nothing(store: RegistryStore) -> None:
    first = store.add(_sub(), now=T0)
    with pytest.raises(SubscriptionExists, match=r"^subscription 'CHAIN1' already exists in table ") as info:
        store.add(_sub(gateway_url="https://other.example.com"), now=T0 + 1)
    assert info.value.table == store.table_name
    assert store.get("CHAIN1") == first
    assert store.revision() == 1


def test_two_environments_with_one_chain_code_are_two_ids(store: RegistryStore) -> None:
    store.add(_sub(id="CHAIN1-prod"), now=T0)
    store.add(_sub(id="CHAIN1-uat", gateway_url="https://uat.example.com", secret_arn=ARN_UAT), now=T0)
    listing = store.list_all()
    assert [(s.id, s.chain_code, s.secret_arn) for s in listing.subscriptions] == [
        ("CHAIN1-prod", "CHAIN1", ARN),
        ("CHAIN1-uat", "CHAIN1", ARN_UAT),
    ]


def test_list_is_ordered_counts_revisions_and_never_scans(
    store: RegistryStore, aws_stack: ProvisionedStack
) -> None:
    client = store._ddb

    def no_scan(**_: Any) -> None:
        raise AssertionError("list_all must not Scan the state table (it holds the seen-set)")

    client.meta.events.register("before-call.dynamodb.Scan", no_scan)
    assert store.list_all().subscriptions == ()
    assert store.list_all().revision == 0
    # Other items of the state table are not the registry's business.
    StateStore(_client(aws_stack), aws_stack.table_name, "CHAIN2").advance_checkpoint(5, "a", now=T0)
    _client(aws_stack).put_item(TableName=aws_stack.table_name, Item={"pk": {"S": "seen#v1-x"}})
    for chain in ("C", "A", "B"):
        store.add(_sub(chain), now=T0)
    listing = store.list_all()
    assert [s.id for s in listing.subscriptions] == ["A", "B", "C"]
    assert listing.revision == 3
    assert listing.problems == ()
    assert store.revision() == 3


def test_list_reads_more_than_one_batch(store: RegistryStore) -> None:
    ids = [f"C{i:03d}" for i in range(101)]  # one more than a BatchGetItem takes
    for chain in ids:
        store.add(_sub(chain), now=T0)
    assert [s.id for s in store.list_all().subscriptions] == ids


def test_list_asks_again_for_unprocessed_keys(aws_stack: ProvisionedStack) -> None:
    """DynamoDB may leave keys of a BatchGetItem unprocessed (throttling): they are asked for again,
    after a backoff (the injected sleep, so the test does not wait)."""
    client = _client(aws_stack)
    slept: list[float] = []
    store = RegistryStore(client, aws_stack.table_name, sleep=slept.append)
    for chain in ("A", "B", "C"):
        store.add(_sub(chain), now=T0)
    calls: list[int] = []

    def hold_back(parsed: dict[str, Any], **_: Any) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            items = parsed["Responses"][aws_stack.table_name]
            kept, held = items[:1], items[1:]
            parsed["Responses"][aws_stack.table_name] = kept
            parsed["UnprocessedKeys"] = {aws_stack.table_name: {"Keys": [{"pk": i["pk"]} for i in held]}}

    client.meta.events.register("after-call.dynamodb.BatchGetItem", hold_back)
    assert [s.id for s in store.list_all().subscriptions] == ["A", "B", "C"]
    assert len(calls) == 2
    assert slept == [0.05]


def test_list_is_a_snapshot_it_starts_over_when_the_registry_moves(store: RegistryStore) -> None:
    store.add(_sub("A"), now=T0)
    other = RegistryStore(store._ddb, store.table_name)
    store._ddb.meta.events.register(
        "after-call.dynamodb.BatchGetItem", _once(lambda: other.add(_sub("B"), now=T0))
    )
    listing = store.list_all()
    assert [s.id for s in listing.subscriptions] == ["A", "B"]
    assert listing.revision == 2


def test_a_malformed_entry_is_reported_not_raised_and_can_be_removed(
    store: RegistryStore, aws_stack: ProvisionedStack
) -> None:
    store.add(_sub("GOOD"), now=T0)
    store.add(_sub("BAD"), now=T0)
    _client(aws_stack).update_item(
        TableName=aws_stack.table_name,
        Key={"pk": {"S": "registry#BAD"}},
        UpdateExpression="SET #chain = :bad",
        ExpressionAttributeNames={"#chain": "chain"},
        ExpressionAttributeValues={":bad": {"S": "NOT*A*CHAIN"}},
    )
    listing = store.list_all()
    assert [s.id for s in listing.subscriptions] == ["GOOD"]
    (problem,) = listing.problems
    assert problem.startswith(f"registry#BAD in table {aws_stack.table_name} is malformed (chain: expected")
    with pytest.raises(RegistryError, match=r"registry#BAD in table .* is malformed") as info:
        store.get("BAD")
    assert info.value.code == "InvalidItem"
    assert store.remove("BAD") is None
    assert store.list_all().problems == ()


def test_an_id_the_index_lists_without_its_entry(store: RegistryStore, aws_stack: ProvisionedStack) -> None:
    store.add(_sub("GONE"), now=T0)
    _client(aws_stack).delete_item(TableName=aws_stack.table_name, Key={"pk": {"S": "registry#GONE"}})
    (problem,) = store.list_all().problems
    assert "lists 'GONE' but registry#GONE is missing" in problem
    with pytest.raises(SubscriptionNotFound, match=r"index still listed it; dropped now"):
        store.remove("GONE")
    assert store.list_all().problems == ()
    with pytest.raises(SubscriptionNotFound, match=r"^no subscription 'GONE' in table [^ ]+$"):
        store.remove("GONE")


def test_an_entry_written_by_hand_is_not_listed_but_can_be_removed(
    store: RegistryStore, aws_stack: ProvisionedStack
) -> None:
    item = encode_item(_sub("HAND", version=1, created_at=T0, updated_at=T0))
    _client(aws_stack).put_item(TableName=aws_stack.table_name, Item=item)
    assert store.list_all().subscriptions == ()  # not in the index
    assert store.get("HAND") is not None
    with pytest.raises(SubscriptionExists):
        store.add(_sub("HAND"), now=T0)
    removed = store.remove("HAND")
    assert removed is not None
    assert removed.id == "HAND"
    assert _raw(aws_stack, "registry#HAND") is None
    assert store.list_all() == store.list_all()  # the index is well-formed after a removal it never saw


def test_get_refuses_an_item_whose_id_is_not_its_key(
    store: RegistryStore, aws_stack: ProvisionedStack
) -> None:
    item = encode_item(_sub("OTHER", version=1))
    item["pk"] = {"S": "registry#KEY"}
    _client(aws_stack).put_item(TableName=aws_stack.table_name, Item=item)
    with pytest.raises(
        RegistryError, match=r"registry#KEY in table \S+ is malformed \(id: 'OTHER', not the id"
    ):
        store.get("KEY")
    with pytest.raises(RegistryError, match="is malformed"):
        store.set_enabled("KEY", False)
    assert _raw(aws_stack, "registry#OTHER") is None


# -- enable, disable ----------------------------------------------------------------------------


def test_disable_and_enable_move_the_version(store: RegistryStore) -> None:
    store.add(_sub(), now=T0)
    disabled = store.set_enabled("CHAIN1", False, now=T0 + 5)
    assert (disabled.enabled, disabled.version, disabled.updated_at, disabled.created_at) == (
        False,
        2,
        T0 + 5,
        T0,
    )
    assert store.get("CHAIN1") == disabled
    enabled = store.set_enabled("CHAIN1", True, 2, now=T0 + 6)
    assert (enabled.enabled, enabled.version) == (True, 3)
    assert store.get("CHAIN1") == enabled
    assert store.revision() == 3


def test_expected_version_refuses_a_stale_decision(store: RegistryStore) -> None:
    store.add(_sub(), now=T0)
    store.set_enabled("CHAIN1", False, now=T0)
    with pytest.raises(VersionConflict, match=r"is at version 2, not 1") as info:
        store.set_enabled("CHAIN1", True, 1)
    assert info.value.current_version == 2
    with pytest.raises(VersionConflict):
        store.remove("CHAIN1", 1)
    current = store.get("CHAIN1")
    assert current is not None
    assert (current.enabled, current.version) == (False, 2)


def test_enable_of_a_missing_id(store: RegistryStore) -> None:
    with pytest.raises(SubscriptionNotFound, match=r"^no subscription 'NOPE' in table "):
        store.set_enabled("NOPE", True)


def test_enable_racing_a_remove_never_brings_the_entry_back(
    store: RegistryStore, aws_stack: ProvisionedStack
) -> None:
    """The remove lands between the enable's read and its write: the enable's conditional write
    fails, it reads again, finds nothing, says so; no half entry is created by its update."""
    store.add(_sub(enabled=False), now=T0)
    enabler = RegistryStore(_client(aws_stack), aws_stack.table_name)
    remover = RegistryStore(_client(aws_stack), aws_stack.table_name)
    enabler._ddb.meta.events.register(
        "before-call.dynamodb.TransactWriteItems", _once(lambda: remover.remove("CHAIN1"))
    )
    with pytest.raises(SubscriptionNotFound):
        enabler.set_enabled("CHAIN1", True)
    assert _raw(aws_stack, "registry#CHAIN1") is None
    listing = store.list_all()
    assert listing.subscriptions == ()
    assert listing.problems == ()


def test_remove_racing_an_enable(store: RegistryStore, aws_stack: ProvisionedStack) -> None:
    """The enable lands between the remove's read and its write. Without an expected version the
    remove reads again and removes the enabled entry; with one, it refuses."""
    store.add(_sub("A", enabled=False), now=T0)
    store.add(_sub("B", enabled=False), now=T0)
    enabler = RegistryStore(_client(aws_stack), aws_stack.table_name)
    for subscription_id, expected in (("A", None), ("B", 1)):
        remover = RegistryStore(_client(aws_stack), aws_stack.table_name)
        remover._ddb.meta.events.register(
            "before-call.dynamodb.TransactWriteItems",
            _once(lambda sid=subscription_id: enabler.set_enabled(sid, True)),
        )
        if expected is None:
            removed = remover.remove(subscription_id)
            assert removed is not None
            assert (removed.enabled, removed.version) == (True, 2)
        else:
            with pytest.raises(VersionConflict, match="is at version 2, not 1"):
                remover.remove(subscription_id, expected)
    assert [s.id for s in store.list_all().subscriptions] == ["B"]


def test_two_adds_of_one_id_racing_exactly_one_wins(
    store: RegistryStore, aws_stack: ProvisionedStack
) -> None:
    rival = RegistryStore(_client(aws_stack), aws_stack.table_name)
    store._ddb.meta.events.register(
        "before-call.dynamodb.TransactWriteItems",
        _once(lambda: rival.add(_sub(gateway_url="https://rival.example.com"), now=T0)),
    )
    with pytest.raises(SubscriptionExists):
        store.add(_sub(), now=T0)
    current = store.get("CHAIN1")
    assert current is not None
    assert current.gateway_url == "https://rival.example.com"
    assert store.revision() == 1


# -- remove -------------------------------------------------------------------------------------


def test_remove_leaves_the_state_items_in_place(store: RegistryStore, aws_stack: ProvisionedStack) -> None:
    state = StateStore(_client(aws_stack), aws_stack.table_name, "CHAIN1")
    store.add(_sub(), now=T0)
    state.advance_checkpoint(42, "task", now=T0)
    removed = store.remove("CHAIN1")
    assert removed is not None
    assert removed.id == "CHAIN1"
    assert store.get("CHAIN1") is None
    assert store.list_all().subscriptions == ()
    assert (checkpoint := state.get_checkpoint()) is not None
    assert checkpoint.offset == 42
    # Added again, it starts at version 1; its state is still there to resume from.
    assert store.add(_sub(), now=T0 + 1).version == 1


def test_remove_of_a_missing_id(store: RegistryStore) -> None:
    with pytest.raises(SubscriptionNotFound, match=r"^no subscription 'NOPE' in table "):
        store.remove("NOPE")
    assert store.revision() == 0


# -- errors -------------------------------------------------------------------------------------


def test_a_missing_table_is_one_line_naming_table_and_subscription(aws_stack: ProvisionedStack) -> None:
    store = RegistryStore(_client(aws_stack), "no-such-table")
    with pytest.raises(RegistryError) as info:
        store.add(_sub(), now=T0)
    message = str(info.value)
    assert message.startswith(
        "DynamoDB AddSubscription on table no-such-table for subscription 'CHAIN1' failed"
    )
    assert "\n" not in message
    assert info.value.code == "ResourceNotFoundException"
    assert info.value.retryable is False
    with pytest.raises(RegistryError, match="ListRegistry on table no-such-table failed"):
        store.list_all()
    with pytest.raises(RegistryError, match="GetSubscription on table no-such-table for subscription 'X'"):
        store.get("X")


# -- the command line ---------------------------------------------------------------------------


@pytest.fixture
def cli_env(aws_stack: ProvisionedStack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith(("OHIP_", "RELAY_", "AWS_ENDPOINT_URL")):
            monkeypatch.delenv(name)
    env = environment_for(aws_stack, role=None)  # an operator, not a component
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def chains(*argv: str) -> tuple[int, str, str]:
    """`ohip-relay chains ...` in-process, as `cli.main` runs a handler: exit status, stdout, stderr."""
    parser = argparse.ArgumentParser(prog="ohip-relay")
    add_chains_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["chains", *argv])
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = args.handler(args)
        except StartupError as exc:
            print(f"ohip-relay: {exc}", file=sys.stderr)
            status = 2
    return status, out.getvalue(), err.getvalue()


ADD = ("add", "--gateway-url", "https://ohip.example.com/", "--chain-code", "CHAIN1", "--secret-arn", ARN)


def test_cli_add_list_disable_enable(cli_env: dict[str, str]) -> None:
    status, out, err = chains(*ADD, "--hotel-ids", "HOTEL1,HOTEL2", "--delta", "--hotel-code", "HOTEL1")
    assert (status, err) == (0, "")
    assert out.startswith("added 'CHAIN1' (chain CHAIN1 at https://ohip.example.com, enabled, version 1)")
    status, out, err = chains(*ADD, "--id", "CHAIN1-uat", "--disabled")
    assert status == 0
    status, out, err = chains("list")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "CHAIN", "ENABLED"]
    assert lines[1].split()[:4] == ["CHAIN1", "CHAIN1", "yes", "yes"]
    assert lines[2].split()[:4] == ["CHAIN1-uat", "CHAIN1", "no", "no"]
    assert ARN in lines[1]
    assert lines[-1].startswith("2 subscription(s), 1 enabled; table ")
    status, out, _ = chains("disable", "CHAIN1")
    assert (status, out.strip()) == (
        0,
        f"disabled 'CHAIN1' in table {cli_env['RELAY_TABLE_NAME']} (version 2)",
    )
    status, out, _ = chains("enable", "CHAIN1-uat", "--expected-version", "1")
    assert status == 0
    status, out, _ = chains("list", "--json")
    report = json.loads(out)
    assert report["table"] == cli_env["RELAY_TABLE_NAME"]
    assert report["revision"] == 4
    assert report["problems"] == []
    assert [(s["id"], s["enabled"], s["version"]) for s in report["subscriptions"]] == [
        ("CHAIN1", False, 2),
        ("CHAIN1-uat", True, 2),
    ]
    first = report["subscriptions"][0]
    assert (first["hotelIds"], first["hotelCode"], first["delta"], first["secretArn"]) == (
        ["HOTEL1", "HOTEL2"],
        "HOTEL1",
        True,
        ARN,
    )


def test_cli_empty_registry(cli_env: dict[str, str]) -> None:
    assert chains("list") == (
        0,
        f"no subscriptions in the registry (table {cli_env['RELAY_TABLE_NAME']})\n",
        "",
    )


def test_cli_bad_flag_is_one_line_naming_the_flag(cli_env: dict[str, str]) -> None:
    status, out, err = chains(*ADD[:4], "CHAIN*1", *ADD[5:])
    assert (status, out) == (2, "")
    assert err == (
        "ohip-relay: --chain-code: expected 1-20 letters, digits, spaces or _%#$&- (got 'CHAIN*1')\n"
    )
    status, _, err = chains(*ADD[:-1], "my-client-s3cr3t")
    assert status == 2
    assert err.startswith("ohip-relay: --secret-arn: expected a Secrets Manager secret ARN")
    assert "s3cr3t" not in err
    status, _, err = chains("disable", "a/b")
    assert (status, err.split(" (got")[0]) == (
        2,
        "ohip-relay: ID: expected 1-40 letters, digits, spaces or _%#$&-",
    )


def test_cli_duplicate_and_missing_ids_exit_1_with_the_next_step(cli_env: dict[str, str]) -> None:
    table = cli_env["RELAY_TABLE_NAME"]
    assert chains(*ADD)[0] == 0
    status, _, err = chains(*ADD)
    assert status == 1
    assert err == (
        f"ohip-relay chains add: subscription 'CHAIN1' already exists in table {table}; choose another --id "
        "(two environments with one chain code need two ids), or remove that one first\n"
    )
    status, _, err = chains("enable", "NOPE")
    assert (status, err) == (
        1,
        f"ohip-relay chains enable: no subscription 'NOPE' in table {table}; `ohip-relay chains list` shows "
        "the ids\n",
    )
    status, _, err = chains("disable", "CHAIN1", "--expected-version", "7")
    assert status == 1
    assert "is at version 1, not 7" in err


def test_cli_remove_wants_yes_and_says_what_stays(cli_env: dict[str, str]) -> None:
    table = cli_env["RELAY_TABLE_NAME"]
    assert chains(*ADD)[0] == 0
    status, out, err = chains("remove", "CHAIN1")
    assert (status, out) == (2, "")
    assert err == (
        "ohip-relay: chains remove: not without --yes: it would remove registry#CHAIN1 (chain CHAIN1 at "
        f"https://ohip.example.com, enabled, version 1) from table {table}; its state items "
        "(checkpoint#CHAIN1, heartbeat#CHAIN1, lease#CHAIN1, fallback#CHAIN1) would stay\n"
    )
    assert chains("list", "--json")[1].count('"id": "CHAIN1"') == 1
    status, out, err = chains("remove", "CHAIN1", "--yes")
    assert (status, err) == (0, "")
    assert out.startswith("removed 'CHAIN1' (chain CHAIN1 at https://ohip.example.com, enabled, version 1) ")
    assert (
        "state items stay in place: checkpoint#CHAIN1, heartbeat#CHAIN1, lease#CHAIN1, fallback#CHAIN1" in out
    )
    assert chains("remove", "CHAIN1")[0] == 1
    assert chains("remove", "CHAIN1", "--yes")[0] == 1


def test_cli_settings_and_table_problems(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TABLE_NAME", "no-such-table")
    status, _, err = chains("list")
    assert status == 2
    assert err.startswith("ohip-relay chains list: DynamoDB ListRegistry on table no-such-table failed")
    assert err.rstrip().endswith(
        "set RELAY_TABLE_NAME to the stack's TableName output and AWS_REGION to its region"
    )
    assert err.count("\n") == 1
    monkeypatch.delenv("RELAY_TABLE_NAME")
    assert chains("list") == (2, "", "ohip-relay: RELAY_TABLE_NAME: missing\n")


def test_cli_as_a_real_process(aws_stack: ProvisionedStack) -> None:
    """From a fresh interpreter, with nothing but the environment: what `ohip-relay chains` will do
    once `cli.build_parser` adds the command (the same parser, the same handler call)."""
    program = (
        "import argparse, sys\n"
        "from ohip_relay.chains_cli import add_chains_parser\n"
        "from ohip_relay.errors import StartupError\n"
        "parser = argparse.ArgumentParser(prog='ohip-relay')\n"
        "add_chains_parser(parser.add_subparsers(dest='command', required=True))\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "try:\n"
        "    sys.exit(args.handler(args))\n"
        "except StartupError as exc:\n"
        "    print(f'ohip-relay: {exc}', file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OHIP_", "RELAY_", "AWS_ENDPOINT_URL"))}
    env = {**clean, **environment_for(aws_stack, role=None)}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", program, "chains", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    added = run(*ADD)
    assert (added.returncode, added.stderr) == (0, "")
    listed = run("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["id"] for s in json.loads(listed.stdout)["subscriptions"]] == ["CHAIN1"]
    refused = run("remove", "CHAIN1")
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
