"""The server's Prometheus metrics (vLLM's names where vLLM has the same measure)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import Metric

from components.core.metrics import Registry, counter, gauge


class _Slots(Protocol):
    @property
    def active(self) -> int: ...

    @property
    def limit(self) -> int: ...


class LiveCounts(Protocol):
    """The live counts a server keeps (its :class:`~components.server.state.ServerState`)."""

    @property
    def slots(self) -> _Slots: ...

    @property
    def sessions_total(self) -> int: ...

    @property
    def sessions_refused(self) -> int: ...

    @property
    def requests_active(self) -> int: ...

    def engine_counts(self) -> dict[str, float]: ...


class ServerMetrics:
    """Recorded by the sessions as things happen; live counts are read from the state."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.audio_seconds = self.registry.counter(
            "live_captions_audio_seconds", "Seconds of audio received from clients"
        )
        self.errors = self.registry.counter(
            "live_captions_errors",
            "Error events sent to clients, by protocol error code",
            ("code",),
        )
        self.first_caption = self.registry.histogram(
            "vllm:time_to_first_token_seconds",
            "Seconds from an engine request's start to its first text",
        )

    def watch(self, state: LiveCounts) -> None:
        """Expose the state's live counts (sessions, engine requests, engine streams)."""

        def read() -> Iterator[Metric]:
            yield gauge("live_captions_sessions_active", "Sessions open now", state.slots.active)
            yield gauge("live_captions_sessions_limit", "Most sessions at once", state.slots.limit)
            yield counter("live_captions_sessions", "Sessions accepted", state.sessions_total)
            yield counter(
                "live_captions_sessions_refused",
                "Sessions refused because all were in use",
                state.sessions_refused,
            )
            yield gauge(
                "vllm:num_requests_running", "Engine requests running now", state.requests_active
            )
            for name, value in state.engine_counts().items():
                yield gauge(f"live_captions_engine_{name}", f"The engine's {name}", value)

        self.registry.live(read)
