"""A local stand-in for SageMaker AI's router in front of one bidirectional-streaming container.

AWS's own service cannot run on this machine, so this module does, for one container, what the
SageMaker runtime does for ``InvokeEndpointWithBidirectionalStream``: it lets the real AWS SDK
(``aws-sdk-sagemaker-runtime-http2`` over awscrt, HTTP/2 + TLS) talk to the container exactly as
it would on AWS, so the whole path — client, event-stream framing, SigV4, the container's
WebSocket — can be tried and tested on one machine before anything is deployed.

What it does, as the service does:

* ``POST /endpoints/{name}/invocations-bidirectional-stream`` over HTTP/2 with TLS (Hypercorn).
* SigV4: the request's ``Authorization`` signature is checked against the configured
  credentials, and so is every event's ``:chunk-signature`` in the chain; failures answer 403
  with the service's error shape, so the SDK raises what it raises on AWS.
* An unknown endpoint answers 400 ``InputValidationError``; an unhealthy container (``/ping``)
  503 ``ServiceUnavailableError``; a container that refuses the WebSocket 424 ``ModelError``.
* Each ``PayloadPart`` becomes exactly one WebSocket frame to the container's
  ``/invocations-bidirectional-stream`` (or ``X-Amzn-SageMaker-Model-Invocation-Path``):
  UTF8 -> text, BINARY/absent -> binary, PARTIAL...COMPLETE -> one fragmented message.
  Frames from the container come back the same way, one ``PayloadPart`` each.
* A close from the container reaches the client as a ``ModelStreamError`` event carrying the
  close code (``ErrorCode``) and reason (``Message``).

Run ``python -m components.aws.local_front --container http://127.0.0.1:8080`` and it prints how
to point the client at it.

The package, one module per idea: ``constants`` (the service's routes, limits and timeouts),
``errors`` (its error answers), ``sigv4`` (request and event signatures), ``eventstream``
(framing), ``app`` (the router), ``serving`` (TLS, socket, Hypercorn) and ``cli``.
"""

from components.aws.local_front.errors import ServiceError
from components.aws.local_front.eventstream import EventStreamBuffer, decode_event
from components.aws.local_front.serving import LocalSageMaker
from components.aws.local_front.sigv4 import (
    ChunkChain,
    ChunkSignatureError,
    Credentials,
    SignedRequest,
    verify_request,
)

__all__ = [
    "ChunkChain",
    "ChunkSignatureError",
    "Credentials",
    "EventStreamBuffer",
    "LocalSageMaker",
    "ServiceError",
    "SignedRequest",
    "decode_event",
    "verify_request",
]
