"""Caption outputs under a long session: lag to each platform, and no word lost or doubled.

    .venv/bin/python bench/outputs.py                      # 5 min for lag, 30 min with faults
    .venv/bin/python bench/outputs.py --lag-minutes 2 --fault-minutes 10 --speed 10

The evaluation recordings, back to back, are captioned by the embedded engine
(``LocalBackend``) into a session's outputs (``CaptionOutputs``), sending to the stand-ins of
Zoom, YouTube Live, Teams and obs-websocket (``tests/support_platforms.py``; the platforms
cannot run here), all four at once:

* **lag**: ``--lag-minutes`` of speech at real time, each confirmed delta handed to the
  outputs as it arrives, the stand-ins answering at once: per output, the time from a word's
  confirmation to the platform's answer to its post (p50/p95; target p95 <= 1 s);
* **faults**: ``--fault-minutes`` of speech, transcribed as fast as the engine goes, its
  deltas played into the outputs evenly, ``--speed`` times faster than said, while every few
  seconds one platform misbehaves in turn: 5xx bursts, answers after the client gave up, a
  Zoom meeting "not started" for a while, OBS not streaming, and a restart of the HTTP
  stand-ins and of OBS. Per output: words the session confirmed, words the platform took,
  words lost and doubled (target 0 and 0; counted on the text without white space, so a
  word boundary a late continuation moved is no loss), posts, words unconfirmed (sent once
  without an answer to a platform without sequence numbers, not sent again), and whether
  ``seq`` stayed gap-free.

Printed as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import concatenate, machine, references_apart, select_clips
from components.outputs.delivery import CaptionOutputs
from components.outputs.targets import parse_target
from tests.support_platforms import ObsStandIn, PlatformStandIn, urls
from tests.support_server import BackgroundLoop, free_port, serve_app

KINDS = ("zoom", "youtube", "teams", "obs")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lag-minutes", type=float, default=5.0)
    p.add_argument("--fault-minutes", type=float, default=30.0)
    p.add_argument("--speed", type=float, default=10.0, help="speed-up of the fault phase")
    p.add_argument("--seed", type=int, default=7)
    return p


def long_audio(minutes: float) -> Any:
    """``minutes`` of the evaluation set, back to back (0.5 s apart), repeated as needed."""
    refs = references_apart(select_clips(None), beam5=False)
    long_ref = concatenate(refs)
    repeats = max(1, int(minutes * 60 / long_ref.clip.seconds + 0.999))
    return concatenate([long_ref] * repeats).audio[: int(minutes * 60 * 16000)]


async def transcribe(audio: Any, pace: float, on_delta: Any = None) -> list[str]:
    """The engine's confirmed deltas for ``audio`` at ``pace`` (``on_delta`` as each comes)."""
    from components.backends.local import LocalBackend
    from components.backends.play import play
    from components.core.audio import float_to_pcm16
    from components.core.protocol import TranscriptionDelta
    from components.engines.whisper.engine import WhisperEngine

    deltas: list[str] = []

    def on_event(event: Any, played: Any) -> None:
        if isinstance(event, TranscriptionDelta):
            deltas.append(event.delta)
            if on_delta is not None:
                on_delta(event.delta)

    engine = WhisperEngine.from_env()
    try:
        stream = await LocalBackend(engine).open()
        await play(stream, float_to_pcm16(audio), pace=pace, chunk_seconds=0.1, on_event=on_event)
    finally:
        await engine.aclose()
    return deltas


async def play_into(outputs: CaptionOutputs, deltas: list[str], seconds: float) -> None:
    """The deltas of a session, evenly over ``seconds``."""
    start = time.monotonic()
    for i, delta in enumerate(deltas):
        wait = start + seconds * i / max(1, len(deltas)) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        outputs.feed(delta)


def targets(base: str, obs: ObsStandIn) -> list[Any]:
    u = {**urls(base), "obs": obs.url()}
    return [parse_target(f"{kind}={u[kind]}") for kind in KINDS]


def taken_words(platforms: PlatformStandIn, obs: ObsStandIn) -> dict[str, list[str]]:
    return {
        "zoom": platforms.words("zoom"),
        "youtube": platforms.words("youtube"),
        "teams": platforms.words("teams"),
        "obs": " ".join(obs.captions).split(),
    }


def compare(said: list[str], taken: list[str]) -> dict[str, int]:
    """Words lost and doubled between what the session confirmed and what a platform took.

    Compared as text without white space: a delta that continues a word already posted
    ("fat" then "-mutton") reaches a platform as a post of its own, which moves a word
    boundary but loses and doubles nothing.
    """
    import difflib

    a, b = "".join(said), "".join(taken)
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    common = sum(block.size for block in matcher.get_matching_blocks())
    lost_chars, doubled_chars = len(a) - common, len(b) - common
    per_word = max(1.0, len(a) / max(1, len(said)))
    return {
        "lost": round(lost_chars / per_word),
        "doubled": round(doubled_chars / per_word),
        "lost_chars": lost_chars,
        "doubled_chars": doubled_chars,
    }


async def lag_phase(minutes: float) -> dict[str, Any]:
    """A live session: the engine at real time, each confirmed delta handed to the outputs
    the moment it arrives, as a caption session does."""
    platforms, obs = PlatformStandIn(), ObsStandIn(password="bench")
    with BackgroundLoop() as bg, serve_app(bg, platforms.app()) as base:
        await obs.start()
        outputs = CaptionOutputs(targets(base, obs), session="bench-lag")
        outputs.start()
        deltas = await transcribe(long_audio(minutes), 1.0, outputs.feed)
        statuses = await outputs.finish()
        await obs.stop()
    said = "".join(deltas).split()
    result: dict[str, Any] = {"minutes": minutes, "words": len(said)}
    taken = taken_words(platforms, obs)
    for status in statuses:
        lags = sorted(outputs.deliveries[KINDS.index(status.kind)].lags())
        result[status.kind] = {
            "posts": status.posts,
            "lag_p50_s": round(lags[len(lags) // 2], 3) if lags else None,
            "lag_p95_s": round(lags[int(0.95 * (len(lags) - 1))], 3) if lags else None,
            **compare(said, taken[status.kind]),
        }
    return result


async def fault_phase(minutes: float, speed: float, seed: int) -> dict[str, Any]:
    """A long session's deltas (transcribed as fast as the engine goes) played into the
    outputs ``speed`` times faster than they were said, while the platforms misbehave."""
    rng = random.Random(seed)
    platforms, obs = PlatformStandIn(slow_seconds=6.0), ObsStandIn(password="bench")
    part = await transcribe(long_audio(minutes), 0.0)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    faults: list[str] = []
    server_loop = BackgroundLoop()
    server = serve_app(server_loop, platforms.app(), port=port)
    server.__enter__()
    await obs.start()
    outputs = CaptionOutputs(targets(base, obs), session="bench-faults")
    outputs.start()
    player = asyncio.create_task(play_into(outputs, part, minutes * 60 / speed))

    async def restart_http() -> None:
        nonlocal server
        await asyncio.to_thread(server.__exit__, None, None, None)
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        server = serve_app(server_loop, platforms.app(), port=port)
        await asyncio.to_thread(server.__enter__)

    async def restart_obs() -> None:
        obs_port = obs.port
        await obs.stop()
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        await obs.start(obs_port)

    try:
        while not player.done():
            await asyncio.sleep(rng.uniform(3.0, 8.0))
            fault = rng.choice(
                [
                    "5xx",
                    "slow",
                    "zoom-not-started",
                    "teams-not-started",
                    "obs-not-streaming",
                    "restart-http",
                    "restart-obs",
                ]
            )
            faults.append(fault)
            if fault == "5xx":
                kind = rng.choice(["zoom", "youtube", "teams"])
                platforms.fail_next(kind, *[rng.choice([500, 502, 503])] * rng.randint(1, 4))
            elif fault == "slow":
                platforms.fail_next(rng.choice(["zoom", "youtube", "teams"]), "slow")
            elif fault == "zoom-not-started":
                platforms.zoom_started = False
                await asyncio.sleep(rng.uniform(2.0, 6.0))
                platforms.zoom_started = True
            elif fault == "teams-not-started":
                platforms.teams_started = False
                await asyncio.sleep(rng.uniform(2.0, 6.0))
                platforms.teams_started = True
            elif fault == "obs-not-streaming":
                obs.streaming = False
                await asyncio.sleep(rng.uniform(2.0, 6.0))
                obs.streaming = True
            elif fault == "restart-http":
                await restart_http()
            else:
                await restart_obs()
        await player
        statuses = await outputs.finish(grace=120.0)
    finally:
        await obs.stop()
        await asyncio.to_thread(server.__exit__, None, None, None)
        server_loop.close()
    said = "".join(part).split()
    taken = taken_words(platforms, obs)
    result: dict[str, Any] = {
        "minutes": minutes,
        "speed": speed,
        "words": len(said),
        "faults": {f: faults.count(f) for f in sorted(set(faults))},
    }
    for status in statuses:
        entry: dict[str, Any] = {
            "posts": status.posts,
            "state": status.state,
            "dropped_words": status.dropped_words,
            "unconfirmed_words": status.unconfirmed_words,
            **compare(said, taken[status.kind]),
        }
        if status.kind in ("zoom", "youtube"):
            seqs = (
                [t.seq for t in platforms.zoom] if status.kind == "zoom" else platforms.youtube_seqs
            )
            entry["seq_gap_free"] = seqs == list(range(1, len(seqs) + 1))
        result[status.kind] = entry
    return result


async def main() -> None:
    args = _parser().parse_args()
    lag = await lag_phase(args.lag_minutes)
    faults = await fault_phase(args.fault_minutes, args.speed, args.seed)
    print(
        json.dumps(
            {"bench": "outputs", "lag": lag, "faults": faults, "machine": machine()}, indent=2
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
