"""IAM on the local AWS endpoint: moto authenticates and authorizes every request it serves.

moto can check requests against IAM (its `INITIAL_NO_AUTH_ACTION_COUNT` setting, docs/permissions.md
"How the local stack enforces IAM"). `enforce()` turns that on inside the moto server's process
(the in-process server of `aws.moto_server`, or the child of `motoproc.moto_process`) and closes
the gaps that would otherwise make template policies fail or pass for the wrong reason:

- the local administrator: an IAM user with `Allow *` whose access key is moto's well-known local
  pair (`aws.LOCAL_CREDENTIALS`, "testing"/"testing"). The harness (provisioning, the queue reader,
  test set-up) signs with it; components never do. It is put back after every `/moto-api/reset`;
- the resource of a request: moto authorizes DynamoDB and Secrets Manager requests against
  resource `*`, which no statement with a table or secret ARN matches; here they carry the table's
  and the secret's ARN, as in AWS (and a request for a queue that does not exist, the ARN its URL
  names);
- the IAM action of an operation, where it is not the operation's name (AWS's Service Authorization
  Reference): `SendMessageBatch` is authorized as `sqs:SendMessage` (and the other SQS batch
  operations likewise), `HeadBucket` as `s3:ListBucket`, each item of a DynamoDB transaction as
  its own operation on its table, a DynamoDB batch on each table it names;
- the `s3:prefix` condition key of a ListObjects request, and the `StringLike` operator, so that a
  statement limited to a prefix allows only listings of that prefix;
- one line per denial, naming the principal (the role), the IAM action and the resource, in the
  error returned to the client (JSON for the JSON protocols, so botocore reads its code; the same
  for a refused access key or signature), in the log of the moto process, and in a journal read
  over HTTP (`denials()`): harnesses fail a run on any denial, wherever the component that got it
  logged (or swallowed) it.

What moto still evaluates less strictly than AWS is listed in docs/permissions.md.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

import httpx

log = logging.getLogger(__name__)

ADMIN_USER = "ohip-local-admin"
ADMIN_ACCESS_KEY_ID = "testing"  # moto's well-known local pair: nothing secret
ADMIN_SECRET_ACCESS_KEY = "testing"  # noqa: S105
ACCOUNT_ID = "123456789012"  # moto's default account
JOURNAL_PATH = "/_ohip_local/iam"

# Operations whose IAM action is not `service:Operation` (AWS Service Authorization Reference).
IAM_ACTIONS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "s3:HeadBucket": "s3:ListBucket",
}
_ADMIN_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
_JSON_ACCESS_DENIED = {"sqs": "AccessDenied"}  # SQS's query-compatible code; others AccessDeniedException


class IamSetupError(RuntimeError):
    """moto is not the version these patches were written for; the message names what changed."""


# --------------------------------------------------------------------------------------------
# The journal: every decision moto made, denials kept one by one, allowed calls counted.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Denial:
    """One request moto refused: who (`principal`, an assumed-role or user ARN), what, on what."""

    seq: int
    principal: str
    action: str
    resource: str

    @property
    def role(self) -> str:
        """The role name of an assumed-role principal (the user name of a user)."""
        if ":assumed-role/" in self.principal:
            return self.principal.split(":assumed-role/", 1)[1].split("/", 1)[0]
        return self.principal.rsplit("/", 1)[-1]

    def describe(self) -> str:
        return f"AccessDenied: role {self.role} may not {self.action} on {self.resource}"


class _Journal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._denials: list[Denial] = []
        self._next = 1
        self._allowed: Counter[tuple[str, str, str]] = Counter()

    def allowed(self, principal: str, action: str, resource: str) -> None:
        with self._lock:
            self._allowed[(principal, action, resource)] += 1

    def denied(self, principal: str, action: str, resource: str) -> Denial:
        with self._lock:
            denial = Denial(self._next, principal, action, resource)
            self._next += 1
            self._denials.append(denial)
        log.warning("%s (%s)", denial.describe(), principal)
        return denial

    def denials_since(self, since: int) -> tuple[int, list[Denial]]:
        with self._lock:
            return self._next, [d for d in self._denials if d.seq >= since]

    def usage(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"principal": p, "action": a, "resource": r, "count": n}
                for (p, a, r), n in sorted(self._allowed.items())
            ]

    def clear(self) -> None:
        with self._lock:
            self._denials.clear()
            self._allowed.clear()


JOURNAL = _Journal()


# --------------------------------------------------------------------------------------------
# Inside the moto process.
# --------------------------------------------------------------------------------------------

_enforcing = False
_lock = threading.Lock()


def enforce() -> None:
    """Patch moto (idempotent; in the process that serves the requests), create the local
    administrator and turn authentication and authorization on for every later request."""
    global _enforcing
    with _lock:
        if not _enforcing:
            _patch_moto()
            _enforcing = True
        seed_admin()
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin

        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # every request is checked (moto's reset-auth)
        ActionAuthenticatorMixin.request_count = 0


def seed_admin() -> None:
    """The local administrator: user `ohip-local-admin`, `Allow *`, access key "testing"."""
    from moto.iam.models import iam_backends

    backend = iam_backends[ACCOUNT_ID]["aws"]
    if ADMIN_ACCESS_KEY_ID in backend.access_keys:
        return
    if ADMIN_USER not in backend.users:
        backend.create_user("us-east-1", ADMIN_USER)
    backend.put_user_policy(ADMIN_USER, "everything", _ADMIN_POLICY)
    key = backend.create_access_key(ADMIN_USER)
    # moto draws access keys at random; the local administrator's is the well-known local pair, so
    # that what signs with "testing" today (the harness, its tests) is this user and nothing else.
    del backend.access_keys[key.access_key_id]
    key.access_key_id = ADMIN_ACCESS_KEY_ID
    key.secret_access_key = ADMIN_SECRET_ACCESS_KEY
    backend.access_keys[ADMIN_ACCESS_KEY_ID] = key


def _require(owner: Any, *names: str) -> None:
    for name in names:
        if not hasattr(owner, name):
            raise IamSetupError(f"moto changed: {getattr(owner, '__name__', owner)}.{name} is gone")


def _patch_moto() -> None:
    from moto.core.exceptions import AccessDeniedError, JsonRESTError
    from moto.dynamodb.responses import DynamoHandler
    from moto.iam import access_control, policy_conditions
    from moto.iam.models import iam_backends
    from moto.secretsmanager.responses import SecretsManagerResponse
    from moto.sqs.responses import SQSResponse

    _require(access_control.IAMRequestBase, "check_action_permitted", "_is_assuming_role_operation")
    _require(access_control.IAMRequestBase, "_check_role_trust_relationship", "_raise_access_denied")
    _require(access_control.IAMRequest, "_raise_invalid_access_key", "_raise_signature_does_not_match")
    _require(access_control, "IAMPolicy", "PermissionResult", "S3IAMRequest")
    _require(policy_conditions, "CONDITION_OPERATIONS")
    _require(iam_backends, "items")
    _require(SQSResponse, "_determine_resource", "_get_queue_name")
    queue_resource = SQSResponse._determine_resource

    class JsonAccessDenied(JsonRESTError):
        code = 403

    class QueryAccessDenied(AccessDeniedError):
        def __init__(self, message: str) -> None:
            super(AccessDeniedError, self).__init__("AccessDenied", message)

    permission = access_control.PermissionResult
    query_invalid_key = access_control.IAMRequest._raise_invalid_access_key
    query_bad_signature = access_control.IAMRequest._raise_signature_does_not_match

    # moto answers an authentication failure in XML whatever the protocol: for the JSON protocols
    # botocore then reports "403" and a page of XML. Here it is JSON with the code AWS sends.
    def invalid_access_key(self: Any, reason: str) -> None:
        if _json_protocol(self._headers):
            code = "InvalidClientTokenId" if self._service == "sqs" else "UnrecognizedClientException"
            raise JsonAccessDenied(code, "The security token included in the request is invalid.")
        query_invalid_key(self, reason)

    def bad_signature(self: Any) -> None:
        if _json_protocol(self._headers):
            code = "SignatureDoesNotMatch" if self._service == "sqs" else "InvalidSignatureException"
            raise JsonAccessDenied(
                code, "The request signature we calculated does not match the signature you provided."
            )
        query_bad_signature(self)

    def deny(self: Any, principal: str, action: str, resource: str, explicit_deny: bool) -> NoReturn:
        JOURNAL.denied(principal, action, resource)
        why = "with an explicit deny in" if explicit_deny else "because no"
        message = (
            f"User: {principal} is not authorized to perform: {action} on resource: {resource} "
            f"{why} identity-based policy allows the {action} action"
        )
        if isinstance(self, access_control.S3IAMRequest):
            self._raise_access_denied()  # S3's own XML error
        if _json_protocol(self._headers):
            raise JsonAccessDenied(_JSON_ACCESS_DENIED.get(self._service, "AccessDeniedException"), message)
        raise QueryAccessDenied(message)

    def check_action_permitted(self: Any, resource: str) -> None:
        operation = IAM_ACTIONS.get(self._action, self._action)
        if operation == "sts:GetCallerIdentity":  # AWS allows it whatever the policies say
            return
        principal = str(self._access_key.arn)
        policies = [access_control.IAMPolicy(p) for p in self._access_key.collect_policies()]
        table_arn = f"arn:aws:dynamodb:{self._region}:{self.account_id}:table/"
        for action, target in _authorizations(operation, resource, self._body, table_arn):
            conditions = _condition_values(action, self._path)
            permitted = explicit_deny = False
            for policy in policies:
                result = policy.is_action_permitted(action, target, None, conditions)
                if result == permission.DENIED:
                    explicit_deny = True
                elif result == permission.PERMITTED:
                    permitted = True
            if not explicit_deny and self._is_assuming_role_operation(target):
                permitted = permitted and self._check_role_trust_relationship(target)
            if permitted and not explicit_deny:
                JOURNAL.allowed(principal, action, target)
                continue
            deny(self, principal, action, target, explicit_deny)

    def dynamodb_resource(self: Any) -> str:
        body = getattr(self, "body", None)
        tables = _dynamodb_tables(body if isinstance(body, dict) else {})
        if len(tables) != 1:  # none (ListTables) or several (a batch across tables): only `*` matches
            return "*"
        return f"arn:aws:dynamodb:{self.region}:{self.current_account}:table/{tables.pop()}"

    def sqs_resource(self: Any) -> str:
        found = str(queue_resource(self))
        if found != "*":
            return found
        # A queue that does not exist: AWS still authorizes the ARN the request names.
        name = str(self._get_queue_name())
        if not name or name == "/":
            return "*"
        return f"arn:aws:sqs:{self.region}:{self.current_account}:{name}"

    def secret_resource(self: Any) -> str:
        secret_id = self._get_param("SecretId")
        if not secret_id:
            return "*"
        try:
            return str(self.backend.describe_secret(secret_id).arn)
        except Exception:  # an unknown secret: AWS would still check the ARN asked for
            return str(secret_id) if str(secret_id).startswith("arn:") else "*"

    def string_like(expected: list[str] | str, actual: str) -> bool:
        patterns = [expected] if isinstance(expected, str) else expected
        return any(fnmatch.fnmatchcase(actual, pattern) for pattern in patterns)

    setattr(access_control.IAMRequestBase, "check_action_permitted", check_action_permitted)  # noqa: B010
    setattr(access_control.IAMRequest, "_raise_invalid_access_key", invalid_access_key)  # noqa: B010
    setattr(access_control.IAMRequest, "_raise_signature_does_not_match", bad_signature)  # noqa: B010
    setattr(DynamoHandler, "_determine_resource", dynamodb_resource)  # noqa: B010
    setattr(SQSResponse, "_determine_resource", sqs_resource)  # noqa: B010
    setattr(SecretsManagerResponse, "_determine_resource", secret_resource)  # noqa: B010
    operations: dict[str, Any] = policy_conditions.CONDITION_OPERATIONS
    operations["StringLike"] = string_like


# DynamoDB authorizes each item of a transaction as the operation it is, on its table; a batch as
# the batch action, on each table it names ("Using IAM with DynamoDB transactions").
_TRANSACT_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}


def _authorizations(action: str, resource: str, body: Any, table_arn: str) -> list[tuple[str, str]]:
    """The (IAM action, resource) pairs a request needs: one, but for DynamoDB's transactions and
    batches (one per item or table)."""
    if action not in (
        "dynamodb:TransactWriteItems",
        "dynamodb:TransactGetItems",
        "dynamodb:BatchGetItem",
        "dynamodb:BatchWriteItem",
    ):
        return [(action, resource)]
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return [(action, resource)]
    pairs: dict[tuple[str, str], None] = {}
    if action.startswith("dynamodb:Batch"):
        for table in request.get("RequestItems") or {}:
            pairs[(action, table_arn + str(table))] = None
    else:
        for item in request.get("TransactItems") or []:
            for kind, operation in (item or {}).items():
                if kind in _TRANSACT_ACTIONS and isinstance(operation, dict):
                    pairs[(_TRANSACT_ACTIONS[kind], table_arn + str(operation.get("TableName")))] = None
    return list(pairs) or [(action, resource)]


def _json_protocol(headers: Any) -> bool:
    return str(headers.get("Content-Type", "")).startswith("application/x-amz-json")


def _condition_values(action: str, path: str) -> dict[str, str]:
    """The condition keys this module supplies: `s3:prefix` of a listing ("" when it names none,
    so that a prefix condition fails as in AWS)."""
    if action == "s3:ListBucket":
        query = parse_qs(urlsplit(path).query, keep_blank_values=True)
        return {"s3:prefix": query.get("prefix", [""])[0]}
    return {}


def _dynamodb_tables(body: dict[str, Any]) -> set[str]:
    if isinstance(body.get("TableName"), str):
        return {body["TableName"]}
    tables: set[str] = set()
    request_items = body.get("RequestItems")
    if isinstance(request_items, dict):
        tables.update(str(name) for name in request_items)
    for item in body.get("TransactItems") or []:
        if isinstance(item, dict):
            for operation in item.values():
                if isinstance(operation, dict) and isinstance(operation.get("TableName"), str):
                    tables.add(operation["TableName"])
    return tables


class JournalApp:
    """WSGI middleware in front of moto's application: serves the journal under `JOURNAL_PATH`
    and puts the local administrator back after moto's own `POST /moto-api/reset`."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path.startswith(JOURNAL_PATH + "/"):
            return self._journal(path[len(JOURNAL_PATH) + 1 :], environ, start_response)
        if path == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
            body = list(self.app(environ, start_response))
            JOURNAL.clear()
            seed_admin()
            return body
        return self.app(environ, start_response)

    @staticmethod
    def _journal(what: str, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        if what == "denials":
            since = int(query.get("since", ["0"])[0] or 0)
            following, found = JOURNAL.denials_since(since)
            payload: Any = {"next": following, "denials": [asdict(d) for d in found]}
        elif what == "usage":
            payload = {"usage": JOURNAL.usage()}
        else:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "unknown journal view"}']
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(payload).encode()]


# --------------------------------------------------------------------------------------------
# From the harness: read the journal over HTTP.
# --------------------------------------------------------------------------------------------


def journal_mark(endpoint: str) -> int:
    """The sequence number the next denial will get: `denials(endpoint, since=mark)` later returns
    only what was denied after this call."""
    return int(_get(endpoint, "denials", {"since": "999999999"})["next"])


def denials(endpoint: str, since: int = 0) -> list[Denial]:
    """The requests moto refused since `since` (0: since it started or was last reset)."""
    data = _get(endpoint, "denials", {"since": str(since)})
    return [Denial(**d) for d in data["denials"]]


def usage(endpoint: str) -> list[dict[str, Any]]:
    """Every (principal, IAM action, resource) moto allowed, with how often."""
    return list(_get(endpoint, "usage", {})["usage"])


def describe_denials(found: Iterable[Denial]) -> list[str]:
    """One line per distinct (role, action, resource), in the order first seen."""
    lines: dict[str, None] = {}
    for denial in found:
        lines.setdefault(denial.describe(), None)
    return list(lines)


def _get(endpoint: str, what: str, params: dict[str, str]) -> dict[str, Any]:
    response = httpx.get(f"{endpoint}{JOURNAL_PATH}/{what}", params=params, timeout=30)
    if response.status_code == 404:
        raise IamSetupError(f"{endpoint} keeps no IAM journal: it is not a moto server of ohip_local")
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data
