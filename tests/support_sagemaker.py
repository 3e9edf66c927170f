"""Run the SageMaker path on one machine for tests: the container and the local front.

AWS's router cannot run here, so ``components.aws.local_front`` stands in for it (HTTP/2 + TLS,
SigV4, event-stream framing); everything behind it is the real container.

    from tests.support_sagemaker import running_container, running_front

    with running_container() as container, running_front(container) as front:
        front.endpoint_url      # "https://127.0.0.1:PORT"
        front.client_env()      # env for a client process: endpoint URL, CA, credentials, region
        with front.environ():   # the same, applied to os.environ for this process
            backend = front.backend()          # a SageMakerBackend aimed at the front

    sagemaker = sagemaker_fixture()            # module-scoped fixture: container + front

``running_container`` starts ``container/serve`` (``ENGINE=whisper`` by default: the embedded
CPU engine behind the bridge) on free ports, serving the model as ``live-captions`` (the
client's default), and waits for the bridge's ``/ping`` to answer 200. ``running_front``
starts ``python -m components.aws.local_front --port 0`` and reads the address, CA and
credentials from what it prints. Both are stopped (SIGTERM, then SIGKILL) on exit and their
output is kept in a log whose tail is shown when they fail to start.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support_server import (
    REPO_ROOT,
    answers_200,
    free_port,
    log_tail,
    start_logged,
    stop_process,
    wait_ready,
)

ENDPOINT = "live-captions"
REGION = "us-east-1"
ACCESS_KEY = "AKIALOCALTESTKEY0001"
SECRET_KEY = "local-test-secret-not-an-aws-key"
SERVED_MODEL = "live-captions"
START_TIMEOUT = 180.0


@dataclass
class Container:
    """A running ``container/serve``: the bridge's URL, its engine's port, its log."""

    url: str
    upstream_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def running_container(
    *, engine: str = "whisper", env: Mapping[str, str] | None = None, timeout: float = START_TIMEOUT
) -> Iterator[Container]:
    """Start ``container/serve`` on free ports; yield it once ``/ping`` answers 200; stop it."""
    bridge_port, upstream_port = free_port(), free_port()
    while upstream_port == bridge_port:
        upstream_port = free_port()
    full_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "ENGINE": engine,
        "BRIDGE_PORT": str(bridge_port),
        "UPSTREAM_PORT": str(upstream_port),
        "SERVED_MODEL_NAME": SERVED_MODEL,
        **(env or {}),
    }
    process, log_path = start_logged(
        [sys.executable, str(REPO_ROOT / "container" / "serve")],
        log_prefix="live-captions-container-",
        env=full_env,
    )
    try:
        url = f"http://127.0.0.1:{bridge_port}"
        wait_ready(
            lambda: answers_200(f"{url}/ping", timeout=2.0),
            process,
            log_path,
            what="container/serve",
            timeout=timeout,
            every=0.2,
            lines=40,
        )
        yield Container(url, upstream_port, process, log_path)
    finally:
        stop_process(process, timeout=20)
        log_path.unlink(missing_ok=True)


@dataclass
class Front:
    """A running local SageMaker front (the stand-in for AWS's router)."""

    endpoint_url: str
    ca_bundle: str
    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    output: list[str] = field(default_factory=list)

    def client_env(self) -> dict[str, str]:
        """What a client process needs to reach this front (and nothing of a real AWS setup)."""
        return {
            "SAGEMAKER_ENDPOINT_URL": self.endpoint_url,
            "AWS_CA_BUNDLE": self.ca_bundle,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    @contextlib.contextmanager
    def environ(self, **overrides: str | None) -> Iterator[None]:
        """Apply :meth:`client_env` (plus ``overrides``; None removes) to ``os.environ``."""
        values: dict[str, str | None] = {
            **self.client_env(),
            "AWS_PROFILE": None,
            "AWS_SESSION_TOKEN": None,
            "AWS_DEFAULT_REGION": None,
            **overrides,
        }
        with pytest.MonkeyPatch.context() as mp:
            for name, value in values.items():
                if value is None:
                    mp.delenv(name, raising=False)
                else:
                    mp.setenv(name, value)
            yield

    def backend(self, **kwargs: Any) -> Any:
        """A ``SageMakerBackend`` for this front (credentials from the environment)."""
        from components.backends.sagemaker.client import SageMakerBackend

        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "ca_bundle": self.ca_bundle,
            **kwargs,
        }
        return SageMakerBackend(options.pop("endpoint", self.endpoint), self.region, **options)

    def log_text(self) -> str:
        if self.log_path is None:
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


_EXPORT = re.compile(r"^export (\w+)=(.*)$")


@contextlib.contextmanager
def running_front(
    container: Container | str,
    *,
    endpoint: str = ENDPOINT,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    timeout: float = 30.0,
    args: Sequence[str] = (),
) -> Iterator[Front]:
    """Start ``python -m components.aws.local_front`` on a free port in front of ``container``."""
    container_url = container.url if isinstance(container, Container) else container
    tls_dir = tempfile.TemporaryDirectory(prefix="local-sagemaker-test-")
    command = [
        sys.executable,
        "-m",
        "components.aws.local_front",
        "--container",
        container_url,
        "--port",
        "0",
        "--endpoint",
        endpoint,
        "--tls-dir",
        tls_dir.name,
        "--region",
        REGION,
        *args,
    ]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "LOCAL_SAGEMAKER_ACCESS_KEY": access_key,
        "LOCAL_SAGEMAKER_SECRET_KEY": secret_key,
    }
    process, log_path = start_logged(
        command, log_prefix="local-sagemaker-", env=env, pipe_stdout=True
    )
    exports: dict[str, str] = {}
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            output.append(line)
            if m := _EXPORT.match(line):
                exports[m[1]] = m[2]
            if line.startswith("Then, for example"):
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout) or "SAGEMAKER_ENDPOINT_URL" not in exports:
            raise RuntimeError(
                "the local SageMaker front did not start:\n"
                + "\n".join(output[-20:])
                + "\n"
                + log_tail(log_path, 40)
            )
        yield Front(
            endpoint_url=exports["SAGEMAKER_ENDPOINT_URL"],
            ca_bundle=exports["AWS_CA_BUNDLE"],
            endpoint=endpoint,
            access_key=exports["AWS_ACCESS_KEY_ID"],
            secret_key=exports["AWS_SECRET_ACCESS_KEY"],
            region=exports.get("AWS_REGION", REGION),
            process=process,
            log_path=log_path,
            output=output,
        )
    finally:
        stop_process(process)
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
        log_path.unlink(missing_ok=True)
        tls_dir.cleanup()


@dataclass
class SageMakerSetup:
    """What :func:`sagemaker_fixture` yields."""

    container: Container
    front: Front


def sagemaker_fixture(
    *,
    scope: Any = "module",
    env: Mapping[str, str] | None = None,
    front_args: Sequence[str] = (),
) -> Callable[..., Any]:
    """A pytest fixture (module-scoped by default): ``container/serve`` with the front before it."""

    @pytest.fixture(scope=scope)
    def _sagemaker() -> Iterator[SageMakerSetup]:
        with (
            running_container(env=env) as container,
            running_front(container, args=front_args) as front,
        ):
            yield SageMakerSetup(container, front)

    return _sagemaker
