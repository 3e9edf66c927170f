"""The presentation view: a tab's live captions alone, large, on a second screen or a projector.

Each browser tab of the page gets an unguessable follower token
(:class:`~components.page.tab_tokens.TabTokens`). The link ``live/<token>`` (relative, so it works
under a path prefix such as a Space's) serves a page with nothing but the captions, readable
across a room; it follows the pushed events of ``live/<token>/events`` (one change, serialised
once, to every follower; :mod:`components.outputs.fanout`), falling back to the long poll of
``live/<token>/captions`` where a browser or proxy cannot keep an event stream, so text
arrives when the tab's session changes, not on a timer. A wrong token is 404, like a page
that does not exist.
The token follows the tab, not one recording: Record again and the projector shows the new
session.

The routes are added to the FastAPI app Gradio's ``launch()`` returns, which is documented.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from components.outputs.fanout import TAIL_CHARS, Captions, FanOut, Follower
from components.page.tab_tokens import TabTokens

if TYPE_CHECKING:
    from components.page.manager import SessionManager

LONG_POLL_SECONDS = 15.0
"""How long a caption request waits for a change before it answers "unchanged"."""

HEARTBEAT_SECONDS = 15.0
"""A comment line on an idle push stream, so that proxies and browsers keep it open."""


def captions_state(manager: SessionManager, owner: str) -> dict[str, Any]:
    session = manager.current(owner)
    if session is None:
        return {"version": "none", "text": "", "partial": "", "state": "idle"}
    view = session.view()
    return {
        "version": f"{view.session_id}:{view.version}",
        "text": view.text[-TAIL_CHARS:],
        "partial": view.partial,
        "state": str(view.state.value),
    }


def current_captions(manager: SessionManager, owner: str) -> Captions:
    session = manager.current(owner)
    if session is None:
        return Captions("none", "", "", "idle")
    view = session.view()
    return Captions(
        f"{view.session_id}:{view.version}",
        view.text,
        view.partial,
        str(view.state.value),
        session=view.session_id,
    )


class FollowerFeeds:
    """One :class:`FanOut` per followed tab, fed by one task for as long as anyone follows.

    The task reads the tab's session once per change, however many follow it.
    """

    def __init__(self, manager: SessionManager) -> None:
        self._manager = manager
        self._feeds: dict[str, FanOut] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def followers(self) -> int:
        return sum(len(feed) for feed in self._feeds.values())

    def followers_of(self, owner: str) -> int:
        feed = self._feeds.get(owner)
        return len(feed) if feed else 0

    def follow(self, owner: str) -> Follower:
        feed = self._feeds.get(owner)
        if feed is None:
            feed = self._feeds[owner] = FanOut()
            feed.publish(current_captions(self._manager, owner))
        follower = feed.subscribe()
        task = self._tasks.get(owner)
        if task is None or task.done():
            self._tasks[owner] = asyncio.create_task(self._feed(owner, feed))
        return follower

    def leave(self, owner: str, follower: Follower) -> None:
        feed = self._feeds.get(owner)
        if feed is not None:
            feed.unsubscribe(follower)

    async def _feed(self, owner: str, feed: FanOut) -> None:
        sent = current_captions(self._manager, owner)
        try:
            while len(feed):
                session = self._manager.current(owner)
                if session is None:
                    await asyncio.sleep(1.0)
                elif session.id == sent.session:
                    await session.wait_changed(int(sent.version.rsplit(":", 1)[-1]), 5.0)
                sent = current_captions(self._manager, owner)
                feed.publish(sent)
        finally:
            if not len(feed) and self._feeds.get(owner) is feed:
                del self._feeds[owner]
                self._tasks.pop(owner, None)


def add_routes(
    app: FastAPI, manager: SessionManager, tokens: TabTokens, feeds: FollowerFeeds | None = None
) -> FollowerFeeds:
    """``GET live/{token}`` (the view), ``GET live/{token}/captions?after=V`` (a long poll of
    its data) and ``GET live/{token}/events`` (the same pushed, as Server-Sent Events)."""
    feeds = feeds or FollowerFeeds(manager)

    async def view(token: str) -> Response:
        if tokens.owner_of(token) is None:
            return Response("Not Found", status_code=404, media_type="text/plain")
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    async def captions(token: str, after: str = "") -> Response:
        owner = tokens.owner_of(token)
        if owner is None:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        state = captions_state(manager, owner)
        deadline = asyncio.get_running_loop().time() + LONG_POLL_SECONDS
        while state["version"] == after:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            session = manager.current(owner)
            if session is None:
                await asyncio.sleep(min(left, 1.0))
            else:
                seen = int(after.rsplit(":", 1)[-1]) if ":" in after else -1
                await session.wait_changed(seen, min(left, 5.0))
            state = captions_state(manager, owner)
        return JSONResponse(state, headers={"Cache-Control": "no-store"})

    async def events(token: str) -> Response:
        owner = tokens.owner_of(token)
        if owner is None:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        follower = feeds.follow(owner)

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while tokens.owner_of(token) == owner and not follower.closed:
                    event = await follower.next(HEARTBEAT_SECONDS)
                    yield ": keep-alive\n\n" if event is None else f"data: {event}\n\n"
            finally:
                feeds.leave(owner, follower)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    app.add_api_route("/live/{token}", view, methods=["GET"], include_in_schema=False)
    app.add_api_route("/live/{token}/captions", captions, methods=["GET"], include_in_schema=False)
    app.add_api_route("/live/{token}/events", events, methods=["GET"], include_in_schema=False)
    return feeds


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Live Captions</title>
<style>
  :root { --bg: #000; --fg: #fff; --tail: #b8b8b8; }
  @media (prefers-color-scheme: light) { :root { --bg: #fff; --fg: #000; --tail: #555; } }
  :root[data-theme="dark"] { --bg: #000; --fg: #fff; --tail: #b8b8b8; }
  :root[data-theme="light"] { --bg: #fff; --fg: #000; --tail: #555; }
  html, body { margin: 0; height: 100%; background: var(--bg); color: var(--fg); }
  body { display: flex; flex-direction: column; justify-content: flex-end; overflow: hidden;
         font: 600 clamp(48px, 4.6vw, 120px)/1.25 system-ui, sans-serif; }
  #captions { padding: 0 4vw 4vh; max-height: calc(4 * 1.25em); overflow: hidden;
              display: flex; flex-direction: column-reverse; }
  .partial { color: var(--tail); font-style: italic; }
  .hint { position: fixed; top: 8px; right: 12px; font-size: 14px; opacity: .55; }
  /* ?overlay=1: a Browser Source in OBS, drawn over the video: no background, outlined text,
     and lines, size, font, colours and position from the query string. */
  :root.overlay, :root.overlay body { background: transparent; }
  :root.overlay body { font: var(--weight, 600) var(--size, 42px)/1.25 var(--font, system-ui),
                       sans-serif; color: var(--color, #fff);
                       justify-content: var(--position, flex-end); }
  :root.overlay #captions { max-height: calc(var(--lines, 2) * 1.25em); padding: 2vh 3vw;
                            text-shadow: 0 0 4px #000, 0 0 2px #000; }
  :root.overlay #captions > div { background: var(--box, transparent); padding: 0 .25em; }
  :root.overlay .partial { color: var(--color, #fff); opacity: .7; }
  :root.overlay .hint { display: none; }
</style>
</head>
<body>
<div class="hint" id="hint">F: full screen · T: light/dark</div>
<div id="captions" role="log" aria-live="polite" aria-label="Live captions">
  <div><span class="final"></span> <span class="partial"></span></div>
</div>
<script>
(() => {
  const params = new URLSearchParams(location.search);
  const root = document.documentElement;
  if (params.get("theme")) root.dataset.theme = params.get("theme");
  if (params.get("overlay")) {
    root.classList.add("overlay");
    const set = (name, value) => value && root.style.setProperty(name, value);
    const lines = parseInt(params.get("lines") || "", 10);
    const size = parseInt(params.get("size") || "", 10);
    set("--lines", lines >= 1 && lines <= 10 ? String(lines) : "");
    set("--size", size >= 8 && size <= 400 ? size + "px" : "");
    set("--font", (params.get("font") || "").replace(/[^\\w ,'"-]/g, ""));
    set("--color", (params.get("color") || "").replace(/[^\\w#(),.% ]/g, ""));
    set("--box", (params.get("background") || "").replace(/[^\\w#(),.% ]/g, ""));
    set("--position", params.get("position") === "top" ? "flex-start" : "");
  }
  const finalEl = document.querySelector("#captions .final");
  const partialEl = document.querySelector("#captions .partial");
  const base = location.pathname.replace(/\\/$/, "");
  let version = "";
  let text = "";
  function show(s) {
    version = s.version;
    text = "text" in s ? s.text : text + s.append;
    if (text.length > 4000) text = text.slice(-2000);  // hours of appends: keep what shows
    finalEl.textContent = text;
    partialEl.textContent = s.partial;
  }
  async function poll() {
    try {
      const r = await fetch(base + "/captions?after=" + encodeURIComponent(version),
                            {cache: "no-store"});
      if (r.status === 404) {
        finalEl.textContent = "This caption link is no longer valid.";
        return;
      }
      show(await r.json());
    } catch (e) {
      await new Promise((ok) => setTimeout(ok, 1000));
    }
    setTimeout(poll, 0);
  }
  function push() {
    // Pushed events (one stream, no request per change); the long poll where they fail.
    if (!window.EventSource) { root.dataset.transport = "poll"; return poll(); }
    root.dataset.transport = "events";
    const events = new EventSource(base + "/events");
    events.onmessage = (m) => show(JSON.parse(m.data));
    events.onerror = () => {
      if (events.readyState !== EventSource.CLOSED) return;  // it reconnects by itself
      events.close();
      root.dataset.transport = "poll";
      poll();
    };
  }
  document.addEventListener("keydown", (e) => {
    if (e.key === "f" || e.key === "F") {
      if (document.fullscreenElement) document.exitFullscreen();
      else document.documentElement.requestFullscreen().catch(() => {});
    } else if (e.key === "t" || e.key === "T") {
      const dark = getComputedStyle(root).getPropertyValue("--bg").trim() === "#000";
      root.dataset.theme = dark ? "light" : "dark";
    }
  });
  push();
})();
</script>
</body>
</html>
"""
