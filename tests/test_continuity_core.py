"""The pure decisions of a continuous stream: handover timing and where a replay starts.

No backend, no event loop, no clock: the leg's age is passed in, audio is made up, so each
rule is checked exactly and in microseconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from components.continuity.policy import ContinuityPolicy, HandoverTimer
from components.continuity.replay import ReplayBuffer, replay_start
from components.core.audio import float_to_pcm16, loud_frames

RATE = 16_000
# Any pause of 0.3 s will do (how long a pause is sought first is tested on its own below).
POLICY = ContinuityPolicy(handover_window=20.0, handover_margin=5.0, min_pause=0.3, long_pause=0.3)
LIMIT = 100.0  # seek a pause from age 80 s, end regardless at 95 s
GRADED = ContinuityPolicy(handover_window=20.0, handover_margin=5.0, min_pause=0.3, long_pause=1.0)


def speech(seconds: float) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return float_to_pcm16((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


def quiet(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


def test_handover_points_scale_down_for_short_limits() -> None:
    assert POLICY.handover_points(LIMIT) == (80.0, 95.0)
    assert POLICY.handover_points(10.0) == pytest.approx((6.5, 8.5))  # 35 % and 15 %


def test_no_handover_without_a_limit_or_before_the_seek_point() -> None:
    timer = HandoverTimer(POLICY)
    assert timer.cut(99.0, None, quiet(1.0)) is None
    assert timer.cut(10.0, LIMIT, quiet(1.0)) is None
    assert timer.quiet == 0.0  # quiet before the seek point does not count


def test_the_first_pause_after_the_seek_point_ends_the_leg() -> None:
    timer = HandoverTimer(POLICY)
    audio = speech(0.5) + quiet(0.5)
    cut = timer.cut(80.0, LIMIT, audio)
    # 0.5 s of speech, then 0.3 s of quiet: the cut falls right after those 0.3 s.
    assert cut == int(0.8 * RATE) * 2
    assert not timer.forced


def test_a_pause_may_span_chunks() -> None:
    timer = HandoverTimer(POLICY)
    assert timer.cut(85.0, LIMIT, speech(0.2) + quiet(0.2)) is None
    assert timer.quiet == pytest.approx(0.2)
    assert timer.cut(85.4, LIMIT, quiet(0.2)) == int(0.1 * RATE) * 2
    loud_again = HandoverTimer(POLICY)
    loud_again.cut(85.0, LIMIT, quiet(0.2))
    assert loud_again.cut(85.2, LIMIT, speech(0.2)) is None
    assert loud_again.quiet == 0.0  # speech resets the quiet time


def test_the_pause_sought_shrinks_from_a_full_stop_to_a_comma() -> None:
    assert GRADED.pause_needed(70.0, LIMIT) == pytest.approx(1.0)
    assert GRADED.pause_needed(80.0, LIMIT) == pytest.approx(1.0)
    assert GRADED.pause_needed(83.75, LIMIT) == pytest.approx(0.65)
    # From halfway to the end point on, any pause will do.
    assert GRADED.pause_needed(87.5, LIMIT) == pytest.approx(0.3)
    assert GRADED.pause_needed(95.0, LIMIT) == pytest.approx(0.3)


def test_a_comma_pause_early_in_the_seek_window_does_not_end_the_leg() -> None:
    timer = HandoverTimer(GRADED)
    assert timer.cut(80.0, LIMIT, speech(0.5) + quiet(0.5) + speech(0.5)) is None
    # A full stop does: the cut falls most of a second into the quiet (by then the pause
    # sought has shrunk a little).
    cut = timer.cut(81.5, LIMIT, quiet(1.5))
    assert cut is not None and int(0.7 * RATE) * 2 <= cut <= int(1.0 * RATE) * 2


def test_late_in_the_seek_window_a_comma_pause_is_enough() -> None:
    timer = HandoverTimer(GRADED)
    cut = timer.cut(88.0, LIMIT, speech(0.5) + quiet(0.5))
    assert cut is not None and int(0.8 * RATE) * 2 <= cut <= int(0.85 * RATE) * 2
    assert not timer.forced


def test_without_a_pause_the_leg_ends_at_its_end_point() -> None:
    timer = HandoverTimer(POLICY)
    assert timer.cut(90.0, LIMIT, speech(1.0)) is None
    assert not timer.forced
    chunk = speech(1.0)
    assert timer.cut(94.5, LIMIT, chunk) == len(chunk)
    assert timer.forced


def test_loud_frames_agree_for_bytes_and_floats() -> None:
    audio = speech(0.1) + quiet(0.1)
    floats = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
    assert loud_frames(audio, 0.01).tolist() == [True] * 5 + [False] * 5
    assert loud_frames(floats, 0.01).tolist() == loud_frames(audio, 0.01).tolist()
    assert loud_frames(b"\x00\x00" * 10, 0.01).size == 0  # shorter than one frame


def test_a_replay_starts_a_margin_before_the_text_reached() -> None:
    margin = 15 * RATE
    assert replay_start(0, None, seam_open=False, margin_samples=margin) == 0
    assert replay_start(10 * RATE, 60 * RATE, seam_open=False, margin_samples=margin) == 45 * RATE
    # Never before the leg's own audio, and from its start while its own seam was open.
    assert replay_start(50 * RATE, 60 * RATE, seam_open=False, margin_samples=margin) == 50 * RATE
    assert replay_start(10 * RATE, 60 * RATE, seam_open=True, margin_samples=margin) == 10 * RATE


def test_the_replay_buffer_keeps_the_newest_audio_by_offset() -> None:
    buffer = ReplayBuffer(max_samples=4)
    for i in range(5):
        buffer.append(bytes([i, 0]) * 2)  # two samples each
    assert buffer.end == 10
    assert buffer.start == 6  # the oldest chunks that no longer fit are gone
    begin, audio = buffer.read(0)
    assert begin == 6 and audio == bytes([3, 0]) * 2 + bytes([4, 0]) * 2
    assert buffer.read(7, 9) == (7, bytes([3, 0]) + bytes([4, 0]))
