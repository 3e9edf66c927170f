"""Every caption session of the page's process: the loop they run on, the shared engine,
each browser tab's current session, and the session limit."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.backends.base import Backend
from components.backends.factory import BackendSpec, Kind, build_backend
from components.core.errors import BackendError, BackendUnavailable, Busy
from components.page.file_feed import feed_file
from components.page.metrics import PageMetrics
from components.page.session import CaptionSession
from components.page.settings import (
    BackendChoice,
    BackendKind,
    InvalidChoice,
    Settings,
    validate_choice,
)
from components.page.view import FINISHED

log = logging.getLogger(__name__)

FORGET_AFTER_SECONDS = 3600.0
"""A finished session (its transcript and files) is kept this long for its tab, at least."""


@dataclass(slots=True)
class _Owner:
    """One browser tab: its current session."""

    current: CaptionSession | None = None


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
        self.metrics = PageMetrics()
        self.metrics.watch(self._live_counts)

    def _live_counts(self) -> dict[str, float]:
        with self._lock:
            counts: dict[str, float] = {
                "sessions_active": len(self._active),
                "local_sessions_active": self._local_active,
            }
        future = self._engine_future
        if future is not None and future.done() and future.exception() is None:
            engine_counts = getattr(future.result()[0], "counts", None)
            if callable(engine_counts):
                counts.update({f"engine_{k}": v for k, v in engine_counts().items()})
        return counts

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

    def local_languages(self) -> tuple[str, ...]:
        """Languages of the local engine once it is loaded (none before, or if it failed)."""
        future = self._engine_future
        if future is None or not future.done() or future.exception() is not None:
            return ()
        return tuple(getattr(future.result()[0], "languages", ()))

    def engine_label(self) -> str:
        """Short name of the local engine for the figures panel (or what it is doing)."""
        future = self._engine_future
        if future is None or not future.done():
            return "Local engine (loading…)" if future else "Local engine"
        if future.exception() is not None:
            return "Local engine (unavailable)"
        return f"{getattr(future.result()[0], 'name', 'Local engine')}, in-process"

    async def acquire_backend(self, choice: BackendChoice, session_id: str) -> Backend:
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
            return build_backend(BackendSpec(Kind.LOCAL), engine)
        if kind is BackendKind.SAGEMAKER:
            # One backend per endpoint: it pools one HTTP/2 connection for all its streams.
            # SAGEMAKER_ENDPOINT_URL, SAGEMAKER_MODEL and AWS_CA_BUNDLE are read by it.
            cache_key = f"{choice.endpoint}@{choice.region}"
            backend = self._sagemaker.get(cache_key)
            if backend is None:
                spec = BackendSpec(Kind.SAGEMAKER, endpoint=choice.endpoint, region=choice.region)
                try:
                    backend = build_backend(spec)
                except ValueError as exc:
                    raise InvalidChoice(f"SageMaker is misconfigured here: {exc}.") from None
                self._sagemaker[cache_key] = backend
            return backend
        spec = BackendSpec(
            Kind.WEBSOCKET,
            url=choice.url,
            model=self.settings.realtime_model,
            api_key=self.settings.realtime_api_key,
        )
        try:
            return build_backend(spec)
        except ValueError as exc:
            raise InvalidChoice(f"{exc}.") from None

    def release_backend(self, choice: BackendChoice) -> None:
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
            slot = self._owners.setdefault(owner, _Owner())
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
            session = CaptionSession(self, owner, choice, key=key, source=source, refused=error)
            slot.current = session
            self._sessions[session.id] = session
            self._active.add(session.id)
            self._prune_locked(owner, keep={session.id, previous.id if previous else ""})
        if previous is not None and not previous.view().finished:
            previous.stop()
        session.start()
        return session

    def stream_file(self, owner: str, choice: BackendChoice, path: str) -> CaptionSession:
        """Start a session fed from an audio file at real-time pace, as if it were a microphone."""
        session = self.start(owner, choice, source="file")
        if session.error is None:
            session.attach_feeder(
                asyncio.run_coroutine_threadsafe(feed_file(session, path), self.loop)
            )
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

    def session_ended(self, session_id: str) -> None:
        with self._lock:
            self._active.discard(session_id)
            session = self._sessions.get(session_id)
        if session is not None:
            self.metrics.session_ended(session.view())

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
            tasks = [t for s in sessions if (t := s.task) is not None and not t.done()]
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
