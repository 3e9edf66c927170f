"""A room following one speaker: how late N followers of a follower link see each change.

    .venv/bin/python bench/followers.py                  # 500 followers, one clip at real time
    .venv/bin/python bench/followers.py --followers 100 --clips 3

The app's follower routes (``components.page.presentation``) run in this process on a real
session of the bundled engine, fed an evaluation recording at real-time pace; the followers
run in a child process (so that their reading does not share this process's interpreter), each
one a real HTTP connection reading ``live/<token>/events`` as the follower page does. This
process notes when each change of the session happened; the child, when each follower received
it (CLOCK_MONOTONIC is one clock for both). Printed as JSON: follower lag beyond the change
(p50/p95/max over every follower and change), whether every follower ended with the session's
final text, the server process's CPU share and memory (and its growth per 100 connected
followers), and the speaker's own first-caption time and WER (compare ``--followers 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import lag_summary, machine, rss_mb


async def _follow(url: str, n: int, out: str) -> None:
    """The child: ``n`` followers; writes {follower: [[version, arrival], ...], texts: [...]}."""
    import httpx

    arrivals: list[list[tuple[str, float]]] = [[] for _ in range(n)]
    texts = [""] * n
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)

    async def one(i: int, http: httpx.AsyncClient) -> None:
        async with http.stream("GET", url) as reply:
            async for line in reply.aiter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                arrivals[i].append((event["version"], time.monotonic()))
                texts[i] = event["text"] if "text" in event else texts[i] + event["append"]
                if event["state"] in ("done", "failed"):
                    return

    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=60), limits=limits) as http:
        print("ready", flush=True)
        await asyncio.gather(*(one(i, http) for i in range(n)))
    await asyncio.to_thread(
        Path(out).write_text, json.dumps({"arrivals": arrivals, "texts": texts})
    )


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    import resource

    import uvicorn
    from fastapi import FastAPI

    from bench.loopback import free_port
    from components.core.audio import load_file
    from components.core.evaluation import load_clips, wer
    from components.page.manager import SessionManager
    from components.page.presentation import add_routes
    from components.page.settings import BackendChoice, BackendKind, Settings
    from components.page.tab_tokens import TabTokens

    clips = load_clips()[: args.clips]
    audio = [load_file(str(c.path)) for c in clips]
    manager = SessionManager(Settings(local_engine="whisper"))
    await asyncio.wrap_future(manager.load_engine())
    tokens = TabTokens()
    app = FastAPI()
    feeds = add_routes(app, manager, tokens)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has no event for it
        await asyncio.sleep(0.05)
    owner = "speaker"
    url = f"http://127.0.0.1:{port}/live/{tokens.token_for(owner)}/events"
    out = Path(args.out)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child",
        url,
        "--followers",
        str(args.followers),
        "--out",
        str(out),
        stdout=asyncio.subprocess.PIPE,
    )
    before = rss_mb()["rss_mb"]
    try:
        assert child.stdout is not None
        await child.stdout.readline()
        while feeds.followers_of(owner) < args.followers:  # noqa: ASYNC110 - a count
            await asyncio.sleep(0.1)
        connected = rss_mb()["rss_mb"]
        changes: dict[str, float] = {}
        session = manager.start(owner, BackendChoice(BackendKind.LOCAL))
        cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()

        async def watch() -> None:
            seen = -1
            while True:
                seen = await session.wait_changed(seen, 1.0)
                changes.setdefault(f"{session.id}:{seen}", time.monotonic())

        watcher = asyncio.create_task(watch())
        started = time.monotonic()
        sent = 0
        for samples in audio:
            for i in range(0, len(samples), 1_600):
                sent += len(samples[i : i + 1_600])
                await asyncio.sleep(max(0.0, started + sent / 16_000 - time.monotonic()))
                session.feed(16_000, samples[i : i + 1_600])
        session.stop()
        finished = await session.wait_finished(120)
        final = finished.text
        await asyncio.wait_for(child.wait(), 300)
        wall = time.monotonic() - wall0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        watcher.cancel()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        server.should_exit = True
        await serving
        manager.shutdown()
    result = json.loads(await asyncio.to_thread(out.read_text))
    lags = [
        arrival - changes[version]
        for follower in result["arrivals"]
        for version, arrival in follower
        if version in changes
    ]
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {
        "bench": "followers",
        "followers": args.followers,
        "audio_s": round(sent / 16_000, 1),
        "changes": len(changes),
        "events_received": sum(len(f) for f in result["arrivals"]),
        "follower_lag": lag_summary(lags),
        "all_followers_have_the_final_text": all(
            t.strip() == final.strip() for t in result["texts"]
        ),
        "server_cpu_share": round(cpu / wall, 3),
        "speaker": {
            "first_caption_s": finished.first_caption and round(finished.first_caption, 3),
            "wer": round(wer(" ".join(c.text for c in clips), final), 4),
        },
        "memory": rss_mb(),
        "memory_per_100_followers_mb": (
            round((connected - before) * 100 / args.followers, 2) if args.followers else None
        ),
        "machine": machine(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--followers", type=int, default=500)
    p.add_argument("--clips", type=int, default=1, help="evaluation clips the speaker says")
    p.add_argument("--out", default="/tmp/followers-arrivals.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        asyncio.run(_follow(args.child, args.followers, args.out))
        return
    print(json.dumps(asyncio.run(_run(args)), indent=2))


if __name__ == "__main__":
    main()
