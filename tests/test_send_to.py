"""``transcribe --send-to``: a real recording through the real engine into the stand-ins of Zoom,
YouTube Live, Teams and obs-websocket (``tests/support_platforms.py``), with faults on the way.
Every confirmed word reaches every output once, in order, with gap-free sequence numbers; a
failing output says why and leaves the others untouched."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from components.core.evaluation import Clip
from tests.support_platforms import ObsStandIn, PlatformStandIn, urls
from tests.support_server import BackgroundLoop, serve_app
from tests.test_cli import cli

CLIP = "jfk"


def words(text: str) -> list[str]:
    return re.sub(r"<br>", " ", text).split()


@pytest.fixture
def stand_ins() -> Iterator[tuple[PlatformStandIn, ObsStandIn, dict[str, str]]]:
    platforms = PlatformStandIn()
    obs = ObsStandIn(password="obs-secret")
    with BackgroundLoop() as bg, serve_app(bg, platforms.app()) as base:
        bg.run(obs.start())
        try:
            yield platforms, obs, {**urls(base), "obs": obs.url()}
        finally:
            bg.run(obs.stop())


def test_a_recording_reaches_every_output_once_in_order(
    stand_ins: tuple[PlatformStandIn, ObsStandIn, dict[str, str]], clips: dict[str, Clip]
) -> None:
    platforms, obs, url = stand_ins
    platforms.zoom_started = False  # the meeting starts a moment later
    platforms.fail_next("youtube", 503, "slow")
    platforms.fail_next("teams", 500)

    async def start_meeting() -> None:
        await asyncio.sleep(2.0)
        platforms.zoom_started = True

    with BackgroundLoop() as bg:
        starter = asyncio.run_coroutine_threadsafe(start_meeting(), bg.loop)
        done = cli(
            "transcribe",
            str(clips[CLIP].path),
            "--local",
            "--pace",
            "realtime",
            *(f"--send-to={kind}={url[kind]}" for kind in ("zoom", "youtube", "teams", "obs")),
        )
        starter.result(10)
    assert done.returncode == 0, done.stderr
    said = done.stdout.split()
    assert len(said) >= 15, done.stdout
    assert platforms.words("zoom") == said
    assert platforms.words("youtube") == said
    assert platforms.words("teams") == said
    assert " ".join(obs.captions).split() == said
    zoom_seqs = [t.seq for t in platforms.zoom]
    for seqs in (zoom_seqs, platforms.youtube_seqs):
        assert seqs == list(range(1, len(seqs) + 1))
    assert all(len(line) <= 32 for c in obs.captions for line in c.split("\n"))
    # The summary names each output by platform and host, never by its secret.
    for secret in ("zoom-token-123", "yt-cid-456", "teams-token-789", "obs-secret"):
        assert secret not in done.stderr
    assert "Zoom (127.0.0.1):" in done.stderr and "words in" in done.stderr


def test_a_failing_output_says_why_and_the_others_get_everything(
    stand_ins: tuple[PlatformStandIn, ObsStandIn, dict[str, str]], clips: dict[str, Clip]
) -> None:
    platforms, _, url = stand_ins
    platforms.teams_link_valid = False
    done = cli(
        "transcribe",
        str(clips[CLIP].path),
        "--local",
        f"--send-to=teams={url['teams']}",
        f"--send-to=zoom={url['zoom']}",
    )
    assert done.returncode == 1, done.stderr
    assert "generate a new CART caption link" in done.stderr
    assert done.stdout.split() and platforms.words("zoom") == done.stdout.split()
    assert platforms.teams == []


def test_a_malformed_output_is_one_line_before_any_audio(clips: dict[str, Clip]) -> None:
    done = cli("transcribe", str(clips[CLIP].path), "--local", "--send-to=skype=https://x")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "Unknown caption output" in done.stderr
