"""How many live sessions one process keeps real time: ramp 1, 2, 3, ... concurrent streams.

    .venv/bin/python bench/capacity.py                   # 60 s per step, up to 6 sessions
    .venv/bin/python bench/capacity.py --seconds 90 --max-sessions 8 --all
    WHISPER_SHARED_WINDOWS=long .venv/bin/python bench/capacity.py --only 6   # longer windows

Every session replays speech at real-time pace through the in-process engine (LocalBackend over
one WhisperEngine): whole evaluation clips back to back, each session starting at a different
clip so no two say the same thing at once. A step passes when the caption lag p95 over all
sessions' words stays within ``--p95`` seconds (2.5 by default). The ramp stops after the first
failing step (``--all`` runs every step). Printed as JSON: per step the lag figures, WER,
overload warnings, CPU use, memory and each session's transcript; the largest passing
session count; and the process memory with the model loaded. The machine load at the start is
included: other work on the machine lowers capacity.

WER has two offline yardsticks. ``offline_wer`` joins the clips' own offline transcripts, each
clip decoded alone from a clean start, which the stream never has: it hears the clips as one
recording with half-second gaps (a new voice starts while the decoder still holds the last
one in its window). ``offline_wer_same_audio`` is the offline transcript of each session's
recording as a whole, the input the stream has (Whisper's long-form decoding, each 30 s
window with the text before it as context: ``bench.common.offline_texts_apart``).
``--alone`` adds a third, the one a shared session is held to: each session's audio replayed
alone in real time, one after the other, with the engine to itself.
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
    TARGETS,
    Reference,
    concatenate,
    lag_summary,
    machine,
    offline_texts_apart,
    ratio,
    references_apart,
    replay,
    rss_mb,
    select_clips,
    wer_of,
    word_lags,
)
from components.core.evaluation import Clip
from components.core.protocol import ErrorCode


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-sessions", type=int, default=6)
    p.add_argument("--seconds", type=float, default=60.0, help="audio per session and step")
    p.add_argument("--p95", type=float, default=TARGETS["lag_p95_s"], help="lag limit (s)")
    p.add_argument("--all", action="store_true", help="run every step, even after a failure")
    p.add_argument("--clips", type=int, default=None, help="use only the first N clips")
    p.add_argument("--only", type=int, default=None, help="run just this many sessions")
    p.add_argument(
        "--alone",
        action="store_true",
        help="also replay each session's audio alone, one after the other (the single-stream "
        "WER a shared session is held to; n x --seconds more per step)",
    )
    return p


def _session_audio(refs: list[Reference], index: int, seconds: float) -> Reference:
    """Whole clips back to back from clip ``index`` on, at least ``seconds`` long."""
    order = refs[index % len(refs) :] + refs[: index % len(refs)]
    chosen: list[Reference] = []
    while sum(r.clip.seconds for r in chosen) < seconds:
        chosen.append(order[len(chosen) % len(order)])
    long = concatenate(chosen)
    clip = Clip(f"session-{index}", long.clip.path, long.clip.text, long.clip.seconds, "mixed")
    return Reference(clip, long.audio, long.offline_text, None, long.words)


async def _step(
    backend: Any, engine: Any, sessions: list[Reference], whole: list[str]
) -> dict[str, Any]:
    """One step of ``sessions`` at once; ``whole`` is each session's offline transcript."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    rounds0, busy0 = engine.scheduler.rounds, engine.scheduler.busy_seconds
    items0, calls0 = engine.decoder.items, engine.decoder.calls
    stages0 = dict(engine.decoder.seconds)
    streams = [await backend.open() for _ in sessions]
    results = await asyncio.gather(
        *(
            replay(stream, ref.audio, pace=1.0)
            for stream, ref in zip(streams, sessions, strict=True)
        )
    )
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    lags = [
        lag for ref, rep in zip(sessions, results, strict=True) for _, lag in word_lags(ref, rep)
    ]
    pairs = [(ref.clip.text, rep.text) for ref, rep in zip(sessions, results, strict=True)]
    offline = [(ref.clip.text, ref.offline_text) for ref in sessions]
    same = [(ref.clip.text, text) for ref, text in zip(sessions, whole, strict=True)]
    warnings = sum(1 for rep in results for e in rep.errors if e.code == str(ErrorCode.OVERLOADED))
    rounds = engine.scheduler.rounds - rounds0
    return {
        "sessions": len(sessions),
        "lag": lag_summary(lags),
        "wer": wer_of(pairs),
        "wer_per_session": [wer_of([pair]) for pair in pairs],
        "offline_wer": wer_of(offline),
        "ratio_vs_offline": ratio(wer_of(pairs), wer_of(offline)),
        "offline_wer_same_audio": wer_of(same),
        "offline_wer_same_audio_per_session": [wer_of([pair]) for pair in same],
        "ratio_vs_offline_same_audio": ratio(wer_of(pairs), wer_of(same)),
        "overloaded_warnings": warnings,
        "other_errors": [
            e.code for rep in results for e in rep.errors if e.code != str(ErrorCode.OVERLOADED)
        ],
        "cpu_share": round(cpu / wall / max(1, machine()["cpus"] or 1), 3),
        "rounds": rounds,
        "decodes_per_generate_call": round(
            (engine.decoder.items - items0) / max(1, engine.decoder.calls - calls0), 2
        ),
        "worker_busy_share": round((engine.scheduler.busy_seconds - busy0) / wall, 3),
        "engine_s_per_wall_s": {
            k: round((v - stages0.get(k, 0.0)) / wall, 3) for k, v in engine.decoder.seconds.items()
        },
        "memory": rss_mb(),
        "machine_after": machine(),
        "transcripts": [rep.text for rep in results],
    }


async def _alone(backend: Any, sessions: list[Reference], shared_wer: float) -> dict[str, Any]:
    """Each session's audio replayed alone at real time: the WER a session would have had with
    the engine to itself, which sharing it should keep."""
    pairs = []
    for ref in sessions:
        stream = await backend.open()
        pairs.append((ref.clip.text, (await replay(stream, ref.audio, pace=1.0)).text))
    alone = wer_of(pairs)
    return {
        "wer": alone,
        "wer_per_session": [wer_of([pair]) for pair in pairs],
        "ratio_shared_vs_alone": ratio(shared_wer, alone),
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from components.backends.local import LocalBackend
    from components.engines.whisper.engine import WhisperEngine

    start_machine = machine()
    refs = references_apart(select_clips(args.clips), beam5=False)
    base_memory = rss_mb()
    engine = WhisperEngine.from_env()
    loaded_memory = rss_mb()
    backend = LocalBackend(engine)
    steps = []
    best = 0
    counts = [args.only] if args.only else range(1, args.max_sessions + 1)
    for n in counts:
        sessions = [
            _session_audio(refs, i * max(1, len(refs) // n), args.seconds) for i in range(n)
        ]
        whole = offline_texts_apart([ref.audio for ref in sessions])
        result = await _step(backend, engine, sessions, whole)
        if args.alone:
            result["alone"] = await _alone(backend, sessions, result["wer"])
        p95 = result["lag"]["p95_s"]
        result["passed"] = p95 is not None and p95 <= args.p95
        steps.append(result)
        print(json.dumps({"progress": n, "lag": result["lag"]}), file=sys.stderr, flush=True)
        if result["passed"]:
            best = n
        elif not args.all:
            break
    await engine.aclose()
    return {
        "bench": "capacity",
        "engine": engine.name,
        "seconds_per_session": args.seconds,
        "lag_p95_limit_s": args.p95,
        "max_realtime_sessions": best,
        "target_sessions": TARGETS["sessions"],
        "memory_before_model": base_memory,
        "memory_model_loaded": loaded_memory,
        "steps": steps,
        "machine_at_start": start_machine,
    }


def main() -> None:
    args = _parser().parse_args()
    print(json.dumps(asyncio.run(_run(args)), indent=2))


if __name__ == "__main__":
    main()
