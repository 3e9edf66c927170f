"""The Engine interface: what every speech engine offers the server and the local backend.

An engine turns one stream of audio into transcript events. The audio iterator yields float32
mono 16 kHz chunks of any length as they arrive; it ends when the speaker is done (the
protocol's final commit). The engine yields :class:`~components.core.protocol.TranscriptionDelta`
(append-only confirmed text), optionally :class:`~components.core.protocol.TranscriptionPartial`
(the revisable tail, only when ``partials`` is true), and exactly one
:class:`~components.core.protocol.TranscriptionDone` last. Failures are raised as
:class:`EngineError`. Cancelling the consuming task must release everything the request held.

One engine object serves every session at once; it owns whatever scheduling that needs.

Each stream may carry :class:`~components.core.protocol.SessionOptions` (language, prompt).
An engine says what it can honour (``languages``, ``takes_prompt``) so that a server refuses an
option at ``session.update``, before any audio, with :func:`check_options`; ``transcribe``
checks again for callers in the same process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import numpy as np

from components.core.languages import option_refusal
from components.core.protocol import NO_OPTIONS, ErrorCode, SessionOptions, TranscriptEvent


class EngineError(Exception):
    """A failure with a protocol error code, reported to the client as an ``error`` event."""

    def __init__(self, message: str, code: ErrorCode | str = ErrorCode.PROCESSING_ERROR) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message


class EngineUnavailable(EngineError):
    """The engine cannot be built here (a missing package, no GPU, no weights)."""


@runtime_checkable
class Engine(Protocol):
    name: str
    """Short label for the page and logs, e.g. ``"whisper tiny.en (CPU)"``."""
    model: str
    """The model id clients name in ``session.update`` (also listed by ``/v1/models``)."""
    max_sessions: int
    """How many concurrent streams this engine can keep real time (a default for servers)."""
    languages: tuple[str, ...]
    """ISO-639-1 codes the model transcribes; the first is the default."""
    takes_prompt: bool
    """Whether a prompt (names, terms) steers the decoding."""

    def transcribe(
        self,
        audio: AsyncIterator[np.ndarray],
        *,
        partials: bool = False,
        options: SessionOptions = NO_OPTIONS,
    ) -> AsyncIterator[TranscriptEvent]: ...

    async def aclose(self) -> None: ...


def check_options(
    options: SessionOptions, *, languages: tuple[str, ...], takes_prompt: bool, label: str
) -> None:
    """Raise :class:`EngineError` with the option's code when ``label`` cannot honour it."""
    refusal = option_refusal(
        options.language,
        options.prompt,
        languages=languages,
        takes_prompt=takes_prompt,
        label=label,
    )
    if refusal is not None:
        code, message = refusal
        raise EngineError(message, code)


def engine_extensions(engine: Engine) -> tuple[str, ...]:
    """The negotiated protocol extensions ``engine`` reads (``session.created`` announces them).

    Optional on an engine (an ``extensions`` attribute): an engine that says nothing reads
    none, and a client then sends it nothing it would misread."""
    return tuple(getattr(engine, "extensions", ()))


def check_engine_options(engine: Engine, options: SessionOptions) -> None:
    """:func:`check_options` against what ``engine`` declares."""
    check_options(
        options, languages=engine.languages, takes_prompt=engine.takes_prompt, label=engine.name
    )
