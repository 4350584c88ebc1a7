"""Usage record rules, the deterministic metering_sn and the wire formats."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from koogallery.errors import RecordValidationError
from koogallery.models import UsageRecord, format_usage_value, usage_body

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=timezone.utc)


def _record(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "instance_id": "inst-1",
        "begin_time": "2026-12-04T08:00:00Z",
        "end_time": "2026-12-04T09:00:00Z",
        "usage_value": "12.5",
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def _error(**fields: Any) -> RecordValidationError:
    with pytest.raises(RecordValidationError) as caught:
        UsageRecord.parse(_record(**fields), now=NOW)
    return caught.value


def test_compact_and_iso_times_are_sent_in_compact_utc() -> None:
    record = UsageRecord.parse(
        _record(begin_time="20261204T080000Z", end_time="2026-12-04T17:00:00+08:00"), now=NOW
    )

    wire = record.to_wire()

    assert wire["begin_time"] == "20261204T080000Z"
    assert wire["end_time"] == "20261204T090000Z"
    assert wire["record_time"] == "20261204T090000Z"


def test_time_without_zone_is_refused_naming_the_field() -> None:
    error = _error(begin_time="2026-12-04T08:00:00")

    assert error.field == "begin_time"
    assert str(error) == "begin_time: time has no zone; add 'Z' or an offset such as '+08:00'"


def test_begin_after_end_is_refused_naming_begin_time() -> None:
    error = _error(begin_time="2026-12-04T10:00:00Z")

    assert error.field == "begin_time"
    assert str(error) == "begin_time: 20261204T100000Z is after end_time 20261204T090000Z"


def test_end_in_the_future_beyond_five_minutes_is_refused() -> None:
    error = _error(end_time="2026-12-04T12:05:01Z")

    assert error.field == "end_time"
    assert "is in the future" in str(error)


def test_end_within_five_minutes_of_now_is_accepted() -> None:
    record = UsageRecord.parse(_record(end_time="2026-12-04T12:05:00Z"), now=NOW)

    assert record.end_time == datetime(2026, 12, 4, 12, 5, tzinfo=timezone.utc)


def test_begin_older_than_21_days_is_refused_as_mkt_9004() -> None:
    error = _error(begin_time="2026-11-13T11:59:59Z")

    assert error.field == "begin_time"
    assert str(error) == (
        "begin_time: 20261113T115959Z is more than 21 days old; KooGallery rejects it (MKT.9004)"
    )


def test_begin_exactly_21_days_old_is_accepted() -> None:
    record = UsageRecord.parse(_record(begin_time="2026-11-13T12:00:00Z"), now=NOW)

    assert record.begin_time == datetime(2026, 11, 13, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("12.34567", "usage_value: has 5 decimal places, at most 4 are allowed"),
        ("-1", "usage_value: must be greater than 0, got -1"),
        ("0", "usage_value: must be greater than 0, got 0"),
        ("123456789", "usage_value: has more than 8 integer digits"),
        ("NaN", "usage_value: must be a finite number"),
        ("twelve", "usage_value: 'twelve' is not a decimal number"),
        (True, "usage_value: expected a number, got a boolean"),
    ],
)
def test_bad_usage_values_are_refused_with_the_rule_they_break(
    value: object, message: str
) -> None:
    error = _error(usage_value=value)

    assert error.field == "usage_value"
    assert str(error) == message


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("99", "99"),
        ("12.50", "12.5"),
        (Decimal("1E+2"), "100"),
        (12.5, "12.5"),
        (0.1, "0.1"),
        (3, "3"),
        ("99999999.9999", "99999999.9999"),
        ("0.0001", "0.0001"),
    ],
)
def test_usage_value_is_sent_as_a_plain_decimal_string(value: object, wire: str) -> None:
    record = UsageRecord.parse(_record(usage_value=value), now=NOW)

    assert record.to_wire()["usage_value"] == wire


def test_missing_instance_id_is_refused_naming_it() -> None:
    error = _error(instance_id=None)

    assert error.field == "instance_id"
    assert str(error) == "instance_id: is required"


def test_instance_id_longer_than_64_is_refused() -> None:
    error = _error(instance_id="x" * 65)

    assert error.field == "instance_id"


def test_unknown_field_is_refused_naming_it() -> None:
    error = _error(usage="3")

    assert error.field == "usage"
    assert str(error) == "usage: is not a usage record field"


def test_metering_sn_is_sha256_of_instance_window_and_package() -> None:
    record = UsageRecord.parse(_record(relate_pkg_instance="pkg-9"), now=NOW)

    key = "inst-1|20261204T080000Z|20261204T090000Z|pkg-9"
    assert record.metering_sn == hashlib.sha256(key.encode()).hexdigest()


def test_metering_sn_without_package_uses_an_empty_last_part() -> None:
    record = UsageRecord.parse(_record(), now=NOW)

    key = "inst-1|20261204T080000Z|20261204T090000Z|"
    assert record.metering_sn == hashlib.sha256(key.encode()).hexdigest()


def test_same_window_in_another_time_notation_gets_the_same_metering_sn() -> None:
    compact = UsageRecord.parse(_record(begin_time="20261204T080000Z"), now=NOW)
    offset = UsageRecord.parse(_record(begin_time="2026-12-04T16:00:00+08:00"), now=NOW)

    assert compact.metering_sn == offset.metering_sn


def test_caller_metering_sn_wins() -> None:
    record = UsageRecord.parse(_record(metering_sn="seller-sn-1"), now=NOW)

    assert record.to_wire()["metering_sn"] == "seller-sn-1"


def test_record_time_defaults_to_end_time_and_a_given_one_is_kept() -> None:
    given = UsageRecord.parse(_record(record_time="2026-12-04T09:10:00Z"), now=NOW)

    assert given.to_wire()["record_time"] == "20261204T091000Z"


def test_v2_body_is_sorted_compact_json() -> None:
    record = UsageRecord.parse(_record(metering_sn="sn-1"), now=NOW)

    body = usage_body([record], "v2")

    assert body == (
        b'{"usage_records":[{"begin_time":"20261204T080000Z","end_time":"20261204T090000Z",'
        b'"instance_id":"inst-1","metering_sn":"sn-1","record_time":"20261204T090000Z",'
        b'"usage_value":"12.5"}]}'
    )


@pytest.mark.parametrize(
    ("fields", "usage_api"),
    [
        ({}, "v2"),
        ({"relate_pkg_instance": "pkg-1", "usage_value": "100"}, "v2"),
        ({"record_time": "2026-12-04T08:30:00Z", "usage_value": 0.0001}, "v2"),
        ({"metering_sn": 'seller "sn" \\ 1\t', "instance_id": "inst-\u00e9"}, "v2"),
        ({"product_id": "prod-1", "relate_pkg_instance": "pkg-1"}, "v1"),
        ({"usage_value": "99999999.9999"}, "legacy"),
    ],
    ids=["plain", "package", "record-time", "escaped", "v1", "legacy"],
)
def test_the_rendered_record_and_body_are_the_canonical_json_of_the_wire_dict(
    fields: dict[str, Any], usage_api: str
) -> None:
    record = UsageRecord.parse(_record(**fields), now=NOW)
    wire = record.to_wire(usage_api)
    envelope = "usageRecords" if usage_api == "legacy" else "usage_records"

    rendered = record.wire_json(usage_api)
    body = usage_body([record, record], usage_api)

    assert rendered == json.dumps(wire, sort_keys=True, separators=(",", ":"))
    assert body == json.dumps(
        {envelope: [wire, wire]}, sort_keys=True, separators=(",", ":")
    ).encode("ascii")


def test_v1_body_carries_product_id_and_no_metering_sn() -> None:
    record = UsageRecord.parse(_record(product_id="prod-1"), now=NOW)

    body = json.loads(usage_body([record], "v1"))

    assert body == {
        "usage_records": [
            {
                "instance_id": "inst-1",
                "record_time": "20261204T090000Z",
                "begin_time": "20261204T080000Z",
                "end_time": "20261204T090000Z",
                "usage_value": "12.5",
                "product_id": "prod-1",
            }
        ]
    }


def test_v1_record_without_product_id_cannot_be_sent() -> None:
    record = UsageRecord.parse(_record(), now=NOW)

    with pytest.raises(RecordValidationError) as caught:
        record.to_wire("v1")

    assert caught.value.field == "product_id"


def test_legacy_body_is_camel_case_with_a_usage_entity() -> None:
    record = UsageRecord.parse(_record(), now=NOW)

    body = json.loads(usage_body([record], "legacy", usage_entity="hours"))

    assert body == {
        "usageRecords": [
            {
                "instanceId": "inst-1",
                "recordTime": "20261204T090000Z",
                "beginTime": "20261204T080000Z",
                "endTime": "20261204T090000Z",
                "usageEntity": {"hours": "12.5"},
            }
        ]
    }


def test_format_usage_value_never_uses_an_exponent() -> None:
    assert format_usage_value(Decimal("1E+7")) == "10000000"
    assert format_usage_value(Decimal("1E-4")) == "0.0001"


def test_a_value_longer_than_decimal_precision_is_refused_not_rounded() -> None:
    error = _error(usage_value="0.99999999999999999999999999999")

    assert str(error) == "usage_value: has 29 decimal places, at most 4 are allowed"


def test_trailing_zeros_do_not_count_as_decimal_places() -> None:
    record = UsageRecord.parse(_record(usage_value="12.5000000"), now=NOW)

    assert record.to_wire()["usage_value"] == "12.5"


@pytest.mark.parametrize("record_time", ["2099-01-01T00:00:00Z", "2026-12-04T07:59:59Z"])
def test_record_time_outside_begin_time_and_now_is_refused(record_time: str) -> None:
    error = _error(record_time=record_time)

    assert error.field == "record_time"
    assert "must lie between begin_time 20261204T080000Z and now" in str(error)
