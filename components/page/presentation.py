"""The presentation view: a tab's live captions alone, large, on a second screen or a projector.

Each browser tab of the page gets an unguessable follower token
(:class:`~components.page.tab_tokens.TabTokens`). The link ``live/<token>`` (relative, so it works
under a path prefix such as a Space's) serves a page with nothing but the captions, readable
across a room; it long-polls ``live/<token>/captions`` for changes, so text arrives when the
tab's session changes, not on a timer. A wrong token is 404, like a page that does not exist.
The token follows the tab, not one recording: Record again and the projector shows the new
session.

The routes are added to the FastAPI app Gradio's ``launch()`` returns, which is documented.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

from components.page.tab_tokens import TabTokens

if TYPE_CHECKING:
    from components.page.manager import SessionManager

LONG_POLL_SECONDS = 15.0
"""How long a caption request waits for a change before it answers "unchanged"."""

TAIL_CHARS = 1200
"""Confirmed text sent to the view: far more than the few lines it shows."""


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


def add_routes(app: FastAPI, manager: SessionManager, tokens: TabTokens) -> None:
    """``GET live/{token}`` (the view) and ``GET live/{token}/captions?after=V`` (its data)."""

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

    app.add_api_route("/live/{token}", view, methods=["GET"], include_in_schema=False)
    app.add_api_route("/live/{token}/captions", captions, methods=["GET"], include_in_schema=False)


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
  const finalEl = document.querySelector("#captions .final");
  const partialEl = document.querySelector("#captions .partial");
  const url = location.pathname.replace(/\\/$/, "") + "/captions";
  let version = "";
  async function poll() {
    try {
      const r = await fetch(url + "?after=" + encodeURIComponent(version), {cache: "no-store"});
      if (r.status === 404) {
        finalEl.textContent = "This caption link is no longer valid.";
        return;
      }
      const s = await r.json();
      version = s.version;
      finalEl.textContent = s.text;
      partialEl.textContent = s.partial;
    } catch (e) {
      await new Promise((ok) => setTimeout(ok, 1000));
    }
    setTimeout(poll, 0);
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
  poll();
})();
</script>
</body>
</html>
"""
