"""What a continuous stream decides, without I/O: its settings, when a leg hands over (pure,
fed the leg's age and its audio), and what it reports (notices, counts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.core.audio import loud_frames
from components.core.protocol import SAMPLE_RATE

FRAME_SECONDS = 0.02
"""The loudness frame the handover looks for pauses in."""


@dataclass(frozen=True, slots=True)
class ContinuityPolicy:
    """When to hand over, what to replay, how to reconnect (all times in seconds)."""

    max_stream_seconds: float | None = None
    """The longest leg; None takes the backend's and its server's own limits."""
    handover_window: float = 60.0
    """How long before a leg's limit a pause is sought to end it (at most 35 % of the limit)."""
    handover_margin: float = 10.0
    """How long before the limit a leg is ended even mid-speech (at most 15 % of the limit),
    leaving it time to deliver its last text."""
    min_pause: float = 0.3
    """Quiet this long counts as a pause to hand over in, near the end point."""
    long_pause: float = 1.0
    """Quiet this long is sought first: a speaker's full stop. A shorter pause is often a
    comma, and a leg that starts there hears the rest of a sentence without its start (the
    continuity bench lost the "they" of "in the air, they act as a prism" that way). The
    pause asked for shrinks from this to ``min_pause`` over the first half of the seek
    window."""
    pause_rms: float = 0.01
    """Frame loudness (about -40 dBFS) below which audio is quiet."""
    lead_in: float = 0.3
    """Quiet before a planned handover's cut that the new leg is sent too (at most the quiet
    heard there). A stream that starts right at speech hears its first words worst: the
    evaluation clips decoded from 0.15 s before their speech gave WER 0.085, from its onset
    0.103."""
    context_audio: float = 8.0
    """Audio (s) before a planned handover's cut that the new leg hears first, as context, with
    the words said in it forced rather than transcribed again, when its engine reads that
    (the ``context_audio`` extension; 0 turns it off). A streaming decoder reads a speaker
    better the more of them its window holds, and a new leg otherwise starts with none."""
    context_wait: float = 3.0
    """Longest wait (s) at a planned handover for the old leg's last words, which the new
    leg's forced words must include; the audio waits meanwhile. Without them in time, the
    new leg starts without the audio before its cut."""
    carry_context: bool = False
    """Open the leg after a planned handover with the transcript so far as its ``context``
    (a protocol extension: an engine that reads text context hears the new leg's first words
    as one stream would have; vLLM and engines that cannot read it ignore it). Off by
    default: a new leg prompted with the sentence it follows sometimes repeats its last
    words ("waiting. no longer. But he could wait no longer."), and on the continuity
    bench it lost as many words as without it."""
    replay_seconds: float = 120.0
    """Audio kept for resending after a loss: the bound on what can be recovered."""
    replay_margin: float = 15.0
    """Audio resent from before the point the lost leg's text had reached when its last
    delta arrived (text is confirmed a few seconds behind the audio)."""
    max_failures: int = 5
    """Failed attempts in a row (opens that fail, legs that die young) before giving up."""
    backoff_base: float = 0.5
    backoff_cap: float = 10.0
    good_stream_seconds: float = 30.0
    """A leg that ran this long resets the failure count."""
    replay_speed: float = 4.0
    """Replayed audio goes out at this multiple of real time (0: at once). A streaming engine
    decodes audio as it arrives; a long burst decoded as one window is less accurate (a small
    Whisper model may skip its first sentence)."""
    seam_hold_seconds: float = 6.0
    """Longest a replaying leg's text is held back while its overlap is being found."""

    def pause_needed(self, age: float, limit: float) -> float:
        """The quiet (s) that ends a leg of ``age``: ``long_pause`` from the seek point on,
        shrinking evenly to ``min_pause`` halfway to the end point. The second half takes
        any pause: ending a leg mid-speech costs far more than ending it at a comma."""
        seek_at, end_at = self.handover_points(limit)
        longest = max(self.long_pause, self.min_pause)
        half = max((end_at - seek_at) / 2, 1e-9)
        progress = min(1.0, max(0.0, (age - seek_at) / half))
        return longest - (longest - self.min_pause) * progress

    def handover_points(self, limit: float) -> tuple[float, float]:
        """(start seeking a pause, end regardless), as leg ages, for a leg limited to ``limit``."""
        window = min(self.handover_window, 0.35 * limit)
        margin = min(self.handover_margin, 0.15 * limit)
        return limit - window, limit - margin


@dataclass(frozen=True, slots=True)
class StreamNotice:
    """Something the user of a continuous stream may want to show."""

    kind: Literal["handover", "reconnecting", "reconnected", "audio_lost"]
    message: str
    lost_seconds: float = 0.0


@dataclass(slots=True)
class ContinuityStats:
    legs: int = 0
    handovers: int = 0
    """Planned: a leg ended before its limit."""
    reconnects: int = 0
    """Unplanned: a leg broke and another took over its audio."""
    expired: int = 0
    """A leg reached a limit the chain did not know of (the backend ended it at its maximum
    duration) and another took over its audio from the replay buffer."""
    replayed_samples: int = 0
    lost_samples: int = 0
    """Audio that could not be resent (older than the replay buffer)."""
    dropped_words: int = 0
    """Words a replaying leg repeated at its seam (dropped)."""
    lead_in_samples: int = 0
    """Quiet before planned handovers sent to both legs (see ``ContinuityPolicy.lead_in``)."""


@dataclass(slots=True)
class HandoverTimer:
    """Where a leg with a known limit should end: in the first pause once its age passes the
    policy's seek point (a long one first, any at the end: ``ContinuityPolicy.pause_needed``),
    or regardless at its end point. Fed each chunk of audio as it is
    sent, with the leg's age at the chunk's start; keeps the quiet time it has run into."""

    policy: ContinuityPolicy
    quiet: float = 0.0
    """Seconds of quiet at the end of the audio seen so far."""
    forced: bool = False
    """The latest cut came at the end point, with no pause found (mid-speech)."""

    def cut(self, age: float, limit: float | None, pcm16: bytes) -> int | None:
        """Byte offset in ``pcm16`` where the leg should end (``len(pcm16)``: after it, even
        mid-speech), or None to keep it."""
        if limit is None:
            return None
        seek_at, end_at = self.policy.handover_points(limit)
        seconds = len(pcm16) / 2 / SAMPLE_RATE
        if age + seconds < seek_at:
            self.quiet = 0.0
            return None
        frame = int(SAMPLE_RATE * FRAME_SECONDS)
        for i, loud in enumerate(loud_frames(pcm16, self.policy.pause_rms, FRAME_SECONDS)):
            self.quiet = 0.0 if loud else self.quiet + FRAME_SECONDS
            at = age + (i + 1) * FRAME_SECONDS
            if at >= seek_at and self.quiet >= self.policy.pause_needed(at, limit) - 1e-9:
                return (i + 1) * frame * 2
        if age + seconds >= end_at:
            self.forced = True
            return len(pcm16)
        return None
