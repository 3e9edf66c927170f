"""What a names-and-terms prompt does to accuracy and to the cost of a decode.

    .venv/bin/python bench/prompt.py                  # every clip, 2x real time
    .venv/bin/python bench/prompt.py --pace 1 --placements lead

Each clip of the evaluation set is streamed through the in-process Whisper engine in 100 ms
chunks, once per configuration:

* ``none``: no session options (what every client sent before prompts existed);
* ``blank``: an empty prompt and ``language: en`` (must match ``none`` word for word);
* one run per terms placement (``lead``, ``trail``, ``start``; see
  ``components.engines.whisper.engine.TERMS_PLACEMENTS``) with each clip's proper nouns and terms
  as the prompt. Clips without any get no prompt in every run.

Printed as JSON: corpus WER of each run and its ratio to ``none``, WER over the clips that
have terms, how many of those clips have every term spelled right, and per decode in the run:
generate time (ms) and context tokens. A paced replay's decode schedule follows the wall
clock, so two runs of the same configuration differ in a few words (compare ``none`` and
``blank``) and in how decodes batch; ``decode_cost`` therefore also times one decode alone
(a 5 s window with 200 characters of confirmed text) without terms, with one name, and with
a 200-character list, median of 15.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statistics
import time

import numpy as np

from bench.common import machine, ratio, replay, select_clips, wer_of
from components.backends.local import LocalBackend
from components.core.audio import load_file
from components.core.evaluation import normalize
from components.core.protocol import NO_OPTIONS, SessionOptions
from components.engines.whisper.decoder import TERMS_PLACEMENTS, DecodeItem
from components.engines.whisper.engine import WhisperEngine

TERMS = {
    "librispeech-1221-135766-0002": "Hester Prynne",
    "librispeech-1272-128104-0000": "Quilter",
    "librivox-sense-and-sensibility-01-0870": "John Dashwood",
    "jfk": "Americans",
    "vbdemand-noisy-p257-001": "Stella",
    "vbdemand-noisy-p232-005": "Wednesday",
    "mfa-acoustic-corpus": "acoustic corpus",
    "mfa-cold-corpus": "sick corpus, acoustic corpus",
}
"""Each clip's proper nouns and terms, as a person preparing the captions would list them."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, help="only the first N clips")
    parser.add_argument("--pace", type=float, default=2.0, help="x real time; 0 = unpaced")
    parser.add_argument(
        "--placements",
        default=",".join(TERMS_PLACEMENTS),
        help="comma-separated terms placements to run",
    )
    return parser


def _spelled(terms: str, text: str) -> bool:
    words = " ".join(normalize(text))
    return all(" ".join(normalize(term)) in words for term in terms.split(","))


async def _run_config(
    engine: WhisperEngine, clips: list[Any], audio: dict[str, Any], name: str, pace: float
) -> dict[str, Any]:
    decoder = engine.decoder
    if name in TERMS_PLACEMENTS:
        decoder.terms_placement = name
    before = (decoder.items, decoder.context_tokens, decoder.seconds["generate"])
    backend = LocalBackend(engine)
    pairs, termed, spelled = [], [], 0
    for clip in clips:
        terms = TERMS.get(clip.id)
        if name == "none":
            options = NO_OPTIONS
        elif name == "blank":
            options = SessionOptions.checked(language="en", prompt="")
        else:
            options = SessionOptions(prompt=terms) if terms else NO_OPTIONS
        stream = await backend.open(options=options)
        result = await replay(stream, audio[clip.id], pace=pace)
        text = result.done_text if result.done_text is not None else result.text
        pairs.append((clip.text, text))
        if terms:
            termed.append((clip.text, text))
            spelled += _spelled(terms, text)
    items = decoder.items - before[0]
    generate = decoder.seconds["generate"] - before[2]
    return {
        "wer": wer_of(pairs),
        "wer_clips_with_terms": wer_of(termed),
        "terms_spelled": f"{spelled}/{len(termed)}",
        "decodes": items,
        "generate_ms_per_decode": round(1000 * generate / items, 2),
        "context_tokens_per_decode": round((decoder.context_tokens - before[1]) / items, 1),
        "texts": {clip.id: text for clip, (_, text) in zip(clips, pairs, strict=True)},
    }


def _decode_cost(engine: WhisperEngine, audio: np.ndarray) -> dict[str, Any]:
    """Milliseconds for one decode of the same window, by the terms it carries."""
    window = audio[: 5 * 16_000]
    confirmed = ("and so my fellow citizens of the world ask not what america will do " * 4)[:200]
    many = ", ".join(["Hester Prynne", "Kubernetes", "Dr. Okafor", "Quilter", "Dashwood"] * 4)
    decoder = engine.decoder
    out: dict[str, Any] = {}
    for label, terms in [
        ("no terms", ""),
        ("one name", "Hester Prynne"),
        ("200 chars", many[:200]),
    ]:
        item = DecodeItem(window, confirmed, "", terms=terms)
        decoder.decode([item])  # warm
        times = []
        for _ in range(15):
            started = time.perf_counter()
            decoder.decode([item])
            times.append(time.perf_counter() - started)
        context, _, _ = decoder.prompt_tokens(item)
        out[label] = {
            "ms": round(1000 * statistics.median(times), 1),
            "context_tokens": len(context),
        }
    base = out["no terms"]["ms"]
    for entry in out.values():
        entry["ratio"] = ratio(entry["ms"], base)
    return out


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    clips = select_clips(args.clips)
    audio = {clip.id: load_file(str(clip.path)) for clip in clips}
    engine = WhisperEngine()
    placements = [p for p in args.placements.split(",") if p]
    runs: dict[str, Any] = {}
    try:
        for name in ["none", "blank", *placements]:
            runs[name] = await _run_config(engine, clips, audio, name, args.pace)
        cost = _decode_cost(engine, next(iter(audio.values())))
    finally:
        await engine.aclose()
    base = runs["none"]
    for run in runs.values():
        run["wer_ratio"] = ratio(run["wer"], base["wer"])
        run["generate_ms_ratio"] = ratio(
            run["generate_ms_per_decode"], base["generate_ms_per_decode"]
        )
    runs["blank"]["same_text_as_none"] = runs["blank"]["texts"] == base["texts"]
    for name, run in runs.items():
        if name != "none":
            run["texts"] = {
                cid: text for cid, text in run["texts"].items() if text != base["texts"][cid]
            }
    return {
        "clips": len(clips),
        "pace": args.pace,
        "terms": {cid: t for cid, t in TERMS.items() if cid in audio},
        "runs": runs,
        "decode_cost": cost,
        "machine": machine(),
    }


def main() -> None:
    args = _parser().parse_args()
    print(json.dumps(asyncio.run(_main(args)), indent=2))


if __name__ == "__main__":
    main()
