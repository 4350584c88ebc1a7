"""The bill client against the emulator's bill APIs, cycle selection and reconciliation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from koogallery.bills import (
    BEIJING,
    BillClient,
    BillDocument,
    BillStatus,
    choose_cycle,
    cycle_bounds,
)
from koogallery.client import KooGalleryClient
from koogallery.config import Settings
from koogallery.emulator import (
    DEFAULT_AK,
    DEFAULT_SELLER_KEY,
    DEFAULT_SK,
    Emulator,
    EmulatorConfig,
    FaultPlan,
    Instance,
)
from koogallery.errors import ConfigurationError
from koogallery.models import UsageRecord
from koogallery.reconcile import InstanceUsage, reconcile

DOMAIN = "emulator-domain-id"
BEGIN = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
CYCLE = BEGIN.astimezone(BEIJING).strftime("%Y-%m")


def _instances(count: int) -> list[Instance]:
    return [
        Instance(f"inst-{n:03d}", product_id=f"prod-{n % 3}", unit_price=Decimal("0.25"))
        for n in range(count)
    ]


def _emulator(count: int = 3, **config: Any) -> Emulator:
    return Emulator(EmulatorConfig(instances=_instances(count), bills_preview=True, **config))


def _settings(emulator: Emulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "endpoint": emulator.url,
        "bill_endpoint": emulator.url,
        "site": "cn",
        "access_key": DEFAULT_AK,
        "secret_key": DEFAULT_SK,
        "seller_key": DEFAULT_SELLER_KEY,
        "domain_id": DOMAIN,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def _push(emulator: Emulator, values: dict[str, str]) -> None:
    records = [
        UsageRecord.parse(
            {
                "instance_id": instance,
                "begin_time": BEGIN,
                "end_time": BEGIN + timedelta(hours=1),
                "usage_value": value,
            }
        )
        for instance, value in values.items()
    ]
    with KooGalleryClient(_settings(emulator)) as client:
        result = client.push_usage(records)
    assert len(result.accepted) == len(records)


def _fetch(emulator: Emulator, **overrides: Any) -> Any:
    with BillClient(_settings(emulator, **overrides), sleep=lambda _: None) as client:
        return client.fetch(CYCLE)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with _emulator() as emu:
        _push(emu, {"inst-000": "10", "inst-001": "4.5", "inst-002": "2"})
        yield emu


@pytest.mark.parametrize(
    ("moment", "cycle", "ready"),
    [
        ("2026-12-04T20:00:00+00:00", "2026-11", False),  # the 5th in Beijing, the 4th in UTC
        ("2026-12-05T03:59:00+00:00", "2026-11", False),  # 11:59 on the 5th in Beijing
        ("2026-12-05T04:01:00+00:00", "2026-11", True),  # 12:01 on the 5th in Beijing
        ("2026-12-31T16:30:00+00:00", "2026-12", False),  # already January in Beijing
        ("2027-01-10T00:00:00+00:00", "2026-12", True),
    ],
)
def test_cycle_is_last_beijing_month_once_past_noon_on_the_fifth(
    moment: str, cycle: str, ready: bool
) -> None:
    choice = choose_cycle(datetime.fromisoformat(moment), margin=timedelta(0))

    assert (choice.cycle, choice.ready) == (cycle, ready)


def test_default_margin_keeps_12_01_on_the_fifth_not_ready_until_14_00() -> None:
    early = choose_cycle(
        datetime(2026, 12, 5, 4, 1, tzinfo=timezone.utc), margin=timedelta(hours=2)
    )
    late = choose_cycle(
        datetime(2026, 12, 5, 6, 0, tzinfo=timezone.utc), margin=timedelta(hours=2)
    )

    assert (early.ready, late.ready) == (False, True)
    assert early.ready_at == datetime(2026, 12, 5, 6, 0, tzinfo=timezone.utc)


def test_cycle_bounds_are_beijing_months_in_utc() -> None:
    start, end = cycle_bounds("2026-11")

    assert start == datetime(2026, 10, 31, 16, tzinfo=timezone.utc)
    assert end == datetime(2026, 11, 30, 16, tzinfo=timezone.utc)


def test_cn_fetch_reads_sums_and_fee_records_with_exact_decimals(emulator: Emulator) -> None:
    result = _fetch(emulator)

    assert result.status is BillStatus.COMPLETE
    document = result.document
    assert document.consistent is True
    lines = {line.instance_id: (line.quantity, line.amount) for line in document.fee_lines()}
    assert lines == {
        "inst-000": (Decimal("10"), Decimal("2.50")),
        "inst-001": (Decimal("4.5"), Decimal("1.125")),
        "inst-002": (Decimal("2"), Decimal("0.50")),
    }
    assert document.totals()["fee_records_amount"] == Decimal("4.125")
    assert all(isinstance(line.amount, Decimal) for line in document.fee_lines())
    assert len(result.request_ids) == 2


def test_intl_fetch_reads_the_partner_summary(emulator: Emulator) -> None:
    result = _fetch(emulator, site="intl")

    assert result.status is BillStatus.COMPLETE
    assert result.document.summary == {
        "bill_cycle": CYCLE,
        "initial_amount_due": Decimal("4.125"),
        "consume_amount": Decimal("4.125"),
        "refunds": Decimal("0"),
        "adjustments": Decimal("0"),
        "tax_amount": Decimal("0.00"),
        "currency": "CNY",
    }


def test_paging_across_several_pages_keeps_a_repeated_row_once() -> None:
    with _emulator(130) as emulator:
        _push(emulator, {f"inst-{n:03d}": str(n + 1) for n in range(130)})
        emulator.inject_bill_discrepancy({"kind": "duplicate_row", "cycle": CYCLE})

        result = _fetch(emulator)

    document = result.document
    assert len(document.fee_records) == 130
    assert len({row["id"] for row in document.fee_records}) == 130
    assert document.consistent is True
    assert any("appeared twice" in problem for problem in document.problems)
    assert sum(line.quantity for line in document.fee_lines()) == Decimal(130 * 131 // 2)


def test_total_count_that_disagrees_with_the_rows_marks_the_bill_inconsistent(
    emulator: Emulator,
) -> None:
    emulator.inject_bill_discrepancy({"kind": "count_skew", "cycle": CYCLE, "delta": 1})

    result = _fetch(emulator)

    assert result.status is BillStatus.COMPLETE
    assert result.document.consistent is False
    assert "fee records: 3 distinct rows, but the API's total is 4" in result.document.problems


def test_403_cbc_0151_is_not_entitled_without_retry() -> None:
    with _emulator(partner_entitled=False) as emulator:
        result = _fetch(emulator)
        calls = len(emulator.state.requests)

    assert (result.status, result.error_code) == (BillStatus.NOT_ENTITLED, "CBC.0151")
    assert calls == 1


def test_404_is_unsupported() -> None:
    with _emulator(bills_unsupported=True) as emulator:
        result = _fetch(emulator, site="eu")

    assert result.status is BillStatus.UNSUPPORTED


def test_500_cbc_0999_is_retried_then_failed(emulator: Emulator) -> None:
    emulator.set_bill_faults(FaultPlan(rates={"500": 1.0}))

    result = _fetch(emulator)

    assert (result.status, result.error_code) == (BillStatus.FAILED, "CBC.0999")
    assert len(result.request_ids) == 4


def test_429_apig_0308_is_retried_after_a_pause(emulator: Emulator) -> None:
    emulator.set_bill_faults(FaultPlan(sequence=("429", "ok", "ok")))
    pauses: list[float] = []
    settings = _settings(emulator)

    with BillClient(settings, sleep=pauses.append, rng=lambda: 0.5) as client:
        result = client.fetch(CYCLE)

    assert result.status is BillStatus.COMPLETE
    assert pauses == [3.5]


def test_missing_domain_id_is_a_configuration_error_naming_it(emulator: Emulator) -> None:
    with pytest.raises(ConfigurationError) as caught:
        BillClient(_settings(emulator, domain_id=None))

    assert "HUAWEICLOUD_SDK_DOMAIN_ID" in str(caught.value)


def test_same_bill_fetched_twice_has_the_same_hash(emulator: Emulator) -> None:
    first = _fetch(emulator).document.content_hash
    second = _fetch(emulator).document.content_hash

    assert first == second


def test_changed_bill_has_another_hash_and_round_trips(emulator: Emulator) -> None:
    first = _fetch(emulator).document
    emulator.inject_bill_discrepancy(
        {"kind": "change_amount", "instance_id": "inst-001", "cycle": CYCLE, "delta": "0.30"}
    )
    second = _fetch(emulator).document

    assert first.content_hash != second.content_hash
    revived = BillDocument.from_canonical(second.canonical())
    assert revived.content_hash == second.content_hash
    assert sorted(revived.fee_lines(), key=lambda line: line.id) == sorted(
        second.fee_lines(), key=lambda line: line.id
    )


PRICES = {"inst-000": Decimal("0.25"), "inst-001": Decimal("0.25"), "inst-002": Decimal("0.25")}
USAGE = [
    InstanceUsage("inst-000", Decimal("10"), 1),
    InstanceUsage("inst-001", Decimal("4.5"), 1),
    InstanceUsage("inst-002", Decimal("2"), 1),
]


def _reconcile(emulator: Emulator, usage: list[InstanceUsage] = USAGE) -> Any:
    return reconcile(usage, _fetch(emulator).document, prices=PRICES, tolerance=Decimal("0.01"))


def test_matching_bill_has_no_findings(emulator: Emulator) -> None:
    report = _reconcile(emulator)

    assert report.findings == []
    assert report.has_findings_above_tolerance is False
    assert [row.billed_amount for row in report.rows] == [
        Decimal("2.50"),
        Decimal("1.125"),
        Decimal("0.50"),
    ]


def test_dropped_line_is_pushed_but_not_billed(emulator: Emulator) -> None:
    emulator.inject_bill_discrepancy(
        {"kind": "drop_line", "instance_id": "inst-002", "cycle": CYCLE}
    )

    (finding,) = _reconcile(emulator).findings

    assert (finding.kind, finding.instance_id) == ("pushed_not_billed", "inst-002")
    assert (finding.pushed, finding.billed, finding.above_tolerance) == (Decimal("2"), None, True)


def test_changed_amount_is_an_amount_mismatch_with_the_difference(emulator: Emulator) -> None:
    emulator.inject_bill_discrepancy(
        {"kind": "change_amount", "instance_id": "inst-001", "cycle": CYCLE, "delta": "0.30"}
    )

    (finding,) = _reconcile(emulator).findings

    assert finding.kind == "amount_mismatch"
    assert (finding.pushed, finding.billed) == (Decimal("1.125"), Decimal("1.425"))
    assert finding.difference == Decimal("0.300")
    assert finding.above_tolerance is True


def test_changed_quantity_is_a_quantity_mismatch(emulator: Emulator) -> None:
    emulator.inject_bill_discrepancy(
        {"kind": "change_quantity", "instance_id": "inst-000", "cycle": CYCLE, "delta": "-1"}
    )

    (finding,) = _reconcile(emulator).findings

    assert (finding.kind, finding.pushed, finding.billed) == (
        "quantity_mismatch",
        Decimal("10"),
        Decimal("9"),
    )


def test_added_line_is_billed_but_never_pushed(emulator: Emulator) -> None:
    day = BEGIN.astimezone(BEIJING).strftime("%Y-%m-%d")
    emulator.inject_bill_discrepancy(
        {
            "kind": "add_line",
            "instance_id": "inst-ghost",
            "cycle": CYCLE,
            "day": day,
            "quantity": "3",
            "amount": "0.75",
        }
    )

    (finding,) = _reconcile(emulator).findings

    assert (finding.kind, finding.instance_id, finding.billed) == (
        "billed_not_pushed",
        "inst-ghost",
        Decimal("0.75"),
    )


def test_difference_within_tolerance_is_reported_but_not_above_it(emulator: Emulator) -> None:
    emulator.inject_bill_discrepancy(
        {"kind": "change_amount", "instance_id": "inst-000", "cycle": CYCLE, "delta": "0.005"}
    )

    (finding,) = _reconcile(emulator).findings

    assert finding.kind == "amount_mismatch"
    assert finding.above_tolerance is False


def test_late_push_is_a_finding_that_explains_rather_than_alarms(emulator: Emulator) -> None:
    usage = [*USAGE[:2], InstanceUsage("inst-002", Decimal("2"), 1, Decimal("2"), 1)]

    report = _reconcile(emulator, usage)

    (finding,) = report.findings
    assert (finding.kind, finding.instance_id, finding.pushed) == (
        "late_push",
        "inst-002",
        Decimal("2"),
    )
    assert finding.above_tolerance is False


def test_totals_only_site_compares_consume_amount(emulator: Emulator) -> None:
    emulator.inject_bill_discrepancy(
        {"kind": "change_amount", "instance_id": "inst-000", "cycle": CYCLE, "delta": "1"}
    )
    document = _fetch(emulator, site="intl").document

    report = reconcile(USAGE, document, prices=PRICES)

    (finding,) = report.findings
    assert finding.kind == "total_mismatch"
    assert (finding.pushed, finding.billed, finding.difference) == (
        Decimal("4.125"),
        Decimal("5.125"),
        Decimal("1.000"),
    )
    assert report.basis == "bill totals"


def test_reconciliation_renders_as_table_csv_and_json(emulator: Emulator) -> None:
    emulator.inject_bill_discrepancy(
        {"kind": "drop_line", "instance_id": "inst-002", "cycle": CYCLE}
    )
    report = _reconcile(emulator)

    assert "[!] pushed_not_billed: inst-002" in report.to_table()
    assert report.to_csv().splitlines()[1].startswith(f"{CYCLE},pushed_not_billed,inst-002,2,,")
    assert '"kind": "pushed_not_billed"' in report.to_json()


def test_a_fully_discounted_line_is_billed_at_zero_not_at_its_list_price() -> None:
    document = BillDocument(site="cn", cycle="2026-11", currency="CNY")
    document.fee_records = [
        {
            "id": "line-1",
            "resource_id": "inst-000",
            "usage_amount": Decimal("3"),
            "payment_amount": Decimal("0"),
            "official_amount": Decimal("12.50"),
        }
    ]

    (line,) = document.fee_lines()

    assert line.amount == Decimal("0")


def test_retries_stop_before_the_deadline_so_the_run_can_be_recorded(emulator: Emulator) -> None:
    emulator.set_bill_faults(FaultPlan(rates={"500": 1.0}))
    clock = [10.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    settings = _settings(emulator)
    with BillClient(settings, sleep=sleep, rng=lambda: 1.0, monotonic=lambda: clock[0]) as client:
        result = client.fetch(CYCLE, deadline=11.2)

    assert (result.status, result.error_code) == (BillStatus.FAILED, "CBC.0999")
    assert len(result.request_ids) == 2
    assert result.error_msg is not None and "no time left" in result.error_msg
