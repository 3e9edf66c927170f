"""SageMaker AI backend: the Realtime protocol over ``InvokeEndpointWithBidirectionalStream``.

Each protocol event travels as one ``PayloadPart`` (``DataType=UTF8``) on an HTTP/2 bidirectional
stream; the endpoint's container turns each part into one WebSocket text frame for its engine
server and each frame back into one part. So the events are exactly those of ``/v1/realtime``
and the same codec (``components.core.protocol``) encodes and decodes them.

Transport facts that shape this module (see SAGEMAKER.md):

* The SDK's default aiohttp transport cannot stream both ways; awscrt's HTTP/2 client can. Its
  TLS context comes from the system store, so a private front's CA (``AWS_CA_BUNDLE``) is
  installed through awscrt's ``override_default_trust_store_from_path``.
* The call returns a stream at once; a refused connection, a TLS failure or a 4xx/5xx answer
  surfaces only from ``await_output()``, while sends may block meanwhile. ``open()`` therefore
  races its first sends against the response, bounded by ``connect_timeout``, and every later
  send is raced against the stream's failure.
* Credentials come from boto3's standard chain and are asked for on every signature (each event
  is signed in a chain), so refreshable credentials (SSO, assumed roles, instance roles) are
  refreshed during long sessions instead of expiring mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from components.backends.sagemaker.errors import NO_CREDENTIALS, map_error, session_error
from components.core import protocol
from components.core.errors import AuthError, BackendError, BackendUnavailable, ConnectionLost
from components.core.protocol import (
    NO_OPTIONS,
    ErrorEvent,
    InputAudioBufferAppend,
    InputAudioBufferCommit,
    ServerEvent,
    SessionCreated,
    SessionOptions,
    SessionUpdate,
    TranscriptionDone,
)

log = logging.getLogger("components.backends.sagemaker.client")

ENDPOINT_URL_ENV = "SAGEMAKER_ENDPOINT_URL"
MODEL_ENV = "SAGEMAKER_MODEL"
CA_BUNDLE_ENV = "AWS_CA_BUNDLE"
DEFAULT_MODEL = "live-captions"
MAX_STREAM_ENV = "SAGEMAKER_MAX_STREAM_SECONDS"
DEFAULT_MAX_STREAM_SECONDS = 1800.0
"""SageMaker's limit on one bidirectional stream (30 minutes; see SAGEMAKER.md)."""
"""Model named in ``session.update`` when neither ``model`` nor ``SAGEMAKER_MODEL`` is set.

A client cannot ask a SageMaker endpoint which models it serves, so the name is agreed instead:
``components/aws/deploy.py`` starts the container with ``SERVED_MODEL_NAME`` set to this value, and
``container/serve`` serves whichever engine it runs under that name."""

EVENT_QUEUE_SIZE = 1024
TLS_PROBE_AFTER = 1.0
"""Seconds without an answer after which the server's certificate is checked separately."""
CLOSE_TIMEOUT = 5.0
"""How long a graceful end of stream may take before resources are dropped."""


def default_endpoint_url(region: str) -> str:
    """The runtime's HTTP/2 endpoint (the SDK's own resolver leaves out port 8443)."""
    return f"https://runtime.sagemaker.{region}.amazonaws.com:8443"


def resolve_region(region: str | None) -> str | None:
    """Region from the argument, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, or boto3's config."""
    if region:
        return region
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import boto3

        return boto3.session.Session().region_name
    except Exception:  # a broken config file must not hide the clearer error below
        return None


class Boto3CredentialsResolver:
    """The SDK's identity resolver, answered by boto3's credentials object on every call.

    boto3's ``RefreshableCredentials`` renew themselves when asked near expiry; asking on every
    signature is what keeps a long session signed with valid credentials. A refresh may do
    network I/O (STS, SSO, instance metadata), so it runs in a thread; otherwise the frozen
    credentials are read in place (a dictionary read under a lock).
    """

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials
        self._identity: Any = None
        self._frozen: Any = None

    async def get_identity(self, *, properties: Any = None) -> Any:
        from smithy_aws_core.identity import AWSCredentialsIdentity

        creds = self._credentials
        needs_refresh = getattr(creds, "refresh_needed", None)
        if needs_refresh is not None and needs_refresh():
            frozen = await asyncio.to_thread(creds.get_frozen_credentials)
        else:
            frozen = creds.get_frozen_credentials()
        if frozen != self._frozen:  # a new tuple each call; rebuilt only when it changed
            if not frozen.access_key or not frozen.secret_key:
                raise AuthError(NO_CREDENTIALS)
            self._frozen = frozen
            self._identity = AWSCredentialsIdentity(
                access_key_id=frozen.access_key,
                secret_access_key=frozen.secret_key,
                session_token=frozen.token or None,
            )
        return self._identity

    async def invalidate(self) -> None:
        self._frozen = None


def _max_stream_seconds() -> float:
    value = os.environ.get(MAX_STREAM_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_STREAM_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{MAX_STREAM_ENV}={value!r} is not a number of seconds") from None
    if seconds < 10:
        raise ValueError(f"{MAX_STREAM_ENV} must be at least 10 seconds, got {value!r}")
    return seconds


class SageMakerBackend:
    """Opens live transcription streams on a SageMaker AI endpoint (see module docstring)."""

    def __init__(
        self,
        endpoint: str,
        region: str | None = None,
        *,
        endpoint_url: str | None = None,
        model: str | None = None,
        ca_bundle: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if not endpoint:
            raise ValueError("a SageMaker endpoint name is required")
        self.endpoint = endpoint
        self.region = resolve_region(region)
        url = endpoint_url or os.environ.get(ENDPOINT_URL_ENV)
        if url is None and self.region is not None:
            url = default_endpoint_url(self.region)
        if url is not None and not url.startswith("https://"):
            raise ValueError(
                f"SageMaker endpoint URL must be https:// (HTTP/2 over TLS), got {url!r}"
            )
        self.endpoint_url = url
        self.model = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        self.ca_bundle = ca_bundle or os.environ.get(CA_BUNDLE_ENV) or None
        self.connect_timeout = connect_timeout
        self.max_stream_seconds = _max_stream_seconds()
        """SageMaker ends a bidirectional stream after this long; sessions hand over before."""
        self.name = f"SageMaker endpoint {endpoint} ({self.region or 'no region'})"
        self._credentials: Any = None
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._users = 0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _where(self) -> str:
        return f"SageMaker endpoint '{self.endpoint}' in {self.region}"

    async def _load_credentials(self) -> Any:
        if self._credentials is None:

            def load() -> Any:
                import boto3
                from botocore.exceptions import BotoCoreError

                try:
                    creds = boto3.session.Session().get_credentials()
                except BotoCoreError as exc:
                    raise AuthError(f"Could not read AWS credentials: {exc}") from None
                if creds is None:
                    raise AuthError(NO_CREDENTIALS)
                return creds

            self._credentials = await asyncio.to_thread(load)
        return self._credentials

    async def _new_client(self) -> Any:
        if self.region is None or self.endpoint_url is None:
            raise BackendError(
                "No AWS region for SageMaker: pass --region or set AWS_REGION "
                "(or a region in the AWS profile)."
            )
        from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
        from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config

        from components.backends.sagemaker.transport import SageMakerTransport

        credentials = await self._load_credentials()
        config = await AsyncSageMakerRuntimeHTTP2Config.resolve(
            region=self.region,
            endpoint_uri=self.endpoint_url,
            transport=SageMakerTransport(self.ca_bundle, self.connect_timeout),
            aws_credentials_identity_resolver=Boto3CredentialsResolver(credentials),
        )
        return AsyncSageMakerRuntimeHTTP2Client(config=config)

    async def _acquire(self) -> Any:
        """The SDK client for this event loop; streams open at the same time share its
        HTTP/2 connection. Paired with :meth:`_release`."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if self._client is not None and self._client_loop is not loop:
                # Made on a loop that has ended: it can be neither used nor closed from here.
                self._client, self._users = None, 0
            if self._client is None:
                self._client = await self._new_client()
                self._client_loop = loop
            self._users += 1
            return self._client

    async def _release(self, client: Any) -> None:
        """One stream is done with ``client``; the last one closes its connection, so a
        process that only ever opens streams (the CLI) leaves nothing open behind it."""
        assert self._lock is not None
        async with self._lock:
            if client is self._client:
                self._users -= 1
                if self._users > 0:
                    return
                self._client = None
        with contextlib.suppress(Exception):
            await client.close()

    async def open(
        self, *, partials: bool = False, options: SessionOptions = NO_OPTIONS
    ) -> SageMakerStream:
        """Start a stream: invoke the endpoint, choose the model (and ``options``), start
        generation. Refused options arrive as :class:`InvalidOption` from the stream."""
        from aws_sdk_sagemaker_runtime_http2.models import (
            InvokeEndpointWithBidirectionalStreamInput,
        )

        label = f"sm-{uuid.uuid4().hex[:12]}"
        try:
            client = await self._acquire()
        except Exception as exc:
            raise self._map(exc) from None
        try:
            duplex = await client.invoke_endpoint_with_bidirectional_stream(
                InvokeEndpointWithBidirectionalStreamInput(endpoint_name=self.endpoint)
            )
        except BaseException as exc:
            await self._release(client)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._map(exc) from None
        stream = SageMakerStream(self, client, duplex, label)
        await stream._start(
            SessionUpdate(
                model=self.model,
                partials=partials,
                language=options.language,
                prompt=options.prompt,
                context=options.context,
            )
        )
        return stream

    async def _tls_problem(self) -> str | None:
        """Why TLS with the endpoint fails, if its certificate is not trusted; else None.

        The same trust as the SDK's transport: ``ca_bundle`` alone when set, else the system
        store. Any other outcome (refused, slow, fine) is left to the call itself to report.
        """
        import ssl
        from urllib.parse import urlsplit

        parts = urlsplit(str(self.endpoint_url))
        host, port = parts.hostname or "", parts.port or 443
        try:
            context = ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            return f"Cannot read the CA bundle {self.ca_bundle}: {exc}"
        context.set_alpn_protocols(["h2"])
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host
                )
        except ssl.SSLCertVerificationError as exc:
            hint = (
                f"AWS_CA_BUNDLE={self.ca_bundle} does not sign it"
                if self.ca_bundle
                else "for a private front, set AWS_CA_BUNDLE (or --ca-bundle) to its CA certificate"
            )
            return (
                f"TLS with {self.endpoint_url} failed: its certificate is not trusted "
                f"({exc.verify_message}); {hint}."
            )
        except (OSError, TimeoutError, ssl.SSLError):
            return None
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return None

    def _map(self, exc: BaseException) -> BackendError:
        return map_error(
            exc,
            endpoint=self.endpoint,
            region=str(self.region),
            url=str(self.endpoint_url),
        )

    async def aclose(self) -> None:
        """Close the pooled connection now (open streams end with it)."""
        client, self._client, self._users = self._client, None, 0
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


class SageMakerStream:
    """One live transcription over one ``InvokeEndpointWithBidirectionalStream`` call."""

    def __init__(self, backend: SageMakerBackend, client: Any, duplex: Any, label: str) -> None:
        self._backend = backend
        self._client: Any = client
        self._duplex = duplex
        self._input = duplex.input_stream
        self._provider: Any = getattr(self._input, "_writer", None)
        self.session_id = label
        self._log = logging.LoggerAdapter(log, {"session_id": label})
        self._events: asyncio.Queue[ServerEvent | BackendError | None] = asyncio.Queue(
            EVENT_QUEUE_SIZE
        )
        self._failed: asyncio.Future[BackendError] = asyncio.get_running_loop().create_future()
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._done = False
        self._finished = False
        self._closed = False
        self._input_closed = False
        self._shutdown_task: asyncio.Future[None] | None = None
        self.expires_in: float | None = None
        self.extensions: tuple[str, ...] = ()
        """None negotiated: the endpoint's ``session.created`` arrives after audio may have
        been sent, so nothing that needs the server's consent is asked of it."""
        """Seconds the container's session may last, as its server announced it."""

    # ------------------------------------------------------------------ opening

    async def _start(self, update: SessionUpdate) -> None:
        """Send the opening events while waiting for the response, within the connect timeout.

        Whichever fails first, the response's error is the one reported when there is one: a
        refused or rejected call also breaks the sends, but only the response says why. When
        no answer has come after :data:`TLS_PROBE_AFTER` seconds, the certificate is checked
        on the side: awscrt's TLS reports an untrusted certificate only after a long delay.
        """
        sends = asyncio.ensure_future(self._send_unraced(update, InputAudioBufferCommit()))
        output = asyncio.ensure_future(self._duplex.await_output())
        backend = self._backend
        try:
            async with asyncio.timeout(backend.connect_timeout):
                first = {sends, output}
                await asyncio.wait(
                    first, timeout=TLS_PROBE_AFTER, return_when=asyncio.FIRST_EXCEPTION
                )
                if not output.done() and (problem := await backend._tls_problem()):
                    raise BackendUnavailable(problem)
                await asyncio.wait(first, return_when=asyncio.FIRST_EXCEPTION)
                if sends.done() and sends.exception() is not None and not output.done():
                    await asyncio.wait({output})
                _, receiver = await output
                await sends
        except TimeoutError:
            await self._abandon(sends, output)
            raise BackendUnavailable(
                f"No answer from {backend.endpoint_url} for {backend._where()} within "
                f"{backend.connect_timeout:g} s."
            ) from None
        except BaseException as exc:
            await self._abandon(sends, output)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise backend._map(exc) from None
        self._reader = asyncio.create_task(self._read(receiver), name=f"{self.session_id}-reader")
        self._log.info("[%s] stream open on %s", self.session_id, backend.name)

    async def _abandon(self, sends: asyncio.Future[Any], output: asyncio.Future[Any]) -> None:
        """Give up on a stream that did not open, releasing what it holds."""
        sends.cancel()
        with contextlib.suppress(BaseException):
            await sends
        if not output.done():
            # Cancelling the SDK's call is safe (see sagemaker_transport); its outcome is only
            # collected, so that nothing is reported about it later.
            from components.backends.sagemaker.transport import collect

            output.add_done_callback(collect)
            output.cancel()
        await self._close_input(graceful=False)
        self._closed = True
        await self._release()

    async def _release(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._backend._release(client)

    # ------------------------------------------------------------------ sending

    def _payload(self, event: protocol.ClientEvent) -> Any:
        from aws_sdk_sagemaker_runtime_http2.models import (
            RequestPayloadPart,
            RequestStreamEventPayloadPart,
        )

        data = protocol.serialize(event).encode()
        return RequestStreamEventPayloadPart(
            value=RequestPayloadPart(bytes_=data, data_type="UTF8")
        )

    async def _send_unraced(self, *events: protocol.ClientEvent) -> None:
        async with self._send_lock:
            for event in events:
                await self._input.send(self._payload(event))

    async def _send(self, event: protocol.ClientEvent) -> None:
        if self._failed.done():
            raise self._failed.result()
        if self._closed or self._input_closed:
            raise ConnectionLost(f"The stream to {self._backend._where()} is closed.")
        payload = self._payload(event)
        async with self._send_lock:
            if self._writer_has_room():
                # Nothing to wait for: the SDK signs and queues the event at once.
                try:
                    await self._input.send(payload)
                except Exception as exc:
                    if self._failed.done():
                        raise self._failed.result() from None
                    raise self._backend._map(exc) from None
                return
            send = asyncio.ensure_future(self._input.send(payload))
            await asyncio.wait({send, self._failed}, return_when=asyncio.FIRST_COMPLETED)
            if not send.done():
                send.cancel()
                with contextlib.suppress(BaseException):
                    await send
                raise self._failed.result()
            try:
                send.result()
            except Exception as exc:
                if self._failed.done():
                    raise self._failed.result() from None
                raise self._backend._map(exc) from None

    def _writer_has_room(self) -> bool:
        """True when the request body's buffer can take an event without waiting.

        The SDK queues signed events in a bounded buffer that awscrt drains; a send blocks
        only when it is full (a stalled or broken connection), and only then is it raced
        against the stream's failure, which costs a task and two turns of the loop.
        """
        provider = self._provider
        try:
            return len(provider._data) < provider._max_buffered_chunks - 1 and not (
                provider._closed or provider._closing or provider._flushing
            )
        except AttributeError:
            return False

    async def send_audio(self, pcm16: bytes) -> None:
        """Send PCM16 16 kHz mono audio (any length that is a whole number of samples)."""
        if self._finished:
            raise RuntimeError("send_audio() after finish()")
        if pcm16:
            await self._send(InputAudioBufferAppend(audio=pcm16))

    async def finish(self) -> None:
        """Final commit: the engine flushes what remains and answers ``transcription.done``."""
        if self._finished:
            return
        self._finished = True
        await self._send(InputAudioBufferCommit(final=True))

    # ------------------------------------------------------------------ receiving

    async def _read(self, receiver: Any) -> None:
        """Decode response events into protocol events until the stream ends."""
        from aws_sdk_sagemaker_runtime_http2.models import ResponseStreamEventPayloadPart

        pending = bytearray()
        failure: BackendError | None = None
        try:
            while True:
                item = await receiver.receive()  # safe to cancel (see sagemaker_transport)
                if item is None:
                    if not self._done:
                        failure = ConnectionLost(
                            f"The stream to {self._backend._where()} ended before the "
                            "transcript was complete."
                        )
                    return
                if not isinstance(item, ResponseStreamEventPayloadPart):
                    self._log.debug("[%s] ignoring %s", self.session_id, type(item).__name__)
                    continue
                part = item.value
                data = part.bytes_ or b""
                if part.completion_state == "PARTIAL":
                    pending += data
                    continue
                if pending:
                    data, pending = bytes(pending + data), bytearray()
                try:
                    event = protocol.parse_server_event(data)
                except protocol.ProtocolError as exc:
                    self._log.warning("[%s] unreadable event: %s", self.session_id, exc.message)
                    continue
                if isinstance(event, SessionCreated):
                    self._log.info("[%s] server session %s", self.session_id, event.id)
                    if event.expires_at is not None and event.created:
                        self.expires_in = float(event.expires_at - event.created)
                    self._log = logging.LoggerAdapter(log, {"session_id": event.id})
                    self.session_id = event.id
                    continue
                await self._events.put(event)
                if isinstance(event, TranscriptionDone):
                    # The transcript is complete: end the request, so that the endpoint ends
                    # the response (read on to its end) whether or not anyone iterates further.
                    self._done = True
                    await self._close_input(graceful=True)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if not self._done and not self._closed:
                failure = self._backend._map(exc)
        finally:
            if failure is not None:
                failure = self._fail(failure)
                with contextlib.suppress(asyncio.QueueFull):
                    self._events.put_nowait(failure)

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self._iterate()

    def _fail(self, error: BackendError) -> BackendError:
        """Remember the first failure: later sends and reads raise that one, not a symptom."""
        if not self._failed.done():
            self._failed.set_result(error)
            self._log.info("[%s] stream failed: %s", self.session_id, error)
        return self._failed.result()

    async def _iterate(self) -> AsyncIterator[ServerEvent]:
        while True:
            if self._closed and self._events.empty():
                return
            item = await self._events.get()
            if item is None:
                return
            if isinstance(item, BackendError):
                error = self._fail(item)
                await self.cancel()
                raise error
            if isinstance(item, ErrorEvent):
                ending = session_error(item, where=self._backend._where())
                if ending is not None:
                    error = self._fail(ending)
                    await self.cancel()
                    raise error
                self._log.info("[%s] server error %s: %s", self.session_id, item.code, item.error)
            yield item
            if isinstance(item, TranscriptionDone):
                await self._end()
                return

    # ------------------------------------------------------------------ closing

    async def _close_input(self, *, graceful: bool) -> None:
        """End the request body (a signed empty event, then END_STREAM)."""
        if self._input_closed:
            return
        self._input_closed = True
        provider = getattr(self._input, "_writer", None)
        if graceful:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._input.close()
                return
            except BaseException:  # a dead connection never drains: drop what is buffered
                pass
        close = getattr(provider, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close(flush=False)

    async def _end(self) -> None:
        """After ``done``: let the response finish (bounded), then release the connection."""
        await self._shutdown(patient=True)
        self._log.info("[%s] stream closed", self.session_id)

    async def cancel(self) -> None:
        """Stop at once and release everything; safe to call any number of times."""
        await self._shutdown(patient=self._done)

    async def _shutdown(self, *, patient: bool) -> None:
        """Release the stream once; concurrent callers all wait for that one release."""
        if self._shutdown_task is None:
            self._closed = True
            self._shutdown_task = asyncio.ensure_future(self._release_all(patient))
        await asyncio.shield(self._shutdown_task)

    async def _release_all(self, patient: bool) -> None:
        reader = self._reader
        if reader is not None and not reader.done() and patient:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.shield(reader)
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        await self._close_input(graceful=True)
        await self._release()
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)  # wakes an iteration waiting in another task
        if not patient:
            self._log.info("[%s] stream cancelled", self.session_id)
