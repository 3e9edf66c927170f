"""One caption session of the page: a recording, from the first chunk to the final transcript.

:meth:`CaptionSession.feed` resamples a browser chunk (stateful, so chunk seams vanish) and
queues PCM16 in microseconds — Gradio drops audio when its stream handler is slow — while a
task on the manager's loop sends it over a continuous stream
(:mod:`components.continuity.chain`: handovers and reconnections underneath), reads deltas into a
:class:`~components.core.transcript.Transcript`, and on stop sends the final commit and waits for
the last text. Every sample is counted in and out, so a lost sample shows.

Anything that goes wrong ends as one sentence a person can act on (``SessionView.error``);
tracebacks go to the log only, with the session id on every line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Protocol

import numpy as np

from components.backends.base import Backend, RealtimeStream
from components.continuity.chain import ContinuousStream
from components.continuity.policy import ContinuityPolicy, ContinuityStats, StreamNotice
from components.core.audio import (
    AudioFormatError,
    StreamResampler,
    float_to_pcm16,
    loud_frames,
)
from components.core.errors import BackendError, ConnectionLost
from components.core.protocol import (
    SAMPLE_RATE,
    ErrorCode,
    ErrorEvent,
    TranscriptionDelta,
    TranscriptionDone,
    TranscriptionPartial,
)
from components.core.transcript import Transcript, write_exports
from components.outputs.delivery import CaptionOutputs
from components.page.settings import BackendChoice, BackendKind, InvalidChoice, Settings
from components.page.view import SessionState, SessionView

log = logging.getLogger(__name__)

MAX_BACKLOG_SECONDS = 60.0
"""Audio waiting to be sent beyond this means the backend cannot keep up: the session fails
loudly rather than dropping audio silently or growing without bound."""

STOP_GRACE_SECONDS = 0.25
"""After Stop, audio chunks already on their way from the browser are still taken this long."""

FINAL_TIMEOUT_SECONDS = 30.0
"""How long to wait for ``transcription.done`` after the final commit."""

OUTPUT_GRACE_SECONDS = 5.0
"""After the final transcript, caption outputs may take this long to post what waits."""

VOICE_RMS = 0.01
"""Frame loudness (about -40 dBFS) above which audio counts as speech for the lag figure."""


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


class SessionHost(Protocol):
    """What a session needs from whatever hosts it (the page's :class:`SessionManager`): its
    event loop and settings, where finished transcripts go, and backends to stream to."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def export_dir(self) -> Path: ...

    async def acquire_backend(self, choice: BackendChoice, session_id: str) -> Backend:
        """A backend for session ``session_id``'s ``choice``; raises :class:`BackendError`
        with a sentence if there is none."""
        ...

    def release_backend(self, choice: BackendChoice) -> None:
        """The session is done with the backend :meth:`acquire_backend` gave it."""

    def session_ended(self, session_id: str) -> None:
        """The session has finished (its files, if any, are written)."""


class CaptionSession:
    """One recording, from the first chunk to the final transcript.

    Thread-safe at its edges: :meth:`feed`, :meth:`stop`, :meth:`cancel` and :meth:`view` may be
    called from any thread; everything else runs on the manager's loop.
    """

    def __init__(
        self,
        host: SessionHost,
        owner: str,
        choice: BackendChoice,
        *,
        key: str | None = None,
        source: str = "microphone",
        refused: str | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.owner = owner
        self.key = key
        self.source = source
        self.choice = choice
        self._host = host
        self._loop = host.loop
        self._settings = host.settings
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
        self._error: str | None = refused
        """Why the session failed (or was refused before it started), None while it has not."""
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
        self._outputs = CaptionOutputs(
            choice.outputs, session=self.id, language=choice.language or None
        )

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
                outputs=self._outputs.statuses(),
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

    @property
    def error(self) -> str | None:
        """Why the session failed or was refused, None if it has not."""
        with self._lock:
            return self._error

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The session's task on the host's loop (None before it is scheduled)."""
        return self._task

    def fail(self, message: str) -> None:
        """End the session with ``message`` for the page (from any thread)."""
        with self._lock:
            self._fail_locked(message)
        self._wake_threadsafe()

    def attach_feeder(self, feeder: concurrent.futures.Future[None]) -> None:
        """The task feeding this session from a file: cancelled when the session is."""
        self._feeder = feeder

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
            backend = await self._host.acquire_backend(self.choice, self.id)
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
            if final is SessionState.CANCELLED:
                await self._outputs.cancel()
            else:
                await self._outputs.finish(grace=OUTPUT_GRACE_SECONDS)
            if backend_held:
                self._host.release_backend(self.choice)
            if final is not SessionState.CANCELLED:
                await self._write_exports()
            with self._lock:  # finished only now, so a finished view always has its files
                self._state = final
                self.ended = time.monotonic()
            self._host.session_ended(self.id)
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
        directory = self._host.export_dir / self.id
        stem = "captions-" + time.strftime("%Y%m%d-%H%M%S")
        try:
            paths = await asyncio.to_thread(write_exports, snapshot, directory, stem)
        except OSError as exc:
            log.warning("session %s: could not write the transcript files: %s", self.id, exc)
            return
        with self._lock:
            self._exports = paths

    async def _stream(self, backend: Backend) -> None:
        """Run the session over a chain of backend streams (see :mod:`components.continuity.chain`):
        handovers before each stream's limit, and a replay after a lost connection, keep the
        captions going for hours."""
        policy = ContinuityPolicy(max_stream_seconds=self._settings.max_stream_seconds)
        chain = await ContinuousStream.open(
            backend,
            partials=True,
            options=self.choice.options,
            policy=policy,
            on_notice=self._on_notice,
            label=f"session {self.id}",
        )
        self._chain = chain
        self._outputs.start()
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
                    self._outputs.feed(delta)
                    self._bump()
                case TranscriptionPartial(text=text):
                    with self._lock:
                        self._transcript.set_partial(text)
                        if text.strip():
                            self._caption_seen_locked()
                    self._bump()
                case TranscriptionDone(text=text):
                    with self._lock:
                        before = self._transcript.text
                        self._transcript.finish(text, self._samples_sent / SAMPLE_RATE)
                        after = self._transcript.text
                        if after:
                            self._caption_seen_locked()
                    if len(after) > len(before) and after.startswith(before):
                        self._outputs.feed(after[len(before) :])  # words only the final had
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
    return float(np.count_nonzero(loud_frames(samples, VOICE_RMS))) * 0.02


def _choice_label(choice: BackendChoice) -> str:
    kind = str(choice.kind)
    if kind == BackendKind.SAGEMAKER:
        return f"SageMaker endpoint {choice.endpoint} ({choice.region})"
    if kind == BackendKind.REALTIME:
        return f"Realtime server {choice.url}"
    return "Local engine"
