"""The local SageMaker front (components/aws/local_front.py), a stand-in for AWS's router.

Requests come from the real AWS SDK (aws-sdk-sagemaker-runtime-http2 over awscrt, HTTP/2 and
TLS with a trustme CA). Behind the front runs a small WebSocket container written for these
tests: it records every frame it receives (type and fragments) and answers on command, so the
framing rules of SageMaker's container contract can be checked frame by frame. The whole path
with the real container and engine is tested in test_sagemaker_backend.py.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aws_sdk_sagemaker_runtime_http2.models import (
    InputValidationError,
    InvokeEndpointWithBidirectionalStreamInput,
    ModelError,
    ModelStreamError,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
    ResponseStreamEventPayloadPart,
    ServiceUnavailableError,
)
from smithy_aws_event_stream.events import EventHeaderEncoder, EventMessage
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from components.aws import local_front as front_mod
from components.aws.local_front import Credentials, LocalSageMaker
from components.backends.sagemaker.client import SageMakerBackend
from components.core import protocol
from components.core.errors import AuthError, Busy, ConnectionLost, NotFound, RemoteError
from tests.support_sagemaker import running_front

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENDPOINT = "captions"
CREDS = Credentials("AKIAFRONTTEST0000001", "front-test-secret")


# --------------------------------------------------------------------------- test container


@dataclass
class Message:
    path: str
    data: str | bytes
    fragments: int


@dataclass
class ScriptedContainer:
    """Records what reaches the container; answers commands (see :meth:`_answer`)."""

    url: str = ""
    healthy: bool = True
    refuse: bool = False
    received: list[Message] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/ping":
            status = 200 if self.healthy else 503
            return connection.respond(status, "ok\n" if self.healthy else "loading\n")
        if self.refuse:
            return connection.respond(403, "not today\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        path = ws.request.path
        try:
            while True:
                pieces = [piece async for piece in ws.recv_streaming()]
                data: str | bytes = (
                    "".join(pieces) if isinstance(pieces[0], str) else b"".join(pieces)  # type: ignore[arg-type]
                )
                self.received.append(Message(path, data, len(pieces)))
                if not await self._answer(ws, path, data):
                    return
        except Exception:
            return
        finally:
            self.closed.set()

    async def _answer(self, ws: ServerConnection, path: str, data: str | bytes) -> bool:
        if isinstance(data, bytes):
            await ws.send(data)  # binary echo
            return True
        if data.startswith("close:"):
            _, code, reason = data.split(":", 2)
            await ws.close(int(code), reason)
            return False
        if data.startswith("fragments:"):
            await ws.send(data.removeprefix("fragments:").split("|"))
            return True
        if data == "where?":
            await ws.send(path)
            return True
        if data.startswith("{"):
            return await self._realtime(ws, data)
        await ws.send(data)  # text echo
        return True

    async def _realtime(self, ws: ServerConnection, data: str) -> bool:
        """Just enough of the Realtime protocol for SageMakerBackend; ``model`` picks a fault."""
        event = protocol.parse_client_event(data)
        if isinstance(event, protocol.SessionUpdate):
            await ws.send(protocol.serialize(protocol.SessionCreated()))
            if event.model and event.model.startswith("close-"):
                await ws.close(int(event.model.removeprefix("close-")), "as asked")
                return False
        elif isinstance(event, protocol.InputAudioBufferAppend):
            await ws.send(protocol.serialize(protocol.TranscriptionDelta(delta="word ")))
        elif isinstance(event, protocol.InputAudioBufferCommit) and event.final:
            await ws.send(protocol.serialize(protocol.TranscriptionDone(text="word")))
        return True


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def container() -> AsyncIterator[ScriptedContainer]:
    box = ScriptedContainer()
    async with serve(box.handler, "127.0.0.1", 0, process_request=box.process_request) as server:
        box.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        yield box


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def front(container: ScriptedContainer) -> AsyncIterator[LocalSageMaker]:
    async with LocalSageMaker(container.url, [ENDPOINT], [CREDS]) as running:
        yield running


@pytest.fixture(autouse=True)
def reset_container(request: pytest.FixtureRequest) -> Iterator[None]:
    if "container" in request.fixturenames:
        box: ScriptedContainer = request.getfixturevalue("container")
        box.healthy, box.refuse = True, False
        box.received.clear()
        box.closed.clear()
    yield


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDS.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDS.secret_key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def backend(front: LocalSageMaker, **kwargs: Any) -> SageMakerBackend:
    options: dict[str, Any] = {"endpoint_url": front.endpoint_url, "ca_bundle": front.ca_bundle}
    options.update(kwargs)
    return SageMakerBackend(options.pop("endpoint", ENDPOINT), "us-east-1", **options)


def part(data: bytes, data_type: str | None = "UTF8", state: str | None = None) -> Any:
    return RequestStreamEventPayloadPart(
        value=RequestPayloadPart(bytes_=data, data_type=data_type, completion_state=state)
    )


class RawCall:
    """The SDK's own duplex stream through the front, for events the backend never sends."""

    def __init__(self, front: LocalSageMaker, **inputs: Any) -> None:
        self.backend = backend(front)
        self.inputs = inputs
        self.client: Any = None
        self.duplex: Any = None
        self.receiver: Any = None

    async def __aenter__(self) -> RawCall:
        self.client = await self.backend._acquire()
        self.duplex = await self.client.invoke_endpoint_with_bidirectional_stream(
            InvokeEndpointWithBidirectionalStreamInput(
                endpoint_name=self.inputs.pop("endpoint_name", ENDPOINT), **self.inputs
            )
        )
        return self

    async def output(self) -> Any:
        _, self.receiver = await asyncio.wait_for(self.duplex.await_output(), 10)
        return self.receiver

    async def send(self, event: Any) -> None:
        await asyncio.wait_for(self.duplex.input_stream.send(event), 10)

    async def receive(self) -> Any:
        if self.receiver is None:
            await self.output()
        return await asyncio.wait_for(self.receiver.receive(), 10)

    async def __aexit__(self, *exc: object) -> None:
        if self.receiver is None:  # refused, or already ended: nothing will drain the input
            await self.duplex.input_stream._writer.close(flush=False)
        else:
            await self.duplex.input_stream.close()
            # Let the response finish, so the HTTP/2 stream is complete before the client closes.
            for _ in range(10):
                try:
                    if await asyncio.wait_for(self.receiver.receive(), 5) is None:
                        break
                except Exception:
                    break
        await self.backend._release(self.client)


# --------------------------------------------------------------------------- SigV4 (pure)


def _signed_request_headers(secret: str, when: datetime.datetime | None = None) -> dict[str, str]:
    from aws_sdk_signers import URI, AsyncSigV4Signer, AWSCredentialIdentity, AWSRequest, Field
    from aws_sdk_signers import Fields as SignerFields

    request = AWSRequest(
        destination=URI(
            scheme="https",
            host="127.0.0.1",
            port=8443,
            path=f"/endpoints/{ENDPOINT}/invocations-bidirectional-stream",
        ),
        method="POST",
        body=None,
        fields=SignerFields(
            [
                Field(name="Content-Type", values=["application/vnd.amazon.eventstream"]),
                Field(name="X-Amzn-SageMaker-Target-Variant", values=["AllTraffic"]),
            ]
        ),
    )
    properties: dict[str, Any] = {"region": "eu-west-1", "service": "sagemaker"}
    if when is not None:
        properties["date"] = when.strftime("%Y%m%dT%H%M%SZ")
    signed = asyncio.run(
        AsyncSigV4Signer().sign(
            request=request,
            identity=AWSCredentialIdentity(
                access_key_id=CREDS.access_key, secret_access_key=secret
            ),
            properties=properties,  # type: ignore[arg-type]
        )
    )
    headers = {f.name.lower(): f.as_string() for f in signed.fields}
    headers["host"] = "127.0.0.1:8443"
    return headers


def _verify(headers: dict[str, str]) -> front_mod.SignedRequest:
    return front_mod.verify_request(
        "POST",
        f"/endpoints/{ENDPOINT}/invocations-bidirectional-stream",
        "",
        headers,
        {CREDS.access_key: CREDS},
    )


def _error_type(headers: dict[str, str]) -> str:
    with pytest.raises(front_mod.ServiceError) as caught:
        _verify(headers)
    assert caught.value.status == 403
    return caught.value.error_type


async def test_sigv4_accepts_the_sdk_signature_and_rejects_anything_else() -> None:
    headers = await asyncio.to_thread(_signed_request_headers, CREDS.secret_key)
    signed = _verify(headers)
    assert (signed.region, signed.service) == ("eu-west-1", "sagemaker")

    tampered = {**headers, "x-amzn-sagemaker-target-variant": "Other"}
    assert _error_type(tampered) == "InvalidSignatureException"
    wrong_secret = await asyncio.to_thread(_signed_request_headers, "not-the-secret")
    assert _error_type(wrong_secret) == "InvalidSignatureException"
    unknown = {
        **headers,
        "authorization": headers["authorization"].replace("AKIAFRONT", "AKIAOTHER"),
    }
    assert _error_type(unknown) == "UnrecognizedClientException"
    assert _error_type({k: v for k, v in headers.items() if k != "authorization"}) == (
        "MissingAuthenticationTokenException"
    )
    stale = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)
    old = await asyncio.to_thread(_signed_request_headers, CREDS.secret_key, stale)
    with pytest.raises(front_mod.ServiceError, match="Signature expired"):
        _verify(old)


async def test_event_signature_chain_is_verified_in_order() -> None:
    from aws_sdk_signers import AsyncEventSigner, AWSCredentialIdentity

    headers = await asyncio.to_thread(_signed_request_headers, CREDS.secret_key)
    seed = headers["authorization"].rsplit("Signature=", 1)[1]
    signer = AsyncEventSigner(initial_signature=seed.encode(), event_encoder_cls=EventHeaderEncoder)
    identity = AWSCredentialIdentity(
        access_key_id=CREDS.access_key, secret_access_key=CREDS.secret_key
    )
    props: Any = {"region": "eu-west-1", "service": "sagemaker"}
    raws = []
    for payload in (b"first", b"second", b""):
        message = EventMessage(payload=payload) if payload else EventMessage()
        if payload:
            signed = await signer.sign(event=message, identity=identity, properties=props)
        else:
            signed = await signer.sign_empty(event=message, identity=identity, properties=props)
        raws.append(signed.encode())

    def check(order: list[bytes]) -> None:
        chain = front_mod.ChunkChain(_verify(headers))
        for raw in order:
            event = front_mod.decode_event(raw)
            chain.verify(raw, dict(event.message.headers), event.message.payload)

    check(raws)  # in order, including the signed empty end-of-stream event
    with pytest.raises(front_mod.ChunkSignatureError):
        check([raws[1], raws[0]])
    forged = front_mod.decode_event(raws[0]).message
    with pytest.raises(front_mod.ChunkSignatureError):
        chain = front_mod.ChunkChain(_verify(headers))
        chain.verify(raws[0], dict(forged.headers), b"tampered")


async def test_event_stream_buffer_reassembles_any_split() -> None:
    messages = [
        EventMessage(headers={":event-type": "PayloadPart"}, payload=bytes([i]) * (i * 37)).encode()
        for i in range(1, 8)
    ]
    wire = b"".join(messages)
    for size in (1, 5, 16, 100, len(wire)):
        buffer = front_mod.EventStreamBuffer()
        out: list[bytes] = []
        for i in range(0, len(wire), size):
            out += buffer.feed(wire[i : i + size])
        assert out == messages
        assert buffer.pending == 0
    with pytest.raises(ValueError):
        front_mod.EventStreamBuffer(max_event_bytes=64).feed(messages[-1])


# --------------------------------------------------------------------------- framing


async def test_payload_parts_become_frames_and_frames_become_parts(
    front: LocalSageMaker, container: ScriptedContainer, aws_env: None
) -> None:
    async with RawCall(front) as call:
        await call.send(part(b"hello"))
        await call.send(part(b"\x00\xff\x10", data_type="BINARY"))
        await call.send(part(b"\x01\x02", data_type=None))  # no DataType: binary
        for piece, state in ((b"frag-", "PARTIAL"), (b"ment", "PARTIAL"), (b"ed", "COMPLETE")):
            await call.send(part(piece, state=state))
        await call.send(part(b"fragments:a|b|c"))
        replies = [await call.receive() for _ in range(8)]

    assert [(m.data, m.fragments) for m in container.received] == [
        ("hello", 1),
        (b"\x00\xff\x10", 1),
        (b"\x01\x02", 1),
        ("frag-mented", 3),  # PARTIAL, PARTIAL, COMPLETE: one message in three frames
        ("fragments:a|b|c", 1),
    ]
    assert all(isinstance(r, ResponseStreamEventPayloadPart) for r in replies)
    got = [(r.value.bytes_, r.value.data_type, r.value.completion_state) for r in replies]
    assert got == [
        (b"hello", "UTF8", None),
        (b"\x00\xff\x10", "BINARY", None),
        (b"\x01\x02", "BINARY", None),
        (b"frag-mented", "UTF8", None),
        # A fragmented message from the container, one part per frame. (websockets sends an
        # iterable as its fragments plus an empty final frame.)
        (b"a", "UTF8", "PARTIAL"),
        (b"b", "UTF8", "PARTIAL"),
        (b"c", "UTF8", "PARTIAL"),
        (None, "UTF8", "COMPLETE"),  # the SDK reads an empty payload as None
    ]


async def test_container_close_reaches_the_client_as_model_stream_error(
    front: LocalSageMaker, container: ScriptedContainer, aws_env: None
) -> None:
    async with RawCall(front) as call:
        await call.send(part(b"close:4000:the model gave up"))
        with pytest.raises(ModelStreamError) as caught:
            await call.receive()
        call.receiver = None  # the response has ended
    assert caught.value.error_code == "4000"
    assert caught.value.message == "the model gave up"


async def test_invocation_path_and_query_string_reach_the_container(
    front: LocalSageMaker, container: ScriptedContainer, aws_env: None
) -> None:
    async with RawCall(front, model_invocation_path="v1/realtime", model_query_string="a=1") as c:
        await c.send(part(b"where?"))
        reply = await c.receive()
    assert reply.value.bytes_ == b"/v1/realtime?a=1"
    assert container.received[0].path == "/v1/realtime?a=1"


# --------------------------------------------------------------------------- service errors


async def test_service_errors_have_the_services_shape(
    front: LocalSageMaker, container: ScriptedContainer, aws_env: None
) -> None:
    async with RawCall(front, endpoint_name="no-such-endpoint") as call:
        with pytest.raises(InputValidationError, match=r"no-such-endpoint.*not found"):
            await call.output()
    container.healthy = False
    async with RawCall(front) as call:
        with pytest.raises(ServiceUnavailableError, match="503"):
            await call.output()
    container.healthy, container.refuse = True, True
    async with RawCall(front) as call:
        with pytest.raises(ModelError) as caught:
            await call.output()
    assert caught.value.original_status_code == 403
    assert container.received == []


async def test_backend_errors_for_each_refusal(
    front: LocalSageMaker,
    container: ScriptedContainer,
    aws_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(NotFound, match=r"'nope'.*not found"):
        await backend(front, endpoint="nope").open()
    container.healthy = False
    with pytest.raises(Busy, match="503"):
        await backend(front).open()
    container.healthy, container.refuse = True, True
    with pytest.raises(RemoteError, match="status 403"):
        await backend(front).open()
    container.refuse = False
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(AuthError, match="signature"):
        await backend(front).open()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN000000000")
    with pytest.raises(AuthError, match="access key"):
        await backend(front).open()


@pytest.mark.parametrize(
    ("code", "error"), [(1011, RemoteError), (1013, Busy), (1000, ConnectionLost)]
)
async def test_container_close_codes_become_backend_errors(
    front: LocalSageMaker, container: ScriptedContainer, aws_env: None, code: int, error: type
) -> None:
    stream = await backend(front, model=f"close-{code}").open()
    with pytest.raises(error, match=f"close {code}: as asked"):
        async for _ in stream:
            pass
    with pytest.raises(error):  # the failure sticks: sends raise it too
        await stream.send_audio(b"\x00\x00" * 160)
    await stream.cancel()


async def test_a_stream_through_the_front_ends_cleanly(
    front: LocalSageMaker,
    container: ScriptedContainer,
    aws_env: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    sagemaker = backend(front)
    stream = await sagemaker.open()
    for _ in range(3):
        await stream.send_audio(b"\x00\x00" * 1600)
    await stream.finish()
    events = [event async for event in stream]
    assert [type(e).__name__ for e in events] == ["TranscriptionDelta"] * 3 + ["TranscriptionDone"]
    await asyncio.wait_for(container.closed.wait(), 10)  # the front closed the container's socket
    types = [json.loads(m.data)["type"] for m in container.received]
    assert types == [
        "session.update",
        "input_audio_buffer.commit",
        *["input_audio_buffer.append"] * 3,
        "input_audio_buffer.commit",
    ]
    assert sagemaker._client is None  # the last stream closed the shared connection
    # A cancelled stream, too, leaves nothing running behind it.
    stream = await sagemaker.open()
    await stream.send_audio(b"\x00\x00" * 1600)
    await stream.cancel()
    await stream.cancel()
    gc.collect()
    await asyncio.sleep(0.1)
    assert sagemaker._client is None
    noise = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noise == [], [r.getMessage() for r in noise]
    assert [t for t in asyncio.all_tasks() if "reader" in t.get_name()] == []


async def test_the_client_connection_does_not_wait_for_delayed_acks(
    front: LocalSageMaker, container: ScriptedContainer, aws_env: None
) -> None:
    import socket

    stream = await backend(front).open()
    try:
        # awscrt leaves Nagle on; the transport turns it off on the connection to the front.
        found = []
        for name in os.listdir("/proc/self/fd"):
            try:
                dup = socket.socket(fileno=os.dup(int(name)))
            except OSError:
                continue
            with dup:
                try:
                    inet = dup.family in (socket.AF_INET, socket.AF_INET6)
                    if inet and dup.getpeername()[1] == front.port:
                        found.append(dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                except OSError:
                    continue
        assert found and all(found), found
    finally:
        await stream.cancel()


async def test_the_command_line_front_serves_what_it_prints(
    container: ScriptedContainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_front(container.url, endpoint=ENDPOINT) as cli_front:
        text = "\n".join(cli_front.output)
        assert "stand-in for AWS's router" in text
        assert "python -m components transcribe" in text
        assert cli_front.endpoint_url.startswith("https://127.0.0.1:")
        for name, value in cli_front.client_env().items():
            monkeypatch.setenv(name, value)
        # Only what was printed: endpoint URL, CA bundle, credentials and region from the env.
        stream = await SageMakerBackend(ENDPOINT).open()
        await stream.send_audio(b"\x00\x00" * 1600)
        await stream.finish()
        events = [event async for event in stream]
        assert isinstance(events[-1], protocol.TranscriptionDone)
