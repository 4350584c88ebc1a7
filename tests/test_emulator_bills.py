"""The bill APIs: bodies computed from pushed usage, cycles, paging, discrepancies and refusals.

Usage is pushed on 2026-11-20 (so every record lies within the 21-day window), then the clock
moves to 2026-12-06, after the November bill closed. The data set, priced at HOURLY 0.5 and
DAILY 1.25 per unit, gives these lines for cycle 2026-11 (Beijing days):

    2026-11-01  inst-hourly-0001  2.5 + 1.25 = 3.75  -> 1.875
    2026-11-02  inst-daily-0002   4.1                 -> 5.125
    2026-11-02  inst-hourly-0001  0.3333              -> 0.16665
    2026-11-03  inst-daily-0002   2                   -> 2.50
    2026-11-03  inst-hourly-0001  1                   -> 0.5

and one line for cycle 2026-10 (the record of 2026-10-31T15:00Z, 23:00 in Beijing).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest

from koogallery.emulator import (
    BILL_SUMMARY_PATH,
    DEFAULT_PARTNER_ID,
    FEE_RECORDS_PATH,
    SUBCUSTOMER_SUMS_PATH,
    BillDiscrepancy,
    Credential,
    EmulatorConfig,
    FaultPlan,
    Instance,
)
from koogallery.emulator.exchange import json_text
from tests.emulator_fixtures import DAILY, HOURLY, EmulatorClient, ManualClock, compact

pytest_plugins = ["tests.emulator_fixtures"]

PUSHED_AT = datetime(2026, 11, 20, tzinfo=timezone.utc)
AFTER_CLOSE = datetime(2026, 12, 6, tzinfo=timezone.utc)
NOVEMBER_CLOSES = datetime(2026, 12, 5, 4, 0, tzinfo=timezone.utc)  # 12:00 Beijing
BILL_PATHS = (BILL_SUMMARY_PATH, SUBCUSTOMER_SUMS_PATH, FEE_RECORDS_PATH)


@dataclass(frozen=True)
class Num:
    """A JSON number exactly as written on the wire, so ``2.50`` and ``2.5`` differ."""

    text: str


def exact(response: httpx.Response) -> Any:
    """The body with every non-integer number kept as its literal text."""
    return json.loads(response.text, parse_float=Num)


def usage(instance: Instance, begin: str, value: str, *, hours: int = 1) -> dict[str, Any]:
    """A v2 record beginning at ``begin`` (``YYYY-MM-DDTHH:MMZ``), lasting ``hours``."""
    start = datetime.strptime(begin, "%Y-%m-%dT%H:%MZ").replace(tzinfo=timezone.utc)
    return {
        "instance_id": instance.instance_id,
        "record_time": compact(PUSHED_AT),
        "begin_time": compact(start),
        "end_time": compact(start + timedelta(hours=hours)),
        "usage_value": value,
        "metering_sn": f"{instance.instance_id}-{compact(start)}",
    }


DATA_SET = [
    usage(HOURLY, "2026-10-31T15:00Z", "3"),
    usage(HOURLY, "2026-10-31T17:00Z", "2.5"),
    usage(HOURLY, "2026-11-01T02:00Z", "1.25"),
    usage(HOURLY, "2026-11-02T03:00Z", "0.3333"),
    usage(DAILY, "2026-11-01T16:00Z", "4.1", hours=24),
    usage(DAILY, "2026-11-02T16:00Z", "2", hours=24),
    usage(HOURLY, "2026-11-03T05:00Z", "1"),
]


def line_id(instance_id: str, day: str, suffix: str = "") -> str:
    return hashlib.sha256(f"{instance_id}|{day}{suffix}".encode()).hexdigest()[:32]


def trade_id(instance_id: str, day: str) -> str:
    digest = hashlib.sha256(f"trade|{instance_id}|{day}".encode()).hexdigest()
    return f"EMU{day.replace('-', '')}{digest[:12].upper()}"


def fee_record(
    instance: Instance, day: str, start: str, quantity: Any, amount: Any
) -> dict[str, Any]:
    """The fee record the emulator must serve; ``start`` is the Beijing day's start in UTC."""
    return {
        "id": line_id(instance.instance_id, day),
        "bill_cycle": day[:7],
        "customer_id": f"customer-{instance.instance_id}",
        "association_type": "2",
        "service_type_code": "hws.service.type.marketplace",
        "service_type_name": "KooGallery",
        "resource_type_code": instance.product_id,
        "resource_type_name": instance.product_id,
        "charging_mode": 3,
        "bill_detail_type": 5,
        "trade_id": trade_id(instance.instance_id, day),
        "trade_time": f"{day}T15:59:59Z",
        "consume_time": start,
        "region_code": "cn-north-4",
        "resource_id": instance.instance_id,
        "resource_name": instance.instance_id,
        "product_id": instance.product_id,
        "usage_type": "usage",
        "usage_amount": quantity,
        "usage_measure_id": 1,
        "official_amount": amount,
        "official_discount_amount": 0,
        "payment_amount": amount,
        "cash_amount": amount,
        "credit_amount": 0,
        "coupon_amount": 0,
        "debt_amount": 0,
        "writeoff_amount": 0,
        "period_type": 25,
        "partner_id": DEFAULT_PARTNER_ID,
    }


NOVEMBER_LINES = [
    fee_record(HOURLY, "2026-11-01", "2026-10-31T16:00:00Z", Num("3.75"), Num("1.875")),
    fee_record(DAILY, "2026-11-02", "2026-11-01T16:00:00Z", Num("4.1"), Num("5.125")),
    fee_record(HOURLY, "2026-11-02", "2026-11-01T16:00:00Z", Num("0.3333"), Num("0.16665")),
    fee_record(DAILY, "2026-11-03", "2026-11-02T16:00:00Z", 2, Num("2.50")),
    fee_record(HOURLY, "2026-11-03", "2026-11-02T16:00:00Z", 1, Num("0.5")),
]


def bill_sum(instance: Instance, amount: Num) -> dict[str, Any]:
    return {
        "customer_id": f"customer-{instance.instance_id}",
        "cloud_service_type": "hws.service.type.marketplace",
        "cloud_service_type_name": "KooGallery",
        "bill_type": 0,
        "charge_mode": 3,
        "amount": amount,
        "debt_amount": amount,
        "adjustment_amount": 0,
        "discount_amount": 0,
        "measure_id": 1,
        "resource_type_code": instance.product_id,
        "resource_type_name": instance.product_id,
    }


def summary(
    consume: str, adjustments: Any = 0, due: str | None = None, tax: str = "0.00"
) -> dict[str, Any]:
    return {
        "bill_cycle": "2026-11",
        "initial_amount_due": Num(due or consume),
        "consume_amount": Num(consume),
        "refunds": 0,
        "adjustments": adjustments,
        "tax_amount": Num(tax),
        "currency": "CNY",
    }


@pytest.fixture
def clock() -> ManualClock:
    """The platform clock, at the day the data set is pushed."""
    return ManualClock(PUSHED_AT)


def push_data_set(client: EmulatorClient, records: list[dict[str, Any]] = DATA_SET) -> None:
    response = client.push_v2(records)
    assert response.json()["error_code"] == "MKT.0000", response.text
    client.clock.advance(AFTER_CLOSE - client.clock())


@pytest.fixture
def billed(client: EmulatorClient) -> EmulatorClient:
    """The default emulator holding the data set, its clock after November closed."""
    push_data_set(client)
    return client


def fee_records(client: EmulatorClient, **query: Any) -> httpx.Response:
    return client.get(FEE_RECORDS_PATH, {"bill_cycle": "2026-11", **query})


def all_ids_by_unique_offset(client: EmulatorClient, limit: int) -> list[str]:
    """A client that keeps the ids it has not seen and advances by how many it kept."""
    seen: list[str] = []
    offset, total = 0, 1
    while offset < total:
        body = fee_records(client, offset=offset, limit=limit).json()
        total = body["total_count"]
        fresh = [row["id"] for row in body["fee_records"] if row["id"] not in seen]
        if not fresh:
            break
        seen.extend(fresh)
        offset += len(fresh)
    return seen


# --- bodies ----------------------------------------------------------------------------


def test_fee_records_hold_one_line_per_instance_per_beijing_day(billed) -> None:
    response = fee_records(billed, limit=100)

    assert response.status_code == 200
    assert exact(response) == {"total_count": 5, "currency": "CNY", "fee_records": NOVEMBER_LINES}
    assert len(response.headers["X-Request-Id"]) == 32


def test_money_is_written_as_exact_json_numbers(billed) -> None:
    text = fee_records(billed, limit=100).text

    assert '"payment_amount":2.50,' in text
    assert '"payment_amount":0.16665,' in text
    assert '"credit_amount":0,' in text
    assert '"2.50"' not in text


def test_subcustomer_monthly_sums_group_lines_by_customer_and_product(billed) -> None:
    response = billed.get(SUBCUSTOMER_SUMS_PATH, {"cycle": "2026-11"})

    assert response.status_code == 200
    assert exact(response) == {
        "bill_sums": [bill_sum(DAILY, Num("7.625")), bill_sum(HOURLY, Num("2.54165"))],
        "count": 2,
        "currency": "CNY",
    }


def test_partner_summary_totals_the_fee_lines(billed) -> None:
    response = billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"})

    assert response.status_code == 200
    assert exact(response) == summary("10.16665")
    assert response.text.startswith('{"bill_cycle":"2026-11","initial_amount_due":10.16665,')


def test_a_record_belongs_to_the_beijing_day_of_its_begin_time(billed) -> None:
    october = billed.get(FEE_RECORDS_PATH, {"bill_cycle": "2026-10"}).json()
    november = billed.emulator.bills.view("2026-11")

    assert [(row["consume_time"], row["usage_amount"]) for row in october["fee_records"]] == [
        ("2026-10-30T16:00:00Z", 3)
    ]
    first = november.lines[0]
    assert (first.day.isoformat(), first.quantity) == ("2026-11-01", Decimal("3.75"))
    assert first.consume_time == "2026-10-31T16:00:00Z"
    assert first.trade_time == "2026-11-01T15:59:59Z"


def test_tax_rate_and_bill_currency_come_from_the_config(start_emulator) -> None:
    client = start_emulator(
        EmulatorConfig(instances=[HOURLY, DAILY], tax_rate=Decimal("0.06"), bill_currency="USD")
    )
    push_data_set(client)

    body = exact(client.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"}))

    assert body == {**summary("10.16665", tax="0.61"), "currency": "USD"}


def test_an_unregistered_instance_is_billed_at_zero_and_flagged(start_emulator) -> None:
    client = start_emulator(EmulatorConfig(accept_any_instance=True))
    stray = Instance("inst-stray", product_id="unknown", unit_price=Decimal(1))
    push_data_set(client, [usage(stray, "2026-11-10T00:00Z", "7")])

    (row,) = fee_records(client).json()["fee_records"]

    assert (row["resource_name"], row["customer_id"]) == (
        "inst-stray (unpriced)",
        "customer-inst-stray",
    )
    assert (row["usage_amount"], row["payment_amount"], row["product_id"]) == (7, 0, None)
    assert client.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"}).json()["currency"] == "CNY"


def test_a_chosen_customer_id_is_billed(start_emulator) -> None:
    shared = Instance("inst-a", product_id="prod-a", unit_price=Decimal("2"), customer_id="c-1")
    client = start_emulator(EmulatorConfig(instances=[shared]))
    push_data_set(client, [usage(shared, "2026-11-10T00:00Z", "1.5")])

    (line,) = fee_records(client).json()["fee_records"]
    (total,) = client.get(SUBCUSTOMER_SUMS_PATH, {"cycle": "2026-11"}).json()["bill_sums"]

    assert (line["customer_id"], total["customer_id"], total["amount"]) == ("c-1", "c-1", 3.0)


# --- paging ----------------------------------------------------------------------------


def test_fee_records_page_by_record_offset(billed) -> None:
    pages = [fee_records(billed, offset=offset, limit=2).json() for offset in (0, 2, 4, 6)]

    assert [page["total_count"] for page in pages] == [5, 5, 5, 5]
    ids = [[row["id"] for row in page["fee_records"]] for page in pages]
    expected = [row["id"] for row in NOVEMBER_LINES]
    assert ids == [expected[0:2], expected[2:4], expected[4:5], []]


def test_subcustomer_sums_page_by_record_offset(billed) -> None:
    second = billed.get(SUBCUSTOMER_SUMS_PATH, {"cycle": "2026-11", "offset": 1, "limit": 1})

    body = second.json()
    assert (body["count"], [item["customer_id"] for item in body["bill_sums"]]) == (
        2,
        ["customer-inst-hourly-0001"],
    )


def test_limit_defaults_to_ten(start_emulator) -> None:
    client = start_emulator(EmulatorConfig(instances=[HOURLY]))
    records = [usage(HOURLY, f"2026-11-{day:02d}T01:00Z", "1") for day in range(1, 13)]
    push_data_set(client, records)

    body = fee_records(client).json()

    assert (body["total_count"], len(body["fee_records"])) == (12, 10)


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ({"limit": 0}, "limit must be a whole number in 1..100"),
        ({"limit": 101}, "limit must be a whole number in 1..100"),
        ({"limit": "ten"}, "limit must be a whole number in 1..100"),
        ({"offset": -1}, "offset must be a whole number in 0..2147483646"),
        ({"bill_cycle": "2026-13"}, "bill_cycle must be YYYY-MM"),
        ({"bill_cycle": "2026-1"}, "bill_cycle must be YYYY-MM"),
        ({"customer_id": "c"}, "the emulator does not support ['customer_id']"),
    ],
)
def test_bad_paging_or_cycle_answers_400_cbc_0100(billed, query, detail) -> None:
    response = fee_records(billed, **query)

    assert response.status_code == 400
    assert response.json() == {
        "error_code": "CBC.0100",
        "error_msg": f"Invalid parameter: {detail}",
    }


def test_a_missing_cycle_answers_400(billed) -> None:
    response = billed.get(SUBCUSTOMER_SUMS_PATH, {"bill_cycle": "2026-11"})

    assert response.status_code == 400
    assert response.json()["error_msg"].startswith("Invalid parameter: ")


def test_limits_of_one_and_one_hundred_are_accepted(billed) -> None:
    assert [fee_records(billed, limit=limit).status_code for limit in (1, 100)] == [200, 200]


# --- paging anomalies ------------------------------------------------------------------


def test_duplicate_row_repeats_the_last_row_of_page_one_first_on_page_two(billed) -> None:
    billed.emulator.inject_bill_discrepancy({"kind": "duplicate_row", "cycle": "2026-11"})
    expected = [row["id"] for row in NOVEMBER_LINES]

    pages = [fee_records(billed, offset=offset, limit=2).json() for offset in (0, 2, 4, 6)]

    ids = [[row["id"] for row in page["fee_records"]] for page in pages]
    assert ids == [expected[0:2], [expected[1], expected[2]], expected[3:5], []]
    assert [page["total_count"] for page in pages] == [5, 5, 5, 5]


def test_duplicate_row_still_lets_a_de_duplicating_client_read_every_row(billed) -> None:
    billed.emulator.inject_bill_discrepancy({"kind": "duplicate_row", "cycle": "2026-11"})
    expected = [row["id"] for row in NOVEMBER_LINES]

    received: list[str] = []
    offset, total = 0, 1
    while offset < total:
        body = fee_records(billed, offset=offset, limit=2).json()
        total = body["total_count"]
        received.extend(row["id"] for row in body["fee_records"])
        offset += len(body["fee_records"])

    assert len(received) == 6
    assert list(dict.fromkeys(received)) == expected
    assert all_ids_by_unique_offset(billed, limit=3) == expected


def test_duplicate_row_with_a_multiple_of_the_limit_serves_the_last_row_at_offset_n(
    billed,
) -> None:
    billed.emulator.inject_bill_discrepancy(
        {
            "kind": "drop_line",
            "instance_id": HOURLY.instance_id,
            "cycle": "2026-11",
            "day": "2026-11-03",
        }
    )
    billed.emulator.inject_bill_discrepancy({"kind": "duplicate_row", "cycle": "2026-11"})
    expected = [row["id"] for row in NOVEMBER_LINES[:4]]

    pages = [fee_records(billed, offset=offset, limit=2).json() for offset in (0, 2, 4)]

    ids = [[row["id"] for row in page["fee_records"]] for page in pages]
    assert ids == [expected[0:2], [expected[1], expected[2]], [expected[3]]]
    assert [page["total_count"] for page in pages] == [4, 4, 4]
    assert all_ids_by_unique_offset(billed, limit=2) == expected


def test_duplicate_row_needs_more_rows_than_the_limit(billed) -> None:
    billed.emulator.inject_bill_discrepancy({"kind": "duplicate_row", "cycle": "2026-11"})

    page = fee_records(billed, limit=5).json()

    assert [row["id"] for row in page["fee_records"]] == [row["id"] for row in NOVEMBER_LINES]
    assert fee_records(billed, offset=5, limit=5).json()["fee_records"] == []


def test_count_skew_reports_more_rows_than_exist(billed) -> None:
    billed.emulator.inject_bill_discrepancy({"kind": "count_skew", "cycle": "2026-11", "delta": 1})

    last = fee_records(billed, offset=4, limit=2).json()
    beyond = fee_records(billed, offset=6, limit=2).json()

    assert (last["total_count"], len(last["fee_records"])) == (6, 1)
    assert (beyond["total_count"], beyond["fee_records"]) == (6, [])
    assert billed.emulator.bills.view("2026-11").count_skew == 1
    total = exact(billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"}))
    assert total["consume_amount"] == Num("10.16665")


def test_paging_anomalies_touch_only_their_cycle(billed) -> None:
    billed.emulator.inject_bill_discrepancy({"kind": "count_skew", "cycle": "2026-10"})

    assert fee_records(billed).json()["total_count"] == 5


# --- discrepancies ---------------------------------------------------------------------


def test_drop_line_of_one_day_removes_it_from_lines_sums_and_summary(billed) -> None:
    billed.emulator.inject_bill_discrepancy(
        BillDiscrepancy(
            "drop_line", cycle="2026-11", instance_id=HOURLY.instance_id, day="2026-11-02"
        )
    )

    lines = exact(fee_records(billed, limit=100))["fee_records"]
    sums = exact(billed.get(SUBCUSTOMER_SUMS_PATH, {"cycle": "2026-11"}))["bill_sums"]
    total = exact(billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"}))

    assert lines == [NOVEMBER_LINES[index] for index in (0, 1, 3, 4)]
    assert sums == [bill_sum(DAILY, Num("7.625")), bill_sum(HOURLY, Num("2.375"))]
    assert total == summary("10.000")


def test_drop_line_without_a_day_drops_the_whole_cycle_of_that_instance(billed) -> None:
    billed.emulator.inject_bill_discrepancy(
        {"kind": "drop_line", "instance_id": HOURLY.instance_id, "cycle": "2026-11"}
    )

    view = billed.emulator.bills.view("2026-11")

    assert [line.instance_id for line in view.lines] == [DAILY.instance_id] * 2
    assert [item.customer_id for item in view.sums] == ["customer-inst-daily-0002"]
    assert view.summary.consume_amount == Decimal("7.625")
    assert len(billed.emulator.bills.view("2026-10").lines) == 1


def test_change_amount_without_a_day_changes_the_first_days_line_and_totals(billed) -> None:
    billed.emulator.inject_bill_discrepancy(
        {
            "kind": "change_amount",
            "instance_id": HOURLY.instance_id,
            "cycle": "2026-11",
            "delta": "1.50",
        }
    )

    lines = exact(fee_records(billed, limit=100))["fee_records"]
    sums = exact(billed.get(SUBCUSTOMER_SUMS_PATH, {"cycle": "2026-11"}))["bill_sums"]
    total = exact(billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"}))

    changed = {
        **NOVEMBER_LINES[0],
        **dict.fromkeys(("official_amount", "payment_amount", "cash_amount"), Num("3.375")),
    }
    assert lines == [changed, *NOVEMBER_LINES[1:]]
    assert sums == [bill_sum(DAILY, Num("7.625")), bill_sum(HOURLY, Num("4.04165"))]
    assert total == summary("11.66665")


def test_change_quantity_changes_only_the_usage_amount(billed) -> None:
    billed.emulator.inject_bill_discrepancy(
        {
            "kind": "change_quantity",
            "instance_id": DAILY.instance_id,
            "cycle": "2026-11",
            "delta": "-0.1",
            "day": "2026-11-03",
        }
    )

    lines = exact(fee_records(billed, limit=100))["fee_records"]

    assert lines == [
        *NOVEMBER_LINES[:3],
        {**NOVEMBER_LINES[3], "usage_amount": Num("1.9")},
        NOVEMBER_LINES[4],
    ]
    assert exact(billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"})) == summary("10.16665")


def test_add_line_bills_usage_that_was_never_pushed(billed) -> None:
    billed.emulator.inject_bill_discrepancy(
        {
            "kind": "add_line",
            "instance_id": HOURLY.instance_id,
            "cycle": "2026-11",
            "day": "2026-11-04",
            "quantity": "2",
            "amount": "1.00",
        }
    )

    lines = exact(fee_records(billed, limit=100))["fee_records"]
    total = exact(billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"}))

    added = lines[-1]
    assert lines[:-1] == NOVEMBER_LINES
    assert added["id"] == line_id(HOURLY.instance_id, "2026-11-04", "|added-0")
    assert (added["consume_time"], added["usage_amount"], added["payment_amount"]) == (
        "2026-11-03T16:00:00Z",
        2,
        Num("1.00"),
    )
    assert total == summary("11.16665")


def test_adjustment_changes_the_summary_only(billed) -> None:
    billed.admin(
        "POST",
        "bills/discrepancies",
        {"kind": "adjustment", "cycle": "2026-11", "amount": "-2.00"},
    )

    total = exact(billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"}))

    assert total == summary("10.16665", adjustments=Num("-2.00"), due="8.16665")
    assert fee_records(billed).json()["total_count"] == 5


def test_discrepancies_clear_back_to_the_stored_usage(billed) -> None:
    billed.emulator.inject_bill_discrepancy(
        {"kind": "drop_line", "instance_id": HOURLY.instance_id, "cycle": "2026-11"}
    )
    billed.emulator.clear_bill_discrepancies()

    assert exact(fee_records(billed, limit=100))["fee_records"] == NOVEMBER_LINES


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "drop_everything", "cycle": "2026-11"},
        {"kind": "drop_line", "cycle": "2026-11"},
        {"kind": "drop_line", "cycle": "2026-11", "instance_id": "i", "day": "2026-12-01"},
        {"kind": "change_amount", "cycle": "2026-11", "instance_id": "i"},
        {"kind": "adjustment", "cycle": "2026-11", "amount": "-1", "instance_id": "i"},
        {"kind": "count_skew", "cycle": "2026-11", "delta": "0.5"},
        {"kind": "adjustment", "cycle": "26-11", "amount": "1"},
        {"kind": "adjustment", "cycle": "2026-11", "amount": "lots"},
    ],
)
def test_invalid_discrepancies_are_refused_when_injected(client, fields) -> None:
    with pytest.raises(ValueError):
        client.emulator.inject_bill_discrepancy(fields)

    response = client.admin("POST", "bills/discrepancies", fields)

    assert response.status_code == 400
    assert response.json()["error"].startswith("not a valid discrepancy: ")
    assert client.emulator.bills.discrepancies == ()


# --- cycles that cannot be served ------------------------------------------------------


@pytest.mark.parametrize("path", BILL_PATHS)
def test_a_cycle_is_served_only_after_noon_beijing_on_the_fifth(client, path) -> None:
    push_data_set(client)
    client.clock.advance(NOVEMBER_CLOSES - timedelta(minutes=1) - client.clock())
    query = {"cycle" if path == SUBCUSTOMER_SUMS_PATH else "bill_cycle": "2026-11"}

    early = client.get(path, query)
    client.clock.advance(timedelta(minutes=2))
    late = client.get(path, query)

    assert early.status_code == 400
    assert early.json() == {
        "error_code": "CBC.0100",
        "error_msg": "Invalid parameter: the bill of cycle 2026-11 is not ready; "
        "it closes at 2026-12-05 12:00 Beijing time",
    }
    assert late.status_code == 200


def test_the_current_and_future_cycles_are_not_ready(billed) -> None:
    for cycle in ("2026-12", "2027-01"):
        response = billed.get(BILL_SUMMARY_PATH, {"bill_cycle": cycle})
        assert (response.status_code, response.json()["error_code"]) == (400, "CBC.0100")
        assert "not ready" in response.json()["error_msg"]


def test_fee_records_keep_eighteen_months(billed) -> None:
    kept = billed.get(FEE_RECORDS_PATH, {"bill_cycle": "2025-06"})
    gone = billed.get(FEE_RECORDS_PATH, {"bill_cycle": "2025-05"})
    summary_of_gone = billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2025-05"})

    assert exact(kept) == {"total_count": 0, "currency": "CNY", "fee_records": []}
    assert (gone.status_code, gone.json()["error_code"]) == (400, "CBC.0100")
    assert "18 months" in gone.json()["error_msg"]
    assert summary_of_gone.status_code == 200


# --- access ----------------------------------------------------------------------------


@pytest.mark.parametrize("domain_id", [None, "someone-else"])
@pytest.mark.parametrize("path", BILL_PATHS)
def test_a_missing_or_foreign_domain_id_answers_403_cbc_0151(billed, path, domain_id) -> None:
    response = billed.get(path, {"bill_cycle": "2026-11"}, domain_id=domain_id)

    assert response.status_code == 403
    assert response.json() == {
        "error_code": "CBC.0151",
        "error_msg": "domain_id has no access to this api",
    }
    assert response.headers["X-Request-Id"]


@pytest.mark.parametrize("path", BILL_PATHS)
def test_an_account_that_is_no_partner_answers_403_cbc_0151(start_emulator, path) -> None:
    client = start_emulator(EmulatorConfig(partner_entitled=False))

    response = client.get(path, {"bill_cycle": "2026-10"})

    assert (response.status_code, response.json()["error_code"]) == (403, "CBC.0151")


@pytest.mark.parametrize("path", BILL_PATHS)
def test_a_site_without_the_bill_apis_answers_404_apig_0101(start_emulator, path) -> None:
    client = start_emulator(EmulatorConfig(bills_unsupported=True))

    signed = client.get(path, {"bill_cycle": "2026-10"})
    unsigned = client.http.get(client.emulator.url + path)

    for response in (signed, unsigned):
        assert response.status_code == 404
        assert response.json() == {
            "error_code": "APIG.0101",
            "error_msg": "API not exist or not published",
        }
        assert response.headers["X-Request-Id"]


def test_a_bill_path_answers_only_get(billed) -> None:
    response = billed.send("POST", FEE_RECORDS_PATH, b"{}", headers={"X-Domain-Id": "x"})

    assert (response.status_code, response.json()["error_code"]) == (404, "APIG.0101")


def test_a_bad_apig_signature_answers_401(billed) -> None:
    response = billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"}, sk="not-the-secret")

    assert response.status_code == 401
    assert response.json()["error_code"] == "APIG.0303"


def test_a_query_changed_after_signing_answers_401(billed) -> None:
    url, headers = billed.sign(
        "GET",
        FEE_RECORDS_PATH,
        query=[("bill_cycle", "2026-11")],
        headers={"X-Domain-Id": "emulator-domain-id"},
    )

    response = billed.http.get(url.replace("2026-11", "2026-10"), headers=headers)

    assert (response.status_code, response.json()["error_code"]) == (401, "APIG.0303")


def test_a_temporary_credential_without_its_token_answers_401_cbc_0154(start_emulator) -> None:
    client = start_emulator(
        EmulatorConfig(credentials=[Credential("TEMPAK", "temp-sk", security_token="tok")])
    )

    response = client.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-10"}, ak="TEMPAK", sk="temp-sk")

    assert (response.status_code, response.json()["error_code"]) == (401, "CBC.0154")


# --- faults ----------------------------------------------------------------------------


def test_bill_faults_answer_500_cbc_0999_and_429_apig_0308(billed) -> None:
    billed.emulator.set_bill_faults(FaultPlan(sequence=["500", "429"]))

    first = billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"})
    second = billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"})
    third = billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"})

    assert (first.status_code, first.json()) == (
        500,
        {"error_code": "CBC.0999", "error_msg": "System internal error."},
    )
    assert (second.status_code, second.json()) == (
        429,
        {
            "error_code": "APIG.0308",
            "error_msg": "The throttling threshold has been reached: "
            "policy user over ratelimit,limit:10,time:1 second",
        },
    )
    assert third.status_code == 200
    assert [entry.fault for entry in billed.emulator.state.requests[-3:]] == ["500", "429", None]


def test_bill_faults_leave_the_usage_apis_alone_and_the_other_way_round(client) -> None:
    client.emulator.set_bill_faults(FaultPlan(rates={"500": 1.0}))
    client.emulator.set_faults(FaultPlan(rates={"429": 1.0}))

    pushed = client.push_v2([usage(HOURLY, "2026-11-19T00:00Z", "1")])
    client.emulator.clear_faults()
    pushed_again = client.push_v2([usage(HOURLY, "2026-11-19T00:00Z", "1")])
    billed = client.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-10"})

    assert (pushed.status_code, pushed_again.status_code, billed.status_code) == (429, 200, 500)


def test_a_dropped_bill_request_gets_no_answer(billed) -> None:
    billed.emulator.set_bill_faults(FaultPlan(sequence=["drop"]))

    with pytest.raises(httpx.RemoteProtocolError):
        billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"})

    assert billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"}).status_code == 200


def test_bill_latency_holds_the_answer(billed) -> None:
    billed.emulator.set_bill_faults(FaultPlan(latency_ms=60))

    started = time.monotonic()
    response = billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"})

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.06


def test_bill_faults_come_from_the_config_too(start_emulator) -> None:
    client = start_emulator(EmulatorConfig(bill_faults=FaultPlan(sequence=["429"])))

    response = client.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-10"})

    assert (response.status_code, response.json()["error_code"]) == (429, "APIG.0308")


# --- admin -----------------------------------------------------------------------------


def test_admin_bills_shows_what_the_apis_serve(billed) -> None:
    billed.emulator.inject_bill_discrepancy({"kind": "duplicate_row", "cycle": "2026-11"})

    view = exact(billed.admin("GET", "bills?cycle=2026-11"))

    assert view["fee_records"] == NOVEMBER_LINES
    assert (view["total_count"], view["count"], view["ready_at"]) == (
        5,
        2,
        "2026-12-05T12:00:00+08:00",
    )
    assert (
        view["bill_sums"]
        == exact(billed.get(SUBCUSTOMER_SUMS_PATH, {"cycle": "2026-11"}))["bill_sums"]
    )
    assert view["summary"] == summary("10.16665")
    assert view["paging"] == {"duplicate_row": True, "count_skew": 0}
    assert view["discrepancies"] == [{"kind": "duplicate_row", "cycle": "2026-11"}]


def test_admin_bills_serves_an_open_cycle_and_refuses_a_bad_one(billed) -> None:
    open_cycle = billed.admin("GET", "bills?cycle=2026-12")
    bad = billed.admin("GET", "bills?cycle=2026-1")
    missing = billed.admin("GET", "bills")

    assert (open_cycle.status_code, open_cycle.json()["total_count"]) == (200, 0)
    assert [bad.status_code, missing.status_code] == [400, 400]


def test_admin_discrepancies_are_added_listed_and_cleared(billed) -> None:
    added = billed.admin(
        "POST",
        "bills/discrepancies",
        [
            {"kind": "change_amount", "instance_id": "i", "cycle": "2026-11", "delta": 1.5},
            {"kind": "count_skew", "cycle": "2026-11", "delta": -2},
        ],
    )
    listed = billed.admin("GET", "bills/discrepancies")
    cleared = billed.admin("DELETE", "bills/discrepancies")

    expected = [
        {"kind": "change_amount", "cycle": "2026-11", "instance_id": "i", "delta": "1.5"},
        {"kind": "count_skew", "cycle": "2026-11", "delta": "-2"},
    ]
    assert added.json() == listed.json() == {"discrepancies": expected}
    assert cleared.json() == {"discrepancies": []}


def test_admin_bill_faults_are_set_shown_and_cleared(billed) -> None:
    set_plan = billed.admin("POST", "bills/faults", {"sequence": ["500", "ok"]})
    failed = billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"})
    shown = billed.admin("GET", "bills/faults")
    cleared = billed.admin("DELETE", "bills/faults")
    usage_faults = billed.admin("GET", "faults")

    assert set_plan.json()["remaining_sequence"] == ["500", "ok"]
    assert failed.status_code == 500
    assert shown.json()["remaining_sequence"] == ["ok"]
    assert cleared.json()["faults"]["sequence"] == []
    assert usage_faults.json()["faults"]["sequence"] == []


def test_reset_forgets_bill_faults_and_discrepancies(billed) -> None:
    billed.emulator.set_bill_faults(FaultPlan(rates={"500": 1.0}))
    billed.emulator.inject_bill_discrepancy(
        {"kind": "adjustment", "cycle": "2026-11", "amount": 1}
    )

    billed.admin("POST", "reset")

    assert billed.emulator.bills.discrepancies == ()
    assert billed.get(BILL_SUMMARY_PATH, {"bill_cycle": "2026-11"}).json()["consume_amount"] == 0


def test_instances_accept_a_customer_id(client) -> None:
    added = client.admin(
        "POST",
        "instances",
        {"instance_id": "i-c", "product_id": "p", "unit_price": "1", "customer_id": "cust-9"},
    )

    assert added.json()["instances"][0]["customer_id"] == "cust-9"
    assert client.emulator.state.find_instance("i-c").customer_id == "cust-9"
    assert HOURLY.customer_id == "customer-inst-hourly-0001"


def test_config_file_reads_the_bill_settings(tmp_path) -> None:
    path = tmp_path / "emulator.json"
    path.write_text(
        '{"domain_id": "d-1", "partner_entitled": false, "bills_unsupported": true,'
        ' "bill_currency": "EUR", "tax_rate": 0.19, "bill_faults": {"sequence": ["500"]}}'
    )

    config = EmulatorConfig.from_file(path)

    assert (config.domain_id, config.partner_entitled, config.bills_unsupported) == (
        "d-1",
        False,
        True,
    )
    assert (config.bill_currency, config.tax_rate) == ("EUR", Decimal("0.19"))
    assert config.bill_faults == FaultPlan(sequence=("500",))


def test_json_text_writes_decimals_without_a_float() -> None:
    assert json_text({"a": Decimal("12.3450"), "b": [Decimal("-2.00"), None]}) == (
        '{"a":12.3450,"b":[-2.00,null]}'
    )


def test_view_pages_the_same_way_as_the_api(billed: EmulatorClient) -> None:
    view = billed.emulator.bills.view("2026-11")

    rows, total = view.fee_page(offset=2, limit=2)

    api = fee_records(billed, offset=2, limit=2).json()
    assert [row.line_id for row in rows] == [row["id"] for row in api["fee_records"]]
    assert total == api["total_count"]
