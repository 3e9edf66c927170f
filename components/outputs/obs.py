"""OBS Studio through obs-websocket 5: captions into the stream output as CEA-608.

Facts (obs-websocket's protocol document; see docs/outputs.md): the server greets with
``Hello`` (op 0), carrying an authentication challenge and salt when it has a password; the
client answers ``Identify`` (op 1) with
``base64(sha256(base64(sha256(password + salt)) + challenge))``; ``Identified`` (op 2) opens
the session. ``SendStreamCaption`` (a request, op 6, answered by op 7) puts its
``captionText`` into the stream output's CEA-608 track (32 columns), and fails while the
stream is not running. A wrong password closes the connection with code 4009.

The password travels in the address's user part, ``ws://:PASSWORD@host:4455``, and nowhere
else; the connection is opened on first use and again after it drops.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from components.outputs.base import POST_TIMEOUT, OutputError
from components.outputs.lines import Post
from components.outputs.targets import Target

SUBPROTOCOL = "obswebsocket.json"
AUTH_FAILED = 4009
OUTPUT_NOT_RUNNING = 501
NOT_STREAMING_WAIT = 5.0


def authentication(password: str, salt: str, challenge: str) -> str:
    """The ``Identify`` answer to a ``Hello`` challenge (obs-websocket 5)."""
    secret = base64.b64encode(hashlib.sha256((password + salt).encode()).digest()).decode()
    return base64.b64encode(hashlib.sha256((secret + challenge).encode()).digest()).decode()


class ObsSink:
    width = 32
    min_interval = 0.25
    max_chars = 4 * 33
    heartbeat_every = None
    single_line = False
    idempotent = False

    def __init__(self, target: Target) -> None:
        self.target = target
        parts = urlsplit(target.url)
        self._password = unquote(parts.password or "")
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        self._address = urlunsplit(parts._replace(netloc=netloc))
        self._socket: ClientConnection | None = None
        self._ids = itertools.count(1)

    async def post(self, post: Post) -> None:
        socket = await self._connected()
        request_id = f"caption-{next(self._ids)}"
        request = {
            "op": 6,
            "d": {
                "requestType": "SendStreamCaption",
                "requestId": request_id,
                "requestData": {"captionText": post.text},
            },
        }
        try:
            await socket.send(json.dumps(request))
        except (ConnectionClosed, OSError):
            await self._drop()
            raise OutputError("The connection to OBS dropped; reconnecting.") from None
        try:
            while True:
                message = _message(await _recv(socket))
                if message.get("op") == 7 and message["d"].get("requestId") == request_id:
                    break
        except (ConnectionClosed, OSError, OutputError):
            # The caption went out; whether OBS showed it, no answer says.
            await self._drop()
            raise OutputError(
                "OBS did not answer a caption (the connection dropped or stalled); reconnecting.",
                uncertain=True,
            ) from None
        status = message["d"].get("requestStatus", {})
        if status.get("result"):
            return
        if status.get("code") == OUTPUT_NOT_RUNNING:
            raise OutputError(
                "OBS is not streaming: captions go out once the stream starts.",
                wait=NOT_STREAMING_WAIT,
            )
        raise OutputError(
            f"OBS refused the caption ({status.get('code')}: {status.get('comment', '')})."
        )

    async def heartbeat(self) -> None:
        return None

    async def _connected(self) -> ClientConnection:
        if self._socket is not None:
            return self._socket
        try:
            socket = await connect(
                self._address,
                subprotocols=[SUBPROTOCOL],
                open_timeout=POST_TIMEOUT,  # type: ignore[list-item]
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise OutputError(
                f"Cannot reach OBS at {self.target.host} ({type(exc).__name__}): check that "
                "OBS runs with its WebSocket server on (Tools → WebSocket Server Settings)."
            ) from None
        try:
            hello = _message(await _recv(socket))
            auth = hello.get("d", {}).get("authentication")
            identify: dict[str, Any] = {"rpcVersion": 1, "eventSubscriptions": 0}
            if auth:
                if not self._password:
                    raise OutputError(
                        "OBS asks for a password: give it as ws://:PASSWORD@host:4455.",
                        retry=False,
                    )
                identify["authentication"] = authentication(
                    self._password, auth["salt"], auth["challenge"]
                )
            await socket.send(json.dumps({"op": 1, "d": identify}))
            identified = _message(await _recv(socket))
            if identified.get("op") != 2:
                raise OutputError(f"OBS answered op {identified.get('op')} to Identify.")
        except ConnectionClosed as exc:
            await socket.close()
            if exc.rcvd is not None and exc.rcvd.code == AUTH_FAILED:
                raise OutputError(
                    "OBS refused the password (4009): copy it again from Tools → WebSocket "
                    "Server Settings.",
                    retry=False,
                ) from None
            raise OutputError("OBS closed the connection while it was opening.") from None
        except BaseException:
            await socket.close()
            raise
        self._socket = socket
        return socket

    async def _drop(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()

    async def aclose(self) -> None:
        await self._drop()


async def _recv(socket: ClientConnection) -> str | bytes:
    try:
        return await asyncio.wait_for(socket.recv(), POST_TIMEOUT)
    except TimeoutError:
        raise OutputError(f"OBS did not answer within {POST_TIMEOUT:g} s.") from None


def _message(raw: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        raise OutputError("OBS sent something that is not obs-websocket JSON.") from None
    if not isinstance(message, dict) or not isinstance(message.get("d"), dict):
        raise OutputError("OBS sent something that is not an obs-websocket message.")
    return message
