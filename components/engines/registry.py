"""Choosing an engine by name, importing heavy parts only when chosen.

``auto`` prefers the in-process vLLM GPU engine when vLLM and a CUDA GPU are both present and
falls back to the embedded CPU engine otherwise; the returned note says which and why, so the
page and the server log can tell the user.
"""

from __future__ import annotations

import logging

from components.engines.base import Engine, EngineUnavailable

log = logging.getLogger(__name__)

ENGINE_KINDS = ("auto", "whisper", "vllm")


def create_engine(kind: str = "auto") -> tuple[Engine, str]:
    """Build the engine named ``kind``; return it with a one-line note for the user.

    Raises :class:`EngineUnavailable` naming what is missing when ``kind`` is ``vllm`` and the
    GPU engine cannot run here, and ``ValueError`` for an unknown kind.
    """
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}")
    if kind in ("auto", "vllm"):
        from components.engines.vllm import engine as vllm_engine  # imports vLLM lazily

        try:
            engine = vllm_engine.VllmEngine.from_env()
            return engine, f"{engine.name}"
        except EngineUnavailable as exc:
            if kind == "vllm":
                raise
            note = f"GPU engine not available ({exc.message}); using the embedded CPU engine"
            log.info(note)
    else:
        note = ""
    from components.engines.whisper.engine import WhisperEngine

    engine = WhisperEngine.from_env()
    return engine, note or engine.name
