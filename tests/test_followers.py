"""A follower link for a whole room: each change is serialised once and pushed to everyone.

The fan-out alone first (made-up captions, no sockets): what an event says, that every
follower gets the very same string, that a follower who stops reading is skipped to the
latest snapshot instead of holding anything up or growing. Then the push stream over real
sockets: a real session on the bundled engine, and a room of followers reading
``live/<token>/events`` at once, each ending with the speaker's final text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from components.core.audio import load_file
from components.core.evaluation import Clip
from components.outputs.fanout import TAIL_CHARS, Captions, FanOut, change_event
from components.page.manager import SessionManager
from components.page.presentation import FollowerFeeds, add_routes
from components.page.settings import BackendChoice, BackendKind, Settings
from components.page.tab_tokens import TabTokens
from tests.support_server import BackgroundLoop, serve_app

CLIP = "librispeech-1272-128104-0000"
ROOM = 200


def captions(text: str, version: int, *, session: str = "s1", state: str = "live") -> Captions:
    return Captions(f"{session}:{version}", text, "", state, session=session)


# --------------------------------------------------------------------------- the fan-out


def test_a_grown_text_is_an_append_and_anything_else_a_snapshot() -> None:
    first = captions("Hello there", 1)
    grown = json.loads(change_event(first, captions("Hello there, general", 2)))
    assert grown["append"] == ", general" and "text" not in grown
    rewritten = json.loads(change_event(first, captions("Hullo there", 3)))
    assert rewritten["text"] == "Hullo there" and "append" not in rewritten
    other = json.loads(change_event(first, captions("Hello there, again", 1, session="s2")))
    assert "text" in other  # a new recording starts from a snapshot
    long = "word " * 10_000
    snapshot = json.loads(change_event(None, captions(long, 4)))
    assert snapshot["text"] == long[-TAIL_CHARS:]  # a snapshot carries the tail, not it all


def test_every_follower_gets_the_same_event_and_a_newcomer_a_snapshot() -> None:
    fan = FanOut()
    fan.publish(captions("one", 1))
    room = [fan.subscribe() for _ in range(50)]
    fan.publish(captions("one two", 2))
    fan.publish(captions("one two", 2))  # the same version again: nothing new
    events = [f.queued() for f in room]
    assert all(len(e) == 2 for e in events)
    assert len({id(e[1]) for e in events}) == 1  # serialised once, shared by all
    late = fan.subscribe()
    assert json.loads(late.queued()[0])["text"] == "one two"


async def test_a_follower_that_stops_reading_is_skipped_to_the_latest() -> None:
    fan = FanOut(limit=8)
    fan.publish(captions("", 0))
    stalled, reader = fan.subscribe(), fan.subscribe()
    assert json.loads(await reader.next(1.0) or "{}")["text"] == ""
    text = ""
    for version in range(1, 101):
        text += f" w{version}"
        fan.publish(captions(text, version))
        event = await reader.next(1.0)
        assert event is not None and json.loads(event)["append"] == f" w{version}"
    assert stalled.waiting <= 8 and stalled.skipped >= 10  # bounded, however long it stalls
    latest = [json.loads(e) for e in stalled.queued()]
    assert "text" in latest[0] and latest[-1]["version"] == "s1:100"
    rebuilt = latest[0]["text"] + "".join(e.get("append", "") for e in latest[1:])
    assert rebuilt == text[-TAIL_CHARS:]


# --------------------------------------------------------------------------- over sockets


@pytest.fixture(scope="module")
def room() -> Iterator[tuple[SessionManager, TabTokens, FollowerFeeds, str]]:
    manager = SessionManager(Settings(local_engine="whisper", max_sessions=4))
    manager.load_engine().result(timeout=120)
    tokens = TabTokens()
    app = FastAPI()
    bg = BackgroundLoop()
    feeds = bg.run(_routes(app, manager, tokens))
    try:
        with serve_app(bg, app) as url:
            yield manager, tokens, feeds, url
    finally:
        bg.close()
        manager.shutdown()


async def _routes(app: FastAPI, manager: SessionManager, tokens: TabTokens) -> FollowerFeeds:
    return add_routes(app, manager, tokens)


async def follow(url: str, token: str, until_state: str = "done") -> tuple[str, int]:
    """Read the push stream like the follower page does; the text and the events it saw."""
    text, seen = "", 0
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(120, connect=30)) as http,
        http.stream("GET", f"{url}/live/{token}/events") as reply,
    ):
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            event: dict[str, Any] = json.loads(line[6:])
            seen += 1
            text = event["text"] if "text" in event else text + event["append"]
            if event["state"] == until_state:
                return text, seen
    raise AssertionError("the stream ended before the session did")


async def test_a_room_of_followers_all_end_with_the_speakers_text(
    room: tuple[SessionManager, TabTokens, FollowerFeeds, str], clips: dict[str, Clip]
) -> None:
    manager, tokens, feeds, url = room
    owner = "speaker-tab"
    token = tokens.token_for(owner)
    followers = [asyncio.create_task(follow(url, token)) for _ in range(ROOM)]
    # A follower that connects and never reads holds nobody up.
    stalled = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
    stalled[1].write(f"GET /live/{token}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await stalled[1].drain()
    for _ in range(100):
        if feeds.followers_of(owner) >= ROOM + 1:
            break
        await asyncio.sleep(0.1)
    assert feeds.followers_of(owner) == ROOM + 1

    session = manager.start(owner, BackendChoice(BackendKind.LOCAL))
    samples = load_file(str(clips[CLIP].path))
    for start in range(0, len(samples), 1_600):
        session.feed(16_000, samples[start : start + 1_600])
        await asyncio.sleep(0.01)
    session.stop()
    final = (await session.wait_finished(120)).text
    assert final
    results = await asyncio.wait_for(asyncio.gather(*followers), 120)
    assert all(text.strip() == final.strip() for text, _ in results), results[0]
    assert all(seen >= 2 for _, seen in results)
    stalled[1].close()
    # A wrong token is 404 on the push stream too (a token may itself end in "xx").
    wrong = token[:-2] + ("xx" if not token.endswith("xx") else "yy")
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{url}/live/{wrong}/events")).status_code == 404
