"""Continuity of a long session across planned handovers and cut connections.

    .venv/bin/python bench/continuity.py                    # 25 clips, real time (about 7 min)
    .venv/bin/python bench/continuity.py --pace 2 --clips 10

The evaluation clips, 0.5 s apart, make one long recording. It is captioned twice by the same
in-process server (``components.server.app`` with the bundled Whisper model), through a TCP relay
on loopback:

* **uninterrupted**: one stream, nothing happens to it;
* **chained**: a continuous stream (components/continuity/chain.py) whose legs are limited to
  ``--stream-seconds`` (a handover in a pause every 16-21 s by default), while the relay cuts
  every open connection every ``--cut-every`` seconds of audio (a replay after each).

Printed as JSON: WER of both against the references and their ratio (target <= 1.05); words
lost (reference words the uninterrupted stream has and the chained one lacks; target 0) and,
for scale, words gained (the other way round: two streams that cut the same audio into other
windows read a few hard words differently, either way);
audio that could not be recovered (target 0); and the extra caption lag of the words in the
5 s after each seam (chained minus uninterrupted, per word; p50/p95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    align,
    concatenate,
    lag_summary,
    machine,
    ratio,
    references_apart,
    replay,
    select_clips,
    wer_of,
    word_lags,
)
from components.core.evaluation import normalize, same_compounds

TARGETS = {"wer_ratio": 1.05, "words_lost": 0, "lost_audio_s": 0.0}
SEAM_WINDOW_S = 5.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=None, help="only the first N clips")
    p.add_argument("--pace", type=float, default=1.0, help="x real time")
    p.add_argument("--cut-every", type=float, default=45.0, help="s of audio between cuts")
    p.add_argument(
        "--stream-seconds",
        type=float,
        default=25.0,
        help="leg limit; handovers fall 65-85 %% into it (default %(default)g)",
    )
    p.add_argument("--texts", action="store_true", help="include both transcripts and the seams")
    p.add_argument("-v", "--verbose", action="store_true", help="log each seam to stderr")
    return p


async def _caption(
    url: str, audio: Any, *, pace: float, policy: Any, relay: Any, cut_every: float | None
) -> tuple[Any, Any, list[float]]:
    from components.backends.websocket import RealtimeWSBackend
    from components.continuity.chain import ContinuousStream
    from components.continuity.policy import StreamNotice

    seams: list[float] = []
    sent = [0.0]
    next_cut = [cut_every or float("inf")]

    def on_notice(notice: StreamNotice) -> None:
        if notice.kind == "handover":
            seams.append(sent[0])

    def on_sent(seconds: float) -> None:
        sent[0] = seconds
        if seconds >= next_cut[0]:
            next_cut[0] += cut_every or float("inf")
            relay.cut()
            seams.append(seconds)

    stream = await ContinuousStream.open(
        RealtimeWSBackend(url), policy=policy, on_notice=on_notice, label="bench"
    )
    result = await replay(stream, audio, pace=pace, on_sent=on_sent)
    return result, stream.stats, seams


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn

    from components.continuity.policy import ContinuityPolicy
    from components.engines.whisper.engine import WhisperEngine
    from components.server.app import create_app
    from components.server.state import ServerSettings
    from tests.support_relay import TcpRelay

    refs = references_apart(select_clips(args.clips), beam5=False)
    long = concatenate(refs)
    engine = WhisperEngine.from_env()
    app = create_app(engine, ServerSettings(), close_engine=False)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, ws="websockets-sansio")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event)
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with TcpRelay("127.0.0.1", port) as relay:
            url = f"ws://127.0.0.1:{relay.port}/v1/realtime"
            started = time.monotonic()
            plain, _, _ = await _caption(
                url, long.audio, pace=args.pace, policy=None, relay=relay, cut_every=None
            )
            policy = ContinuityPolicy(max_stream_seconds=args.stream_seconds)
            chained, stats, seams = await _caption(
                url,
                long.audio,
                pace=args.pace,
                policy=policy,
                relay=relay,
                cut_every=args.cut_every,
            )
            wall = time.monotonic() - started
    finally:
        server.should_exit = True
        await serving
        await engine.aclose()
    reference = long.clip.text
    wer_plain = wer_of([(reference, plain.text)])
    wer_chained = wer_of([(reference, chained.text)])
    out = {
        "audio_s": round(len(long.audio) / 16_000, 1),
        "pace": args.pace,
        "wall_s": round(wall, 1),
        "legs": stats.legs,
        "handovers": stats.handovers,
        "cuts": stats.reconnects,
        "replayed_s": round(stats.replayed_samples / 16_000, 1),
        "words_dropped_at_seams": stats.dropped_words,
        "wer_uninterrupted": wer_plain,
        "wer_chained": wer_chained,
        "wer_ratio": ratio(wer_chained, wer_plain),
        "wer_chained_vs_uninterrupted": wer_of([(plain.text, chained.text)]),
        "words_lost": _words_lost(reference, plain.text, chained.text),
        "words_gained": _words_lost(reference, chained.text, plain.text),
        "lost_audio_s": round(stats.lost_samples / 16_000, 2),
        "seam_extra_lag": lag_summary(_seam_extra_lags(long, plain, chained, seams, args.pace)),
        "targets": TARGETS,
        "machine": machine(),
    }
    if args.texts:
        out["seams_s"] = [round(x, 1) for x in seams]
        out["seam_extra_lag_max_s"] = [
            round(max(lags), 2) if lags else None
            for lags in (
                _seam_extra_lags(long, plain, chained, [seam], args.pace) for seam in seams
            )
        ]
        out["uninterrupted"] = plain.text
        out["chained"] = chained.text
    return out


def _words_lost(reference: str, plain: str, chained: str) -> int:
    """Reference words the uninterrupted transcript has right and the chained one lacks.

    Scored as the WER is: a compound written as one word on one side and two on the other
    ("coldhearted", "cold-hearted") is the same words, not one of them lost.
    """
    ref, plain_words = same_compounds(normalize(reference), normalize(plain))
    ref, chained_words = same_compounds(ref, normalize(chained))
    right = {i for i, j in align(ref, plain_words) if ref[i] == plain_words[j]}
    present = {i for i, _ in align(ref, chained_words)}
    return len(right - present)


def _seam_extra_lags(
    long: Any, plain: Any, chained: Any, seams: list[float], pace: float
) -> list[float]:
    """Per word ending within SEAM_WINDOW_S after a seam: chained lag minus uninterrupted lag."""
    plain_lags = dict(word_lags(long, plain, pace=pace))
    extra = []
    for end, lag in word_lags(long, chained, pace=pace):
        if end in plain_lags and any(0 <= end - s <= SEAM_WINDOW_S for s in seams):
            extra.append(lag - plain_lags[end])
    return extra


def main() -> None:
    args = _parser().parse_args()
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("components.continuity.chain").setLevel(logging.INFO)
    print(json.dumps(asyncio.run(_run(args)), indent=2))


if __name__ == "__main__":
    main()
