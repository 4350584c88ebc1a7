"""The usage client against the local KooGallery emulator: chunking, retries, bisection, errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest

from koogallery.client import KooGalleryClient, Status
from koogallery.config import Settings
from koogallery.emulator import (
    DEFAULT_AK,
    DEFAULT_PARTNER_ID,
    DEFAULT_SELLER_KEY,
    DEFAULT_SK,
    Credential,
    Emulator,
    EmulatorConfig,
    FaultPlan,
    Instance,
)
from koogallery.errors import AuthenticationError, ConfigurationError
from koogallery.models import UsageRecord


def _hour_ago(hours: int) -> datetime:
    return datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=hours
    )


INSTANCES = [
    Instance(f"inst-{n}", product_id=f"prod-{n}", unit_price=Decimal("0.5"), entities=("times",))
    for n in range(3)
]


class RecordingTransport(httpx.HTTPTransport):
    """The real HTTP transport, keeping a copy of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.sent.append(request)
        return super().handle_request(request)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(instances=INSTANCES)) as emu:
        yield emu


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


def _settings(emulator: Emulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "endpoint": emulator.url,
        "access_key": DEFAULT_AK,
        "secret_key": DEFAULT_SK,
        "seller_key": DEFAULT_SELLER_KEY,
        "partner_id": DEFAULT_PARTNER_ID,
        "backoff_base_seconds": 0.01,
        "backoff_cap_seconds": 0.02,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def _client(
    emulator: Emulator, transport: httpx.BaseTransport | None = None, **overrides: Any
) -> KooGalleryClient:
    return KooGalleryClient(
        _settings(emulator, **overrides), transport=transport, sleep=lambda _: None
    )


def _records(count: int, *, instance: str = "inst-0", hours_back: int = 0) -> list[UsageRecord]:
    """``count`` one-minute windows, all inside the last few hours."""
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(
        hours=hours_back + 1, minutes=count
    )
    return [
        UsageRecord.parse(
            {
                "instance_id": instance,
                "begin_time": start + timedelta(minutes=n),
                "end_time": start + timedelta(minutes=n + 1),
                "usage_value": f"{n + 1}.25",
                "product_id": "prod-0",
            }
        )
        for n in range(count)
    ]


def test_ten_records_are_accepted_and_held_once(emulator: Emulator) -> None:
    records = _records(10)

    with _client(emulator) as client:
        result = client.push_usage(records)

    assert [outcome.status for outcome in result.outcomes] == [Status.ACCEPTED] * 10
    held = {stored.metering_sn: stored.usage_value for stored in emulator.state.records}
    assert held == {record.sn: record.usage_value for record in records}


def test_2500_records_make_three_requests(
    emulator: Emulator, transport: RecordingTransport
) -> None:
    with _client(emulator, transport) as client:
        result = client.push_usage(_records(2500))

    sizes = [len(json.loads(request.content)["usage_records"]) for request in transport.sent]
    assert sizes == [1000, 1000, 500]
    assert len(result.accepted) == 2500
    assert len(emulator.state.records) == 2500


def test_chunk_size_can_be_set_lower(emulator: Emulator, transport: RecordingTransport) -> None:
    with _client(emulator, transport, chunk_size=4) as client:
        client.push_usage(_records(10))

    sizes = [len(json.loads(request.content)["usage_records"]) for request in transport.sent]
    assert sizes == [4, 4, 2]


def test_retry_after_500_resends_identical_body_with_fresh_nonce(
    emulator: Emulator, transport: RecordingTransport
) -> None:
    emulator.set_faults(FaultPlan(sequence=("500", "ok")))

    with _client(emulator, transport) as client:
        result = client.push_usage(_records(3))

    first, second = transport.sent
    assert first.content == second.content
    assert first.headers["nonce"] != second.headers["nonce"]
    assert first.headers["signature"] != second.headers["signature"]
    assert [attempt.http_status for attempt in result.attempts] == [500, 200]
    assert [attempt.error_code for attempt in result.attempts] == ["MKT.0999", "MKT.0000"]
    assert len(result.accepted) == 3


def test_retry_after_a_dropped_answer_reuses_the_bytes_and_counts_the_first_attempt(
    emulator: Emulator, transport: RecordingTransport
) -> None:
    emulator.set_faults(FaultPlan(sequence=("drop_after_commit", "ok")))
    records = _records(4)

    with _client(emulator, transport) as client:
        result = client.push_usage(records)

    first, second = transport.sent
    assert first.content == second.content
    assert [outcome.status for outcome in result.outcomes] == [Status.ACCEPTED] * 4
    assert [outcome.reason for outcome in result.outcomes] == [
        "accepted on an earlier attempt whose answer was lost"
    ] * 4
    assert sorted(stored.metering_sn for stored in emulator.state.records) == sorted(
        record.sn for record in records
    )
    assert len(emulator.state.duplicates) == 4


def test_rate_limit_429_is_retried(emulator: Emulator) -> None:
    emulator.set_faults(FaultPlan(sequence=("429", "429", "ok")))

    with _client(emulator) as client:
        result = client.push_usage(_records(2))

    assert [attempt.http_status for attempt in result.attempts] == [429, 429, 200]
    assert len(result.accepted) == 2


def test_transient_errors_beyond_max_attempts_leave_records_pending(emulator: Emulator) -> None:
    emulator.set_faults(FaultPlan(rates={"500": 1.0}))

    with _client(emulator, max_attempts=3) as client:
        result = client.push_usage(_records(5))

    assert [outcome.status for outcome in result.outcomes] == [Status.PENDING] * 5
    assert result.outcomes[0].reason == "HTTP 500 MKT.0999 after 3 attempts"
    assert len(result.attempts) == 3
    assert emulator.state.records == ()


def test_chunks_after_an_exhausted_chunk_stay_pending_without_being_sent(
    emulator: Emulator, transport: RecordingTransport
) -> None:
    emulator.set_faults(FaultPlan(rates={"500": 1.0}))

    with _client(emulator, transport, max_attempts=2, chunk_size=3) as client:
        result = client.push_usage(_records(9))

    assert len(transport.sent) == 2
    assert len(result.pending) == 9


def test_retries_never_sleep_past_the_deadline(emulator: Emulator) -> None:
    emulator.set_faults(FaultPlan(rates={"500": 1.0}))
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    settings = _settings(emulator, backoff_base_seconds=1.0, backoff_cap_seconds=8.0)
    with KooGalleryClient(settings, sleep=sleep, monotonic=lambda: now[0], rng=lambda: 1.0) as c:
        result = c.push_usage(_records(1), deadline=103.5)

    assert slept == [1.0, 2.0]
    assert result.outcomes[0].status is Status.PENDING
    assert result.outcomes[0].reason == "HTTP 500 MKT.0999; no time left"


def test_nothing_is_sent_when_the_deadline_has_passed(
    emulator: Emulator, transport: RecordingTransport
) -> None:
    with KooGalleryClient(_settings(emulator), transport=transport, monotonic=lambda: 50.0) as c:
        result = c.push_usage(_records(2), deadline=49.0)

    assert transport.sent == []
    assert [outcome.reason for outcome in result.outcomes] == [
        "deadline reached before the request"
    ] * 2


def test_one_unknown_instance_among_ten_leaves_nine_accepted_one_dead_lettered(
    emulator: Emulator,
) -> None:
    records = _records(10)
    records[6] = _records(1, instance="inst-unknown", hours_back=3)[0]

    with _client(emulator) as client:
        result = client.push_usage(records)

    statuses = [outcome.status for outcome in result.outcomes]
    assert statuses == [Status.ACCEPTED] * 6 + [Status.DEAD_LETTERED] + [Status.ACCEPTED] * 3
    dead = result.outcomes[6]
    assert dead.error_code == "MKT.9001"
    assert dead.reason is not None and dead.reason.startswith("MKT.9001 instance ID not found")
    assert len(emulator.state.records) == 9


def test_two_bad_records_are_both_isolated(emulator: Emulator) -> None:
    records = _records(16)
    records[0] = _records(1, instance="inst-gone-a", hours_back=2)[0]
    records[11] = _records(1, instance="inst-gone-b", hours_back=4)[0]

    with _client(emulator) as client:
        result = client.push_usage(records)

    dead = [index for index, outcome in enumerate(result.outcomes) if outcome.error_code]
    assert dead == [0, 11]
    assert len(result.accepted) == 14


def test_record_older_than_21_days_at_the_platform_is_dead_lettered_as_mkt_9004() -> None:
    begin = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=21, minutes=-5)
    old = UsageRecord.parse(
        {"instance_id": "inst-0", "begin_time": begin, "end_time": begin, "usage_value": "1"}
    )

    def ten_minutes_ahead() -> datetime:
        return datetime.now(timezone.utc) + timedelta(minutes=10)

    with Emulator(EmulatorConfig(instances=INSTANCES), clock=ten_minutes_ahead) as emulator:
        with _client(emulator) as client:
            result = client.push_usage([old])

    assert result.outcomes[0].status is Status.DEAD_LETTERED
    assert result.outcomes[0].error_code == "MKT.9004"


def test_repeated_push_is_recognised_as_duplicates(emulator: Emulator) -> None:
    records = _records(5)

    with _client(emulator) as client:
        client.push_usage(records)
        again = client.push_usage(records)

    assert [outcome.status for outcome in again.outcomes] == [Status.DUPLICATE] * 5
    assert len(emulator.state.records) == 5


def test_wrong_seller_key_stops_the_run_and_dead_letters_nothing(emulator: Emulator) -> None:
    with _client(emulator, seller_key="fake-wrong-seller-key") as client:
        with pytest.raises(AuthenticationError) as caught:
            client.push_usage(_records(3))

    assert caught.value.error_code == "MKT.0102"
    assert "KOOGALLERY_SELLER_KEY" in str(caught.value)
    assert "fake-wrong-seller-key" not in str(caught.value)
    assert emulator.state.records == ()


def test_wrong_secret_key_is_an_apig_authentication_error(emulator: Emulator) -> None:
    with _client(emulator, secret_key="fake-wrong-secret") as client:
        with pytest.raises(AuthenticationError) as caught:
            client.push_usage(_records(1))

    assert caught.value.status == 401
    assert "HUAWEICLOUD_SDK_SK" in str(caught.value)
    assert "fake-wrong-secret" not in str(caught.value)


def test_temporary_credentials_with_security_token_are_accepted() -> None:
    credential = Credential("FAKETEMPAK0000000000", "fake-temp-sk", security_token="fake-token")
    config = EmulatorConfig(instances=INSTANCES, credentials=[credential])
    with (
        Emulator(config) as emulator,
        _client(
            emulator,
            access_key="FAKETEMPAK0000000000",
            secret_key="fake-temp-sk",
            security_token="fake-token",
        ) as client,
    ):
        result = client.push_usage(_records(2))

    assert len(result.accepted) == 2


def test_missing_security_token_for_temporary_credentials_is_refused() -> None:
    credential = Credential("FAKETEMPAK0000000000", "fake-temp-sk", security_token="fake-token")
    config = EmulatorConfig(instances=INSTANCES, credentials=[credential])
    with Emulator(config) as emulator:
        with _client(emulator, access_key="FAKETEMPAK0000000000", secret_key="fake-temp-sk") as c:
            with pytest.raises(AuthenticationError):
                c.push_usage(_records(1))


def test_v1_push_sends_product_id_and_is_accepted(
    emulator: Emulator, transport: RecordingTransport
) -> None:
    with _client(emulator, transport, usage_api="v1") as client:
        result = client.push_usage(_records(3))

    body = json.loads(transport.sent[0].content)
    assert "metering_sn" not in body["usage_records"][0]
    assert body["usage_records"][0]["product_id"] == "prod-0"
    assert "signature" not in transport.sent[0].headers
    assert len(result.accepted) == 3


def test_v1_record_without_product_id_is_dead_lettered_before_sending(emulator: Emulator) -> None:
    record = UsageRecord.parse(
        {
            "instance_id": "inst-0",
            "begin_time": _hour_ago(2),
            "end_time": _hour_ago(1),
            "usage_value": "1",
        }
    )

    with _client(emulator, usage_api="v1") as client:
        result = client.push_usage([record])

    assert result.outcomes[0].status is Status.DEAD_LETTERED
    assert result.outcomes[0].reason == "product_id: required by the v1 usage API"
    assert result.attempts == []


def test_legacy_push_uses_partner_path_and_usage_entity(
    emulator: Emulator, transport: RecordingTransport
) -> None:
    with _client(emulator, transport, usage_api="legacy") as client:
        result = client.push_usage(_records(2))

    request = transport.sent[0]
    assert request.url.path == f"/v1.0/{DEFAULT_PARTNER_ID}/billing/bill-mgr/push-usage-data"
    assert json.loads(request.content)["usageRecords"][0]["usageEntity"] == {"times": "1.25"}
    assert len(result.accepted) == 2


def test_connection_failure_fails_over_to_the_next_endpoint(emulator: Emulator) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}"

    with _client(emulator, endpoint=f"{dead_url},{emulator.url}") as client:
        result = client.push_usage(_records(2))
        used = client.endpoint

    assert used == emulator.url
    assert [attempt.endpoint for attempt in result.attempts] == [dead_url, emulator.url]
    assert len(result.accepted) == 2


def test_endpoint_setting_replaces_the_whole_site_list() -> None:
    settings = Settings(endpoint="http://127.0.0.1:9/", site="intl")

    assert settings.endpoints == ("http://127.0.0.1:9",)
    assert Settings(site="intl").endpoints == (
        "https://mkt-intl.myhuaweicloud.com",
        "https://mkt.myhuaweicloud.cn",
    )


def test_missing_credentials_are_a_configuration_error_naming_the_variables() -> None:
    with pytest.raises(ConfigurationError) as caught:
        KooGalleryClient(Settings(endpoint="http://127.0.0.1:9"))

    assert str(caught.value) == (
        "usage API 'v2' needs HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK, KOOGALLERY_SELLER_KEY: "
        "set them in the environment or the function's user data"
    )


def test_settings_never_show_secrets() -> None:
    settings = Settings(
        access_key="FAKEAK0000000000",
        secret_key="fake-secret-value",
        seller_key="fake-seller-value",
        security_token="fake-token-value",
    )

    shown = repr(settings) + str(settings) + settings.model_dump_json()

    for secret in ("fake-secret-value", "fake-seller-value", "fake-token-value"):
        assert secret not in shown


def test_invalid_setting_names_the_environment_variable_without_its_value() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"KOOGALLERY_CHUNK_SIZE": "5000"}.get)

    assert str(caught.value).startswith("invalid configuration: KOOGALLERY_CHUNK_SIZE:")
    assert "5000" not in str(caught.value)


def test_a_200_without_koogallerys_success_code_is_retried_never_counted_accepted() -> None:
    answers = iter(
        [
            httpx.Response(200, text="<html>proxy login</html>"),
            httpx.Response(200, json={"error_code": "MKT.0000", "error_msg": "success"}),
        ]
    )
    sent: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return next(answers)

    settings = Settings(
        endpoint="http://127.0.0.1:9",
        access_key="FAKEAK0000000000",
        secret_key="fake-sk",
        seller_key="fake-seller-key",
    )
    with KooGalleryClient(
        settings, transport=httpx.MockTransport(answer), sleep=lambda _: None
    ) as client:
        result = client.push_usage(_records(2))

    assert [attempt.http_status for attempt in result.attempts] == [200, 200]
    assert sent[0] == sent[1]
    assert [outcome.status for outcome in result.outcomes] == [Status.ACCEPTED] * 2


def test_the_eu_site_never_fails_over_outside_the_eu() -> None:
    assert Settings(site="eu").endpoints == ("https://mkt-euro.myhuaweicloud.com",)


def test_plain_http_is_refused_for_a_host_that_is_not_loopback() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"KOOGALLERY_ENDPOINT": "http://mkt.example.invalid"}.get)

    assert "plain http is allowed only for 127.0.0.1, ::1 or localhost" in str(caught.value)
