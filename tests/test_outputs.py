"""Caption outputs: lines for pushed platforms, the URLs as credentials, and delivery to the
stand-ins of Zoom, YouTube Live, Teams and obs-websocket (``tests/support_platforms.py``, real
servers on loopback) through their faults."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from components.outputs.delivery import CaptionOutputs, Delivery
from components.outputs.lines import CaptionLines, Post, merge
from components.outputs.obs import ObsSink, authentication
from components.outputs.targets import (
    InvalidTarget,
    OutputKind,
    Target,
    check_allowed,
    parse_target,
)
from components.outputs.teams import TeamsSink
from components.outputs.youtube import YouTubeSink, timestamp
from components.outputs.zoom import ZoomSink, zoom_language
from tests.support_platforms import ObsStandIn, PlatformStandIn, urls
from tests.support_server import BackgroundLoop, free_port, serve_app

SPEECH = (
    "And so, my fellow Americans, ask not what your country can do for you; ask what you can "
    "do for your country. My fellow citizens of the world, ask not what America will do for "
    "you, but what together we can do for the freedom of man."
)


def deltas(text: str, size: int = 3) -> Iterator[str]:
    """``text`` as confirmed deltas of ``size`` words, the way an engine commits them."""
    words = text.split()
    for i in range(0, len(words), size):
        yield (" " if i else "") + " ".join(words[i : i + size])


# --------------------------------------------------------------------------- lines


def test_lines_hold_every_word_once_in_order_within_the_width() -> None:
    lines = CaptionLines(32, hold=0.6)
    posts: list[Post] = []
    now = 0.0
    for delta in deltas(SPEECH):
        now += 0.4
        posts += lines.add(delta, now) + lines.tick(now)
    posts += lines.flush()
    whole = merge(posts)
    assert " ".join(whole.lines).split() == SPEECH.split()
    assert all(len(line) <= 32 for line in whole.lines)
    assert sum(p.words for p in posts) == len(SPEECH.split())


def test_lines_break_at_phrase_ends_when_they_can() -> None:
    lines = CaptionLines(32, hold=60.0)
    posts = lines.add(SPEECH, 0.0) + lines.flush()
    shown = merge(posts).lines
    assert shown[0] == "And so, my fellow Americans,"  # not "..., ask not"
    assert "ask not what your country can do" in shown


def test_a_word_waits_at_most_the_hold_time() -> None:
    lines = CaptionLines(80, hold=0.6)
    assert lines.add("ask not", 10.0) == []
    assert lines.tick(10.5) == []
    (post,) = lines.tick(10.6)
    assert post.lines == ("ask not",) and post.confirmed_at == 10.0 and not post.continues
    (post,) = lines.add(" what your country.", 11.0)  # a sentence end goes out at once
    assert post.lines == ("what your country.",) and post.continues


def test_a_platform_of_one_line_per_post_gets_each_line_as_it_completes() -> None:
    lines = CaptionLines(40, hold=60.0, single_line=True)
    posts = lines.add(SPEECH, 0.0) + lines.flush()
    assert all(len(p.lines) == 1 and len(p.lines[0]) <= 40 for p in posts)
    assert " ".join(p.lines[0] for p in posts).split() == SPEECH.split()


def test_a_glued_delta_continues_its_word() -> None:
    lines = CaptionLines(40, hold=60.0)
    lines.add("Hester Pryn", 0.0)
    lines.add("ne smiled", 0.1)
    assert lines.flush()[0].lines == ("Hester Prynne smiled",)


def test_merged_posts_keep_their_lines() -> None:
    a = Post(("one two",), False, 1.0, 2)
    b = Post(("three",), True, 2.0, 1)
    c = Post(("four",), False, 3.0, 1)
    merged = merge([a, b, c])
    assert merged.lines == ("one two three", "four")
    assert merged.confirmed_at == 1.0 and merged.words == 4


# --------------------------------------------------------------------------- targets


def test_targets_parse_and_mask_their_secrets() -> None:
    zoom = parse_target("zoom=https://wmcc.zoom.us/closedcaption?id=SECRET&signature=S2")
    assert zoom.kind is OutputKind.ZOOM
    assert zoom.masked() == "https://wmcc.zoom.us/closedcaption?…"
    assert "SECRET" not in zoom.masked() and "SECRET" not in zoom.label
    obs = parse_target("obs=ws://:hunter2@127.0.0.1:4455")
    assert "hunter2" not in obs.masked() and obs.masked() == "ws://127.0.0.1:4455"


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("zoom", "KIND=URL"),
        ("skype=https://x", "Unknown caption output"),
        ("zoom=wmcc.zoom.us/closedcaption?id=1", "https://"),
        ("zoom=https://wmcc.zoom.us/closedcaption", "API token"),
        ("teams=https://api.captions.office.microsoft.com/cartcaption", "CART"),
        ("obs=http://127.0.0.1:4455", "obs-websocket"),
    ],
)
def test_a_malformed_target_says_how_to_fix_it(spec: str, says: str) -> None:
    with pytest.raises(InvalidTarget, match=re.escape(says)):
        parse_target(spec)


def test_a_public_deployment_posts_only_to_the_platforms_own_https_hosts() -> None:
    good = parse_target("youtube=https://upload.youtube.com/closedcaption?cid=K")
    assert check_allowed(good, public=True, any_host=False) is good
    for spec in (
        "youtube=http://upload.youtube.com/closedcaption?cid=K",  # not https
        "zoom=https://zoom.us.evil.example/closedcaption?id=1",  # not Zoom's host
        "teams=https://127.0.0.1/cartcaption?token=1",
        "obs=ws://127.0.0.1:4455",
    ):
        target = parse_target(spec)
        with pytest.raises(InvalidTarget):
            check_allowed(target, public=True, any_host=False)
        assert check_allowed(target, public=False, any_host=False) is target
        assert check_allowed(target, public=True, any_host=True) is target


# --------------------------------------------------------------------------- stand-ins


@pytest.fixture
def platforms() -> Iterator[tuple[PlatformStandIn, dict[str, str], BackgroundLoop]]:
    stand_in = PlatformStandIn()
    with BackgroundLoop() as bg, serve_app(bg, stand_in.app()) as base:
        yield stand_in, urls(base), bg


def fast_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(0.5))


async def deliver(delivery: Delivery, text: str = SPEECH, gap: float = 0.05) -> None:
    task = asyncio.create_task(delivery.run())
    for delta in deltas(text):
        delivery.feed(delta)
        await asyncio.sleep(gap)
    delivery.end()
    await asyncio.wait_for(task, 60)


def test_zoom_numbers_posts_continues_the_count_and_retries_with_the_same_seq(
    platforms: tuple[PlatformStandIn, dict[str, str], BackgroundLoop],
) -> None:
    stand_in, url, bg = platforms
    stand_in.zoom_started = False
    stand_in.fail_next("zoom", 503, "slow", 500)
    target = parse_target(f"zoom={url['zoom']}")

    async def session() -> Delivery:
        sink = ZoomSink(target, client=fast_client())
        delivery = Delivery(sink)
        task = asyncio.create_task(deliver(delivery))
        await asyncio.sleep(1.0)
        assert delivery.status().state == "retrying"
        assert "has not started" in (delivery.status().last_error or "")
        stand_in.zoom_started = True
        await task
        await sink.aclose()
        return delivery

    delivery = bg.run(session())
    assert stand_in.words("zoom") == SPEECH.split()  # every word once, in order
    seqs = [t.seq for t in stand_in.zoom]
    assert seqs == list(range(1, len(seqs) + 1))  # gap-free from 1
    status = delivery.status()
    assert status.state == "done" and status.words == len(SPEECH.split())
    assert status.dropped_words == 0

    async def again() -> None:  # a second session in the same meeting continues the count
        sink = ZoomSink(target, client=fast_client())
        await deliver(Delivery(sink), "Thank you.")
        await sink.aclose()

    bg.run(again())
    assert stand_in.zoom[-1].seq == seqs[-1] + 1 and stand_in.zoom[-1].text == "Thank you."


def test_zoom_takes_the_session_language_as_a_region_tag() -> None:
    assert zoom_language(None) == "en-US"
    assert zoom_language("de") == "de-DE"
    assert zoom_language("sv") == "sv"  # no region known: the language alone
    target = parse_target("zoom=https://wmcc.zoom.us/closedcaption?id=1&ns=a")
    assert ZoomSink(target, language="fr").lang == "fr-FR"


def test_zoom_refusing_the_token_stops_that_output_with_a_sentence(
    platforms: tuple[PlatformStandIn, dict[str, str], BackgroundLoop],
) -> None:
    _, url, bg = platforms
    target = parse_target(f"zoom={url['zoom'].replace('zoom-token-123', 'wrong')}")

    async def session() -> Delivery:
        delivery = Delivery(ZoomSink(target, client=fast_client()))
        await deliver(delivery)
        return delivery

    status = bg.run(session()).status()
    assert status.state == "failed"
    assert status.last_error and "API token URL is wrong or has expired" in status.last_error
    assert status.dropped_words == len(SPEECH.split())
    assert "wrong" not in status.masked  # the token never shows


def test_youtube_posts_timestamped_text_and_counts_seq_once_per_post(
    platforms: tuple[PlatformStandIn, dict[str, str], BackgroundLoop],
) -> None:
    stand_in, url, bg = platforms
    stand_in.fail_next("youtube", 502, "slow", 503)

    async def session() -> None:
        sink = YouTubeSink(parse_target(f"youtube={url['youtube']}"), client=fast_client())
        await deliver(Delivery(sink))
        await sink.heartbeat()
        await sink.aclose()

    bg.run(session())
    assert stand_in.words("youtube") == SPEECH.split()
    seqs = stand_in.youtube_seqs  # the heartbeat takes a number too
    assert seqs == list(range(1, len(seqs) + 1))
    assert stand_in.heartbeats == 1 and len(seqs) == len(stand_in.youtube) + 1
    assert any("<br>" in t.text for t in stand_in.youtube) or len(stand_in.youtube) > 1


def test_youtube_timestamps_have_milliseconds() -> None:
    from datetime import UTC, datetime

    moment = datetime(2026, 12, 6, 9, 5, 7, 123456, tzinfo=UTC)
    assert timestamp(moment) == "2026-12-06T09:05:07.123"


def test_teams_takes_one_line_per_post_and_a_reset_link_says_so(
    platforms: tuple[PlatformStandIn, dict[str, str], BackgroundLoop],
) -> None:
    stand_in, url, bg = platforms
    stand_in.teams_started = False
    target = parse_target(f"teams={url['teams']}")

    async def session() -> Delivery:
        delivery = Delivery(TeamsSink(target, client=fast_client()))
        task = asyncio.create_task(deliver(delivery))
        await asyncio.sleep(0.6)
        stand_in.teams_started = True
        await task
        return delivery

    assert bg.run(session()).status().state == "done"
    assert stand_in.words("teams") == SPEECH.split()
    assert all("\n" not in t.text and len(t.text) <= 120 for t in stand_in.teams)

    stand_in.teams_link_valid = False

    async def later() -> Delivery:
        delivery = Delivery(TeamsSink(target, client=fast_client()))
        await deliver(delivery, "Any questions?")
        return delivery

    status = bg.run(later()).status()
    assert status.state == "failed"
    assert status.last_error and "generate a new CART caption link" in status.last_error


def test_a_post_that_may_have_arrived_is_not_sent_again_where_it_would_show_twice(
    platforms: tuple[PlatformStandIn, dict[str, str], BackgroundLoop],
) -> None:
    # Teams has no sequence number: a post it took but answered too late for would show
    # twice if sent again. It is counted as unconfirmed instead.
    stand_in, url, bg = platforms
    stand_in.slow_seconds = 1.0  # the client waits 0.5 s
    stand_in.fail_next("teams", "slow")

    async def session() -> Delivery:
        delivery = Delivery(TeamsSink(parse_target(f"teams={url['teams']}"), client=fast_client()))
        await deliver(delivery)
        return delivery

    status = bg.run(session()).status()
    assert stand_in.words("teams") == SPEECH.split()  # once: the late one was not resent
    assert status.unconfirmed_words > 0 and status.dropped_words == 0
    assert status.words + status.unconfirmed_words == len(SPEECH.split())


def test_obs_authenticates_and_sends_stream_captions_of_32_columns() -> None:
    assert authentication("pw", "salt", "challenge") == authentication("pw", "salt", "challenge")

    async def session() -> tuple[ObsStandIn, Delivery, Delivery]:
        obs = ObsStandIn(password="s3cret")
        await obs.start()
        obs.streaming = False
        delivery = Delivery(ObsSink(parse_target(f"obs={obs.url()}")))
        task = asyncio.create_task(deliver(delivery))
        await asyncio.sleep(1.2)
        waiting = delivery.status()
        obs.streaming = True
        await task
        await delivery.sink.aclose()
        assert waiting.state == "retrying" and "not streaming" in (waiting.last_error or "")
        wrong = Delivery(ObsSink(parse_target(f"obs={obs.url('nope')}")))
        await deliver(wrong, "Hello.")
        await obs.stop()
        obs_words = " ".join(obs.captions).split()
        assert obs_words == SPEECH.split()
        return obs, delivery, wrong

    obs, delivery, wrong = asyncio.run(session())
    assert all(len(line) <= 32 for c in obs.captions for line in c.split("\n"))
    assert delivery.status().state == "done"
    status = wrong.status()
    assert status.state == "failed" and "refused the password" in (status.last_error or "")
    assert obs.auth_failures == 1


def test_a_restarted_platform_gets_every_word_once(
    platforms: tuple[PlatformStandIn, dict[str, str], BackgroundLoop],
) -> None:
    stand_in = PlatformStandIn()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with BackgroundLoop() as server_loop:
        target = parse_target(f"youtube={urls(base)['youtube']}")
        delivered: list[Any] = []

        async def session(phase: asyncio.Event, restarted: asyncio.Event) -> Delivery:
            delivery = Delivery(YouTubeSink(target, client=fast_client()))
            task = asyncio.create_task(delivery.run())
            words = list(deltas(SPEECH))
            for i, delta in enumerate(words):
                delivery.feed(delta)
                await asyncio.sleep(0.05)
                if i == len(words) // 2:
                    phase.set()
                    while not restarted.is_set():
                        delivery.feed("")  # the session goes on while the platform is away
                        await asyncio.sleep(0.05)
            delivery.end()
            await asyncio.wait_for(task, 60)
            return delivery

        runner = BackgroundLoop()
        try:
            with serve_app(server_loop, stand_in.app(), port=port):
                phase, restarted = asyncio.Event(), asyncio.Event()
                future = asyncio.run_coroutine_threadsafe(session(phase, restarted), runner.loop)
                runner.run(asyncio.wait_for(phase.wait(), 30))
            # The platform is down for a moment, then back on the same address.
            with serve_app(server_loop, stand_in.app(), port=port):
                runner.loop.call_soon_threadsafe(restarted.set)
                delivered.append(future.result(60))
        finally:
            runner.close()
    assert stand_in.words("youtube") == SPEECH.split()
    assert delivered[0].status().dropped_words == 0


def test_a_failing_output_leaves_the_others_untouched(
    platforms: tuple[PlatformStandIn, dict[str, str], BackgroundLoop],
) -> None:
    stand_in, url, bg = platforms
    stand_in.fail_next("zoom", *([503] * 1000))
    targets = [
        parse_target(f"zoom={url['zoom']}"),
        parse_target(f"youtube={url['youtube']}"),
        parse_target(f"teams={url['teams']}"),
    ]

    async def session() -> tuple[Any, float]:
        outputs = CaptionOutputs(targets, session="s1")
        outputs.start()
        slowest = 0.0
        for delta in deltas(SPEECH):
            began = asyncio.get_running_loop().time()
            outputs.feed(delta)
            slowest = max(slowest, asyncio.get_running_loop().time() - began)
            await asyncio.sleep(0.05)
        return await outputs.finish(grace=3.0), slowest

    statuses, slowest = bg.run(session())
    by_kind = {s.kind: s for s in statuses}
    assert by_kind["zoom"].state in ("retrying", "failed") and by_kind["zoom"].words == 0
    assert by_kind["youtube"].state == "done" and by_kind["teams"].state == "done"
    assert stand_in.words("youtube") == SPEECH.split()
    assert stand_in.words("teams") == SPEECH.split()
    assert slowest < 0.05  # feeding never waits for a platform


def test_waiting_posts_are_bounded_and_counted_when_dropped() -> None:
    class Never:
        target = Target(OutputKind.TEAMS, "https://teams.microsoft.com/cartcaption?token=1")
        width, min_interval, max_chars, heartbeat_every = 40, 0.0, 40, None
        single_line, idempotent = False, True

        async def post(self, post: Post) -> None:
            raise AssertionError("not started in this test")

        async def heartbeat(self) -> None: ...

        async def aclose(self) -> None: ...

    delivery = Delivery(Never(), max_waiting=4)  # type: ignore[arg-type]
    for i in range(10):
        delivery.feed(f" sentence {i}.")
    status = delivery.status()
    assert status.dropped_words == 12  # the 6 oldest posts of 2 words each
    assert delivery.waiting_posts == 4
