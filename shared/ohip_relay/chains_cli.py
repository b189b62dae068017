"""`ohip-relay chains`: manage the chain registry (see registry.py).

    ohip-relay chains add --gateway-url URL --chain-code CODE --secret-arn ARN [--id ID] ...
    ohip-relay chains list [--json]
    ohip-relay chains disable ID | enable ID [--expected-version N]
    ohip-relay chains remove ID --yes [--expected-version N]

The table, region and endpoint come from the environment (`RELAY_TABLE_NAME`, `AWS_REGION`,
`AWS_ENDPOINT_URL`); flags are validated by the same rules, with the same messages, as the
single-chain environment variables. The registry holds no secret (only the ARN of the secret, which
is printed). Exit status: 0 done; 1 the registry said no (a duplicate or unknown id, a version that
moved) or an AWS call failed; 2 bad flags or settings, missing table, credentials or permissions.
Configuration errors are raised as `StartupError` for `cli.main` to print; registry and AWS
failures are printed here, one line naming the table and the next step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .config import ConfigError, Reader, Settings
from .errors import StartupError
from .failures import BAD_CREDENTIALS, DENIED, NOT_FOUND
from .registry import (
    SUBSCRIPTION_ID,
    SUBSCRIPTION_ID_EXPECTED,
    RegistryError,
    RegistryStore,
    Subscription,
    SubscriptionExists,
    SubscriptionNotFound,
    VersionConflict,
    entry_key,
    read_subscription,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: The `add` flag behind each field (argparse's dest is the field name).
FLAGS = {
    "id": "--id",
    "gateway_url": "--gateway-url",
    "chain_code": "--chain-code",
    "secret_arn": "--secret-arn",
    "enterprise_id": "--enterprise-id",
    "oauth_scope": "--oauth-scope",
    "external_system": "--external-system",
    "hotel_ids": "--hotel-ids",
    "hotel_code": "--hotel-code",
}
#: The state items a subscription leaves behind when it is removed (see state.py).
STATE_PREFIXES = ("checkpoint#", "heartbeat#", "lease#", "fallback#")

_PERMISSIONS = "dynamodb:GetItem, BatchGetItem, PutItem, UpdateItem, DeleteItem (in TransactWriteItems)"

Handler = Callable[[argparse.Namespace], int]


class ChainsUsageError(StartupError):
    """The command was asked for something it will not do as asked (exit 2)."""


def add_chains_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `chains` and its subcommands to `commands` (the top-level parser's subparsers)."""
    chains = commands.add_parser(
        "chains",
        help="manage the chain registry: the subscriptions one deployment relays",
        description="Manage the chain registry in the state table (RELAY_TABLE_NAME, AWS_REGION).",
    )
    sub = chains.add_subparsers(dest="chains_command", required=True, metavar="ACTION")

    add = sub.add_parser(
        "add",
        help="add a subscription (validated like the environment variables)",
        description="Add a subscription to the registry. Secrets stay in Secrets Manager: --secret-arn "
        "names a JSON secret with clientId, clientSecret and appKey, one per OPERA environment.",
    )
    add.add_argument("--id", help="the subscription id, unique in the deployment (default: the chain code)")
    add.add_argument("--gateway-url", help="the OHIP gateway's https base URL (as OHIP_GATEWAY_URL)")
    add.add_argument("--chain-code", help="the OPERA chain code (as OHIP_CHAIN_CODE)")
    add.add_argument(
        "--secret-arn", help="ARN of the environment's Secrets Manager secret (as OHIP_SECRET_ARN)"
    )
    add.add_argument("--enterprise-id", help="as OHIP_ENTERPRISE_ID")
    add.add_argument("--oauth-scope", help="as OHIP_OAUTH_SCOPE")
    add.add_argument(
        "--external-system", help="the poll fallback's external system (as OHIP_EXTERNAL_SYSTEM)"
    )
    add.add_argument("--hotel-ids", help="comma-separated hotels the poll fallback polls (as OHIP_HOTEL_IDS)")
    add.add_argument(
        "--hotel-code",
        help="the subscription's hotelCode filter: comma-separated hotel codes, at most 50 characters "
        "(as OHIP_HOTEL_CODE; the other hotels' events are not delivered)",
    )
    add.add_argument(
        "--delta", action="store_true", help="only changed elements in detail (as OHIP_STREAM_DELTA=true)"
    )
    add.add_argument("--disabled", action="store_true", help="add it disabled (enable it later)")
    add.set_defaults(handler=_add)

    listing = sub.add_parser("list", help="print the registry (secret ARNs, never secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object")
    listing.set_defaults(handler=_list)

    for action, enabled in (("enable", True), ("disable", False)):
        toggle = sub.add_parser(action, help=f"{action} a subscription")
        toggle.add_argument(
            "subscription_id", metavar="ID", help="the subscription id (`-- ID` if it starts with -)"
        )
        toggle.add_argument(
            "--expected-version", type=int, help="change it only if it is still at this version (see list)"
        )
        toggle.set_defaults(handler=_enable if enabled else _disable)

    remove = sub.add_parser(
        "remove",
        help="remove a subscription (needs --yes; its checkpoint and other state items stay)",
    )
    remove.add_argument(
        "subscription_id", metavar="ID", help="the subscription id (`-- ID` if it starts with -)"
    )
    remove.add_argument("--yes", action="store_true", help="really remove it")
    remove.add_argument("--expected-version", type=int, help="remove it only if it is still at this version")
    remove.set_defaults(handler=_remove)


# -- handlers -----------------------------------------------------------------------------------


def _add(args: argparse.Namespace) -> int:
    values = {flag: getattr(args, name) or "" for name, flag in FLAGS.items()}
    subscription = read_subscription(Reader(values), FLAGS, enabled=not args.disabled, delta=args.delta)
    store = _store()
    try:
        stored = store.add(subscription)
    except RegistryError as exc:
        return _failed("add", exc)
    print(f"added {stored.id!r} ({_describe(stored)}) to the registry in table {store.table_name}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    store = _store()
    try:
        listing = store.list_all()
    except RegistryError as exc:
        return _failed("list", exc)
    if args.json:
        report = {
            "table": store.table_name,
            "revision": listing.revision,
            "subscriptions": [subscription_json(s) for s in listing.subscriptions],
            "problems": list(listing.problems),
        }
        print(json.dumps(report))
    elif listing.subscriptions:
        print(_table(listing.subscriptions))
        enabled = sum(1 for s in listing.subscriptions if s.enabled)
        print(
            f"{len(listing.subscriptions)} subscription(s), {enabled} enabled; table {store.table_name}, "
            f"revision {listing.revision}"
        )
    else:
        print(f"no subscriptions in the registry (table {store.table_name})")
    for problem in listing.problems:
        print(f"ohip-relay chains list: {problem}", file=sys.stderr)
    return EXIT_FAILED if listing.problems else EXIT_OK


def _enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def _disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    subscription_id = _subscription_id(args.subscription_id)
    store = _store()
    action = "enable" if enabled else "disable"
    try:
        updated = store.set_enabled(subscription_id, enabled, args.expected_version)
    except RegistryError as exc:
        return _failed(action, exc)
    print(f"{action}d {updated.id!r} in table {store.table_name} (version {updated.version})")
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    subscription_id = _subscription_id(args.subscription_id)
    store = _store()
    left = ", ".join(f"{prefix}{subscription_id}" for prefix in STATE_PREFIXES)
    if not args.yes:
        try:
            current = store.get(subscription_id)
        except RegistryError as exc:
            return _failed("remove", exc)
        if current is None:
            print(
                f"ohip-relay chains remove: no subscription {subscription_id!r} in table {store.table_name}; "
                "`ohip-relay chains list` shows the ids",
                file=sys.stderr,
            )
            return EXIT_FAILED
        raise ChainsUsageError(
            f"chains remove: not without --yes: it would remove {entry_key(subscription_id)} "
            f"({_describe(current)}) from table {store.table_name}; its state items ({left}) would stay"
        )
    try:
        removed = store.remove(subscription_id, args.expected_version)
    except RegistryError as exc:
        return _failed("remove", exc)
    what = _describe(removed) if removed is not None else "a malformed entry"
    print(
        f"removed {subscription_id!r} ({what}) from the registry in table {store.table_name}; its state "
        f"items stay in place: {left} (adding the id again resumes from its checkpoint; delete them by hand "
        "if the chain is gone for good)"
    )
    return EXIT_OK


# -- helpers ------------------------------------------------------------------------------------


def subscription_json(subscription: Subscription) -> dict[str, Any]:
    """An entry as `list --json` prints it: the item's attribute names, every field present."""
    return {
        "id": subscription.id,
        "chain": subscription.chain_code,
        "gatewayUrl": subscription.gateway_url,
        "secretArn": subscription.secret_arn,
        "enterpriseId": subscription.enterprise_id,
        "oauthScope": subscription.oauth_scope,
        "externalSystem": subscription.external_system,
        "hotelIds": list(subscription.hotel_ids),
        "enabled": subscription.enabled,
        "delta": subscription.delta,
        "hotelCode": subscription.hotel_code,
        "createdAt": subscription.created_at,
        "updatedAt": subscription.updated_at,
        "version": subscription.version,
    }


def _settings() -> Settings:
    """The table and where it is; the queue and OHIP settings are not needed to manage the registry."""
    settings = Settings.from_env(os.environ)
    if not settings.table_name:
        raise ConfigError("RELAY_TABLE_NAME: missing")
    if not settings.aws_region:
        raise ConfigError("AWS_REGION: missing (the AWS region of the table, e.g. eu-west-1)")
    return settings


def _store() -> RegistryStore:
    from .runtime import aws_client  # boto3 only once the flags are known to be good

    settings = _settings()
    return RegistryStore(aws_client(settings, "dynamodb"), settings.table_name)


def _subscription_id(value: str) -> str:
    return Reader({"ID": value}).pattern("ID", SUBSCRIPTION_ID, SUBSCRIPTION_ID_EXPECTED, required=True)


def _failed(action: str, exc: RegistryError) -> int:
    """Print one line for a registry or AWS failure, with the next step; the exit status."""
    code, exit_code = exc.code, EXIT_FAILED
    if isinstance(exc, SubscriptionExists):
        step = (
            "choose another --id (two environments with one chain code need two ids), "
            "or remove that one first"
        )
    elif isinstance(exc, SubscriptionNotFound):
        step = "`ohip-relay chains list` shows the ids"
    elif isinstance(exc, VersionConflict):
        step = "`ohip-relay chains list` shows the current version; decide again"
    elif code in NOT_FOUND:
        step, exit_code = (
            "set RELAY_TABLE_NAME to the stack's TableName output and AWS_REGION to its region",
            2,
        )
    elif code in DENIED:
        step, exit_code = f"run under an identity allowed {_PERMISSIONS} on the table", 2
    elif code in BAD_CREDENTIALS:
        step, exit_code = "set AWS credentials (AWS_PROFILE, or the local stack's AWS_* exports)", 2
    elif exc.retryable:
        step = "try again (check AWS_ENDPOINT_URL and AWS_REGION if it keeps failing)"
    elif code == "InvalidItem":
        step = ""  # the message says what to do with the item
    else:
        step = "check AWS_ENDPOINT_URL, AWS_REGION and the credentials, then try again"
    line = f"ohip-relay chains {action}: {exc}"
    print(f"{line}; {step}" if step else line, file=sys.stderr)
    return exit_code


def _describe(subscription: Subscription) -> str:
    state = "enabled" if subscription.enabled else "disabled"
    where = f"chain {subscription.chain_code} at {subscription.gateway_url}"
    return f"{where}, {state}, version {subscription.version}"


_COLUMNS = (
    "ID",
    "CHAIN",
    "ENABLED",
    "DELTA",
    "HOTEL CODE",
    "EXTERNAL SYSTEM",
    "HOTELS",
    "ENTERPRISE",
    "VERSION",
    "UPDATED (UTC)",
    "GATEWAY",
    "SECRET ARN",
)


def _table(subscriptions: tuple[Subscription, ...]) -> str:
    rows = [list(_COLUMNS)]
    for s in subscriptions:
        rows.append(
            [
                _cell(s.id),
                _cell(s.chain_code),
                "yes" if s.enabled else "no",
                "yes" if s.delta else "no",
                _cell(s.hotel_code or ""),
                _cell(s.external_system),
                _cell(",".join(s.hotel_ids)),
                _cell(s.enterprise_id),
                str(s.version),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s.updated_at)),
                _cell(s.gateway_url),
                _cell(s.secret_arn),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _cell(value: str) -> str:
    """A value for the table: "-" when empty, control characters shown as "?"."""
    if not value:
        return "-"
    return "".join(ch if ch.isprintable() else "?" for ch in value)
