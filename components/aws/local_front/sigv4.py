"""SigV4 as the service checks it: the request's signature (computed with botocore's
signer) and the chain of ``:chunk-signature`` headers over the event stream."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import struct
from binascii import hexlify
from dataclasses import dataclass, field
from typing import Any

from components.aws.local_front.constants import MAX_CLOCK_SKEW, SIGV4_TIME_FORMAT
from components.aws.local_front.errors import SIGNATURE_MISMATCH, auth_error


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key pair the front accepts (its whole IAM)."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def _hmac(key: bytes, msg: str | bytes) -> bytes:
    return hmac.new(key, msg.encode() if isinstance(msg, str) else msg, hashlib.sha256).digest()


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    """SigV4 signing key for one day, region and service."""
    k = _hmac(f"AWS4{secret}".encode(), day)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]{64})$"
)


@dataclass(slots=True)
class SignedRequest:
    """What a verified request leaves for verifying its event chain."""

    credentials: Credentials
    region: str
    service: str
    seed_signature: str


def expected_signature(
    method: str,
    raw_path: str,
    query: str,
    headers: dict[str, str],
    signed_headers: list[str],
    payload_hash: str,
    credentials: Credentials,
    region: str,
    service: str,
    amz_date: str,
) -> str:
    """The request's SigV4 signature as botocore's signer computes it for these headers.

    The canonical request covers exactly the headers the client says it signed, at the time
    it signed them, and the payload hash it sent (an event stream signs its events one by one;
    the request itself carries a fixed marker).
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotocoreCredentials

    class _Signer(SigV4Auth):
        def payload(self, request: AWSRequest) -> str:
            return payload_hash

    url = f"https://{headers.get('host', 'localhost')}{raw_path or '/'}"
    request = AWSRequest(
        method=method.upper(),
        url=f"{url}?{query}" if query else url,
        headers={name: headers.get(name, "") for name in signed_headers},
    )
    request.context["timestamp"] = amz_date
    signer = _Signer(
        BotocoreCredentials(
            credentials.access_key, credentials.secret_key, credentials.session_token
        ),
        service,
        region,
    )
    canonical = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical), request))


def verify_request(
    method: str,
    raw_path: str,
    query: str,
    headers: dict[str, str],
    accepted: dict[str, Credentials],
    *,
    now: datetime.datetime | None = None,
) -> SignedRequest:
    """Check a request's SigV4 ``Authorization`` header; raise :class:`ServiceError` (403).

    ``headers`` maps lower-case names to values. Any region is accepted (the client signs for
    the region it was configured with); the service must be ``sagemaker``.
    """
    auth = headers.get("authorization")
    if not auth:
        raise auth_error("MissingAuthenticationTokenException", "Missing Authentication Token")
    m = _AUTH.match(auth.strip())
    if m is None:
        raise auth_error(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature'.",
        )
    cred_parts = m["cred"].split("/")
    if len(cred_parts) != 5 or cred_parts[4] != "aws4_request":
        raise auth_error("IncompleteSignatureException", f"Malformed credential: {m['cred']}")
    access_key, day, region, service, _ = cred_parts
    creds = accepted.get(access_key)
    if creds is None:
        raise auth_error(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if service != "sagemaker":
        raise auth_error(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: 'sagemaker', not '{service}'.",
        )
    token = headers.get("x-amz-security-token")
    if token != creds.session_token:
        raise auth_error(
            "UnrecognizedClientException",
            "The security token included in the request is invalid."
            + (" (unset AWS_SESSION_TOKEN for this local front)" if token else ""),
        )
    amz_date = headers.get("x-amz-date", "")
    try:
        when = datetime.datetime.strptime(amz_date, SIGV4_TIME_FORMAT).replace(tzinfo=datetime.UTC)
    except ValueError:
        raise auth_error(
            "IncompleteSignatureException", "X-Amz-Date is missing or malformed."
        ) from None
    now = now or datetime.datetime.now(datetime.UTC)
    if abs(now - when) > MAX_CLOCK_SKEW:
        raise auth_error(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier or later than "
            f"{now.strftime(SIGV4_TIME_FORMAT)} by more than 5 minutes (check the clock).",
        )
    if amz_date[:8] != day:
        raise auth_error("InvalidSignatureException", "Credential date does not match X-Amz-Date.")
    signed = m["signed"].split(";")
    if "host" not in signed:
        raise auth_error("InvalidSignatureException", "'Host' must be a signed header.")
    payload_hash = headers.get("x-amz-content-sha256")
    if not payload_hash:
        raise auth_error("InvalidSignatureException", "Missing x-amz-content-sha256.")
    expected = expected_signature(
        method, raw_path, query, headers, signed, payload_hash, creds, region, service, amz_date
    )
    if not hmac.compare_digest(expected, m["sig"]):
        raise auth_error("InvalidSignatureException", SIGNATURE_MISMATCH)
    return SignedRequest(creds, region, service, m["sig"])


class ChunkSignatureError(Exception):
    """An event whose ``:chunk-signature`` does not continue the request's signature chain."""


class ChunkChain:
    """Verifies the chained ``:chunk-signature`` of each signed envelope, in order."""

    def __init__(self, signed: SignedRequest) -> None:
        self._signed = signed
        self._prior = signed.seed_signature
        self._keys: dict[str, bytes] = {}

    def verify(self, raw_event: bytes, headers: dict[str, Any], payload: bytes) -> None:
        signature = headers.get(":chunk-signature")
        date_header = _raw_header(raw_event, b":date")
        if not isinstance(signature, bytes) or date_header is None or date_header[6] != 8:
            raise ChunkSignatureError("event without :date and :chunk-signature headers")
        (millis,) = struct.unpack("!q", date_header[7:15])
        stamp = datetime.datetime.fromtimestamp(millis // 1000, datetime.UTC)
        timestamp = stamp.strftime(SIGV4_TIME_FORMAT)
        day = timestamp[:8]
        key = self._keys.get(day)
        if key is None:
            s = self._signed
            key = self._keys[day] = signing_key(s.credentials.secret_key, day, s.region, s.service)
        string_to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                timestamp,
                f"{day}/{self._signed.region}/{self._signed.service}/aws4_request",
                self._prior,
                hashlib.sha256(date_header).hexdigest(),
                hashlib.sha256(payload).hexdigest(),
            ]
        )
        expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            raise ChunkSignatureError("event signature does not match the signature chain")
        self._prior = hexlify(signature).decode()


_FIXED_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


def _raw_header(raw_event: bytes, name: bytes) -> bytes | None:
    """The encoded bytes of one header of an encoded event message (name, type and value).

    Signatures cover the exact bytes that were signed; re-encoding a decoded timestamp through a
    float could be off by a millisecond, so the original bytes are used.
    """
    (headers_length,) = struct.unpack_from("!I", raw_event, 4)
    pos, end = 12, 12 + headers_length
    while pos < end:
        start = pos
        name_len = raw_event[pos]
        key = raw_event[pos + 1 : pos + 1 + name_len]
        pos += 1 + name_len
        kind = raw_event[pos]
        pos += 1
        if kind in (6, 7):
            (value_len,) = struct.unpack_from("!H", raw_event, pos)
            pos += 2 + value_len
        else:
            pos += _FIXED_SIZES.get(kind, 0)
        if key == name:
            return raw_event[start:pos]
    return None
