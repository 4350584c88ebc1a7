"""The API gateway's AK/SK check (``SDK-HMAC-SHA256``), written from the published algorithm.

This verifier is deliberately independent of any client-side signer: if both were built from the
same code, a shared mistake would sign and verify consistently and no test would notice. The
steps are pure functions so the published worked examples can be checked without HTTP:

    CanonicalRequest = Method \\n CanonicalURI \\n CanonicalQuery \\n CanonicalHeaders \\n
                       SignedHeaders \\n hex(sha256(body))
    StringToSign     = "SDK-HMAC-SHA256" \\n X-Sdk-Date \\n hex(sha256(CanonicalRequest))
    Signature        = hex(HMAC_SHA256(SK, StringToSign))
    Authorization: SDK-HMAC-SHA256 Access={AK}, SignedHeaders={h1;h2}, Signature={sig}

``verify`` refuses, with 401 and the gateway's codes: APIG.0301 for a missing, garbled or
unknown-AK ``Authorization``; APIG.0303 for a signature mismatch (the message carries the
canonical request the server built, as the real gateway does, so a client author can diff it);
APIG.0304 for an ``X-Sdk-Date`` more than 15 minutes from the server clock; MKT.0154 for a
temporary credential whose ``X-Security-Token`` is missing or wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, unquote

from koogallery.emulator.config import Credential
from koogallery.emulator.errors import (
    APIG_AUTH,
    APIG_EXPIRED,
    APIG_SIGNATURE,
    ILLEGAL_TOKEN,
    ApiError,
)

__all__ = [
    "ALGORITHM",
    "MAX_CLOCK_SKEW",
    "Authorization",
    "SignedRequest",
    "canonical_headers",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "parse_authorization",
    "payload_hash",
    "sign",
    "string_to_sign",
    "verify",
]

ALGORITHM = "SDK-HMAC-SHA256"
MAX_CLOCK_SKEW = timedelta(minutes=15)
_DATE_HEADER = "x-sdk-date"
_CONTENT_HASH_HEADER = "x-sdk-content-sha256"
_TOKEN_HEADER = "x-security-token"  # noqa: S105 (a header name, not a secret)
_AUTHORIZATION = re.compile(
    r"SDK-HMAC-SHA256\s+Access=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,\s*"
    r"Signature=([0-9a-fA-F]{64})\s*"
)
_SDK_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")


@dataclass(frozen=True)
class SignedRequest:
    """A request as the gateway sees it: header names lower-case, the body as raw bytes."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Authorization:
    """The three parts of an ``Authorization: SDK-HMAC-SHA256 ...`` header."""

    access: str
    signed_headers: tuple[str, ...]
    signature: str


def canonical_uri(path: str) -> str:
    """Each path segment unquoted then re-encoded (only ``~`` kept), always ending in ``/``."""
    segments = unquote(path).split("/")
    uri = "/".join(quote(segment, safe="~") for segment in segments)
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(query: str) -> str:
    """Query pairs, blank values kept, sorted by name then value, each part re-encoded.

    ``+`` is not read as a space: the signers encode spaces as ``%20``, so a literal ``+`` is
    a plus sign on both sides.
    """
    pairs = []
    for part in query.split("&"):
        if not part:
            continue

        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))

    pairs.sort()
    return "&".join(f"{quote(name, safe='~')}={quote(value, safe='~')}" for name, value in pairs)


def canonical_headers(headers: Mapping[str, str], signed_headers: tuple[str, ...]) -> str:
    """``name:value`` for each signed header, trimmed, sorted by name, each ending in a newline."""
    return "".join(f"{name}:{headers[name].strip()}\n" for name in sorted(signed_headers))


def payload_hash(headers: Mapping[str, str], signed_headers: tuple[str, ...], body: bytes) -> str:
    """Hex SHA-256 of the body, or the signed ``X-Sdk-Content-Sha256`` value when present."""
    if _CONTENT_HASH_HEADER in signed_headers and _CONTENT_HASH_HEADER in headers:
        return headers[_CONTENT_HASH_HEADER].strip()

    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    signed_headers: tuple[str, ...],
    body: bytes,
) -> str:
    """The canonical request text; ``headers`` must hold every signed header, lower-case."""
    return "\n".join(
        (
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            canonical_headers(headers, signed_headers),
            ";".join(sorted(signed_headers)),
            payload_hash(headers, signed_headers, body),
        )
    )


def string_to_sign(canonical: str, sdk_date: str) -> str:
    """What the SK signs: the algorithm, the ``X-Sdk-Date`` and the canonical request's hash."""
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def sign(sk: str, text_to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed with the SK."""
    mac = hmac.new(sk.encode("utf-8"), text_to_sign.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()


def parse_authorization(value: str | None) -> Authorization:
    """Split the ``Authorization`` header, refusing anything but well-formed SDK-HMAC-SHA256."""
    if not value:
        raise ApiError(APIG_AUTH, "Authorization header is missing")

    match = _AUTHORIZATION.fullmatch(value.strip())
    if match is None:
        raise ApiError(APIG_AUTH, "Authorization header is not SDK-HMAC-SHA256 Access=..., ...")

    access, signed, signature = match.groups()
    names = tuple(signed.split(";"))
    if any(not name or name != name.lower() for name in names):
        raise ApiError(APIG_AUTH, "SignedHeaders must be lower-case names separated by ';'")

    return Authorization(access=access, signed_headers=names, signature=signature.lower())


def _parse_sdk_date(value: str | None) -> datetime:
    if value is None or _SDK_DATE.fullmatch(value.strip()) is None:
        raise ApiError(APIG_AUTH, "X-Sdk-Date must be yyyyMMddTHHmmssZ")

    try:
        return datetime.strptime(value.strip(), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ApiError(APIG_AUTH, "X-Sdk-Date is not a real date") from None


def _check_signed_header_set(request: SignedRequest, auth: Authorization) -> None:
    for required in (_DATE_HEADER, "host"):
        if required not in auth.signed_headers:
            raise ApiError(APIG_AUTH, f"{required} must be a signed header")

    for name in auth.signed_headers:
        if name not in request.headers:
            raise ApiError(APIG_AUTH, f"signed header {name} is not in the request")

    if _TOKEN_HEADER in request.headers and _TOKEN_HEADER not in auth.signed_headers:
        raise ApiError(APIG_AUTH, "X-Security-Token must be a signed header")


def _check_security_token(request: SignedRequest, credential: Credential) -> None:
    sent = request.headers.get(_TOKEN_HEADER)
    expected = credential.security_token
    if sent is None and expected is None:
        return

    if sent is None:
        raise ApiError(ILLEGAL_TOKEN, "this AK is temporary and needs its X-Security-Token")

    if expected is None or not hmac.compare_digest(sent.strip(), expected):
        raise ApiError(ILLEGAL_TOKEN, "X-Security-Token does not match this AK")


def verify(
    request: SignedRequest,
    credentials: Mapping[str, Credential],
    now: datetime,
) -> Credential:
    """Check the request's AK/SK signature and return the credential that signed it.

    ``credentials`` maps each accepted AK to its credential; ``now`` is the gateway clock
    (UTC-aware) the ``X-Sdk-Date`` must lie within 15 minutes of.
    """
    auth = parse_authorization(request.headers.get("authorization"))

    credential = credentials.get(auth.access)
    if credential is None:
        raise ApiError(APIG_AUTH, "the access key is unknown")

    _check_signed_header_set(request, auth)

    sdk_date = request.headers[_DATE_HEADER].strip()
    if abs(now - _parse_sdk_date(sdk_date)) > MAX_CLOCK_SKEW:
        raise ApiError(
            APIG_EXPIRED, f"X-Sdk-Date {sdk_date} is more than 15 minutes from server time"
        )

    canonical = canonical_request(
        request.method,
        request.path,
        request.query,
        request.headers,
        auth.signed_headers,
        request.body,
    )
    expected = sign(credential.sk, string_to_sign(canonical, sdk_date))
    if not hmac.compare_digest(expected, auth.signature):
        raise ApiError(
            APIG_SIGNATURE, f"signature mismatch; the canonical request is:\n{canonical}"
        )

    _check_security_token(request, credential)

    return credential
