"""Framing live audio for Voxtral Realtime, and the token feedback loop, without the model.

Voxtral Realtime runs in vLLM as one *streaming-input* request per session: the request's prompt
is an async generator of chunks, and each chunk is one frame of audio plus the text token(s) that
go with it. This module decides what every chunk holds; :mod:`components.engines.vllm.engine` only
renders the chunks and talks to the engine. Keeping it free of vLLM, torch and asyncio-heavy
machinery lets the framing be tested here, on real speech, exactly.

How vLLM 0.32 and 0.33 frame audio for this model (``VoxtralRealtimeBuffer`` and
``VoxtralRealtimeGeneration.buffer_realtime_audio`` in
``vllm/model_executor/models/voxtral_realtime.py``; the padding and prompt come from
mistral_common's ``AudioEncoder.get_padding_audio`` and ``encode_streaming_tokens``):

* The audio is one stream: silence (``left_pad`` samples) + the speech + silence (``right_pad``).
  The left padding goes in just before the first real chunk; the right padding when the audio ends.
* Every text token stands for ``samples_per_token`` samples (1280 = 80 ms at 16 kHz). Frame 0
  carries the whole prompt (BOS + streaming pads) and owns the samples
  ``[0, len(prompt) * samples_per_token)``. Frame k > 0 carries one token and owns the next
  ``samples_per_token`` samples. The samples a frame owns (its *core*) partition the stream.
* Each frame's audio is its core widened by ``look_back`` samples before (not before 0) and
  ``look_ahead`` after, so consecutive frames overlap by ``look_back + look_ahead`` samples.
* The token of frame k > 0 is the last token the model generated for frame k - 1: a frame can go
  out only after the previous frame's output came back (the feedback loop), and only once all of
  its audio has arrived.
* When the audio ends, frames continue through the right padding until the remaining audio
  cannot fill a whole frame; that last partial frame is dropped (it holds only padding).

Every frame adds its tokens to the request's sequence, which must stay within the model's
``max_model_len``. :class:`VoxtralFramer` keeps room for the end-of-audio flush and, when real
audio would cross the limit, stops taking audio there, flushes, and reports ``truncated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from components.core.protocol import ErrorCode
from components.engines.base import EngineError

log = logging.getLogger(__name__)

VOXTRAL_REALTIME_AUDIO = {
    "sample_rate": 16_000,
    "frame_rate": 12.5,
    "hop_length": 160,
    "transcription_delay_ms": 480.0,
    "look_ahead_ms": 2.5,
    "look_back_ms": 52.5,
    "n_left_pad_tokens": 32,
}
"""The ``audio`` settings of Voxtral-Mini-4B-Realtime-2602's ``tekken.json`` (for tests and docs;
the engine reads the live values from the model's tokenizer)."""

OFFLINE_STREAMING_BUFFER_TOKENS = 10
"""mistral_common's allowance for the longest word, part of the right padding."""

MAX_PENDING_TOKENS = 8
"""More fed-back tokens than this waiting for frames means the loop is out of step."""


def ms_to_samples(sample_rate: int, ms: float) -> int:
    """Samples in ``ms`` milliseconds; vLLM requires this to be a whole number."""
    samples = sample_rate * ms / 1000
    if not float(samples).is_integer():
        raise ValueError(f"{ms} ms is not a whole number of samples at {sample_rate} Hz")
    return int(samples)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """How one Voxtral Realtime model wants its audio framed (all lengths in samples)."""

    sample_rate: int
    samples_per_token: int
    look_back: int
    look_ahead: int
    left_pad: int
    right_pad: int
    prompt_tokens: tuple[int, ...]
    """BOS + streaming pad tokens: the tokens of frame 0."""
    delay_tokens: int
    """Text lags the audio by this many tokens (informational)."""

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.samples_per_token <= 0:
            raise ValueError("sample_rate and samples_per_token must be positive")
        if min(self.look_back, self.look_ahead, self.left_pad, self.right_pad) < 0:
            raise ValueError("padding and look-back/ahead lengths cannot be negative")
        if not self.prompt_tokens:
            raise ValueError("the streaming prompt cannot be empty")
        if self.first_core_end <= self.look_back:
            raise ValueError("the first frame must be longer than the look-back")

    @property
    def first_core_end(self) -> int:
        """End of frame 0's core: one ``samples_per_token`` per prompt token."""
        return len(self.prompt_tokens) * self.samples_per_token

    @property
    def token_seconds(self) -> float:
        return self.samples_per_token / self.sample_rate

    @property
    def flush_frames(self) -> int:
        """An upper bound on the frames the right padding adds after the last real sample."""
        return math.ceil(self.right_pad / self.samples_per_token) + 1

    def min_model_len(self, max_tokens: int = 1) -> int:
        """The shortest ``max_model_len`` that fits the prompt, one frame of speech and a flush."""
        return len(self.prompt_tokens) + 1 + self.flush_frames + max_tokens

    def max_audio_seconds(self, max_model_len: int, max_tokens: int = 1) -> float:
        """How much speech one session can hold before the length guard stops it."""
        frames = max_model_len - len(self.prompt_tokens) - max_tokens - self.flush_frames
        speech_in_first = max(self.first_core_end - self.left_pad, 0)
        return max(speech_in_first + max(frames, 0) * self.samples_per_token, 0) / self.sample_rate

    @classmethod
    def from_audio_settings(
        cls,
        *,
        sample_rate: int = 16_000,
        frame_rate: float = 12.5,
        hop_length: int = 160,
        transcription_delay_ms: float = 480.0,
        look_ahead_ms: float = 2.5,
        look_back_ms: float = 52.5,
        n_left_pad_tokens: int = 32,
        bos_id: int = 1,
        streaming_pad_id: int = 32,
    ) -> StreamSpec:
        """Derive the framing from a ``tekken.json`` audio section, as mistral_common 1.13 does.

        Delay tokens: the delay in samples, in spectrogram hops (rounded up), in tokens (rounded
        up). Prompt: BOS + ``n_left_pad_tokens + delay`` streaming pads. Left padding: one token of
        silence per left pad token. Right padding: delay + 1 (BOS) + a 10-token allowance for the
        longest word.
        """
        per_token = int(sample_rate // frame_rate)
        hops_per_token = int(float(per_token) / hop_length)
        delay_len = int(transcription_delay_ms / 1000.0 * sample_rate)
        if delay_len % hop_length:
            delay_hops = math.ceil(delay_len / hop_length - 1)
        else:
            delay_hops = delay_len // hop_length
        delay_tokens = math.ceil(delay_hops / hops_per_token)
        if ms_to_samples(sample_rate, 1000 / frame_rate) != per_token:
            raise ValueError("frame_rate must give a whole number of samples per token")
        return cls(
            sample_rate=sample_rate,
            samples_per_token=per_token,
            look_back=ms_to_samples(sample_rate, look_back_ms),
            look_ahead=ms_to_samples(sample_rate, look_ahead_ms),
            left_pad=n_left_pad_tokens * per_token,
            right_pad=(delay_tokens + 1 + OFFLINE_STREAMING_BUFFER_TOKENS) * per_token,
            prompt_tokens=(bos_id, *([streaming_pad_id] * (n_left_pad_tokens + delay_tokens))),
            delay_tokens=delay_tokens,
        )

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> StreamSpec:
        """Read the framing from the model's own tokenizer objects (what vLLM itself uses).

        ``tokenizer`` is vLLM's ``MistralTokenizer`` (``.instruct``) or mistral_common's
        (``.instruct_tokenizer``); its audio encoder supplies the prompt, the padding and the
        look-back/ahead, so a model with other settings is framed correctly too.
        """
        instruct = getattr(tokenizer, "instruct", None) or tokenizer.instruct_tokenizer
        encoder = instruct.audio_encoder
        config = encoder.audio_config
        prompt = [int(t) for t in instruct.start()] + [
            int(t) for t in encoder.encode_streaming_tokens()
        ]
        left, right = encoder.get_padding_audio()
        for pad in (left.audio_array, right.audio_array):
            if np.any(pad):
                raise ValueError("the model's padding audio is not silence; cannot frame it")
        rate = int(config.sampling_rate)
        per_token = int(config.raw_audio_length_per_tok)
        if ms_to_samples(rate, 1000 / config.frame_rate) != per_token:
            raise ValueError("the model's frame rate does not match its samples per token")
        get_delay = getattr(config, "get_num_delay_tokens", None)
        delay = get_delay() if callable(get_delay) else config.num_delay_tokens
        return cls(
            sample_rate=rate,
            samples_per_token=per_token,
            look_back=ms_to_samples(rate, config.streaming_look_back_ms),
            look_ahead=ms_to_samples(rate, config.streaming_look_ahead_ms),
            left_pad=len(left.audio_array),
            right_pad=len(right.audio_array),
            prompt_tokens=tuple(prompt),
            delay_tokens=int(delay),
        )


@dataclass(frozen=True, slots=True)
class Frame:
    """One streaming-input chunk: token ids and the audio window, in padded-stream positions."""

    index: int
    token_ids: tuple[int, ...]
    audio: np.ndarray
    """float32 samples ``[window_start, window_start + len(audio))`` of the padded stream."""
    window_start: int
    core_start: int
    core_end: int


Need = Literal["token", "audio", "frame", "done"]


class VoxtralFramer:
    """Turns pushed audio and fed-back tokens into :class:`Frame` objects (sans-I/O).

    Push audio with :meth:`push_audio` and :meth:`end_audio`, feed each model output's token ids
    with :meth:`feed_output`, and take frames with :meth:`next_frame` (``None`` until the next one
    is complete). ``max_model_len``, when given, enables the length guard described in the module
    docstring. Memory stays bounded by what has been pushed and not yet framed.
    """

    def __init__(
        self, spec: StreamSpec, *, max_model_len: int | None = None, max_tokens: int = 1
    ) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if max_model_len is not None and max_model_len < spec.min_model_len(max_tokens):
            raise ValueError(
                f"max_model_len {max_model_len} is too short for a streaming session "
                f"(at least {spec.min_model_len(max_tokens)} tokens)"
            )
        self.spec = spec
        self.max_model_len = max_model_len
        self.max_tokens = max_tokens
        self._tokens: deque[int] = deque(spec.prompt_tokens)
        self._head = np.zeros(0, dtype=np.float32)
        self._head_pos = 0
        self._pending: deque[np.ndarray] = deque()
        self._pending_samples = 0
        self._started = False
        self.ended = False
        self.finished = False
        self.truncated = False
        self.real_end: int | None = None
        """Padded-stream position where real audio ends (known once it has ended)."""
        self.index = 0
        self._core_start = 0
        self._core_end = spec.first_core_end
        self.real_samples_in = 0
        self.real_samples_dropped = 0
        self.prompt_tokens_sent = 0

    # ------------------------------------------------------------------ input

    @property
    def stream_end(self) -> int:
        """Padded-stream position just past the last sample pushed so far."""
        return self._head_pos + len(self._head) + self._pending_samples

    @property
    def buffered_samples(self) -> int:
        """Samples pushed beyond what the next frame needs (what a slow model leaves waiting)."""
        return max(self.stream_end - (self._core_end + self.spec.look_ahead), 0)

    def push_audio(self, chunk: np.ndarray) -> None:
        """Append float32 mono samples at the model's rate; the left padding precedes the first."""
        samples = np.asarray(chunk, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio must be 1-D float32 samples, got shape {samples.shape}")
        if self.ended:
            if self.truncated:
                self.real_samples_dropped += len(samples)
                return
            raise RuntimeError("audio pushed after end_audio()")
        if not len(samples):
            return
        if not self._started:
            self._started = True
            self._append(np.zeros(self.spec.left_pad, dtype=np.float32))
        self._append(samples)
        self.real_samples_in += len(samples)

    def end_audio(self) -> None:
        """The speech is over: append the right padding so its last words get transcribed."""
        if self.ended:
            return
        self.ended = True
        if not self._started:
            self.finished = True  # no audio at all: vLLM frames nothing either
            return
        self.real_end = self.stream_end
        self._append(np.zeros(self.spec.right_pad, dtype=np.float32))

    def feed_output(self, token_ids: Sequence[int]) -> None:
        """Feed one model output back: its last token becomes the next frame's token."""
        if not len(token_ids):
            return
        self._tokens.append(int(token_ids[-1]))
        if len(self._tokens) > MAX_PENDING_TOKENS:
            raise RuntimeError("more model outputs than frames: the feedback loop is out of step")

    # ----------------------------------------------------------------- output

    @property
    def needs(self) -> Need:
        """What the next frame waits for: ``frame`` means it is complete (take it)."""
        if self.finished:
            return "done"
        if self.stream_end < self._core_end + self.spec.look_ahead:
            return "done" if self.ended else "audio"
        if len(self._tokens) < self._tokens_for_next():
            return "token"
        return "frame"

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` if its token or audio has not arrived yet."""
        if self.finished:
            return None
        spec = self.spec
        n_tokens = self._tokens_for_next()
        if not self._guard(n_tokens):
            return None
        window_start = max(self._core_start - spec.look_back, 0)
        window_end = self._core_end + spec.look_ahead
        if self.stream_end < window_end:
            if self.ended:
                self.finished = True
            return None
        if len(self._tokens) < n_tokens:
            return None
        self._fill(window_end)
        assert self._head_pos == window_start, (self._head_pos, window_start)
        audio = self._head[: window_end - window_start].copy()
        tokens = tuple(self._tokens.popleft() for _ in range(n_tokens))
        stride = self._core_end - spec.look_back - window_start
        self._head = self._head[stride:]
        self._head_pos += stride
        frame = Frame(
            index=self.index,
            token_ids=tokens,
            audio=audio,
            window_start=window_start,
            core_start=self._core_start,
            core_end=self._core_end,
        )
        self.index += 1
        self.prompt_tokens_sent += n_tokens
        self._core_start = self._core_end
        self._core_end += spec.samples_per_token
        return frame

    # -------------------------------------------------------------- internals

    def _tokens_for_next(self) -> int:
        return len(self.spec.prompt_tokens) if self.index == 0 else 1

    def _append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._pending.append(samples)
            self._pending_samples += len(samples)

    def _fill(self, until: int) -> None:
        """Move pending chunks into the head until it reaches stream position ``until``."""
        have = self._head_pos + len(self._head)
        if have >= until:
            return
        parts = [self._head]
        while have < until and self._pending:
            chunk = self._pending.popleft()
            self._pending_samples -= len(chunk)
            parts.append(chunk)
            have += len(chunk)
        self._head = np.concatenate(parts)

    def _guard(self, n_tokens: int) -> bool:
        """Keep the sequence within ``max_model_len``; truncate real audio to leave room."""
        if self.max_model_len is None:
            return True
        after = self.prompt_tokens_sent + n_tokens + self.max_tokens
        real = self.real_end is None or self._core_start < self.real_end
        if after + (self.spec.flush_frames if real else 0) <= self.max_model_len:
            return True
        if real and not self.truncated:
            self._truncate()
            return self._guard(n_tokens)
        self.finished = True
        return False

    def _truncate(self) -> None:
        """End the real audio at the next frame's core start and flush from there."""
        cut = self._core_start
        real_start = self.spec.left_pad
        real_stop = real_start + self.real_samples_in
        self.real_samples_dropped += max(real_stop - max(cut, real_start), 0)
        self._fill(cut)
        self._head = self._head[: cut - self._head_pos]
        self._pending.clear()
        self._pending_samples = 0
        self.truncated = True
        self.ended = True
        self.real_end = cut
        self._append(np.zeros(self.spec.right_pad, dtype=np.float32))


class FrameFeeder:
    """The async side of a :class:`VoxtralFramer`: pulls audio, waits for fed-back tokens.

    A background task reads the caller's audio iterator into the framer, pausing while more than
    ``max_buffered_seconds`` of audio beyond the next frame waits (so a slow model pushes back on
    the caller instead of growing memory). :meth:`frames` yields each frame as soon as its audio
    and token are there. The first failure (no audio within ``idle_timeout`` seconds while some
    is wanted, or a broken audio iterator) is kept in :attr:`error` and ends the frames.
    :meth:`aclose` stops the reader and closes the audio iterator.
    """

    def __init__(
        self,
        framer: VoxtralFramer,
        audio: AsyncIterator[np.ndarray],
        *,
        idle_timeout: float | None = None,
        max_buffered_seconds: float = 5.0,
        session: str = "-",
    ) -> None:
        self.framer = framer
        self._audio = audio
        self._idle_timeout = idle_timeout
        self._max_buffered = max(int(max_buffered_seconds * framer.spec.sample_rate), 1)
        self._session = session
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._pump_task: asyncio.Task[None] | None = None
        self._closed = False
        self.error: EngineError | None = None

    async def next_frame(self) -> Frame | None:
        """The next frame, or ``None`` when there will be no more (end, error or close)."""
        if self._pump_task is None and not self._closed:
            self._pump_task = asyncio.create_task(self._pump(), name=f"audio-{self._session}")
        while True:
            if self._closed or self.error is not None:
                return None
            frame = self.framer.next_frame()
            if frame is not None:
                if self.framer.buffered_samples < self._max_buffered:
                    self._space.set()
                return frame
            if self.framer.finished:
                return None
            self._wake.clear()
            await self._wake.wait()

    async def frames(self) -> AsyncIterator[Frame]:
        while (frame := await self.next_frame()) is not None:
            yield frame

    def feed_output(self, token_ids: Sequence[int]) -> None:
        """Feed a model output back (its last token) and wake the frame waiter."""
        self.framer.feed_output(token_ids)
        self._wake.set()

    async def aclose(self) -> None:
        """Stop: end :meth:`frames` and the audio reader; safe to call more than once."""
        self._closed = True
        self._wake.set()
        task, self._pump_task = self._pump_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        close = getattr(self._audio, "aclose", None)
        if callable(close):
            with contextlib.suppress(Exception):
                await close()

    async def _pump(self) -> None:
        framer = self.framer
        try:
            while not framer.ended and not self._closed:
                await self._space.wait()
                if framer.ended or self._closed:
                    break
                deadline = asyncio.timeout(self._idle_timeout)
                try:
                    async with deadline:
                        chunk = await anext(self._audio)
                except StopAsyncIteration:
                    framer.end_audio()
                    break
                except TimeoutError:
                    if not deadline.expired():
                        raise  # the audio source's own timeout, not ours
                    log.info("session %s: no audio for %gs", self._session, self._idle_timeout)
                    self.error = EngineError(
                        f"no audio for {self._idle_timeout:g} s; the session was closed",
                        ErrorCode.IDLE_TIMEOUT,
                    )
                    break
                framer.push_audio(chunk)
                if framer.buffered_samples >= self._max_buffered:
                    self._space.clear()
                self._wake.set()
        except EngineError as exc:
            self.error = exc
        except Exception as exc:
            log.warning("session %s: audio input failed: %s", self._session, exc)
            self.error = EngineError(f"audio input failed: {exc}", ErrorCode.PROCESSING_ERROR)
        finally:
            self._wake.set()
