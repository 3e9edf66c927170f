"""What a deployment of the page offers, and the check of what a visitor picks.

:class:`Settings` reads the deployment's environment: which backends visitors may use
(``SAGEMAKER_ENDPOINTS`` allowlist, ``ALLOW_CUSTOM_URL``), limits (``MAX_SESSIONS``,
``MAX_SESSION_SECONDS``, ``MAX_STREAM_SECONDS``, ``MAX_PROMPT_CHARS``) and defaults.
:func:`validate_choice` is the server-side gate for a :class:`BackendChoice` and the session
options that travel with it: the page's widgets only mirror it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from components.core.env import SettingError, environment, positive, read
from components.core.errors import BackendError, NotFound
from components.core.protocol import MAX_PROMPT_CHARS, ProtocolError, SessionOptions
from components.outputs.targets import InvalidTarget, Target, check_allowed, parse_target

PUBLIC_PROMPT_CHARS = 200
"""A public deployment's default bound on what a visitor may put in "Names and terms"."""

_ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_REGION_NAME = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


class BackendKind(StrEnum):
    LOCAL = "local"
    SAGEMAKER = "sagemaker"
    REALTIME = "realtime"


class InvalidChoice(BackendError):
    """The backend settings are incomplete or malformed (fixable in the page's settings)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What this deployment offers and allows; docs/configuration.md lists the variables."""

    max_sessions: int = 8
    max_session_seconds: float = 4 * 3600.0
    idle_seconds: float = 30.0
    max_stream_seconds: float | None = None
    """Hand over to a new backend stream at least this often (None: at the backend's limits)."""
    local_enabled: bool = True
    local_engine: str = "auto"
    sagemaker_endpoints: tuple[str, ...] = ()
    sagemaker_endpoint: str = ""
    sagemaker_region: str = "us-east-1"
    realtime_url: str = ""
    realtime_model: str | None = None
    realtime_api_key: str | None = None
    allow_custom_url: bool = True
    public: bool = False
    max_prompt_chars: int = MAX_PROMPT_CHARS
    """Longest "Names and terms" text a visitor may send (``MAX_PROMPT_CHARS``)."""
    send_to: tuple[Target, ...] = ()
    """Caption outputs of every session whose visitor names none (``LIVE_CAPTIONS_SEND_TO``)."""
    outputs_any_host: bool = False
    """Let a public deployment post captions anywhere (``OUTPUTS_ANY_HOST``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = environment(env)
        stream = read(env, "MAX_STREAM_SECONDS", float)
        public = read(env, "PUBLIC_DEPLOYMENT", bool, bool(env.get("SPACE_ID")))
        endpoints = tuple(
            e.strip() for e in env.get("SAGEMAKER_ENDPOINTS", "").split(",") if e.strip()
        )
        region = (
            env.get("SAGEMAKER_REGION")
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        ).strip()
        try:
            send_to = tuple(
                parse_target(spec)
                for spec in (read(env, "LIVE_CAPTIONS_SEND_TO", str, "") or "").split()
            )
        except InvalidTarget as exc:
            raise SettingError(f"LIVE_CAPTIONS_SEND_TO: {exc}") from None
        return cls(
            send_to=send_to,
            outputs_any_host=read(env, "OUTPUTS_ANY_HOST", bool, False),
            max_sessions=positive("MAX_SESSIONS", read(env, "MAX_SESSIONS", int, 8)),
            max_session_seconds=positive(
                "MAX_SESSION_SECONDS", read(env, "MAX_SESSION_SECONDS", float, 4 * 3600.0)
            ),
            idle_seconds=positive(
                "SESSION_IDLE_SECONDS", read(env, "SESSION_IDLE_SECONDS", float, 30.0)
            ),
            max_stream_seconds=(None if stream is None else positive("MAX_STREAM_SECONDS", stream)),
            local_enabled=read(env, "LOCAL_BACKEND", bool, True),
            local_engine=read(env, "LIVE_CAPTIONS_ENGINE", str, "auto"),
            sagemaker_endpoints=endpoints,
            sagemaker_endpoint=read(
                env, "SAGEMAKER_ENDPOINT", str, endpoints[0] if endpoints else ""
            ),
            sagemaker_region=region,
            realtime_url=read(env, "REALTIME_URL", str, ""),
            realtime_model=read(env, "REALTIME_MODEL", str),
            realtime_api_key=read(env, "LIVE_CAPTIONS_API_KEY", str),
            allow_custom_url=read(env, "ALLOW_CUSTOM_URL", bool, not public),
            public=public,
            max_prompt_chars=min(
                MAX_PROMPT_CHARS,
                positive(
                    "MAX_PROMPT_CHARS",
                    read(
                        env,
                        "MAX_PROMPT_CHARS",
                        int,
                        PUBLIC_PROMPT_CHARS if public else MAX_PROMPT_CHARS,
                    ),
                ),
            ),
        )

    @property
    def allowed_endpoints(self) -> tuple[str, ...] | None:
        """Endpoint names visitors may invoke; ``None`` means any (a private deployment)."""
        if self.sagemaker_endpoints:
            return self.sagemaker_endpoints
        if self.public:
            return (self.sagemaker_endpoint,) if self.sagemaker_endpoint else ()
        return None

    @property
    def region_locked(self) -> bool:
        """On a public deployment visitors cannot move the Space's credentials to another region."""
        return self.public or bool(self.sagemaker_endpoints)

    @property
    def kinds(self) -> tuple[BackendKind, ...]:
        """Backends this deployment offers, in the page's order."""
        kinds = []
        if self.local_enabled:
            kinds.append(BackendKind.LOCAL)
        if self.allowed_endpoints != ():
            kinds.append(BackendKind.SAGEMAKER)
        if self.allow_custom_url or self.realtime_url:
            kinds.append(BackendKind.REALTIME)
        return tuple(kinds)


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """What the visitor picked in the page; checked against :class:`Settings` before use."""

    kind: BackendKind | str = BackendKind.LOCAL
    endpoint: str = ""
    region: str = ""
    url: str = ""
    language: str = ""
    """ISO-639-1 code, or "" for the engine's default."""
    prompt: str = ""
    """Names and terms for the engine to spell right."""
    send_to: tuple[str, ...] = ()
    """Caption outputs as ``KIND=URL`` (checked into :attr:`outputs`)."""
    outputs: tuple[Target, ...] = ()

    @property
    def options(self) -> SessionOptions:
        return SessionOptions(language=self.language or None, prompt=self.prompt or None)


def validate_choice(choice: BackendChoice, settings: Settings) -> BackendChoice:
    """Return the choice as it will be used, or raise a :class:`BackendError` saying why not.

    This is the server-side gate: the page's widgets only mirror it, so a visitor calling the
    page's API directly gets the same refusals.
    """
    try:
        kind = BackendKind(str(choice.kind))
    except ValueError:
        raise InvalidChoice(
            f"Unknown backend {choice.kind!r}; choose Local, SageMaker or a Realtime URL."
        ) from None
    if kind not in settings.kinds:
        raise NotFound(f"The {kind.value} backend is not offered on this deployment.")
    try:
        options = SessionOptions.checked(
            choice.language, choice.prompt, max_prompt_chars=settings.max_prompt_chars
        )
    except ProtocolError as exc:
        raise InvalidChoice(exc.message) from None
    try:
        outputs = tuple(
            check_allowed(
                parse_target(spec), public=settings.public, any_host=settings.outputs_any_host
            )
            for spec in choice.send_to
            if spec.partition("=")[2].strip()
        )
    except InvalidTarget as exc:
        raise InvalidChoice(str(exc)) from None
    extra: dict[str, Any] = {
        "language": options.language or "",
        "prompt": options.prompt or "",
        "outputs": outputs or settings.send_to,
    }
    if kind is BackendKind.LOCAL:
        return BackendChoice(kind, **extra)
    if kind is BackendKind.SAGEMAKER:
        endpoint = (choice.endpoint or "").strip() or settings.sagemaker_endpoint
        allowed = settings.allowed_endpoints
        if not endpoint:
            raise InvalidChoice("Enter the name of a SageMaker endpoint.")
        if allowed is not None and endpoint not in allowed:
            raise NotFound(
                f"Endpoint {endpoint!r} is not allowed on this deployment; "
                f"choose one of: {', '.join(allowed)}."
            )
        if not _ENDPOINT_NAME.match(endpoint):
            raise InvalidChoice(
                f"{endpoint!r} is not a valid SageMaker endpoint name "
                "(letters, digits and hyphens, at most 63)."
            )
        if settings.region_locked:
            region = settings.sagemaker_region
        else:
            region = (choice.region or "").strip() or settings.sagemaker_region
        if not _REGION_NAME.match(region):
            raise InvalidChoice(f"{region!r} is not an AWS region name (for example us-east-1).")
        return BackendChoice(kind, endpoint=endpoint, region=region, **extra)
    url = (choice.url or "").strip() or settings.realtime_url
    if not settings.allow_custom_url and url != settings.realtime_url:
        raise NotFound(
            "Custom server URLs are disabled on this deployment (ALLOW_CUSTOM_URL); "
            f"use {settings.realtime_url or 'another backend'}."
        )
    if not re.match(r"^wss?://[^\s/]+", url):
        raise InvalidChoice(
            "Enter a Realtime server URL such as ws://127.0.0.1:8000/v1/realtime (ws:// or wss://)."
        )
    return BackendChoice(kind, url=url, **extra)
