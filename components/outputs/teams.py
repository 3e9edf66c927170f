"""Microsoft Teams' CART captions: the meeting's caption link takes one line per post.

Facts (Microsoft's "use CART captions in a Teams meeting"; see docs/outputs.md): POST
``text/plain`` UTF-8 to the link; each post is one caption line, best 80 to 120 characters;
401 means the link is no longer valid (the organiser must generate a new one); 404 that the
meeting or its captions have not started.
"""

from __future__ import annotations

import httpx

from components.outputs.base import OutputError, http_client, send
from components.outputs.lines import Post
from components.outputs.targets import Target

NOT_STARTED_WAIT = 5.0


class TeamsSink:
    width = 110
    min_interval = 0.5
    max_chars = 120
    heartbeat_every = None
    single_line = True
    idempotent = False

    def __init__(self, target: Target, *, client: httpx.AsyncClient | None = None) -> None:
        self.target = target
        self._client = client or http_client()

    async def post(self, post: Post) -> None:
        body = " ".join(post.lines).encode()
        response = await send(self._client, self.target, "POST", self.target.url, body)
        status = response.status_code
        if status == 401:
            raise OutputError(
                "Teams no longer accepts this caption link (401): generate a new CART caption "
                "link in the meeting and paste it here.",
                retry=False,
            )
        if status == 404:
            raise OutputError(
                "The Teams meeting or its CART captions have not started yet (404); captions "
                "go out as soon as they do.",
                wait=NOT_STARTED_WAIT,
            )
        if status >= 300:
            raise OutputError(f"Teams answered {status}; trying again.")

    async def heartbeat(self) -> None:
        return None

    async def aclose(self) -> None:
        await self._client.aclose()
