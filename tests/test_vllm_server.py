"""Every client of a vLLM server, against the real one (CPU build) on the tiny Voxtral model.

``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs) is reached by
``RealtimeWSBackend``, by ``python -m components transcribe --url``, and, inside the SageMaker
container, by the bridge: ``container/serve`` with ``ENGINE=vllm`` starts vLLM through
``VLLM_COMMAND`` and the real AWS SDK reaches it through the local SageMaker front (AWS's
router cannot run here; ``components.aws.local_front`` stands in for it). The project's own
server on the real vLLM engine (``python -m components serve --engine vllm``) is reached the
same way. Each path ends in ``transcription.done`` with usage; each failure is a sentence.
The model's weights are random, so its text is letters, not words: these tests check the
paths, not the transcript (the GPU tests check that).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from components.backends.websocket import RealtimeWSBackend
from components.core.audio import float_to_pcm16
from components.core.errors import BackendError, NotFound
from components.core.evaluation import Clip
from components.core.protocol import ServerEvent, TranscriptionDelta, TranscriptionDone
from tests.support_sagemaker import Container, running_container, running_front
from tests.support_server import REPO_ROOT, ServerURL
from tests.support_vllm import (
    CPU_ENV,
    PYTHON,
    SERVED_MODEL,
    SERVER_FLAGS,
    START_TIMEOUT,
    TINY_MODEL,
    VllmServer,
    skip_unless_ready,
)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]  # the first test starts vLLM

CLIP = "librispeech-1089-134686-0001"  # 3.3 s
CHUNK = 3200


@pytest.fixture(scope="module")
def pcm(clips: dict[str, Clip]) -> bytes:
    samples, rate = sf.read(clips[CLIP].path, dtype="float32")
    assert rate == 16_000
    return float_to_pcm16(samples)


async def run(stream: Any, audio: bytes) -> list[ServerEvent]:
    async def send() -> None:
        for at in range(0, len(audio), CHUNK):
            await stream.send_audio(audio[at : at + CHUNK])
        await stream.finish()

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(180):
            return [event async for event in stream]
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


def check_done(events: list[ServerEvent]) -> TranscriptionDone:
    done = events[-1]
    assert isinstance(done, TranscriptionDone), events[-3:]
    text = "".join(e.delta for e in events if isinstance(e, TranscriptionDelta))
    assert done.text == text != ""
    assert done.usage is not None
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    return done


def sm_vllm_env(flags: tuple[str, ...]) -> dict[str, str]:
    """``vllm serve`` flags as the container's ``SM_VLLM_*`` variables."""
    env: dict[str, str] = {}
    at = 0
    while at < len(flags):
        name = "SM_VLLM_" + flags[at].removeprefix("--").replace("-", "_").upper()
        if at + 1 < len(flags) and not flags[at + 1].startswith("--"):
            env[name] = flags[at + 1]
            at += 2
        else:
            env[name] = "true"
            at += 1
    return env


# ------------------------------------------------------------------ vLLM's own server


async def test_realtime_ws_backend_discovers_the_model_and_reaches_done(
    vllm_server: VllmServer, pcm: bytes
) -> None:
    client = RealtimeWSBackend(vllm_server.ws)
    done = check_done(await run(await client.open(), pcm))
    assert client.model == SERVED_MODEL
    # vLLM counts the first frame's prompt only (docs/server.md, differences from vLLM's server).
    assert done.usage is not None and done.usage.prompt_tokens < done.usage.completion_tokens


async def test_an_unknown_model_is_a_sentence_naming_it(
    vllm_server: VllmServer, pcm: bytes
) -> None:
    stream = await RealtimeWSBackend(vllm_server.ws, model="no-such-model").open()
    with pytest.raises(NotFound) as failure:
        await run(stream, pcm)
    message = str(failure.value)
    assert "no-such-model" in message and "Traceback" not in message


def transcribe_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LIVE_CAPTIONS_")}
    return subprocess.run(
        [sys.executable, "-m", "components", "transcribe", *args],
        cwd=REPO_ROOT,
        env={**full_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_transcribe_url_prints_text_and_usage(
    vllm_server: VllmServer, clips: dict[str, Clip]
) -> None:
    path = str(clips[CLIP].path)
    result = transcribe_cli(path, "--url", vllm_server.ws, "--format", "json", "--quiet")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["text"] and body["usage"]["completion_tokens"] > 0
    assert body["audio_seconds"] == pytest.approx(clips[CLIP].seconds, abs=0.05)

    wrong = transcribe_cli(path, "--url", vllm_server.ws, "--model", "nope", "--quiet")
    assert wrong.returncode != 0
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0], wrong.stderr


async def test_silence_and_a_second_request_on_one_socket(vllm_server: VllmServer) -> None:
    """What the page does after Stop, then Record: a fresh request on a fresh stream."""
    client = RealtimeWSBackend(vllm_server.ws, model=SERVED_MODEL)
    silence = np.zeros(16_000, dtype="<i2").tobytes()
    for _ in range(2):
        check_done(await run(await client.open(), silence))


# ------------------------------------------------------------ our server, real engine


async def test_components_serve_on_the_vllm_engine(
    vllm_engine_server: ServerURL, pcm: bytes
) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        models = (await http.get(f"{vllm_engine_server}/v1/models")).json()
        stats = (await http.get(f"{vllm_engine_server}/stats")).json()
    assert models["data"][0]["id"] == SERVED_MODEL
    assert models["data"][0]["root"] == str(TINY_MODEL)
    assert "vLLM, CPU" in stats["engine"]
    client = RealtimeWSBackend(vllm_engine_server.ws)
    done = check_done(await run(await client.open(), pcm))
    deltas = done.usage.completion_tokens if done.usage else 0
    assert done.usage is not None and done.usage.prompt_tokens > deltas  # every prompt token


# -------------------------------------------------------------- SageMaker container


@pytest.fixture(scope="module")
def vllm_container() -> Iterator[Container]:
    """``container/serve`` with ``ENGINE=vllm``: the bridge in front of real vLLM."""
    skip_unless_ready()
    env = {
        **CPU_ENV,
        "VLLM_COMMAND": f"{PYTHON} -m vllm.entrypoints.openai.api_server",
        "SM_MODEL_DIR": str(TINY_MODEL),
        **sm_vllm_env(SERVER_FLAGS),
    }
    with running_container(engine="vllm", env=env, timeout=START_TIMEOUT) as container:
        yield container


def test_the_container_runs_vllm_through_vllm_command(vllm_container: Container) -> None:
    log = vllm_container.log_text()
    assert "vllm.entrypoints.openai.api_server --model" in log
    assert str(TINY_MODEL) in log


async def test_sagemaker_path_through_the_local_front(
    vllm_container: Container, pcm: bytes
) -> None:
    with running_front(vllm_container) as front, front.environ():
        check_done(await run(await front.backend().open(), pcm))
        stream = await front.backend(model="no-such-model").open()
        with pytest.raises(BackendError) as failure:
            await run(stream, pcm)
    message = str(failure.value)
    assert "no-such-model" in message and "Traceback" not in message
