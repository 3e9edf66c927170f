"""The page's microphone control: Record and Stop buttons, a level meter and a clock, built on
``gr.HTML`` with ``js_on_load`` (Gradio's documented way to add behaviour to a page).

The browser half is ``components/page/web/mic.js``; the server half, the connection the audio
travels on, is :mod:`components.page.mic_link`. The component's value is a small JSON object: the
tab's microphone token (set when the page loads) and, while recording, the recording's id.
Pressing Record triggers the component's ``start_recording`` event with that value, and the
page's handler starts the session with the backend choice; the audio itself never passes
through Gradio's queue.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

SCRIPT = (Path(__file__).parent / "web" / "mic.js").read_text(encoding="utf-8")

TEMPLATE = """
<div class="mic" data-state="idle">
  <div class="mic-row">
    <button type="button" class="record-button" aria-label="Record" disabled>
      <span class="mic-dot" aria-hidden="true"></span>Record</button>
    <button type="button" class="stop-button" aria-label="Stop" hidden>
      <span class="mic-square" aria-hidden="true"></span>Stop</button>
    <span class="mic-meter" aria-hidden="true"><span></span></span>
    <span class="mic-time" aria-hidden="true">0:00</span>
  </div>
  <div class="mic-status" role="status" aria-live="polite"></div>
</div>
"""

CSS = """
#mic .mic-row { display: flex; align-items: center; gap: 0.8em; }
#mic button { display: inline-flex; align-items: center; gap: 0.5em; padding: 0.55em 1.3em;
  border-radius: 8px; font-weight: 600; font-size: 1.05em; cursor: pointer;
  border: 1px solid var(--border-color-primary);
  background: var(--button-secondary-background-fill); color: var(--button-secondary-text-color); }
#mic button[hidden] { display: none; }
#mic button:disabled { opacity: 0.55; cursor: default; }
#mic .record-button .mic-dot { width: 0.8em; height: 0.8em; border-radius: 50%;
  background: #d92d20; }
#mic .stop-button { background: #d92d20; color: #fff; border-color: #b42318; }
#mic .stop-button .mic-square { width: 0.7em; height: 0.7em; background: #fff; }
#mic .mic-meter { flex: 1; max-width: 14em; height: 0.5em; border-radius: 4px; overflow: hidden;
  background: var(--border-color-primary); }
#mic .mic-meter > span { display: block; height: 100%; background: #12b76a;
  transform-origin: left; transform: scaleX(0); transition: transform 60ms linear; }
#mic .mic-time { font-variant-numeric: tabular-nums; color: var(--body-text-color-subdued); }
#mic .mic-status:empty { display: none; }
#mic .mic-status { margin-top: 0.6em; }
#mic .mic-status[data-kind="error"] { color: #b42318; }
#mic .mic-status[data-kind="notice"] { color: #7a5d00; }
"""


def microphone() -> gr.HTML:
    """The Record/Stop control (``#mic``); bind ``.start_recording`` to start a session."""
    return gr.HTML(
        value="",
        html_template=TEMPLATE,
        js_on_load=SCRIPT,
        label="Microphone",
        show_label=True,
        elem_id="mic",
        apply_default_css=False,
    )
