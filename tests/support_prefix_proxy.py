"""A reverse proxy that serves an app under a path prefix, as a hosting front end does.

``/lc/...`` on the proxy is ``/...`` on the app: HTTP requests are forwarded and their
responses streamed back (Gradio's queue answers with server-sent events), WebSockets are
relayed frame by frame in both directions. A real proxy on loopback, so the page's relative
URLs (``mic``, ``live/<token>``) are tested where a prefix would break absolute ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "te"}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def prefix_proxy(upstream: str, prefix: str) -> Starlette:
    """An ASGI app serving ``upstream`` (``http://host:port``) under ``prefix`` (``/lc``)."""
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, read=None))
    ws_upstream = upstream.replace("http://", "ws://", 1)

    def target(path: str, query: str) -> str:
        return f"/{path}" + (f"?{query}" if query else "")

    async def http(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["x-forwarded-host"] = request.headers.get("host", "")
        headers["x-forwarded-proto"] = request.url.scheme
        forwarded = client.build_request(
            request.method,
            upstream + target(request.path_params["path"], request.url.query),
            headers=headers,
            content=await request.body(),
        )
        answer = await client.send(forwarded, stream=True)
        out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers=out,
            background=BackgroundTask(answer.aclose),
        )

    async def relay(websocket: WebSocket) -> None:
        await websocket.accept()
        path = target(websocket.path_params["path"], websocket.url.query)
        async with connect(ws_upstream + path, max_size=None) as up:

            async def inbound() -> None:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        await up.close()
                        return
                    data = message.get("bytes")
                    await up.send(data if data is not None else message.get("text", ""))

            async def outbound() -> None:
                with contextlib.suppress(Exception):
                    async for message in up:
                        if isinstance(message, bytes):
                            await websocket.send_bytes(message)
                        else:
                            await websocket.send_text(message)
                with contextlib.suppress(Exception):
                    await websocket.close(up.close_code or 1000)

            tasks = [asyncio.create_task(inbound()), asyncio.create_task(outbound())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            except WebSocketDisconnect:
                pass
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    routes: list[Any] = [
        Route(f"{prefix}/{{path:path}}", http, methods=METHODS),
        WebSocketRoute(f"{prefix}/{{path:path}}", relay),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    return Starlette(routes=routes, lifespan=lifespan)
