"""The service's error answers, in the JSON shape the AWS SDK maps to its exceptions."""

from __future__ import annotations

import json
from typing import Any

MODELED_ERRORS = frozenset(
    {"InputValidationError", "ModelError", "ServiceUnavailableError", "InternalServerError"}
)
"""Errors of the service's model (the SDK raises its own exception class for each)."""


class ServiceError(Exception):
    """An error answered as an HTTP response in the service's JSON error shape.

    ``error_type`` goes into ``x-amzn-errortype`` (the SDK maps modeled names such as
    ``InputValidationError`` to its exception classes); ``body`` is the JSON document.
    """

    def __init__(
        self, status: int, error_type: str, message: str, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.extra = extra or {}

    def body(self) -> bytes:
        # The service's modeled errors carry "Message"; AWS's auth layer answers "message".
        key = "Message" if self.error_type in MODELED_ERRORS else "message"
        return json.dumps({key: self.message, **self.extra}).encode()


def auth_error(error_type: str, message: str) -> ServiceError:
    return ServiceError(403, error_type, message)


SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
