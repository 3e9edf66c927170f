"""Policy changes compared on identical input: concurrent streams decoded on a fixed schedule.

    .venv/bin/python bench/fixed_schedule.py                      # 3 streams, 40 s, 0.5 s rounds
    .venv/bin/python bench/fixed_schedule.py --confirm-span 1.0   # the same with another span
    .venv/bin/python bench/fixed_schedule.py --per-clip            # each clip alone, one stream
    .venv/bin/python bench/fixed_schedule.py --apart               # each stream alone

In real time, how often a stream is decoded depends on how fast the machine is at that moment
(on a shared machine, the same work can take a quarter longer from one minute to the next), so
two real-time runs never decode the same audio the same way and their WER differs by more than
most policy changes. Here every round hands each stream exactly ``--step`` seconds of new audio,
however long the round took, so a run's transcripts depend only on the policy and the audio:
two configurations can be compared word for word. A small model on hard audio reads a word
differently when the windows fall elsewhere, though: with the audio shifted by 0.1-0.3 s
(``--shift``), the same configuration gave WER 0.066-0.111 for six streams, so compare over a
few shifts, not one run. The streams are those of
``bench/capacity.py`` (whole evaluation clips back to back, each stream starting at another
clip), run through the engine's own round function with the shared-engine policy.

Printed as JSON: WER (overall and per stream; against the clips' own offline transcripts and
the offline transcript of each stream's recording as a whole, see ``bench/capacity.py``), the
caption lag a saturated engine would give
(every round lasting one step: a round's text arrives one step after its audio), the work done
(decodes, generated and forced tokens, tokens generated past a decode's own limit because a
batch companion was allowed more, seconds of audio encoded) and round times. Round times are
the machine's, so they vary between runs; the work counts, the lag and the WER do not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.capacity import _session_audio
from bench.common import (
    Reference,
    Replay,
    lag_summary,
    offline_texts_apart,
    ratio,
    references_apart,
    select_clips,
    wer_of,
    word_lags,
)
from components.core.evaluation import edit_distance, normalize
from components.core.protocol import SAMPLE_RATE
from components.engines.whisper.engine import WhisperEngine
from components.engines.whisper.fixed_steps import StepStream, run_fixed_steps
from components.engines.whisper.policy import PolicyConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--seconds", type=float, default=40.0, help="audio per stream")
    p.add_argument("--step", type=float, default=0.5, help="new audio per stream and round (s)")
    p.add_argument(
        "--per-clip",
        action="store_true",
        help="each evaluation clip as its own one-stream session (as bench/latency.py does)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another setting of the policy in use (PolicyConfig field), e.g. trim_at=2.0",
    )
    p.add_argument("--confirm-span", type=float, help="agreement span (same as --set)")
    p.add_argument(
        "--shift",
        type=float,
        default=0.0,
        help="seconds of silence before every stream: the same speech, cut into other "
        "windows (a single run is one draw; compare configurations over a few shifts)",
    )
    p.add_argument(
        "--apart",
        action="store_true",
        help="decode the same streams one at a time, each alone (what sharing costs)",
    )
    return p


def _overrides(pairs: list[str]) -> dict[str, object]:
    defaults = dataclasses.asdict(PolicyConfig())
    out: dict[str, object] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in defaults or not value:
            raise SystemExit(f"--set {pair}: expected NAME=VALUE, NAME one of {sorted(defaults)}")
        kind = type(defaults[name])
        try:
            out[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise SystemExit(f"--set {pair}: {name} takes a {kind.__name__}") from None
    return out


def _engine(args: argparse.Namespace, sessions: int) -> WhisperEngine:
    """The engine with the settings asked for, in the policy ``sessions`` streams follow."""
    engine = WhisperEngine.from_env()
    settings = _overrides(args.set)
    if args.confirm_span is not None:
        settings["confirm_span"] = args.confirm_span
    # One stream runs the lone policy, several the shared one: change the one in use.
    if sessions > 1 and not args.apart:
        engine.shared_policy = dataclasses.replace(engine.shared_policy, **settings)
    else:
        engine.policy = dataclasses.replace(engine.policy, **settings)
    return engine


def _replay(
    engine: WhisperEngine, streams: list[Reference], step_s: float
) -> tuple[list[str], list[Replay], list[float], list[StepStream]]:
    """Every stream decoded in rounds of ``step_s`` new audio each: texts, deltas, round times."""
    decoded, rounds = run_fixed_steps(engine, [ref.audio for ref in streams], step_s)
    replays = []
    for stream in decoded:
        # A saturated engine: the round took as long as the audio it was given.
        deltas = [(handed + step_s, delta) for handed, delta in stream.deltas]
        replays.append(Replay(start=0.0, deltas=deltas))
    return [s.text for s in decoded], replays, rounds, decoded


def _shifted(ref: Reference, seconds: float) -> Reference:
    """``ref`` after ``seconds`` of silence."""
    silence = np.zeros(round(seconds * SAMPLE_RATE), np.float32)
    words = [(word, end + seconds) for word, end in ref.words]
    return dataclasses.replace(ref, audio=np.concatenate([silence, ref.audio]), words=words)


def _lags(streams: list[Reference], replays: list[Replay]) -> list[float]:
    chunk = 0.1
    lags: list[float] = []
    for ref, rep in zip(streams, replays, strict=True):
        ends = np.arange(chunk, len(ref.audio) / SAMPLE_RATE + chunk, chunk)
        rep.sent = [(round(float(e), 3), round(float(e), 3)) for e in ends]
        lags += [lag for _, lag in word_lags(ref, rep)]
    return lags


def _work(engine: WhisperEngine, slots: list[StepStream]) -> dict[str, Any]:
    decoder = engine.decoder
    return {
        "decodes": decoder.items,
        "generate_calls": decoder.calls,
        "generated_tokens": decoder.completion_tokens,
        "forced_tokens": decoder.forced_tokens,
        "excess_tokens": decoder.excess_tokens,
        "audio_encoded_s": round(decoder.audio_encoded, 1),
        "forced_cuts": sum(s.state.policy.forced_cuts for s in slots),
    }


def run_per_clip(args: argparse.Namespace) -> dict[str, Any]:
    """Each clip alone, one after the other, as ``bench/latency.py`` streams them."""
    refs = references_apart(select_clips(None), beam5=False)
    engine = _engine(args, 1)
    texts: list[str] = []
    replays: list[Replay] = []
    slots: list[StepStream] = []
    for ref in refs:
        text, replay, _, slot = _replay(engine, [ref], args.step)
        texts += text
        replays += replay
        slots += slot
    pairs = [(ref.clip.text, text) for ref, text in zip(refs, texts, strict=True)]
    offline = [(ref.clip.text, ref.offline_text) for ref in refs]
    streamed, offline_wer = wer_of(pairs), wer_of(offline)
    return {
        "bench": "fixed_schedule",
        "per_clip": True,
        "step_s": args.step,
        "policy": dataclasses.asdict(engine.policy),
        "wer": streamed,
        "offline_wer": offline_wer,
        "ratio_vs_offline": ratio(streamed, offline_wer),
        "lag_if_saturated": lag_summary(_lags(refs, replays)),
        "work": _work(engine, slots),
        "clips": [
            {
                "id": ref.clip.id,
                "errors": edit_distance(normalize(ref.clip.text), normalize(text)),
                "offline_errors": edit_distance(
                    normalize(ref.clip.text), normalize(ref.offline_text)
                ),
                "text": text,
            }
            for ref, text in zip(refs, texts, strict=True)
        ],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.per_clip:
        return run_per_clip(args)
    refs = references_apart(select_clips(None), beam5=False)
    n = args.sessions
    engine = _engine(args, n)
    streams = [_session_audio(refs, i * max(1, len(refs) // n), args.seconds) for i in range(n)]
    if args.shift > 0:
        streams = [_shifted(stream, args.shift) for stream in streams]
    if args.apart:
        # The same streams, each alone (the lone policy, nothing batched): the cost of sharing.
        texts, replays, rounds, slots = [], [], [], []
        for stream in streams:
            text, replay, times, slot = _replay(engine, [stream], args.step)
            texts, replays, rounds, slots = (
                texts + text,
                replays + replay,
                rounds + times,
                slots + slot,
            )
    else:
        texts, replays, rounds, slots = _replay(engine, streams, args.step)
    pairs = [(ref.clip.text, text) for ref, text in zip(streams, texts, strict=True)]
    whole = offline_texts_apart([ref.audio for ref in streams])
    same = [(ref.clip.text, text) for ref, text in zip(streams, whole, strict=True)]
    live = rounds[: int(args.seconds / args.step)]
    return {
        "bench": "fixed_schedule",
        "sessions": n,
        "apart": args.apart,
        "seconds": args.seconds,
        "shift_s": args.shift,
        "step_s": args.step,
        "policy": dataclasses.asdict(
            engine.shared_policy if n > 1 and not args.apart else engine.policy
        ),
        "wer": wer_of(pairs),
        "wer_per_stream": [wer_of([pair]) for pair in pairs],
        "lag_if_saturated": lag_summary(_lags(streams, replays)),
        "offline_wer": wer_of([(ref.clip.text, ref.offline_text) for ref in streams]),
        "offline_wer_per_stream": [wer_of([(r.clip.text, r.offline_text)]) for r in streams],
        "offline_wer_same_audio": wer_of(same),
        "offline_wer_same_audio_per_stream": [wer_of([pair]) for pair in same],
        "work": _work(engine, slots),
        "round_s": {
            "mean": round(float(np.mean(live)), 3),
            "p90": round(float(np.percentile(live, 90)), 3),
            "engine_s_per_audio_s": round(float(np.sum(live)) / (len(live) * args.step), 3),
        },
        "transcripts": texts,
    }


def main() -> None:
    print(json.dumps(run(_parser().parse_args()), indent=2))


if __name__ == "__main__":
    main()
