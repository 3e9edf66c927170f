"""Caption sessions for the page: one per recording, each over its own backend stream.

The page (``app.py``) only wires widgets to this module. What happens here:

* :class:`Settings` reads the deployment's environment: which backends visitors may use
  (``SAGEMAKER_ENDPOINTS`` allowlist, ``ALLOW_CUSTOM_URL``), limits (``MAX_SESSIONS``,
  ``MAX_SESSION_SECONDS``) and defaults.
* :class:`SessionManager` (one per process) owns a background event loop on which every
  session runs, the shared in-process engine (built once, lazily), the per-browser-tab routing
  of microphone chunks, and the session limit.
* :class:`CaptionSession` is one recording: :meth:`~CaptionSession.feed` resamples a browser
  chunk (stateful, so chunk seams vanish) and queues PCM16 in microseconds — Gradio drops audio
  when its stream handler is slow — while a task on the background loop sends it, reads deltas
  into a :class:`~components.transcript.Transcript`, and on stop sends the final commit and
  waits for the last text. Every sample is counted in and out, so a lost sample shows.

Anything that goes wrong ends as one sentence a person can act on (``SessionView.error``);
tracebacks go to the log only, with the session id on every line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from components.audio import AudioFormatError, StreamResampler, float_to_pcm16
from components.backends.base import Backend, RealtimeStream
from components.continuity import (
    ContinuityPolicy,
    ContinuityStats,
    ContinuousStream,
    StreamNotice,
)
from components.errors import (
    BackendError,
    BackendUnavailable,
    Busy,
    ConnectionLost,
    NotFound,
)
from components.protocol import (
    SAMPLE_RATE,
    ErrorCode,
    ErrorEvent,
    TranscriptionDelta,
    TranscriptionDone,
    TranscriptionPartial,
)
from components.transcript import Transcript, write_exports

log = logging.getLogger(__name__)

MAX_BACKLOG_SECONDS = 60.0
"""Audio waiting to be sent beyond this means the backend cannot keep up: the session fails
loudly rather than dropping audio silently or growing without bound."""

STOP_GRACE_SECONDS = 0.25
"""After Stop, audio chunks already on their way from the browser are still taken this long."""

FINAL_TIMEOUT_SECONDS = 30.0
"""How long to wait for ``transcription.done`` after the final commit."""

FORGET_AFTER_SECONDS = 3600.0
"""A finished session (its transcript and files) is kept this long for its tab, at least."""

FILE_CHUNK_SECONDS = 0.1
"""Chunk length when an uploaded recording is streamed as if live."""

VOICE_RMS = 0.01
"""Frame loudness (about -40 dBFS) above which audio counts as speech for the lag figure."""

_ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_REGION_NAME = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


class BackendKind(StrEnum):
    LOCAL = "local"
    SAGEMAKER = "sagemaker"
    REALTIME = "realtime"


class InvalidChoice(BackendError):
    """The backend settings are incomplete or malformed (fixable in the page's settings)."""


# --------------------------------------------------------------------------- settings


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    return value in ("1", "true", "yes", "on")


def _env_number(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None
    if number <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class Settings:
    """What this deployment offers and allows; see README section "page" for the variables."""

    max_sessions: int = 8
    max_session_seconds: float = 4 * 3600.0
    idle_seconds: float = 30.0
    max_stream_seconds: float | None = None
    """Hand over to a new backend stream at least this often (None: at the backend's limits)."""
    local_enabled: bool = True
    local_engine: str = "auto"
    sagemaker_endpoints: tuple[str, ...] = ()
    sagemaker_endpoint: str = ""
    sagemaker_region: str = "us-east-1"
    realtime_url: str = ""
    realtime_model: str | None = None
    realtime_api_key: str | None = None
    allow_custom_url: bool = True
    public: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        public = _env_bool(env, "PUBLIC_DEPLOYMENT", bool(env.get("SPACE_ID")))
        endpoints = tuple(
            e.strip() for e in env.get("SAGEMAKER_ENDPOINTS", "").split(",") if e.strip()
        )
        region = (
            env.get("SAGEMAKER_REGION")
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        ).strip()
        return cls(
            max_sessions=int(_env_number(env, "MAX_SESSIONS", 8)),
            max_session_seconds=_env_number(env, "MAX_SESSION_SECONDS", 4 * 3600.0),
            idle_seconds=_env_number(env, "SESSION_IDLE_SECONDS", 30.0),
            max_stream_seconds=(
                _env_number(env, "MAX_STREAM_SECONDS", 1.0)
                if env.get("MAX_STREAM_SECONDS", "").strip()
                else None
            ),
            local_enabled=_env_bool(env, "LOCAL_BACKEND", True),
            local_engine=env.get("LIVE_CAPTIONS_ENGINE", "auto").strip() or "auto",
            sagemaker_endpoints=endpoints,
            sagemaker_endpoint=env.get("SAGEMAKER_ENDPOINT", "").strip()
            or (endpoints[0] if endpoints else ""),
            sagemaker_region=region,
            realtime_url=env.get("REALTIME_URL", "").strip(),
            realtime_model=env.get("REALTIME_MODEL") or None,
            realtime_api_key=env.get("LIVE_CAPTIONS_API_KEY") or None,
            allow_custom_url=_env_bool(env, "ALLOW_CUSTOM_URL", not public),
            public=public,
        )

    @property
    def allowed_endpoints(self) -> tuple[str, ...] | None:
        """Endpoint names visitors may invoke; ``None`` means any (a private deployment)."""
        if self.sagemaker_endpoints:
            return self.sagemaker_endpoints
        if self.public:
            return (self.sagemaker_endpoint,) if self.sagemaker_endpoint else ()
        return None

    @property
    def region_locked(self) -> bool:
        """On a public deployment visitors cannot move the Space's credentials to another region."""
        return self.public or bool(self.sagemaker_endpoints)

    @property
    def kinds(self) -> tuple[BackendKind, ...]:
        """Backends this deployment offers, in the page's order."""
        kinds = []
        if self.local_enabled:
            kinds.append(BackendKind.LOCAL)
        if self.allowed_endpoints != ():
            kinds.append(BackendKind.SAGEMAKER)
        if self.allow_custom_url or self.realtime_url:
            kinds.append(BackendKind.REALTIME)
        return tuple(kinds)


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """What the visitor picked in the page; checked against :class:`Settings` before use."""

    kind: BackendKind | str = BackendKind.LOCAL
    endpoint: str = ""
    region: str = ""
    url: str = ""


def validate_choice(choice: BackendChoice, settings: Settings) -> BackendChoice:
    """Return the choice as it will be used, or raise a :class:`BackendError` saying why not.

    This is the server-side gate: the page's widgets only mirror it, so a visitor calling the
    page's API directly gets the same refusals.
    """
    try:
        kind = BackendKind(str(choice.kind))
    except ValueError:
        raise InvalidChoice(
            f"Unknown backend {choice.kind!r}; choose Local, SageMaker or a Realtime URL."
        ) from None
    if kind not in settings.kinds:
        raise NotFound(f"The {kind.value} backend is not offered on this deployment.")
    if kind is BackendKind.LOCAL:
        return BackendChoice(kind)
    if kind is BackendKind.SAGEMAKER:
        endpoint = (choice.endpoint or "").strip() or settings.sagemaker_endpoint
        allowed = settings.allowed_endpoints
        if not endpoint:
            raise InvalidChoice("Enter the name of a SageMaker endpoint.")
        if allowed is not None and endpoint not in allowed:
            raise NotFound(
                f"Endpoint {endpoint!r} is not allowed on this deployment; "
                f"choose one of: {', '.join(allowed)}."
            )
        if not _ENDPOINT_NAME.match(endpoint):
            raise InvalidChoice(
                f"{endpoint!r} is not a valid SageMaker endpoint name "
                "(letters, digits and hyphens, at most 63)."
            )
        if settings.region_locked:
            region = settings.sagemaker_region
        else:
            region = (choice.region or "").strip() or settings.sagemaker_region
        if not _REGION_NAME.match(region):
            raise InvalidChoice(f"{region!r} is not an AWS region name (for example us-east-1).")
        return BackendChoice(kind, endpoint=endpoint, region=region)
    url = (choice.url or "").strip() or settings.realtime_url
    if not settings.allow_custom_url and url != settings.realtime_url:
        raise NotFound(
            "Custom server URLs are disabled on this deployment (ALLOW_CUSTOM_URL); "
            f"use {settings.realtime_url or 'another backend'}."
        )
    if not re.match(r"^wss?://[^\s/]+", url):
        raise InvalidChoice(
            "Enter a Realtime server URL such as ws://127.0.0.1:8000/v1/realtime (ws:// or wss://)."
        )
    return BackendChoice(kind, url=url)


# --------------------------------------------------------------------------- change signal


class _Changes:
    """A version counter that coroutines on any event loop can await (the page's loop waits on
    changes made on the sessions' loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.version = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def bump(self) -> None:
        with self._lock:
            self.version += 1
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, fut)

    async def wait(self, seen: int, max_wait: float) -> int:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self.version != seen:
                return self.version
            entry = (loop, fut)
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, max_wait)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        return self.version


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# --------------------------------------------------------------------------- one session


class SessionState(StrEnum):
    STARTING = "starting"
    LIVE = "live"
    STOPPING = "stopping"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (SessionState.DONE, SessionState.FAILED, SessionState.CANCELLED)


@dataclass(frozen=True, slots=True)
class SessionView:
    """A consistent snapshot of a session for the page (all times in seconds)."""

    session_id: str
    state: SessionState
    source: str
    backend: str
    text: str
    partial: str
    error: str | None
    notice: str | None
    audio_received: float
    audio_sent: float
    first_caption: float | None
    caption_at: float | None
    """Wall-clock time (epoch seconds) of the last change to the captions."""
    lag: float
    samples_in: int
    chunks_in: int
    samples_expected: int
    samples_sent: int
    samples_lost: int | None
    late_chunks: int
    streams: int
    """Backend streams the session has used (handovers and reconnections open new ones)."""
    reconnects: int
    exports: dict[str, Path] | None
    version: int

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class _ServerError(BackendError):
    """The server sent an ``error`` event that ends the session."""


class _SessionFailure(BackendError):
    """The session failed on its own side (audio backlog, unreadable audio)."""


def server_error_message(event: ErrorEvent) -> str:
    """One sentence for an ``error`` event, by its code."""
    code = event.code or ""
    detail = event.error.strip().rstrip(".")
    if code == ErrorCode.SERVER_BUSY:
        return "The caption server is busy (all its sessions are in use). Try again in a minute."
    if code == ErrorCode.SESSION_TOO_LONG:
        return "The server ended the session at its maximum length. Press Record to continue."
    if code == ErrorCode.IDLE_TIMEOUT:
        return "The server closed the session after a long silence. Press Record to start again."
    if code == ErrorCode.AUDIO_BUFFER_FULL:
        return "The server could not keep up with the audio and ended the session. Try again."
    if code == ErrorCode.MODEL_NOT_FOUND:
        return f"The server does not serve the requested model: {detail}."
    if code == ErrorCode.UPSTREAM_UNAVAILABLE:
        return f"The endpoint's speech engine is unavailable ({detail}). Try again shortly."
    return f"The caption server reported an error: {detail}" + (f" ({code})." if code else ".")


class CaptionSession:
    """One recording, from the first chunk to the final transcript.

    Thread-safe at its edges: :meth:`feed`, :meth:`stop`, :meth:`cancel` and :meth:`view` may be
    called from any thread; everything else runs on the manager's loop.
    """

    def __init__(
        self,
        manager: SessionManager,
        owner: str,
        choice: BackendChoice,
        *,
        key: str | None = None,
        source: str = "microphone",
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.owner = owner
        self.key = key
        self.source = source
        self.choice = choice
        self._manager = manager
        self._loop = manager.loop
        self._settings = manager.settings
        self._lock = threading.Lock()
        self._changes = _Changes()
        self._resampler = StreamResampler()
        self._transcript = Transcript()
        self._pending: deque[bytes] = deque()
        self._pending_samples = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._feeder: concurrent.futures.Future[None] | None = None
        self.created = time.monotonic()
        self.ended = 0.0
        self._state = SessionState.STARTING
        self._accepting = True
        self._stop_requested = False
        self._stop_at = 0.0
        self._error: str | None = None
        self._notice: str | None = None
        self._backend_label = _choice_label(choice)
        self._exports: dict[str, Path] | None = None
        # Counters: browser samples in (per rate segment), 16 kHz samples out.
        self._segments: list[list[int]] = []  # [rate, samples]
        self._samples_in = 0
        self._chunks_in = 0
        self._seconds_in = 0.0
        self._samples_sent = 0
        self._late_chunks = 0
        self._first_audio: float | None = None
        self._last_audio = self.created
        self._first_caption: float | None = None
        self._caption_at: float | None = None
        self._uncaptioned_voice = 0.0
        self._chain: ContinuousStream | None = None

    # ------------------------------------------------------------------ edges (any thread)

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def accepting(self) -> bool:
        return self._accepting

    def feed(self, rate: int, chunk: np.ndarray) -> bool:
        """Take one chunk (``(n,)`` or ``(n, channels)`` samples at ``rate`` Hz) in microseconds.

        Returns False once the session takes no more audio (stopped, failed, at its limit); the
        chunk is then counted in ``late_chunks`` and not used.
        """
        limit_reached = False
        with self._lock:
            if not self._accepting:
                self._late_chunks += 1
                return False
            try:
                out = self._resampler.process(chunk, rate)
            except AudioFormatError as exc:
                self._fail_locked(f"The audio could not be used: {exc}.")
                self._wake_threadsafe()
                return False
            n = len(chunk)
            if not self._segments or self._segments[-1][0] != rate:
                self._segments.append([rate, 0])
            self._segments[-1][1] += n
            self._samples_in += n
            self._chunks_in += 1
            self._seconds_in += n / rate
            now = time.monotonic()
            if self._first_audio is None:
                self._first_audio = now
            self._last_audio = now
            self._uncaptioned_voice += _voiced_seconds(out)
            if len(out):
                self._pending.append(float_to_pcm16(out))
                self._pending_samples += len(out)
            if self._pending_samples > MAX_BACKLOG_SECONDS * SAMPLE_RATE:
                self._fail_locked(
                    f"The backend is not keeping up: over {MAX_BACKLOG_SECONDS:.0f} s of audio "
                    "is waiting to be sent. Try again, or choose another backend."
                )
            elif self._seconds_in >= self._settings.max_session_seconds:
                self._accepting = False
                self._notice = (
                    f"Maximum session length ({self._settings.max_session_seconds:g} s) "
                    "reached. Press Record to continue in a new session."
                )
                limit_reached = True
        if limit_reached:
            self.stop()
        else:
            self._wake_threadsafe()
        return self._accepting

    def stop(self) -> None:
        """Finish: send what is queued, the final commit, and wait for the remaining text."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._request_stop)

    def cancel(self) -> None:
        """Abandon the session at once (Clear, a closed tab): release the stream, keep no audio."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._cancel_now)

    def view(self) -> SessionView:
        stats = self._chain.stats if self._chain is not None else ContinuityStats()
        with self._lock:
            expected = sum(round(n * SAMPLE_RATE / rate) for rate, n in self._segments)
            done = self._state is SessionState.DONE
            first = None
            if self._first_caption is not None and self._first_audio is not None:
                first = self._first_caption - self._first_audio
            return SessionView(
                session_id=self.id,
                state=self._state,
                source=self.source,
                backend=self._backend_label,
                text=self._transcript.text,
                partial=self._transcript.partial.strip(),
                error=self._error,
                notice=self._notice,
                audio_received=self._seconds_in,
                audio_sent=self._samples_sent / SAMPLE_RATE,
                first_caption=first,
                caption_at=self._caption_at,
                lag=self._uncaptioned_voice,
                samples_in=self._samples_in,
                chunks_in=self._chunks_in,
                samples_expected=expected,
                samples_sent=self._samples_sent,
                samples_lost=(expected - self._samples_sent + stats.lost_samples) if done else None,
                late_chunks=self._late_chunks,
                streams=stats.legs,
                reconnects=stats.reconnects,
                exports=dict(self._exports) if self._exports else None,
                version=self._changes.version,
            )

    async def wait_changed(self, seen: int, max_wait: float) -> int:
        """Wait (on any loop, at most ``max_wait`` s) until the version differs from ``seen``."""
        return await self._changes.wait(seen, max_wait)

    async def wait_finished(self, max_wait: float) -> SessionView:
        """Wait until the session has ended (at most ``max_wait`` s); return its last view."""
        deadline = time.monotonic() + max_wait
        while True:
            view = self.view()
            left = deadline - time.monotonic()
            if view.finished or left <= 0:
                return view
            await self.wait_changed(view.version, min(left, 1.0))

    # ------------------------------------------------------------------ loop side

    def _wake_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake.set)

    def _bump(self) -> None:
        self._changes.bump()

    def _fail_locked(self, message: str) -> None:
        if self._error is None:
            self._error = message
        self._accepting = False
        self._pending.clear()
        self._pending_samples = 0

    def _request_stop(self) -> None:
        if not self._stop_requested:
            self._stop_requested = True
            self._stop_at = self._loop.time() + (STOP_GRACE_SECONDS if self._accepting else 0.0)
            with self._lock:
                if self._state in (SessionState.STARTING, SessionState.LIVE):
                    self._state = SessionState.STOPPING
            log.info("session %s: stop requested", self.id)
            self._bump()
        self._wake.set()

    def _cancel_now(self) -> None:
        with self._lock:
            self._accepting = False
            self._pending.clear()
            self._pending_samples = 0
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._feeder is not None:
            self._feeder.cancel()

    def start(self) -> None:
        """Schedule :meth:`_run` on the manager's loop (called once, by the manager).

        The task is created in a loop callback: callbacks run in order, so a :meth:`cancel`
        issued after this always finds the task.
        """
        self._loop.call_soon_threadsafe(self._create_task)

    def _create_task(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"caption-session-{self.id}")

    async def _run(self) -> None:
        log.info(
            "session %s: starting (%s, %s, stream %s)",
            self.id,
            self.source,
            self._backend_label,
            self.key,
        )
        backend_held = False
        final = SessionState.FAILED
        try:
            if self._error is not None:
                raise InvalidChoice(self._error)
            backend = await self._manager._build_backend(self.choice, self)
            backend_held = True
            with self._lock:
                self._backend_label = backend.name
            self._bump()
            await self._stream(backend)
            final = SessionState.DONE
            log.info("session %s: done (%d samples sent)", self.id, self._samples_sent)
        except asyncio.CancelledError:
            final = SessionState.CANCELLED
            log.info("session %s: cancelled", self.id)
        except BackendError as exc:
            self._failed(str(exc))
        except Exception:
            log.exception("session %s: unexpected failure", self.id)
            self._failed(
                f"Something went wrong in this caption session (logged as {self.id}). "
                "Press Record to try again."
            )
        finally:
            with self._lock:
                self._accepting = False
                self._pending.clear()
                self._pending_samples = 0
                self._transcript.set_partial("")
            if backend_held:
                self._manager._backend_released(self.choice)
            if final is not SessionState.CANCELLED:
                await self._write_exports()
            with self._lock:  # finished only now, so a finished view always has its files
                self._state = final
                self.ended = time.monotonic()
            self._manager._session_ended(self)
            self._bump()

    def _failed(self, message: str) -> None:
        with self._lock:
            self._fail_locked(message)
            self._error = message
        log.warning("session %s: failed: %s", self.id, message)

    async def _write_exports(self) -> None:
        with self._lock:  # the session has ended: nothing writes to the transcript any more
            if not self._transcript.text:
                return
            snapshot = self._transcript
        directory = self._manager.export_dir / self.id
        stem = "captions-" + time.strftime("%Y%m%d-%H%M%S")
        try:
            paths = await asyncio.to_thread(write_exports, snapshot, directory, stem)
        except OSError as exc:
            log.warning("session %s: could not write the transcript files: %s", self.id, exc)
            return
        with self._lock:
            self._exports = paths

    async def _stream(self, backend: Backend) -> None:
        """Run the session over a chain of backend streams (see :mod:`components.continuity`):
        handovers before each stream's limit, and a replay after a lost connection, keep the
        captions going for hours."""
        policy = ContinuityPolicy(max_stream_seconds=self._settings.max_stream_seconds)
        chain = await ContinuousStream.open(
            backend,
            partials=True,
            policy=policy,
            on_notice=self._on_notice,
            label=f"session {self.id}",
        )
        self._chain = chain
        with self._lock:
            if self._state is SessionState.STARTING:
                self._state = SessionState.LIVE
        self._bump()
        log.info("session %s: stream open", self.id)
        try:
            await self._pump(chain)
        finally:
            await chain.cancel()
            stats = chain.stats
            log.info(
                "session %s: %d streams, %d handovers, %d reconnects, %.1f s replayed, %.1f s lost",
                self.id,
                stats.legs,
                stats.handovers,
                stats.reconnects,
                stats.replayed_samples / SAMPLE_RATE,
                stats.lost_samples / SAMPLE_RATE,
            )

    def _on_notice(self, notice: StreamNotice) -> None:
        """Only lost audio stays on screen; a reconnection shows while it lasts."""
        with self._lock:
            if notice.kind == "reconnecting":
                self._notice = notice.message
            elif notice.kind == "reconnected":
                if self._notice and self._notice.startswith("Connection lost"):
                    self._notice = None
            elif notice.kind == "audio_lost":
                self._notice = notice.message
        self._bump()

    async def _pump(self, stream: RealtimeStream) -> None:
        """Send audio and read events at once; return after ``done`` for the final commit."""
        reader = asyncio.create_task(self._read(stream))
        sender = asyncio.create_task(self._send(stream))
        try:
            done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()  # the reader's error, or done (the server ended the request)
                return
            sender.result()  # the sender's error, or the final commit went out
            try:
                await asyncio.wait_for(reader, FINAL_TIMEOUT_SECONDS)
            except TimeoutError:
                raise ConnectionLost(
                    "The backend did not return the final transcript within "
                    f"{FINAL_TIMEOUT_SECONDS:.0f} s."
                ) from None
        finally:
            for task in (reader, sender):
                if not task.done():
                    task.cancel()
            await asyncio.gather(reader, sender, return_exceptions=True)

    async def _send(self, stream: RealtimeStream) -> None:
        while True:
            self._wake.clear()
            if self._error is not None:
                raise _SessionFailure(self._error)
            with self._lock:
                batch = list(self._pending)
                self._pending.clear()
                self._pending_samples = 0
            for i, pcm in enumerate(batch):
                try:
                    await stream.send_audio(pcm)
                except BaseException:
                    with self._lock:  # not sent: keep it, in order, for a reconnected stream
                        self._pending.extendleft(reversed(batch[i:]))
                        self._pending_samples += sum(len(p) // 2 for p in batch[i:])
                    raise
                with self._lock:
                    self._samples_sent += len(pcm) // 2
            if batch:
                continue
            if self._stop_requested and self._loop.time() >= self._stop_at:
                with self._lock:
                    self._accepting = False
                    if self._pending:  # arrived just before the door closed: send it first
                        continue
                    tail = self._resampler.flush()
                if len(tail):
                    pcm = float_to_pcm16(tail)
                    await stream.send_audio(pcm)
                    with self._lock:
                        self._samples_sent += len(pcm) // 2
                await stream.finish()
                log.info("session %s: final commit sent", self.id)
                return
            if not self._stop_requested:
                idle = time.monotonic() - self._last_audio
                if idle > self._settings.idle_seconds:
                    with self._lock:
                        self._notice = (
                            f"No audio for {self._settings.idle_seconds:g} s; "
                            "the session was stopped."
                        )
                    self._request_stop()
                    continue
            timeout = 0.05 if self._stop_requested else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _read(self, stream: RealtimeStream) -> None:
        last_error: ErrorEvent | None = None
        async for event in stream:
            match event:
                case TranscriptionDelta(delta=delta):
                    with self._lock:
                        self._transcript.add_delta(delta, self._samples_sent / SAMPLE_RATE)
                        self._caption_seen_locked()
                    self._bump()
                case TranscriptionPartial(text=text):
                    with self._lock:
                        self._transcript.set_partial(text)
                        if text.strip():
                            self._caption_seen_locked()
                    self._bump()
                case TranscriptionDone(text=text):
                    with self._lock:
                        self._transcript.finish(text, self._samples_sent / SAMPLE_RATE)
                        if self._transcript.text:
                            self._caption_seen_locked()
                    self._bump()
                    return
                case ErrorEvent() if event.code == ErrorCode.OVERLOADED:
                    with self._lock:
                        self._notice = "The engine is falling behind real time; captions lag."
                    self._bump()
                case ErrorEvent():
                    # Backends raise for errors that end a stream; one that arrives as an event
                    # leaves it open. Show it; if the stream then ends, it was the reason.
                    last_error = event
                    with self._lock:
                        self._notice = server_error_message(event)
                    self._bump()
                case _:
                    pass
        if last_error is not None:
            raise _ServerError(server_error_message(last_error))
        if not self._stop_requested:
            raise ConnectionLost("The connection to the backend closed unexpectedly.")
        raise ConnectionLost("The backend closed the stream before the final transcript.")

    def _caption_seen_locked(self) -> None:
        if self._first_caption is None:
            self._first_caption = time.monotonic()
        self._caption_at = time.time()
        self._uncaptioned_voice = 0.0


def _voiced_seconds(samples: np.ndarray) -> float:
    """Seconds of 20 ms frames louder than VOICE_RMS (a crude speech detector for the lag)."""
    frame = SAMPLE_RATE // 50
    n = len(samples) // frame
    if n == 0:
        return 0.0
    frames = samples[: n * frame].reshape(n, frame)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    return float(np.count_nonzero(rms > VOICE_RMS)) / 50


def _choice_label(choice: BackendChoice) -> str:
    kind = str(choice.kind)
    if kind == BackendKind.SAGEMAKER:
        return f"SageMaker endpoint {choice.endpoint} ({choice.region})"
    if kind == BackendKind.REALTIME:
        return f"Realtime server {choice.url}"
    return "Local engine"


# --------------------------------------------------------------------------- manager


@dataclass(slots=True)
class _Owner:
    """One browser tab: its current session and the stream keys it has used."""

    current: CaptionSession | None = None
    keys: deque[str] | None = None


class SessionManager:
    """Every caption session of this process, the loop they run on, and the shared engine."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        engine_loader: Callable[[], tuple[Any, str]] | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._engine_loader = engine_loader or self._default_engine_loader
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="caption-sessions", daemon=True
        )
        self._thread.start()
        self._lock = threading.RLock()
        self._owners: dict[str, _Owner] = {}
        self._sessions: dict[str, CaptionSession] = {}
        self._active: set[str] = set()
        self._local_active = 0
        self._engine_future: concurrent.futures.Future[tuple[Any, str]] | None = None
        self._sagemaker: dict[str, Any] = {}  # used on the loop only
        self.export_dir = Path(tempfile.mkdtemp(prefix="live-captions-"))
        self._closed = False

    # ------------------------------------------------------------------ engine

    def _default_engine_loader(self) -> tuple[Any, str]:
        from components.engines.registry import create_engine

        return create_engine(self.settings.local_engine)

    def load_engine(self) -> concurrent.futures.Future[tuple[Any, str]]:
        """Start building the shared in-process engine (once); return its future."""
        with self._lock:
            if self._engine_future is None:
                self._engine_future = concurrent.futures.Future()
                threading.Thread(
                    target=self._load_engine_into,
                    args=(self._engine_future,),
                    daemon=True,
                    name="engine-loader",
                ).start()
            return self._engine_future

    def _load_engine_into(self, future: concurrent.futures.Future[tuple[Any, str]]) -> None:
        try:
            engine, note = self._engine_loader()
        except Exception as exc:  # reported to users as a sentence, logged in full
            log.exception("local engine could not be built")
            future.set_exception(exc)
        else:
            log.info("local engine ready: %s", note)
            future.set_result((engine, note))

    def engine_note(self) -> str:
        """What the page says about the local engine: loading, ready (which), or failed."""
        future = self._engine_future
        if future is None:
            return "The local engine starts on first use."
        if not future.done():
            return "Loading the local speech engine…"
        exc = future.exception()
        if exc is not None:
            return f"The local engine is unavailable: {_exception_sentence(exc)}"
        return future.result()[1]

    def engine_label(self) -> str:
        """Short name of the local engine for the figures panel (or what it is doing)."""
        future = self._engine_future
        if future is None or not future.done():
            return "Local engine (loading…)" if future else "Local engine"
        if future.exception() is not None:
            return "Local engine (unavailable)"
        return f"{getattr(future.result()[0], 'name', 'Local engine')}, in-process"

    async def _build_backend(self, choice: BackendChoice, session: CaptionSession) -> Backend:
        kind = BackendKind(str(choice.kind))
        if kind is BackendKind.LOCAL:
            try:
                engine, _ = await asyncio.wrap_future(self.load_engine())
            except Exception as exc:
                raise BackendUnavailable(
                    f"The local engine is unavailable: {_exception_sentence(exc)}"
                ) from None
            limit = int(getattr(engine, "max_sessions", 0) or 0)
            with self._lock:
                if limit and self._local_active >= limit:
                    raise Busy(
                        f"The local engine is serving its maximum of {limit} sessions. "
                        "Try again in a minute, or choose another backend."
                    )
                self._local_active += 1
            from components.backends.local import LocalBackend

            return LocalBackend(engine)
        if kind is BackendKind.SAGEMAKER:
            # One backend per endpoint: it pools one HTTP/2 connection for all its streams.
            # SAGEMAKER_ENDPOINT_URL, SAGEMAKER_MODEL and AWS_CA_BUNDLE are read by it.
            from components.backends.sagemaker import SageMakerBackend

            cache_key = f"{choice.endpoint}@{choice.region}"
            backend = self._sagemaker.get(cache_key)
            if backend is None:
                try:
                    backend = SageMakerBackend(choice.endpoint, choice.region)
                except ValueError as exc:
                    raise InvalidChoice(f"SageMaker is misconfigured here: {exc}.") from None
                self._sagemaker[cache_key] = backend
            return backend
        from components.backends.websocket import RealtimeWSBackend

        try:
            return RealtimeWSBackend(
                choice.url,
                model=self.settings.realtime_model,
                api_key=self.settings.realtime_api_key,
            )
        except ValueError as exc:
            raise InvalidChoice(f"{exc}.") from None

    def _backend_released(self, choice: BackendChoice) -> None:
        if str(choice.kind) == BackendKind.LOCAL:
            with self._lock:
                self._local_active = max(0, self._local_active - 1)

    # ------------------------------------------------------------------ sessions

    def start(
        self,
        owner: str,
        choice: BackendChoice,
        *,
        key: str | None = None,
        source: str = "microphone",
    ) -> CaptionSession:
        """Start a fresh session for ``owner`` (a browser tab); its previous one is stopped.

        A refused start (invalid choice, limit reached) still returns a session, already failed
        with the reason, so the page shows every outcome the same way.
        """
        with self._lock:
            slot = self._owners.setdefault(owner, _Owner(keys=deque(maxlen=16)))
            previous = slot.current
            error = None
            try:
                choice = validate_choice(choice, self.settings)
            except BackendError as exc:
                error = str(exc)
            if error is None and len(self._active) >= self.settings.max_sessions:
                error = (
                    f"All {self.settings.max_sessions} caption sessions of this page are in use. "
                    "Try again in a minute."
                )
            session = CaptionSession(self, owner, choice, key=key, source=source)
            if error is not None:
                session._error = error
            slot.current = session
            if key is not None and slot.keys is not None:
                slot.keys.append(key)
            self._sessions[session.id] = session
            self._active.add(session.id)
            self._prune_locked(owner, keep={session.id, previous.id if previous else ""})
        if previous is not None and not previous.view().finished:
            previous.stop()
        session.start()
        return session

    def feed(
        self, owner: str, key: str | None, choice: BackendChoice, rate: int, chunk: np.ndarray
    ) -> CaptionSession | None:
        """Route one microphone chunk to ``owner``'s session for stream ``key``.

        The first chunk of a new stream starts a session; a straggler from an earlier stream is
        counted on that session and not used. Returns the session the chunk belongs to.
        """
        with self._lock:
            slot = self._owners.get(owner)
            current = slot.current if slot else None
            if current is not None and (current.key == key or key is None) and current.accepting:
                session: CaptionSession | None = current
            elif slot is not None and key is not None and slot.keys and key in slot.keys:
                session = next(
                    (s for s in self._sessions.values() if s.owner == owner and s.key == key), None
                )
                if session is not None:
                    session.feed(rate, chunk)  # counted as late, not used
                return session
            else:
                session = self.start(owner, choice, key=key, source="microphone")
        session.feed(rate, chunk)
        return session

    def stream_file(self, owner: str, choice: BackendChoice, path: str) -> CaptionSession:
        """Start a session fed from an audio file at real-time pace, as if it were a microphone."""
        session = self.start(owner, choice, source="file")
        if session._error is None:
            session._feeder = asyncio.run_coroutine_threadsafe(_feed_file(session, path), self.loop)
        return session

    def current(self, owner: str) -> CaptionSession | None:
        with self._lock:
            slot = self._owners.get(owner)
            return slot.current if slot else None

    def get(self, session_id: str) -> CaptionSession | None:
        with self._lock:
            return self._sessions.get(session_id)

    def stop(self, owner: str, *, source: str | None = None) -> CaptionSession | None:
        """Stop ``owner``'s current session (only if it comes from ``source``, when given)."""
        session = self.current(owner)
        if session is not None and source in (None, session.source):
            session.stop()
        return session

    def clear(self, owner: str) -> None:
        """Cancel ``owner``'s session and forget it (the page's Clear button)."""
        with self._lock:
            slot = self._owners.get(owner)
            session = slot.current if slot else None
            if slot is not None:
                slot.current = None
        if session is not None:
            session.cancel()

    def release(self, owner: str) -> None:
        """The tab is gone: cancel its sessions and delete their files."""
        with self._lock:
            slot = self._owners.pop(owner, None)
            mine = [s for s in self._sessions.values() if s.owner == owner]
            for s in mine:
                self._sessions.pop(s.id, None)
        for s in mine:
            s.cancel()
            shutil.rmtree(self.export_dir / s.id, ignore_errors=True)
        del slot

    @property
    def active_count(self) -> int:
        with self._lock:
            return len(self._active)

    def _session_ended(self, session: CaptionSession) -> None:
        with self._lock:
            self._active.discard(session.id)

    def _prune_locked(self, owner: str, keep: set[str]) -> None:
        """Forget an owner's older finished sessions, and anyone's finished an hour ago (a tab
        that went away without saying so), with their files."""
        now = time.monotonic()
        for sid, s in list(self._sessions.items()):
            if sid in keep or s.state not in FINISHED:
                continue
            if s.owner == owner or now - s.ended > FORGET_AFTER_SECONDS:
                del self._sessions[sid]
                shutil.rmtree(self.export_dir / sid, ignore_errors=True)
                slot = self._owners.get(s.owner)
                if slot is not None and slot.current is s and s.owner != owner:
                    del self._owners[s.owner]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every session, close the engine, stop the loop, delete the files."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.cancel()

        async def _close() -> None:
            tasks = [s._task for s in sessions if s._task is not None and not s._task.done()]
            if tasks:
                await asyncio.wait(tasks, timeout=timeout / 2)
            for backend in self._sagemaker.values():
                with contextlib.suppress(Exception):
                    await backend.aclose()
            future = self._engine_future
            if future is not None and future.done() and future.exception() is None:
                engine = future.result()[0]
                with contextlib.suppress(Exception):
                    await engine.aclose()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_close(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self.loop.is_running():
            self.loop.close()
        shutil.rmtree(self.export_dir, ignore_errors=True)


def _exception_sentence(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).strip() or type(exc).__name__
    return text if text.endswith(".") else text + "."


# --------------------------------------------------------------------------- files


def read_audio_file(path: str) -> tuple[int, np.ndarray]:
    """An uploaded recording at its own rate and channels (int16), as a microphone would give.

    Falls back to librosa (resampled to 16 kHz) for what libsndfile cannot read.
    """
    import soundfile

    try:
        data, rate = soundfile.read(path, dtype="int16", always_2d=False)
        if 8_000 <= rate <= 96_000:
            return int(rate), data
    except (RuntimeError, soundfile.LibsndfileError):
        pass
    from components.audio import load_file

    return SAMPLE_RATE, load_file(path)


async def _feed_file(session: CaptionSession, path: str) -> None:
    loop = asyncio.get_running_loop()
    try:
        rate, data = await asyncio.to_thread(read_audio_file, path)
    except Exception as exc:
        log.warning("session %s: cannot read %s: %s", session.id, path, exc)
        with session._lock:
            session._fail_locked(
                "The file could not be read as audio. Try a WAV, FLAC, OGG or MP3 file."
            )
        session._wake_threadsafe()
        return
    step = max(1, int(rate * FILE_CHUNK_SECONDS))
    start_time = loop.time()
    for start in range(0, len(data), step):
        end = min(len(data), start + step)
        delay = start_time + end / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if not session.feed(rate, data[start:end]):
            break
    session.stop()
