"""Hours without drift: memory, caption lag and accuracy through a long session, and a reset storm.

    .venv/bin/python bench/soak.py --hours 2 --pace 2 --path serve --plot soak.png
    .venv/bin/python bench/soak.py --hours 0.1 --path local            # a quick look
    .venv/bin/python bench/soak.py --storm 10000 --target serve         # abrupt disconnects
    .venv/bin/python bench/soak.py --storm 2000 --target bridge

**Soak.** One session hears the evaluation clips, shuffled anew every pass, 0.6-1.6 s apart,
until ``--hours`` of audio have gone by, in 100 ms appends at ``--pace`` x real time:

* ``local``: the engine in this process (``LocalBackend``); RSS is this process's;
* ``serve``: ``python -m components serve`` as a child process, reached through a continuous
  stream (handovers every ``--stream-seconds`` of audio if given); RSS is the server's;
* ``sagemaker``: the real SDK through the local SageMaker front (a stand-in for AWS's router,
  which ends every stream after ``--front-stream-seconds``, so the chain replays often) to
  ``container/serve`` (bridge and engine server); RSS is the engine server's.

Every ``--window`` minutes of audio one JSON line: the engine process's RSS, word lag p50/p95
(wall seconds from sending the chunk that holds a word's end to the delta that carries it), WER
of the window, handovers and reconnects so far, and where the engine's worker spent the window
(rounds, ms per round, ms per decode, busy share; local and serve paths) and the machine's load
average. The last line sums up against the targets: RSS growth per hour of audio after the
first window, RSS after the session ended against after the first window, lag p95 and WER of
the last window against the first (and the lag's trend along a line fitted through every
window, which one noisy window cannot sway). WER follows what a window holds (each pass is
shuffled anew, and noisy clips score worse than read speech), so the summary adds a measure
that does not: per window, the words the stream missed over the number its clips' session-wide
miss rates predict, and its drift (the last two windows against the first two).

Why pace 2 stands for real time here: the streaming policy decides in audio time (a decode per
half second of new audio, agreement over the last second of audio), and one stream at twice
real time leaves the worker idle between rounds on two cores, so every step is decoded as it
would be live. Lag is wall time and includes the decode itself, which pace does not shorten.

**Reset storm.** ``--storm N`` opens N realtime sessions against ``components serve`` (or the
container bridge in front of it, ``--target bridge``) and drops each connection abruptly (TCP
abort, no close frame) at a random protocol stage: before the handshake completes, after
``session.created``, after ``session.update``, after some audio, after a commit, while
transcripts arrive. Then it reads the server's ``/stats``: sessions, requests and engine
streams left open must be 0, and the RSS before and after is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import align, lag_summary, machine, references_apart  # noqa: E402
from components.core.audio import float_to_pcm16  # noqa: E402
from components.core.evaluation import edit_distance, load_clips  # noqa: E402
from components.core.protocol import (  # noqa: E402
    SAMPLE_RATE,
    ErrorEvent,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    SessionUpdate,
    TranscriptionDelta,
    TranscriptionDone,
    serialize,
)
from tests.support_server import free_port, running_server  # noqa: E402

CHUNK = SAMPLE_RATE // 10
TARGETS = {"rss_mb_per_hour": 20.0, "rss_after_end_mb": 50.0, "drift": 0.10, "storm_left": 0}


def rss_of(pid: int) -> float:
    """Resident memory (MB) of a process, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def engine_pid(root: int) -> int:
    """The engine server among ``root``'s descendants (``container/serve`` starts it beside
    the bridge); ``root`` itself if there is none."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"components serve" in command or b"components.server.app" in command:
            return pid
        todo += children.get(pid, [])
    return root


def metrics_counts(base: str) -> Callable[[], dict[str, float]]:
    """Read a server's ``live_captions_engine_*`` figures from its ``/metrics``."""
    import httpx

    from tests.support_metrics import samples

    prefix = "live_captions_engine_"

    def read() -> dict[str, float]:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        return {
            name[len(prefix) :]: v
            for (name, _), v in samples(text).items()
            if name.startswith(prefix)
        }

    return read


def worker_figures(
    before: dict[str, float], after: dict[str, float], wall: float
) -> dict[str, float | None]:
    """Where the engine's worker spent a window: rounds, time per round and per decode, and
    the share of wall time it was busy. A lag that rises while these stay flat lies outside
    the decoding; a round that grows longer points at the engine or the policy."""
    if "rounds" not in after or "busy_seconds" not in after:
        return {}
    rounds = after["rounds"] - before.get("rounds", 0.0)
    decodes = after.get("decodes", 0.0) - before.get("decodes", 0.0)

    def per(key: str, n: float) -> float | None:
        spent = after.get(key, 0.0) - before.get(key, 0.0)
        return round(spent / n * 1000, 1) if n else None

    busy = after["busy_seconds"] - before.get("busy_seconds", 0.0)
    return {
        "rounds": int(rounds),
        "decodes_per_round": round(decodes / rounds, 2) if rounds else None,
        "round_ms": per("busy_seconds", rounds),
        "encode_ms_per_round": per("encode_seconds", rounds),
        "generate_ms_per_decode": per("generate_seconds", decodes),
        "worker_busy": round(busy / wall, 3) if wall > 0 else None,
    }


# --------------------------------------------------------------------------- the long session


@dataclass
class Placement:
    start: float
    """Audio time (s) of the clip's first sample in the session."""
    index: int


@dataclass
class Timeline:
    """What was sent and what came back, in the session's audio time and wall time."""

    sent_wall: list[float] = field(default_factory=list)
    """Wall time at which each chunk went out ..."""
    sent_audio: list[float] = field(default_factory=list)
    """... and the audio time (s) at its end (chunks at a clip's end are shorter)."""
    words: list[tuple[str, float, float]] = field(default_factory=list)
    """Streamed words: (normalised word, arrival wall time, audio time sent at arrival)."""
    text: str = ""


def plan(clips: int, hours: float, seed: int) -> Iterator[tuple[int, float]]:
    """(clip index, silence after it) until ``hours`` of audio, a fresh shuffle every pass."""
    rng = random.Random(seed)
    while True:
        order = list(range(clips))
        rng.shuffle(order)
        for i in order:
            yield i, rng.uniform(0.6, 1.6)


def _words_of(delta: str) -> list[str]:
    from components.core.evaluation import normalize

    return normalize(delta)


async def soak(args: argparse.Namespace) -> list[dict[str, Any]]:
    clips = load_clips()
    if not clips:
        raise SystemExit("the evaluation set is missing (set EVAL_DIR)")
    refs = references_apart(clips, beam5=False)
    audio = [r.audio for r in refs]
    total = args.hours * 3600
    window = args.window * 60

    placements: list[Placement] = []
    timeline = Timeline()
    lines: list[dict[str, Any]] = []
    rss_trace: list[tuple[float, float]] = []

    async def run(
        stream: Any, pid: int, stats: Any, counts: Callable[[], dict[str, float]] = dict
    ) -> None:
        started = time.monotonic()
        sent = 0  # samples
        next_window = window
        last_counts = await asyncio.to_thread(counts)
        last_wall = time.monotonic()

        def audio_now() -> float:
            return sent / SAMPLE_RATE

        async def reader() -> None:
            async for event in stream:
                now = time.monotonic()
                if isinstance(event, TranscriptionDelta):
                    timeline.text += event.delta
                    for w in _words_of(event.delta):
                        timeline.words.append((w, now, audio_now()))
                elif isinstance(event, ErrorEvent):
                    print(json.dumps({"error": event.code, "at_s": audio_now()}), file=sys.stderr)
                elif isinstance(event, TranscriptionDone):
                    return

        task = asyncio.create_task(reader())
        try:
            for index, gap in plan(len(clips), args.hours, args.seed):
                if sent / SAMPLE_RATE >= total:
                    break
                placements.append(Placement(sent / SAMPLE_RATE, index))
                samples = np.concatenate([audio[index], np.zeros(int(gap * SAMPLE_RATE))])
                for i in range(0, len(samples), CHUNK):
                    piece = samples[i : i + CHUNK]
                    due = started + (sent + len(piece)) / SAMPLE_RATE / args.pace
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await stream.send_audio(float_to_pcm16(piece.astype(np.float32)))
                    sent += len(piece)
                    timeline.sent_wall.append(time.monotonic())
                    timeline.sent_audio.append(sent / SAMPLE_RATE)
                    if audio_now() >= next_window:
                        await asyncio.sleep(args.settle)  # the window's last words arrive
                        rss_trace.append((audio_now(), rss_of(pid)))
                        line = window_line(
                            next_window - window, next_window, refs, placements, timeline
                        )
                        line.update(
                            rss_mb=round(rss_of(pid), 1),
                            # Other work on the machine shows here before it shows as drift.
                            load_1m=round(os.getloadavg()[0], 2),
                            **stats(),
                        )
                        now_counts = await asyncio.to_thread(counts)
                        now_wall = time.monotonic()
                        line.update(worker_figures(last_counts, now_counts, now_wall - last_wall))
                        last_counts, last_wall = now_counts, now_wall
                        lines.append(line)
                        print(json.dumps(line), flush=True)
                        next_window += window
                    elif len(timeline.sent_wall) % 300 == 0:
                        rss_trace.append((audio_now(), rss_of(pid)))
            await stream.finish()
            await task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    if args.path == "local":
        from components.backends.local import LocalBackend
        from components.engines.whisper.engine import WhisperEngine

        engine = WhisperEngine.from_env()
        stream = await LocalBackend(engine).open()
        try:
            await run(stream, os.getpid(), dict, engine.counts)
            await asyncio.sleep(args.settle)
            after = rss_of(os.getpid())
        finally:
            await engine.aclose()
    elif args.path == "sagemaker":
        from components.continuity.chain import ContinuousStream
        from components.continuity.policy import ContinuityPolicy
        from tests.support_sagemaker import running_container, running_front

        front_args = ("--max-stream-seconds", str(args.front_stream_seconds))
        with running_container() as container, running_front(container, args=front_args) as front:
            engine = engine_pid(container.process.pid)
            with front.environ():
                backend = front.backend()
                policy = ContinuityPolicy(max_stream_seconds=args.stream_seconds)
                chain = await ContinuousStream.open(backend, policy=policy, label="soak")

                def stats() -> dict[str, int]:
                    return {
                        "legs": chain.stats.legs,
                        "handovers": chain.stats.handovers,
                        "reconnects": chain.stats.reconnects,
                        "expired": chain.stats.expired,
                    }

                try:
                    await run(chain, engine, stats)
                    await asyncio.sleep(args.settle)
                    after = rss_of(engine)
                finally:
                    await backend.aclose()
    else:
        from components.backends.websocket import RealtimeWSBackend
        from components.continuity.chain import ContinuousStream
        from components.continuity.policy import ContinuityPolicy

        with running_server("--engine", "whisper") as url:
            policy = ContinuityPolicy(max_stream_seconds=args.stream_seconds)
            chain = await ContinuousStream.open(
                RealtimeWSBackend(url.ws), policy=policy, label="soak"
            )

            def stats() -> dict[str, int]:
                return {
                    "handovers": chain.stats.handovers,
                    "reconnects": chain.stats.reconnects,
                    "expired": chain.stats.expired,
                }

            await run(chain, url.process.pid, stats, metrics_counts(url))
            await asyncio.sleep(args.settle)
            after = rss_of(url.process.pid)
    lines.append(summary(lines, after, args))
    print(json.dumps(lines[-1]), flush=True)
    if args.plot:
        plot(args.plot, rss_trace, lines[:-1], args)
    return lines


def window_line(
    lo: float, hi: float, refs: list[Any], placements: list[Placement], timeline: Timeline
) -> dict[str, Any]:
    """WER and word lag of the words whose audio ended in ``[lo, hi)``, and per clip of the
    evaluation set its words in the window and how many of them the stream missed."""
    ref_words: list[tuple[str, float]] = []
    clip_of: list[int] = []
    for p in placements:
        for word, end in refs[p.index].words:
            if lo <= p.start + end < hi:
                ref_words.append((word, p.start + end))
                clip_of.append(p.index)
    hyp = [(w, arrival) for w, arrival, mark in timeline.words if lo < mark <= hi + 5.0]
    # Words that arrived after the window's audio but belong to it are in the next window's
    # first seconds: take hypothesis words up to the one aligned with the last reference word.
    pairs = align([w for w, _ in ref_words], [w for w, _ in hyp])
    last = max((j for i, j in pairs), default=-1)
    hyp_words = [w for w, _ in hyp[: last + 1]]
    edits = edit_distance([w for w, _ in ref_words], hyp_words)
    lags = []
    sent = np.asarray(timeline.sent_wall)
    ends = np.asarray(timeline.sent_audio)
    for i, j in pairs:
        word, end = ref_words[i]
        if j <= last and hyp[j][0] == word:
            k = min(int(np.searchsorted(ends, end - 1e-6)), len(sent) - 1)
            lags.append(hyp[j][1] - sent[k])
    lag = lag_summary(lags)
    hit = {i for i, j in pairs if j <= last and hyp[j][0] == ref_words[i][0]}
    per_clip: dict[str, list[int]] = {}
    for i, clip in enumerate(clip_of):
        counts = per_clip.setdefault(str(clip), [0, 0])
        counts[0] += 1
        counts[1] += i not in hit
    return {
        "audio_min": round(hi / 60, 1),
        "words": len(ref_words),
        "wer": round(edits / len(ref_words), 4) if ref_words else None,
        "lag_p50_s": lag["p50_s"],
        "lag_p95_s": lag["p95_s"],
        "clips": per_clip,
    }


def missed_vs_expected(lines: list[dict[str, Any]]) -> list[float | None]:
    """Per window: words the stream missed, over what its clips' session-wide miss rates
    predict. WER follows what is said (a window of noisy clips scores worse than one of read
    speech, and every pass is shuffled anew); this ratio does not, so a trend in it is drift."""
    totals: dict[str, list[int]] = {}
    for line in lines:
        for clip, (words, missed) in line["clips"].items():
            t = totals.setdefault(clip, [0, 0])
            t[0] += words
            t[1] += missed
    rates = {clip: missed / words for clip, (words, missed) in totals.items() if words}
    ratios: list[float | None] = []
    for line in lines:
        expected = sum(words * rates.get(clip, 0.0) for clip, (words, _) in line["clips"].items())
        missed = sum(m for _, m in line["clips"].values())
        ratios.append(round(missed / expected, 3) if expected else None)
    return ratios


def trend(lines: list[dict[str, Any]], key: str) -> float | None:
    """Relative change of ``key`` from the first window to the last along the least-squares
    line through every window. One window's p95 moves by a tenth either way with what it
    holds (measured: 0.94-1.13 s over twelve 5-minute windows of one flat hour), so the first
    window against the last can show drift that is not there, or hide drift that is."""
    points = [(line["audio_min"], line[key]) for line in lines if line.get(key) is not None]
    if len(points) < 3:
        return None
    xs, ys = zip(*points, strict=True)
    slope, intercept = np.polyfit(xs, ys, 1)
    start, end = intercept + slope * xs[0], intercept + slope * xs[-1]
    return round(float(end / start - 1), 3) if start > 0 else None


def summary(lines: list[dict[str, Any]], after: float, args: argparse.Namespace) -> dict[str, Any]:
    if len(lines) < 2:
        return {"summary": "too short: at least two windows are needed", "rss_after_end_mb": after}
    first, last = lines[0], lines[-1]
    hours = (last["audio_min"] - first["audio_min"]) / 60
    growth = (last["rss_mb"] - first["rss_mb"]) / hours if hours else None

    def drift(key: str) -> float | None:
        a, b = first.get(key), last.get(key)
        return round(b / a - 1, 3) if a and b is not None else None

    adjusted = missed_vs_expected(lines)
    # Over the first and last two windows: one window holds only a few clips.
    head = [r for r in adjusted[:2] if r is not None]
    tail = [r for r in adjusted[-2:] if r is not None]

    return {
        "summary": "soak",
        "path": args.path,
        "pace": args.pace,
        "audio_hours": round(last["audio_min"] / 60, 2),
        "rss_first_window_mb": first["rss_mb"],
        "rss_last_window_mb": last["rss_mb"],
        "rss_mb_per_hour_after_first_window": round(growth, 1) if growth is not None else None,
        "rss_after_end_mb": round(after, 1),
        "rss_after_end_vs_first_window_mb": round(after - first["rss_mb"], 1),
        "lag_p95_drift": drift("lag_p95_s"),
        "lag_p95_trend": trend(lines, "lag_p95_s"),
        "lag_p50_trend": trend(lines, "lag_p50_s"),
        "round_ms_trend": trend(lines, "round_ms"),
        "wer_drift": drift("wer"),
        "missed_vs_expected_per_window": adjusted,
        "missed_vs_expected_drift": (
            round((sum(tail) / len(tail)) / (sum(head) / len(head)) - 1, 3)
            if head and tail and sum(head)
            else None
        ),
        "targets": TARGETS,
        "machine": machine(),
    }


def plot(path: str, rss: list[tuple[float, float]], lines: list[dict[str, Any]], args: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot([t / 60 for t, _ in rss], [m for _, m in rss], color="tab:blue")
    top.set_ylabel("engine RSS (MB)")
    top.set_title(f"Soak: {args.path}, pace {args.pace:g}x, {args.hours:g} h of audio")
    top.grid(alpha=0.3)
    minutes = [line["audio_min"] for line in lines]
    bottom.plot(minutes, [line["lag_p50_s"] for line in lines], "o-", label="lag p50")
    bottom.plot(minutes, [line["lag_p95_s"] for line in lines], "o-", label="lag p95")
    if any(line.get("round_ms") for line in lines):
        rounds = bottom.twinx()
        rounds.plot(
            minutes, [line.get("round_ms") for line in lines], "s--", color="tab:gray", alpha=0.6
        )
        rounds.set_ylabel("ms per engine round (dashed)")
    bottom.set_ylabel("word lag (s)")
    bottom.set_xlabel("audio (minutes)")
    bottom.grid(alpha=0.3)
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- the reset storm

STAGES = ("connect", "created", "updated", "audio", "committed", "transcribing")


async def one_reset(url: str, stage: str, speech: np.ndarray, rng: random.Random) -> str:
    """Open a session, go as far as ``stage``, then drop the TCP connection without a word."""
    from websockets.asyncio.client import connect

    if stage == "connect":
        # Drop while the handshake is in flight.
        parts = urlsplit(url)
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".encode())
        await writer.drain()
        writer.transport.abort()
        return stage
    ws = await connect(url, open_timeout=10, max_size=None)
    try:
        first = json.loads(await ws.recv())
        if first.get("type") == "error":
            return "refused"
        if stage == "created":
            return stage
        await ws.send(serialize(SessionUpdate(model=None)))
        await ws.send(serialize(InputAudioBufferCommit()))
        if stage == "updated":
            return stage
        n = rng.randint(1, 30)
        start = rng.randrange(0, max(1, len(speech) - n * CHUNK))
        for k in range(n):
            piece = speech[start + k * CHUNK : start + (k + 1) * CHUNK]
            await ws.send(serialize(InputAudioBufferAppend(float_to_pcm16(piece))))
        if stage == "audio":
            return stage
        await ws.send(serialize(InputAudioBufferCommit(final=True)))
        if stage == "committed":
            return stage
        try:
            async with asyncio.timeout(2.0):
                await ws.recv()
        except TimeoutError:
            pass
        return stage
    finally:
        ws.transport.abort()


def storm(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server (and the bridge), run the storm against it, read what is left."""
    import httpx

    from components.core.audio import load_file

    speech = load_file(str(next(c.path for c in load_clips() if c.id == "jfk")))
    with running_server("--engine", "whisper", "--max-sessions", str(args.concurrency)) as server:
        bridge = None
        url = server.ws
        pids = {"server": server.process.pid}
        if args.target == "bridge":
            port = free_port()
            bridge = subprocess.Popen(
                [sys.executable, "-m", "container.bridge", "--port", str(port), "--upstream", url],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"},
            )
            pids["bridge"] = bridge.pid
            _wait_port(port)
            url = f"ws://127.0.0.1:{port}/invocations-bidirectional-stream"
        try:
            before = {name: rss_of(pid) for name, pid in pids.items()}
            started = time.monotonic()
            counts = asyncio.run(_storm(url, speech, args))
            wall = time.monotonic() - started
            # Wait for the server to let go (it releases a vanished session on its own), at
            # most ``settle`` seconds: what is still open then is left over.
            deadline = time.monotonic() + args.settle
            while True:
                stats = httpx.get(f"{server}/stats").json()
                open_now = stats["sessions_active"] + stats["requests_active"]
                if open_now + (stats.get("engine_streams") or 0) == 0:
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            after = {name: rss_of(pid) for name, pid in pids.items()}
        finally:
            if bridge is not None:
                bridge.terminate()
                bridge.wait(10)
    streams = stats.get("engine_streams") or 0
    left = stats["sessions_active"] + stats["requests_active"] + streams
    return {
        "storm": args.storm,
        "target": args.target,
        "wall_s": round(wall, 1),
        "stages": counts,
        "left_open": {
            "sessions": stats["sessions_active"],
            "requests": stats["requests_active"],
            "engine_streams": stats.get("engine_streams"),
        },
        "left_total": left,
        "rss_before_mb": {k: round(v, 1) for k, v in before.items()},
        "rss_after_mb": {k: round(v, 1) for k, v in after.items()},
        "target_left": TARGETS["storm_left"],
        "machine": machine(),
    }


async def _storm(url: str, speech: np.ndarray, args: argparse.Namespace) -> dict[str, int]:
    rng = random.Random(args.seed)
    counts: dict[str, int] = {}
    remaining = args.storm

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            stage = rng.choice(STAGES)
            try:
                got = await one_reset(url, stage, speech, rng)
            except Exception as exc:  # a refusal at the handshake, a reset: counted
                got = f"failed:{type(exc).__name__}"
            counts[got] = counts.get(got, 0) + 1

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return counts


def _wait_port(port: int, seconds: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1.0).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on port {port}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hours", type=float, default=2.0, help="audio of the soak session")
    p.add_argument("--pace", type=float, default=2.0, help="x real time (see above)")
    p.add_argument("--path", choices=("local", "serve", "sagemaker"), default="serve")
    p.add_argument(
        "--front-stream-seconds",
        type=float,
        default=60.0,
        help="sagemaker: the local front ends each stream after this long (wall clock)",
    )
    p.add_argument("--window", type=float, default=10.0, help="minutes of audio per line")
    p.add_argument("--stream-seconds", type=float, default=None, help="hand over this often")
    p.add_argument("--settle", type=float, default=3.0, help="s to wait for the last words")
    p.add_argument("--plot", help="write a PNG of RSS and lag over time")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--storm", type=int, help="run a reset storm of this many sessions instead")
    p.add_argument("--target", choices=("serve", "bridge"), default="serve")
    p.add_argument("--concurrency", type=int, default=8, help="storm: sessions at once")
    args = p.parse_args()
    if args.storm:
        print(json.dumps(storm(args), indent=2))
    else:
        asyncio.run(soak(args))


if __name__ == "__main__":
    main()
