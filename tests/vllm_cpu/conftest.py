"""One real vLLM engine (CPU build, tiny Voxtral Realtime model) for every in-process test.

These tests import vLLM, so they run under ``.venv-vllm``'s Python (``make test-vllm``);
anywhere else they are skipped with the reason. The engine is started once for the whole run
(about 40 s) on a background event loop: ``VllmEngine`` serves the loop that first uses it,
and the servers of ``test_server.py`` must share that loop. Tests call ``bg.run(coroutine)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support_vllm import ENGINE_ENV, skip_unless_ready

MAX_MODEL_LEN = 1024
"""Tokens per session here: 1024 × 80 ms ≈ 80 s of audio, so the length guard is quick to reach."""
IDLE_TIMEOUT = 3.0
"""The engine's own idle timeout; every test's audio comes without pauses."""


@dataclass
class Observed:
    """What vLLM itself reported for each request the engine made (its own counts)."""

    outputs: dict[str, list[Any]] = field(default_factory=dict)
    most_running: int = 0

    def prompt_tokens(self, request_id: str) -> int:
        return len(self.outputs[request_id][-1].prompt_token_ids)

    def completion_tokens(self, request_id: str) -> int:
        return sum(len(o.outputs[0].token_ids) for o in self.outputs[request_id] if o.outputs)

    def text(self, request_id: str) -> str:
        return "".join(o.outputs[0].text for o in self.outputs[request_id] if o.outputs)


@pytest.fixture(scope="session")
def bg() -> Iterator[Any]:
    skip_unless_ready(in_process=True)
    from tests.support_server import BackgroundLoop

    with BackgroundLoop() as loop:
        yield loop


@pytest.fixture(scope="session")
def engine(bg: Any) -> Iterator[Any]:
    """The project's ``VllmEngine`` over a real ``AsyncLLM`` on the tiny model."""
    env = {
        **ENGINE_ENV,
        "LIVE_CAPTIONS_VLLM_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
        "LIVE_CAPTIONS_VLLM_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    from components.engines.vllm.engine import VllmEngine

    async def build() -> Any:
        return VllmEngine.from_env()

    try:
        built = bg.run(build(), timeout=600)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield built
    bg.run(built.aclose())


@pytest.fixture
def observed(engine: Any) -> Iterator[Observed]:
    """Record every ``RequestOutput`` vLLM hands the engine (a pass-through, not a stand-in)."""
    llm = engine.llm
    real_generate = llm.generate
    seen = Observed()

    def generate(*args: Any, **kwargs: Any) -> Any:
        request_id = kwargs["request_id"]
        seen.outputs[request_id] = []
        stream = real_generate(*args, **kwargs)

        async def relay() -> Any:
            try:
                async for output in stream:
                    seen.outputs[request_id].append(output)
                    seen.most_running = max(seen.most_running, unfinished(engine))
                    yield output
            finally:
                await stream.aclose()

        return relay()

    llm.generate = generate
    try:
        yield seen
    finally:
        del llm.generate


def unfinished(engine: Any) -> int:
    """Requests vLLM's engine still holds (its own count, not the project's)."""
    return int(engine.llm.get_num_unfinished_requests())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first test here starts vLLM (40 s quiet, minutes on a loaded machine)."""
    for item in items:
        if "vllm_cpu" in item.nodeid:
            item.add_marker(pytest.mark.timeout(900))
