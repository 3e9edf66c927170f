"""Serving the router: TLS files for a local CA, the listening socket, Hypercorn, and a
tolerance the HTTP/2 stack needs for a client that keeps sending after the answer."""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.aws.local_front.app import LocalSageMakerApp, quietly
from components.aws.local_front.constants import DEFAULT_MAX_STREAM_SECONDS
from components.aws.local_front.sigv4 import Credentials


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The generated local CA (to trust) and the server's certificate chain + key."""

    directory: Path
    ca_cert: Path
    server_pem: Path


def make_tls_files(directory: Path) -> TLSFiles:
    """Generate a throwaway CA and a certificate for 127.0.0.1 / localhost (trustme)."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    files = TLSFiles(directory, directory / "ca.pem", directory / "server.pem")
    ca.cert_pem.write_to_path(str(files.ca_cert))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files.server_pem))
    return files


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port`` 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # accepted sockets inherit this one's protocol (Nagle would hold small frames ~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def tolerate_request_data_after_response() -> None:
    """Make Hypercorn ignore request DATA that arrives after its response has ended.

    HTTP/2 lets a server answer in full before the request body ends (RFC 9113 8.1): an error
    answered at once, or a stream that ends when the container closes, while the client is
    still sending. Hypercorn 0.18 forgets the stream when its response ends and then fails on
    the next DATA frame for it (``KeyError`` in ``H2Protocol._handle_events``), tearing down the
    whole connection and every other stream multiplexed on it. Such frames are acknowledged
    for flow control and dropped instead, which is what the RFC expects of a server.
    """
    import h2.events
    from hypercorn.protocol.h2 import H2Protocol

    original = H2Protocol._handle_events
    if getattr(original, "__local_sagemaker__", False):
        return

    async def handle_events(self: H2Protocol, events: list[h2.events.Event]) -> None:
        # One event at a time: a stream only exists once its RequestReceived is handled, and
        # its first DATA often arrives in the same batch.
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
                continue
            await original(self, [event])

    handle_events.__local_sagemaker__ = True  # type: ignore[attr-defined]
    H2Protocol._handle_events = handle_events  # type: ignore[method-assign]


class LocalSageMaker:
    """Runs the front in the current event loop (``async with``), for tests and benchmarks.

    Attributes after entering: ``endpoint_url`` (``https://127.0.0.1:PORT``), ``ca_bundle``.
    """

    def __init__(
        self,
        container_url: str,
        endpoints: list[str],
        credentials: list[Credentials],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_dir: Path | None = None,
        max_stream_seconds: float = DEFAULT_MAX_STREAM_SECONDS,
    ) -> None:
        self.app = LocalSageMakerApp(
            container_url, endpoints, credentials, max_stream_seconds=max_stream_seconds
        )
        self.host = host
        self.port = port
        self._tls_dir = tls_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.tls: TLSFiles | None = None
        self.endpoint_url = ""
        self.ca_bundle = ""

    async def __aenter__(self) -> LocalSageMaker:
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.config import Config, Sockets
        from hypercorn.utils import wrap_app

        tolerate_request_data_after_response()
        directory = self._tls_dir
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="local-sagemaker-")
            directory = Path(self._tmp.name)
        self.tls = make_tls_files(directory)
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = Config()
        config.certfile = str(self.tls.server_pem)
        config.keyfile = str(self.tls.server_pem)
        config.alpn_protocols = ["h2"]
        config.accesslog = None
        config.errorlog = logging.getLogger("components.aws.local_front.hypercorn")
        config.keep_alive_timeout = 75
        config.graceful_timeout = 2
        config.h2_max_concurrent_streams = 256
        self._stop.clear()
        self._task = asyncio.create_task(
            worker_serve(
                wrap_app(self.app, config.wsgi_max_body_size, "asgi"),
                config,
                sockets=Sockets([sock], [], []),
                shutdown_trigger=self._stop.wait,
            )
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.endpoint_url = f"https://{host}:{self.port}"
        self.ca_bundle = str(self.tls.ca_cert)
        # The socket already listens: connections queue in its backlog until Hypercorn accepts.
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                await quietly(self._task)
            self._task = None
        await self.app.aclose()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
