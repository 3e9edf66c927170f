"""The command line: ``serve`` a realtime endpoint, or ``transcribe`` a file through any backend.

``transcribe`` streams the file the way a microphone would (100 ms chunks, in real time or as
fast as the backend takes them), shows the text live on stderr and prints the final transcript
on stdout as text, JSON, SRT or WebVTT. Subtitle times come from the audio clock: each delta is
stamped with the audio seconds sent when it arrived (see :mod:`components.core.transcript`), which
is why srt and vtt default to real-time pace. Every failure ends in one line on stderr and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TextIO

import numpy as np

from components.backends.base import Backend
from components.backends.factory import BackendSpec, Kind, build_backend
from components.backends.play import Played, play
from components.continuity.chain import ContinuousStream
from components.continuity.policy import ContinuityPolicy, StreamNotice
from components.core.audio import float_to_pcm16
from components.core.env import read
from components.core.errors import BackendError
from components.core.protocol import (
    MAX_PROMPT_CHARS,
    NO_OPTIONS,
    SAMPLE_RATE,
    ErrorCode,
    ErrorEvent,
    ProtocolError,
    ServerEvent,
    SessionOptions,
    TranscriptionDelta,
    TranscriptionDone,
    TranscriptionPartial,
    Usage,
)
from components.core.transcript import Transcript, to_srt, to_txt, to_vtt
from components.outputs.delivery import CaptionOutputs, describe
from components.outputs.targets import InvalidTarget, Target, parse_target

log = logging.getLogger("components.cli.main")

DEFAULT_URL = "ws://127.0.0.1:8081/v1/realtime"
CHUNK_SECONDS = 0.1
FORMATS = ("text", "json", "srt", "vtt")
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure reported as one line on stderr."""


# --------------------------------------------------------------------------- parser


def _env(name: str, default: str | None = None) -> str | None:
    return read(os.environ, name, str, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components",
        description="Live captions over vLLM's Realtime protocol.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m components serve                   # ws://127.0.0.1:8081/v1/realtime\n"
        "  python -m components transcribe talk.wav     # through that server\n"
        "  python -m components transcribe talk.wav --local --format srt\n\n"
        "Run `python -m components COMMAND --help` for the options of each command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="serve a vLLM-compatible /v1/realtime WebSocket endpoint",
        description="Serve a vLLM-compatible Realtime endpoint (WebSocket /v1/realtime, "
        "GET /health, GET /v1/models) on one engine. Options fall back to LIVE_CAPTIONS_* "
        "environment variables, then to the defaults shown.",
    )
    serve.add_argument("--host", help="address to bind (LIVE_CAPTIONS_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (LIVE_CAPTIONS_PORT; default 8081)")
    serve.add_argument(
        "--engine",
        choices=("auto", "whisper", "vllm"),
        help="speech engine (LIVE_CAPTIONS_ENGINE; default auto: vLLM on a GPU, else Whisper)",
    )
    serve.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* (default none; prefer "
        "LIVE_CAPTIONS_API_KEY, since a flag shows in the process list)",
    )
    serve.add_argument(
        "--max-sessions",
        type=int,
        metavar="N",
        help="concurrent sessions before server_busy (LIVE_CAPTIONS_MAX_SESSIONS; "
        "default: what the engine can keep real time)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="close a session after S seconds without a client event "
        "(LIVE_CAPTIONS_IDLE_TIMEOUT; default 60)",
    )
    serve.add_argument(
        "--max-session-seconds",
        type=float,
        metavar="S",
        help="longest session (LIVE_CAPTIONS_MAX_SESSION_SECONDS; default 14400)",
    )
    serve.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="model id clients must send (LIVE_CAPTIONS_SERVED_MODEL_NAME; default the engine's)",
    )
    serve.add_argument(
        "--audio-buffer-seconds",
        type=float,
        metavar="S",
        help="audio a session may queue ahead of the engine "
        "(LIVE_CAPTIONS_AUDIO_BUFFER_SECONDS; default 120)",
    )
    serve.add_argument(
        "--max-prompt-chars",
        type=int,
        metavar="N",
        help="longest prompt (names and terms) a session may send; 0 takes none "
        f"(LIVE_CAPTIONS_MAX_PROMPT_CHARS; default {MAX_PROMPT_CHARS})",
    )
    serve.add_argument(
        "--log-level",
        default=_env("LIVE_CAPTIONS_LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
        help="log level (LIVE_CAPTIONS_LOG_LEVEL; default info)",
    )

    tr = commands.add_parser(
        "transcribe",
        help="stream an audio file to a backend and print the transcript",
        description="Stream an audio file (any format librosa reads) in 100 ms chunks, show "
        "the text live on stderr and print the final transcript on stdout.",
    )
    tr.add_argument("file", metavar="FILE", help="audio file (wav, flac, mp3, ogg, ...)")
    where = tr.add_argument_group("backend (default: --url)")
    where.add_argument(
        "--url",
        help="vLLM Realtime WebSocket URL (LIVE_CAPTIONS_URL; default " + DEFAULT_URL + ")",
    )
    where.add_argument(
        "--local", action="store_true", help="run the engine in this process (no server)"
    )
    where.add_argument(
        "--backend",
        choices=("websocket", "local", "sagemaker"),
        help="backend kind; --url implies websocket and --local implies local",
    )
    where.add_argument("--endpoint", help="SageMaker endpoint name (with --backend sagemaker)")
    where.add_argument("--region", help="AWS region of the endpoint (default: the AWS config)")
    where.add_argument("--endpoint-url", help="SageMaker runtime URL override (e.g. a local front)")
    where.add_argument("--ca-bundle", help="CA certificates to trust for --endpoint-url (PEM)")
    where.add_argument(
        "--engine",
        choices=("auto", "whisper", "vllm"),
        help="engine for --local (LIVE_CAPTIONS_ENGINE; default auto)",
    )
    tr.add_argument("--model", help="model id (default: the server's first model)")
    tr.add_argument(
        "--api-key", metavar="KEY", help="bearer key for the server (LIVE_CAPTIONS_API_KEY)"
    )
    tr.add_argument(
        "--pace",
        choices=("realtime", "fast"),
        help="send audio in real time, or as fast as the backend takes it "
        "(default: realtime for srt/vtt, whose cue times come from the audio clock; else fast)",
    )
    tr.add_argument("--format", choices=FORMATS, default="text", help="stdout format")
    tr.add_argument(
        "--max-stream-seconds",
        type=float,
        metavar="S",
        help="hand over to a new backend stream at least every S seconds "
        "(default: before the backend's own limits, such as SageMaker's 30 minutes)",
    )
    tr.add_argument(
        "--partials",
        action="store_true",
        help="ask for the tentative tail too (shown dimmed on a terminal)",
    )
    tr.add_argument(
        "--language",
        metavar="CODE",
        help="ISO-639-1 code of the speech, e.g. de (default: the engine's own)",
    )
    tr.add_argument(
        "--prompt",
        metavar="TEXT",
        help=f"names and terms to spell right, e.g. 'Hester Prynne, Kubernetes' "
        f"(at most {MAX_PROMPT_CHARS} characters)",
    )
    tr.add_argument(
        "--send-to",
        action="append",
        metavar="KIND=URL",
        help="also send the captions to a platform as they are confirmed; KIND is zoom, "
        "youtube, teams or obs, URL the address the platform gives the organiser "
        "(repeatable; LIVE_CAPTIONS_SEND_TO, space-separated, is the default)",
    )
    tr.add_argument("-q", "--quiet", action="store_true", help="no live text on stderr")
    tr.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return parser


# --------------------------------------------------------------------------- transcribe


@dataclass(slots=True)
class Result:
    transcript: Transcript
    audio_seconds: float
    usage: Usage | None = None
    warnings: list[str] = field(default_factory=list)


class LiveView:
    """Deltas on stderr as they arrive; on a terminal, the partial tail too (dim, replaced).

    The partial is kept to the room left on the current line and erased with backspaces, so
    no cursor position has to survive the terminal scrolling.
    """

    def __init__(self, out: TextIO, *, partials: bool, enabled: bool = True) -> None:
        self.out = out
        self.enabled = enabled
        self.tty = out.isatty()
        self.partials = partials and self.tty
        self._shown = 0  # characters of partial on screen
        self._col = 0  # cursor column after the confirmed text
        self._last = ""  # last confirmed character
        self._wrote = False

    def _width(self) -> int:
        """Columns of the terminal this view writes to (stdout may be a file meanwhile)."""
        try:
            return max(2, os.get_terminal_size(self.out.fileno()).columns)
        except (OSError, ValueError, AttributeError):
            return 80

    def _erase_partial(self) -> None:
        if self._shown:
            self.out.write("\b" * self._shown + "\x1b[0m\x1b[K")
            self._shown = 0

    def delta(self, text: str) -> None:
        if not self.enabled:
            return
        self._erase_partial()
        self.out.write(text)
        width = self._width()
        for ch in text:
            self._col = 0 if ch == "\n" else (self._col + 1) % width
        self._last = text[-1:] or self._last
        self._wrote = True
        self.out.flush()

    def partial(self, text: str) -> None:
        if not (self.enabled and self.partials):
            return
        self._erase_partial()
        room = self._width() - self._col - 1
        if text and self._last and not self._last.isspace() and not text[0].isspace():
            text = " " + text  # engines send the tail without the joining space
        if text and room > 1:
            shown = text if len(text) <= room else text[: room - 1] + "…"
            self.out.write("\x1b[2m" + shown + "\x1b[0m")
            self._shown = len(shown)
        self.out.flush()

    def warn(self, message: str) -> None:
        self.close()
        self.out.write(f"warning: {message}\n")
        self.out.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._erase_partial()
        if self._wrote:
            self.out.write("\n")
            self._wrote = False
            self._col = 0
        self.out.flush()


async def stream_file(
    backend: Backend,
    samples: np.ndarray,
    *,
    realtime: bool,
    partials: bool = False,
    view: LiveView | None = None,
    policy: ContinuityPolicy | None = None,
    options: SessionOptions = NO_OPTIONS,
    outputs: CaptionOutputs | None = None,
) -> Result:
    """Send ``samples`` (float32 16 kHz) through a continuous stream (handovers and
    reconnections as needed, see :mod:`components.continuity.chain`); collect the timed
    transcript."""
    transcript = Transcript()
    result = Result(transcript=transcript, audio_seconds=len(samples) / SAMPLE_RATE)

    def notice(note: StreamNotice) -> None:
        if note.kind in ("reconnecting", "audio_lost"):
            result.warnings.append(note.message)
            if view:
                view.warn(note.message)

    def on_event(event: ServerEvent, played: Played) -> None:
        at = played.sent_seconds  # the audio clock: where the transcript's times come from
        match event:
            case TranscriptionDelta(delta=delta):
                transcript.add_delta(delta, at)
                if view:
                    view.delta(delta)
                if outputs:
                    outputs.feed(delta)
            case TranscriptionPartial(text=text):
                transcript.set_partial(text)
                if view:
                    view.partial(text)
            case TranscriptionDone(text=text, usage=usage):
                transcript.finish(text, at)
                result.usage = usage
            case ErrorEvent(error=message, code=code):
                if code != ErrorCode.OVERLOADED:
                    raise CliError(f"the server reported an error: {message} ({code})")
                result.warnings.append(message)
                if view:
                    view.warn(message)

    stream = await ContinuousStream.open(
        backend,
        partials=partials,
        options=options,
        policy=policy,
        on_notice=notice,
        label="transcribe",
    )
    try:
        played = await play(
            stream,
            float_to_pcm16(samples),
            pace=1.0 if realtime else 0.0,
            chunk_seconds=CHUNK_SECONDS,
            on_event=on_event,
        )
    finally:
        if view:
            view.close()
    if played.done is None:
        raise CliError("the stream ended without a final transcript")
    return result


def format_result(result: Result, fmt: str, *, backend_name: str = "") -> str:
    transcript = result.transcript
    if fmt == "text":
        return to_txt(transcript.text)
    if fmt == "srt":
        return to_srt(transcript.cues())
    if fmt == "vtt":
        return to_vtt(transcript.cues())
    usage = result.usage
    body = {
        "text": transcript.text,
        "audio_seconds": round(result.audio_seconds, 3),
        "backend": backend_name,
        "segments": [
            {"start": round(c.start, 3), "end": round(c.end, 3), "text": c.text}
            for c in transcript.cues()
        ],
        "usage": None
        if usage is None
        else {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
        "warnings": result.warnings,
    }
    return json.dumps(body, ensure_ascii=False, indent=2) + "\n"


def make_backend(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Backend:
    """The backend the options name; usage mistakes exit through the parser."""
    kind = args.backend or ("local" if args.local else "websocket")
    if args.local and kind != "local":
        parser.error("--local conflicts with --backend " + kind)
    if args.url and kind != "websocket":
        parser.error("--url is for the websocket backend")
    if args.endpoint and kind != "sagemaker":
        parser.error("--endpoint is for --backend sagemaker")
    if kind == "sagemaker" and not args.endpoint:
        parser.error("--backend sagemaker needs --endpoint NAME")
    spec = BackendSpec(
        Kind(kind),
        url=str(args.url or _env("LIVE_CAPTIONS_URL", DEFAULT_URL)),
        endpoint=args.endpoint,
        region=args.region,
        endpoint_url=args.endpoint_url,
        ca_bundle=args.ca_bundle,
        model=args.model,
        api_key=args.api_key or _env("LIVE_CAPTIONS_API_KEY"),
    )
    engine = None
    if spec.kind is Kind.LOCAL:
        from components.engines.registry import create_engine

        engine, note = create_engine(args.engine or _env("LIVE_CAPTIONS_ENGINE", "auto") or "auto")
        log.info("local engine: %s", note)
    try:
        return build_backend(spec, engine)
    except ValueError as exc:
        parser.error(str(exc))


def load_audio(path: str) -> np.ndarray:
    """The file as float32 16 kHz mono, or a CliError saying why it cannot be read."""
    from components.core.audio import load_file

    if not os.path.isfile(path):
        raise CliError(f"no such file: {path}")
    try:
        samples = load_file(path)
    except Exception as exc:  # librosa/soundfile/audioread raise many kinds
        raise CliError(f"cannot read {path} as audio: {exc}") from None
    if not len(samples):
        raise CliError(f"{path} contains no audio")
    return samples


async def _transcribe(
    args: argparse.Namespace,
    backend: Backend,
    samples: np.ndarray,
    options: SessionOptions,
    targets: Sequence[Target] = (),
) -> int:
    pace = args.pace or ("realtime" if args.format in ("srt", "vtt") else "fast")
    view = LiveView(sys.stderr, partials=args.partials, enabled=not args.quiet)
    outputs = CaptionOutputs(targets, language=options.language)
    outputs.start()
    try:
        result = await stream_file(
            backend,
            samples,
            realtime=pace == "realtime",
            partials=args.partials,
            view=view,
            policy=ContinuityPolicy(max_stream_seconds=args.max_stream_seconds),
            options=options,
            outputs=outputs,
        )
    finally:
        statuses = await outputs.finish()
        engine = getattr(backend, "engine", None)
        if engine is not None:
            await engine.aclose()
    sys.stdout.write(format_result(result, args.format, backend_name=backend.name))
    sys.stdout.flush()
    failed = False
    for status in statuses:
        failed |= status.state == "failed"
        if not args.quiet or status.state == "failed":
            print(f"{status.label}: {describe(status)}", file=sys.stderr)
    return EXIT_ERROR if failed else 0


def send_to_targets(specs: Sequence[str]) -> list[Target]:
    """The ``--send-to`` outputs (else ``LIVE_CAPTIONS_SEND_TO``), checked; CliError if not."""
    if not specs:
        specs = (read(os.environ, "LIVE_CAPTIONS_SEND_TO", str, "") or "").split()
    try:
        return [parse_target(spec) for spec in specs]
    except InvalidTarget as exc:
        raise CliError(str(exc)) from None


def cmd_transcribe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.max_stream_seconds is not None and args.max_stream_seconds < 10:
        parser.error("--max-stream-seconds must be at least 10")
    try:
        options = SessionOptions.checked(args.language, args.prompt)
    except ProtocolError as exc:
        parser.error(exc.message)
    targets = send_to_targets(args.send_to or ())
    samples = load_audio(args.file)
    backend = make_backend(args, parser)
    return asyncio.run(_transcribe(args, backend, samples, options, targets))


# --------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from components.engines.registry import create_engine
    from components.server.app import serve
    from components.server.state import ServerSettings

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = ServerSettings.from_env()
        overrides = {
            name: getattr(args, name)
            for name in (
                "host",
                "port",
                "api_key",
                "max_sessions",
                "idle_timeout",
                "max_session_seconds",
                "served_model_name",
                "audio_buffer_seconds",
                "max_prompt_chars",
            )
            if getattr(args, name) is not None
        }
        settings = replace(settings, **overrides).validated()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    kind = args.engine or _env("LIVE_CAPTIONS_ENGINE", "auto") or "auto"
    engine, note = create_engine(kind)
    log.info("engine: %s", note)
    log.info("realtime endpoint: ws://%s:%d/v1/realtime", settings.host, settings.port)
    asyncio.run(serve(engine, settings, log_level=args.log_level))
    return 0


# --------------------------------------------------------------------------- entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args)
        return cmd_transcribe(args, parser)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CliError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # anything else still gets one line, not a traceback
        from components.engines.base import EngineError

        if isinstance(exc, EngineError):
            print(f"error: {exc.message}", file=sys.stderr)
        else:
            log.debug("unexpected failure", exc_info=True)
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
