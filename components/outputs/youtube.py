"""YouTube Live's HTTP caption ingestion: the stream's ``closedCaptionsIngestionUrl``.

Facts (YouTube's "live caption" ingestion documentation; see docs/outputs.md): POST a body of a
``YYYY-MM-DDTHH:MM:SS.mmm`` timestamp line (UTC, within about a minute of YouTube's clock) and
the caption text, ``<br>`` between lines, ending in a newline; ``seq`` goes up by one for each
new post and stays the same on a retry; an empty caption keeps the ingestion alive during
silence.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from components.outputs.base import OutputError, http_client, send, with_query
from components.outputs.lines import Post
from components.outputs.targets import Target


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}"


class YouTubeSink:
    width = 42
    min_interval = 1.0
    max_chars = 1000
    heartbeat_every = 20.0
    single_line = False
    idempotent = True

    def __init__(
        self,
        target: Target,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.target = target
        self._client = client or http_client()
        self._clock = clock
        self.seq = 1
        self._body: bytes | None = None
        """The body of a post that failed: its retry sends the same (and the same seq)."""

    async def post(self, post: Post) -> None:
        await self._send("<br>".join(post.lines))

    async def heartbeat(self) -> None:
        await self._send("")

    async def _send(self, text: str) -> None:
        body = self._body or f"{timestamp(self._clock())}\n{text}\n".encode()
        self._body = body
        url = with_query(self.target.url, seq=self.seq)
        response = await send(self._client, self.target, "POST", url, body)
        status = response.status_code
        if status in (401, 403, 404):
            self._body = None
            raise OutputError(
                f"YouTube refused the captions ({status}): check that the stream is live with "
                "HTTP captions on, and copy its caption ingestion URL again.",
                retry=False,
            )
        if status >= 300:
            raise OutputError(f"YouTube answered {status}; trying again.")
        self._body = None
        self.seq += 1

    async def aclose(self) -> None:
        await self._client.aclose()
