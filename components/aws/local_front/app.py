"""The router as an ASGI app: one HTTP/2 request per stream, relayed to the container's
WebSocket frame by frame."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from components.aws.local_front.constants import (
    ACCOUNT_ID,
    CONTAINER_CLOSE_TIMEOUT,
    CONTAINER_OPEN_TIMEOUT,
    DEFAULT_INVOCATION_PATH,
    DEFAULT_MAX_STREAM_SECONDS,
    PING_TIMEOUT,
    PRODUCTION_VARIANT,
    REQUEST_END_TIMEOUT,
    ROUTE,
)
from components.aws.local_front.errors import ServiceError
from components.aws.local_front.eventstream import (
    EventStreamBuffer,
    decode_event,
    model_stream_error_event,
    payload_part_event,
    stream_failure_event,
)
from components.aws.local_front.sigv4 import (
    ChunkChain,
    ChunkSignatureError,
    Credentials,
    verify_request,
)

log = logging.getLogger("components.aws.local_front")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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
                await quietly(outbound)
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
                await quietly(outbound)
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
                await quietly(task)
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


async def quietly(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]},{text}" if key in out else text
    return out
