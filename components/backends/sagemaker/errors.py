"""SageMaker failures turned into errors a person can act on (``components.core.errors``).

The AWS SDK reports failures at three levels: modeled service errors (``InputValidationError``,
``ModelError``, ...), unmodeled HTTP errors (403 from AWS's auth layer, which the SDK only
names in its message), and transport errors from awscrt (refused, TLS, DNS), wrapped by the
SDK. This module looks through all three and says what went wrong and what to do, without a
traceback and without ever echoing credentials.
"""

from __future__ import annotations

import re

from aws_sdk_sagemaker_runtime_http2.models import (
    InputValidationError,
    InternalServerError,
    InternalStreamFailure,
    ModelError,
    ModelStreamError,
    ServiceUnavailableError,
)
from smithy_core.exceptions import CallError, ClientTimeoutError

from components.core.errors import (
    AuthError,
    BackendError,
    BackendUnavailable,
    Busy,
    ConnectionLost,
    InvalidOption,
    NotFound,
    RemoteError,
    StreamExpired,
    event_error,
)
from components.core.protocol import ErrorEvent

_ERROR_ID = re.compile(r"id: [\w.]+#(\w+)")

NO_CREDENTIALS = (
    "No AWS credentials found: set AWS_PROFILE (after `aws configure` or `aws sso login`), "
    "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run on an instance with an IAM role."
)

_AUTH_TYPES = frozenset(
    {
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "AccessDeniedException",
        "AccessDenied",
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
    }
)

_CRT_UNREACHABLE = {
    "AWS_IO_SOCKET_CONNECTION_REFUSED": "the connection was refused",
    "AWS_IO_SOCKET_TIMEOUT": "the connection timed out",
    "AWS_IO_SOCKET_NO_ROUTE_TO_HOST": "there is no route to the host",
    "AWS_IO_SOCKET_NETWORK_DOWN": "the network is down",
    "AWS_IO_DNS_INVALID_NAME": "the host name does not resolve",
    "AWS_IO_DNS_QUERY_FAILED": "the host name does not resolve",
    "AWS_IO_DNS_NO_ADDRESS_FOR_HOST": "the host name does not resolve",
    "AWS_IO_SOCKET_CLOSED": "the connection was closed",
    "AWS_ERROR_HTTP_CONNECTION_CLOSED": "the connection was closed",
    "AWS_ERROR_HTTP_SERVER_CLOSED": "the server closed the connection",
}


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts (the SDK wraps transport errors)."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        chain.append(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return chain


def _status(exc: BaseException) -> int | None:
    metadata = getattr(exc, "response_metadata", None)
    return getattr(metadata, "http_status_code", None)


def auth_error(error_type: str | None, message: str, *, endpoint: str, region: str) -> AuthError:
    """An :class:`AuthError` whose message names the likely cause and the fix."""
    if error_type == "ExpiredTokenException" or "expired" in message.lower():
        return AuthError(
            "AWS credentials have expired: refresh them (for example `aws sso login`) and retry."
        )
    if error_type in ("UnrecognizedClientException", "InvalidClientTokenId"):
        return AuthError(
            "AWS rejected the access key (unknown or from another partition): check "
            "AWS_PROFILE / AWS_ACCESS_KEY_ID and AWS_SESSION_TOKEN."
        )
    if error_type in ("InvalidSignatureException", "SignatureDoesNotMatch"):
        return AuthError(
            "AWS rejected the request signature: the secret access key does not match the "
            f"access key, or this machine's clock is off ({message})"
        )
    if error_type in ("AccessDeniedException", "AccessDenied"):
        return AuthError(
            f"Access denied to SageMaker endpoint '{endpoint}' in {region}: the identity needs "
            "sagemaker:InvokeEndpoint on this endpoint's ARN."
        )
    if error_type == "MissingAuthenticationTokenException":
        return AuthError("The request was not signed: " + NO_CREDENTIALS)
    return AuthError(f"AWS refused the credentials for SageMaker endpoint '{endpoint}': {message}")


def map_error(exc: BaseException, *, endpoint: str, region: str, url: str) -> BackendError:
    """Translate an SDK, awscrt or botocore failure into a :class:`BackendError`."""
    if isinstance(exc, BackendError):
        return exc
    where = f"SageMaker endpoint '{endpoint}' in {region}"
    for cause in _causes(exc):
        if isinstance(cause, BackendError):
            return cause
        match cause:
            case InputValidationError():
                msg = cause.message or str(cause)
                if "not found" in msg.lower():
                    return NotFound(
                        f"{where} was not found: check the endpoint name and region "
                        f"(`python -m components.aws.deploy status --name {endpoint}`). ({msg})"
                    )
                if "service" in msg.lower() or "status" in msg.lower():
                    return BackendUnavailable(f"{where} is not in service yet: {msg}")
                return RemoteError(f"SageMaker rejected the request to {where}: {msg}")
            case ModelError():
                detail = cause.original_message or cause.message or ""
                status = (
                    f" (status {cause.original_status_code})" if cause.original_status_code else ""
                )
                logs = f" Logs: {cause.log_stream_arn}" if cause.log_stream_arn else ""
                return RemoteError(
                    f"The model container behind {where} failed{status}: {detail}{logs}".strip()
                )
            case ServiceUnavailableError():
                return Busy(
                    f"{where} is unavailable or throttled (503); try again shortly. "
                    f"({cause.message or 'no detail'})"
                )
            case InternalServerError():
                return BackendUnavailable(
                    f"SageMaker had an internal error serving {where}; try again. "
                    f"({cause.message or 'no detail'})"
                )
            case ModelStreamError():
                return stream_error(cause.error_code, cause.message, where=where)
            case InternalStreamFailure():
                return ConnectionLost(
                    f"The stream to {where} failed inside SageMaker; try again. "
                    f"({cause.message or 'no detail'})"
                )
            case ClientTimeoutError():
                return BackendUnavailable(f"Timed out connecting to {url} for {where}.")
            case CallError():
                status = _status(cause)
                found = _ERROR_ID.search(str(cause))
                error_type = found.group(1) if found else None
                if status in (401, 403) or (status is None and error_type in _AUTH_TYPES):
                    return auth_error(
                        error_type, cause.message or str(cause), endpoint=endpoint, region=region
                    )
                if status == 404:
                    return NotFound(
                        f"{url} has no SageMaker runtime API (HTTP 404): check "
                        "SAGEMAKER_ENDPOINT_URL / --endpoint-url."
                    )
                if status == 429:
                    return Busy(f"{where} is throttling requests (429); try again shortly.")
                if status is not None and status >= 500:
                    return BackendUnavailable(f"SageMaker answered HTTP {status} for {where}.")
        name = getattr(cause, "name", None)
        if isinstance(name, str) and name.startswith("AWS_"):
            if name in _CRT_UNREACHABLE:
                return BackendUnavailable(
                    f"Cannot reach {url} for {where}: {_CRT_UNREACHABLE[name]}."
                )
            if "TLS" in name or "X509" in name or "PKI" in name:
                return BackendUnavailable(
                    f"TLS with {url} failed ({name}): for a private front, set AWS_CA_BUNDLE "
                    "to its CA certificate."
                )
            return BackendUnavailable(f"Cannot talk to {url} for {where} ({name}).")
        if "HTTP/2 could not be negotiated" in str(cause):
            return BackendUnavailable(
                f"{url} does not speak HTTP/2; SageMaker's bidirectional stream needs it."
            )
        if type(cause).__module__.startswith("botocore"):
            return AuthError(f"Could not get AWS credentials: {cause}")
    return ConnectionLost(f"The stream to {where} failed: {type(exc).__name__}: {exc}")


def stream_error(code: str | None, reason: str | None, *, where: str) -> BackendError:
    """A ``ModelStreamError`` (the container closed the stream) as an actionable error.

    ``code`` is the container's WebSocket close code, or one of SageMaker's own codes.
    """
    detail = f"close {code}: {reason}" if reason else f"close {code}"
    if code in ("1000", "1001", "StreamBroken", "1006"):
        return ConnectionLost(
            f"The container behind {where} closed the stream before the transcript was "
            f"complete ({detail})."
        )
    if code == "1013":
        return Busy(f"The container behind {where} is at capacity ({detail}); try again later.")
    if code == "ModelInvocationTimeExceeded":
        return StreamExpired(
            f"The stream to {where} reached SageMaker's maximum stream duration ({detail})."
        )
    return RemoteError(f"The model container behind {where} ended the stream ({detail}).")


def session_error(event: ErrorEvent, *, where: str) -> BackendError | None:
    """The exception for an ``error`` event that ends the session; None for one that does not.

    The container's engine server speaks the Realtime protocol, so these are its error codes;
    the messages point at what can be changed on the SageMaker side.
    """
    wording = {
        NotFound: f"{{message}}: {where} serves another model name; set SAGEMAKER_MODEL (or "
        "--model) to the container's served model name.",
        Busy: f"{where} is at its session limit ({{message}}); try again later.",
        BackendUnavailable: f"The container behind {where} lost its engine: {{message}}",
        InvalidOption: f"{where} refused the session options: {{message}}",
        RemoteError: f"The engine behind {where} could not transcribe: {{message}}",
    }
    return event_error(event.code, event.error, wording, f"{where} closed the session: {{message}}")
