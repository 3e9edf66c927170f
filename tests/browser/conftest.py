"""Real Chromium against the real page: the app in a subprocess, a fake microphone per browser.

Chromium plays a WAV file as its microphone (``--use-file-for-fake-audio-capture``), one file
per browser process, from the moment the page opens the microphone. Clips are padded with
silence before (the recorder needs a moment to start) and after: the page may hold Stop while
chunks are in flight, and the file must not run out (and start over) before Stop. Debian's
``/usr/bin/chromium`` is driven by PyPI ``playwright``; no browser is downloaded. Without
Chromium the tests are skipped, saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from components.core.evaluation import Clip
from tests.support_server import answers_200, free_port, start_logged, stop_process, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
START_TIMEOUT = 120.0
SILENCE_BEFORE = 1.5
SILENCE_AFTER = 8.0  # longer than Stop may be held, so the clip never plays twice


def chromium_args(wav: Path | None) -> list[str]:
    args = [
        "--no-sandbox",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--disable-background-networking",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={wav}%noloop")
    return args


def padded_wav(clip: Clip, directory: Path) -> Path:
    """The clip with silence around it, as 16-bit PCM at its own rate."""
    samples, rate = soundfile.read(clip.path, dtype="int16", always_2d=False)
    if samples.ndim == 2:
        samples = samples.mean(axis=1).astype(np.int16)
    before = np.zeros(int(SILENCE_BEFORE * rate), dtype=np.int16)
    after = np.zeros(int(SILENCE_AFTER * rate), dtype=np.int16)
    path = directory / f"{clip.id}-padded.wav"
    soundfile.write(path, np.concatenate([before, samples, after]), rate, subtype="PCM_16")
    return path


@dataclass
class RunningApp:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def start_app(env: dict[str, str] | None = None) -> RunningApp:
    """``python app.py`` on a free port; returns once the page answers and the engine is ready."""
    port = free_port()
    full_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "LIVE_CAPTIONS_ENGINE": "whisper",
        **(env or {}),
    }
    process, log_path = start_logged(
        [sys.executable, "app.py"], log_prefix="live-captions-app-", env=full_env
    )
    app = RunningApp(f"http://127.0.0.1:{port}", process, log_path)
    needs_engine = full_env.get("LOCAL_BACKEND", "1").lower() not in ("0", "false", "no", "off")

    def ready() -> bool:
        if not answers_200(app.url):
            return False
        return not needs_engine or "local engine ready" in app.log_text()

    try:
        wait_ready(ready, process, log_path, what="app.py", timeout=START_TIMEOUT, every=0.2)
    except BaseException:
        stop_app(app)
        raise
    return app


def stop_app(app: RunningApp) -> None:
    stop_process(app.process)
    app.log_path.unlink(missing_ok=True)


@contextmanager
def running_app(env: dict[str, str] | None = None) -> Iterator[RunningApp]:
    """:func:`start_app` for the length of a ``with`` block."""
    app = start_app(env)
    try:
        yield app
    finally:
        stop_app(app)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """Playwright's sync API, for this module only: it keeps an event loop running in this
    thread, which asyncio tests in later modules could not share."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def app(playwright: Any) -> Iterator[RunningApp]:
    with running_app() as running:
        yield running


@pytest.fixture
def app_url(app: RunningApp, request: pytest.FixtureRequest) -> Iterator[str]:
    """The page's URL; when the test fails, the app's recent log is printed with it."""
    start = len(app.log_text())
    yield app.url
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        lines = app.log_text()[start:].splitlines()
        print("--- app.py log during this test ---")
        print("\n".join(line for line in lines if "httpx" not in line)[-6000:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="module")
def wav_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("padded")


@pytest.fixture
def open_browser(playwright: Any) -> Iterator[Any]:
    """``open_browser(wav)`` launches Chromium with ``wav`` as its microphone; all are closed."""
    browsers: list[Any] = []

    def _open(wav: Path | None) -> Any:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=chromium_args(wav), headless=True
        )
        browsers.append(browser)
        return browser

    yield _open
    for browser in browsers:
        browser.close()
