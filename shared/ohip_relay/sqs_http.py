"""SendMessageBatch as one signed HTTP request from the event loop: the stream consumer's hot path.

Why not boto3 here
------------------
A boto3 `send_message_batch` call is blocking, so the publisher ran it in a thread pool; and each
call walks botocore's whole request pipeline (endpoint rules, event hooks, the model-driven
serializer, the user-agent builder, retries). Measured on the project's 2-core machine against the
bench's SQS endpoint: about 4 ms of CPU per 10-entry batch through boto3, 0.8 ms through this
transport, and no thread hand-offs or GIL contention with the event loop that reads the WebSocket.
At a few thousand events per second that difference is most of a CPU core.

What stays botocore's
---------------------
Only the parts that are cheap and that must be exactly AWS's are reused, from the same boto3 client
the rest of the relay uses (so `AWS_ENDPOINT_URL`, `AWS_REGION` and the credential chain are the
same): the endpoint URL and region, the SigV4 signer (`botocore.auth.SigV4Auth`), the credentials
(refreshed as botocore refreshes them; a refresh runs off the event loop), and the response parser
of the SQS service model, so that `Successful`/`Failed` and error codes (including SQS's
query-compatible codes from `x-amzn-query-error`) come out exactly as boto3 would give them.
Errors are raised as botocore's own exceptions (`ClientError`, `EndpointConnectionError`,
`ReadTimeoutError`, `ConnectionClosedError`), so `publish.classify_error` treats both paths alike.

The request is the SQS AWS JSON 1.0 protocol that botocore uses for SQS (`POST`, `X-Amz-Target:
AmazonSQS.SendMessageBatch`, `Content-Type: application/x-amz-json-1.0`, the operation's input as a
JSON object). The publisher builds every entry itself (ids, sizes and attributes checked there), so
the body is its request as-is. botocore's own retries do not apply: the publisher retries.

If the SQS client's model does not speak the JSON protocol (a botocore older than 1.34), building
the transport raises `ValueError`: use the publisher's boto3 path instead.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.parsers import create_parser
from yarl import URL

from .fastjson import dumps_ascii_bytes

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef, SendMessageBatchResultTypeDef

OPERATION = "SendMessageBatch"
_CONTENT_TYPE = "application/x-amz-json-1.0"


def _ssl_context() -> ssl.SSLContext:
    """TLS as botocore verifies it: `AWS_CA_BUNDLE` if set, else certifi's bundle (httpx's dependency)."""
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if not bundle:
        try:
            import certifi

            bundle = certifi.where()
        except ImportError:  # pragma: no cover - certifi comes with httpx
            bundle = None
    return ssl.create_default_context(cafile=bundle)


class SqsHttpTransport:
    """Sends SendMessageBatch requests over one aiohttp session; `start()` before use, `close()` after.

    `credentials` are the session's (`boto3.session.Session().get_credentials()`); None raises
    `NoCredentialsError` at `start()`, as a boto3 call would at its first request.
    `max_connections` should be at least the publisher's `max_batches_in_flight`. A request that
    cannot connect within `connect_timeout` or waits `read_timeout` for data fails (retryable).
    """

    def __init__(
        self,
        sqs_client: SQSClient,
        credentials: Credentials | None,
        *,
        max_connections: int = 8,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
    ) -> None:
        meta = sqs_client.meta
        model = meta.service_model
        if model.protocol != "json":
            raise ValueError(
                f"this botocore speaks {model.protocol!r} to SQS; the HTTP transport needs 'json'"
            )
        self._url = meta.endpoint_url
        self._region = meta.region_name
        self._signing_name = model.signing_name or "sqs"
        self._target = f"{model.metadata['targetPrefix']}.{OPERATION}"
        output_shape = model.operation_model(OPERATION).output_shape
        if output_shape is None:  # pragma: no cover - SendMessageBatch has an output in every model
            raise ValueError(f"the SQS model has no {OPERATION} output")
        self._output_shape = output_shape
        self._parser = create_parser(model.protocol)
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._proxy: URL | None = None
        self._proxy_auth: aiohttp.BasicAuth | None = None

    @property
    def endpoint_url(self) -> str:
        return self._url

    async def start(self) -> None:
        if self._credentials is None:
            raise NoCredentialsError()
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                ssl=_ssl_context() if self._url.startswith("https:") else False,
            )
            # HTTPS_PROXY / NO_PROXY are honoured, as botocore honours them, but read once here:
            # aiohttp's trust_env would also look for a ~/.netrc file on every request.
            try:
                self._proxy, self._proxy_auth = get_env_proxy_for_url(URL(self._url))
            except LookupError:
                self._proxy, self._proxy_auth = None, None
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar()
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send_message_batch(
        self, queue_url: str, entries: Sequence[SendMessageBatchRequestEntryTypeDef]
    ) -> SendMessageBatchResultTypeDef:
        """One SendMessageBatch; returns what boto3 would return, raises what boto3 would raise."""
        if self._session is None:
            raise RuntimeError("SqsHttpTransport.start() was not called")
        body = dumps_ascii_bytes({"QueueUrl": queue_url, "Entries": entries})
        headers = await self._signed_headers(body)
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, proxy=self._proxy, proxy_auth=self._proxy_auth
            ) as response:
                payload = await response.read()
                status = response.status
                response_headers = response.headers
        except TimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=self._url, error=exc) from exc
        except aiohttp.ClientConnectorError as exc:
            raise EndpointConnectionError(endpoint_url=self._url, error=exc) from exc
        except aiohttp.ClientError as exc:  # reset, disconnected, payload broken mid-response
            raise ConnectionClosedError(endpoint_url=self._url, error=exc) from exc
        parsed = self._parser.parse(
            {"status_code": status, "headers": response_headers, "body": payload}, self._output_shape
        )
        if status >= 300:
            raise ClientError(parsed, OPERATION)
        return cast("SendMessageBatchResultTypeDef", parsed)

    async def _signed_headers(self, body: bytes) -> dict[str, str]:
        credentials = self._credentials
        if credentials is None:
            raise NoCredentialsError()
        frozen: ReadOnlyCredentials
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            # A refresh is a blocking HTTP call (the ECS credentials endpoint): not on the loop.
            loop = asyncio.get_running_loop()
            frozen = await loop.run_in_executor(None, credentials.get_frozen_credentials)
        else:
            frozen = credentials.get_frozen_credentials()
        request = AWSRequest(
            method="POST",
            url=self._url,
            data=body,
            headers={"Content-Type": _CONTENT_TYPE, "X-Amz-Target": self._target},
        )
        SigV4Auth(cast(Any, frozen), self._signing_name, self._region).add_auth(request)
        return dict(request.headers.items())
