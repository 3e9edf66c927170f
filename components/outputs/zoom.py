"""Zoom's closed-caption API: the meeting's API token URL takes plain-text posts.

Facts (Zoom's "third-party closed captioning" documentation; see docs/outputs.md): POST
``text/plain`` UTF-8 to the token URL with ``seq`` (a number one higher each post) and
``lang``; ``GET <path>/seq`` with the same query gives the last number the meeting took, so a
session that restarts continues the count; a retry keeps its ``seq``. Zoom answers 400 until
the meeting has started, and 403 or 405 for a token it does not accept.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import httpx

from components.outputs.base import OutputError, http_client, send, with_query
from components.outputs.lines import Post
from components.outputs.targets import Target

NOT_STARTED_WAIT = 5.0
"""Seconds between tries while the meeting has not started."""

REGIONS = {
    "en": "en-US",
    "de": "de-DE",
    "fr": "fr-FR",
    "es": "es-ES",
    "pt": "pt-PT",
    "it": "it-IT",
    "nl": "nl-NL",
    "ja": "ja-JP",
    "zh": "zh-CN",
    "ko": "ko-KR",
    "ru": "ru-RU",
    "ar": "ar-SA",
    "hi": "hi-IN",
}
"""The region Zoom's ``lang`` names for a language (it takes tags like ``en-US``)."""


def zoom_language(language: str | None) -> str:
    """Zoom's ``lang`` for a session's ISO-639-1 language (English when none was chosen)."""
    code = language or "en"
    return REGIONS.get(code, code)


class ZoomSink:
    width = 80
    min_interval = 0.5
    max_chars = 1000
    heartbeat_every = None
    single_line = False
    idempotent = True

    def __init__(
        self,
        target: Target,
        *,
        language: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.target = target
        self.lang = zoom_language(language)
        self._client = client or http_client()
        self._seq: int | None = None

    @property
    def seq(self) -> int | None:
        """The number the next post carries (None until Zoom said where to continue)."""
        return self._seq

    async def post(self, post: Post) -> None:
        if self._seq is None:
            self._seq = await self._last_seq() + 1
        url = with_query(self.target.url, seq=self._seq, lang=self.lang)
        response = await send(self._client, self.target, "POST", url, post.text.encode())
        self._check(response)
        self._seq += 1

    async def heartbeat(self) -> None:
        return None

    async def _last_seq(self) -> int:
        parts = urlsplit(self.target.url)
        seq_url = urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/seq"))
        response = await send(self._client, self.target, "GET", seq_url, None)
        self._check(response)
        try:
            return max(0, int(response.text.strip() or "0"))
        except ValueError:
            return 0

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 400:
            raise OutputError(
                "The Zoom meeting has not started yet (Zoom answers 400 until it has); "
                "captions go out as soon as it starts.",
                wait=NOT_STARTED_WAIT,
            )
        if status in (401, 403, 405):
            raise OutputError(
                f"Zoom refused the captions ({status}): the API token URL is wrong or has "
                "expired. Copy it again from the meeting (Closed Caption → API token).",
                retry=False,
            )
        if status >= 300:
            raise OutputError(f"Zoom answered {status}; trying again.")

    async def aclose(self) -> None:
        await self._client.aclose()
