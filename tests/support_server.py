"""Run the real realtime server (``python -m components serve``) as a subprocess for tests.

    from tests.support_server import running_server, server_fixture

    with running_server("--engine", "whisper", "--max-sessions", "2") as url:
        url            # "http://127.0.0.1:PORT" (a str)
        url.ws         # "ws://127.0.0.1:PORT/v1/realtime"
        url.port, url.process, url.log_text()

    server = server_fixture("--engine", "whisper")            # a module-scoped fixture
    def test_x(server): ...

For tests that must look inside the server (its live counters), :class:`BackgroundLoop` and
:func:`serve_app` run an app from ``components.server.app.create_app`` under uvicorn in this
process, on an event loop in a thread of its own:

    with BackgroundLoop() as bg, serve_app(bg, app) as url: ...

The server binds a free loopback port, the helper waits for ``GET /health`` to answer 200
(the engine is loaded by then) and terminates it (SIGTERM, then SIGKILL) on exit. Its output
goes to a log file whose tail is shown if it fails to start.

The other process helpers (``support_sagemaker``, ``support_vllm``, the browser tests' app)
start theirs the same way: :func:`start_logged`, then :func:`wait_ready`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0


class ServerURL(str):
    """The server's base URL, carrying its port, process and log."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def __new__(cls, port: int, process: subprocess.Popen[bytes], log_path: Path) -> ServerURL:
        url = super().__new__(cls, f"http://127.0.0.1:{port}")
        url.port = port
        url.process = process
        url.log_path = log_path
        return url

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` of a process's log, for the message of a test it fails."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_logged(
    command: Sequence[str],
    *,
    log_prefix: str,
    env: Mapping[str, str],
    pipe_stdout: bool = False,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``command`` from the repository, its output in a new log file; return both.

    The log takes stdout and stderr, or with ``pipe_stdout`` stderr alone, stdout being a pipe
    the caller reads. The caller stops the process and removes the log.
    """
    fd, name = tempfile.mkstemp(prefix=log_prefix, suffix=".log")
    log_path = Path(name)
    try:
        with os.fdopen(fd, "wb") as log:
            process = subprocess.Popen(
                list(command),
                cwd=REPO_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_stdout else log,
                stderr=log if pipe_stdout else subprocess.STDOUT,
                **popen,
            )
    except BaseException:
        log_path.unlink(missing_ok=True)
        raise
    return process, log_path


def wait_ready(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    log_path: Path,
    *,
    what: str,
    timeout: float,
    every: float = 0.1,
    lines: int = 30,
) -> None:
    """Poll ``ready()`` until it holds. A process that exits first, or a deadline passed, fails
    the test with the tail of the log, which says why far better than a timeout alone."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with status {process.returncode} before it was healthy:\n"
                + log_tail(log_path, lines)
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} was not healthy within {timeout:g} s:\n" + log_tail(log_path, lines)
            )
        time.sleep(every)


def answers_200(url: str, timeout: float = 1.0) -> bool:
    """Whether ``GET url`` answers 200 now (nothing listening counts as no)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, wait, then SIGKILL: the process is gone when this returns."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextmanager
def running_server(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    python: str | os.PathLike[str] = sys.executable,
) -> Iterator[ServerURL]:
    """Start ``python -m components serve ARGS`` on a free port; yield its URL; stop it.

    ``python`` is the interpreter to run it with (the real-vLLM tests use ``.venv-vllm``'s).
    """
    port = free_port()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [str(python), "-m", "components", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), *args]
    process, log_path = start_logged(
        command,
        log_prefix="live-captions-server-",
        env=full_env,
        start_new_session=True,  # its own group: helpers it forks go with it
    )
    try:
        url = ServerURL(port, process, log_path)
        wait_ready(
            lambda: answers_200(f"{url}/health"),
            process,
            log_path,
            what="the server",
            timeout=timeout,
        )
        yield url
    finally:
        stop_process(process)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever outlived it
        log_path.unlink(missing_ok=True)


def server_fixture(
    *args: str, scope: Any = "module", env: Mapping[str, str] | None = None
) -> Callable[..., Any]:
    """A pytest fixture (module-scoped by default) yielding a running server's URL."""

    @pytest.fixture(scope=scope)
    def _server() -> Iterator[ServerURL]:
        with running_server(*args, env=env) as url:
            yield url

    return _server


class BackgroundLoop:
    """An asyncio loop running in a daemon thread, to host servers inside the test process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = 120.0) -> Any:
        """Run ``coro`` on the background loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> BackgroundLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def serve_app(
    bg: BackgroundLoop, app: Any, timeout: float = 30.0, port: int | None = None
) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on ``bg``'s loop at ``port`` (default: a free one);
    yield its base URL."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    future = asyncio.run_coroutine_threadsafe(server.serve(), bg.loop)
    deadline = time.monotonic() + timeout
    while not server.started:
        if future.done():
            future.result()  # raises the startup failure
            raise RuntimeError("the in-process server stopped before it started")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the in-process server did not start within {timeout:g} s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        future.result(timeout + 10)
