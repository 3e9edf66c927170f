"""The page as a viewer sees it: latency of captions in real Chromium with a fake microphone.

For each clip, Chromium plays the clip (with silence before and after) as its microphone into
the page served by ``python app.py``; a MutationObserver in the page stamps every change of
the caption box. Times are measured against the word timings of the same model run offline
over the clip (faster-whisper with word timestamps, greedy), so the figures are:

* first caption: from the start of speech to the first caption text on screen, and to the
  first word of the clip on screen (a first guess can be wrong);
* word lag: from the end of each word's audio to the moment the word is on screen, tentative
  (grey) or confirmed, p50/p95 over all words the page and the offline run agree on;
* push latency: from a caption change in the server's session to the change on screen;
* page overhead: from the moment the browser's audio thread hands over a 50 ms frame to the
  moment the server's acknowledgement of it is back in the page, p50/p95 (an upper bound of
  capture to engine input: it includes the way back);
* samples lost: the page's count of samples captured against the session's count of samples
  received, and the session's own in/out accounting (both must be 0).

``--visitors 2`` plays two clips at once in two browsers, the engine and both browsers sharing
the machine: what "under load" means on a 2-core machine.

Audio starts when the page asks for the microphone (``getUserMedia``), which is taken as time
zero of the clip: the recorder starts a little later, so the lags reported are, if anything,
slightly longer than the truth. The machine is shared: the load average is printed with them.

    .venv/bin/python bench/page.py                 # six clips, the embedded Whisper engine
    .venv/bin/python bench/page.py --clips jfk --json out.json
    .venv/bin/python bench/page.py --visitors 2      # the same six clips, two at a time
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import offline_model, offline_segments  # noqa: E402
from components.core.audio import load_file  # noqa: E402
from components.core.evaluation import Clip, load_clips, normalize, wer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SILENCE_BEFORE = 1.5
SILENCE_AFTER = 8.0
"""Longer than Stop may be held (the page waits for chunks in flight), so no clip plays twice."""
AFTER_SPEECH = 2.0
"""Recording goes on this long after the clip's speech, so late captions are still measured."""
DEFAULT_CLIPS = (
    "librispeech-1089-134686-0000",
    "librispeech-1272-128104-0000",
    "jfk",
    "librivox-sense-and-sensibility-01-0870",
    "vbdemand-noisy-p232-005",
    "librispeech-2412-153948-0000",
)
TARGETS = {"first_caption_s": 1.0, "word_lag_p50_s": 1.8, "overhead_p95_s": 0.15}

INIT_JS = """
(() => {
  const lc = (window.__lc = { changes: [], pushes: [], gumCall: null, gumDone: null });
  let lastCaptionAt = "";
  const media = navigator.mediaDevices;
  const original = media.getUserMedia.bind(media);
  media.getUserMedia = async (constraints) => {
    if (lc.gumCall === null) lc.gumCall = performance.now();
    const stream = await original(constraints);
    if (lc.gumDone === null) lc.gumDone = performance.now();
    return stream;
  };
  const watch = () => {
    const box = document.querySelector("#captions");
    if (!box) { setTimeout(watch, 20); return; }
    const snap = () => {
      const f = box.querySelector(".final"), p = box.querySelector(".partial");
      lc.changes.push([performance.now(), f ? f.textContent : "", p ? p.textContent : ""]);
      // The server's time of this caption change rides along in the figures panel.
      const at = document.querySelector("#figures .figures")?.dataset.captionAt || "";
      if (at && at !== lastCaptionAt) {
        lastCaptionAt = at;
        lc.pushes.push(Date.now() / 1000 - Number(at));
      }
    };
    const options = { subtree: true, childList: true, characterData: true };
    new MutationObserver(snap).observe(box, options);
  };
  watch();
})();
"""


@dataclass
class Offline:
    words: list[tuple[str, float, float]]  # normalised word, start, end (s, clip time)

    @property
    def onset(self) -> float:
        return self.words[0][1] if self.words else 0.0


@dataclass
class ClipResult:
    clip: Clip
    final_text: str = ""
    first_caption: float | None = None
    first_correct: float | None = None
    lags_visible: list[float] = field(default_factory=list)
    lags_confirmed: list[float] = field(default_factory=list)
    pushes: list[float] = field(default_factory=list)
    words: int = 0
    samples_lost: int | None = None
    captured: int = 0
    samples_in: int = 0
    overhead_p50: float | None = None
    overhead_p95: float | None = None
    audio_start_uncertainty: float = 0.0
    state: str = ""
    error: str = ""


def offline_words(model: Any, clip: Clip) -> Offline:
    segments = offline_segments(model, load_file(str(clip.path)), word_timestamps=True)
    words: list[tuple[str, float, float]] = []
    for segment in segments:
        for w in segment.words or []:
            for norm in normalize(w.word):
                words.append((norm, float(w.start), float(w.end)))
    return Offline(words)


def first_seen(
    reference: list[str], snapshots: list[tuple[float, list[str]]]
) -> list[float | None]:
    """For each reference word, the first snapshot time at which it is on screen (aligned)."""
    seen: list[float | None] = [None] * len(reference)
    for t, shown in snapshots:
        matcher = difflib.SequenceMatcher(None, reference, shown, autojunk=False)
        for block in matcher.get_matching_blocks():
            for i in range(block.a, block.a + block.size):
                if seen[i] is None:
                    seen[i] = t
    return seen


def padded(clip: Clip, directory: Path) -> Path:
    samples, rate = soundfile.read(clip.path, dtype="int16", always_2d=False)
    if samples.ndim == 2:
        samples = samples.mean(axis=1).astype(np.int16)
    pad = [np.zeros(int(s * rate), np.int16) for s in (SILENCE_BEFORE, SILENCE_AFTER)]
    path = directory / f"{clip.id}.wav"
    soundfile.write(path, np.concatenate([pad[0], samples, pad[1]]), rate, subtype="PCM_16")
    return path


def start_app(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    with tempfile.NamedTemporaryFile(prefix="page-bench-", suffix=".log", delete=False) as f:
        log_path = Path(f.name)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        **env,
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"app.py exited:\n{log_path.read_text()[-3000:]}")
        try:
            up = httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            up = False
        if up and "local engine ready" in log_path.read_text(errors="replace"):
            return process, url, log_path
        time.sleep(0.2)
    process.kill()
    raise SystemExit("app.py did not start in 180 s")


def launch_browser(playwright: Any, wav: Path) -> Any:
    """Debian's Chromium with ``wav`` as its microphone, played once."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop",
            "--disable-background-networking",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ],
    )


class Visitor:
    """One browser with its own fake microphone, driven through the phases of a recording."""

    def __init__(self, playwright: Any, url: str, clip: Clip, wav: Path) -> None:
        self.clip = clip
        self.browser = launch_browser(playwright, wav)
        context = self.browser.new_context(permissions=["microphone"])
        context.add_init_script(INIT_JS)
        self.page = context.new_page()
        self.page.goto(url, wait_until="load")
        self.mic = self.page.locator("#mic")

    def record(self) -> None:
        self.mic.get_by_role("button", name="Record").click()

    def stop(self) -> None:
        self.mic.get_by_role("button", name="Stop").click()

    def collect(self, offline: Offline) -> ClipResult:
        result = ClipResult(self.clip)
        page = self.page
        try:
            page.wait_for_function(
                "() => ['done', 'failed'].includes("
                "document.querySelector('#figures .figures')?.dataset.state)"
                " && document.querySelector('#mic .mic')?.dataset.state === 'idle'",
                timeout=90_000,
            )
            figures = page.locator("#figures .figures")
            result.state = figures.get_attribute("data-state") or ""
            lost = figures.get_attribute("data-samples-lost") or ""
            result.samples_lost = int(lost) if lost else None
            result.samples_in = int(figures.get_attribute("data-samples-in") or 0)
            mic = page.evaluate("() => ({...document.querySelector('#mic .mic').dataset})")
            result.captured = int(mic.get("captured") or 0)
            if mic.get("delayP50"):
                result.overhead_p50 = float(mic["delayP50"]) / 1000
                result.overhead_p95 = float(mic["delayP95"]) / 1000
            result.error = page.locator("#status").inner_text().strip()
            final = page.locator("#captions .final")
            result.final_text = final.inner_text().strip() if final.count() else ""
            lc = page.evaluate("() => window.__lc")
        finally:
            self.browser.close()
        measure(result, lc, offline)
        return result


def measure(result: ClipResult, lc: dict[str, Any], offline: Offline) -> None:
    """Caption timings of one recording, against the offline word timings of its clip."""
    result.pushes = [float(x) for x in lc["pushes"]]
    if lc["gumCall"] is None or not offline.words:
        return
    zero = lc["gumCall"] + SILENCE_BEFORE * 1000  # page time (ms) of the clip's t = 0
    result.audio_start_uncertainty = (lc["gumDone"] - lc["gumCall"]) / 1000
    reference = [w for w, _, _ in offline.words]
    visible = [(t, normalize(f + " " + p)) for t, f, p in lc["changes"]]
    confirmed = [(t, normalize(f)) for t, f, _ in lc["changes"]]
    shown = [t for t, words in visible if words]
    if shown:
        result.first_caption = (shown[0] - zero) / 1000 - offline.onset
    result.words = len(reference)
    hits = [t for t in first_seen(reference, visible) if t is not None]
    if hits:
        result.first_correct = (min(hits) - zero) / 1000 - offline.onset
    for seen, lags in (
        (first_seen(reference, visible), result.lags_visible),
        (first_seen(reference, confirmed), result.lags_confirmed),
    ):
        for (_, _, end), t in zip(offline.words, seen, strict=True):
            if t is not None:
                lags.append((t - zero) / 1000 - end)


def run_together(
    playwright: Any, url: str, clips: list[Clip], offline: dict[str, Offline], directory: Path
) -> list[ClipResult]:
    """Record ``clips`` at the same time, one browser each; stop each after its speech."""
    visitors = [Visitor(playwright, url, c, padded(c, directory)) for c in clips]
    start = time.monotonic()
    for v in visitors:
        v.record()
    for v in sorted(visitors, key=lambda v: v.clip.seconds):
        left = start + SILENCE_BEFORE + v.clip.seconds + AFTER_SPEECH - time.monotonic()
        if left > 0:
            time.sleep(left)
        v.stop()
    return [v.collect(offline[v.clip.id]) for v in visitors]


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", help="comma-separated clip ids (default: six varied clips)")
    parser.add_argument("--all", action="store_true", help="every clip of the evaluation set")
    parser.add_argument("--url", help="measure a page that is already running instead")
    parser.add_argument("--engine", default="whisper", help="LIVE_CAPTIONS_ENGINE for the app")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--visitors", type=int, default=1, help="browsers recording at once (default 1)"
    )
    args = parser.parse_args()

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    clips = {c.id: c for c in load_clips()}
    if not clips:
        raise SystemExit("the evaluation set is missing (set EVAL_DIR)")
    ids = list(clips) if args.all else (args.clips.split(",") if args.clips else DEFAULT_CLIPS)
    chosen = [clips[i] for i in ids]

    model = offline_model()
    references = {c.id: offline_words(model, c) for c in chosen}
    del model

    load_before = os.getloadavg()
    process = log_path = None
    url = args.url
    if url is None:
        process, url, log_path = start_app({"LIVE_CAPTIONS_ENGINE": args.engine})
    results: list[ClipResult] = []
    try:
        from playwright.sync_api import sync_playwright

        with tempfile.TemporaryDirectory(prefix="page-bench-") as tmp, sync_playwright() as p:
            n = max(1, args.visitors)
            for i in range(0, len(chosen), n):
                group = chosen[i : i + n]
                for result in run_together(p, url, group, references, Path(tmp)):
                    results.append(result)
                    print(
                        f"{result.clip.id:42s} first {fmt(result.first_caption)} s  "
                        f"correct {fmt(result.first_correct)} s  "
                        f"lag p50 {fmt(pct(result.lags_visible, 50))} s  "
                        f"overhead p95 {fmt(result.overhead_p95)} s  "
                        f"WER {wer(result.clip.text, result.final_text):.2f}  "
                        f"captured {result.captured} in {result.samples_in} "
                        f"lost {result.samples_lost}  {result.state} {result.error}",
                        flush=True,
                    )
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
            if log_path is not None:
                log_path.unlink(missing_ok=True)
    load_after = os.getloadavg()

    visible = [x for r in results for x in r.lags_visible]
    confirmed = [x for r in results for x in r.lags_confirmed]
    firsts = [r.first_caption for r in results if r.first_caption is not None]
    corrects = [r.first_correct for r in results if r.first_correct is not None]
    pushes = [x for r in results for x in r.pushes]
    overhead95 = [r.overhead_p95 for r in results if r.overhead_p95 is not None]
    overhead50 = [r.overhead_p50 for r in results if r.overhead_p50 is not None]
    lost = [
        (r.captured - r.samples_in) + (r.samples_lost if r.samples_lost is not None else 10**9)
        for r in results
    ]
    summary = {
        "clips": len(results),
        "visitors_at_once": max(1, args.visitors),
        "page_overhead_s": {
            "p50_median": pct(overhead50, 50),
            "p95_max": max(overhead95) if overhead95 else None,
        },
        "first_caption_s": {
            "median": pct(firsts, 50),
            "max": max(firsts) if firsts else None,
        },
        "first_correct_word_s": {
            "median": pct(corrects, 50),
            "max": max(corrects) if corrects else None,
        },
        "word_lag_visible_s": {"p50": pct(visible, 50), "p95": pct(visible, 95)},
        "word_lag_confirmed_s": {"p50": pct(confirmed, 50), "p95": pct(confirmed, 95)},
        "push_latency_s": {"p50": pct(pushes, 50), "p95": pct(pushes, 95), "n": len(pushes)},
        "words_matched": len(visible),
        "words": sum(r.words for r in results),
        "wer": statistics.fmean(wer(r.clip.text, r.final_text) for r in results),
        "samples_lost": lost,
        "captured_vs_received": [(r.captured, r.samples_in) for r in results],
        "audio_start_uncertainty_s": max((r.audio_start_uncertainty for r in results), default=0),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "targets": TARGETS,
    }
    print()
    print(
        f"first caption after speech starts: median {fmt(summary['first_caption_s']['median'])} s,"
        f" max {fmt(summary['first_caption_s']['max'])} s (target <= {TARGETS['first_caption_s']})"
    )
    print(
        f"first correct word on screen after speech starts: median {fmt(pct(corrects, 50))} s,"
        f" max {fmt(max(corrects) if corrects else None)} s"
    )
    print(
        f"word lag, on screen (tentative or confirmed): p50 {fmt(pct(visible, 50))} s, "
        f"p95 {fmt(pct(visible, 95))} s over {len(visible)} words "
        f"(target p50 <= {TARGETS['word_lag_p50_s']})"
    )
    print(f"word lag, confirmed: p50 {fmt(pct(confirmed, 50))} s, p95 {fmt(pct(confirmed, 95))} s")
    print(
        f"push latency (caption change in the session -> on screen): p50 {fmt(pct(pushes, 50))} s,"
        f" p95 {fmt(pct(pushes, 95))} s over {len(pushes)} changes (target <= 0.25)"
    )
    print(f"mean WER of the final text: {summary['wer']:.3f}")
    print(
        f"page overhead (frame captured -> acknowledged): p50 {fmt(pct(overhead50, 50))} s, "
        f"worst clip's p95 {fmt(summary['page_overhead_s']['p95_max'])} s "
        f"(target p95 <= {TARGETS['overhead_p95_s']})"
    )
    print(f"samples lost per clip (captured - received + session's own): {lost}")
    print(
        f"load average before {summary['loadavg_before']} after {summary['loadavg_after']} "
        f"({os.cpu_count()} CPUs, shared)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
