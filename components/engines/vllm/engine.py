"""The in-process GPU engine: Voxtral Realtime on vLLM's ``AsyncLLM`` with streaming input.

No server process and no JSON on the hot path: each session is one vLLM request whose prompt is
an async generator of chunks (audio frame + token), and the engine's text deltas come straight
back as :class:`~components.core.protocol.TranscriptionDelta`. One ``AsyncLLM`` serves every
session; vLLM batches them on the GPU.

Importing this module is cheap: vLLM (and torch) are imported only by :meth:`VllmEngine.from_env`,
after it has checked that vLLM is installed and a CUDA GPU is present; otherwise it raises
:class:`~components.engines.base.EngineUnavailable` with a one-line reason, so ``auto`` can fall
back to the CPU engine.

It drives vLLM exactly as vLLM 0.32's own ``/v1/realtime`` does (0.33 keeps those files as they are)
(``vllm/entrypoints/speech_to_text/realtime/connection.py`` ``_run_generation`` and
``serving.py`` ``transcribe_realtime``), with the framing of ``buffer_realtime_audio`` done by
:mod:`components.engines.vllm.voxtral`. The vLLM calls relied on:

* ``AsyncEngineArgs(...)`` and ``AsyncLLM.from_engine_args(args)``; ``llm.model_config``,
  ``llm.renderer``, ``llm.generate``, ``llm.abort``, ``llm.shutdown``.
* ``get_model_cls(model_config)``: ``supports_realtime`` and ``realtime_max_tokens``.
* ``cached_tokenizer_from_config(model_config).instruct`` (mistral_common): the streaming prompt,
  padding and look-back/ahead (:meth:`StreamSpec.from_tokenizer`).
* Per frame: ``TokensPrompt(prompt_token_ids=..., multi_modal_data={"audio": (samples, None)})``,
  ``parse_model_prompt(model_config, prompt)``, ``(engine_input,) = await
  renderer.render_cmpl_async([parsed])``, ``StreamingInput(prompt=engine_input)``.
* ``SamplingParams(temperature=0.0, max_tokens=realtime_max_tokens, output_kind=DELTA)``;
  each output's ``outputs[0].text`` is a delta and the last of ``outputs[0].token_ids`` is fed
  back as the next frame's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.core.languages import VOXTRAL_REALTIME_LANGUAGES
from components.core.protocol import (
    NO_OPTIONS,
    ErrorCode,
    SessionOptions,
    TranscriptEvent,
    TranscriptionDelta,
    TranscriptionDone,
    Usage,
)
from components.engines.base import EngineError, EngineUnavailable, check_engine_options
from components.engines.vllm.settings import (
    COMPILATION_CONFIG,
    CPU_KVCACHE_GIB,
    TESTED_VLLM,
    TESTED_VLLM_CPU,
    VllmSettings,
    missing_requirements,
    resolve_model,
    vllm_version,
)
from components.engines.vllm.voxtral import Frame, FrameFeeder, StreamSpec, VoxtralFramer

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------- vLLM API


def _first_attr(*places: tuple[str, str]) -> Any:
    """The first of ``(module, name)`` that imports: vLLM moves internals between releases."""
    for module, name in places:
        try:
            return getattr(importlib.import_module(module), name)
        except AttributeError:
            continue
        except ImportError as exc:
            if exc.name and (module == exc.name or module.startswith(f"{exc.name}.")):
                continue  # this release keeps it elsewhere
            raise EngineUnavailable(f"vLLM cannot be imported: {_one_line(exc)}") from exc
        except Exception as exc:  # e.g. a CUDA/torch mismatch raised at import time
            raise EngineUnavailable(f"vLLM cannot be imported: {_one_line(exc)}") from exc
    module, name = places[0]
    raise EngineUnavailable(
        f"this vLLM ({vllm_version()}) has no {module}.{name}; "
        f"install vllm=={TESTED_VLLM} (requirements-gpu.txt)"
    )


@dataclass(frozen=True, slots=True)
class _VllmApi:
    """The vLLM names this engine uses, resolved once (old paths first, then newer ones)."""

    AsyncEngineArgs: Any
    AsyncLLM: Any
    SamplingParams: Any
    RequestOutputKind: Any
    StreamingInput: Any
    TokensPrompt: Any
    parse_model_prompt: Any
    get_model_cls: Any
    cached_tokenizer_from_config: Any | None

    @classmethod
    def load(cls) -> _VllmApi:
        tokenizer = None
        with contextlib.suppress(EngineUnavailable):
            tokenizer = _first_attr(
                ("vllm.tokenizers", "cached_tokenizer_from_config"),
                ("vllm.frontend.processing.tokenizers", "cached_tokenizer_from_config"),
            )
        return cls(
            AsyncEngineArgs=_first_attr(("vllm.engine.arg_utils", "AsyncEngineArgs")),
            AsyncLLM=_first_attr(("vllm.v1.engine.async_llm", "AsyncLLM")),
            SamplingParams=_first_attr(
                ("vllm.sampling_params", "SamplingParams"),
                ("vllm.frontend.processing.sampling_params", "SamplingParams"),
            ),
            RequestOutputKind=_first_attr(
                ("vllm.sampling_params", "RequestOutputKind"),
                ("vllm.frontend.processing.sampling_params", "RequestOutputKind"),
            ),
            StreamingInput=_first_attr(
                ("vllm.engine.protocol", "StreamingInput"),
                ("vllm.frontend.compat.engine.protocol", "StreamingInput"),
            ),
            TokensPrompt=_first_attr(
                ("vllm.inputs", "TokensPrompt"), ("vllm.frontend.processing.inputs", "TokensPrompt")
            ),
            parse_model_prompt=_first_attr(
                ("vllm.renderers.inputs.preprocess", "parse_model_prompt"),
                ("vllm.frontend.processing.renderers.inputs.preprocess", "parse_model_prompt"),
            ),
            get_model_cls=_first_attr(("vllm.model_executor.model_loader", "get_model_cls")),
            cached_tokenizer_from_config=tokenizer,
        )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0][:300] if text else ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def engine_arguments(settings: VllmSettings, source: str) -> dict[str, Any]:
    """``AsyncEngineArgs`` for Voxtral Realtime: what ``vllm serve`` is given for it."""
    arguments: dict[str, Any] = {
        "model": source,
        "tokenizer_mode": "mistral",
        "config_format": "mistral",
        "load_format": "mistral",
        "max_model_len": settings.max_model_len,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_num_seqs": settings.max_num_seqs,
        "enforce_eager": settings.enforce_eager,
        "limit_mm_per_prompt": {"audio": 1},
    }
    if not settings.on_cpu:
        arguments["compilation_config"] = dict(COMPILATION_CONFIG)
    if settings.dtype != "auto":
        arguments["dtype"] = settings.dtype
    return arguments


# ------------------------------------------------------------------------------------ engine

Prepare = Callable[[Frame], Awaitable[Any]]


class VllmEngine:
    """Voxtral Realtime on one shared in-process ``AsyncLLM`` (see the module docstring).

    Each :meth:`transcribe` call is one streaming-input request. Sessions beyond
    ``max_sessions`` are refused with ``server_busy``; a session without audio for
    ``idle_timeout`` seconds ends with ``idle_timeout``; one whose audio would outgrow the
    model's ``max_model_len`` is transcribed up to that point and ends with
    ``session_too_long``. The engine serves the event loop that first uses it.
    """

    def __init__(
        self,
        llm: Any,
        *,
        model: str,
        spec: StreamSpec,
        prepare: Prepare,
        sampling_params: Callable[[], Any],
        max_model_len: int,
        max_tokens: int = 1,
        max_sessions: int = 16,
        idle_timeout: float | None = 60.0,
        device: str = "cuda",
    ) -> None:
        VoxtralFramer(spec, max_model_len=max_model_len, max_tokens=max_tokens)  # validates
        self.model = model
        where = "CPU" if device == "cpu" else "GPU"
        self.name = f"Voxtral Realtime {model.rsplit('/', 1)[-1]} (vLLM, {where})"
        self.max_sessions = max_sessions
        self.languages = VOXTRAL_REALTIME_LANGUAGES
        """Accepted in ``session.update``; the model finds the spoken one among them itself."""
        self.takes_prompt = False
        """vLLM 0.32's realtime input has no text prompt to put names and terms in."""
        self._llm = llm
        self._spec = spec
        self._prepare = prepare
        self._sampling_params = sampling_params
        self._max_model_len = max_model_len
        self._max_tokens = max_tokens
        self._idle_timeout = idle_timeout
        self._active: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # --------------------------------------------------------------- building

    @classmethod
    def from_env(cls) -> VllmEngine:
        """Build from ``VLLM_*`` variables; EngineUnavailable names whatever is missing."""
        settings = VllmSettings.from_env()
        problems = missing_requirements(settings.device)
        if problems:
            raise EngineUnavailable("; ".join(problems))
        return cls.start(settings, resolve_model(settings))

    @classmethod
    def start(cls, settings: VllmSettings, source: str) -> VllmEngine:
        """Import vLLM, load the model from ``source`` onto the device and wrap it."""
        if settings.on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
        api = _VllmApi.load()  # the first import of vLLM (and torch)
        version = vllm_version()
        tested = f"{TESTED_VLLM_CPU}+cpu" if settings.on_cpu else TESTED_VLLM
        if version != tested:
            log.warning("vLLM %s found; this engine is tested with %s", version, tested)
        log.info("starting vLLM %s with %s (from %s)", version, settings.model, source)
        try:
            args = api.AsyncEngineArgs(**engine_arguments(settings, source))
            llm = api.AsyncLLM.from_engine_args(args)
        except Exception as exc:
            raise EngineUnavailable(
                f"vLLM could not start {settings.model}: {_one_line(exc)}"
            ) from exc
        try:
            return cls._wrap(llm, api, settings)
        except BaseException:
            llm.shutdown()
            raise

    @classmethod
    def _wrap(cls, llm: Any, api: _VllmApi, settings: VllmSettings) -> VllmEngine:
        try:
            model_config = llm.model_config
            model_cls = api.get_model_cls(model_config)
            if not getattr(model_cls, "supports_realtime", False):
                raise EngineUnavailable(
                    f"{settings.model} ({model_cls.__name__}) is not a realtime speech model"
                )
            max_tokens = int(getattr(model_cls, "realtime_max_tokens", 1))
            if api.cached_tokenizer_from_config is not None:
                tokenizer = api.cached_tokenizer_from_config(model_config)
            else:
                tokenizer = llm.renderer.get_tokenizer()
            spec = StreamSpec.from_tokenizer(tokenizer)
            max_model_len = int(model_config.max_model_len)
            VoxtralFramer(spec, max_model_len=max_model_len, max_tokens=max_tokens)  # fits?
            renderer = llm.renderer
            render_args = _render_args(renderer, max_model_len, max_tokens)
        except EngineUnavailable:
            raise
        except Exception as exc:
            raise EngineUnavailable(
                f"vLLM loaded {settings.model} but cannot stream it: {_one_line(exc)}"
            ) from exc

        async def prepare(frame: Frame) -> Any:
            prompt = api.TokensPrompt(
                prompt_token_ids=list(frame.token_ids),
                multi_modal_data={"audio": (frame.audio, None)},
            )
            parsed = api.parse_model_prompt(model_config, prompt)
            (engine_input,) = await renderer.render_cmpl_async([parsed], *render_args)
            return api.StreamingInput(prompt=engine_input)

        def sampling_params() -> Any:
            return api.SamplingParams(
                temperature=0.0,
                max_tokens=max_tokens,
                output_kind=api.RequestOutputKind.DELTA,
            )

        log.info(
            "vLLM engine ready on the %s: %s, max_model_len %d (about %.0f min of audio per "
            "session), %d sessions",
            settings.device.upper(),
            settings.model,
            max_model_len,
            spec.max_audio_seconds(max_model_len, max_tokens) / 60,
            settings.max_num_seqs,
        )
        return cls(
            llm,
            model=settings.model,
            spec=spec,
            prepare=prepare,
            sampling_params=sampling_params,
            max_model_len=max_model_len,
            max_tokens=max_tokens,
            max_sessions=settings.max_num_seqs,
            idle_timeout=settings.idle_timeout,
            device=settings.device,
        )

    # ------------------------------------------------------------- streaming

    async def transcribe(
        self,
        audio: AsyncIterator[np.ndarray],
        *,
        partials: bool = False,
        options: SessionOptions = NO_OPTIONS,
    ) -> AsyncIterator[TranscriptEvent]:
        """Transcribe one stream. Voxtral's deltas are final, so ``partials`` changes nothing.

        A ``language`` among :attr:`languages` is accepted as a statement of what will be
        spoken; Voxtral Realtime recognises the language on its own.
        """
        session = uuid.uuid4().hex[:12]
        check_engine_options(self, options)
        self._check_usable()
        if len(self._active) >= self.max_sessions:
            log.info("session %s: refused, %d sessions active", session, len(self._active))
            raise EngineError(
                f"all {self.max_sessions} GPU transcription sessions are in use; try again later",
                ErrorCode.SERVER_BUSY,
            )
        request_id = f"captions-{session}"
        self._active.add(request_id)
        framer = VoxtralFramer(
            self._spec, max_model_len=self._max_model_len, max_tokens=self._max_tokens
        )
        feeder = FrameFeeder(framer, audio, idle_timeout=self._idle_timeout, session=session)
        outputs: Any = None
        finished = False
        try:
            first = await feeder.next_frame()
            if first is None:
                if feeder.error is not None:
                    raise feeder.error
                log.info("session %s: the audio was empty", session)
                finished = True
                yield TranscriptionDone(text="", usage=Usage())
                return
            log.info("session %s: request %s started", session, request_id)
            outputs = self._llm.generate(
                prompt=self._chunks(first, feeder),
                sampling_params=self._sampling_params(),
                request_id=request_id,
            )
            parts: list[str] = []
            completion_tokens = 0
            async for output in outputs:
                if not output.outputs:
                    continue
                result = output.outputs[0]
                token_ids = list(result.token_ids)
                completion_tokens += len(token_ids)
                feeder.feed_output(token_ids)
                if result.text:
                    parts.append(result.text)
                    yield TranscriptionDelta(delta=result.text)
            finished = True
            if feeder.error is not None:
                raise feeder.error
            if framer.truncated:
                raise EngineError(self._too_long_message(), ErrorCode.SESSION_TOO_LONG)
            usage = Usage(
                prompt_tokens=framer.prompt_tokens_sent, completion_tokens=completion_tokens
            )
            log.info(
                "session %s: done, %.1f s of audio, %d frames, %d tokens",
                session,
                framer.real_samples_in / self._spec.sample_rate,
                framer.index,
                usage.total_tokens,
            )
            yield TranscriptionDone(text="".join(parts), usage=usage)
        except EngineError as exc:
            log.info("session %s: ended with %s: %s", session, exc.code, exc.message)
            raise
        except Exception as exc:
            log.error("session %s: GPU engine failure: %s", session, _one_line(exc))
            raise EngineError(
                f"the GPU engine failed: {_one_line(exc)}", ErrorCode.PROCESSING_ERROR
            ) from exc
        finally:
            await feeder.aclose()
            if outputs is not None:
                with contextlib.suppress(Exception):
                    await outputs.aclose()
                if not finished:
                    with contextlib.suppress(Exception):
                        await self._llm.abort(request_id)
                    log.info("session %s: request %s aborted", session, request_id)
            self._active.discard(request_id)

    async def _chunks(self, first: Frame, feeder: FrameFeeder) -> AsyncIterator[Any]:
        """The request's prompt: each frame rendered for the engine as soon as it is complete."""
        yield await self._prepare(first)
        async for frame in feeder.frames():
            yield await self._prepare(frame)

    def _check_usable(self) -> None:
        if self._closed:
            raise EngineError("the GPU engine has been shut down", ErrorCode.PROCESSING_ERROR)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise EngineError(
                "the GPU engine serves the event loop that first used it; "
                "use one event loop per process",
                ErrorCode.PROCESSING_ERROR,
            )

    def _too_long_message(self) -> str:
        seconds = self._spec.max_audio_seconds(self._max_model_len, self._max_tokens)
        amount = f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.0f} seconds"
        return (
            f"session reached the model's maximum length (about {amount} of audio); "
            "start a new session"
        )

    @property
    def max_stream_seconds(self) -> float:
        """Audio one request can hold before the model's maximum length (``session_too_long``)."""
        return self._spec.max_audio_seconds(self._max_model_len, self._max_tokens)

    @property
    def active_sessions(self) -> int:
        return len(self._active)

    @property
    def spec(self) -> StreamSpec:
        """The framing read from the model's tokenizer."""
        return self._spec

    @property
    def llm(self) -> Any:
        """The shared ``AsyncLLM`` (for diagnostics and the GPU tests)."""
        return self._llm

    async def aclose(self) -> None:
        """Abort every running request and shut the engine (and its GPU process) down."""
        if self._closed:
            return
        self._closed = True
        for request_id in list(self._active):
            with contextlib.suppress(Exception):
                await self._llm.abort(request_id)
        shutdown = getattr(self._llm, "shutdown", None)
        if callable(shutdown):
            shutdown()
        log.info("GPU engine shut down")


def _render_args(renderer: Any, max_model_len: int, max_tokens: int) -> tuple[Any, ...]:
    """Extra positional arguments for ``render_cmpl_async``: none in vLLM 0.32 and 0.33.

    Some vLLM releases made the tokenization parameters mandatory; give them the same limits
    vLLM's realtime serving passes there.
    """
    try:
        parameter = inspect.signature(renderer.render_cmpl_async).parameters.get("tok_params")
    except (TypeError, ValueError):
        return ()
    if parameter is None or parameter.default is not inspect.Parameter.empty:
        return ()
    tokenize_params = _first_attr(("vllm.renderers.params", "TokenizeParams"))
    return (
        tokenize_params(
            max_total_tokens=max_model_len, max_output_tokens=max_tokens, add_special_tokens=False
        ),
    )
