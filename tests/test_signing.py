"""APIG AK/SK signing and the usage API's body signature, pinned to worked vectors."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timezone

import httpx
from pydantic import SecretStr

from koogallery.signing import ApigSigner, BodySigner, Credentials, SigningChain, body_signature

_DOC_AK = "QTWAOYTTINDUT2QVKYUC"
_DOC_SK = "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc"


def _at(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def _signature_of(request: httpx.Request) -> str:
    return request.headers["Authorization"].rsplit("Signature=", 1)[1]


def test_documented_get_vector_gives_the_documented_signature() -> None:
    request = httpx.Request(
        "GET",
        "https://service.region.example.com/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs"
        "?limit=2&marker=13551d6b-755d-4757-b956-536f674975c0",
        headers={"Content-Type": "application/json"},
    )
    signer = ApigSigner(Credentials.of(_DOC_AK, _DOC_SK), clock=lambda: _at("20191115T033655Z"))

    signer.sign(request)

    assert request.headers["X-Sdk-Date"] == "20191115T033655Z"
    assert request.headers["Authorization"] == (
        "SDK-HMAC-SHA256 Access=QTWAOYTTINDUT2QVKYUC, SignedHeaders=content-type;host;x-sdk-date, "
        "Signature=7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
    )


def test_koogallery_host_vector_with_stage_header_gives_the_documented_signature() -> None:
    request = httpx.Request(
        "POST",
        "https://mkt.myhuaweicloud.com/api/mkp-openapi-public/global/v1/license/activate",
        headers={"Content-Type": "application/json"},
    )
    signer = ApigSigner(
        Credentials.of("AKVECTOR2", "123"),
        clock=lambda: _at("20240317T144237Z"),
        extra_headers={"x-stage": "RELEASE"},
    )

    signer.sign(request)

    assert (
        "SignedHeaders=content-type;host;x-sdk-date;x-stage," in request.headers["Authorization"]
    )
    assert _signature_of(request) == (
        "77595ad624b6e4e49990b8c4e84bf1c287457fca61069c4e60b9b6765b52053d"
    )


def test_json_post_vector_signs_the_exact_body_bytes() -> None:
    body = b'{"usage":[{"resource_id":"r-1","value":42}]}'
    request = httpx.Request(
        "POST",
        "https://example.invalid/v1.0/PARTNER/billing/bill-mgr/push-usage-data",
        headers={"Content-Type": "application/json;charset=UTF-8"},
        content=body,
    )
    signer = ApigSigner(
        Credentials.of("AKEXAMPLE1234567890", "SKexampleSecretKey0123456789abcdefABCDEF"),
        clock=lambda: _at("20240102T030405Z"),
    )

    signer.sign(request)

    assert _signature_of(request) == (
        "cb8f3612bde906f6457ab59e1fb8ac988e0d9895c1a34903ec9cf9f73daf1f74"
    )


def test_usage_push_vector_covers_body_signature_headers_and_token() -> None:
    body = (
        b'{"usage_records":[{"begin_time":"20261201T080000Z","end_time":"20261201T090000Z",'
        b'"instance_id":"demo-instance-001","metering_sn":"sn-1","record_time":"20261201T090000Z",'
        b'"usage_value":"12.5"}]}'
    )
    request = httpx.Request(
        "POST",
        "https://mkt.myhuaweicloud.com/api/mkp-openapi-public/global/v1/isv/usage-data",
        headers={"Content-Type": "application/json;charset=UTF-8"},
        content=body,
    )
    chain = SigningChain(
        BodySigner(
            SecretStr("fake-seller-key"), millis=lambda: 1764576000000, nonce_factory=lambda: "n-1"
        ),
        ApigSigner(
            Credentials.of("FAKEAK0000000000", "fake-secret-key", "fake-security-token"),
            clock=lambda: _at("20261201T100000Z"),
        ),
    )

    for signer in chain.signers:
        signer.sign(request)

    assert request.headers["ts"] == "1764576000000"
    assert request.headers["nonce"] == "n-1"
    assert request.headers["signature"] == "1rSwVNKzvl3M23I1aFyD6OlNS8epX0toRINluOU52w8="
    assert request.headers["X-Security-Token"] == "fake-security-token"
    assert request.headers["Authorization"] == (
        "SDK-HMAC-SHA256 Access=FAKEAK0000000000, SignedHeaders=content-type;host;nonce;"
        "signature;ts;x-sdk-date;x-security-token, "
        "Signature=d79118168b6fbdf2458272fc9d664e17ee4df0e79e8066d7a82f05b5bdf036c0"
    )


def test_body_signature_is_base64_hmac_of_ts_nonce_and_body() -> None:
    body = b'{"usage_records":[]}'
    expected = base64.b64encode(
        hmac.new(b"k", b'ts=1&nonce=abc&body={"usage_records":[]}', hashlib.sha256).digest()
    ).decode()

    assert body_signature("k", "1", "abc", body) == expected


def test_each_send_gets_a_fresh_nonce_and_ts_over_the_same_body() -> None:
    nonces = iter(["first", "second"])
    clock = iter([1000, 2000])
    signer = BodySigner(
        SecretStr("k"), millis=lambda: next(clock), nonce_factory=lambda: next(nonces)
    )
    one = httpx.Request("POST", "http://127.0.0.1/x", content=b"{}")
    two = httpx.Request("POST", "http://127.0.0.1/x", content=b"{}")

    signer.sign(one)
    signer.sign(two)

    assert (one.headers["ts"], one.headers["nonce"]) == ("1000", "first")
    assert (two.headers["ts"], two.headers["nonce"]) == ("2000", "second")
    assert one.headers["signature"] == body_signature("k", "1000", "first", b"{}")
    assert two.headers["signature"] == body_signature("k", "2000", "second", b"{}")


def test_credentials_never_show_secrets_in_repr() -> None:
    credentials = Credentials.of("FAKEAK0000000000", "fake-secret-key", "fake-token")

    text = repr(credentials)

    assert "fake-secret-key" not in text
    assert "fake-token" not in text
    assert "FAKEAK0000000000" not in text
