"""Live Captions: the page (Gradio Blocks), and the Hugging Face Space entry point.

Wiring only: widgets, events and how a session looks; sessions, limits and the choice of
backend live in :mod:`components.session_manager`, :mod:`components.session` and
:mod:`components.deployment`. Run with ``python app.py`` (honours
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, default http://127.0.0.1:7860).

How the page pushes captions: the microphone's ``.stream`` handler only hands each chunk to
the tab's session (Gradio drops audio when that handler is slow) and, on a new session, writes
its id into a hidden box. That box's ``.change`` starts :func:`follow`, an async generator that
waits on the session's change signal and yields the captions as each delta arrives — not when
the next audio chunk happens to come in.

How no audio is lost on the way: Gradio's stream keeps one slot per stream (a chunk that
arrives while the server is busy replaces the one before) and its recorder drops, at Stop,
what it has not sent yet. :class:`StreamGate` holds each chunk's request until the handler has
taken the previous one; ``MIC_STOP_GUARD_JS`` holds the Stop click until every chunk recorded
before it is on its way. The session counts samples in and out, and the page shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from components.deployment import BackendChoice, BackendKind, Settings
from components.languages import VOXTRAL_REALTIME_LANGUAGES, language_name
from components.presentation import FollowerTokens, add_routes
from components.session import SessionView
from components.session_manager import SessionManager

log = logging.getLogger("app")

KIND_LABELS = {
    BackendKind.LOCAL: "Local",
    BackendKind.SAGEMAKER: "SageMaker",
    BackendKind.REALTIME: "Realtime server URL",
}
LABEL_KINDS = {label: kind for kind, label in KIND_LABELS.items()}
DEFAULT_URL = "ws://127.0.0.1:8081/v1/realtime"
STREAM_EVERY = float(os.environ.get("STREAM_EVERY", "0.25"))
"""Seconds of audio per browser chunk (Gradio's ``stream_every``): lower means earlier captions."""
REFRESH_SECONDS = 0.5
"""The figures panel refreshes at least this often while a session runs."""
MIN_PUSH_INTERVAL = 0.08
"""Caption updates are sent at most this often (each costs the server a message)."""

_CLICK_MIC_STOP = """
  const mic = document.querySelector("#mic");
  const stop = mic && (mic.querySelector(".stop-button") ||
    [...mic.querySelectorAll("button")].find((b) => b.textContent.trim() === "Stop"));
  if (stop) stop.click();
"""
STOP_MIC_JS = "() => {" + _CLICK_MIC_STOP + "  return [];\n}"
STOP_MIC_KEEP_INPUTS_JS = "(...inputs) => {" + _CLICK_MIC_STOP + "  return inputs;\n}"
STOP_MIC_WHEN_ENDED_JS = (
    "(figures) => {\n"
    '  const m = /data-state="(\\w+)"/.exec(figures || "");\n'
    '  if (m && ["done", "failed", "cancelled"].includes(m[1])) {' + _CLICK_MIC_STOP + "  }\n"
    "  return [];\n}"
)

KEYS_JS = r"""
(() => {
  // R starts and stops recording, C clears: the page's own buttons, clicked as a person would,
  // so the Stop guard and every handler run as usual. Keys typed into a field are left alone.
  const named = (root, name) => [...(root ? root.querySelectorAll("button") : [])].find(
    (b) => (b.getAttribute("aria-label") || b.textContent || "").trim().toLowerCase() === name);
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    const key = e.key.toLowerCase();
    if (key === "r") {
      const mic = document.querySelector("#mic");
      const button = named(mic, "stop") || named(mic, "record");
      if (button) { e.preventDefault(); button.click(); }
    } else if (key === "c") {
      const clear = document.querySelector("#clear");
      if (clear) { e.preventDefault(); clear.click(); }
    }
  });
})();
"""

MIC_STOP_GUARD_JS = r"""
(() => {
  // Gradio's recorder drops what is not yet sent when Stop is pressed: chunks still uploading,
  // and the audio since the last chunk. This holds the click until one more chunk has been cut
  // and every chunk has been uploaded and handed to the stream (at most 6 s), so the audio up
  // to the moment of the click reaches the engine.
  const s = (window.__micGuard = {
    started: 0, uploaded: 0, inflight: 0, posted: 0, holding: false, starts: [], released: null,
  });
  const chunkPost = /\/gradio_api\/stream\/[^/?]+$/;
  const upload = /\/gradio_api\/upload(\?|$)/;
  const original = window.fetch;
  window.fetch = async function (input, init) {
    const url = String((input && input.url) || input);
    const isUpload = upload.test(url);
    if (isUpload) { s.started++; s.inflight++; s.starts.push(performance.now()); }
    if (chunkPost.test(url)) s.posted++;
    try {
      return await original.apply(this, arguments);
    } finally {
      if (isUpload) { s.inflight--; s.uploaded++; }
    }
  };
  const settled = (startedAtClick) =>
    s.started > startedAtClick && s.inflight === 0 && s.posted + 1 >= s.uploaded;
  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest("#mic button");
    if (!button) return;
    if (button.classList.contains("record-button")) {
      Object.assign(s, { started: 0, uploaded: 0, inflight: 0, posted: 0, starts: [] });
      s.released = null;
      return;
    }
    if (!button.classList.contains("stop-button") || s.holding === "release") return;
    event.preventDefault();
    event.stopImmediatePropagation();
    if (s.holding) return;
    s.holding = true;
    const startedAtClick = s.started, deadline = performance.now() + 6000;
    let calm = false;
    const wait = () => {
      // Settled twice, 30 ms apart (the last chunk's dispatch needs a moment), then the click
      // goes through at once: a chunk cut after that holds only audio from after the click.
      const ready = settled(startedAtClick);
      if (performance.now() < deadline && !(ready && calm)) {
        calm = ready;
        setTimeout(wait, ready ? 30 : 20);
        return;
      }
      s.holding = "release";
      s.released = performance.now();
      const stop = document.querySelector("#mic .stop-button");
      if (stop) stop.click();
      s.holding = false;
    };
    wait();
  }, true);
})();
"""

CSS = """
#captions .captions-box { min-height: 9em; max-height: 45vh; overflow-y: auto; display: flex;
  flex-direction: column-reverse; font-size: 1.35em; line-height: 1.5; padding: 0.6em 0.8em;
  border: 1px solid var(--border-color-primary); border-radius: 8px; }
#captions [data-testid="status-tracker"], #figures [data-testid="status-tracker"],
#status [data-testid="status-tracker"] { display: none !important; }
#captions .placeholder { color: var(--body-text-color-subdued); }
#captions .partial { color: #8a8f98; font-style: italic; }
#status .error { color: #b42318; background: #fef3f2; border: 1px solid #fda29b;
  border-radius: 6px; padding: 0.5em 0.8em; }
#status .notice { color: #7a5d00; background: #fffaeb; border: 1px solid #fedf89;
  border-radius: 6px; padding: 0.5em 0.8em; }
#figures table { width: 100%; font-size: 0.92em; border-collapse: collapse; margin: 0; }
#figures td { border: none !important; background: none !important;
  padding: 0.3em 0.4em !important; }
#figures tr { border-bottom: 1px solid var(--border-color-primary); }
#figures td:first-child { color: var(--body-text-color-subdued); white-space: nowrap; }
"""


# --------------------------------------------------------------------------- rendering


def render_captions(view: SessionView | None) -> str:
    """The caption box: confirmed text, then the tentative tail in grey italics."""
    if view is None or (not view.text and not view.partial):
        waiting = view is not None and not view.finished and view.error is None
        hint = "Listening…" if waiting else "Captions appear here. Press Record and speak."
        body = f'<span class="placeholder">{hint}</span>'
        state = view.state.value if view else "idle"
    else:
        final = f'<span class="final">{html.escape(view.text)}</span>'
        partial = f' <span class="partial">{html.escape(view.partial)}</span>'
        body = final + (partial if view.partial else "")
        state = view.state.value
    sid = html.escape(view.session_id) if view else ""
    return (
        f'<div class="captions-box" data-state="{state}" data-session="{sid}" '
        f'aria-live="polite"><div>{body}</div></div>'
    )


def render_status(view: SessionView | None) -> str:
    if view is None:
        return ""
    if view.error:
        return f'<div class="error" role="alert">{html.escape(view.error)}</div>'
    if view.notice:
        return f'<div class="notice" role="status">{html.escape(view.notice)}</div>'
    return ""


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def render_figures(view: SessionView | None, idle_backend: str) -> str:
    """Live figures; the same numbers ride along as data-* attributes for tests and benches."""
    if view is None:
        rows = [("Backend", idle_backend), ("State", "idle")]
        attrs = 'data-state="idle"'
    else:
        lost = "–" if view.samples_lost is None else f"{view.samples_lost:,}"
        rows = [
            ("Backend", view.backend),
            ("State", view.state.value),
            ("Audio received", _seconds(view.audio_received)),
            ("Audio sent", _seconds(view.audio_sent)),
            ("First caption", _seconds(view.first_caption)),
            ("Lag", _seconds(view.lag if not view.finished else None)),
            ("Samples in → out", f"{view.samples_in:,} → {view.samples_sent:,}"),
            ("Samples lost", lost),
            (
                "Streams",
                f"{view.streams}"
                + (f" ({view.reconnects} reconnected)" if view.reconnects else ""),
            ),
        ]
        first = "" if view.first_caption is None else f"{view.first_caption:.3f}"
        attrs = (
            f'data-state="{view.state.value}" data-session="{html.escape(view.session_id)}" '
            f'data-samples-in="{view.samples_in}" data-chunks-in="{view.chunks_in}" '
            f'data-samples-expected="{view.samples_expected}" '
            f'data-samples-sent="{view.samples_sent}" '
            f'data-samples-lost="{"" if view.samples_lost is None else view.samples_lost}" '
            f'data-late-chunks="{view.late_chunks}" '
            f'data-streams="{view.streams}" data-reconnects="{view.reconnects}" '
            f'data-audio-received="{view.audio_received:.3f}" '
            f'data-first-caption="{first}" '
            f'data-caption-at="{"" if view.caption_at is None else f"{view.caption_at:.3f}"}"'
        )
    cells = "".join(
        f"<tr><td>{name}</td><td>{html.escape(value)}</td></tr>" for name, value in rows
    )
    return f'<div class="figures" {attrs}><table>{cells}</table></div>'


# --------------------------------------------------------------------------- the page


def _owner(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"


def _stream_key(request: gr.Request) -> tuple[str, bool]:
    """An id for the running microphone stream (a new recording gets a new id), and whether
    this call is the stream's first.

    Gradio builds one ``gr.Request`` per queued event and hands that same object to every call
    of a ``.stream`` handler, so an id stored on it lives exactly as long as the recording.
    """
    state = vars(request)
    key = state.get("_live_captions_stream")
    if key is None:
        key = state["_live_captions_stream"] = uuid.uuid4().hex[:12]
        return key, True
    return key, False


class _Tab:
    """One browser tab's microphone chunks on their way through the gate."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.forwarded = 0
        self.taken = 0
        self.waiting = 0
        self.progress = asyncio.Event()

    @property
    def drained(self) -> bool:
        return self.waiting == 0 and self.taken >= self.forwarded


class StreamGate:
    """Makes Gradio's microphone stream lossless: one chunk in flight per browser tab.

    Gradio keeps one data slot per stream event. Each chunk the browser POSTs to
    ``/gradio_api/stream/{event_id}`` replaces the one before, taken by the handler or not, so
    whenever the server is busy for longer than a chunk, audio is silently lost (measured on a
    loaded 2-core machine: a third of it). The gate holds each POST, in arrival order, until
    the stream handler has taken the previous chunk; the browser just waits for its request.
    The stream's ``/close`` waits its turn the same way, so it cannot overtake chunks. The
    handler reports every chunk it takes (:meth:`taken`); nothing waits past ``MAX_WAIT`` s.
    """

    PATH = re.compile(r"/gradio_api/stream/([^/]+)(/close)?$")
    MAX_WAIT = 5.0

    def __init__(self) -> None:
        self._tabs: dict[str, _Tab] = {}
        self._owners: dict[str, str] = {}  # stream event id -> tab
        self._events: Any = None

    def install(self, demo: gr.Blocks) -> bool:
        """Put the gate in front of the running app (after ``launch``); False if impossible."""
        self._events = getattr(getattr(demo, "_queue", None), "event_ids_to_events", None)
        app = getattr(demo, "server_app", None)
        if app is None or self._events is None or not hasattr(app, "build_middleware_stack"):
            log.warning("cannot gate Gradio's stream route: audio chunks may be lost under load")
            return False
        stack = app.middleware_stack or app.build_middleware_stack()
        app.middleware_stack = self._wrap(stack)
        return True

    def taken(self, owner: str, first: bool) -> None:
        """The stream handler took a chunk (``first``: the one that opened a new stream)."""
        tab = self._tabs.setdefault(owner, _Tab())
        if first:
            tab.forwarded = tab.taken = 0
        else:
            tab.taken += 1
        tab.progress.set()
        tab.progress = asyncio.Event()

    async def drained(self, owner: str, max_wait: float = MAX_WAIT) -> None:
        """Wait until every chunk of ``owner`` that reached the server has been taken."""
        tab = self._tabs.get(owner)
        deadline = time.monotonic() + max_wait
        while tab is not None and not tab.drained and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tab.progress.wait(), 0.05)

    def forget(self, owner: str) -> None:
        self._tabs.pop(owner, None)
        for event_id in [e for e, o in self._owners.items() if o == owner]:
            del self._owners[event_id]

    def _alive(self, event_id: str) -> bool:
        event = self._events.get(event_id) if self._events is not None else None
        return event is not None and not event.closed

    async def _turn(self, tab: _Tab, event_id: str) -> None:
        """Wait until the stream's previous chunk was taken (or the stream is gone).

        The first chunk travels with the stream's start (``/queue/join``), not through here:
        until Gradio has run the stream's first call (``run_time`` still 0), that chunk is
        still waiting to be taken too.
        """
        deadline = time.monotonic() + self.MAX_WAIT
        while self._alive(event_id) and (
            tab.taken < tab.forwarded or self._events[event_id].run_time == 0
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("stream %s: chunk still not taken after %g s", event_id, self.MAX_WAIT)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tab.progress.wait(), min(left, 0.05))

    def _wrap(self, inner: Any) -> Any:
        async def gated(scope: dict[str, Any], receive: Any, send: Any) -> None:
            match = self.PATH.search(scope.get("path", "")) if scope["type"] == "http" else None
            if match is None or scope.get("method") != "POST":
                await inner(scope, receive, send)
                return
            event_id, close = match.group(1), bool(match.group(2))
            body, replay = await _buffered(receive)
            owner = self._owners.get(event_id) if close else _json_field(body, "session_hash")
            if not owner:
                await inner(scope, replay, send)
                return
            self._owners[event_id] = owner
            tab = self._tabs.setdefault(owner, _Tab())
            tab.waiting += 1
            try:
                async with tab.lock:
                    await self._turn(tab, event_id)
                    if not close and self._alive(event_id):
                        tab.forwarded += 1
                    await inner(scope, replay, send)
            finally:
                tab.waiting -= 1
                if close:
                    self._owners.pop(event_id, None)
                tab.progress.set()
                tab.progress = asyncio.Event()

        return gated


async def _buffered(receive: Any) -> tuple[bytes, Any]:
    """Read an ASGI request body; return it and a ``receive`` that replays it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def _json_field(body: bytes, name: str) -> str | None:
    try:
        value = json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _choice(
    kind_label: str,
    endpoint: str | None,
    region: str | None,
    url: str | None,
    language: str | None = None,
    terms: str | None = None,
) -> BackendChoice:
    kind = LABEL_KINDS.get(kind_label, kind_label)
    return BackendChoice(
        kind,
        endpoint=endpoint or "",
        region=region or "",
        url=url or "",
        language=language or "",
        prompt=terms or "",
    )


AUTO_LANGUAGE = ("Engine default", "")


def language_update(languages: tuple[str, ...]) -> Any:
    """The language choice for an engine: shown only when there is more than one to pick."""
    choices = [AUTO_LANGUAGE] + [(f"{language_name(c)} ({c})", c) for c in languages]
    return gr.Dropdown(choices=choices, value="", visible=len(languages) > 1)


def follow_link(token: str) -> str:
    """The presentation view's link; relative, so it stays under the page's path prefix."""
    return (
        f'<a id="presentation-link" href="live/{token}" target="_blank" rel="noopener">'
        "Presentation view</a>: the captions alone, large, for a projector or a second screen "
        "(anyone with this link can read them)"
    )


def build_demo(
    manager: SessionManager, gate: StreamGate, tokens: FollowerTokens | None = None
) -> gr.Blocks:
    tokens = tokens or FollowerTokens()
    settings = manager.settings
    kinds = settings.kinds
    if not kinds:
        raise SystemExit(
            "No backend is enabled: set LOCAL_BACKEND=1, SAGEMAKER_ENDPOINTS, or REALTIME_URL."
        )
    labels = [KIND_LABELS[k] for k in kinds]
    allowed = settings.allowed_endpoints

    def languages_for(kind_label: str) -> tuple[str, ...]:
        """What the chosen backend's engine speaks: the local engine's own list once loaded;
        for a remote, this project's GPU engine's (the remote refuses what it cannot do)."""
        if LABEL_KINDS.get(kind_label, kind_label) == BackendKind.LOCAL:
            return manager.local_languages()
        return VOXTRAL_REALTIME_LANGUAGES

    def idle_backend() -> str:
        return manager.engine_label() if kinds[0] is BackendKind.LOCAL else KIND_LABELS[kinds[0]]

    def outputs_for(view: SessionView | None, *, final: bool) -> tuple[Any, ...]:
        downloads: list[Any]
        if final and view is not None and view.exports:
            downloads = [
                gr.DownloadButton(value=str(view.exports[ext]), visible=True)
                for ext in ("txt", "srt", "vtt")
            ]
        elif final or view is None:
            downloads = [gr.DownloadButton(value=None, visible=False)] * 3
        else:
            downloads = [gr.skip()] * 3
        return (
            render_captions(view),
            render_figures(view, idle_backend()),
            render_status(view),
            *downloads,
        )

    with gr.Blocks(title="Live Captions", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# Live Captions\n"
            "Press **Record**, speak, and watch the captions appear as you talk. "
            "Grey italics are words the engine may still revise.\n\n"
            "Keys: <kbd>R</kbd> record / stop · <kbd>C</kbd> clear",
            elem_id="intro",
        )
        with gr.Row():
            with gr.Column(scale=3):
                captions = gr.HTML(render_captions(None), elem_id="captions")
                status = gr.HTML("", elem_id="status")
                with gr.Row():
                    dl_txt = gr.DownloadButton("Download .txt", visible=False, elem_id="dl-txt")
                    dl_srt = gr.DownloadButton("Download .srt", visible=False, elem_id="dl-srt")
                    dl_vtt = gr.DownloadButton("Download .vtt", visible=False, elem_id="dl-vtt")
            with gr.Column(scale=1, min_width=260):
                figures = gr.HTML(render_figures(None, idle_backend()), elem_id="figures")
                presentation = gr.HTML("", elem_id="presentation")
        with gr.Row():
            with gr.Column():
                mic = gr.Audio(
                    sources=["microphone"],
                    streaming=True,
                    label="Microphone",
                    elem_id="mic",
                    # The live waveform redraws on every frame: a full CPU core in Chromium
                    # without a GPU, taken from the speech engine when both share a machine.
                    waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                )
            with gr.Column():
                upload = gr.Audio(
                    sources=["upload"],
                    type="filepath",
                    label="No microphone? Stream a recording as if live",
                    elem_id="upload",
                )
                play = gr.Button("Stream the recording", elem_id="stream-file")
        with gr.Row():
            stop_btn = gr.Button("Stop streaming", variant="stop", elem_id="stop")
            clear_btn = gr.Button("Clear", elem_id="clear")
        with gr.Row():
            terms = gr.Textbox(
                label="Names and terms",
                info="Spelled the way you write them here, e.g. the speakers' names and jargon. "
                "Used from the next recording on.",
                placeholder="Hester Prynne, Kubernetes, Dr. Okafor",
                max_length=settings.max_prompt_chars,
                lines=1,
                scale=3,
                elem_id="terms",
            )
            language = gr.Dropdown(
                [AUTO_LANGUAGE],
                value="",
                label="Language",
                visible=False,
                scale=1,
                elem_id="language",
            )
        with gr.Accordion("Backend", open=True):
            kind = gr.Radio(labels, value=labels[0], label="Transcribe with", elem_id="backend")
            local_note = gr.Markdown(
                f"Local engine: {manager.engine_note()}",
                visible=labels[0] == "Local",
                elem_id="engine-note",
            )
            with gr.Row(visible=labels[0] == "SageMaker") as sm_row:
                if allowed is not None:
                    endpoint = gr.Dropdown(
                        list(allowed),
                        value=settings.sagemaker_endpoint or (allowed[0] if allowed else None),
                        label="SageMaker endpoint",
                        elem_id="sm-endpoint",
                    )
                else:
                    endpoint = gr.Textbox(
                        value=settings.sagemaker_endpoint,
                        label="SageMaker endpoint",
                        placeholder="my-asr-endpoint",
                        elem_id="sm-endpoint",
                    )
                region = gr.Textbox(
                    value=settings.sagemaker_region,
                    label="AWS region",
                    interactive=not settings.region_locked,
                    elem_id="sm-region",
                )
            with gr.Row(visible=labels[0] == "Realtime server URL") as url_row:
                url = gr.Textbox(
                    value=settings.realtime_url or DEFAULT_URL,
                    label="Realtime server URL (vLLM /v1/realtime)",
                    interactive=settings.allow_custom_url,
                    elem_id="rt-url",
                )
        session_id = gr.Textbox("", visible="hidden", elem_id="session-id")

        backend_inputs = [kind, endpoint, region, url, language, terms]
        view_outputs = [captions, figures, status, dl_txt, dl_srt, dl_vtt]

        async def on_chunk(
            chunk: tuple[int, Any] | None,
            kind_label: str,
            endpoint_name: str | None,
            region_name: str | None,
            server_url: str | None,
            language_code: str | None,
            names: str | None,
            request: gr.Request,
        ) -> Any:
            if chunk is None:
                return gr.skip()
            rate, samples = chunk
            owner = _owner(request)
            before = manager.current(owner)
            choice = _choice(
                kind_label, endpoint_name, region_name, server_url, language_code, names
            )
            key, first = _stream_key(request)
            gate.taken(owner, first)
            session = manager.feed(owner, key, choice, int(rate), samples)
            return session.id if session is not None and session is not before else gr.skip()

        async def follow(sid: str, request: gr.Request) -> AsyncIterator[tuple[Any, ...]]:
            """Push the session's view whenever it changes (and the figures every so often)."""
            owner = _owner(request)
            session = manager.get(sid) if sid else None
            if session is None:
                yield outputs_for(None, final=True)
                return
            shown: tuple[Any, ...] = ()
            pushed = 0.0
            while manager.current(owner) is session:
                view = session.view()
                outputs = outputs_for(view, final=view.finished)
                # Unchanged outputs are skipped: less to send, and the DOM changes only when
                # the text does.
                update = tuple(
                    gr.skip() if i < len(shown) and isinstance(o, str) and o == shown[i] else o
                    for i, o in enumerate(outputs)
                )
                shown = outputs
                pushed = time.monotonic()
                yield update
                if view.finished:
                    return
                await session.wait_changed(view.version, REFRESH_SECONDS)
                # Deltas in quick succession (token-level engines) go out together.
                await asyncio.sleep(max(0.0, pushed + MIN_PUSH_INTERVAL - time.monotonic()))

        async def on_stop_recording(request: gr.Request) -> None:
            owner = _owner(request)
            await gate.drained(owner)  # chunks still on their way belong to this recording
            manager.stop(owner, source="microphone")

        async def on_stop(request: gr.Request) -> None:
            manager.stop(_owner(request))

        async def on_file(
            path: str | None,
            kind_label: str,
            endpoint_name: str | None,
            region_name: str | None,
            server_url: str | None,
            language_code: str | None,
            names: str | None,
            request: gr.Request,
        ) -> tuple[Any, Any]:
            if not path:
                message = "Choose an audio file first (drop it on the recording box)."
                return gr.skip(), f'<div class="error" role="alert">{message}</div>'
            choice = _choice(
                kind_label, endpoint_name, region_name, server_url, language_code, names
            )
            session = manager.stream_file(_owner(request), choice, path)
            return session.id, ""

        async def on_clear(request: gr.Request) -> tuple[Any, ...]:
            manager.clear(_owner(request))
            return ("", *outputs_for(None, final=True))

        def on_kind(kind_label: str) -> tuple[Any, Any, Any, Any]:
            return (
                gr.Markdown(visible=kind_label == "Local"),
                gr.Row(visible=kind_label == "SageMaker"),
                gr.Row(visible=kind_label == "Realtime server URL"),
                language_update(languages_for(kind_label)),
            )

        async def on_load(request: gr.Request) -> AsyncIterator[tuple[str, str, Any, str]]:
            link = follow_link(tokens.token_for(_owner(request)))

            def current() -> tuple[str, str, Any, str]:
                return (
                    render_figures(None, idle_backend()),
                    f"Local engine: {manager.engine_note()}",
                    language_update(languages_for(labels[0])),
                    link,
                )

            yield current()
            future = manager.load_engine() if BackendKind.LOCAL in kinds else None
            if future is not None and not future.done():
                with contextlib.suppress(Exception):  # the note says what went wrong
                    await asyncio.wrap_future(future)
                yield current()

        def on_unload(request: gr.Request) -> None:
            manager.release(_owner(request))
            gate.forget(_owner(request))
            tokens.forget(_owner(request))

        mic.stream(
            on_chunk,
            inputs=[mic, *backend_inputs],
            outputs=[session_id],
            stream_every=STREAM_EVERY,
            time_limit=int(settings.max_session_seconds) + 10,
            concurrency_limit=None,
            show_progress="hidden",
            api_visibility="private",
        )
        follow_event = session_id.change(
            follow,
            inputs=[session_id],
            outputs=view_outputs,
            concurrency_limit=None,
            trigger_mode="multiple",
            show_progress="hidden",
            api_visibility="private",
        )
        mic.stop_recording(
            on_stop_recording, None, None, show_progress="hidden", api_visibility="private"
        )
        stop_btn.click(
            on_stop, None, None, js=STOP_MIC_JS, show_progress="hidden", api_visibility="private"
        )
        play.click(
            on_file,
            inputs=[upload, *backend_inputs],
            outputs=[session_id, status],
            js=STOP_MIC_KEEP_INPUTS_JS,
            show_progress="hidden",
            api_visibility="private",
        )
        clear_btn.click(
            on_clear,
            None,
            [session_id, *view_outputs],
            cancels=[follow_event],
            js=STOP_MIC_JS,
            show_progress="hidden",
            api_visibility="private",
        )
        # A session that ends on its own (an error, its length limit, the server) stops the
        # microphone too; the browser's recorder can only be stopped from the browser.
        figures.change(None, [figures], None, js=STOP_MIC_WHEN_ENDED_JS)
        kind.change(
            on_kind, [kind], [local_note, sm_row, url_row, language], api_visibility="private"
        )
        demo.load(
            on_load,
            None,
            [figures, local_note, language, presentation],
            show_progress="hidden",
            api_visibility="private",
        )
        demo.unload(on_unload)
    demo.queue(default_concurrency_limit=None, max_size=None)
    return demo


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LIVE_CAPTIONS_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    manager = SessionManager(settings)
    if BackendKind.LOCAL in manager.settings.kinds:
        manager.load_engine()  # build the shared engine now, not on the first visitor's click

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # let Gradio close its server, then release sessions below

    signal.signal(signal.SIGTERM, _terminate)
    gate = StreamGate()
    tokens = FollowerTokens()
    demo = build_demo(manager, gate, tokens)
    try:
        app, _, _ = demo.launch(
            css=CSS,
            head=f"<script>{MIC_STOP_GUARD_JS}</script><script>{KEYS_JS}</script>",
            show_error=False,
            prevent_thread_lock=True,
        )
        add_routes(app, manager, tokens)
        gate.install(demo)
        demo.block_thread()
    finally:
        demo.close()
        manager.shutdown()


if __name__ == "__main__":
    main()
