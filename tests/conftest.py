"""Shared fixtures: the evaluation set, and the real vLLM servers (skipped where absent)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from components.core.evaluation import Clip, eval_dir, load_clips
from tests.support_server import ServerURL, running_server
from tests.support_vllm import (
    ENGINE_ENV,
    PYTHON,
    SERVED_MODEL,
    START_TIMEOUT,
    VllmServer,
    running_vllm_server,
    skip_unless_ready,
)


@pytest.fixture(scope="session")
def clips() -> dict[str, Clip]:
    found = load_clips()
    if not found:
        pytest.skip(f"speech evaluation set not found at {eval_dir()} (set EVAL_DIR)")
    return {c.id: c for c in found}


# ----------------------------------------------------------------------------- real vLLM
# Marked ``vllm``: they need ``make vllm-cpu`` and are skipped without it (failed under
# ``make test-vllm``, where real vLLM is required). Each process is started once per run.


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VllmServer]:
    """vLLM's own OpenAI server (CPU build) on the tiny Voxtral Realtime model."""
    skip_unless_ready()
    with running_vllm_server() as server:
        yield server


@pytest.fixture(scope="session")
def vllm_engine_server() -> Iterator[ServerURL]:
    """``python -m components serve --engine vllm`` under ``.venv-vllm``'s Python, same model."""
    skip_unless_ready()
    with running_server(
        "--engine",
        "vllm",
        "--served-model-name",
        SERVED_MODEL,
        python=PYTHON,
        env=ENGINE_ENV,
        timeout=START_TIMEOUT,
    ) as url:
        yield url
