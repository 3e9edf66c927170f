"""Stand-ins for the caption endpoints of Zoom, YouTube Live and Microsoft Teams, and for
obs-websocket 5, written from the platforms' public documentation (docs/outputs.md). They are
stand-ins, not the platforms: the real services cannot run here. Each is a real server on
loopback, records what it took, and can be told to misbehave the way a platform does:

* Zoom (``/zoom/closedcaption``): 400 until the meeting has started, 403 for a wrong token,
  ``GET …/seq`` the last number taken; a post whose ``seq`` it already took is answered 200
  and ignored (so a retry after a lost answer does not show twice).
* YouTube (``/youtube/closedcaption``): checks the timestamp line (format, within a minute of
  its clock) and keeps posts by ``seq`` the same way; an empty caption is a heartbeat.
* Teams (``/teams/cartcaption``): 404 before captions start, 401 once the link was reset.
* All three: scripted faults for the next requests: a status code, or ``"slow"`` (takes the
  post, answers after the client gave up); and a restart of the server itself.
* obs-websocket (:class:`ObsStandIn`): Hello with a SHA-256 challenge, 4009 for a wrong
  password, ``SendStreamCaption`` answered 501 while "not streaming".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from websockets.asyncio.server import ServerConnection, serve

ZOOM_TOKEN = "zoom-token-123"
YOUTUBE_KEY = "yt-cid-456"
TEAMS_TOKEN = "teams-token-789"
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}$")


@dataclass
class Taken:
    seq: int | None
    text: str


@dataclass
class PlatformStandIn:
    """State and faults of the three HTTP stand-ins (shared by one Starlette app)."""

    zoom: list[Taken] = field(default_factory=list)
    youtube: list[Taken] = field(default_factory=list)
    teams: list[Taken] = field(default_factory=list)
    heartbeats: int = 0
    youtube_seqs: list[int] = field(default_factory=list)
    """Every ``seq`` YouTube took, captions and heartbeats alike."""
    zoom_started: bool = True
    teams_started: bool = True
    teams_link_valid: bool = True
    slow_seconds: float = 1.5
    faults: dict[str, deque[int | str]] = field(
        default_factory=lambda: {"zoom": deque(), "youtube": deque(), "teams": deque()}
    )
    requests: dict[str, int] = field(default_factory=lambda: {"zoom": 0, "youtube": 0, "teams": 0})

    def fail_next(self, platform: str, *answers: int | str) -> None:
        self.faults[platform].extend(answers)

    def words(self, platform: str) -> list[str]:
        taken: list[Taken] = getattr(self, platform)
        return " ".join(t.text.replace("<br>", " ") for t in taken).split()

    # ------------------------------------------------------------------ the app

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/zoom/closedcaption", self._zoom_post, methods=["POST"]),
                Route("/zoom/closedcaption/seq", self._zoom_seq, methods=["GET"]),
                Route("/youtube/closedcaption", self._youtube_post, methods=["POST"]),
                Route("/teams/cartcaption", self._teams_post, methods=["POST"]),
            ]
        )

    async def _fault(self, platform: str, take: Any) -> Response | None:
        """The scripted answer for this request, if one is due (``take`` records the post)."""
        self.requests[platform] += 1
        if not self.faults[platform]:
            return None
        fault = self.faults[platform].popleft()
        if fault == "slow":
            await take()
            await asyncio.sleep(self.slow_seconds)
            return PlainTextResponse("late")
        return PlainTextResponse("scripted fault", status_code=int(fault))

    async def _zoom_post(self, request: Request) -> Response:
        seq = int(request.query_params.get("seq", "-1"))
        body = (await request.body()).decode()

        async def take() -> None:
            if not self.zoom or seq > (self.zoom[-1].seq or 0):
                self.zoom.append(Taken(seq, body))

        if (fault := await self._fault("zoom", take)) is not None:
            return fault
        if request.query_params.get("id") != ZOOM_TOKEN:
            return PlainTextResponse("forbidden", status_code=403)
        if not self.zoom_started:
            return PlainTextResponse("meeting not started", status_code=400)
        if "lang" not in request.query_params or seq < 0:
            return PlainTextResponse("seq and lang are required", status_code=400)
        await take()
        return PlainTextResponse("")

    async def _zoom_seq(self, request: Request) -> Response:
        if request.query_params.get("id") != ZOOM_TOKEN:
            return PlainTextResponse("forbidden", status_code=403)
        if not self.zoom_started:
            return PlainTextResponse("meeting not started", status_code=400)
        return PlainTextResponse(str(self.zoom[-1].seq if self.zoom else 0))

    async def _youtube_post(self, request: Request) -> Response:
        seq = int(request.query_params.get("seq", "-1"))
        body = (await request.body()).decode()
        stamp, _, rest = body.partition("\n")
        text = rest[:-1] if rest.endswith("\n") else rest

        async def take() -> None:
            if seq in self.youtube_seqs:
                return  # a retry of a post it already took
            self.youtube_seqs.append(seq)
            if not text:
                self.heartbeats += 1
            else:
                self.youtube.append(Taken(seq, text))

        if (fault := await self._fault("youtube", take)) is not None:
            return fault
        if request.query_params.get("cid") != YOUTUBE_KEY:
            return PlainTextResponse("unknown stream", status_code=403)
        if not STAMP.match(stamp) or not body.endswith("\n"):
            return PlainTextResponse("bad body", status_code=400)
        sent = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
        if abs((datetime.now(UTC) - sent).total_seconds()) > 60:
            return PlainTextResponse("timestamp too far from now", status_code=400)
        await take()
        return PlainTextResponse(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3])

    async def _teams_post(self, request: Request) -> Response:
        body = (await request.body()).decode()

        async def take() -> None:
            self.teams.append(Taken(None, body))

        if (fault := await self._fault("teams", take)) is not None:
            return fault
        if request.query_params.get("token") != TEAMS_TOKEN or not self.teams_link_valid:
            return PlainTextResponse("unauthorized", status_code=401)
        if not self.teams_started:
            return PlainTextResponse("captions not started", status_code=404)
        await take()
        return PlainTextResponse("")


def urls(base: str) -> dict[str, str]:
    """Each stand-in's caption URL, as its platform would hand it to an organiser."""
    return {
        "zoom": f"{base}/zoom/closedcaption?id={ZOOM_TOKEN}&ns=meeting&expire=86400",
        "youtube": f"{base}/youtube/closedcaption?cid={YOUTUBE_KEY}",
        "teams": f"{base}/teams/cartcaption?meetingid=m-1&token={TEAMS_TOKEN}&lang=en-us",
    }


class ObsStandIn:
    """A stand-in for obs-websocket 5 (OBS Studio's WebSocket server), on loopback."""

    def __init__(self, password: str = "") -> None:
        self.password = password
        self.captions: list[str] = []
        self.streaming = True
        self.connections = 0
        self.auth_failures = 0
        self._server: Any = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            port,
            subprotocols=["obswebsocket.json"],  # type: ignore[list-item]
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def url(self, password: str | None = None) -> str:
        secret = self.password if password is None else password
        user = f":{secret}@" if secret else ""
        return f"ws://{user}127.0.0.1:{self.port}"

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        hello: dict[str, Any] = {"obsWebSocketVersion": "5.5.0", "rpcVersion": 1}
        challenge, salt = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        if self.password:
            hello["authentication"] = {"challenge": challenge, "salt": salt}
        await ws.send(json.dumps({"op": 0, "d": hello}))
        identify = json.loads(await ws.recv())
        if identify.get("op") != 1:
            await ws.close(4007, "not identified")
            return
        if self.password:
            secret = base64.b64encode(
                hashlib.sha256((self.password + salt).encode()).digest()
            ).decode()
            expected = base64.b64encode(
                hashlib.sha256((secret + challenge).encode()).digest()
            ).decode()
            if identify["d"].get("authentication") != expected:
                self.auth_failures += 1
                await ws.close(4009, "Authentication failed.")
                return
        await ws.send(json.dumps({"op": 2, "d": {"negotiatedRpcVersion": 1}}))
        async for raw in ws:
            message = json.loads(raw)
            if message.get("op") != 6:
                continue
            d = message["d"]
            status: dict[str, Any] = {"result": True, "code": 100}
            if d.get("requestType") != "SendStreamCaption":
                status = {"result": False, "code": 204, "comment": "unknown request"}
            elif not self.streaming:
                status = {"result": False, "code": 501, "comment": "Stream output not running."}
            else:
                self.captions.append(d["requestData"]["captionText"])
            await ws.send(
                json.dumps(
                    {
                        "op": 7,
                        "d": {
                            "requestType": d.get("requestType"),
                            "requestId": d.get("requestId"),
                            "requestStatus": status,
                        },
                    }
                )
            )
