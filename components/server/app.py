"""A vLLM-Realtime-compatible server over any Engine: WebSocket ``/v1/realtime`` and friends.

A client written for ``vllm serve`` works against it unchanged: the same events, fields, error
codes and order (docs/server.md), ``GET /health`` (200, empty body) and ``GET /v1/models``
(the OpenAI list as vLLM shapes it). It adds what vLLM's server lacks: a session limit
(``server_busy`` then close 1013), idle and session-length timeouts, a bounded audio queue
with back-pressure, an optional bearer API key, ``invalid_frame`` for binary frames, and
opt-in ``transcription.partial`` events. The per-connection logic lives in
:mod:`components.server.session`; this module holds settings, routes and the uvicorn runner.

:func:`create_app` is the factory that tests and the SageMaker container reuse.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from components.core.metrics import CONTENT_TYPE, render
from components.core.protocol import (
    ErrorCode,
    error_frame,
)
from components.engines.base import Engine
from components.server.limits import SessionSlots
from components.server.session import CLOSE_TRY_AGAIN_LATER, RealtimeSession
from components.server.state import ServerSettings, ServerState

log = logging.getLogger("components.server.app")


def _unauthorized() -> JSONResponse:
    return JSONResponse(
        {"error": "Unauthorized: send the server's API key as 'Authorization: Bearer <key>'"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def create_app(
    engine: Engine, settings: ServerSettings | None = None, *, close_engine: bool = True
) -> FastAPI:
    """The ASGI app serving ``engine``. With ``close_engine`` the app closes it on shutdown."""
    settings = (settings or ServerSettings()).validated()
    limit = settings.max_sessions or max(1, int(getattr(engine, "max_sessions", 1) or 1))
    state = ServerState(
        engine=engine,
        settings=settings,
        slots=SessionSlots(limit),
        model_names=(settings.served_model_name or engine.model,),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info(
            "serving model %s with %s; at most %d sessions, idle timeout %gs, "
            "max session %gs, auth %s",
            state.model_names[0],
            engine.name,
            limit,
            settings.idle_timeout,
            settings.max_session_seconds,
            "on" if settings.api_key else "off",
        )
        try:
            yield
        finally:
            if close_engine:
                await engine.aclose()

    app = FastAPI(
        title="Live Captions realtime server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.realtime = state

    @app.get("/health")
    async def health() -> Response:
        """Like vLLM's: 200 with an empty body once the engine is loaded."""
        return Response(status_code=200)

    @app.get("/v1/models", response_model=None)
    async def models(request: Request) -> JSONResponse:
        if not state.authorized(request.headers.get("authorization")):
            return _unauthorized()
        cards = [_model_card(name, engine.model, state.created) for name in state.model_names]
        return JSONResponse({"object": "list", "data": cards})

    @app.get("/stats", response_model=None)
    async def stats(request: Request) -> JSONResponse:
        """Live counters, for operators and tests (behind the API key when one is set)."""
        if not state.authorized(request.headers.get("authorization")):
            return _unauthorized()
        return JSONResponse(
            {
                "engine": engine.name,
                "model": state.model_names[0],
                "sessions_active": state.slots.active,
                "sessions_limit": state.slots.limit,
                "sessions_total": state.sessions_total,
                "sessions_refused": state.sessions_refused,
                "requests_active": state.requests_active,
                "engine_streams": getattr(engine, "active_streams", None),
            }
        )

    @app.get("/metrics", response_model=None)
    async def metrics(request: Request) -> Response:
        """Prometheus text (behind the API key when one is set, like ``/stats``)."""
        if not state.authorized(request.headers.get("authorization")):
            return _unauthorized()
        return Response(render(state.metrics.registry), media_type=CONTENT_TYPE)

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        if not state.authorized(websocket.headers.get("authorization")):
            log.warning("handshake refused: missing or wrong API key")
            try:
                await websocket.send_denial_response(_unauthorized())
            except RuntimeError:  # the ASGI server cannot send an HTTP response here
                await websocket.close(code=1008)
            return
        if not state.slots.try_acquire():
            state.sessions_refused += 1
            log.warning("session refused: all %d sessions are in use", state.slots.limit)
            await websocket.accept()
            await websocket.send_text(
                error_frame(
                    ErrorCode.SERVER_BUSY,
                    f"The server is serving its maximum of {state.slots.limit} sessions; "
                    "try again later",
                )
            )
            await websocket.close(CLOSE_TRY_AGAIN_LATER, "server busy")
            return
        state.sessions_total += 1
        try:
            session = RealtimeSession(websocket, engine, state, models=state.model_names)
            await session.run()
        finally:
            state.slots.release()

    return app


def _model_card(name: str, root: str, created: int) -> dict[str, Any]:
    """One entry of ``/v1/models`` with the keys vLLM returns."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "live-captions",
        "root": root,
        "parent": None,
        "max_model_len": None,
        "permission": [
            {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


def uvicorn_config(app: FastAPI, settings: ServerSettings, *, log_level: str = "info") -> Any:
    """The uvicorn configuration the CLI uses (sans-I/O websockets: HTTP denial + flow control)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        log_level=log_level,
        log_config=None,
        timeout_graceful_shutdown=5,
        ws_max_size=max(16 * 1024 * 1024, settings.max_append_bytes * 2),
    )


async def serve(engine: Engine, settings: ServerSettings, *, log_level: str = "info") -> None:
    """Run the server until interrupted (SIGINT/SIGTERM), then close sessions and the engine."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn_config(create_app(engine, settings), settings, log_level=log_level)
    )
    await server.serve()
