"""Errors a person can act on: each says what went wrong and what to do about it.

Backends raise these; the page and the CLI show ``str(error)`` verbatim, never a traceback.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class: a failure to open or keep a transcription stream."""

    retryable: bool = False


class BackendUnavailable(BackendError):
    """The backend cannot be reached (refused, DNS, TLS, timeout)."""

    retryable = True


class AuthError(BackendError):
    """Credentials are missing, wrong, or not allowed to do this."""


class NotFound(BackendError):
    """The endpoint, route or model does not exist (or is not allowed here)."""


class Busy(BackendError):
    """The backend is at capacity; trying again later may work."""

    retryable = True


class ConnectionLost(BackendError):
    """An open stream ended without the final transcript."""

    retryable = True


class InvalidOption(BackendError):
    """The backend refused a session option (the language or the prompt); the message says
    what it accepts."""


class RemoteError(BackendError):
    """The remote side reported a failure of its own (a model error, a container close)."""


class StreamExpired(ConnectionLost):
    """The stream reached its backend's maximum duration (SageMaker's 30 minutes, a server's
    session length): a new stream continues the session."""
