"""The container's entrypoint: an engine on 127.0.0.1:8081, the bridge on :8080, one supervisor.

SageMaker starts the image as ``<entrypoint> serve`` and from then on only talks to port 8080.
This supervisor starts the bridge first, so that ``/ping`` answers (503) from the first second,
then the engine — ``vllm serve`` (``ENGINE=vllm``, the GPU image) or this project's server on
the embedded Whisper engine (``ENGINE=whisper``, the CPU image) — and waits for the engine's
``/health`` within a deadline below SageMaker's 8-minute limit. SIGTERM/SIGINT are passed to
both; when either child dies the other is stopped and the container exits non-zero, so
SageMaker replaces it instead of keeping a half-alive endpoint.

Only the standard library is imported here: in the GPU image the bridge's packages live apart
from vLLM's (``BRIDGE_PYTHONPATH``) and the supervisor must run without either.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from components.core.env import SettingError, positive, read

log = logging.getLogger("container.serve")

ROOT = Path(__file__).resolve().parent.parent
"""The project root, put on the children's PYTHONPATH."""

DEFAULT_VLLM_MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
DEFAULT_SERVED_MODEL_NAME = "live-captions"
"""The model id clients send in ``session.update``, whichever engine runs (``SERVED_MODEL_NAME``).

The same default as the SageMaker client (``components.backends.sagemaker.client``) and the
deployment, so a client needs no configuration to talk to a container it did not deploy itself."""
ENGINES = ("vllm", "whisper")
SM_VLLM_PREFIX = "SM_VLLM_"
SM_VLLM_RESERVED = frozenset({"MODEL", "HOST", "PORT", "SERVED_MODEL_NAME"})
"""``SM_VLLM_*`` names the entrypoint handles itself (the engine must stay on loopback)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
WEIGHT_FILES = ("config.json", "params.json")
POLL_SECONDS = 0.2
DRAIN_SECONDS = 1.0
"""After the engine dies, the bridge gets this long to tell its clients before it is stopped."""


class SetupError(Exception):
    """A configuration the container cannot start with; the message says what to change."""


# --------------------------------------------------------------------------- configuration


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return positive(name, read(env, name, float, default))
    except SettingError as exc:
        raise SetupError(str(exc)) from None


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        port = read(env, name, int, default)
    except SettingError as exc:
        raise SetupError(str(exc)) from None
    if not 0 < port < 65536:
        raise SetupError(f"{name}={port!r} is not a TCP port")
    return port


@dataclass(frozen=True, slots=True)
class ServeConfig:
    engine: str
    bridge_host: str
    bridge_port: int
    upstream_port: int
    startup_timeout: float
    stop_timeout: float
    served_model_name: str
    model_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServeConfig:
        engine = read(env, "ENGINE", str, "vllm").lower()
        if engine not in ENGINES:
            raise SetupError(f"ENGINE={engine!r}: choose {' or '.join(ENGINES)}")
        config = cls(
            engine=engine,
            bridge_host=read(env, "BRIDGE_HOST", str, "127.0.0.1"),
            bridge_port=_port(env, "BRIDGE_PORT", 8080),
            upstream_port=_port(env, "UPSTREAM_PORT", 8081),
            startup_timeout=_number(env, "UPSTREAM_STARTUP_TIMEOUT", 420.0),
            stop_timeout=_number(env, "SERVE_STOP_TIMEOUT", 15.0),
            served_model_name=(
                read(env, "SERVED_MODEL_NAME", str)
                or read(env, "SM_VLLM_SERVED_MODEL_NAME", str, DEFAULT_SERVED_MODEL_NAME)
            ),
            model_dir=Path(read(env, "SM_MODEL_DIR", str, "/opt/ml/model")),
        )
        if config.bridge_port == config.upstream_port:
            raise SetupError("BRIDGE_PORT and UPSTREAM_PORT must differ")
        return config

    @property
    def upstream_url(self) -> str:
        return f"ws://127.0.0.1:{self.upstream_port}/v1/realtime"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}/health"


# --------------------------------------------------------------------------- commands


def sm_vllm_flags(env: Mapping[str, str]) -> list[str]:
    """``SM_VLLM_FOO_BAR=x`` -> ``--foo-bar x``; ``true`` -> bare flag; ``false``/empty -> none.

    The same convention as the SageMaker vLLM images, so their documented variables work here.
    Sorted by name, so the command line is the same on every start.
    """
    flags: list[str] = []
    for key in sorted(env):
        if not key.startswith(SM_VLLM_PREFIX):
            continue
        suffix = key[len(SM_VLLM_PREFIX) :]
        if not suffix or suffix in SM_VLLM_RESERVED:
            continue
        value = env[key].strip()
        flag = "--" + suffix.lower().replace("_", "-")
        if value.lower() == "true":
            flags.append(flag)
        elif value and value.lower() != "false":
            flags.extend((flag, value))
    return flags


def holds_weights(model_dir: Path) -> bool:
    """True when ``model_dir`` (SageMaker's ``/opt/ml/model``) holds a model to serve."""
    if not model_dir.is_dir():
        return False
    for entry in model_dir.iterdir():
        if entry.name in WEIGHT_FILES or entry.name.endswith(WEIGHT_SUFFIXES):
            return True
    return False


def vllm_command(config: ServeConfig, env: Mapping[str, str]) -> list[str]:
    """vLLM's OpenAI server on loopback: weights from the model directory if there, else by name.

    ``VLLM_COMMAND`` replaces ``vllm serve`` where the console script cannot start vLLM (its CPU
    build, a venv of its own): e.g. ``/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server``.
    Such a command is given the model as ``--model``, which both accept.
    """
    named = env.get("SM_VLLM_MODEL", "").strip() or DEFAULT_VLLM_MODEL
    model = str(config.model_dir) if holds_weights(config.model_dir) else named
    custom = env.get("VLLM_COMMAND", "").strip()
    start = [*shlex.split(custom), "--model", model] if custom else ["vllm", "serve", model]
    return [*start, *_upstream_flags(config), *sm_vllm_flags(env)]


def whisper_command(config: ServeConfig) -> list[str]:
    """This project's Realtime server on the embedded CPU engine, on loopback."""
    serve = [sys.executable, "-m", "components", "serve"]
    return [*serve, *_upstream_flags(config), "--engine", "whisper"]


def _upstream_flags(config: ServeConfig) -> list[str]:
    """Either engine server listens on loopback only, under the served model name."""
    port = str(config.upstream_port)
    return ["--host", "127.0.0.1", "--port", port, "--served-model-name", config.served_model_name]


def bridge_command(config: ServeConfig) -> list[str]:
    return [
        sys.executable,
        "-m",
        "container.bridge",
        "--host",
        config.bridge_host,
        "--port",
        str(config.bridge_port),
        "--upstream",
        config.upstream_url,
    ]


def child_env(env: Mapping[str, str], *extra_paths: str) -> dict[str, str]:
    """The environment for a child: ours, with the project (and ``extra_paths``) importable."""
    paths = [p for p in (*extra_paths, str(ROOT), env.get("PYTHONPATH", "")) if p]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


# --------------------------------------------------------------------------- supervision


class Child:
    """One child process in its own process group, so that stopping it stops its helpers."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        log.info("starting %s: %s", name, shlex.join(command))
        try:
            self.process = subprocess.Popen(list(command), env=dict(env), start_new_session=True)
        except OSError as exc:
            raise SetupError(f"cannot start {name} ({command[0]}): {exc.strerror}") from None

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> int | None:
        return self.process.poll()

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def reap_orphans(ours: set[int]) -> int:
    """Reap exited processes that are not our children; return how many.

    As PID 1 in a container the supervisor inherits every orphan (a helper whose parent died);
    nobody else would collect their exit status, so they would stay zombies. Our own children
    are left for :class:`subprocess.Popen` to reap.
    """
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None or info.si_pid in ours:
            return reaped
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)
        reaped += 1


def stop_children(children: Sequence[Child], timeout: float) -> None:
    """SIGTERM every group, wait up to ``timeout``, SIGKILL what is left; reap everything."""
    for child in children:
        if child.exited() is None:
            child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            child.process.wait(remaining)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %gs; killing it", child.name, timeout)
    for child in children:
        # Also sweeps helpers a child left behind in its group (vLLM's engine processes).
        child.signal_group(signal.SIGKILL)
        child.process.wait()
    reap_orphans(set())


class Supervisor:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.children: list[Child] = []
        self.stop_signal: int | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_signal is None:
            log.info("received %s: stopping the bridge and the engine", signal.strsignal(signum))
        self.stop_signal = signum

    def run(self, engine_command: Sequence[str], env: Mapping[str, str]) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        extra = env.get("BRIDGE_PYTHONPATH", "")
        try:
            bridge_env = child_env(env, extra)
            if self.config.engine == "vllm":
                # vllm serve ignores language and prompt: the bridge answers for it.
                bridge_env.setdefault("BRIDGE_SESSION_OPTIONS", "voxtral")
            bridge = Child("bridge", bridge_command(self.config), bridge_env)
            self.children.append(bridge)
            # The bridge first: /ping answers 503 while the engine loads, from the first second.
            code = self._wait(self._bridge_listening, 60.0, "the bridge to listen")
            if code is not None:
                return code
            engine = Child(f"engine ({self.config.engine})", engine_command, child_env(env))
            self.children.append(engine)
            started = time.monotonic()
            timeout = self.config.startup_timeout
            code = self._wait(self._engine_healthy, timeout, "engine health")
            if code is not None:
                return code
            log.info(
                "engine healthy after %.1fs; streams are served on %s:%d",
                time.monotonic() - started,
                self.config.bridge_host,
                self.config.bridge_port,
            )
            return self._watch()
        except SetupError as exc:
            log.error("%s", exc)
            return 2
        finally:
            stop_children(self.children, self.config.stop_timeout)

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> int | None:
        """Poll ``ready()`` until true; an exit code when a child dies, a signal or the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            if (code := self._check()) is not None:
                return code
            if ready():
                return None
            if time.monotonic() >= deadline:
                log.error(
                    "gave up waiting for %s after %gs (UPSTREAM_STARTUP_TIMEOUT)", what, timeout
                )
                return 1
            time.sleep(POLL_SECONDS)

    def _watch(self) -> int:
        while True:
            if (code := self._check()) is not None:
                return code
            time.sleep(POLL_SECONDS)

    def _check(self) -> int | None:
        """An exit code when the container must stop now, else ``None``."""
        reap_orphans({child.pid for child in self.children})
        if self.stop_signal is not None:
            return 0
        for child in self.children:
            code = child.exited()
            if code is None:
                continue
            log.error("%s exited with code %d; stopping the container", child.name, code)
            if child.name != "bridge":
                time.sleep(DRAIN_SECONDS)  # let the bridge tell its clients the engine is gone
            return code if code > 0 else 1
        return None

    def _bridge_listening(self) -> bool:
        host = self.config.bridge_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        try:
            with socket.create_connection((host, self.config.bridge_port), timeout=1.0):
                return True
        except OSError:
            return False

    def _engine_healthy(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.config.health_url, timeout=2.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False


# --------------------------------------------------------------------------- main


def engine_command(config: ServeConfig, env: Mapping[str, str]) -> list[str]:
    if config.engine == "whisper":
        return whisper_command(config)
    command = vllm_command(config, env)
    if shutil.which(command[0], path=env.get("PATH")) is None:
        if env.get("VLLM_COMMAND", "").strip():
            raise SetupError(f"VLLM_COMMAND: {command[0]} is not an executable here")
        raise SetupError(
            "ENGINE=vllm but the vllm command is not installed here; use the GPU image, "
            "set VLLM_COMMAND to a command that starts vLLM's OpenAI server, "
            "or use ENGINE=whisper for the embedded CPU engine"
        )
    return command


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="container/serve",
        description="Start the engine on 127.0.0.1:UPSTREAM_PORT and the SageMaker bridge.",
    )
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"])
    parser.add_argument("--dry-run", action="store_true", help="print the two commands and exit")
    args = parser.parse_args(argv)
    env = dict(os.environ if env is None else env)
    logging.basicConfig(
        level=env.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = ServeConfig.from_env(env)
        command = engine_command(config, env)
    except SetupError as exc:
        log.error("%s", exc)
        return 2
    for key in ("SM_VLLM_HOST", "SM_VLLM_PORT"):
        if env.get(key):
            log.warning(
                "%s is ignored: the engine stays on 127.0.0.1:%d", key, config.upstream_port
            )
    if args.dry_run:
        print(shlex.join(command))
        print(shlex.join(bridge_command(config)))
        return 0
    return Supervisor(config).run(command, env)
