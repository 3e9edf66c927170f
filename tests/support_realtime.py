"""A Realtime WebSocket client at the level of frames, for tests of what relays and serves them.

    from tests.support_realtime import closed_with, next_event, open_stream, session

    async with session(url) as ws:           # past its ``session.created``; closed on the way out
        await ws.send(serialize(InputAudioBufferCommit()))
        event = await next_event(ws)         # parsed with ``parse_server_event``
    ws = await open_stream(url)              # no expectation of the first event
    code, reason = await closed_with(ws)     # the server's close
    results = await held_together(url, 50, use)  # a crowd: 50 streams open at the same time

Every wait is bounded, so that a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from components.core.protocol import SessionCreated, parse_server_event

WAIT = 20.0
"""Upper bound for a single wait on the server (its answers on loopback take milliseconds)."""


async def open_stream(url: str, **kwargs: Any) -> ClientConnection:
    """A WebSocket as a Realtime client opens one (no compression, no proxy)."""
    return await connect(url, compression=None, proxy=None, open_timeout=WAIT, **kwargs)


async def next_event(ws: ClientConnection, within: float = WAIT) -> Any:
    async with asyncio.timeout(within):
        return parse_server_event(await ws.recv())


async def closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    """Wait for the server's close; return its code and reason."""
    async with asyncio.timeout(WAIT):
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await ws.recv()
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


@asynccontextmanager
async def session(url: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """A stream whose first event was ``session.created``; closed when the block ends."""
    ws = await open_stream(url, **kwargs)
    try:
        assert isinstance(await next_event(ws), SessionCreated)
        yield ws
    finally:
        await ws.close()


async def held_together[T](
    url: str, count: int, use: Callable[[ClientConnection, Any], Awaitable[T]]
) -> list[T]:
    """Open ``count`` streams at once and hold every one open until all have their first event;
    then ``use(ws, first_event)`` on each. Their results in order; each stream closed after.

    Held together, the streams meet a server's connection limits at the same moment, as a
    crowd's would: none is let in because another has already left.
    """
    everyone_in = asyncio.Barrier(count)

    async def one() -> T:
        async with await open_stream(url) as ws:
            first = await next_event(ws)
            async with asyncio.timeout(WAIT):
                await everyone_in.wait()
            return await use(ws, first)

    return list(await asyncio.gather(*(one() for _ in range(count))))
