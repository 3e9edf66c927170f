"""A Backend for any vLLM Realtime server: ``vllm serve``, our own server, our container.

One stream is one WebSocket session: ``session.created`` is awaited, then ``session.update``
(asking for partials only when wanted), then one non-final commit to start transcription;
audio goes out as base64 PCM16 appends and :meth:`RealtimeWSStream.finish` is the final
commit. Iteration yields the server's events and ends after ``transcription.done``.

Connection failures become :mod:`components.core.errors` exceptions whose message says what to do:
refused, DNS or timeout -> BackendUnavailable; HTTP 401/403 -> AuthError; close 1013 or
``server_busy`` -> Busy; ``model_not_found`` -> NotFound; a socket that drops before ``done``
-> ConnectionLost. Error events that leave the session usable (``invalid_audio``,
``overloaded``...) are yielded as :class:`~components.core.protocol.ErrorEvent`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

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
from components.core.protocol import (
    CONTEXT_AUDIO_KEY,
    NO_OPTIONS,
    ErrorEvent,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    ProtocolError,
    ServerEvent,
    SessionCreated,
    SessionOptions,
    SessionUpdate,
    TranscriptionDone,
    parse_server_event,
    serialize,
)

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CLOSE_GOING_AWAY = 1001
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
START_HINT = "Start it with `python -m components serve`"


def realtime_url(url: str) -> str:
    """Normalise a server address to its ``ws(s)://.../v1/realtime`` URL.

    ``http(s)://`` maps to ``ws(s)://``; a URL without a path gets ``/v1/realtime``.
    """
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"not a WebSocket URL: {url!r} (expected ws://HOST:PORT/v1/realtime)")
    path = parts.path if parts.path not in ("", "/") else REALTIME_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def models_url(url: str) -> str:
    """The ``/v1/models`` URL on the same server as a realtime URL.

    A ``.../v1/realtime`` URL keeps its path prefix (a server mounted under one); any other
    stream path, such as the SageMaker container's ``/invocations-bidirectional-stream``, is
    asked at the server's root.
    """
    parts = urlsplit(realtime_url(url))
    scheme = "https" if parts.scheme == "wss" else "http"
    prefix = ""
    if parts.path.endswith(REALTIME_PATH):
        prefix = parts.path.removesuffix(REALTIME_PATH).rstrip("/")
    return urlunsplit((scheme, parts.netloc, f"{prefix}/v1/models", "", ""))


class RealtimeWSBackend:
    """Open transcription streams on a vLLM Realtime WebSocket server."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = realtime_url(url)
        self.model = model
        self.api_key = api_key
        self.connect_timeout = connect_timeout
        self.name = f"Realtime server {self.url}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _unreachable(self, reason: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"Cannot reach {self.url} ({reason}). Is the server running? {START_HINT}"
        )

    def _auth_failed(self, status: int) -> AuthError:
        if self.api_key:
            return AuthError(
                f"{self.url} refused the API key (HTTP {status}): check --api-key "
                "or LIVE_CAPTIONS_API_KEY against the server's key"
            )
        return AuthError(
            f"{self.url} needs an API key (HTTP {status}): pass --api-key "
            "or set LIVE_CAPTIONS_API_KEY"
        )

    async def resolve_model(self) -> str:
        """The configured model, or the first id that the server's ``GET /v1/models`` lists."""
        if self.model:
            return self.model
        url = models_url(self.url)
        try:
            async with httpx.AsyncClient(timeout=self.connect_timeout) as client:
                response = await client.get(url, headers=self._headers())
        except httpx.TimeoutException:
            raise self._unreachable(f"no answer from {url} in {self.connect_timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise self._unreachable(_describe(exc)) from None
        if response.status_code in (401, 403):
            raise self._auth_failed(response.status_code)
        if response.status_code != 200:
            raise NotFound(
                f"{url} answered HTTP {response.status_code}, so the model cannot be found "
                "out: name it with --model"
            )
        try:
            data = response.json()["data"]
            model = str(data[0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise NotFound(f"{url} lists no model: name one with --model") from None
        self.model = model
        return model

    async def open(
        self, *, partials: bool = False, options: SessionOptions = NO_OPTIONS
    ) -> RealtimeWSStream:
        """Connect, check the session started, choose the model and start transcription.

        ``options`` go in the ``session.update``. A server that refuses them answers with an
        error event, which the stream raises as :class:`InvalidOption`; ``vllm serve`` 0.32
        ignores them.
        """
        model = await self.resolve_model()
        ws = await self._connect()
        try:
            created = await self._await_created(ws)
            session_id = created.id
            update = SessionUpdate(
                model=model,
                partials=partials,
                language=options.language,
                prompt=options.prompt,
                context=options.context,
                # Only to a server that reads it: any other would transcribe that audio again.
                context_audio=(
                    options.context_audio if CONTEXT_AUDIO_KEY in created.extensions else None
                ),
            )
            await ws.send(serialize(update))
            await ws.send(serialize(InputAudioBufferCommit(final=False)))
        except ConnectionClosed as exc:
            await ws.close()
            raise _closed_error(self.url, exc) from None
        except BaseException:
            await ws.close()
            raise
        log.info("[%s] opened %s model=%s partials=%s", session_id, self.url, model, partials)
        stream = RealtimeWSStream(ws, self.url, session_id)
        if created.expires_at is not None and created.created:
            stream.expires_in = float(created.expires_at - created.created)
        stream.extensions = created.extensions
        return stream

    async def _connect(self) -> ClientConnection:
        try:
            return await connect(
                self.url,
                additional_headers=self._headers(),
                open_timeout=self.connect_timeout,
                max_size=MAX_MESSAGE_BYTES,
                close_timeout=5,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise self._auth_failed(status) from None
            if status == 404:
                raise NotFound(
                    f"{self.url} has no realtime endpoint (HTTP 404): check the URL path "
                    f"(usually {REALTIME_PATH})"
                ) from None
            if status in (429, 503):
                raise Busy(f"{self.url} is busy (HTTP {status}); try again later") from None
            raise RemoteError(f"{self.url} refused the WebSocket (HTTP {status})") from None
        except InvalidURI as exc:
            raise BackendUnavailable(f"Invalid server URL {self.url}: {exc}") from None
        except TimeoutError:
            raise self._unreachable(f"no answer in {self.connect_timeout:g} s") from None
        except InvalidHandshake as exc:
            raise self._unreachable(f"not a WebSocket server: {exc}") from None
        except OSError as exc:
            raise self._unreachable(_describe(exc)) from None

    async def _await_created(self, ws: ClientConnection) -> SessionCreated:
        try:
            frame = await asyncio.wait_for(ws.recv(), self.connect_timeout)
        except TimeoutError:
            raise self._unreachable(
                f"no session.created within {self.connect_timeout:g} s: "
                "is this a vLLM Realtime endpoint?"
            ) from None
        try:
            event = parse_server_event(frame)
        except ProtocolError as exc:
            raise RemoteError(f"{self.url} sent an unexpected first frame: {exc.message}") from None
        if isinstance(event, SessionCreated):
            return event
        if isinstance(event, ErrorEvent):
            error = _error_for(self.url, event)
            raise error or RemoteError(f"{self.url} refused the session: {event.error}")
        raise RemoteError(f"{self.url} sent {event.type} before session.created")


class RealtimeWSStream:
    """One open session: send audio, finish, and iterate the server's events."""

    def __init__(self, ws: ClientConnection, url: str, session_id: str) -> None:
        self._ws = ws
        self.url = url
        self.session_id = session_id
        self._failure: BackendError | None = None
        self._finished = False
        self._cancelled = False
        self._done = False
        self.expires_in: float | None = None
        self.extensions: tuple[str, ...] = ()
        """Negotiated extensions the server announced (``context_audio``)."""
        """Seconds this session may last, as the server announced it (None: not announced)."""

    def _fail(self, error: BackendError) -> BackendError:
        """Remember the first failure: later sends and reads raise that one, not a symptom."""
        if self._failure is None:
            self._failure = error
            log.info("[%s] stream failed: %s", self.session_id, error)
        return self._failure

    async def _send(self, frame: str) -> None:
        if self._failure is not None:
            raise self._failure
        if self._cancelled:
            raise ConnectionLost(f"the stream to {self.url} was cancelled")
        try:
            await self._ws.send(frame)
        except ConnectionClosed as exc:
            raise self._fail(_closed_error(self.url, exc)) from None

    async def send_audio(self, pcm16: bytes) -> None:
        """Queue PCM16 16 kHz mono audio; waits when the socket pushes back."""
        if self._finished:
            raise RuntimeError("send_audio() after finish()")
        if pcm16:
            await self._send(serialize(InputAudioBufferAppend(pcm16)))

    async def finish(self) -> None:
        """The final commit: the audio is complete; remaining text and ``done`` follow."""
        if self._finished:
            return
        self._finished = True
        await self._send(serialize(InputAudioBufferCommit(final=True)))

    async def cancel(self) -> None:
        """Close the session now (idempotent); the server drops the request."""
        self._cancelled = True
        await self._ws.close()

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ServerEvent]:
        try:
            while True:
                try:
                    frame = await self._ws.recv()
                except ConnectionClosed as exc:
                    if self._cancelled:
                        return
                    raise self._fail(_closed_error(self.url, exc)) from None
                if self._failure is not None:
                    raise self._failure
                try:
                    event = parse_server_event(frame)
                except ProtocolError as exc:  # a newer server's event: not ours to judge
                    log.debug("[%s] skipped frame: %s", self.session_id, exc.message)
                    continue
                if isinstance(event, SessionCreated):
                    continue
                if isinstance(event, ErrorEvent):
                    error = _error_for(self.url, event)
                    if error is not None:
                        raise self._fail(error)
                    log.info(
                        "[%s] server error event: %s (%s)", self.session_id, event.error, event.code
                    )
                yield event
                if isinstance(event, TranscriptionDone):
                    self._done = True
                    return
        finally:
            if self._done or self._failure is not None:
                await self._ws.close()


def _describe(exc: BaseException) -> str:
    """The most specific reason in an exception chain (the OSError under httpx's wrappers)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            if isinstance(current, ConnectionRefusedError) or current.errno == 111:
                return "connection refused"
            if current.strerror:
                return current.strerror
        current = current.__cause__ or current.__context__
    return str(exc) or type(exc).__name__


def _error_for(url: str, event: ErrorEvent) -> BackendError | None:
    """The exception for an error event that ends the stream; None when it does not."""
    closed = "The server closed the session: {message}"
    wording = {
        NotFound: "{message} (omit --model to use the server's first model)",
        InvalidOption: f"{url} refused the session options: {{message}}",
        RemoteError: "The server could not transcribe: {message}",
        StreamExpired: closed,
        ConnectionLost: closed,
    }
    return event_error(event.code, event.error, wording, f"{url}: {{message}}")


def _closed_error(url: str, exc: ConnectionClosed) -> BackendError:
    frame = exc.rcvd
    code = frame.code if frame is not None else None
    reason = frame.reason if frame is not None else ""
    if code == CLOSE_TRY_AGAIN_LATER:
        return Busy(f"{url} is busy ({reason or 'close 1013'}); try again later")
    if code in (CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART):
        return ConnectionLost(
            f"The server at {url} shut down before the transcript was complete (code {code}); "
            "try again once it is back"
        )
    detail = f"code {code}" if code is not None else "no close frame"
    if reason:
        detail += f": {reason}"
    return ConnectionLost(
        f"The connection to {url} closed before the transcript was complete ({detail}); "
        "check that the server is still running and try again"
    )
