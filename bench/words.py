"""Every word, every time: words lost by streaming, at any pace, on read speech and conversation.

    .venv/bin/python bench/words.py                      # eval + conversation sets, fast and 1x
    .venv/bin/python bench/words.py --pace 0 --set conversation
    .venv/bin/python bench/words.py --pace 1 --set eval --cases jfk,cmu-goforward

Each case goes through a fresh stream of the in-process engine (``LocalBackend``), one case
after another, at each ``--pace`` (0 = as fast as the engine takes audio, a backlog; 1 = real
time). The same audio is transcribed offline by the same model (whole recording, greedy, no
temperature fallback), which is the bar: streaming should lose no more words than that.

Printed as JSON, per set and pace: WER and deletions (words said and never shown) against the
references, the same for the offline transcripts, their ratios, and the cases that lost words
the offline transcript has. ``--texts`` adds every transcript.

The conversation set (``tests/data/conversation.jsonl``) is the evaluation audio spliced the way
people talk: a clip said twice, last words said again, short answers repeated between two
speakers, a clip three times, and the whole evaluation set with every other clip repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import joined, machine, offline_model, offline_segments, ratio, replay
from components.core.audio import load_file
from components.core.evaluation import Errors, errors, load_clips, load_conversations

ZERO = Errors(0, 0, 0, 0)


@dataclass
class Case:
    set: str
    id: str
    text: str
    audio: np.ndarray
    offline: str = ""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--pace", type=float, action="append", help="x real time, repeatable (default: 0 and 1)"
    )
    p.add_argument("--set", choices=("eval", "conversation", "both"), default="both")
    p.add_argument("--cases", help="only these case ids (comma-separated)")
    p.add_argument("--texts", action="store_true", help="include every transcript")
    return p


def _cases(which: str, only: set[str] | None) -> list[Case]:
    cases: list[Case] = []
    if which in ("eval", "both"):
        for clip in load_clips():
            cases.append(Case("eval", clip.id, clip.text, load_file(str(clip.path))))
    if which in ("conversation", "both"):
        for conv in load_conversations():
            cases.append(Case("conversation", conv.id, conv.text, conv.audio))
    if not cases:
        raise SystemExit("the evaluation set is missing (set EVAL_DIR)")
    return [c for c in cases if only is None or c.id in only]


def _offline(cases: list[Case]) -> None:
    model = offline_model()
    for case in cases:
        case.offline = joined(offline_segments(model, case.audio))


async def _stream_all(cases: list[Case], pace: float) -> list[tuple[str, dict[str, Any]]]:
    from components.backends.local import LocalBackend
    from components.engines.whisper.engine import WhisperEngine

    engine = WhisperEngine.from_env()
    backend = LocalBackend(engine)
    out = []
    try:
        for case in cases:
            stream = await backend.open()
            result = await replay(stream, case.audio, pace=pace)
            out.append((result.text, {"errors": [e.code for e in result.errors]}))
    finally:
        await engine.aclose()
    return out


def _summary(pairs: list[tuple[Case, str]]) -> dict[str, Any]:
    streamed = sum((errors(c.text, text) for c, text in pairs), ZERO)
    offline = sum((errors(c.text, c.offline) for c, _ in pairs), ZERO)
    return {
        "cases": len(pairs),
        "words": streamed.words,
        "wer": round(streamed.edits / streamed.words, 4) if streamed.words else None,
        "offline_wer": round(offline.edits / offline.words, 4) if offline.words else None,
        "wer_ratio": ratio(streamed.edits, offline.edits),
        "deletions": streamed.deletions,
        "offline_deletions": offline.deletions,
        "deletions_ratio": ratio(streamed.deletions, offline.deletions),
        "insertions": streamed.insertions,
        "offline_insertions": offline.insertions,
        "lost_vs_offline": [
            {"id": c.id, "words_lost": lost}
            for c, text in pairs
            if (lost := errors(c.offline, text).deletions) > 0
        ],
    }


def main() -> None:
    args = _parser().parse_args()
    paces = args.pace or [0.0, 1.0]
    only = set(args.cases.split(",")) if args.cases else None
    cases = _cases(args.set, only)
    _offline(cases)
    report: dict[str, Any] = {
        "bench": "words",
        "audio_s": round(sum(len(c.audio) for c in cases) / 16_000, 1),
        "runs": [],
    }
    for pace in paces:
        started = time.monotonic()
        texts = asyncio.run(_stream_all(cases, pace))
        run: dict[str, Any] = {"pace": pace, "wall_s": round(time.monotonic() - started, 1)}
        for name in ("eval", "conversation"):
            pairs = [(c, t) for c, (t, _) in zip(cases, texts, strict=True) if c.set == name]
            if pairs:
                run[name] = _summary(pairs)
        run["error_events"] = [e for _, info in texts for e in info["errors"]]
        if args.texts:
            run["texts"] = {
                c.id: {"streamed": t, "offline": c.offline}
                for c, (t, _) in zip(cases, texts, strict=True)
            }
        report["runs"].append(run)
    report["machine"] = machine()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
