"""Caption sessions with the real engine: exact audio accounting, stop, limits, readable errors.

The local backend is the real ``LocalBackend`` over the real Whisper engine (bundled tiny.en);
the Realtime backend talks to a real ``python -m components serve`` on a free loopback port.
A thin pass-through around the real backend keeps a copy of the PCM sent, so the test can
compare the engine's input with resampling the whole recording at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import soxr

from components.core.audio import float_to_pcm16, load_file
from components.core.errors import BackendError
from components.core.evaluation import Clip, wer
from components.core.metrics import render
from components.core.protocol import NO_OPTIONS
from components.page.manager import SessionManager
from components.page.session import CaptionSession
from components.page.settings import (
    BackendChoice,
    BackendKind,
    InvalidChoice,
    Settings,
    validate_choice,
)
from components.page.view import SessionState
from tests.support_metrics import value
from tests.support_relay import TcpRelay
from tests.support_server import free_port, running_server

LOCAL = BackendChoice(BackendKind.LOCAL)
CLIP_ID = (
    "librispeech-1089-134686-0000"  # 10.4 s, ends "... in thick peppered flour fattened sauce"
)
SHORT_ID = "librispeech-1089-134691-0000"  # 2.1 s, "he could wait no longer"
GOSPEL_ID = "librispeech-1272-128104-0000"  # 5.9 s, ends "... to welcome his gospel"


class _TapStream:
    """Pass-through around a real stream that keeps a copy of every PCM16 chunk sent."""

    def __init__(self, stream: Any, sink: list[bytes]) -> None:
        self._stream = stream
        self._sink = sink

    async def send_audio(self, pcm16: bytes) -> None:
        self._sink.append(pcm16)
        await self._stream.send_audio(pcm16)

    async def finish(self) -> None:
        await self._stream.finish()

    async def cancel(self) -> None:
        await self._stream.cancel()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._stream.__aiter__()


class _TapBackend:
    def __init__(self, backend: Any, sink: list[bytes]) -> None:
        self._backend = backend
        self._sink = sink
        self.name = backend.name

    async def open(self, *, partials: bool = False, options: Any = None) -> _TapStream:
        stream = await self._backend.open(partials=partials, options=options or NO_OPTIONS)
        return _TapStream(stream, self._sink)


class TappedManager(SessionManager):
    """The real manager; each session's backend is wrapped so its audio can be inspected."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sent: dict[str, list[bytes]] = {}

    async def acquire_backend(self, choice: BackendChoice, session_id: str) -> Any:
        backend = await super().acquire_backend(choice, session_id)
        return _TapBackend(backend, self.sent.setdefault(session_id, []))


def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"local_engine": "whisper", "max_sessions": 4}
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="module")
def manager() -> Iterator[TappedManager]:
    m = TappedManager(_settings())
    m.load_engine().result(timeout=120)
    yield m
    m.shutdown()


@pytest.fixture(scope="module")
def browser_like(clips: dict[str, Clip]) -> tuple[np.ndarray, str]:
    """The long clip as a browser records it: 48 kHz, stereo, int16; and its reference."""
    clip = clips[CLIP_ID]
    mono16k = load_file(str(clip.path))
    mono48k = soxr.resample(mono16k, 16_000, 48_000, quality="HQ")
    left = np.clip(mono48k * 32767, -32768, 32767).astype(np.int16)
    right = np.clip(mono48k * 0.9 * 32767, -32768, 32767).astype(np.int16)
    return np.stack([left, right], axis=1), clip.text


def _uneven_chunks(n: int, seed: int = 7) -> Iterator[slice]:
    rng = np.random.default_rng(seed)
    start = 0
    while start < n:
        size = int(rng.choice([1, 7, 480, 4_801, 12_000, 24_000, 30_011]))
        yield slice(start, min(n, start + size))
        start += size


async def test_browser_audio_reaches_the_engine_exactly(
    manager: TappedManager, browser_like: tuple[np.ndarray, str]
) -> None:
    stereo, reference = browser_like
    session = manager.start("tab-exact", LOCAL)
    for part in _uneven_chunks(len(stereo)):
        assert session.feed(48_000, stereo[part])
    session.stop()
    view = await session.wait_finished(120)

    assert view.state is SessionState.DONE, view.error
    assert view.samples_in == len(stereo)
    expected = round(len(stereo) * 16_000 / 48_000)
    assert view.samples_expected == expected
    assert view.samples_sent == expected
    assert view.samples_lost == 0

    sent = np.frombuffer(b"".join(manager.sent[session.id]), dtype="<i2")
    mono = stereo.astype(np.float32).mean(axis=1) / 32768.0
    whole = np.frombuffer(
        float_to_pcm16(soxr.resample(mono, 48_000, 16_000, quality="HQ")), dtype="<i2"
    )
    assert len(sent) == len(whole) == expected
    assert int(np.max(np.abs(sent.astype(np.int32) - whole.astype(np.int32)))) <= 1

    assert wer(reference, view.text) <= 0.3, view.text
    assert view.exports is not None
    assert view.exports["txt"].read_text(encoding="utf-8").strip() == view.text

    # The page's /metrics counted the session once it ended, with its figures.
    text = render(manager.metrics.registry).decode()
    assert (value(text, "live_captions_sessions_total", state="done") or 0) >= 1
    assert (value(text, "live_captions_first_caption_seconds_count") or 0) >= 1
    assert (value(text, "live_captions_audio_seconds_total") or 0) >= expected / 16_000
    assert value(text, "live_captions_engine_streams") is not None


async def test_stop_flushes_the_last_words(manager: TappedManager, clips: dict[str, Clip]) -> None:
    clip = clips[GOSPEL_ID]
    samples = load_file(str(clip.path))
    session = manager.start("tab-flush", LOCAL)
    step = 1_600  # 0.1 s chunks, at 16 kHz: no resampling, so counts are exact too
    for start in range(0, len(samples), step):
        session.feed(16_000, samples[start : start + step])
    session.stop()
    view = await session.wait_finished(120)
    assert view.state is SessionState.DONE, view.error
    assert view.samples_sent == view.samples_in == len(samples)
    assert view.partial == ""
    words = view.text.lower().replace(".", "").replace(",", "").split()
    assert "gospel" in words[-3:], view.text  # the clip's last word came with the final commit
    assert not session.feed(16_000, samples[:1_600])  # a stopped session takes no more audio
    assert session.view().late_chunks == 1


async def test_uploaded_file_streams_as_if_live(
    manager: TappedManager, clips: dict[str, Clip], tmp_path: Path
) -> None:
    clip = clips[SHORT_ID]
    samples = load_file(str(clip.path))
    path = tmp_path / "short-44k.wav"
    at44k = soxr.resample(samples, 16_000, 44_100, quality="HQ")
    soundfile.write(path, np.stack([at44k, at44k], axis=1), 44_100, subtype="PCM_16")
    session = manager.stream_file("tab-file", LOCAL, str(path))
    view = await session.wait_finished(60)
    assert view.state is SessionState.DONE, view.error
    assert view.source == "file"
    assert view.samples_in == len(at44k)
    assert view.samples_lost == 0
    assert view.audio_received == pytest.approx(len(at44k) / 44_100)
    assert wer(clip.text, view.text) <= 0.4, view.text


async def test_names_and_terms_reach_the_engine(
    manager: TappedManager, clips: dict[str, Clip]
) -> None:
    clip = clips["librispeech-1221-135766-0002"]
    choice = BackendChoice(BackendKind.LOCAL, prompt="Hester Prynne")
    session = manager.stream_file("tab-terms", choice, str(clip.path))
    view = await session.wait_finished(60)
    assert view.state is SessionState.DONE, view.error
    assert "Hester Prynne" in view.text, view.text


async def test_a_language_the_engine_lacks_is_a_message(manager: TappedManager) -> None:
    session = manager.start("tab-lang", BackendChoice(BackendKind.LOCAL, language="de"))
    session.feed(48_000, np.zeros(4_800, dtype=np.int16))
    view = await session.wait_finished(30)
    assert view.state is SessionState.FAILED
    assert view.error is not None and "German (de)" in view.error, view.error
    assert "only en (English)" in view.error


def test_a_public_deployment_bounds_the_terms() -> None:
    public = Settings.from_env({"SPACE_ID": "someone/live-captions"})
    assert public.max_prompt_chars == 200
    local = BackendChoice(BackendKind.LOCAL, prompt="x" * 200, language="EN")
    assert validate_choice(local, public).options.language == "en"
    with pytest.raises(BackendError, match="201 characters; at most 200"):
        validate_choice(BackendChoice(BackendKind.LOCAL, prompt="x" * 201), public)
    with pytest.raises(BackendError, match="Unknown language"):
        validate_choice(BackendChoice(BackendKind.LOCAL, language="klingon"), public)
    assert Settings.from_env({"MAX_PROMPT_CHARS": "80"}).max_prompt_chars == 80
    assert Settings.from_env({"MAX_PROMPT_CHARS": "9000"}).max_prompt_chars == 500


async def test_record_again_starts_a_fresh_session_and_a_straggler_is_not_used(
    manager: TappedManager, clips: dict[str, Clip]
) -> None:
    samples = (load_file(str(clips[SHORT_ID].path)) * 32767).astype(np.int16)
    first = manager.start("tab-keys", LOCAL, key="recording-1")
    assert first.feed(16_000, samples[:16_000])
    second = manager.start("tab-keys", LOCAL, key="recording-2")
    assert second is not first and second.key == "recording-2"
    assert manager.current("tab-keys") is second
    old_view = await first.wait_finished(60)  # the old one was stopped and finished
    assert old_view.state is SessionState.DONE
    assert not first.feed(16_000, samples[:800])  # a straggler: counted, not used
    assert first.view().late_chunks == 1 and first.view().samples_in == 16_000
    manager.stop("tab-keys")
    assert (await second.wait_finished(60)).state is SessionState.DONE


async def test_unreachable_url_becomes_a_message(manager: TappedManager) -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    session = manager.start("tab-down", BackendChoice(BackendKind.REALTIME, url=url))
    session.feed(48_000, np.zeros(4_800, dtype=np.int16))
    view = await session.wait_finished(30)
    assert view.state is SessionState.FAILED
    assert view.error is not None and "Cannot reach" in view.error and url in view.error
    assert "Traceback" not in view.error and "\n" not in view.error
    assert not session.accepting


async def test_sagemaker_without_aws_credentials_says_so(
    manager: TappedManager, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("SAGEMAKER_ENDPOINT_URL", f"https://127.0.0.1:{free_port()}")
    choice = BackendChoice(BackendKind.SAGEMAKER, endpoint="my-asr", region="eu-west-1")
    session = manager.start("tab-nocreds", choice)
    view = await session.wait_finished(30)
    assert view.state is SessionState.FAILED
    assert view.error is not None and "credentials" in view.error.lower(), view.error
    assert "Traceback" not in view.error


async def test_endpoint_outside_the_allowlist_is_refused() -> None:
    m = SessionManager(_settings(sagemaker_endpoints=("captions-prod",), public=True))
    try:
        session = m.start("tab-sm", BackendChoice(BackendKind.SAGEMAKER, endpoint="someone-else"))
        view = await session.wait_finished(10)
        assert view.state is SessionState.FAILED
        assert view.error == (
            "Endpoint 'someone-else' is not allowed on this deployment; "
            "choose one of: captions-prod."
        )
    finally:
        m.shutdown()


@contextlib.contextmanager
def _settings_changed(manager: SessionManager, **changes: Any) -> Iterator[None]:
    """Run with other limits on the shared manager (sessions read them when they start)."""
    saved = manager.settings
    manager.settings = dataclasses.replace(saved, **changes)
    try:
        yield
    finally:
        manager.settings = saved


async def test_session_limit_gives_a_busy_message(manager: TappedManager) -> None:
    down = BackendChoice(BackendKind.REALTIME, url=f"ws://127.0.0.1:{free_port()}")
    with _settings_changed(manager, max_sessions=1):
        first = manager.start("tab-a", LOCAL)
        second = manager.start("tab-b", down)
        view = await second.wait_finished(10)
        assert (
            view.error == "All 1 caption sessions of this page are in use. Try again in a minute."
        )
        first.stop()
        assert (await first.wait_finished(30)).state is SessionState.DONE
        third = manager.start("tab-b", LOCAL)  # a slot is free again
        third.stop()
        assert (await third.wait_finished(30)).state is SessionState.DONE


async def test_maximum_session_length_stops_the_session(
    manager: TappedManager, clips: dict[str, Clip]
) -> None:
    samples = load_file(str(clips[SHORT_ID].path))
    with _settings_changed(manager, max_session_seconds=1.0):
        session = manager.start("tab-long", LOCAL)
    taken = [session.feed(16_000, samples[i : i + 4_000]) for i in range(0, 32_000, 4_000)]
    assert taken[:3] == [True, True, True] and not any(taken[3:])
    view = await session.wait_finished(30)
    assert view.state is SessionState.DONE
    assert view.samples_in == 16_000 and view.samples_lost == 0
    assert view.late_chunks == 4
    assert view.notice is not None and "Maximum session length (1 s)" in view.notice


async def test_a_session_without_audio_ends(manager: TappedManager) -> None:
    with _settings_changed(manager, idle_seconds=0.5):
        session = manager.start("tab-idle", LOCAL)
    view = await session.wait_finished(30)
    assert view.state is SessionState.DONE
    assert view.notice == "No audio for 0.5 s; the session was stopped."


async def test_realtime_server_session_then_server_lost(clips: dict[str, Clip]) -> None:
    m = SessionManager(_settings(local_enabled=False))
    try:
        clip = clips[SHORT_ID]
        samples = load_file(str(clip.path))
        with running_server("--engine", "whisper") as url:
            choice = BackendChoice(BackendKind.REALTIME, url=url.ws)
            session = m.start("tab-ws", choice)
            for start in range(0, len(samples), 4_000):
                session.feed(16_000, samples[start : start + 4_000])
            session.stop()
            view = await session.wait_finished(60)
            assert view.state is SessionState.DONE, view.error
            assert view.backend.startswith("Realtime server ws://127.0.0.1")
            assert wer(clip.text, view.text) <= 0.4, view.text
            assert view.samples_lost == 0

            lost = m.start("tab-ws", choice)
            lost.feed(16_000, samples[:8_000])
            while lost.state is not SessionState.LIVE:
                await lost.wait_changed(lost.view().version, 1.0)
        # The server is gone (terminated on leaving the block) while audio keeps coming.
        for _ in range(50):
            if not lost.feed(16_000, np.zeros(1_600, dtype=np.float32)):
                break
            await asyncio.sleep(0.1)
        view = await lost.wait_finished(30)
        assert view.state is SessionState.FAILED
        assert view.error is not None and "Traceback" not in view.error
        assert "closed" in view.error or "Cannot reach" in view.error, view.error
    finally:
        m.shutdown()


async def _until(session: CaptionSession, ok: Any, max_wait: float = 60.0) -> Any:
    """The session's view once ``ok(view)`` holds or the session ended (bounded wait)."""
    deadline = asyncio.get_running_loop().time() + max_wait
    view = session.view()
    while not ok(view) and not view.finished:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"gave up waiting; the session shows {view.text!r} ({view.notice})"
        await session.wait_changed(view.version, min(left, 5.0))
        view = session.view()
    return view


async def test_lost_connection_reconnects_and_captions_continue(clips: dict[str, Clip]) -> None:
    m = SessionManager(_settings(local_enabled=False))
    first, second = clips[SHORT_ID], clips[GOSPEL_ID]
    silence = np.zeros(16_000, np.float32)
    try:
        with running_server("--engine", "whisper") as url:
            async with TcpRelay("127.0.0.1", url.port) as relay:
                relay_url = f"ws://127.0.0.1:{relay.port}/v1/realtime"
                choice = BackendChoice(BackendKind.REALTIME, url=relay_url)
                session = m.start("tab-relay", choice)
                for part in (load_file(str(first.path)), silence):
                    for start in range(0, len(part), 1_600):
                        session.feed(16_000, part[start : start + 1_600])
                        await asyncio.sleep(0.02)
                view = await _until(session, lambda v: "longer" in v.text.lower())
                connections = relay.accepted

                relay.cut()
                view = await _until(session, lambda v: v.reconnects >= 1)
                assert not view.finished, view.error
                assert relay.accepted > connections  # a new connection carries the rest

                for part in (load_file(str(second.path)), silence):
                    for start in range(0, len(part), 1_600):
                        session.feed(16_000, part[start : start + 1_600])
                        await asyncio.sleep(0.02)
                session.stop()
                view = await session.wait_finished(60)
        assert view.state is SessionState.DONE, view.error
        head, _, tail = view.text.lower().partition("longer")
        assert wer(first.text, head + "longer") <= 0.4, view.text
        assert wer(second.text, tail) <= 0.4, view.text
        assert view.samples_lost == 0 and view.streams == 2
        assert view.notice is None  # nothing was lost: nothing to say
    finally:
        m.shutdown()


# --------------------------------------------------------------------------- choices


def test_choices_on_a_public_deployment() -> None:
    s = Settings.from_env(
        {
            "SPACE_ID": "someone/live-captions",
            "SAGEMAKER_ENDPOINTS": "asr-a, asr-b",
            "SAGEMAKER_REGION": "eu-west-1",
        }
    )
    assert s.public and not s.allow_custom_url
    assert s.kinds == (BackendKind.LOCAL, BackendKind.SAGEMAKER)
    ok = validate_choice(
        BackendChoice("sagemaker", endpoint="asr-b", region="us-east-1"), s
    )  # the region is the deployment's, whatever the visitor sends
    assert ok == BackendChoice(BackendKind.SAGEMAKER, endpoint="asr-b", region="eu-west-1")
    with pytest.raises(Exception, match="not offered"):
        validate_choice(BackendChoice("realtime", url="ws://10.0.0.1:8000/v1/realtime"), s)


def test_choices_on_a_private_deployment() -> None:
    s = Settings.from_env({})
    assert not s.public and s.allow_custom_url and s.allowed_endpoints is None
    assert validate_choice(BackendChoice("sagemaker", endpoint="any-name", region="ap-south-1"), s)
    with pytest.raises(InvalidChoice, match="not a valid SageMaker endpoint name"):
        validate_choice(BackendChoice("sagemaker", endpoint="bad_name!"), s)
    with pytest.raises(InvalidChoice, match="not an AWS region"):
        validate_choice(BackendChoice("sagemaker", endpoint="ok", region="mars"), s)
    with pytest.raises(InvalidChoice, match="Enter a Realtime server URL"):
        validate_choice(BackendChoice("realtime", url="http//nope"), s)
    with pytest.raises(InvalidChoice, match="Unknown backend"):
        validate_choice(BackendChoice("carrier-pigeon"), s)


def test_public_deployment_without_allowlist_offers_only_configured_things() -> None:
    s = Settings.from_env({"SPACE_ID": "x/y", "REALTIME_URL": "wss://asr.example.org/v1/realtime"})
    assert s.kinds == (BackendKind.LOCAL, BackendKind.REALTIME)  # no endpoint: no SageMaker
    fixed = validate_choice(BackendChoice("realtime", url=""), s)
    assert fixed.url == "wss://asr.example.org/v1/realtime"
    with pytest.raises(Exception, match="ALLOW_CUSTOM_URL"):
        validate_choice(BackendChoice("realtime", url="ws://169.254.169.254/"), s)
    s2 = Settings.from_env({"SPACE_ID": "x/y", "SAGEMAKER_ENDPOINT": "only-this"})
    assert s2.allowed_endpoints == ("only-this",)
    with contextlib.suppress(Exception):
        validate_choice(BackendChoice("sagemaker", endpoint="other"), s2)
        pytest.fail("an endpoint other than the configured one was accepted")


def test_bad_limits_in_the_environment_are_named() -> None:
    with pytest.raises(ValueError, match="MAX_SESSIONS"):
        Settings.from_env({"MAX_SESSIONS": "many"})
    with pytest.raises(ValueError, match="MAX_SESSION_SECONDS must be positive"):
        Settings.from_env({"MAX_SESSION_SECONDS": "-5"})
