"""Unguessable per-tab tokens: what lets a URL or a connection outside Gradio's own events
act for one browser tab (its follower link, its microphone connection) and for no other.

A token is ``secrets.token_urlsafe(18)`` (144 bits). Each use keeps its own table, so a
follower link, which its owner hands out, can never open that tab's microphone connection.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

MAX_TOKENS = 4096
"""Tabs remembered at once; the oldest token is forgotten first (what it opened then says 404)."""


class TabTokens:
    """One unguessable token per tab (owner), and back; bounded, thread-safe."""

    def __init__(self, limit: int = MAX_TOKENS) -> None:
        self._limit = limit
        self._by_owner: OrderedDict[str, str] = OrderedDict()
        self._by_token: dict[str, str] = {}
        self._lock = threading.Lock()

    def token_for(self, owner: str) -> str:
        with self._lock:
            token = self._by_owner.get(owner)
            if token is None:
                token = secrets.token_urlsafe(18)
                self._by_owner[owner] = token
                self._by_token[token] = owner
                while len(self._by_owner) > self._limit:
                    _, old = self._by_owner.popitem(last=False)
                    self._by_token.pop(old, None)
            else:
                self._by_owner.move_to_end(owner)
            return token

    def owner_of(self, token: str) -> str | None:
        with self._lock:
            return self._by_token.get(token)

    def forget(self, owner: str) -> None:
        with self._lock:
            token = self._by_owner.pop(owner, None)
            if token is not None:
                self._by_token.pop(token, None)
