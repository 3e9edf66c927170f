"""The awscrt HTTP/2 transport of the SageMaker client, made safe to abandon and to share.

smithy-http's ``AWSCRTHTTPClient`` is the only SDK transport that streams both ways. Five things
about it matter for a client that opens many long streams and must shut down quietly:

* Its TLS context trusts the system store only; a private front's CA is installed with awscrt's
  ``override_default_trust_store_from_path``.
* The SDK deep-copies its configuration, and the transport's copy would come back with default
  TLS and a pool of its own: here the copy is the transport itself.
* awscrt resolves its futures from its own thread. Awaiting them through
  ``asyncio.wrap_future`` means that cancelling the waiter (a timeout, a cancelled stream, the
  end of ``asyncio.run``) cancels awscrt's future, and awscrt later fails to complete it
  (``InvalidStateError`` printed from its thread). Connection setup, the response head and
  every body chunk are therefore awaited through :func:`crt_result`, which never cancels
  awscrt's side: a stream reader can be cancelled at any time.
* awscrt leaves Nagle's algorithm on (see :func:`set_nodelay_to_port`).
* awscrt writes each request body in a task nobody awaits; when a server completes the stream
  first, that task's last write fails. Its outcome is collected instead of printed at exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from awscrt import io as crt_io
from awscrt.aio.http import AIOHttpClientConnectionUnified
from smithy_http import Field, Fields
from smithy_http.aio.crt import AWSCRTHTTPClient, AWSCRTHTTPClientConfig, AWSCRTHTTPResponse

log = logging.getLogger("components.backends.sagemaker.client")


def collect(task: asyncio.Future[Any]) -> None:
    """Done-callback retrieving a background task's outcome (logged at debug level only)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("background SDK task ended with %r", task.exception())


async def crt_result(future: concurrent.futures.Future[Any]) -> Any:
    """Await an awscrt future without ever cancelling it.

    When the waiter is cancelled, awscrt still completes its future; a connection that arrives
    for nobody is closed.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def transfer(done: concurrent.futures.Future[Any]) -> None:
        error = done.exception()
        if not waiter.cancelled():
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(done.result())
            return
        if error is None and isinstance(done.result(), AIOHttpClientConnectionUnified):
            loop.create_task(done.result().close()).add_done_callback(collect)

    def on_done(done: concurrent.futures.Future[Any]) -> None:  # runs in awscrt's thread
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(transfer, done)

    future.add_done_callback(on_done)
    return await waiter


def set_nodelay_to_port(port: int) -> int:
    """Turn off Nagle's algorithm on this process's TCP sockets connected to ``port``.

    awscrt does not set ``TCP_NODELAY`` and offers no option to. On an HTTP/2 stream carrying
    small events both ways, the client's next DATA frame then waits behind its own unacknowledged
    WINDOW_UPDATE until the peer's delayed ACK (about 40 ms). The socket is found through
    ``/proc/self/fd`` (Linux; elsewhere nothing happens) by its peer port; setting the option on
    another socket to the same port is harmless. Returns how many sockets were set.
    """
    done = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for name in names:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            dup = socket.socket(fileno=os.dup(int(name)))
        except (OSError, ValueError):
            continue
        with dup:
            try:
                if dup.type != socket.SOCK_STREAM or dup.family not in (
                    socket.AF_INET,
                    socket.AF_INET6,
                ):
                    continue
                if dup.getpeername()[1] != port:
                    continue
                dup.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                done += 1
            except OSError:
                continue
    return done


class _Response(AWSCRTHTTPResponse):
    """The response, its body read without cancelling awscrt's chunk futures."""

    async def chunks(self) -> AsyncIterator[bytes]:
        stream = self._stream
        lock = getattr(stream, "_deque_lock", None)
        if lock is None:  # another awscrt: its own reader
            async for chunk in super().chunks():
                yield chunk
            return
        while True:
            # The same bookkeeping as awscrt's get_next_response_chunk, awaited safely.
            with lock:
                if stream._received_chunks:
                    chunk = stream._received_chunks.popleft()
                    future = None
                elif stream._completion_future.done() or stream._remote_completion_future.done():
                    return
                else:
                    future = concurrent.futures.Future()
                    stream._chunk_futures.append(future)
            if future is not None:
                chunk = await crt_result(future)
            if not chunk:
                return
            yield chunk


class SageMakerTransport(AWSCRTHTTPClient):
    """``AWSCRTHTTPClient`` trusting ``ca_bundle``, HTTP/2 only, shared, safe to abandon."""

    def __init__(self, ca_bundle: str | None, connect_timeout: float) -> None:
        super().__init__(client_config=AWSCRTHTTPClientConfig(force_http_2=True))
        options = crt_io.TlsContextOptions()
        if ca_bundle:
            options.override_default_trust_store_from_path(ca_filepath=ca_bundle)
        self._tls_ctx = crt_io.ClientTlsContext(options)
        self._socket_options.connect_timeout_ms = max(1, int(connect_timeout * 1000))
        self._connect_lock: asyncio.Lock | None = None

    def __deepcopy__(self, memo: Any) -> SageMakerTransport:
        return self

    async def _get_connection(self, url: Any) -> Any:
        # Concurrent first calls would each open a connection and leak all but one.
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            connection = await super()._get_connection(url)
        if self._closed:  # closed while connecting (a stream gave up): do not keep it
            self._connections.clear()
            await connection.close()
            raise ConnectionError("the SageMaker client was closed")
        return connection

    async def _build_new_connection(self, url: Any) -> Any:
        generic_new = getattr(AIOHttpClientConnectionUnified, "_generic_new", None)
        if url.scheme != "https" or generic_new is None:
            return await super()._build_new_connection(url)
        tls = self._tls_ctx.new_connection_options()
        tls.set_server_name(url.host)
        tls.set_alpn_list(["h2"])
        port = url.port or self._HTTPS_PORT
        future = generic_new(
            url.host,
            port,
            self._client_bootstrap,
            self._socket_options,
            tls,
            None,
            asyncio_connection=True,
        )
        connection = await crt_result(future)
        set_nodelay_to_port(port)
        return connection

    async def _await_response(self, stream: Any) -> AWSCRTHTTPResponse:
        writer = getattr(stream, "_writer", None)
        if writer is not None:
            writer.add_done_callback(collect)
        status_future = getattr(stream, "_response_status_future", None)
        headers_future = getattr(stream, "_response_headers_future", None)
        if status_future is None or headers_future is None:
            return await super()._await_response(stream)
        status = await crt_result(status_future)
        fields = Fields()
        for name, value in await crt_result(headers_future):
            try:
                fields[name].add(value)
            except KeyError:
                fields[name] = Field(name=name, values=[value], kind="header")
        return _Response(status=status, fields=fields, stream=stream)
