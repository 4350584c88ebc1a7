"""The emulator's AK/SK gateway check: published vectors, and refusals over real HTTP."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from koogallery.emulator import (
    DEFAULT_AK,
    DEFAULT_SK,
    V2_PATH,
    Api,
    ApiError,
    Credential,
    EmulatorConfig,
    apig,
)
from tests.emulator_fixtures import HOURLY, compact, dumps, v1_record, v2_record

pytest_plugins = ["tests.emulator_fixtures"]

VECTOR_1_AK = "QTWAOYTTINDUT2QVKYUC"
VECTOR_1_SK = "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc"
VECTOR_1_HEADERS = {
    "content-type": "application/json",
    "host": "service.region.example.com",
    "x-sdk-date": "20191115T033655Z",
}
VECTOR_1_SIGNED = ("content-type", "host", "x-sdk-date")
VECTOR_1_QUERY = "limit=2&marker=13551d6b-755d-4757-b956-536f674975c0"
VECTOR_1_PATH = "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs"
VECTOR_1_SIGNATURE = "7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
VECTOR_2_HEADERS = {
    "content-type": "application/json",
    "host": "mkt.myhuaweicloud.com",
    "x-sdk-date": "20240317T144237Z",
    "x-stage": "RELEASE",
}
VECTOR_2_SIGNED = ("content-type", "host", "x-sdk-date", "x-stage")
VECTOR_2_PATH = "/api/mkp-openapi-public/global/v1/license/activate"


def _vector_1_canonical() -> str:
    return apig.canonical_request(
        "GET", VECTOR_1_PATH, VECTOR_1_QUERY, VECTOR_1_HEADERS, VECTOR_1_SIGNED, b""
    )


def _vector_1_request(date: str = "20191115T033655Z") -> apig.SignedRequest:
    headers = {**VECTOR_1_HEADERS, "x-sdk-date": date}
    canonical = apig.canonical_request(
        "GET", VECTOR_1_PATH, VECTOR_1_QUERY, headers, VECTOR_1_SIGNED, b""
    )
    signature = apig.sign(VECTOR_1_SK, apig.string_to_sign(canonical, date))
    headers["authorization"] = (
        f"SDK-HMAC-SHA256 Access={VECTOR_1_AK}, "
        f"SignedHeaders=content-type;host;x-sdk-date, Signature={signature}"
    )
    return apig.SignedRequest("GET", VECTOR_1_PATH, VECTOR_1_QUERY, headers, b"")


def test_vector_1_canonical_request_is_the_published_text() -> None:
    assert _vector_1_canonical() == (
        "GET\n"
        "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs/\n"
        "limit=2&marker=13551d6b-755d-4757-b956-536f674975c0\n"
        "content-type:application/json\n"
        "host:service.region.example.com\n"
        "x-sdk-date:20191115T033655Z\n"
        "\n"
        "content-type;host;x-sdk-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_vector_1_canonical_request_hash_matches_published_value() -> None:
    digest = hashlib.sha256(_vector_1_canonical().encode()).hexdigest()

    assert digest == "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a"


def test_vector_1_signature_matches_published_value() -> None:
    text = apig.string_to_sign(_vector_1_canonical(), "20191115T033655Z")

    assert apig.sign(VECTOR_1_SK, text) == VECTOR_1_SIGNATURE


def test_vector_2_canonical_request_hash_matches_published_value() -> None:
    canonical = apig.canonical_request(
        "POST", VECTOR_2_PATH, "", VECTOR_2_HEADERS, VECTOR_2_SIGNED, b""
    )

    digest = hashlib.sha256(canonical.encode()).hexdigest()
    assert digest == "9a33b07351104f6c775075faa7dc0db58ec18bc532feaa8fd0b8fcf7990b1a9e"


def test_vector_2_signature_matches_published_value() -> None:
    canonical = apig.canonical_request(
        "POST", VECTOR_2_PATH, "", VECTOR_2_HEADERS, VECTOR_2_SIGNED, b""
    )

    signature = apig.sign("123", apig.string_to_sign(canonical, "20240317T144237Z"))
    assert signature == "77595ad624b6e4e49990b8c4e84bf1c287457fca61069c4e60b9b6765b52053d"


def test_verify_accepts_vector_1_at_its_own_date_and_returns_the_credential() -> None:
    credential = Credential(VECTOR_1_AK, VECTOR_1_SK)
    now = datetime(2019, 11, 15, 3, 36, 55, tzinfo=timezone.utc)

    assert apig.verify(_vector_1_request(), {VECTOR_1_AK: credential}, now) is credential


def test_verify_refuses_vector_1_sixteen_minutes_later_with_apig_0304() -> None:
    credential = Credential(VECTOR_1_AK, VECTOR_1_SK)
    now = datetime(2019, 11, 15, 3, 52, 56, tzinfo=timezone.utc)

    with pytest.raises(ApiError) as refused:
        apig.verify(_vector_1_request(), {VECTOR_1_AK: credential}, now)

    assert (refused.value.http_status, refused.value.error_code) == (401, "APIG.0304")


def test_canonical_query_keeps_blank_values_and_sorts_by_name_then_value() -> None:
    assert apig.canonical_query("b=2&a=&b=1&c&x%20y=a+b~") == "a=&b=1&b=2&c=&x%20y=a%2Bb~"


def test_canonical_uri_reencodes_each_segment_and_appends_a_slash() -> None:
    assert apig.canonical_uri("/v1.0/a%20b/c:d/") == "/v1.0/a%20b/c%3Ad/"


def test_signed_content_sha256_header_replaces_the_body_hash() -> None:
    headers = {"x-sdk-content-sha256": "UNSIGNED-PAYLOAD"}

    assert apig.payload_hash(headers, ("x-sdk-content-sha256",), b"{}") == "UNSIGNED-PAYLOAD"
    assert apig.payload_hash(headers, (), b"") == hashlib.sha256(b"").hexdigest()


def test_request_signed_by_the_official_signer_with_a_query_is_verified(client) -> None:
    response = client.send(
        "POST",
        V2_PATH,
        dumps({"usage_records": []}),
        query=[("b", "x y"), ("a", "")],
        headers={"ts": "0", "nonce": "n", "signature": "s"},
    )

    assert response.json()["error_code"] == "MKT.0102"


def test_missing_authorization_is_refused_with_apig_0301(client) -> None:
    response = client.http.post(client.emulator.url + V2_PATH, content=b"{}")

    assert response.status_code == 401
    assert response.json() == {
        "error_code": "APIG.0301",
        "error_msg": "Incorrect authentication information: Authorization header is missing",
    }


def test_garbled_authorization_is_refused_with_apig_0301(client) -> None:
    response = client.http.post(
        client.emulator.url + V2_PATH,
        content=b"{}",
        headers={"Authorization": "Basic dXNlcjpwYXNz"},
    )

    assert (response.status_code, response.json()["error_code"]) == (401, "APIG.0301")


def test_unknown_access_key_is_refused_with_apig_0301(client) -> None:
    response = client.push_v1([v1_record(client.clock)], ak="UNKNOWNAK00000000000")

    assert response.status_code == 401
    assert response.json() == {
        "error_code": "APIG.0301",
        "error_msg": "Incorrect authentication information: the access key is unknown",
    }


def test_wrong_secret_key_is_refused_with_apig_0303_echoing_the_canonical_request(client) -> None:
    response = client.push_v2([v2_record(client.clock)], sk="not-the-secret-key")

    body = response.json()
    assert (response.status_code, body["error_code"]) == (401, "APIG.0303")
    assert body["error_msg"].startswith(
        "Incorrect app authentication information: signature mismatch; "
        "the canonical request is:\nPOST\n/api/mkp-openapi-public/global/v1/isv/usage-data/\n\n"
    )
    assert f"\nhost:127.0.0.1:{client.emulator.port}\n" in body["error_msg"]
    assert client.emulator.state.records == ()


def test_body_changed_after_signing_is_refused_with_apig_0303(client) -> None:
    body = dumps({"usage_records": [v1_record(client.clock)]})
    response = client.send("POST", "/rest/marketplace/v1/isv/usage-data", body)
    assert response.status_code == 200

    tampered = client.http.post(
        client.emulator.url + "/rest/marketplace/v1/isv/usage-data",
        content=body.replace(b'"1"', b'"9"'),
        headers={
            name: value
            for name, value in response.request.headers.items()
            if name.lower() != "content-length"
        },
    )

    assert (tampered.status_code, tampered.json()["error_code"]) == (401, "APIG.0303")


def test_sdk_date_sixteen_minutes_old_is_refused_with_apig_0304(client) -> None:
    stale = compact(client.clock() - timedelta(minutes=16))

    response = client.push_v1([v1_record(client.clock)], sdk_date=stale)

    assert response.status_code == 401
    assert response.json()["error_code"] == "APIG.0304"


def test_sdk_date_fourteen_minutes_ahead_is_accepted(client) -> None:
    ahead = compact(client.clock() + timedelta(minutes=14))

    response = client.push_v1([v1_record(client.clock)], sdk_date=ahead)

    assert response.status_code == 200


def test_host_left_out_of_signed_headers_is_refused_with_apig_0301(client) -> None:
    body = dumps({"usage_records": [v1_record(client.clock)]})
    signed = client.send("POST", "/rest/marketplace/v1/isv/usage-data", body).request
    headers = dict(signed.headers)
    headers["authorization"] = headers["authorization"].replace(";host;", ";")

    response = client.http.post(signed.url, content=body, headers=headers)

    assert response.json() == {
        "error_code": "APIG.0301",
        "error_msg": "Incorrect authentication information: host must be a signed header",
    }


def test_security_token_of_temporary_credential_is_accepted_when_sent(start_emulator) -> None:
    credential = Credential("TEMPAK00000000000000", "temp-sk-not-real", security_token="tok-1")
    client = start_emulator(EmulatorConfig(instances=[HOURLY], credentials=[credential]))

    response = client.push_v1(
        [v1_record(client.clock)],
        ak=credential.ak,
        sk="temp-sk-not-real",
        headers={"X-Security-Token": "tok-1"},
    )

    assert response.status_code == 200
    assert len(client.emulator.state.records) == 1


def test_wrong_security_token_is_refused_with_mkt_0154(start_emulator) -> None:
    credential = Credential("TEMPAK00000000000000", "temp-sk-not-real", security_token="tok-1")
    client = start_emulator(EmulatorConfig(instances=[HOURLY], credentials=[credential]))

    response = client.push_v1(
        [v1_record(client.clock)],
        ak=credential.ak,
        sk="temp-sk-not-real",
        headers={"X-Security-Token": "tok-2"},
    )

    assert response.status_code == 401
    assert response.json() == {
        "error_code": "MKT.0154",
        "error_msg": "Illegal token: X-Security-Token does not match this AK",
    }
    assert client.emulator.state.records == ()


def test_missing_security_token_of_temporary_credential_is_refused_with_mkt_0154(
    start_emulator,
) -> None:
    credential = Credential("TEMPAK00000000000000", "temp-sk-not-real", security_token="tok-1")
    client = start_emulator(EmulatorConfig(instances=[HOURLY], credentials=[credential]))

    response = client.push_v1([v1_record(client.clock)], ak=credential.ak, sk="temp-sk-not-real")

    assert (response.status_code, response.json()["error_code"]) == (401, "MKT.0154")


def test_credential_without_permission_for_an_api_is_refused_with_mkt_0151(
    start_emulator,
) -> None:
    credential = Credential(DEFAULT_AK, DEFAULT_SK, apis=(Api.V2,))
    client = start_emulator(EmulatorConfig(instances=[HOURLY], credentials=[credential]))

    response = client.push_v1([v1_record(client.clock)])

    assert response.status_code == 401
    assert response.json() == {
        "error_code": "MKT.0151",
        "error_msg": "No authority: this AK may not call the v1 usage API",
    }


def test_unknown_path_answers_404_apig_0101(client) -> None:
    response = client.send("POST", "/api/mkp-openapi-public/global/v1/isv/unknown", b"{}")

    assert response.status_code == 404
    assert response.json()["error_code"] == "APIG.0101"


def test_get_on_a_usage_path_answers_404_apig_0101(client) -> None:
    response = client.send("GET", V2_PATH)

    assert (response.status_code, response.json()["error_code"]) == (404, "APIG.0101")
