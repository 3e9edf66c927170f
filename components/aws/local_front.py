"""A local stand-in for SageMaker AI's router in front of one bidirectional-streaming container.

AWS's own service cannot run on this machine, so this module does, for one container, what the
SageMaker runtime does for ``InvokeEndpointWithBidirectionalStream``: it lets the real AWS SDK
(``aws-sdk-sagemaker-runtime-http2`` over awscrt, HTTP/2 + TLS) talk to the container exactly as
it would on AWS, so the whole path — client, event-stream framing, SigV4, the container's
WebSocket — can be tried and tested on one machine before anything is deployed.

What it does, as the service does:

* ``POST /endpoints/{name}/invocations-bidirectional-stream`` over HTTP/2 with TLS (Hypercorn).
* SigV4: the request's ``Authorization`` signature is checked against the configured
  credentials, and so is every event's ``:chunk-signature`` in the chain; failures answer 403
  with the service's error shape, so the SDK raises what it raises on AWS.
* An unknown endpoint answers 400 ``InputValidationError``; an unhealthy container (``/ping``)
  503 ``ServiceUnavailableError``; a container that refuses the WebSocket 424 ``ModelError``.
* Each ``PayloadPart`` becomes exactly one WebSocket frame to the container's
  ``/invocations-bidirectional-stream`` (or ``X-Amzn-SageMaker-Model-Invocation-Path``):
  UTF8 -> text, BINARY/absent -> binary, PARTIAL...COMPLETE -> one fragmented message.
  Frames from the container come back the same way, one ``PayloadPart`` each.
* A close from the container reaches the client as a ``ModelStreamError`` event carrying the
  close code (``ErrorCode``) and reason (``Message``).

Run ``python -m components.aws.local_front --container http://127.0.0.1:8080`` and it prints how
to point the client at it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import signal
import socket
import struct
import sys
import tempfile
import uuid
from binascii import hexlify
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import websockets
from smithy_aws_event_stream.events import Event, EventMessage
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

log = logging.getLogger("components.aws.local_front")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTE = re.compile(r"^/endpoints/(?P<name>[^/]+)/invocations-bidirectional-stream$")
DEFAULT_INVOCATION_PATH = "invocations-bidirectional-stream"
ACCOUNT_ID = "000000000000"
"""Account id quoted in error messages (the stand-in has no accounts)."""

SIGV4_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_CLOCK_SKEW = datetime.timedelta(minutes=5)
EVENT_STREAM_HASH = "STREAMING-AWS4-HMAC-SHA256-EVENTS"
PING_TIMEOUT = 2.0
DEFAULT_MAX_STREAM_SECONDS = 1800.0
"""SageMaker ends a bidirectional stream after 30 minutes (SAGEMAKER.md, "Long sessions")."""
"""SageMaker expects ``/ping`` to answer within 2 s."""

CONTAINER_OPEN_TIMEOUT = 5.0
CONTAINER_CLOSE_TIMEOUT = 5.0
"""How long the container may take to close its socket after the client's input ended."""
REQUEST_END_TIMEOUT = 10.0
"""How long a finished stream waits for the client's request to end before ending anyway."""
MAX_EVENT_BYTES = 16 * 1024 * 1024 + 128 * 1024 + 16
"""Largest event-stream message: 16 MiB payload + 128 KiB headers + framing."""

PRODUCTION_VARIANT = "AllTraffic"


# --------------------------------------------------------------------------- errors


MODELED_ERRORS = frozenset(
    {"InputValidationError", "ModelError", "ServiceUnavailableError", "InternalServerError"}
)
"""Errors of the service's model (the SDK raises its own exception class for each)."""


class ServiceError(Exception):
    """An error answered as an HTTP response in the service's JSON error shape.

    ``error_type`` goes into ``x-amzn-errortype`` (the SDK maps modeled names such as
    ``InputValidationError`` to its exception classes); ``body`` is the JSON document.
    """

    def __init__(
        self, status: int, error_type: str, message: str, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.extra = extra or {}

    def body(self) -> bytes:
        # The service's modeled errors carry "Message"; AWS's auth layer answers "message".
        key = "Message" if self.error_type in MODELED_ERRORS else "message"
        return json.dumps({key: self.message, **self.extra}).encode()


def _auth_error(error_type: str, message: str) -> ServiceError:
    return ServiceError(403, error_type, message)


SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


# --------------------------------------------------------------------------- SigV4


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key pair the front accepts (its whole IAM)."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def _hmac(key: bytes, msg: str | bytes) -> bytes:
    return hmac.new(key, msg.encode() if isinstance(msg, str) else msg, hashlib.sha256).digest()


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    """SigV4 signing key for one day, region and service."""
    k = _hmac(f"AWS4{secret}".encode(), day)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]{64})$"
)


@dataclass(slots=True)
class SignedRequest:
    """What a verified request leaves for verifying its event chain."""

    credentials: Credentials
    region: str
    service: str
    seed_signature: str


def canonical_request(
    method: str,
    raw_path: str,
    query: str,
    headers: dict[str, str],
    signed_headers: list[str],
    payload_hash: str,
) -> str:
    """The SigV4 canonical request, built the way the AWS SDK signers build it.

    The path is URI-encoded once more (AWS services other than S3 sign the encoded path), the
    query pairs are encoded and sorted, header values have their whitespace collapsed.
    """
    path = quote(raw_path or "/", safe="/")
    pairs = sorted(
        (quote(k, safe=""), quote(v, safe="")) for k, v in parse_qsl(query, keep_blank_values=True)
    )
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    canonical_headers = "".join(
        f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_headers
    )
    return "\n".join(
        [
            method.upper(),
            path,
            canonical_query,
            canonical_headers,
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def verify_request(
    method: str,
    raw_path: str,
    query: str,
    headers: dict[str, str],
    accepted: dict[str, Credentials],
    *,
    now: datetime.datetime | None = None,
) -> SignedRequest:
    """Check a request's SigV4 ``Authorization`` header; raise :class:`ServiceError` (403).

    ``headers`` maps lower-case names to values. Any region is accepted (the client signs for
    the region it was configured with); the service must be ``sagemaker``.
    """
    auth = headers.get("authorization")
    if not auth:
        raise _auth_error("MissingAuthenticationTokenException", "Missing Authentication Token")
    m = _AUTH.match(auth.strip())
    if m is None:
        raise _auth_error(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature'.",
        )
    cred_parts = m["cred"].split("/")
    if len(cred_parts) != 5 or cred_parts[4] != "aws4_request":
        raise _auth_error("IncompleteSignatureException", f"Malformed credential: {m['cred']}")
    access_key, day, region, service, _ = cred_parts
    creds = accepted.get(access_key)
    if creds is None:
        raise _auth_error(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if service != "sagemaker":
        raise _auth_error(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: 'sagemaker', not '{service}'.",
        )
    token = headers.get("x-amz-security-token")
    if token != creds.session_token:
        raise _auth_error(
            "UnrecognizedClientException",
            "The security token included in the request is invalid."
            + (" (unset AWS_SESSION_TOKEN for this local front)" if token else ""),
        )
    amz_date = headers.get("x-amz-date", "")
    try:
        when = datetime.datetime.strptime(amz_date, SIGV4_TIME_FORMAT).replace(tzinfo=datetime.UTC)
    except ValueError:
        raise _auth_error(
            "IncompleteSignatureException", "X-Amz-Date is missing or malformed."
        ) from None
    now = now or datetime.datetime.now(datetime.UTC)
    if abs(now - when) > MAX_CLOCK_SKEW:
        raise _auth_error(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier or later than "
            f"{now.strftime(SIGV4_TIME_FORMAT)} by more than 5 minutes (check the clock).",
        )
    if amz_date[:8] != day:
        raise _auth_error("InvalidSignatureException", "Credential date does not match X-Amz-Date.")
    signed = m["signed"].split(";")
    if "host" not in signed:
        raise _auth_error("InvalidSignatureException", "'Host' must be a signed header.")
    payload_hash = headers.get("x-amz-content-sha256")
    if not payload_hash:
        raise _auth_error("InvalidSignatureException", "Missing x-amz-content-sha256.")
    creq = canonical_request(method, raw_path, query, headers, signed, payload_hash)
    scope = f"{day}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()]
    )
    expected = hmac.new(
        signing_key(creds.secret_key, day, region, service),
        string_to_sign.encode(),
        hashlib.sha256,
    ).hexdigest()
    if not hmac.compare_digest(expected, m["sig"]):
        raise _auth_error("InvalidSignatureException", SIGNATURE_MISMATCH)
    return SignedRequest(creds, region, service, m["sig"])


class ChunkSignatureError(Exception):
    """An event whose ``:chunk-signature`` does not continue the request's signature chain."""


class ChunkChain:
    """Verifies the chained ``:chunk-signature`` of each signed envelope, in order."""

    def __init__(self, signed: SignedRequest) -> None:
        self._signed = signed
        self._prior = signed.seed_signature
        self._keys: dict[str, bytes] = {}

    def verify(self, raw_event: bytes, headers: dict[str, Any], payload: bytes) -> None:
        signature = headers.get(":chunk-signature")
        date_header = _raw_header(raw_event, b":date")
        if not isinstance(signature, bytes) or date_header is None or date_header[6] != 8:
            raise ChunkSignatureError("event without :date and :chunk-signature headers")
        (millis,) = struct.unpack("!q", date_header[7:15])
        stamp = datetime.datetime.fromtimestamp(millis // 1000, datetime.UTC)
        timestamp = stamp.strftime(SIGV4_TIME_FORMAT)
        day = timestamp[:8]
        key = self._keys.get(day)
        if key is None:
            s = self._signed
            key = self._keys[day] = signing_key(s.credentials.secret_key, day, s.region, s.service)
        string_to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                timestamp,
                f"{day}/{self._signed.region}/{self._signed.service}/aws4_request",
                self._prior,
                hashlib.sha256(date_header).hexdigest(),
                hashlib.sha256(payload).hexdigest(),
            ]
        )
        expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            raise ChunkSignatureError("event signature does not match the signature chain")
        self._prior = hexlify(signature).decode()


_FIXED_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


def _raw_header(raw_event: bytes, name: bytes) -> bytes | None:
    """The encoded bytes of one header of an encoded event message (name, type and value).

    Signatures cover the exact bytes that were signed; re-encoding a decoded timestamp through a
    float could be off by a millisecond, so the original bytes are used.
    """
    (headers_length,) = struct.unpack_from("!I", raw_event, 4)
    pos, end = 12, 12 + headers_length
    while pos < end:
        start = pos
        name_len = raw_event[pos]
        key = raw_event[pos + 1 : pos + 1 + name_len]
        pos += 1 + name_len
        kind = raw_event[pos]
        pos += 1
        if kind in (6, 7):
            (value_len,) = struct.unpack_from("!H", raw_event, pos)
            pos += 2 + value_len
        else:
            pos += _FIXED_SIZES.get(kind, 0)
        if key == name:
            return raw_event[start:pos]
    return None


# --------------------------------------------------------------------------- event stream


class EventStreamBuffer:
    """Splits a byte stream into complete event-stream messages (sans-I/O)."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_event_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the raw encoded messages now complete."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 12:
            (total,) = struct.unpack_from("!I", self._buf, 0)
            if total < 16 or total > self._max:
                raise ValueError(f"invalid event-stream message length {total}")
            if len(self._buf) < total:
                break
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


def decode_event(raw: bytes) -> Event:
    """Decode one complete event-stream message (checks both CRCs)."""
    event = Event.decode(io.BytesIO(raw))
    if event is None:
        raise ValueError("empty event-stream message")
    return event


def payload_part_event(data: bytes, *, text: bool, completion: str | None = None) -> bytes:
    """Encode one ``PayloadPart`` response event, as the service sends it."""
    headers: dict[str, Any] = {
        ":message-type": "event",
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        "DataType": "UTF8" if text else "BINARY",
    }
    if completion is not None:
        headers["CompletionState"] = completion
    return EventMessage(headers=headers, payload=data).encode()


def model_stream_error_event(code: str, message: str) -> bytes:
    """Encode the ``ModelStreamError`` exception event sent when the container closes."""
    return EventMessage(
        headers={
            ":message-type": "exception",
            ":exception-type": "ModelStreamError",
            ":content-type": "application/json",
        },
        payload=json.dumps({"Message": message, "ErrorCode": code}).encode(),
    ).encode()


def stream_failure_event(error_code: str, message: str) -> bytes:
    """Encode an unmodeled error event (used when an event's signature is wrong)."""
    return EventMessage(
        headers={
            ":message-type": "error",
            ":error-code": error_code,
            ":error-message": message,
        }
    ).encode()


# --------------------------------------------------------------------------- the router


class LocalSageMakerApp:
    """The ASGI application: SageMaker's bidirectional-stream router for one container."""

    def __init__(
        self,
        container_url: str,
        endpoints: list[str],
        credentials: list[Credentials],
        *,
        max_stream_seconds: float = DEFAULT_MAX_STREAM_SECONDS,
    ) -> None:
        if max_stream_seconds <= 0:
            raise ValueError(f"max_stream_seconds must be positive, got {max_stream_seconds!r}")
        self.max_stream_seconds = max_stream_seconds
        parts = urlsplit(container_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"container URL must be http(s)://host:port, got {container_url!r}")
        self.container_url = container_url.rstrip("/")
        self.ws_base = ("wss" if parts.scheme == "https" else "ws") + "://" + parts.netloc
        self.endpoints = set(endpoints)
        self.credentials = {c.access_key: c for c in credentials}
        self._http: httpx.AsyncClient | None = None
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http_request(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------------ request handling

    async def _http_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = str(uuid.uuid4())
        logger = logging.LoggerAdapter(log, {"request_id": request_id})
        path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
        try:
            if scope["method"] == "GET" and scope["path"] == "/ping":
                await self._respond(send, 200, b"", request_id, content_type="text/plain")
                return
            match = ROUTE.match(scope["path"])
            if match is None or scope["method"] != "POST":
                raise ServiceError(
                    404, "UnknownOperationException", f"No operation at {scope['path']}"
                )
            headers = _headers(scope)
            signed = verify_request(
                scope["method"],
                path,
                scope.get("query_string", b"").decode("latin-1"),
                headers,
                self.credentials,
            )
            name = match["name"]
            if name not in self.endpoints:
                raise ServiceError(
                    400,
                    "InputValidationError",
                    f"Endpoint {name} of account {ACCOUNT_ID} not found.",
                )
            target = self._container_target(headers)
            await self._check_health()
            ws = await self._connect_container(target)
        except ServiceError as exc:
            logger.info(
                "[%s] %s %s -> %s %s",
                request_id,
                scope["method"],
                scope["path"],
                exc.status,
                exc.error_type,
            )
            await self._respond_error(send, exc, request_id)
            return
        self.active += 1
        logger.info("[%s] stream opened to %s", request_id, target)
        try:
            await self._stream(ws, ChunkChain(signed), receive, send, request_id, logger)
        finally:
            self.active -= 1
            await ws.close()
            logger.info("[%s] stream closed", request_id)

    def _container_target(self, headers: dict[str, str]) -> str:
        path = headers.get("x-amzn-sagemaker-model-invocation-path", DEFAULT_INVOCATION_PATH)
        path = path.lstrip("/")
        if not re.fullmatch(r"[A-Za-z0-9._~\-/]{1,512}", path) or ".." in path.split("/"):
            raise ServiceError(
                400, "InputValidationError", f"Invalid model invocation path: {path!r}"
            )
        query = headers.get("x-amzn-sagemaker-model-query-string")
        return f"{self.ws_base}/{path}" + (f"?{query}" if query else "")

    async def _check_health(self) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=PING_TIMEOUT, trust_env=False)
        try:
            r = await self._http.get(f"{self.container_url}/ping")
        except httpx.HTTPError as exc:
            raise ServiceError(
                503,
                "ServiceUnavailableError",
                f"The endpoint's container did not answer /ping: {type(exc).__name__}",
            ) from None
        if r.status_code != 200:
            raise ServiceError(
                503,
                "ServiceUnavailableError",
                f"The endpoint's container is unhealthy: /ping answered {r.status_code}",
            )

    async def _connect_container(self, target: str) -> ClientConnection:
        try:
            return await websockets.connect(
                target,
                open_timeout=CONTAINER_OPEN_TIMEOUT,
                compression=None,
                proxy=None,
                max_size=None,
                ping_interval=60,
                ping_timeout=300,
                user_agent_header=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode("utf-8", "replace")[:512] if exc.response.body else ""
            raise ServiceError(
                424,
                "ModelError",
                f"Received {'client' if status < 500 else 'server'} error ({status}) from "
                f'primary with message "{body}". The container refused the WebSocket.',
                {"OriginalStatusCode": status, "OriginalMessage": body},
            ) from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ServiceError(
                424,
                "ModelError",
                f"Could not open the container's WebSocket at {target}: {type(exc).__name__}",
            ) from None

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        request_id: str,
        *,
        content_type: str = "application/json",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [
            (b"content-type", content_type.encode()),
            (b"x-amzn-requestid", request_id.encode()),
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _respond_error(self, send: Send, exc: ServiceError, request_id: str) -> None:
        await self._respond(
            send,
            exc.status,
            exc.body(),
            request_id,
            extra=[(b"x-amzn-errortype", exc.error_type.encode())],
        )

    async def _stream(
        self,
        ws: ClientConnection,
        chain: ChunkChain,
        receive: Receive,
        send: Send,
        request_id: str,
        logger: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/vnd.amazon.eventstream"),
                    (b"x-amzn-requestid", request_id.encode()),
                    (b"x-amzn-invoked-production-variant", PRODUCTION_VARIANT.encode()),
                ],
            }
        )
        send_lock = asyncio.Lock()

        async def send_body(data: bytes, more: bool = True) -> None:
            async with send_lock:
                await send({"type": "http.response.body", "body": data, "more_body": more})

        input_ended = asyncio.Event()
        inbound = asyncio.create_task(
            self._client_to_container(ws, chain, receive, logger, input_ended)
        )
        outbound = asyncio.create_task(self._container_to_client(ws, send_body))
        ended = asyncio.create_task(input_ended.wait())
        expired = asyncio.create_task(asyncio.sleep(self.max_stream_seconds))
        try:
            await asyncio.wait(
                {inbound, outbound, ended, expired}, return_when=asyncio.FIRST_COMPLETED
            )
            if expired.done() and not outbound.done():
                # SageMaker ends a stream at its maximum duration, whatever it is doing.
                logger.info("[%s] stream reached %g s: ended", request_id, self.max_stream_seconds)
                outbound.cancel()
                await _quietly(outbound)
                await ws.close(1000, "maximum stream duration")
                await send_body(
                    model_stream_error_event(
                        "ModelInvocationTimeExceeded",
                        f"The stream reached the maximum duration of {self.max_stream_seconds:g} s",
                    )
                )
                return
            failure = inbound.result() if inbound.done() else None
            if failure is not None:
                # A broken signature chain ends the stream as the service would.
                outbound.cancel()
                await _quietly(outbound)
                await send_body(stream_failure_event(*failure))
                return
            if not outbound.done():
                # The client ended its input (or went away): close the container's socket and
                # forward whatever it still sends until its close arrives.
                await ws.close(1000, "client closed the stream")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(outbound), CONTAINER_CLOSE_TIMEOUT)
            # The response ends once the request has ended too: a client's HTTP/2 stream that
            # is answered in full while it still sends is reset under it (awscrt then fails
            # its pending write).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(inbound), REQUEST_END_TIMEOUT)
        finally:
            for task in (inbound, outbound, ended, expired):
                task.cancel()
                await _quietly(task)
            with contextlib.suppress(Exception):
                await send_body(b"", False)

    async def _client_to_container(
        self,
        ws: ClientConnection,
        chain: ChunkChain,
        receive: Receive,
        logger: logging.LoggerAdapter[logging.Logger],
        input_ended: asyncio.Event,
    ) -> tuple[str, str] | None:
        """Forward the client's events until its request ends; return an error (code,
        message) that must end the stream, else None.

        After the signed empty event (the end of input) or the container's close, the rest of
        the request body is read and dropped, so that the request is complete before the
        response ends.
        """
        buffer = EventStreamBuffer()
        in_message = False  # inside a fragmented message (PARTIAL parts so far)
        forwarding = True
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                input_ended.set()
                return None
            if forwarding:
                try:
                    for raw in buffer.feed(message.get("body", b"")):
                        envelope = decode_event(raw)
                        payload = envelope.message.payload
                        chain.verify(raw, dict(envelope.message.headers), payload)
                        if not payload:  # the signed empty envelope: the end of input
                            forwarding = False
                            input_ended.set()
                            break
                        in_message = await _forward_part(ws, payload, in_message)
                except ChunkSignatureError as exc:
                    logger.warning("[%s] rejected event: %s", logger.extra["request_id"], exc)
                    return ("InvalidSignatureException", str(exc))
                except ValueError as exc:
                    logger.warning(
                        "[%s] malformed event stream from the client: %s",
                        logger.extra["request_id"],
                        exc,
                    )
                    return ("SerializationException", f"Malformed event stream: {exc}")
                except ConnectionClosed:
                    forwarding = False  # the container has gone; its close is on its way
            if not message.get("more_body", False):
                input_ended.set()
                return None

    async def _container_to_client(
        self, ws: ClientConnection, send_body: Callable[[bytes, bool], Awaitable[None]]
    ) -> None:
        try:
            while True:
                previous: str | bytes | None = None
                fragmented = False
                async for fragment in ws.recv_streaming():
                    if previous is not None:
                        fragmented = True
                        await send_body(_part(previous, "PARTIAL"), True)
                    previous = fragment
                if previous is not None:
                    await send_body(_part(previous, "COMPLETE" if fragmented else None), True)
        except ConnectionClosed as closed:
            rcvd = closed.rcvd
            code = str(rcvd.code) if rcvd is not None else "1006"
            reason = rcvd.reason if rcvd is not None else "the container's connection dropped"
            await send_body(model_stream_error_event(code, reason), True)


async def _forward_part(ws: ClientConnection, inner_raw: bytes, in_message: bool) -> bool:
    """Send one ``PayloadPart`` as exactly one WebSocket frame; return whether a fragmented
    message is still open (its last part was ``PARTIAL``).

    ``PARTIAL`` parts open or continue a message without FIN, the next ``COMPLETE`` (or
    unmarked) part ends it with FIN; the first part's ``DataType`` sets the message type. The
    frames are written through the connection's protocol object because ``send()`` with an
    iterable would add an empty final frame, and the contract is one frame per part.
    """
    inner = decode_event(inner_raw).message
    headers = inner.headers
    if headers.get(":event-type") != "PayloadPart":
        raise ValueError(f"unexpected event type {headers.get(':event-type')!r}")
    text = headers.get("DataType") == "UTF8"
    partial = headers.get("CompletionState") == "PARTIAL"
    data = inner.payload
    if not in_message and not partial:
        await ws.send(data, text=text)
        return False
    async with ws.send_context():
        if in_message:
            ws.protocol.send_continuation(data, fin=not partial)
        elif text:
            ws.protocol.send_text(data, fin=False)
        else:
            ws.protocol.send_binary(data, fin=False)
    return partial


def _part(data: str | bytes, completion: str | None) -> bytes:
    if isinstance(data, str):
        return payload_part_event(data.encode(), text=True, completion=completion)
    return payload_part_event(data, text=False, completion=completion)


async def _quietly(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]},{text}" if key in out else text
    return out


# --------------------------------------------------------------------------- serving


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The generated local CA (to trust) and the server's certificate chain + key."""

    directory: Path
    ca_cert: Path
    server_pem: Path


def make_tls_files(directory: Path) -> TLSFiles:
    """Generate a throwaway CA and a certificate for 127.0.0.1 / localhost (trustme)."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    files = TLSFiles(directory, directory / "ca.pem", directory / "server.pem")
    ca.cert_pem.write_to_path(str(files.ca_cert))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files.server_pem))
    return files


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port`` 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # accepted sockets inherit this one's protocol (Nagle would hold small frames ~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def tolerate_request_data_after_response() -> None:
    """Make Hypercorn ignore request DATA that arrives after its response has ended.

    HTTP/2 lets a server answer in full before the request body ends (RFC 9113 8.1): an error
    answered at once, or a stream that ends when the container closes, while the client is
    still sending. Hypercorn 0.18 forgets the stream when its response ends and then fails on
    the next DATA frame for it (``KeyError`` in ``H2Protocol._handle_events``), tearing down the
    whole connection and every other stream multiplexed on it. Such frames are acknowledged
    for flow control and dropped instead, which is what the RFC expects of a server.
    """
    import h2.events
    from hypercorn.protocol.h2 import H2Protocol

    original = H2Protocol._handle_events
    if getattr(original, "__local_sagemaker__", False):
        return

    async def handle_events(self: H2Protocol, events: list[h2.events.Event]) -> None:
        # One event at a time: a stream only exists once its RequestReceived is handled, and
        # its first DATA often arrives in the same batch.
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
                continue
            await original(self, [event])

    handle_events.__local_sagemaker__ = True  # type: ignore[attr-defined]
    H2Protocol._handle_events = handle_events  # type: ignore[method-assign]


class LocalSageMaker:
    """Runs the front in the current event loop (``async with``), for tests and benchmarks.

    Attributes after entering: ``endpoint_url`` (``https://127.0.0.1:PORT``), ``ca_bundle``.
    """

    def __init__(
        self,
        container_url: str,
        endpoints: list[str],
        credentials: list[Credentials],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_dir: Path | None = None,
        max_stream_seconds: float = DEFAULT_MAX_STREAM_SECONDS,
    ) -> None:
        self.app = LocalSageMakerApp(
            container_url, endpoints, credentials, max_stream_seconds=max_stream_seconds
        )
        self.host = host
        self.port = port
        self._tls_dir = tls_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.tls: TLSFiles | None = None
        self.endpoint_url = ""
        self.ca_bundle = ""

    async def __aenter__(self) -> LocalSageMaker:
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.config import Config, Sockets
        from hypercorn.utils import wrap_app

        tolerate_request_data_after_response()
        directory = self._tls_dir
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="local-sagemaker-")
            directory = Path(self._tmp.name)
        self.tls = make_tls_files(directory)
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = Config()
        config.certfile = str(self.tls.server_pem)
        config.keyfile = str(self.tls.server_pem)
        config.alpn_protocols = ["h2"]
        config.accesslog = None
        config.errorlog = logging.getLogger("components.aws.local_front.hypercorn")
        config.keep_alive_timeout = 75
        config.graceful_timeout = 2
        config.h2_max_concurrent_streams = 256
        self._stop.clear()
        self._task = asyncio.create_task(
            worker_serve(
                wrap_app(self.app, config.wsgi_max_body_size, "asgi"),
                config,
                sockets=Sockets([sock], [], []),
                shutdown_trigger=self._stop.wait,
            )
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.endpoint_url = f"https://{host}:{self.port}"
        self.ca_bundle = str(self.tls.ca_cert)
        # The socket already listens: connections queue in its backlog until Hypercorn accepts.
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                await _quietly(self._task)
            self._task = None
        await self.app.aclose()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# --------------------------------------------------------------------------- command line


def instructions(endpoint_url: str, ca_bundle: str, creds: Credentials, region: str) -> str:
    """The block printed at start: environment for the client and a command to paste."""
    lines = [
        f"export SAGEMAKER_ENDPOINT_URL={endpoint_url}",
        f"export AWS_CA_BUNDLE={ca_bundle}",
        f"export AWS_ACCESS_KEY_ID={creds.access_key}",
        f"export AWS_SECRET_ACCESS_KEY={creds.secret_key}",
    ]
    lines.append(
        f"export AWS_SESSION_TOKEN={creds.session_token}"
        if creds.session_token
        else "unset AWS_SESSION_TOKEN AWS_PROFILE"
    )
    lines.append(f"export AWS_REGION={region}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.aws.local_front",
        description="A local stand-in for SageMaker AI's bidirectional-stream router, "
        "in front of one container (HTTP/2 over TLS, SigV4, event-stream framing).",
    )
    parser.add_argument(
        "--container",
        default="http://127.0.0.1:8080",
        help="the container's base URL (default %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=8443,
        help="port to bind; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        help="endpoint name to accept (repeatable; default live-captions)",
    )
    parser.add_argument(
        "--access-key",
        default=os.environ.get("LOCAL_SAGEMAKER_ACCESS_KEY"),
        help="access key id to accept (default: a generated one)",
    )
    parser.add_argument(
        "--secret-key",
        default=os.environ.get("LOCAL_SAGEMAKER_SECRET_KEY"),
        help="secret access key to accept (default: a generated one)",
    )
    parser.add_argument("--session-token", default=None, help="session token to require")
    parser.add_argument(
        "--region",
        default="us-east-1",
        help="region to suggest to the client (any region is accepted)",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="where to write the CA and server certificate (default: a new temporary directory)",
    )
    parser.add_argument(
        "--max-stream-seconds",
        type=float,
        default=DEFAULT_MAX_STREAM_SECONDS,
        metavar="S",
        help="end each stream after S seconds, as SageMaker does after 30 minutes "
        "(default %(default)g)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.max_stream_seconds <= 0:
        parser.error("--max-stream-seconds must be positive")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    endpoints = args.endpoint or ["live-captions"]
    creds = Credentials(
        access_key=args.access_key or "AKIALOCAL" + secrets.token_hex(6).upper(),
        secret_key=args.secret_key or secrets.token_urlsafe(30),
        session_token=args.session_token,
    )
    tls_dir = args.tls_dir or Path(tempfile.mkdtemp(prefix="local-sagemaker-"))
    front = LocalSageMaker(
        args.container,
        endpoints,
        [creds],
        host=args.host,
        port=args.port,
        tls_dir=tls_dir,
        max_stream_seconds=args.max_stream_seconds,
    )

    async def run() -> int:
        try:
            await front.__aenter__()
        except OSError as exc:
            print(
                f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        try:
            text = (
                f"Local SageMaker front (a stand-in for AWS's router) on {front.endpoint_url}\n"
                f"endpoints: {', '.join(endpoints)} -> container {args.container}\n"
                f"TLS files (CA to trust, server certificate): {tls_dir}\n\n"
                "Point the client at it:\n\n"
                + instructions(front.endpoint_url, front.ca_bundle, creds, args.region)
                + "\n\nThen, for example:\n\n"
                f"  python -m components transcribe FILE.wav --backend sagemaker "
                f"--endpoint {endpoints[0]}\n"
            )
            with contextlib.suppress(OSError):  # whoever started us may stop reading
                sys.stdout.write(text)
                sys.stdout.flush()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for name in ("SIGINT", "SIGTERM"):
                with contextlib.suppress(NotImplementedError, AttributeError):
                    loop.add_signal_handler(getattr(signal, name), stop.set)
            await stop.wait()
        finally:
            await front.__aexit__(None, None, None)
        return 0

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
