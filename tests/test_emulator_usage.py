"""The usage endpoints: what is stored, what is refused with which code, and duplicates."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from koogallery.emulator import Api, EmulatorConfig
from tests.emulator_fixtures import (
    DAILY,
    HOURLY,
    compact,
    dumps,
    legacy_record,
    minute_window,
    seller_signature,
    v1_record,
    v2_record,
    window,
)

pytest_plugins = ["tests.emulator_fixtures"]

SUCCESS = {"error_code": "MKT.0000", "error_msg": "success", "extra_info": {"duplicates": []}}


def _error(response: Any) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error_code"], body["error_msg"]


def test_v2_push_is_stored_exactly_as_received(client) -> None:
    record = v2_record(
        client.clock,
        usage_value="12.3456",
        metering_sn="sn-0001",
        relate_pkg_instance="pkg-0001",
    )

    response = client.push_v2([record])

    assert response.status_code == 200
    assert response.json() == SUCCESS
    (stored,) = client.emulator.state.records
    assert stored.api is Api.V2
    assert stored.instance_id == HOURLY.instance_id
    assert (stored.record_time, stored.begin_time, stored.end_time) == (
        record["record_time"],
        record["begin_time"],
        record["end_time"],
    )
    assert stored.usage_value == Decimal("12.3456")
    assert str(stored.usage_value) == "12.3456"
    assert stored.metering_sn == "sn-0001"
    assert stored.relate_pkg_instance == "pkg-0001"
    assert (stored.product_id, stored.entity) == (None, None)
    assert stored.received_at == client.clock()
    assert stored.request_id == response.headers["X-Request-Id"]


def test_v2_usage_value_sent_as_json_number_is_stored_from_its_text(client) -> None:
    body = dumps({"usage_records": [v2_record(client.clock)]}).replace(b'"1"', b"0.1000")

    response = client.push_v2([], body=body)

    assert response.json() == SUCCESS
    assert str(client.emulator.state.records[0].usage_value) == "0.1000"


def test_v1_push_is_stored_with_product_id_and_without_metering_sn(client) -> None:
    response = client.push_v1([v1_record(client.clock, instance=DAILY, usage_value="7")])

    assert response.json() == SUCCESS
    (stored,) = client.emulator.state.records
    assert (stored.api, stored.instance_id, stored.product_id) == (
        Api.V1,
        DAILY.instance_id,
        DAILY.product_id,
    )
    assert (stored.usage_value, stored.metering_sn) == (Decimal("7"), None)


def test_legacy_push_is_stored_with_its_metering_entity(client) -> None:
    record = legacy_record(client.clock, instance_id=DAILY.instance_id, usage_entity={"gb": "2.5"})

    response = client.push_legacy([record])

    assert response.json() == SUCCESS
    (stored,) = client.emulator.state.records
    assert (stored.api, stored.instance_id, stored.entity) == (Api.LEGACY, DAILY.instance_id, "gb")
    assert (stored.begin_time, stored.end_time) == (record["beginTime"], record["endTime"])
    assert (stored.usage_value, stored.metering_sn) == (Decimal("2.5"), None)


def test_legacy_push_to_another_partner_id_is_refused_with_mkt_0150(client) -> None:
    response = client.push_legacy([legacy_record(client.clock)], partner_id="someone-else")

    assert _error(response) == (
        401,
        "MKT.0150",
        "Illegal operation: partner someone-else is not this seller",
    )


def test_legacy_entity_the_instance_does_not_meter_is_refused_with_mkt_9002(client) -> None:
    record = legacy_record(client.clock, usage_entity={"gb": "1"})

    response = client.push_legacy([record])

    assert _error(response) == (
        500,
        "MKT.9002",
        "Invalid usage enties.: usageRecords[0].usageEntity gb is not metered here",
    )


def test_legacy_record_with_two_entities_is_refused_with_mkt_0101(client) -> None:
    record = legacy_record(client.clock, usage_entity={"times": "1", "gb": "1"})

    response = client.push_legacy([record])

    assert _error(response) == (
        400,
        "MKT.0101",
        "Invalid parameter: usageRecords[0].usageEntity must hold exactly one entity",
    )


def test_legacy_entity_value_is_judged_like_a_usage_value(client) -> None:
    record = legacy_record(client.clock, usage_entity={"times": "1.12345"})

    response = client.push_legacy([record])

    assert _error(response) == (
        500,
        "MKT.0100",
        "Failure of input parameter: usageRecords[0].usageEntity.times has 5 decimal places",
    )


def test_v1_record_carrying_metering_sn_is_refused_as_unknown_field_mkt_0101(client) -> None:
    response = client.push_v1([v1_record(client.clock, metering_sn="sn-1")])

    assert _error(response) == (
        400,
        "MKT.0101",
        "Invalid parameter: usage_records[0] has unknown fields ['metering_sn']",
    )


def test_v1_record_with_another_instances_product_is_refused_with_mkt_0100(client) -> None:
    response = client.push_v1([v1_record(client.clock, product_id=DAILY.product_id)])

    assert _error(response) == (
        500,
        "MKT.0100",
        "Failure of input parameter: usage_records[0].product_id is not the instance's product",
    )


INVALID_V2_FIELDS = [
    pytest.param({"usage_value": "1.00001"}, "usage_value has 5 decimal places", id="5dp"),
    pytest.param({"usage_value": "0"}, "usage_value must be greater than 0", id="zero"),
    pytest.param({"usage_value": "0.0000"}, "usage_value must be greater than 0", id="zero4"),
    pytest.param({"usage_value": "-1"}, "usage_value is not a plain decimal: '-1'", id="neg"),
    pytest.param({"usage_value": "1e3"}, "usage_value is not a plain decimal: '1e3'", id="exp"),
    pytest.param({"usage_value": " 1"}, "usage_value is not a plain decimal: ' 1'", id="space"),
    pytest.param({"usage_value": "1."}, "usage_value is not a plain decimal: '1.'", id="dot"),
    pytest.param(
        {"usage_value": "123456789"}, "usage_value has more than 8 integer digits", id="9int"
    ),
    pytest.param({"usage_value": True}, "usage_value must be a decimal string", id="bool"),
    pytest.param({"instance_id": ""}, "instance_id must hold 1..64 characters", id="empty-id"),
    pytest.param({"instance_id": "i" * 65}, "instance_id must hold 1..64 characters", id="65"),
    pytest.param({"instance_id": 7}, "instance_id must be a string", id="numeric-id"),
    pytest.param({"metering_sn": "s" * 65}, "metering_sn must hold 1..64 characters", id="sn65"),
    pytest.param(
        {"relate_pkg_instance": "p" * 65},
        "relate_pkg_instance must hold 0..64 characters",
        id="pkg65",
    ),
    pytest.param(
        {"begin_time": "2024-01-01T00:00:00Z"},
        "begin_time must be a UTC time yyyyMMddTHHmmssZ",
        id="iso-time",
    ),
    pytest.param(
        {"record_time": "20240230T000000Z"},
        "record_time must be a UTC time yyyyMMddTHHmmssZ",
        id="feb-30",
    ),
    pytest.param(
        {"end_time": "20240101T000000+0800"},
        "end_time must be a UTC time yyyyMMddTHHmmssZ",
        id="offset",
    ),
]


@pytest.mark.parametrize(("fields", "detail"), INVALID_V2_FIELDS)
def test_illegal_field_value_is_refused_with_mkt_0100_naming_index_and_field(
    client, fields: dict[str, Any], detail: str
) -> None:
    records = [v2_record(client.clock, hours_ago=2), v2_record(client.clock, **fields)]

    response = client.push_v2(records)

    assert _error(response) == (
        500,
        "MKT.0100",
        f"Failure of input parameter: usage_records[1].{detail}",
    )
    assert client.emulator.state.records == ()


def test_begin_time_after_end_time_is_refused_with_mkt_0100(client) -> None:
    begin, end = window(client.clock)

    response = client.push_v2([v2_record(client.clock, begin_time=end, end_time=begin)])

    assert _error(response) == (
        500,
        "MKT.0100",
        "Failure of input parameter: usage_records[0].begin_time is after end_time",
    )


def test_end_time_more_than_five_minutes_ahead_is_refused_with_mkt_0100(client) -> None:
    late = compact(client.clock() + timedelta(minutes=5, seconds=1))

    response = client.push_v2([v2_record(client.clock, end_time=late)])

    assert _error(response) == (
        500,
        "MKT.0100",
        "Failure of input parameter: usage_records[0].end_time is in the future",
    )


def test_end_time_five_minutes_ahead_is_accepted(client) -> None:
    edge = compact(client.clock() + timedelta(minutes=5))

    response = client.push_v2([v2_record(client.clock, end_time=edge)])

    assert response.json() == SUCCESS


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"metering_sn": None}, "usage_records[0].metering_sn is missing"),
        ({"record_time": None}, "usage_records[0].record_time is missing"),
        ({"unit": "hour"}, "usage_records[0] has unknown fields ['unit']"),
        ({"product_id": "prod-hourly"}, "usage_records[0] has unknown fields ['product_id']"),
    ],
)
def test_missing_or_unknown_field_is_refused_with_mkt_0101(
    client, fields: dict[str, Any], detail: str
) -> None:
    record = {
        name: value
        for name, value in {**v2_record(client.clock), **fields}.items()
        if value is not None
    }

    response = client.push_v2([record])

    assert _error(response) == (400, "MKT.0101", f"Invalid parameter: {detail}")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"not json", "the body is not valid UTF-8 JSON"),
        (b'{"usage_records": [NaN]}', "the body is not valid UTF-8 JSON"),
        (b"[]", 'the body must be an object {"usage_records": [...]}'),
        (b"{}", "usage_records is missing"),
        (b'{"usage_records": {}}', "usage_records must be a list"),
        (b'{"usage_records": []}', "usage_records is empty"),
        (b'{"usage_records": [], "extra": 1}', "the body has unknown fields ['extra']"),
        (b'{"usage_records": [1]}', "usage_records[0] must be an object"),
    ],
)
def test_body_of_the_wrong_shape_is_refused_with_mkt_0101(
    client, body: bytes, detail: str
) -> None:
    response = client.push_v2([], body=body)

    assert _error(response) == (400, "MKT.0101", f"Invalid parameter: {detail}")


def test_one_bad_record_in_a_batch_stores_nothing(client) -> None:
    records = [v2_record(client.clock, hours_ago=hours) for hours in range(1, 6)]
    records[3]["usage_value"] = "1.00001"

    response = client.push_v2(records)

    assert _error(response) == (
        500,
        "MKT.0100",
        "Failure of input parameter: usage_records[3].usage_value has 5 decimal places",
    )
    assert client.emulator.state.records == ()
    assert client.emulator.state.duplicates == ()


def test_batch_refused_atomically_leaves_its_windows_free_for_a_corrected_push(client) -> None:
    records = [v2_record(client.clock, hours_ago=hours) for hours in range(1, 4)]
    broken = [dict(record) for record in records]
    broken[2]["instance_id"] = "inst-unknown"
    assert client.push_v2(broken).json()["error_code"] == "MKT.9001"

    response = client.push_v2(records)

    assert response.json() == SUCCESS
    assert len(client.emulator.state.records) == 3


def test_more_than_1000_records_is_refused_with_mkt_9003(client) -> None:
    records = [v2_record(client.clock, metering_sn=f"sn-{n}") for n in range(1001)]

    response = client.push_v2(records)

    assert _error(response) == (
        500,
        "MKT.9003",
        "Usage records extends size limit.: 1001 records, at most 1000 are allowed",
    )
    assert client.emulator.state.records == ()


def test_exactly_1000_records_are_accepted(client) -> None:
    records = [
        v2_record(client.clock, metering_sn=f"sn-{n}", **minute_window(client.clock, n))
        for n in range(1000)
    ]

    response = client.push_v2(records)

    assert response.json() == SUCCESS
    assert len(client.emulator.state.records) == 1000


def test_begin_time_more_than_21_days_old_is_refused_with_mkt_9004(client) -> None:
    now = client.clock()
    begin = compact(now - timedelta(days=21, seconds=1))
    end = compact(now - timedelta(days=20))

    response = client.push_v2([v2_record(client.clock, begin_time=begin, end_time=end)])

    assert _error(response) == (
        500,
        "MKT.9004",
        "Record beginTime extends Limit.: usage_records[0].begin_time is more than 21 days in "
        "the past",
    )


def test_begin_time_exactly_21_days_old_is_accepted(client) -> None:
    now = client.clock()
    begin = compact(now - timedelta(days=21))
    end = compact(now - timedelta(days=20))

    response = client.push_v2([v2_record(client.clock, begin_time=begin, end_time=end)])

    assert response.json() == SUCCESS


def test_record_accepted_today_is_refused_once_the_clock_passes_21_days(client) -> None:
    record = v2_record(client.clock)
    client.clock.advance(timedelta(days=21, hours=2))

    response = client.push_v2([record])

    assert response.json()["error_code"] == "MKT.9004"


def test_unknown_instance_is_refused_with_mkt_9001(client) -> None:
    response = client.push_v2([v2_record(client.clock, instance_id="inst-unknown")])

    assert _error(response) == (
        500,
        "MKT.9001",
        "Instance ID not found.: usage_records[0].instance_id inst-unknown is unknown",
    )


def test_unknown_instance_is_accepted_when_accept_any_instance_is_on(start_emulator) -> None:
    client = start_emulator(EmulatorConfig(accept_any_instance=True))

    response = client.push_v2([v2_record(client.clock, instance_id="inst-anything")])

    assert response.json() == SUCCESS
    (charge,) = client.emulator.state.charges
    assert (charge.instance_id, charge.quantity, charge.unit_price, charge.amount) == (
        "inst-anything",
        Decimal("1"),
        None,
        None,
    )


def test_body_signature_with_the_wrong_seller_key_is_refused_with_mkt_0102(client) -> None:
    response = client.push_v2([v2_record(client.clock)], seller_key="not-the-seller-key")

    assert _error(response) == (
        400,
        "MKT.0102",
        "Invalid body sign: signature does not match ts, nonce and body",
    )
    assert client.emulator.state.records == ()


def test_body_signed_over_other_bytes_is_refused_with_mkt_0102(client) -> None:
    signed_body = dumps({"usage_records": [v2_record(client.clock)]})
    sent_body = dumps({"usage_records": [v2_record(client.clock, usage_value="2")]})
    ts = str(int(client.clock().timestamp() * 1000))
    headers = {
        "ts": ts,
        "nonce": "nonce-1",
        "signature": seller_signature("emulator-seller-key-not-real", ts, "nonce-1", signed_body),
    }
    response = client.push_v2([], body=sent_body, body_headers=headers)

    assert _error(response)[:2] == (400, "MKT.0102")


@pytest.mark.parametrize("left_out", ["ts", "nonce", "signature"])
def test_missing_body_signature_header_is_refused_with_mkt_0102(client, left_out: str) -> None:
    headers = {"ts": "1", "nonce": "n", "signature": "s"}
    del headers[left_out]

    response = client.push_v2([v2_record(client.clock)], body_headers=headers)

    assert _error(response) == (
        400,
        "MKT.0102",
        "Invalid body sign: headers ts, nonce and signature are all required",
    )


def test_stale_ts_is_refused_with_mkt_0102(client) -> None:
    stale = str(int((client.clock() - timedelta(minutes=15, seconds=1)).timestamp() * 1000))

    response = client.push_v2([v2_record(client.clock)], ts=stale)

    assert _error(response) == (
        400,
        "MKT.0102",
        "Invalid body sign: ts is more than 15 minutes from server time",
    )


def test_replayed_nonce_is_rejected_with_mkt_0102(client) -> None:
    first = client.push_v2([v2_record(client.clock, hours_ago=1)], nonce="nonce-once")

    replay = client.push_v2([v2_record(client.clock, hours_ago=2)], nonce="nonce-once")

    assert first.json() == SUCCESS
    assert _error(replay) == (
        400,
        "MKT.0102",
        "Invalid body sign: nonce nonce-once was already used",
    )
    assert len(client.emulator.state.records) == 1


def test_nonce_may_be_used_again_after_fifteen_minutes(client) -> None:
    client.push_v2([v2_record(client.clock, hours_ago=1)], nonce="nonce-later")
    client.clock.advance(timedelta(minutes=15, seconds=1))

    response = client.push_v2([v2_record(client.clock, hours_ago=3)], nonce="nonce-later")

    assert response.json() == SUCCESS


def test_forged_body_signature_does_not_burn_the_nonce(client) -> None:
    forged = client.push_v2([v2_record(client.clock)], nonce="nonce-x", seller_key="forger")

    genuine = client.push_v2([v2_record(client.clock)], nonce="nonce-x")

    assert forged.json()["error_code"] == "MKT.0102"
    assert genuine.json() == SUCCESS


def test_bad_apig_signature_is_reported_before_a_bad_body_signature(client) -> None:
    response = client.push_v2([v2_record(client.clock)], sk="wrong-sk", seller_key="wrong-key")

    assert (response.status_code, response.json()["error_code"]) == (401, "APIG.0303")


def test_v1_and_legacy_need_no_body_signature(client) -> None:
    assert client.push_v1([v1_record(client.clock, hours_ago=1)]).json() == SUCCESS
    assert client.push_legacy([legacy_record(client.clock, hours_ago=2)]).json() == SUCCESS


def test_duplicate_metering_sn_is_reported_by_index_and_not_stored_again(client) -> None:
    first = client.push_v2([v2_record(client.clock, hours_ago=1, metering_sn="sn-a")])

    again = client.push_v2(
        [
            v2_record(client.clock, hours_ago=2, metering_sn="sn-b"),
            v2_record(client.clock, hours_ago=3, metering_sn="sn-a"),
        ]
    )

    assert first.json() == SUCCESS
    assert again.json()["extra_info"] == {"duplicates": [1]}
    state = client.emulator.state
    assert [record.metering_sn for record in state.records] == ["sn-a", "sn-b"]
    (duplicate,) = state.duplicates
    assert (duplicate.reason, duplicate.index, duplicate.metering_sn) == (
        "duplicate_metering_sn",
        1,
        "sn-a",
    )
    assert duplicate.request_id == again.headers["X-Request-Id"]


def test_same_window_with_a_new_metering_sn_is_a_duplicate_window(client) -> None:
    client.push_v2([v2_record(client.clock, metering_sn="sn-1", usage_value="1")])

    response = client.push_v2([v2_record(client.clock, metering_sn="sn-2", usage_value="5")])

    assert response.json()["extra_info"] == {"duplicates": [0]}
    assert [record.usage_value for record in client.emulator.state.records] == [Decimal("1")]
    assert client.emulator.state.duplicates[0].reason == "duplicate_window"


def test_duplicates_within_one_request_keep_the_first_occurrence(client) -> None:
    records = [
        v2_record(client.clock, hours_ago=1, metering_sn="sn-1", usage_value="1"),
        v2_record(client.clock, hours_ago=2, metering_sn="sn-1", usage_value="2"),
        v2_record(client.clock, hours_ago=1, metering_sn="sn-3", usage_value="3"),
        v2_record(client.clock, hours_ago=4, metering_sn="sn-4", usage_value="4"),
    ]

    response = client.push_v2(records)

    assert response.json()["extra_info"] == {"duplicates": [1, 2]}
    state = client.emulator.state
    assert [(record.metering_sn, record.usage_value) for record in state.records] == [
        ("sn-1", Decimal("1")),
        ("sn-4", Decimal("4")),
    ]
    assert [(d.index, d.reason) for d in state.duplicates] == [
        (1, "duplicate_metering_sn"),
        (2, "duplicate_window"),
    ]


def test_v1_duplicates_are_judged_by_window_alone(client) -> None:
    client.push_v1([v1_record(client.clock)])

    response = client.push_v1([v1_record(client.clock, usage_value="9")])

    assert response.json()["extra_info"] == {"duplicates": [0]}
    assert len(client.emulator.state.records) == 1


def test_window_held_through_v2_is_a_duplicate_through_legacy(client) -> None:
    client.push_v2([v2_record(client.clock)])

    response = client.push_legacy([legacy_record(client.clock)])

    assert response.json()["extra_info"] == {"duplicates": [0]}


def test_charges_are_stored_quantity_times_unit_price_exactly(client) -> None:
    client.push_v2(
        [
            v2_record(client.clock, hours_ago=1, usage_value="1.1111"),
            v2_record(client.clock, hours_ago=2, usage_value="2.2222"),
            v2_record(client.clock, hours_ago=2, usage_value="100", metering_sn="sn-dup"),
            v2_record(client.clock, instance_id=DAILY.instance_id, usage_value="3"),
        ]
    )

    charges = {charge.instance_id: charge for charge in client.emulator.state.charges}

    hourly, daily = charges[HOURLY.instance_id], charges[DAILY.instance_id]
    assert (hourly.quantity, hourly.unit_price, hourly.amount) == (
        Decimal("3.3333"),
        Decimal("0.5"),
        Decimal("1.66665"),
    )
    assert (hourly.currency, hourly.record_count) == ("CNY", 2)
    assert (daily.quantity, daily.amount) == (Decimal("3"), Decimal("3.75"))


def test_every_request_is_logged_with_its_status_code_and_request_id(client) -> None:
    ok = client.push_v2([v2_record(client.clock)], nonce="nonce-log")
    refused = client.push_v1([v1_record(client.clock, usage_value="0")])

    first, second = client.emulator.state.requests

    assert (first.api, first.http_status, first.error_code) == (Api.V2, 200, "MKT.0000")
    assert (first.record_count, first.stored, first.duplicates) == (1, 1, 0)
    assert (first.nonce, first.request_id) == ("nonce-log", ok.headers["X-Request-Id"])
    assert (first.method, first.path, first.fault) == (
        "POST",
        "/api/mkp-openapi-public/global/v1/isv/usage-data",
        None,
    )
    assert (second.api, second.http_status, second.error_code) == (Api.V1, 500, "MKT.0100")
    assert (second.record_count, second.stored, second.nonce) == (1, 0, None)
    assert second.request_id == refused.headers["X-Request-Id"]


def test_refused_request_is_logged_with_the_record_count_of_its_body(client) -> None:
    client.push_v1([v1_record(client.clock), v1_record(client.clock)], sk="wrong")

    (entry,) = client.emulator.state.requests

    assert (entry.http_status, entry.error_code, entry.record_count) == (401, "APIG.0303", 2)


def test_every_response_carries_a_unique_request_id(client) -> None:
    responses = [
        client.push_v2([v2_record(client.clock)]),
        client.push_v2([v2_record(client.clock)]),
        client.send("POST", "/nowhere", b"{}"),
        client.admin("GET", "health"),
    ]

    ids = [response.headers["X-Request-Id"] for response in responses]
    assert len(set(ids)) == 4
    assert all(len(request_id) == 32 for request_id in ids)


def test_concurrent_pushes_from_several_threads_are_stored_once(client) -> None:
    shared = [
        v2_record(client.clock, hours_ago=n, metering_sn=f"shared-{n}") for n in range(1, 51)
    ]
    outcomes: list[int] = []
    lock = threading.Lock()

    def push(worker: int) -> None:
        own = [
            v2_record(
                client.clock,
                instance_id=DAILY.instance_id,
                hours_ago=1 + worker * 50 + n,
                metering_sn=f"own-{worker}-{n}",
            )
            for n in range(50)
        ]
        response = client.push_v2(shared + own)
        with lock:
            outcomes.append(len(response.json()["extra_info"]["duplicates"]))

    threads = [threading.Thread(target=push, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    state = client.emulator.state
    assert len(state.records) == 50 + 8 * 50
    assert len({record.metering_sn for record in state.records}) == 450
    assert len(state.duplicates) == 7 * 50
    assert sorted(outcomes) == [0] + [50] * 7


def test_five_full_batches_in_a_row_are_all_stored(client) -> None:
    batches = [
        [
            v2_record(
                client.clock,
                metering_sn=f"sn-{batch}-{n}",
                **minute_window(client.clock, batch * 1000 + n),
            )
            for n in range(1000)
        ]
        for batch in range(5)
    ]

    responses = [client.push_v2(batch) for batch in batches]

    assert [response.json() for response in responses] == [SUCCESS] * 5
    state = client.emulator.state
    assert len(state.records) == 5000
    assert len({record.metering_sn for record in state.records}) == 5000
    assert state.duplicates == ()
