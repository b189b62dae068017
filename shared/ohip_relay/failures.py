"""What a command says when it cannot go on: one line naming what failed, and the next step.

`explain()` turns any exception that reaches the command line into a `Failure`: the line the user
reads, the exit status (2: something to fix in the configuration, credentials or permissions;
1: the run failed, for example a network path that is down) and whether it is a bug of ours (then
`-v` shows the traceback, and the line says so). Pure: no I/O; the environment is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .auth import AuthError
from .errors import StartupError, one_line
from .state import StateStoreError

EXIT_FAILED = 1
EXIT_USAGE = 2

# AWS error codes by what they mean for the user (also used by `chains_cli`): the first three mean
# "fix the setup", not "try again".
NOT_FOUND = frozenset(
    {"ResourceNotFoundException", "NoSuchBucket", "AWS.SimpleQueueService.NonExistentQueue"}
)
DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})
BAD_CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredTokenException",
        "ExpiredToken",
        "NoCredentialsError",
        "PartialCredentialsError",
        "InvalidAccessKeyId",
    }
)
UNREACHABLE = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ConnectionError",
        "ConnectError",
    }
)


@dataclass(frozen=True)
class Failure:
    message: str  # one line
    exit_code: int
    unexpected: bool = False  # not a failure we know: a traceback with -v helps the report


def _where(env: Mapping[str, str]) -> str:
    endpoint = env.get("AWS_ENDPOINT_URL", "").strip()
    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip() or "?"
    return f"{endpoint} (AWS_ENDPOINT_URL)" if endpoint else f"AWS region {region}"


def _aws_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if isinstance(code, str) and code:
            return code
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    return type(exc).__name__


def explain_state_failure(exc: StateStoreError, table: str, env: Mapping[str, str]) -> Failure:
    """A DynamoDB failure on the state table, as the user should read it."""
    code = exc.code
    if code in NOT_FOUND:
        return Failure(
            f"DynamoDB table {table!r} does not exist in {_where(env)}: set RELAY_TABLE_NAME to the stack's "
            "TableName output (and AWS_REGION to its region)",
            EXIT_USAGE,
        )
    return _aws_failure(
        code,
        f"DynamoDB table {table!r}",
        env,
        detail=str(exc),
        check="RELAY_TABLE_NAME (the stack's TableName output)",
    )


def _aws_failure(code: str, what: str, env: Mapping[str, str], *, detail: str, check: str = "") -> Failure:
    if code in DENIED:
        # A least-privilege role covers the stack's own resources only: a mistyped name is denied
        # before the service looks it up, so "denied" often means "not the stack's".
        name_hint = f"check {check}, then " if check else ""
        return Failure(
            f"{what}: access denied ({code}); {name_hint}check that the credentials are those of a role with "
            "the permissions in docs/permissions.md",
            EXIT_USAGE,
        )
    if code in BAD_CREDENTIALS:
        return Failure(
            f"{what}: AWS did not accept the credentials ({code}); set AWS_PROFILE (or run `aws sso login`), "
            "or, for the local stack, paste the AWS_* exports that `ohip-relay local aws` printed "
            "(AWS_ENDPOINT_URL among them)",
            EXIT_USAGE,
        )
    if code == "ProfileNotFound":
        return Failure(
            f"{what}: AWS_PROFILE names a profile that is not in ~/.aws/config ({detail}); "
            "set it to one that is, or unset it",
            EXIT_USAGE,
        )
    if code == "NoRegionError":
        return Failure(
            f"{what}: no AWS region: set AWS_REGION (the region of the queue and table)", EXIT_USAGE
        )
    if code in UNREACHABLE:
        return Failure(
            f"{what}: cannot reach AWS at {_where(env)} ({code}); check AWS_ENDPOINT_URL and AWS_REGION, "
            "or start the local stack (`ohip-relay local aws`)",
            EXIT_FAILED,
        )
    if code in NOT_FOUND:
        return Failure(
            f"{what}: not found in {_where(env)} ({code}); check the name and AWS_REGION", EXIT_USAGE
        )
    return Failure(f"{what}: {detail}", EXIT_FAILED)


def explain(exc: BaseException, env: Mapping[str, str]) -> Failure:
    """The one line for an exception that ended a command."""
    if isinstance(exc, StartupError):
        return Failure(str(exc), EXIT_USAGE)
    if isinstance(exc, StateStoreError):
        table = env.get("RELAY_TABLE_NAME", "").strip() or "?"
        return explain_state_failure(exc, table, env)
    if isinstance(exc, AuthError):
        if exc.permanent:
            return Failure(str(exc), EXIT_USAGE)
        return Failure(f"{exc}; try again, or run `ohip-relay doctor`", EXIT_FAILED)
    module = type(exc).__module__
    if module.startswith(("botocore", "boto3")):
        return _aws_failure(_aws_code(exc), "AWS", env, detail=one_line(exc))
    return Failure(
        f"{one_line(exc)} (unexpected: run again with -v for the traceback, and report it)",
        EXIT_FAILED,
        unexpected=True,
    )


__all__ = [
    "BAD_CREDENTIALS",
    "DENIED",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "NOT_FOUND",
    "UNREACHABLE",
    "Failure",
    "explain",
    "explain_state_failure",
]
