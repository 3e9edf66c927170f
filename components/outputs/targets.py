"""Where a session's captions go: ``KIND=URL`` as its platform hands it to the organiser.

These URLs are credentials (a Zoom API token, a YouTube stream's ingestion key, a Teams CART
token, an OBS password): they are parsed and checked here, shown only masked
(:meth:`Target.masked`), and never logged whole. A public deployment (a Space) must not become
a way to make its server post to addresses of a visitor's choosing: there only ``https`` URLs
on the platforms' own hosts are accepted, and no OBS address, unless the operator allows any
host (``OUTPUTS_ANY_HOST``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl, urlsplit


class OutputKind(StrEnum):
    ZOOM = "zoom"
    YOUTUBE = "youtube"
    TEAMS = "teams"
    OBS = "obs"


PLATFORM_NAMES = {
    OutputKind.ZOOM: "Zoom",
    OutputKind.YOUTUBE: "YouTube Live",
    OutputKind.TEAMS: "Microsoft Teams",
    OutputKind.OBS: "OBS Studio",
}

PLATFORM_HOSTS: dict[OutputKind, tuple[str, ...]] = {
    OutputKind.ZOOM: ("zoom.us",),
    OutputKind.YOUTUBE: ("youtube.com", "google.com"),
    OutputKind.TEAMS: ("microsoft.com", "office.com", "teams.microsoft.com"),
    OutputKind.OBS: (),
}
"""Hosts (and their subdomains) a public deployment may post a platform's captions to."""


class InvalidTarget(ValueError):
    """A caption output that cannot be used as given; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class Target:
    kind: OutputKind
    url: str

    @property
    def platform(self) -> str:
        return PLATFORM_NAMES[self.kind]

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def masked(self) -> str:
        """The URL with every secret hidden: its scheme, host and path only."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        hidden = "?…" if parts.query else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}{hidden}"

    @property
    def label(self) -> str:
        """What logs and the page call this output (no secret in it)."""
        return f"{self.platform} ({self.host})"


def parse_target(spec: str) -> Target:
    """``KIND=URL``, e.g. ``zoom=https://wmcc.zoom.us/closedcaption?id=…``."""
    kind_text, sep, url = spec.strip().partition("=")
    if not sep or not url.strip():
        raise InvalidTarget(
            "Give a caption output as KIND=URL, e.g. zoom=https://… "
            f"(KIND is one of: {', '.join(k.value for k in OutputKind)})."
        )
    try:
        kind = OutputKind(kind_text.strip().lower())
    except ValueError:
        raise InvalidTarget(
            f"Unknown caption output {kind_text.strip()!r}; "
            f"use one of: {', '.join(k.value for k in OutputKind)}."
        ) from None
    return checked(Target(kind, url.strip()))


def checked(target: Target) -> Target:
    """The target if its URL has the form its platform uses, else :class:`InvalidTarget`."""
    parts = urlsplit(target.url)
    if target.kind is OutputKind.OBS:
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise InvalidTarget(
                "Give OBS as its obs-websocket address, e.g. obs=ws://127.0.0.1:4455 "
                "(with the server password: ws://:PASSWORD@127.0.0.1:4455)."
            )
        return target
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidTarget(
            f"The {target.platform} caption URL must start with https:// "
            "(paste it as the platform shows it)."
        )
    query = dict(parse_qsl(parts.query))
    if target.kind is OutputKind.ZOOM and not query:
        raise InvalidTarget(
            "That is not a Zoom API token URL: copy it from the meeting's closed-caption "
            "settings (Closed Caption → Copy the API token); it ends in …closedcaption?id=…"
        )
    if target.kind is OutputKind.YOUTUBE and not query:
        raise InvalidTarget(
            "That is not a YouTube caption ingestion URL: copy it from the stream's settings "
            "(Closed captions → POST captions to URL); it carries the stream's cid=…"
        )
    if target.kind is OutputKind.TEAMS and not query:
        raise InvalidTarget(
            "That is not a Teams CART caption link: copy it from the meeting's options "
            "(Provide CART captions → Copy link); it carries meetingid=… and token=…"
        )
    return target


def allowed_publicly(target: Target) -> bool:
    """Whether a public deployment may post to this target: https, on the platform's hosts."""
    parts = urlsplit(target.url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or parts.port not in (None, 443):
        return False
    return any(host == h or host.endswith("." + h) for h in PLATFORM_HOSTS[target.kind])


def check_allowed(target: Target, *, public: bool, any_host: bool) -> Target:
    """The target, or :class:`InvalidTarget` saying why this deployment will not post there."""
    if not public or any_host or allowed_publicly(target):
        return target
    if target.kind is OutputKind.OBS:
        raise InvalidTarget(
            "This public page does not connect to OBS: run Live Captions on the streaming "
            "machine, or use the overlay link as a Browser Source."
        )
    hosts = ", ".join(PLATFORM_HOSTS[target.kind])
    raise InvalidTarget(
        f"This public page sends {target.platform} captions only to https URLs on {hosts}."
    )
