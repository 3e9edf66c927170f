"""``python -m components.aws.local_front``: run the front and print how to use it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import tempfile
from pathlib import Path

from components.aws.local_front.constants import DEFAULT_MAX_STREAM_SECONDS
from components.aws.local_front.serving import LocalSageMaker
from components.aws.local_front.sigv4 import Credentials

log = logging.getLogger("components.aws.local_front")


def instructions(endpoint_url: str, ca_bundle: str, creds: Credentials, region: str) -> str:
    """The block printed at start: environment for the client and a command to paste."""
    lines = [
        f"export SAGEMAKER_ENDPOINT_URL={endpoint_url}",
        f"export AWS_CA_BUNDLE={ca_bundle}",
        f"export AWS_ACCESS_KEY_ID={creds.access_key}",
        f"export AWS_SECRET_ACCESS_KEY={creds.secret_key}",
    ]
    lines.append(
        f"export AWS_SESSION_TOKEN={creds.session_token}"
        if creds.session_token
        else "unset AWS_SESSION_TOKEN AWS_PROFILE"
    )
    lines.append(f"export AWS_REGION={region}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.aws.local_front",
        description="A local stand-in for SageMaker AI's bidirectional-stream router, "
        "in front of one container (HTTP/2 over TLS, SigV4, event-stream framing).",
    )
    parser.add_argument(
        "--container",
        default="http://127.0.0.1:8080",
        help="the container's base URL (default %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=8443,
        help="port to bind; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        help="endpoint name to accept (repeatable; default live-captions)",
    )
    parser.add_argument(
        "--access-key",
        default=os.environ.get("LOCAL_SAGEMAKER_ACCESS_KEY"),
        help="access key id to accept (default: a generated one)",
    )
    parser.add_argument(
        "--secret-key",
        default=os.environ.get("LOCAL_SAGEMAKER_SECRET_KEY"),
        help="secret access key to accept (default: a generated one)",
    )
    parser.add_argument("--session-token", default=None, help="session token to require")
    parser.add_argument(
        "--region",
        default="us-east-1",
        help="region to suggest to the client (any region is accepted)",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="where to write the CA and server certificate (default: a new temporary directory)",
    )
    parser.add_argument(
        "--max-stream-seconds",
        type=float,
        default=DEFAULT_MAX_STREAM_SECONDS,
        metavar="S",
        help="end each stream after S seconds, as SageMaker does after 30 minutes "
        "(default %(default)g)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.max_stream_seconds <= 0:
        parser.error("--max-stream-seconds must be positive")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    endpoints = args.endpoint or ["live-captions"]
    creds = Credentials(
        access_key=args.access_key or "AKIALOCAL" + secrets.token_hex(6).upper(),
        secret_key=args.secret_key or secrets.token_urlsafe(30),
        session_token=args.session_token,
    )
    tls_dir = args.tls_dir or Path(tempfile.mkdtemp(prefix="local-sagemaker-"))
    front = LocalSageMaker(
        args.container,
        endpoints,
        [creds],
        host=args.host,
        port=args.port,
        tls_dir=tls_dir,
        max_stream_seconds=args.max_stream_seconds,
    )

    async def run() -> int:
        try:
            await front.__aenter__()
        except OSError as exc:
            print(
                f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        try:
            text = (
                f"Local SageMaker front (a stand-in for AWS's router) on {front.endpoint_url}\n"
                f"endpoints: {', '.join(endpoints)} -> container {args.container}\n"
                f"TLS files (CA to trust, server certificate): {tls_dir}\n\n"
                "Point the client at it:\n\n"
                + instructions(front.endpoint_url, front.ca_bundle, creds, args.region)
                + "\n\nThen, for example:\n\n"
                f"  python -m components transcribe FILE.wav --backend sagemaker "
                f"--endpoint {endpoints[0]}\n"
            )
            with contextlib.suppress(OSError):  # whoever started us may stop reading
                sys.stdout.write(text)
                sys.stdout.flush()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for name in ("SIGINT", "SIGTERM"):
                with contextlib.suppress(NotImplementedError, AttributeError):
                    loop.add_signal_handler(getattr(signal, name), stop.set)
            await stop.wait()
        finally:
            await front.__aexit__(None, None, None)
        return 0

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
