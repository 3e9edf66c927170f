"""What the page shows of a session: its state and a consistent snapshot of its figures."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from components.outputs.delivery import OutputStatus


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
    outputs: tuple[OutputStatus, ...] = ()
    """Where the captions also go (Zoom, YouTube, Teams, OBS) and how that goes."""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED
