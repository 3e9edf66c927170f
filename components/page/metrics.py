"""The page's Prometheus metrics at ``/metrics``: its sessions, their figures, the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client.core import Metric

from components.core.metrics import CONTENT_TYPE, Registry, gauge, render
from components.page.view import SessionView


class PageMetrics:
    """Each finished session's figures are recorded once; live counts are read when scraped."""

    def __init__(self) -> None:
        self.registry = r = Registry()
        self.sessions = r.counter(
            "live_captions_sessions", "Caption sessions ended, by how", ("state",)
        )
        self.audio_seconds = r.counter("live_captions_audio_seconds", "Audio sent to backends (s)")
        self.first_caption = r.histogram(
            "live_captions_first_caption_seconds",
            "Seconds from a session's first speech to its first caption",
        )
        self.streams = r.counter(
            "live_captions_backend_streams",
            "Backend streams opened (a handover or a reconnection opens another)",
        )
        self.reconnects = r.counter("live_captions_reconnects", "Streams lost and reopened")
        self.samples_lost = r.counter(
            "live_captions_samples_lost", "Microphone samples that never reached a backend (16 kHz)"
        )
        self.errors = r.counter("live_captions_session_errors", "Sessions that ended in an error")

    def session_ended(self, view: SessionView) -> None:
        self.sessions.labels(state=str(view.state)).inc()
        self.audio_seconds.inc(view.audio_sent)
        if view.first_caption is not None:
            self.first_caption.observe(view.first_caption)
        self.streams.inc(view.streams)
        self.reconnects.inc(view.reconnects)
        self.samples_lost.inc(view.samples_lost or 0)
        if view.error:
            self.errors.inc()

    def watch(self, live: Callable[[], dict[str, float]]) -> None:
        """Expose ``live()`` (name -> value, read at each scrape) as gauges."""

        def read() -> Iterator[Metric]:
            for name, value in live().items():
                yield gauge(f"live_captions_{name}", name.replace("_", " "), value)

        self.registry.live(read)


def add_metrics_route(app: FastAPI, metrics: PageMetrics) -> None:
    """``GET /metrics``: Prometheus text."""

    async def serve() -> Response:
        return Response(render(metrics.registry), media_type=CONTENT_TYPE)

    app.add_api_route("/metrics", serve, methods=["GET"], include_in_schema=False)
