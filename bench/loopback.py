"""What the benchmarks that time one hop on loopback share (bench/bridge.py, bench/sagemaker.py):
helper processes on free ports, started, waited for and stopped for good, and the percentile of
their round trips.

Standard library only: the benchmarks' own child processes import this module too, and should
load nothing they do not serve.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Return once ``port`` accepts connections; exit the benchmark if ``process`` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a helper process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout:g} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; the pipe it wrote to, if any, is closed."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def bridge_command(port: int, upstream: str) -> list[str]:
    """``python -m container.bridge`` on ``port``, relaying to ``upstream``."""
    return [sys.executable, "-m", "container.bridge", "--port", str(port), "--upstream", upstream]


def percentile(samples: list[float], q: float) -> float:
    """The sample at rank ``q`` % (nearest rank): a value that was measured, not interpolated."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]
