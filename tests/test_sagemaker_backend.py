"""SageMakerBackend over the whole SageMaker path, with real parts everywhere but AWS.

The client is the real AWS SDK (aws-sdk-sagemaker-runtime-http2 over awscrt: HTTP/2, TLS
trusting a trustme CA, SigV4). AWS's router cannot run here, so ``components.aws.local_front``
stands in for it; behind it runs the real container (``container/serve``, ``ENGINE=whisper``:
the bridge and the embedded CPU engine server with the bundled tiny.en model), transcribing real
speech from the evaluation set. One container and one front serve the whole module.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from components.backends.sagemaker.client import Boto3CredentialsResolver, SageMakerBackend
from components.core.audio import float_to_pcm16, load_file
from components.core.errors import (
    AuthError,
    BackendError,
    BackendUnavailable,
    NotFound,
    RemoteError,
)
from components.core.evaluation import Clip, wer
from components.core.protocol import TranscriptionDelta, TranscriptionDone
from tests.support_sagemaker import REPO_ROOT, SageMakerSetup, sagemaker_fixture

BRIDGE_MAX_MESSAGE_BYTES = 256 * 1024
"""The container's message limit here: far above a streaming chunk, so a test can exceed it."""

sagemaker = sagemaker_fixture(
    env={
        "LIVE_CAPTIONS_MAX_SESSIONS": "12",
        "BRIDGE_MAX_MESSAGE_BYTES": str(BRIDGE_MAX_MESSAGE_BYTES),
    }
)

CHUNK_BYTES = 3200  # 0.1 s of PCM16 16 kHz

SHORT_CLIPS = [
    "librispeech-1089-134691-0000",
    "librispeech-1089-134686-0001",
    "librispeech-4507-16021-0012",
    "librispeech-8455-210777-0068",
    "librivox-sense-and-sensibility-01-0880",
    "librivox-sense-and-sensibility-01-0930",
    "cmu-goforward",
    "librispeech-1221-135766-0002",
    "librispeech-61-70968-0000",
    "librispeech-1089-134691-0001",
]


@pytest.fixture
def front_env(sagemaker: SageMakerSetup) -> Iterator[SageMakerSetup]:
    """The front's credentials and region in this process's environment (boto3 reads them)."""
    with sagemaker.front.environ():
        yield sagemaker


async def transcribe(backend: SageMakerBackend, clip: Clip) -> str:
    """Stream a clip as fast as the path takes it; return the final transcript."""
    pcm = float_to_pcm16(await asyncio.to_thread(load_file, str(clip.path)))
    stream = await backend.open()
    try:

        async def send() -> None:
            for i in range(0, len(pcm), CHUNK_BYTES):
                await stream.send_audio(pcm[i : i + CHUNK_BYTES])
            await stream.finish()

        sender = asyncio.create_task(send())
        deltas: list[str] = []
        final = None
        async for event in stream:
            if isinstance(event, TranscriptionDelta):
                deltas.append(event.delta)
            elif isinstance(event, TranscriptionDone):
                final = event.text
        await sender
    finally:
        await stream.cancel()
    assert final is not None
    assert "".join(deltas).strip() == final.strip()  # deltas add up to the final text
    return final


async def test_an_eval_clip_is_transcribed_through_the_sagemaker_path(
    front_env: SageMakerSetup, clips: dict[str, Clip]
) -> None:
    clip = clips["librispeech-1089-134686-0000"]  # 10.4 s of read speech
    text = await transcribe(front_env.front.backend(), clip)
    assert wer(clip.text, text) <= 0.25, text


async def test_ten_concurrent_streams_each_get_their_own_text(
    front_env: SageMakerSetup, clips: dict[str, Clip]
) -> None:
    backend = front_env.front.backend()
    chosen = [clips[c] for c in SHORT_CLIPS]
    texts = await asyncio.gather(*(transcribe(backend, clip) for clip in chosen))
    for clip, text in zip(chosen, texts, strict=True):
        assert wer(clip.text, text) <= 0.4, (clip.id, text)
    assert backend._client is None  # the streams shared one connection; the last closed it


async def test_the_container_closing_mid_stream_reaches_the_client(
    front_env: SageMakerSetup,
) -> None:
    stream = await front_env.front.backend().open()
    await stream.send_audio(b"\x00\x00" * 1600)
    # One append over the container's message limit: its bridge closes the socket (1009).
    await stream.send_audio(b"\x00\x00" * (BRIDGE_MAX_MESSAGE_BYTES // 2))
    with pytest.raises(RemoteError, match="close 1009"):
        async for _ in stream:
            pass
    await stream.cancel()
    # The endpoint still serves the next stream.
    stream = await front_env.front.backend().open()
    await stream.finish()
    assert [type(e) async for e in stream][-1] is TranscriptionDone


async def test_wrong_credentials_are_an_auth_error(front_env: SageMakerSetup) -> None:
    front = front_env.front
    with front.environ(AWS_SECRET_ACCESS_KEY="not-the-secret"):
        with pytest.raises(AuthError, match="signature"):
            await front.backend().open()
    with front.environ(AWS_ACCESS_KEY_ID="AKIANOTKNOWNHERE0000"):
        with pytest.raises(AuthError, match="access key"):
            await front.backend().open()


async def test_no_credentials_say_how_to_provide_them(front_env: SageMakerSetup) -> None:
    front = front_env.front
    with front.environ(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None):
        with pytest.raises(AuthError, match="No AWS credentials found: set AWS_PROFILE"):
            await front.backend().open()


async def test_an_unknown_endpoint_is_not_found(front_env: SageMakerSetup) -> None:
    with pytest.raises(NotFound, match=r"'no-such-endpoint'.*not found"):
        await front_env.front.backend(endpoint="no-such-endpoint").open()


async def test_an_untrusted_certificate_names_the_ca_setting(front_env: SageMakerSetup) -> None:
    backend = SageMakerBackend(
        "live-captions", "us-east-1", endpoint_url=front_env.front.endpoint_url
    )
    backend.ca_bundle = None  # AWS_CA_BUNDLE is set in this environment: drop it
    with pytest.raises(BackendUnavailable, match="AWS_CA_BUNDLE"):
        await backend.open()


async def test_nothing_listening_is_backend_unavailable(front_env: SageMakerSetup) -> None:
    from tests.support_server import free_port

    backend = front_env.front.backend(endpoint_url=f"https://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailable, match="refused"):
        await backend.open()


async def test_a_silent_server_times_out_as_backend_unavailable(
    front_env: SageMakerSetup,
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # holds the TCP connection open, says nothing (no TLS)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        backend = front_env.front.backend(
            endpoint_url=f"https://127.0.0.1:{port}", connect_timeout=1.0
        )
        with pytest.raises(BackendUnavailable):
            await backend.open()
        assert accepted  # it did connect: the failure is the silence
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_no_region_is_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "SAGEMAKER_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    backend = SageMakerBackend("live-captions")
    assert backend.region is None
    with pytest.raises(BackendError, match="No AWS region"):
        await backend.open()
    with pytest.raises(ValueError, match="https://"):
        SageMakerBackend("live-captions", "us-east-1", endpoint_url="http://127.0.0.1:8080")


async def test_refreshable_credentials_are_refreshed_when_asked() -> None:
    import datetime

    from botocore.credentials import RefreshableCredentials

    issued: list[str] = []

    def refresh() -> dict[str, str]:
        issued.append(f"AKIAREFRESHED{len(issued):07d}")
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return {
            "access_key": issued[-1],
            "secret_key": "secret",
            "token": "token",
            "expiry_time": expiry.isoformat(),
        }

    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
    creds = RefreshableCredentials.create_from_metadata(
        metadata={
            "access_key": "AKIAABOUTTOEXPIRE000",
            "secret_key": "old",
            "token": "old",
            "expiry_time": soon.isoformat(),
        },
        refresh_using=refresh,
        method="test",
    )
    resolver = Boto3CredentialsResolver(creds)
    first = await resolver.get_identity()
    assert first.access_key_id == "AKIAREFRESHED0000000"  # expiring soon: refreshed first
    assert first.session_token == "token"
    again = await resolver.get_identity()
    assert again is first and len(issued) == 1  # still valid: no second refresh


def test_the_command_line_transcribes_through_sagemaker(
    sagemaker: SageMakerSetup, clips: dict[str, Clip]
) -> None:
    clip = clips["librispeech-1089-134691-0001"]
    env = {**os.environ, **sagemaker.front.client_env()}
    env.pop("AWS_PROFILE", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "components",
            "transcribe",
            str(clip.path),
            "--backend",
            "sagemaker",
            "--endpoint",
            sagemaker.front.endpoint,
            "--quiet",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert wer(clip.text, result.stdout) <= 0.25, result.stdout
    # A clean exit: no traceback, no stray task, no awscrt complaint.
    for noise in ("Traceback", "Task exception", "AWS_ERROR", "Exception ignored"):
        assert noise not in result.stderr, result.stderr


def test_service_failures_map_to_actionable_errors() -> None:
    """Each failure the SDK can raise, as the SDK builds it, to the error a person acts on."""
    from aws_sdk_sagemaker_runtime_http2.models import (
        InputValidationError,
        InternalStreamFailure,
        ModelError,
        ModelStreamError,
        ServiceUnavailableError,
    )
    from awscrt.exceptions import AwsCrtError
    from smithy_core.exceptions import CallError, SmithyError
    from smithy_core.response import ResponseMetadata

    from components.backends.sagemaker.errors import map_error
    from components.core.errors import Busy, ConnectionLost

    def mapped(exc: BaseException) -> BackendError:
        return map_error(exc, endpoint="ep", region="eu-west-1", url="https://x:8443")

    def unmodeled(status: int, name: str) -> CallError:
        error = CallError(
            message=f"Unknown error for operation com.amazonaws.sagemakerruntimehttp2#Invoke"
            f"EndpointWithBidirectionalStream - status: {status} - id: "
            f"com.amazonaws.sagemakerruntimehttp2#{name}",
            fault="client",
        )
        error.response_metadata = ResponseMetadata(http_status_code=status)
        return error

    not_found = mapped(InputValidationError(message="Endpoint ep of account 1 not found."))
    assert isinstance(not_found, NotFound) and "components.aws.deploy status" in str(not_found)
    creating = mapped(InputValidationError(message="Endpoint ep is not in service (Creating)."))
    assert isinstance(creating, BackendUnavailable)
    model = mapped(ModelError(message="failed", original_status_code=500, log_stream_arn="arn:l"))
    assert isinstance(model, RemoteError) and "status 500" in str(model) and "arn:l" in str(model)
    assert isinstance(mapped(ServiceUnavailableError(message="throttled")), Busy)
    assert isinstance(mapped(InternalStreamFailure(message="x")), ConnectionLost)
    denied = mapped(unmodeled(403, "AccessDeniedException"))
    assert isinstance(denied, AuthError) and "sagemaker:InvokeEndpoint" in str(denied)
    expired = mapped(unmodeled(403, "ExpiredTokenException"))
    assert isinstance(expired, AuthError) and "expired" in str(expired)
    assert isinstance(mapped(unmodeled(429, "ThrottlingException")), Busy)
    crt = AwsCrtError(code=0, name="AWS_IO_SOCKET_CONNECTION_REFUSED", message="refused")
    wrapped = SmithyError(crt)
    wrapped.__cause__ = crt
    refused = mapped(wrapped)
    assert isinstance(refused, BackendUnavailable) and "refused" in str(refused)
    for code, kind in (("1000", ConnectionLost), ("1013", Busy), ("1011", RemoteError)):
        error = mapped(ModelStreamError(message="bye", error_code=code))
        assert isinstance(error, kind) and f"close {code}: bye" in str(error)
