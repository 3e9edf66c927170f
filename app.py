"""Live Captions: the page (Gradio Blocks), and the Hugging Face Space entry point.

Wiring only: widgets, events and how a session looks; sessions, limits and the choice of
backend live in :mod:`components.page.manager`, :mod:`components.page.session` and
:mod:`components.page.settings`. Run with ``python app.py`` (honours
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, default http://127.0.0.1:7860).

How audio gets in: the microphone control (:mod:`components.page.mic_widget`, a ``gr.HTML`` with
its own script) sends 50 ms frames over one WebSocket to :mod:`components.page.mic_link`, which
feeds the tab's session in order and acknowledges each frame; Gradio's queue only carries the
Record event that starts the session with the chosen backend. The session counts samples in
and out, and the page shows them.

How the page pushes captions: the Record event writes the new session's id into a hidden
box. That box's ``.change`` starts :func:`follow`, an async generator that waits on the
session's change signal and yields the captions as each delta arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from components.core.languages import VOXTRAL_REALTIME_LANGUAGES, language_name
from components.outputs.delivery import describe
from components.outputs.targets import OutputKind
from components.page.manager import SessionManager
from components.page.metrics import add_metrics_route
from components.page.mic_link import MicLink, parse_recording
from components.page.mic_widget import CSS as MIC_CSS
from components.page.mic_widget import microphone
from components.page.presentation import FollowerFeeds, add_routes
from components.page.settings import BackendChoice, BackendKind, Settings
from components.page.tab_tokens import TabTokens
from components.page.view import SessionView

log = logging.getLogger("app")

KIND_LABELS = {
    BackendKind.LOCAL: "Local",
    BackendKind.SAGEMAKER: "SageMaker",
    BackendKind.REALTIME: "Realtime server URL",
}
LABEL_KINDS = {label: kind for kind, label in KIND_LABELS.items()}
DEFAULT_URL = "ws://127.0.0.1:8081/v1/realtime"
REFRESH_SECONDS = 0.5
"""The figures panel refreshes at least this often while a session runs."""
MIN_PUSH_INTERVAL = 0.08
"""Caption updates are sent at most this often (each costs the server a message)."""

_CLICK_MIC_STOP = """
  const mic = document.querySelector("#mic");
  const stop = mic && mic.querySelector(".stop-button");
  if (stop && !stop.hidden) stop.click();
"""
STOP_MIC_JS = "() => {" + _CLICK_MIC_STOP + "  return [];\n}"
STOP_MIC_KEEP_INPUTS_JS = "(...inputs) => {" + _CLICK_MIC_STOP + "  return inputs;\n}"

WEB = Path(__file__).parent / "components" / "page" / "web"
PAGE_JS = (WEB / "page.js").read_text(encoding="utf-8")
"""The page's keys and its presentation view (``?view=captions``)."""

CSS = (WEB / "page.css").read_text(encoding="utf-8")


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


def render_figures(view: SessionView | None, idle_backend: str, followers: int = 0) -> str:
    """Live figures; the same numbers ride along as data-* attributes for tests and benches."""
    if view is None:
        rows = [("Backend", idle_backend), ("State", "idle"), ("Followers", str(followers))]
        attrs = f'data-state="idle" data-followers="{followers}"'
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
            ("Followers", str(followers)),
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
            f'data-followers="{followers}" '
            f'data-audio-received="{view.audio_received:.3f}" '
            f'data-first-caption="{first}" '
            f'data-caption-at="{"" if view.caption_at is None else f"{view.caption_at:.3f}"}"'
        )
    cells = "".join(
        f"<tr><td>{name}</td><td>{html.escape(value)}</td></tr>" for name, value in rows
    )
    # Folded under a one-line summary; page.js keeps it open across updates once opened.
    summary = "Figures · idle" if view is None else f"Figures · {view.state.value}"
    if view is not None and not view.finished:
        summary += f" · lag {_seconds(view.lag)}"
    return (
        f'<div class="figures" {attrs}><details><summary>{summary}</summary>'
        f"<table>{cells}</table></details></div>"
    )


SEND_TO_FIELDS = (
    (OutputKind.ZOOM, "Zoom: API token URL", "https://wmcc.zoom.us/closedcaption?id=…"),
    (
        OutputKind.YOUTUBE,
        "YouTube Live: caption ingestion URL",
        "https://upload.youtube.com/closedcaption?cid=…",
    ),
    (
        OutputKind.TEAMS,
        "Teams: CART caption link",
        "https://api.captions.office.microsoft.com/cartcaption?meetingid=…",
    ),
    (OutputKind.OBS, "OBS: obs-websocket address", "ws://:PASSWORD@127.0.0.1:4455"),
)
"""The page's "Send captions to" fields: which output, its label, and what it looks like."""


def send_box(kind: OutputKind, label: str, hint: str, settings: Settings) -> gr.Textbox:
    """One output's field: a password box (the address is a credential), showing only the
    masked address when the deployment sends there by default."""
    default = next((t for t in settings.send_to if t.kind is kind), None)
    public_obs = kind is OutputKind.OBS and settings.public and not settings.outputs_any_host
    return gr.Textbox(
        label=label,
        type="password",
        placeholder=f"by default: {default.masked()}" if default else hint,
        visible=not public_obs,
        elem_id=f"send-{kind.value}",
    )


def overlay_link(token: str) -> str:
    """The follower view as an OBS Browser Source: transparent, two lines (all adjustable)."""
    href = f"live/{token}?overlay=1&amp;lines=2&amp;size=42&amp;position=bottom"
    return (
        f'<a id="overlay-link" href="{href}" target="_blank" rel="noopener">Overlay for OBS</a>'
        ": add it as a Browser Source (1920×1080) for captions over the video; its query sets "
        "<code>lines</code>, <code>size</code> (px), <code>font</code>, <code>color</code>, "
        "<code>background</code> and <code>position</code> (top or bottom)."
    )


def render_outputs(view: SessionView | None) -> str:
    """Where the captions also go, masked, and how that goes (nothing without outputs)."""
    if view is None or not view.outputs:
        return ""
    rows = "".join(
        f'<tr data-kind="{o.kind}" data-state="{o.state}" data-words="{o.words}" '
        f'data-posts="{o.posts}"><td>{html.escape(o.label.split(": ", 1)[-1])}</td>'
        f"<td><code>{html.escape(o.masked)}</code></td><td>{html.escape(o.state)}</td>"
        f"<td>{html.escape(describe(o))}</td></tr>"
        for o in view.outputs
    )
    return f'<table class="outputs">{rows}</table>'


def _same(new: Any, old: Any) -> bool:
    """Whether an output is unchanged since it was sent (text, or a widget's visibility)."""
    return isinstance(new, str | dict) and new == old


# --------------------------------------------------------------------------- the page


def _owner(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"


def _choice(
    kind_label: str,
    endpoint: str | None,
    region: str | None,
    url: str | None,
    language: str | None = None,
    terms: str | None = None,
    *send_to: str | None,
) -> BackendChoice:
    kind = LABEL_KINDS.get(kind_label, kind_label)
    return BackendChoice(
        kind,
        endpoint=endpoint or "",
        region=region or "",
        url=url or "",
        language=language or "",
        prompt=terms or "",
        send_to=tuple(
            f"{k.value}={v.strip()}"
            for k, v in zip(OutputKind, send_to, strict=False)
            if v and v.strip()
        ),
    )


AUTO_LANGUAGE = ("Engine default", "")


def language_update(languages: tuple[str, ...]) -> Any:
    """The language choice for an engine: shown only when there is more than one to pick."""
    choices = [AUTO_LANGUAGE] + [(f"{language_name(c)} ({c})", c) for c in languages]
    return gr.Dropdown(choices=choices, value="", visible=len(languages) > 1)


def follow_link(token: str, followers: int = 0) -> str:
    """The presentation view's link (relative, so it stays under the page's path prefix), and
    how many people follow it now."""
    count = (
        f'<span id="followers" data-followers="{followers}">'
        + (f" · {followers} following now" if followers else " · no one follows it yet")
        + "</span>"
    )
    return (
        f'<a id="presentation-link" href="live/{token}" target="_blank" rel="noopener">'
        "Follower link</a>: the captions alone, large, for a projector, a second screen or "
        f"the phones in the room (anyone with this link can read them){count}"
    )


def build_demo(
    manager: SessionManager,
    link: MicLink,
    tokens: TabTokens | None = None,
    followers: Callable[[str], int] | None = None,
) -> gr.Blocks:
    """The page; ``link`` carries its microphone audio, ``tokens`` are its follower links and
    ``followers(owner)`` counts who follows a tab's link now."""
    tokens = tokens or TabTokens()
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

    def followers_of(view: SessionView | None) -> int:
        session = manager.get(view.session_id) if view is not None and followers else None
        return followers(session.owner) if session is not None and followers else 0

    def share_line(owner: str, view: SessionView | None) -> str:
        return follow_link(tokens.token_for(owner), followers_of(view))

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
        streaming_file = view is not None and not view.finished and view.source == "file"
        return (
            render_captions(view),
            render_figures(view, idle_backend(), followers_of(view)),
            render_status(view),
            *downloads,
            gr.update(visible=streaming_file),
            render_outputs(view),
        )

    with gr.Blocks(title="Live Captions", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# Live Captions\n"
            "Press **Record**, speak, and watch the captions appear as you talk. "
            "Grey italics are words the engine may still revise. "
            "Keys: <kbd>R</kbd> record / stop · <kbd>C</kbd> clear · "
            "<kbd>P</kbd> presentation view",
            elem_id="intro",
        )
        # Record first: on a phone the controls and the captions fill the first screen, and
        # everything a speaker sets once (settings, a recording to stream, figures) is folded.
        with gr.Row(elem_id="controls", equal_height=True):
            mic = microphone()
            stop_btn = gr.Button(
                "Stop streaming", variant="stop", visible=False, scale=0, elem_id="stop"
            )
            clear_btn = gr.Button("Clear", scale=0, min_width=90, elem_id="clear")
            present_btn = gr.Button("Presentation view", scale=0, min_width=190, elem_id="present")
        captions = gr.HTML(render_captions(None), elem_id="captions")
        status = gr.HTML("", elem_id="status")
        with gr.Row(elem_id="downloads"):
            dl_txt = gr.DownloadButton("Download .txt", visible=False, elem_id="dl-txt")
            dl_srt = gr.DownloadButton("Download .srt", visible=False, elem_id="dl-srt")
            dl_vtt = gr.DownloadButton("Download .vtt", visible=False, elem_id="dl-vtt")
        presentation = gr.HTML("", elem_id="presentation")
        outputs_box = gr.HTML("", elem_id="outputs")
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            with gr.Row():
                terms = gr.Textbox(
                    label="Names and terms",
                    info="Spelled the way you write them here, e.g. the speakers' names and "
                    "jargon. Used from the next recording on.",
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
            gr.Markdown(
                "**Send captions to** the platform the audience is on: paste the address it "
                "gives the organiser. Addresses are secrets: never logged, never shown to "
                "followers, masked here once a session runs.",
                elem_id="send-to-intro",
            )
            send_boxes = []
            with gr.Row():
                for kind_of, label, hint in SEND_TO_FIELDS[:2]:
                    send_boxes.append(send_box(kind_of, label, hint, settings))
            with gr.Row():
                for kind_of, label, hint in SEND_TO_FIELDS[2:]:
                    send_boxes.append(send_box(kind_of, label, hint, settings))
            overlay = gr.HTML("", elem_id="overlay")
        with gr.Accordion("Stream a recording instead", open=False, elem_id="recording"):
            upload = gr.Audio(
                sources=["upload"],
                type="filepath",
                label="No microphone? Stream a recording as if live",
                elem_id="upload",
            )
            play = gr.Button("Stream the recording", elem_id="stream-file")
        figures = gr.HTML(render_figures(None, idle_backend()), elem_id="figures")
        session_id = gr.Textbox("", visible="hidden", elem_id="session-id")

        backend_inputs = [kind, endpoint, region, url, language, terms, *send_boxes]
        view_outputs = [
            captions,
            figures,
            status,
            dl_txt,
            dl_srt,
            dl_vtt,
            stop_btn,
            outputs_box,
            presentation,
        ]

        def choice_of(data: dict[Any, Any]) -> BackendChoice:
            """The backend and session options the settings hold (Gradio's dict of inputs)."""
            return _choice(
                data[kind],
                data[endpoint],
                data[region],
                data[url],
                data[language],
                data[terms],
                *(data[box] for box in send_boxes),
            )

        async def on_record(data: dict[Any, Any], request: gr.Request) -> Any:
            """Record was pressed: start the session its audio connection will feed."""
            owner = _owner(request)
            parsed = parse_recording(data[mic])
            if parsed is None or link.tokens.owner_of(parsed[0]) != owner:
                log.warning("a Record event without this tab's microphone token was ignored")
                return gr.skip()
            choice = choice_of(data)
            session = manager.start(owner, choice, key=parsed[1], source="microphone")
            return session.id

        async def follow(sid: str, request: gr.Request) -> AsyncIterator[tuple[Any, ...]]:
            """Push the session's view whenever it changes (and the figures every so often)."""
            owner = _owner(request)
            session = manager.get(sid) if sid else None
            if session is None:
                yield (*outputs_for(None, final=True), share_line(owner, None))
                return
            shown: tuple[Any, ...] = ()
            pushed = 0.0
            while manager.current(owner) is session:
                view = session.view()
                outputs = (*outputs_for(view, final=view.finished), share_line(owner, view))
                # Unchanged outputs are skipped: less to send, and the DOM changes only when
                # the text does.
                update = tuple(
                    gr.skip() if i < len(shown) and _same(o, shown[i]) else o
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

        async def on_stop(request: gr.Request) -> None:
            manager.stop(_owner(request))

        async def on_file(data: dict[Any, Any], request: gr.Request) -> tuple[Any, Any]:
            path = data[upload]
            if not path:
                message = "Choose an audio file first (drop it on the recording box)."
                return gr.skip(), f'<div class="error" role="alert">{message}</div>'
            choice = choice_of(data)
            session = manager.stream_file(_owner(request), choice, path)
            return session.id, ""

        async def on_clear(request: gr.Request) -> tuple[Any, ...]:
            manager.clear(_owner(request))
            return ("", *outputs_for(None, final=True), share_line(_owner(request), None))

        def on_kind(kind_label: str) -> tuple[Any, Any, Any, Any]:
            return (
                gr.Markdown(visible=kind_label == "Local"),
                gr.Row(visible=kind_label == "SageMaker"),
                gr.Row(visible=kind_label == "Realtime server URL"),
                language_update(languages_for(kind_label)),
            )

        async def on_load(request: gr.Request) -> AsyncIterator[tuple[Any, ...]]:
            follower = share_line(_owner(request), None)
            mic_value = json.dumps({"token": link.tokens.token_for(_owner(request))})
            overlay_html = overlay_link(tokens.token_for(_owner(request)))

            def current() -> tuple[Any, ...]:
                return (
                    render_figures(None, idle_backend()),
                    f"Local engine: {manager.engine_note()}",
                    language_update(languages_for(labels[0])),
                    follower,
                    mic_value,
                    overlay_html,
                )

            yield current()
            future = manager.load_engine() if BackendKind.LOCAL in kinds else None
            if future is not None and not future.done():
                with contextlib.suppress(Exception):  # the note says what went wrong
                    await asyncio.wrap_future(future)
                yield current()

        def on_unload(request: gr.Request) -> None:
            manager.release(_owner(request))
            link.forget(_owner(request))
            tokens.forget(_owner(request))

        mic.start_recording(
            on_record,
            inputs={mic, *backend_inputs},
            outputs=[session_id],
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
        stop_btn.click(
            on_stop, None, None, js=STOP_MIC_JS, show_progress="hidden", api_visibility="private"
        )
        play.click(
            on_file,
            inputs={upload, *backend_inputs},
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
        present_btn.click(None, js="() => { window.liveCaptionsPresent(true); return []; }")
        kind.change(
            on_kind, [kind], [local_note, sm_row, url_row, language], api_visibility="private"
        )
        demo.load(
            on_load,
            None,
            [figures, local_note, language, presentation, mic, overlay],
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
    link = MicLink(manager)
    tokens = TabTokens()
    feeds = FollowerFeeds(manager)
    demo = build_demo(manager, link, tokens, feeds.followers_of)
    try:
        app, _, _ = demo.launch(
            css=CSS + MIC_CSS,
            head=f"<script>{PAGE_JS}</script>",
            show_error=False,
            prevent_thread_lock=True,
        )
        add_routes(app, manager, tokens, feeds)
        manager.metrics.watch(lambda: {"followers": feeds.followers})
        add_metrics_route(app, manager.metrics)
        link.add_route(app)
        demo.block_thread()
    finally:
        demo.close()
        manager.shutdown()


if __name__ == "__main__":
    main()
