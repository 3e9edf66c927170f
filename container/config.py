"""The bridge's settings, from ``UPSTREAM_*`` and ``BRIDGE_*`` variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from components.core.env import environment, read

SESSION_OPTION_MODES = ("pass", "voxtral")
"""``pass``: forward ``session.update`` as it is (the engine checks, as our server does);
``voxtral``: check language and prompt for Voxtral Realtime on ``vllm serve``."""


def health_url_for(upstream_url: str) -> str:
    """The engine's ``/health`` URL on the same host and port as its WebSocket URL."""
    parts = urlsplit(upstream_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/health", "", ""))


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Everything the bridge needs; :meth:`from_env` reads the documented variables."""

    upstream_url: str = "ws://127.0.0.1:8081/v1/realtime"
    health_url: str = ""
    """Defaults to ``/health`` beside :attr:`upstream_url`."""
    api_key: str | None = None
    """Sent upstream as ``Authorization: Bearer`` (loopback only; never logged)."""
    max_connections: int = 128
    max_message_bytes: int = 16 * 1024 * 1024
    connect_timeout: float = 10.0
    ping_timeout: float = 1.5
    """Deadline for one upstream health probe; SageMaker wants ``/ping`` within 2 s."""
    keepalive_interval: float | None = None
    """Bridge-side pings to the client; off by default because SageMaker pings every 60 s."""
    idle_timeout: float | None = None
    """Close a stream after this long without a frame either way; for engines without their
    own idle timeout (``vllm serve``). Off by default: our server has one."""
    close_timeout: float = 2.0
    session_options: str = "pass"
    """See :data:`SESSION_OPTION_MODES`."""

    def __post_init__(self) -> None:
        if self.session_options not in SESSION_OPTION_MODES:
            raise ValueError(
                f"BRIDGE_SESSION_OPTIONS={self.session_options!r}: choose "
                + " or ".join(SESSION_OPTION_MODES)
            )
        if not self.health_url:
            object.__setattr__(self, "health_url", health_url_for(self.upstream_url))
        if self.max_connections < 1:
            raise ValueError("BRIDGE_MAX_CONNECTIONS must be at least 1")
        if self.max_message_bytes < 1024:
            raise ValueError("BRIDGE_MAX_MESSAGE_BYTES must be at least 1024")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> BridgeConfig:
        """Read ``UPSTREAM_*`` and ``BRIDGE_*`` variables (docs/sagemaker.md)."""
        env = environment(env)
        port = read(env, "UPSTREAM_PORT", int, 8081)
        url = read(env, "UPSTREAM_URL", str, f"ws://127.0.0.1:{port}/v1/realtime")
        keepalive = read(env, "BRIDGE_KEEPALIVE_INTERVAL", float, 0.0)
        idle = read(env, "BRIDGE_IDLE_TIMEOUT", float, 0.0)
        values: dict[str, Any] = {
            "upstream_url": url,
            "health_url": read(env, "UPSTREAM_HEALTH_URL", str, ""),
            "api_key": read(env, "UPSTREAM_API_KEY", str) or read(env, "VLLM_API_KEY", str),
            "max_connections": read(env, "BRIDGE_MAX_CONNECTIONS", int, 128),
            "max_message_bytes": read(env, "BRIDGE_MAX_MESSAGE_BYTES", int, 16 * 1024 * 1024),
            "connect_timeout": read(env, "UPSTREAM_CONNECT_TIMEOUT", float, 10.0),
            "ping_timeout": read(env, "BRIDGE_PING_TIMEOUT", float, 1.5),
            "keepalive_interval": keepalive if keepalive > 0 else None,
            "idle_timeout": idle if idle > 0 else None,
            "session_options": read(env, "BRIDGE_SESSION_OPTIONS", str, "pass").lower(),
        }
        values.update(overrides)
        return cls(**values)

    def upstream_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
