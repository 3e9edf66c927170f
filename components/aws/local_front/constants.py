"""What the service fixes: routes, limits and timeouts of the router it stands in for."""

from __future__ import annotations

import datetime
import re

ROUTE = re.compile(r"^/endpoints/(?P<name>[^/]+)/invocations-bidirectional-stream$")
DEFAULT_INVOCATION_PATH = "invocations-bidirectional-stream"
ACCOUNT_ID = "000000000000"
"""Account id quoted in error messages (the stand-in has no accounts)."""

SIGV4_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_CLOCK_SKEW = datetime.timedelta(minutes=5)
EVENT_STREAM_HASH = "STREAMING-AWS4-HMAC-SHA256-EVENTS"
PING_TIMEOUT = 2.0
DEFAULT_MAX_STREAM_SECONDS = 1800.0
"""SageMaker ends a bidirectional stream after 30 minutes (SAGEMAKER.md, "Long sessions")."""
"""SageMaker expects ``/ping`` to answer within 2 s."""

CONTAINER_OPEN_TIMEOUT = 5.0
CONTAINER_CLOSE_TIMEOUT = 5.0
"""How long the container may take to close its socket after the client's input ended."""
REQUEST_END_TIMEOUT = 10.0
"""How long a finished stream waits for the client's request to end before ending anyway."""
MAX_EVENT_BYTES = 16 * 1024 * 1024 + 128 * 1024 + 16
"""Largest event-stream message: 16 MiB payload + 128 KiB headers + framing."""

PRODUCTION_VARIANT = "AllTraffic"
