"""What every caption output is: a platform's way of taking one post, and how that fails.

A :class:`Sink` speaks one platform's protocol (:mod:`~components.outputs.zoom`,
:mod:`~components.outputs.youtube`, :mod:`~components.outputs.teams`,
:mod:`~components.outputs.obs`); :mod:`~components.outputs.delivery` decides when to post,
what to coalesce and how long to wait after a failure. A failure is an :class:`OutputError`
whose message is a sentence for the person running the event, and which says whether trying
again can help (a server error, a meeting not started yet) or not (a link that expired).
"""

from __future__ import annotations

import logging
from typing import Protocol

import httpx

from components.outputs.lines import Post
from components.outputs.targets import Target

# httpx logs every request's URL at INFO, and a caption URL is a credential: only its
# warnings pass (the outputs log their own, masked, lines).
logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))

POST_TIMEOUT = 5.0
"""Seconds a platform has to answer one post before it counts as failed (and is retried)."""


class OutputError(Exception):
    """A post that did not go through; ``message`` says why in a sentence."""

    def __init__(
        self,
        message: str,
        *,
        retry: bool = True,
        wait: float | None = None,
        uncertain: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        """Whether posting again can succeed (False: the person must fix something)."""
        self.wait = wait
        """Seconds to wait before the next try, when the platform says (None: back off)."""
        self.uncertain = uncertain
        """The platform may have taken the post (it went out; no answer came back)."""


class Sink(Protocol):
    """One platform's way of taking captions."""

    target: Target
    width: int
    """Characters per caption line the platform shows."""
    min_interval: float
    """Shortest time between two posts the platform is comfortable with (s)."""
    max_chars: int
    """Most text one post may carry (what waits longer is coalesced up to this)."""
    heartbeat_every: float | None
    """Post an empty caption after this long without one (None: never)."""
    single_line: bool
    """Whether each post is shown as one caption line (no post may hold two)."""
    idempotent: bool
    """Whether the platform recognises a post sent again (by its ``seq``) and shows it once.
    Where it does not, a post that may have arrived is never sent again: it would show twice."""

    async def post(self, post: Post) -> None:
        """Send one post, exactly once; a retry after an error is the same post."""
        ...

    async def heartbeat(self) -> None: ...

    async def aclose(self) -> None: ...


def http_client() -> httpx.AsyncClient:
    """The client HTTP outputs post with: bounded time, no redirects (a redirect of a caption
    URL is not followed with its credentials)."""
    return httpx.AsyncClient(timeout=httpx.Timeout(POST_TIMEOUT), follow_redirects=False)


async def send(
    client: httpx.AsyncClient, target: Target, method: str, url: str, body: bytes | None
) -> httpx.Response:
    """One request; a network failure or a server error is an :class:`OutputError` to retry."""
    try:
        response = await client.request(
            method,
            url,
            content=body,
            headers={"Content-Type": "text/plain; charset=utf-8"} if body is not None else None,
        )
    except httpx.ConnectTimeout:
        raise OutputError(
            f"Cannot reach {target.platform} at {target.host} (no connection within "
            f"{POST_TIMEOUT:g} s); trying again."
        ) from None
    except httpx.TimeoutException:
        raise OutputError(
            f"{target.platform} did not answer within {POST_TIMEOUT:g} s.", uncertain=True
        ) from None
    except httpx.HTTPError as exc:
        raise OutputError(
            f"Cannot reach {target.platform} at {target.host} ({type(exc).__name__}); trying again."
        ) from None
    if response.status_code >= 500 or response.status_code == 429:
        wait = _retry_after(response)
        raise OutputError(
            f"{target.platform} answered {response.status_code} (a problem on its side); "
            "trying again.",
            wait=wait,
        )
    return response


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return min(60.0, max(0.0, float(value)))
    except ValueError:
        return None


def with_query(url: str, **params: str | int) -> str:
    """``url`` with ``params`` added to its query (the platform's own parameters kept)."""
    from urllib.parse import urlencode

    extra = urlencode({k: str(v) for k, v in params.items()})
    return f"{url}{'&' if '?' in url else '?'}{extra}"
