"""Pictures of the page as people see it, taken in real Chromium with a fake microphone.

Starts ``app.py`` (the embedded engine), plays a clip from the evaluation set as the
microphone, and saves, into ``--out`` (default ``docs/screenshots``):

* ``main-live.png``: the page while the clip is spoken (tentative words in grey italics);
* ``main-done.png``: the page after Stop, with the downloads and the figures unfolded;
* ``phone.png``: the same page on a 390-px-wide phone screen, as it first shows;
* ``presentation-light.png`` / ``presentation-dark.png``: the same tab in its presentation
  view at 1920×1080, in both themes;
* ``follower.png``: the follower link opened in a second browser, at 1920×1080.

It checks as it goes that the three views show the same final text, and prints that text.

    .venv/bin/python scripts/screenshots.py
    .venv/bin/python scripts/screenshots.py --clip jfk --out /tmp/shots
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.page import SILENCE_BEFORE, launch_browser, padded, start_app  # noqa: E402
from components.core.evaluation import load_clips  # noqa: E402

HD = {"width": 1920, "height": 1080}
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
DEFAULT_CLIP = "librispeech-1221-135766-0002"  # "Yet these thoughts affected Hester Prynne..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", default=DEFAULT_CLIP, help="clip id from shared/eval")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--terms", default="Hester Prynne", help="typed into Names and terms")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    clip = {c.id: c for c in load_clips()}[args.clip]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wav = padded(clip, Path(tmp))
        process, url, _ = start_app({})
        try:
            with sync_playwright() as p:
                browser = launch_browser(p, wav)
                shoot(browser, url + "/", clip.seconds, args)
                browser.close()
        finally:
            process.terminate()
            process.wait(30)


def shoot(browser: object, url: str, seconds: float, args: argparse.Namespace) -> None:
    out: Path = args.out
    context = browser.new_context(  # type: ignore[attr-defined]
        permissions=["microphone"], viewport=DESKTOP, color_scheme="light"
    )
    page = context.new_page()
    page.goto(url, wait_until="load")
    mic = page.locator("#mic")
    mic.get_by_role("button", name="Record").wait_for(timeout=60_000)
    if args.terms:
        page.locator("#settings .label-wrap").first.click()
        page.locator("#terms textarea, #terms input").first.fill(args.terms)
        page.locator("#settings .label-wrap").first.click()
    mic.get_by_role("button", name="Record").click()
    page.wait_for_function(
        "(s) => parseFloat(document.querySelector('#figures .figures')"
        "?.dataset.audioReceived || '0') >= s",
        arg=SILENCE_BEFORE + seconds * 0.6,
        timeout=120_000,
    )
    page.screenshot(path=out / "main-live.png", full_page=True)
    page.wait_for_function(
        "(s) => parseFloat(document.querySelector('#figures .figures')"
        "?.dataset.audioReceived || '0') >= s",
        arg=SILENCE_BEFORE + seconds + 1.0,
        timeout=120_000,
    )
    mic.get_by_role("button", name="Stop").click()
    page.wait_for_function(
        "() => document.querySelector('#figures .figures')?.dataset.state === 'done'",
        timeout=120_000,
    )
    page.set_viewport_size(PHONE)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=out / "phone.png")
    page.set_viewport_size(DESKTOP)
    page.locator("#figures summary").click()
    page.locator("#figures table").wait_for(state="visible", timeout=10_000)
    page.screenshot(path=out / "main-done.png", full_page=True)
    main_text = page.locator("#captions .final").inner_text().strip()
    follower = page.evaluate("() => document.querySelector('#presentation-link').href")

    page.set_viewport_size(HD)
    page.keyboard.press("p")
    page.screenshot(path=out / "presentation-light.png")
    page.keyboard.press("t")
    page.screenshot(path=out / "presentation-dark.png")

    second = browser.new_context(viewport=HD, color_scheme="dark")  # type: ignore[attr-defined]
    view = second.new_page()
    view.goto(follower, wait_until="load")
    view.wait_for_function(
        "(t) => document.body.innerText.includes(t)", arg=main_text[-40:], timeout=30_000
    )
    view.screenshot(path=out / "follower.png")
    print(f"final text: {main_text}")
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
