"""Voice activity for the embedded engine: Silero's detector over a live stream, in blocks
at fixed positions so that the same audio gives the same answer however it was cut."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TypeVar

import numpy as np

from components.core.protocol import (
    SAMPLE_RATE,
)
from components.engines.base import EngineUnavailable

_Number = TypeVar("_Number", int, float)
"""A TypeVar, not PEP 695 syntax: the engines also import under Python 3.11 (vLLM's CPU build)."""

log = logging.getLogger(__name__)


class VadModel:
    """Silero VAD (the ONNX file faster-whisper ships), shared by all streams, run on the worker."""

    WINDOW = 512
    CONTEXT = 64

    def __init__(self) -> None:
        import onnxruntime
        from faster_whisper.utils import get_assets_path

        path = Path(get_assets_path()) / "silero_vad_v6.onnx"
        if not path.is_file():
            raise EngineUnavailable(f"the voice activity model is missing: {path}")
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"], sess_options=opts
        )


class VadStream:
    """Streaming voice detection for one stream: carries the model state across chunks.

    ``last_voice`` is the end (s) of the latest 32 ms window judged speech, with hysteresis:
    once speech started, it continues until the probability falls below ``threshold - 0.15``.
    After ``RESET`` seconds without speech the model state starts afresh: carried through a
    long recording, Silero's state can settle into hearing nothing (seen on the evaluation set
    played back to back: a new speaker in another room went unheard for 16 s).
    Resets happen at fixed points, so feeding the audio in pieces of any size gives the same
    results as one call over all of it.
    """

    GAP = 0.3
    """Silence (s) between words long enough to cut the audio at without splitting a word."""
    RESET = 0.5
    """Silence (s) after which the detector starts from a fresh state."""
    BLOCK = 32
    """Windows between the points where a reset may happen (about 1 s)."""

    def __init__(self, model: VadModel, threshold: float = 0.5) -> None:
        self.model = model
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self._reset_state()
        self._rest = np.zeros(0, np.float32)
        self._samples = 0
        self._speaking = False
        self._quiet = 0  # silent windows in a row
        self.last_voice: float | None = None
        self.starts: list[float] = []
        """Starts (s) of the runs of speech that began in the latest ``feed``."""
        self.gaps: list[float] = []
        """Middles of the pauses (``GAP`` s or longer) found by the latest ``feed``."""
        self.voiced = 0.0
        """Seconds of the latest ``feed`` judged speech."""

    def _reset_state(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(VadModel.CONTEXT, np.float32)

    def feed(self, audio: np.ndarray) -> float | None:
        """Take more audio; return the end (s) of the latest speech (None before any)."""
        self.gaps, self.starts = [], []
        self.voiced = 0.0
        x = np.concatenate([self._rest, audio]) if len(self._rest) else audio
        n = len(x) // VadModel.WINDOW * VadModel.WINDOW
        self._rest = x[n:].copy()
        windows = x[:n].reshape(-1, VadModel.WINDOW)
        first = 0
        while first < len(windows):
            # Blocks end at fixed window counts from the start of the stream, so that resets,
            # and so the results, do not depend on how the audio was cut into chunks.
            done = self._samples // VadModel.WINDOW
            size = min(len(windows) - first, self.BLOCK - done % self.BLOCK)
            self._block(windows[first : first + size], at_boundary=(done + size) % self.BLOCK == 0)
            first += size
        return self.last_voice

    def _block(self, windows: np.ndarray, *, at_boundary: bool) -> None:
        context = np.concatenate([self._context[None], windows[:-1, -VadModel.CONTEXT :]])
        batch = np.ascontiguousarray(np.concatenate([context, windows], axis=1))
        probs, self._h, self._c = self.model.session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -VadModel.CONTEXT :].copy()
        gap_windows = round(self.GAP * SAMPLE_RATE / VadModel.WINDOW)
        for i, p in enumerate(np.asarray(probs).reshape(-1)):
            end = (self._samples + (i + 1) * VadModel.WINDOW) / SAMPLE_RATE
            if p >= self.threshold or (self._speaking and p >= self.neg_threshold):
                if not self._speaking:
                    self.starts.append(end - VadModel.WINDOW / SAMPLE_RATE)
                self._speaking = True
                self.last_voice = end
                self.voiced += VadModel.WINDOW / SAMPLE_RATE
                self._quiet = 0
            else:
                self._speaking = False
                self._quiet += 1
                if self._quiet == gap_windows and self.last_voice is not None:
                    self.gaps.append(end - self.GAP / 2)
        self._samples += len(windows) * VadModel.WINDOW
        if at_boundary and self._quiet * VadModel.WINDOW >= self.RESET * SAMPLE_RATE:
            self._reset_state()
