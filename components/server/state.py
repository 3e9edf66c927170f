"""What the server's routes and sessions share: its settings (from ``LIVE_CAPTIONS_*``) and
its live state (the engine, the session slots, the counters)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from components.core.env import environment, read
from components.core.protocol import (
    DEFAULT_MAX_APPEND_BYTES,
    MAX_PROMPT_CHARS,
)
from components.engines.base import Engine
from components.server.limits import SessionSlots, seconds_to_bytes
from components.server.metrics import ServerMetrics

ENV_PREFIX = "LIVE_CAPTIONS_"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything configurable about the server; each field has a ``LIVE_CAPTIONS_*`` variable."""

    host: str = "127.0.0.1"
    port: int = 8081
    api_key: str | None = None
    """When set, ``/v1/*`` needs ``Authorization: Bearer <key>`` (``/health`` stays open)."""
    max_sessions: int | None = None
    """Concurrent sessions; None takes the engine's own ``max_sessions``."""
    idle_timeout: float = 60.0
    """Seconds without a client event before the session is closed (``idle_timeout``)."""
    max_session_seconds: float = 4 * 3600.0
    """Longest session in wall-clock seconds (``session_too_long``)."""
    served_model_name: str | None = None
    """The model id clients must name; None takes the engine's ``model``."""
    audio_buffer_seconds: float = 120.0
    """Audio a session may queue ahead of the engine before back-pressure or an error."""
    max_append_bytes: int = DEFAULT_MAX_APPEND_BYTES
    max_prompt_chars: int = MAX_PROMPT_CHARS
    """Longest ``prompt`` in ``session.update`` (``prompt_too_long``); 0 refuses any prompt."""

    @property
    def audio_buffer_bytes(self) -> int:
        return seconds_to_bytes(self.audio_buffer_seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Defaults overridden by ``LIVE_CAPTIONS_*`` variables (empty ones are ignored)."""
        env = environment(environ)

        base = cls()
        conversions: dict[str, tuple[str, type]] = {
            "host": ("HOST", str),
            "port": ("PORT", int),
            "api_key": ("API_KEY", str),
            "max_sessions": ("MAX_SESSIONS", int),
            "idle_timeout": ("IDLE_TIMEOUT", float),
            "max_session_seconds": ("MAX_SESSION_SECONDS", float),
            "served_model_name": ("SERVED_MODEL_NAME", str),
            "audio_buffer_seconds": ("AUDIO_BUFFER_SECONDS", float),
            "max_prompt_chars": ("MAX_PROMPT_CHARS", int),
        }
        values: dict[str, Any] = {}
        for attr, (name, kind) in conversions.items():
            value = read(env, ENV_PREFIX + name, kind)
            if value is not None:
                values[attr] = value
        return replace(base, **values).validated()

    def validated(self) -> ServerSettings:
        """Raise ValueError naming the setting when a value makes no sense."""
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is outside 1-65535")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ValueError("max sessions must be at least 1")
        for name in ("idle_timeout", "max_session_seconds", "audio_buffer_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', ' ')} must be positive")
        if not 0 <= self.max_prompt_chars <= MAX_PROMPT_CHARS:
            raise ValueError(f"max prompt chars must lie between 0 and {MAX_PROMPT_CHARS}")
        return self


@dataclass(slots=True)
class ServerState:
    """What the routes share: the engine, the settings and the live counters."""

    engine: Engine
    settings: ServerSettings
    slots: SessionSlots
    model_names: tuple[str, ...]
    created: int = field(default_factory=lambda: int(time.time()))
    requests_active: int = 0
    """Engine requests running now, over all sessions."""
    sessions_total: int = 0
    sessions_refused: int = 0
    metrics: ServerMetrics = field(default_factory=ServerMetrics)

    def __post_init__(self) -> None:
        self.metrics.watch(self)

    def engine_counts(self) -> dict[str, float]:
        """The engine's own live figures, if it keeps any (``counts()``)."""
        counts = getattr(self.engine, "counts", None)
        return dict(counts()) if callable(counts) else {}

    def authorized(self, authorization: str | None) -> bool:
        """True when no key is configured or the header carries it as a bearer token."""
        key = self.settings.api_key
        if not key:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode(), key.encode())
