"""Caption latency and streaming accuracy on the evaluation set, replayed in real time.

    .venv/bin/python bench/latency.py --local                 # in-process engine (default)
    .venv/bin/python bench/latency.py --url ws://127.0.0.1:8081/v1/realtime
    .venv/bin/python bench/latency.py --local --clips 5 --pace 2
    .venv/bin/python bench/latency.py --local --concat        # all clips as one long stream

Each clip is sent as PCM16 in 100 ms chunks at real-time pace (``--pace`` 2 = twice as fast,
0 = as fast as accepted) through a fresh stream, one clip after another. Printed as JSON:

* streaming WER, and offline WER of the same model on the same clips (whole clip, greedy, no
  temperature fallback; beam 5 as well unless ``--no-beam5``), with their ratio;
* time to the first delta of each clip (median), and per-word caption lag p50/p95: from the
  moment the audio chunk holding the word's end was sent to the arrival of the delta with the
  word, word ends taken from the model's own offline word timestamps;
* with ``--concat``, lag in the first and last third of the long stream (growth shows there);
* process CPU time per second of audio (``--local``), memory, machine load, and ratios to
  the anchors and targets of PERFORMANCE.md.

Offline references always use the bundled model in this process (or ``WHISPER_MODEL``), so
with ``--url`` they match only if the server runs the same model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from components.core.protocol import SAMPLE_RATE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="in-process engine (default)")
    where.add_argument("--url", help="a Realtime server, ws://HOST:PORT/v1/realtime")
    p.add_argument("--model", help="model name for session.update (--url)")
    p.add_argument("--api-key", help="API key for the server (--url)")
    p.add_argument("--clips", type=int, default=None, help="only the first N clips")
    p.add_argument("--pace", type=float, default=1.0, help="x real time; 0 = unpaced")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per append (ms)")
    p.add_argument("--concat", action="store_true", help="all clips as one long stream")
    p.add_argument("--no-beam5", action="store_true", help="skip the offline beam-5 reference")
    p.add_argument("--per-clip", action="store_true", help="include per-clip figures")
    return p


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from components.backends.local import LocalBackend
    from components.engines.whisper.engine import WhisperEngine

    refs = common.references_apart(common.select_clips(args.clips), beam5=not args.no_beam5)
    engine = None
    load_s = 0.0
    memory_loaded = None
    if args.url:
        from components.backends.websocket import RealtimeWSBackend

        backend: Any = RealtimeWSBackend(args.url, model=args.model, api_key=args.api_key)
        engine_name = backend.name
    else:
        load_started = time.monotonic()
        engine = WhisperEngine.from_env()
        load_s = time.monotonic() - load_started
        memory_loaded = common.rss_mb()
        backend = LocalBackend(engine)
        engine_name = engine.name
    streams = [common.concatenate(refs)] if args.concat else refs
    cpu0, wall0 = time.process_time(), time.monotonic()
    results = []
    for ref in streams:
        stream = await backend.open()
        results.append(
            (ref, await common.replay(stream, ref.audio, pace=args.pace, chunk_ms=args.chunk_ms))
        )
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    audio_s = sum(len(r.audio) for r in streams) / SAMPLE_RATE
    stages: dict[str, float] = {}
    counts: dict[str, int] = {}
    if engine is not None:
        stages = dict(engine.decoder.seconds)
        stages["rounds_total"] = engine.scheduler.busy_seconds
        counts = {
            "rounds": engine.scheduler.rounds,
            "decodes": engine.decoder.items,
            "generate_calls": engine.decoder.calls,
            "forced_tokens": engine.decoder.forced_tokens,
            "context_tokens": engine.decoder.context_tokens,
            "generated_tokens": engine.decoder.completion_tokens,
            "audio_encoded_s": round(engine.decoder.audio_encoded, 1),
        }
        await engine.aclose()
    return _report(
        args,
        refs,
        results,
        cpu=cpu,
        wall=wall,
        audio_s=audio_s,
        load_s=load_s,
        memory_loaded=memory_loaded,
        engine_name=engine_name,
        stages=stages,
        counts=counts,
    )


def _report(
    args: argparse.Namespace,
    refs: list[common.Reference],
    results: list[tuple[common.Reference, Any]],
    **info: Any,
) -> dict[str, Any]:
    streamed = common.wer_of([(ref.clip.text, rep.text) for ref, rep in results])
    offline = common.wer_of([(r.clip.text, r.offline_text) for r in refs])
    beam5 = (
        None
        if args.no_beam5
        else common.wer_of([(r.clip.text, r.offline_beam5_text or "") for r in refs])
    )
    lags = [lag for ref, rep in results for _, lag in common.word_lags(ref, rep, pace=args.pace)]
    firsts = [rep.first_delta() for _, rep in results if rep.first_delta() is not None]
    mismatched = sum(
        1 for _, rep in results if rep.done_text is not None and rep.done_text != rep.text
    )
    errors = [e.code for _, rep in results for e in rep.errors]
    lag = common.lag_summary(lags)
    out: dict[str, Any] = {
        "bench": "latency",
        "target": args.url or "local",
        "engine": info["engine_name"],
        "clips": len(refs),
        "audio_s": round(info["audio_s"], 1),
        "pace": args.pace,
        "chunk_ms": args.chunk_ms,
        "wer": {
            "streaming": streamed,
            "offline_beam1": offline,
            "offline_beam5": beam5,
            "ratio_vs_offline_beam1": common.ratio(streamed, offline),
            "target_ratio": common.TARGETS["wer_ratio"],
        },
        "first_delta_s": {
            "median": round(statistics.median(firsts), 3) if firsts else None,
            "max": round(max(firsts), 3) if firsts else None,
        },
        "word_lag": lag,
        "vs_targets": {
            "lag_p50": common.ratio(lag["p50_s"], common.TARGETS["lag_p50_s"]),
            "lag_p95": common.ratio(lag["p95_s"], common.TARGETS["lag_p95_s"]),
        },
        "vs_anchor_la2_1s_vad": {
            "wer": common.ratio(streamed, common.ANCHORS["la2_1s_vad"]["wer"]),
            "first_delta": common.ratio(
                statistics.median(firsts) if firsts else None,
                common.ANCHORS["la2_1s_vad"]["first_emission_s"],
            ),
            "lag_p50": common.ratio(lag["p50_s"], common.ANCHORS["la2_1s_vad"]["lag_p50_s"]),
            "lag_p95": common.ratio(lag["p95_s"], common.ANCHORS["la2_1s_vad"]["lag_p95_s"]),
        },
        "deltas_differ_from_done": mismatched,
        "error_events": errors,
        "wall_s": round(info["wall"], 1),
        "engine_load_s": round(info["load_s"], 2),
        "memory_after_load": info["memory_loaded"],
        "memory_end": common.rss_mb(),
        "machine": common.machine(),
    }
    if info.get("stages"):
        out["process_cpu_s_per_audio_s"] = round(info["cpu"] / info["audio_s"], 3)
        out["engine_s_per_audio_s"] = {
            k: round(v / info["audio_s"], 3) for k, v in info["stages"].items()
        }
        out["engine_counts"] = info["counts"]
    if args.concat and results:
        ref, rep = results[0]
        timed = common.word_lags(ref, rep, pace=args.pace)
        third = ref.clip.seconds / 3
        out["long_stream"] = {
            "first_third": common.lag_summary([lag for t, lag in timed if t < third]),
            "last_third": common.lag_summary([lag for t, lag in timed if t >= 2 * third]),
        }
    if args.per_clip:
        out["per_clip"] = [
            {
                "id": ref.clip.id,
                "wer": common.wer_of([(ref.clip.text, rep.text)]),
                "offline_wer": common.wer_of([(ref.clip.text, ref.offline_text)]),
                "first_delta_s": rep.first_delta(),
                "lag": common.lag_summary(
                    [lag for _, lag in common.word_lags(ref, rep, pace=args.pace)]
                ),
                "text": rep.text,
            }
            for ref, rep in results
        ]
    return out


def main() -> None:
    args = _parser().parse_args()
    print(json.dumps(asyncio.run(_run(args)), indent=2))


if __name__ == "__main__":
    main()
