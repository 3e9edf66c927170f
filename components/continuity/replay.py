"""Audio kept for resending after a lost stream, without I/O: a bounded buffer addressed by
the session's sample offset, and where a replay starts."""

from __future__ import annotations

from collections import deque


class ReplayBuffer:
    """The last ``max_samples`` of audio sent, addressed by session sample offset."""

    def __init__(self, max_samples: int) -> None:
        self._max = max_samples
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._samples = 0
        self.end = 0

    @property
    def start(self) -> int:
        return self._chunks[0][0] if self._chunks else self.end

    def append(self, pcm16: bytes) -> int:
        """Keep ``pcm16``; return its offset."""
        offset = self.end
        n = len(pcm16) // 2
        if n:
            self._chunks.append((offset, pcm16))
            self._samples += n
            self.end += n
        while self._chunks and self._samples - len(self._chunks[0][1]) // 2 >= self._max:
            _, old = self._chunks.popleft()
            self._samples -= len(old) // 2
        return offset

    def read(self, start: int, end: int | None = None) -> tuple[int, bytes]:
        """The audio from ``start`` (or the oldest kept, if later) to ``end``; its real start."""
        end = self.end if end is None else end
        begin = max(start, self.start)
        parts = []
        for offset, pcm in self._chunks:
            n = len(pcm) // 2
            lo, hi = max(begin, offset), min(end, offset + n)
            if lo < hi:
                parts.append(pcm[(lo - offset) * 2 : (hi - offset) * 2])
        return begin, b"".join(parts)


def replay_start(
    leg_start: int, last_delta: int | None, *, seam_open: bool, margin_samples: int
) -> int:
    """Where the replay for a lost leg starts: ``margin_samples`` before the audio its latest
    text had reached (text is confirmed some seconds behind the audio), never before the leg's
    own start; from its start when it said nothing yet, or its own seam was still open."""
    if last_delta is None or seam_open:
        return leg_start
    return max(leg_start, last_delta - margin_samples)
