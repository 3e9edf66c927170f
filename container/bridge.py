"""SageMaker's bidirectional-streaming contract on :8080, relayed to a Realtime engine on :8081.

SageMaker AI turns each ``InvokeEndpointWithBidirectionalStream`` call into one WebSocket to the
container's ``/invocations-bidirectional-stream`` (each payload part one frame) and asks
``/ping`` whether the container is healthy. The engine — ``vllm serve`` or our own server —
speaks vLLM's ``/v1/realtime``. This bridge joins the two with as little work per message as
possible: one upstream WebSocket per client, frames forwarded as they are, no JSON parsing on
the text path.

What the bridge adds is meaning at the edges, because a SageMaker client only ever sees what
the container says: an ``error`` event (``components.core.protocol``) before every close the client
did not ask for, the upstream's own close code and reason passed through, 1013 "try again
later" when the bridge or the engine is full, 1011 when the engine is gone. A binary frame that
holds UTF-8 JSON (a SageMaker client that did not set ``DataType=UTF8``) is forwarded as text,
because vLLM reads text frames only; any other binary frame is answered with ``invalid_frame``.

``vllm serve`` 0.32 ignores ``language`` and ``prompt`` in ``session.update``. In front of it
(``BRIDGE_SESSION_OPTIONS=voxtral``, which the container sets for ``ENGINE=vllm``) the bridge
reads ``session.update`` frames, and only those, and answers what the engine cannot honour with
the same error events our server sends: an unknown or unsupported language, a prompt.

Run it with ``python -m container.bridge`` (``container/serve`` does, inside the image).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from components.core.env import read
from components.core.metrics import CONTENT_TYPE, Registry, gauge, render
from components.core.protocol import (
    ErrorCode,
    error_frame,
)
from container.config import BridgeConfig
from container.frames import (
    INVOCATION_PATH_HEADER,
    STREAM_PATH,
    STREAM_PATHS,
    binary_as_text,
    client_close_for,
    resolve_route,
    session_update_refusal,
    text_size,
    truncate_reason,
    upstream_close_for,
)

log = logging.getLogger("container.bridge")

BUSY_HTTP_STATUSES = frozenset({429, 503})
"""Upstream handshake refusals that mean "full, try again later" rather than "broken"."""


# --------------------------------------------------------------------------- health


class HealthProbe:
    """Asks the engine's ``/health`` with a hard deadline, so ``/ping`` never hangs."""

    def __init__(self, url: str, timeout: float, headers: Mapping[str, str]) -> None:
        self.url = url
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), trust_env=False, headers=dict(headers)
        )

    async def check(self) -> tuple[bool, str]:
        """``(healthy, one-line detail)``; never raises, never exceeds the deadline."""
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client.get(self.url)
        except TimeoutError:
            return False, f"engine /health did not answer within {self.timeout:g} s"
        except (httpx.HTTPError, OSError) as exc:
            return False, f"engine /health unreachable ({type(exc).__name__})"
        if response.status_code == 200:
            return True, "engine healthy"
        return False, f"engine /health answered {response.status_code}"

    async def get(self, url: str) -> httpx.Response | None:
        """GET another engine URL under the same deadline; ``None`` when it does not answer."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._client.get(url)
        except (TimeoutError, httpx.HTTPError, OSError):
            return None

    async def aclose(self) -> None:
        await self._client.aclose()


# --------------------------------------------------------------------------- the relay


@dataclass(slots=True)
class _Stats:
    """What one connection moved, for its single log line."""

    id: str
    route: str
    started: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    closed_by: str = "bridge"
    code: int | None = None
    reason: str = ""

    def end(self, closed_by: str, code: int | None, reason: str) -> None:
        self.closed_by, self.code, self.reason = closed_by, code, reason


class _UpstreamGone(Exception):
    """Sending to the upstream failed because it closed; its reader reports how."""


class Bridge:
    """One instance per process: the connection count, the health probe and the relay."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.active = 0
        self._probe: HealthProbe | None = None
        self.registry = r = Registry()
        self._streams = r.counter(
            "live_captions_bridge_streams",
            "Client streams, by who closed them (client, bridge, upstream)",
            ("closed_by",),
        )
        self._bytes = r.counter(
            "live_captions_bridge_bytes", "Bytes relayed (in: client to engine)", ("direction",)
        )
        self._refused = r.counter(
            "live_captions_bridge_refused", "Streams refused because the bridge was at its limit"
        )
        r.live(lambda: [gauge("live_captions_bridge_streams_active", "Streams open", self.active)])

    async def metrics(self) -> Response:
        """Prometheus text: streams open and closed, refusals, bytes relayed."""
        return Response(render(self.registry), media_type=CONTENT_TYPE)

    async def start(self) -> None:
        self._probe = HealthProbe(
            self.config.health_url, self.config.ping_timeout, self.config.upstream_headers()
        )
        log.info(
            "bridge ready: upstream %s, health %s, max %d connections, max message %d bytes, "
            "idle timeout %s",
            self.config.upstream_url,
            self.config.health_url,
            self.config.max_connections,
            self.config.max_message_bytes,
            f"{self.config.idle_timeout:g} s" if self.config.idle_timeout else "off",
        )

    async def stop(self) -> None:
        if self._probe is not None:
            await self._probe.aclose()
            self._probe = None

    # ------------------------------------------------------------------ HTTP

    async def ping(self) -> JSONResponse:
        """SageMaker's health check: 200 only while the engine's ``/health`` answers 200."""
        if self._probe is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        healthy, detail = await self._probe.check()
        if healthy:
            return JSONResponse({"status": "healthy"})
        return JSONResponse({"status": "unhealthy", "detail": detail}, status_code=503)

    async def models(self) -> Response:
        """The engine's ``/v1/models``, so a Realtime client pointed at the bridge finds the
        served model name the same way it does on the engine itself."""
        response = None
        if self._probe is not None:
            url = urlunsplit(urlsplit(self.config.health_url)._replace(path="/v1/models"))
            response = await self._probe.get(url)
        if response is None:
            return JSONResponse({"error": "engine not reachable"}, status_code=503)
        return Response(
            response.content,
            status_code=response.status_code,
            media_type=response.headers.get("content-type", "application/json"),
        )

    # ------------------------------------------------------------------ WebSocket

    async def handle(self, websocket: WebSocket) -> None:
        """One client stream, from accept to the last byte, always logged once."""
        conn_id = f"conn-{uuid.uuid4().hex[:12]}"
        route = resolve_route(websocket.url.path, websocket.headers)
        stats = _Stats(id=conn_id, route=route or websocket.url.path)
        try:
            # SageMaker wants the socket accepted at once; the engine is reached afterwards.
            try:
                await websocket.accept()
            except (WebSocketDisconnect, RuntimeError, OSError):
                stats.end("client", 1006, "client left before the accept")
                return
            if route is None:
                wanted = websocket.headers.get(INVOCATION_PATH_HEADER) or websocket.url.path
                reason = truncate_reason(f"no stream route {wanted}; use {STREAM_PATH}")
                await self._close(websocket, stats, 1008, reason, closed_by="bridge")
            elif self.active >= self.config.max_connections:
                self._refused.inc()
                await self._refuse(
                    websocket,
                    stats,
                    ErrorCode.SERVER_BUSY,
                    f"the bridge is at its limit of {self.config.max_connections} streams",
                    1013,
                    "try again later",
                )
            else:
                self.active += 1
                try:
                    await self._relay(websocket, stats)
                finally:
                    self.active -= 1
        finally:
            elapsed = time.monotonic() - stats.started
            self._streams.labels(closed_by=stats.closed_by or "unknown").inc()
            self._bytes.labels(direction="in").inc(stats.bytes_in)
            self._bytes.labels(direction="out").inc(stats.bytes_out)
            log.info(
                "%s %s closed by %s: code=%s reason=%r in=%dB/%d frames out=%dB/%d frames %.1fs",
                conn_id,
                stats.route,
                stats.closed_by,
                stats.code,
                stats.reason,
                stats.bytes_in,
                stats.frames_in,
                stats.bytes_out,
                stats.frames_out,
                elapsed,
            )

    async def _connect(self, websocket: WebSocket, stats: _Stats) -> ClientConnection | None:
        """Open the upstream, or tell the client why not (error event, then close)."""
        url = self.config.upstream_url
        query = websocket.url.query
        if query:
            url = f"{url}{'&' if '?' in url else '?'}{query}"
        try:
            return await connect(
                url,
                additional_headers=self.config.upstream_headers(),
                compression=None,
                proxy=None,
                open_timeout=self.config.connect_timeout,
                ping_interval=None,  # loopback: a dead engine shows as a closed socket
                close_timeout=self.config.close_timeout,
                max_size=self.config.max_message_bytes,
                user_agent_header=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in BUSY_HTTP_STATUSES:
                await self._refuse(
                    websocket,
                    stats,
                    ErrorCode.SERVER_BUSY,
                    f"the engine is busy (HTTP {status}); try again later",
                    1013,
                    "try again later",
                )
            else:
                await self._refuse(
                    websocket,
                    stats,
                    ErrorCode.UPSTREAM_UNAVAILABLE,
                    f"the engine refused the stream (HTTP {status})",
                    1011,
                    "engine unavailable",
                )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            log.warning("%s cannot reach the engine at %s: %s", stats.id, url, exc)
            await self._refuse(
                websocket,
                stats,
                ErrorCode.UPSTREAM_UNAVAILABLE,
                "the engine is not reachable; try again later",
                1011,
                "engine unavailable",
            )
        return None

    async def _relay(self, websocket: WebSocket, stats: _Stats) -> None:
        upstream = await self._connect(websocket, stats)
        if upstream is None:
            return
        to_upstream = asyncio.create_task(self._pump_client(websocket, upstream, stats))
        to_client = asyncio.create_task(self._pump_upstream(websocket, upstream, stats))
        tasks: list[asyncio.Task[Any]] = [to_upstream, to_client]
        if self.config.idle_timeout:
            tasks.append(asyncio.create_task(self._watch_idle(stats, self.config.idle_timeout)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if len(tasks) == 3 and tasks[2] in done:
                await self._refuse(
                    websocket,
                    stats,
                    ErrorCode.IDLE_TIMEOUT,
                    f"No frame either way for {self.config.idle_timeout:g} s; "
                    "the stream was closed",
                    1008,
                    "idle timeout",
                )
                return
            if to_upstream in done and not to_upstream.cancelled():
                exc = to_upstream.exception()
                if exc is None:  # the client closed
                    code, reason = to_upstream.result()
                    stats.end("client", code, reason)
                    await upstream.close(upstream_close_for(code), "client closed")
                    return
                if not isinstance(exc, _UpstreamGone):
                    stats.end("client", 1006, f"client lost ({type(exc).__name__})")
                    return
                # The upstream closed under a send: its reader knows how; wait for it briefly.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.close_timeout):
                        await asyncio.wait((to_client,))
                if not to_client.done():
                    await self._refuse(
                        websocket,
                        stats,
                        ErrorCode.UPSTREAM_UNAVAILABLE,
                        "lost the connection to the engine",
                        1011,
                        "engine connection lost",
                    )
                    return
            await self._finish_from_upstream(websocket, stats, to_client)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Releases the engine request on every path (a no-op when already closed).
            await upstream.close()

    @staticmethod
    async def _watch_idle(stats: _Stats, idle: float) -> None:
        """Return once no frame moved either way for ``idle`` seconds.

        It samples the frame counters the pumps keep anyway, so the relay pays nothing per
        message for it.
        """
        step = min(1.0, idle / 4)
        seen = (stats.frames_in, stats.frames_out)
        quiet_since = time.monotonic()
        while True:
            await asyncio.sleep(step)
            now_seen = (stats.frames_in, stats.frames_out)
            if now_seen != seen:
                seen, quiet_since = now_seen, time.monotonic()
            elif time.monotonic() - quiet_since >= idle:
                return

    async def _finish_from_upstream(
        self, websocket: WebSocket, stats: _Stats, to_client: asyncio.Task[ConnectionClosed]
    ) -> None:
        """The upstream reader ended: mirror the upstream's close, or report the loss."""
        if to_client.cancelled():
            return
        exc = to_client.exception()
        if exc is not None:  # sending to the client failed: the client is gone
            stats.end("client", 1006, f"client lost ({type(exc).__name__})")
            return
        closed = to_client.result()
        if closed.rcvd is not None:
            code, reason = client_close_for(closed.rcvd.code, closed.rcvd.reason)
            await self._close(websocket, stats, code, reason, closed_by="upstream")
            return
        # No close frame from the engine: it died, or broke the protocol.
        too_big = closed.sent is not None and closed.sent.code == 1009
        detail = "the engine sent a message over the size limit" if too_big else None
        await self._refuse(
            websocket,
            stats,
            ErrorCode.UPSTREAM_UNAVAILABLE,
            detail or "lost the connection to the engine",
            1011,
            "engine connection lost",
        )

    async def _pump_client(
        self, websocket: WebSocket, upstream: ClientConnection, stats: _Stats
    ) -> tuple[int, str]:
        """Client -> upstream until the client closes; returns its close code and reason."""
        receive = websocket.receive
        send = upstream.send
        check_options_here = self.config.session_options == "voxtral"
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return message.get("code", 1005), message.get("reason") or ""
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                stats.bytes_in += len(data)
                stats.frames_in += 1
                text = binary_as_text(data)
                if text is None:
                    await self._send_text(
                        websocket,
                        stats,
                        error_frame(
                            ErrorCode.INVALID_FRAME,
                            "binary frame is not UTF-8 JSON; send events as JSON text "
                            "(SageMaker DataType UTF8)",
                        ),
                    )
                    continue
            else:
                stats.bytes_in += text_size(text)
                stats.frames_in += 1
            if check_options_here and "session.update" in text:
                refusal = session_update_refusal(text)
                if refusal is not None:
                    await self._send_text(websocket, stats, refusal)
                    continue
            try:
                await send(text)
            except ConnectionClosed:
                raise _UpstreamGone from None

    async def _pump_upstream(
        self, websocket: WebSocket, upstream: ClientConnection, stats: _Stats
    ) -> ConnectionClosed:
        """Upstream -> client until the upstream closes; returns how it closed."""
        recv = upstream.recv
        send = websocket.send
        while True:
            try:
                data = await recv()
            except ConnectionClosed as closed:
                return closed
            if isinstance(data, str):
                stats.bytes_out += text_size(data)
                await send({"type": "websocket.send", "text": data})
            else:
                stats.bytes_out += len(data)
                await send({"type": "websocket.send", "bytes": data})
            stats.frames_out += 1

    async def _send_text(self, websocket: WebSocket, stats: _Stats, text: str) -> None:
        await websocket.send({"type": "websocket.send", "text": text})
        stats.bytes_out += len(text)
        stats.frames_out += 1

    async def _refuse(
        self,
        websocket: WebSocket,
        stats: _Stats,
        code: ErrorCode,
        message: str,
        close_code: int,
        reason: str,
    ) -> None:
        """An ``error`` event the client can act on, then the close that carries it."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._send_text(websocket, stats, error_frame(code, message))
        await self._close(websocket, stats, close_code, reason, closed_by="bridge")

    async def _close(
        self, websocket: WebSocket, stats: _Stats, code: int, reason: str, *, closed_by: str
    ) -> None:
        stats.end(closed_by, code, reason)
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await websocket.close(code, reason)


# --------------------------------------------------------------------------- app and main


def create_app(config: BridgeConfig | None = None) -> FastAPI:
    """The bridge as an ASGI app: ``GET``/``POST /ping`` and the stream routes."""
    bridge = Bridge(config or BridgeConfig.from_env())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        try:
            yield
        finally:
            await bridge.stop()

    app = FastAPI(
        title="Live Captions SageMaker bridge",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.bridge = bridge
    app.add_api_route("/ping", bridge.ping, methods=["GET", "POST"])
    app.add_api_route("/v1/models", bridge.models, methods=["GET"])
    app.add_api_route("/metrics", bridge.metrics, methods=["GET"])
    for path in STREAM_PATHS:
        app.add_api_websocket_route(path, bridge.handle)
    # Any other path still gets an accepted socket and a close that says what to use.
    app.add_api_websocket_route("/{path:path}", bridge.handle)
    return app


class _QuietUvicorn(logging.Filter):
    """Drops uvicorn's per-connection chatter: the bridge logs each connection once itself."""

    _NOISE = ("connection open", "connection closed", '"WebSocket ')

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(token in message for token in self._NOISE)


def uvicorn_config(app: FastAPI, config: BridgeConfig, host: str, port: int) -> uvicorn.Config:
    """Uvicorn settings that carry the bridge's limits into the WebSocket layer."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",
        ws_max_size=config.max_message_bytes,
        ws_ping_interval=config.keepalive_interval,
        ws_ping_timeout=config.keepalive_interval,
        ws_per_message_deflate=False,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m container.bridge", description="SageMaker bidirectional-stream bridge"
    )
    parser.add_argument("--host", default=read(os.environ, "BRIDGE_HOST", str, "127.0.0.1"))
    parser.add_argument("--port", type=int, default=read(os.environ, "BRIDGE_PORT", int, 8080))
    parser.add_argument("--upstream", default=None, help="engine WebSocket URL (UPSTREAM_URL)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("uvicorn.error").addFilter(_QuietUvicorn())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per /ping otherwise
    overrides = {"upstream_url": args.upstream} if args.upstream else {}
    try:
        config = BridgeConfig.from_env(**overrides)
    except ValueError as exc:
        parser.error(str(exc))
    server = uvicorn.Server(uvicorn_config(create_app(config), config, args.host, args.port))
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
