"""The one place a backend is built from what a user chose (on the page or the command line).

Callers own what lives longer than one backend: the page shares one engine among its
sessions and keeps one SageMaker backend per endpoint (its HTTP/2 connection pool); the CLI
makes one of each. What kind of backend a choice makes, and with which arguments, is here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from components.backends.base import Backend
from components.engines.base import Engine


class Kind(StrEnum):
    LOCAL = "local"
    WEBSOCKET = "websocket"
    SAGEMAKER = "sagemaker"


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """What a backend needs to be built; fields that do not apply to ``kind`` stay None."""

    kind: Kind
    url: str | None = None
    """websocket: the server's address (``ws(s)://`` or ``http(s)://``)."""
    endpoint: str | None = None
    """sagemaker: the endpoint's name."""
    region: str | None = None
    endpoint_url: str | None = None
    """sagemaker: another HTTP/2 front than AWS's (the local front, a proxy)."""
    ca_bundle: str | None = None
    model: str | None = None
    """The model id named in ``session.update`` (websocket, sagemaker)."""
    api_key: str | None = None
    """websocket: sent as ``Authorization: Bearer``."""


def build_backend(spec: BackendSpec, engine: Engine | None = None) -> Backend:
    """A new backend for ``spec`` (``engine``: the in-process engine, for ``local``).

    Raises ValueError with a sentence naming what is wrong with the choice.
    """
    if spec.kind is Kind.LOCAL:
        if engine is None:
            raise ValueError("the local backend needs an engine")
        from components.backends.local import LocalBackend

        return LocalBackend(engine)
    if spec.kind is Kind.SAGEMAKER:
        if not spec.endpoint:
            raise ValueError("a SageMaker backend needs an endpoint name")
        from components.backends.sagemaker.client import SageMakerBackend

        return SageMakerBackend(
            spec.endpoint,
            spec.region,
            endpoint_url=spec.endpoint_url,
            model=spec.model,
            ca_bundle=spec.ca_bundle,
        )
    if not spec.url:
        raise ValueError("a realtime server backend needs a URL")
    from components.backends.websocket import RealtimeWSBackend

    return RealtimeWSBackend(spec.url, model=spec.model, api_key=spec.api_key)
