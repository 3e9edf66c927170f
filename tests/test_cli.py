"""``python -m components`` as a user runs it: real subprocesses, a real server, real speech."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from components.core.evaluation import Clip, wer
from tests.support_server import REPO_ROOT, ServerURL, free_port, server_fixture

KEY = "cli-key"
WER_BOUND = 0.35
LONG = "librispeech-1995-1837-0001"  # 8.7 s
SHORT = "librispeech-1089-134691-0001"  # 5.4 s

server = server_fixture("--engine", "whisper", "--api-key", KEY)

SRT_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")
VTT_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)$")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LIVE_CAPTIONS_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "components", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def transcribe(server: ServerURL, clip: Clip, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("transcribe", str(clip.path), "--url", server.ws, "--api-key", KEY, *args)


def seconds(groups: tuple[str, ...]) -> tuple[float, float]:
    h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g) for g in groups)
    return (h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000)


def check_cues(body: str, stamp: re.Pattern[str], clip: Clip) -> str:
    """Cue times are ordered and inside the audio; return the cue text joined."""
    spans, texts = [], []
    for block in [b for b in body.strip().split("\n\n") if b.strip()]:
        lines = block.splitlines()
        if lines[0] == "WEBVTT":
            continue
        if lines[0].isdigit():  # SRT numbering
            assert int(lines[0]) == len(spans) + 1
            lines = lines[1:]
        match = stamp.match(lines[0])
        assert match, block
        spans.append(seconds(match.groups()))
        texts.append(" ".join(lines[1:]))
    assert spans, body
    for start, end in spans:
        assert 0 <= start < end <= clip.seconds + 1.0, spans
    assert all(a[1] <= b[0] + 1e-6 for a, b in itertools.pairwise(spans)), spans
    return " ".join(texts)


def test_help_names_both_commands() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "transcribe" in result.stdout
    serve_help = cli("serve", "--help").stdout
    for option in ("--api-key", "--max-sessions", "--idle-timeout", "--served-model-name"):
        assert option in serve_help


def test_text_output(server: ServerURL, clips: dict[str, Clip]) -> None:
    result = transcribe(server, clips[LONG])
    assert result.returncode == 0, result.stderr
    assert wer(clips[LONG].text, result.stdout) <= WER_BOUND, result.stdout
    assert result.stdout.endswith("\n")
    # The live view on stderr carried the same words as they arrived.
    assert wer(result.stdout, result.stderr) < 0.1, result.stderr


def test_json_output(server: ServerURL, clips: dict[str, Clip]) -> None:
    result = transcribe(server, clips[SHORT], "--format", "json", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    body = json.loads(result.stdout)
    assert wer(clips[SHORT].text, body["text"]) <= WER_BOUND, body
    assert body["audio_seconds"] == pytest.approx(clips[SHORT].seconds, abs=0.05)
    assert body["usage"]["total_tokens"] >= body["usage"]["completion_tokens"]
    assert wer(body["text"], " ".join(s["text"] for s in body["segments"])) == 0


def test_srt_output_paced_in_real_time(server: ServerURL, clips: dict[str, Clip]) -> None:
    clip = clips[SHORT]
    result = transcribe(server, clip, "--format", "srt")  # srt defaults to real-time pace
    assert result.returncode == 0, result.stderr
    text = check_cues(result.stdout, SRT_STAMP, clip)
    assert wer(clip.text, text) <= WER_BOUND, result.stdout


def test_vtt_output(server: ServerURL, clips: dict[str, Clip]) -> None:
    clip = clips[LONG]
    result = transcribe(server, clip, "--format", "vtt", "--pace", "fast", "--partials")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("WEBVTT\n")
    text = check_cues(result.stdout, VTT_STAMP, clip)
    assert wer(clip.text, text) <= WER_BOUND, result.stdout


def test_api_key_from_the_environment(server: ServerURL, clips: dict[str, Clip]) -> None:
    clip = clips[SHORT]
    args = ("transcribe", str(clip.path), "--url", server.ws, "--quiet")
    ok = cli(*args, env={"LIVE_CAPTIONS_API_KEY": KEY})
    assert ok.returncode == 0, ok.stderr
    assert wer(clip.text, ok.stdout) <= WER_BOUND
    refused = cli(*args)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "API key" in refused.stderr


def test_unreachable_url_is_one_line_and_nonzero(clips: dict[str, Clip]) -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    result = cli("transcribe", str(clips[SHORT].path), "--url", url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and url in result.stderr
    assert "python -m components serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_file_is_one_line_and_nonzero(tmp_path: Path) -> None:
    missing = cli("transcribe", str(tmp_path / "nope.wav"))
    assert missing.returncode == 1 and missing.stderr.startswith("error: no such file")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    bad = cli("transcribe", str(garbage))
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_serve_rejects_bad_settings_in_one_line() -> None:
    result = cli("serve", "--idle-timeout", "-1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: idle timeout must be positive"]
    env_result = cli("serve", env={"LIVE_CAPTIONS_MAX_SESSIONS": "many"})
    assert env_result.returncode == 1 and "LIVE_CAPTIONS_MAX_SESSIONS" in env_result.stderr


def test_local_backend_needs_no_server(clips: dict[str, Clip]) -> None:
    clip = clips[SHORT]
    result = cli("transcribe", str(clip.path), "--local", "--engine", "whisper", "--quiet")
    assert result.returncode == 0, result.stderr
    assert wer(clip.text, result.stdout) <= WER_BOUND, result.stdout


def test_sagemaker_backend_through_the_local_front(clips: dict[str, Clip]) -> None:
    """The whole SageMaker path: the real SDK, the local front (AWS's router cannot run here,
    so components.aws.local_front stands in for it), the real container with the Whisper engine.
    """
    from tests.support_sagemaker import running_container, running_front

    clip = clips[SHORT]
    with running_container() as container, running_front(container) as front:

        def through_front(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
            return cli(
                "transcribe",
                str(clip.path),
                "--backend",
                "sagemaker",
                "--endpoint",
                endpoint,
                "--region",
                front.region,
                "--endpoint-url",
                front.endpoint_url,
                "--ca-bundle",
                front.ca_bundle,
                *args,
                env=front.client_env(),
            )

        result = through_front(front.endpoint, "--format", "json", "--quiet")
        assert result.returncode == 0, result.stderr
        assert wer(clip.text, json.loads(result.stdout)["text"]) <= WER_BOUND, result.stdout
        wrong = through_front("no-such-endpoint")
    assert wrong.returncode == 1
    assert wrong.stderr.count("\n") == 1 and "Traceback" not in wrong.stderr, wrong.stderr
