"""Request signing for KooGallery: the APIG AK/SK signature and the usage API's body signature.

Both are ``httpx.Auth`` classes, so they plug into any ``httpx.Client`` and run again on every
send: a retry of the same body therefore gets a fresh ``X-Sdk-Date``, ``ts`` and ``nonce``.

    auth = SigningChain(BodySigner(seller_key), ApigSigner(credentials))
    httpx.Client(auth=auth).post(url, content=body, headers={"Content-Type": JSON})

The APIG canonical request is built by huaweicloudsdkcore's own ``Signer``, so our requests are
signed exactly as Huawei's SDKs sign theirs; this module only adapts httpx requests to it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qsl

import httpx
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from pydantic import SecretStr

__all__ = [
    "JSON_CONTENT_TYPE",
    "ApigSigner",
    "BodySigner",
    "Credentials",
    "SigningChain",
    "body_signature",
    "sdk_date",
]

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"

_SIGNED_HEADERS = frozenset(
    {
        "content-type",
        "host",
        "x-sdk-date",
        "x-security-token",
        "x-project-id",
        "x-domain-id",
        "ts",
        "nonce",
        "signature",
    }
)
"""Headers we sign. Headers httpx adds itself (User-Agent, Accept...) stay out of the signature,
so a proxy that rewrites them cannot break it."""


@dataclass(frozen=True)
class Credentials:
    """An AK/SK pair, optionally temporary (with the security token an agency hands out)."""

    access_key: SecretStr
    secret_key: SecretStr
    security_token: SecretStr | None = None

    @classmethod
    def of(
        cls, access_key: str, secret_key: str, security_token: str | None = None
    ) -> Credentials:
        """Wrap plain strings, for callers that hold them only briefly."""
        token = SecretStr(security_token) if security_token else None
        return cls(SecretStr(access_key), SecretStr(secret_key), token)


@dataclass(frozen=True)
class _SignerKeys:
    """The two attributes ``huaweicloudsdkcore.signer.Signer`` reads from a credentials object.

    Building its full ``BasicCredentials`` would import ``requests`` and slow every cold start.
    """

    ak: str
    sk: str


def sdk_date(moment: datetime) -> str:
    """Format a moment as APIG's ``X-Sdk-Date`` (UTC, ``YYYYMMDDTHHMMSSZ``)."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ApigSigner(httpx.Auth):
    """Signs each request with ``SDK-HMAC-SHA256`` as Huawei Cloud's API gateway expects.

    ``clock`` is injectable so that tests can pin the documented vectors.
    """

    credentials: Credentials
    clock: Callable[[], datetime] = field(default=_utc_now)
    extra_headers: dict[str, str] = field(default_factory=dict)

    def sign(self, request: httpx.Request) -> None:
        """Add ``X-Sdk-Date``, the optional token and ``Authorization`` to ``request``."""
        for name, value in self.extra_headers.items():
            request.headers[name] = value
        if self.credentials.security_token is not None:
            request.headers["X-Security-Token"] = (
                self.credentials.security_token.get_secret_value()
            )
        request.headers["X-Sdk-Date"] = sdk_date(self.clock())

        signed = _SIGNED_HEADERS | {name.lower() for name in self.extra_headers}
        sdk_request = _to_sdk_request(request, signed)
        keys = _SignerKeys(
            self.credentials.access_key.get_secret_value(),
            self.credentials.secret_key.get_secret_value(),
        )
        Signer(keys).sign(sdk_request)

        request.headers["Authorization"] = sdk_request.header_params["Authorization"]

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request)
        yield request


def _to_sdk_request(request: httpx.Request, signed: frozenset[str]) -> SdkRequest:
    """Describe an httpx request in the shape huaweicloudsdkcore's signer understands."""
    url = request.url
    headers = {name: value for name, value in request.headers.items() if name.lower() in signed}
    raw_query = url.query.decode("ascii")
    return SdkRequest(
        method=request.method,
        schema=url.scheme,
        host=request.headers.get("Host", url.netloc.decode("ascii")),
        resource_path=url.raw_path.decode("ascii").split("?", 1)[0],
        query_params=parse_qsl(raw_query, keep_blank_values=True),
        header_params=headers,
        body=request.content,
    )


def body_signature(key: str, ts: str, nonce: str, body: bytes) -> str:
    """The usage API's ``signature`` header: base64 HMAC-SHA256 of ``ts=..&nonce=..&body=..``."""
    message = f"ts={ts}&nonce={nonce}&body=".encode() + body
    digest = hmac.new(key.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass
class BodySigner(httpx.Auth):
    """Adds ``ts``, ``nonce`` and ``signature`` over the exact body bytes being sent.

    The signed body must be the bytes on the wire, so callers serialise once (sorted keys,
    compact separators) and pass those bytes as the request content.
    """

    seller_key: SecretStr
    millis: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    nonce_factory: Callable[[], str] = field(default=lambda: secrets.token_hex(16))

    def sign(self, request: httpx.Request) -> None:
        """Set fresh ``ts``/``nonce`` and the signature of ``request.content``."""
        ts = str(self.millis())
        nonce = self.nonce_factory()
        request.headers["ts"] = ts
        request.headers["nonce"] = nonce
        request.headers["signature"] = body_signature(
            self.seller_key.get_secret_value(), ts, nonce, request.content
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request)
        yield request


class SigningChain(httpx.Auth):
    """Applies several signers in order; the body signature must come before the APIG one
    so that APIG's signature also covers the ``ts``/``nonce``/``signature`` headers."""

    def __init__(self, *signers: ApigSigner | BodySigner) -> None:
        self.signers = signers

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        for signer in self.signers:
            signer.sign(request)
        yield request
