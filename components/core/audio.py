"""Audio in: any browser or file format to the protocol's float32 mono 16 kHz, and PCM16 framing.

Browsers record at 44.1 or 48 kHz, often in stereo, and deliver audio in chunks of arbitrary
size. Resampling each chunk on its own clicks at every boundary and drifts in length; a
stateful stream (soxr's ``ResampleStream``, HQ) carries the filter state across chunks, so the
concatenated output equals resampling the whole recording at once.
"""

from __future__ import annotations

import numpy as np
import soxr

from components.core.protocol import SAMPLE_RATE

MIN_RATE = 8_000
MAX_RATE = 96_000


class AudioFormatError(ValueError):
    """Audio this project cannot take: a rate out of range, a wrong dtype or shape."""


def to_mono_float32(chunk: np.ndarray) -> np.ndarray:
    """Convert int16/int32/float samples, shaped ``(n,)`` or ``(n, channels)``, to float32 mono.

    Channels are averaged: a browser's "stereo" microphone is normally one source duplicated.
    """
    x = np.asarray(chunk)
    if x.ndim == 2:
        if x.shape[1] == 0:
            raise AudioFormatError("audio has zero channels")
    elif x.ndim != 1:
        raise AudioFormatError(f"audio must be 1-D or (samples, channels), got shape {x.shape}")
    if x.dtype == np.int16:
        y = x.astype(np.float32) / 32768.0
    elif x.dtype == np.int32:
        y = x.astype(np.float32) / 2147483648.0
    elif x.dtype in (np.float32, np.float64):
        y = x.astype(np.float32, copy=False)
    else:
        raise AudioFormatError(f"unsupported sample type {x.dtype} (int16, int32 or float)")
    if y.ndim == 2:
        y = y.mean(axis=1, dtype=np.float32) if y.shape[1] > 1 else y[:, 0]
    return np.ascontiguousarray(y, dtype=np.float32)


class StreamResampler:
    """Resample one live stream to float32 mono 16 kHz, chunk by chunk, without seams.

    One instance per stream: it holds filter state. ``samples_in`` and ``samples_out`` count
    what passed through, so callers can prove that nothing was dropped or duplicated: after
    :meth:`flush`, ``samples_out`` is ``round(samples_in * 16000 / rate)`` (per rate segment).
    If the input rate changes mid-stream, the old segment is flushed and a new one starts.
    """

    def __init__(self, out_rate: int = SAMPLE_RATE, quality: str = "HQ") -> None:
        self.out_rate = out_rate
        self.quality = quality
        self.rate: int | None = None
        self._stream: soxr.ResampleStream | None = None
        self.samples_in = 0
        self.samples_out = 0

    def process(self, chunk: np.ndarray, rate: int) -> np.ndarray:
        """Feed one chunk recorded at ``rate`` Hz; return whatever output is ready."""
        if not MIN_RATE <= rate <= MAX_RATE:
            raise AudioFormatError(f"sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
        mono = to_mono_float32(chunk)
        pieces = []
        if rate != self.rate:
            pieces.append(self.flush())
            self.rate = rate
            self._stream = None
            if rate != self.out_rate:
                self._stream = soxr.ResampleStream(
                    rate, self.out_rate, 1, dtype="float32", quality=self.quality
                )
        self.samples_in += len(mono)
        if self._stream is None:
            out = mono
        else:
            out = self._stream.resample_chunk(mono, last=False)
        pieces.append(out)
        result = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        self.samples_out += len(result)
        return result

    def flush(self) -> np.ndarray:
        """End the current segment: return the samples still held in the filter."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream = None
        self.rate = None
        self.samples_out += len(out)
        return out


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to PCM16 little-endian bytes, clipping what lies outside."""
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (x * 32767.0).round().astype("<i2").tobytes()


def pcm16_to_float(data: bytes) -> np.ndarray:
    """PCM16 little-endian bytes to float32 samples in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def pcm16_seconds(data: bytes | int) -> float:
    """Duration of PCM16 audio at the protocol rate, from the bytes or their count."""
    n = data if isinstance(data, int) else len(data)
    return n / 2 / SAMPLE_RATE


def load_file(path: str) -> np.ndarray:
    """Load any audio file librosa reads as float32 mono 16 kHz (files are not live input)."""
    import librosa  # lazy: heavy import, only the CLI and benches need files

    samples, _ = librosa.load(path, sr=SAMPLE_RATE, mono=True, dtype=np.float32)
    return samples


def loud_frames(
    audio: bytes | np.ndarray, threshold: float, frame_seconds: float = 0.02
) -> np.ndarray:
    """Per frame of ``frame_seconds``: whether its RMS is above ``threshold`` (full scale 1.0).

    The crude voice measure used where no voice detector runs (the page's lag figure, pauses
    for a handover): ``audio`` is PCM16 bytes or float samples at 16 kHz; a partial last
    frame is left out.
    """
    if isinstance(audio, bytes | bytearray | memoryview):
        samples = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
    else:
        samples = np.asarray(audio, dtype=np.float32)
    frame = int(SAMPLE_RATE * frame_seconds)
    n = len(samples) // frame
    if n == 0:
        return np.zeros(0, dtype=bool)
    frames = samples[: n * frame].reshape(n, frame)
    return np.sqrt(np.mean(frames * frames, axis=1)) > threshold
