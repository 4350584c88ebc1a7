"""The bill fetch function end to end: timer events through the real handler and the ledger."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from koogallery.bill_fetch import BillFetchFailed, handle_bill_fetch
from koogallery.bills import BEIJING
from koogallery.emulator import (
    DEFAULT_AK,
    DEFAULT_SELLER_KEY,
    DEFAULT_SK,
    Emulator,
    EmulatorConfig,
    FaultPlan,
    Instance,
)
from koogallery.functiongraph import LocalContext
from koogallery.ledger import open_ledger

ROOT = Path(__file__).resolve().parents[1]
Handler = Callable[[Any, Any], dict[str, Any]]


def _load(function: str) -> Handler:
    spec = importlib.util.spec_from_file_location(
        f"{function}_index", ROOT / "functions" / function / "index.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler: Handler = module.handler
    return handler


bill_fetch = _load("bill_fetch")
usage_push = _load("usage_push")

BEGIN = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
"""Usage in the current hour is not late: its collection cut-off is still ahead."""
CYCLE = BEGIN.astimezone(BEIJING).strftime("%Y-%m")
PRICES = {"inst-a": "0.5", "inst-b": "2"}


def _emulator(**config: Any) -> Emulator:
    instances = [
        Instance(instance, product_id="prod", unit_price=Decimal(price))
        for instance, price in PRICES.items()
    ]
    return Emulator(EmulatorConfig(instances=instances, bills_preview=True, **config))


def _context(emulator: Emulator, ledger_url: str, **extra: str) -> LocalContext:
    user_data = {
        "KOOGALLERY_ENDPOINT": emulator.url,
        "KOOGALLERY_BILL_ENDPOINT": emulator.url,
        "KOOGALLERY_SITE": "cn",
        "HUAWEICLOUD_SDK_AK": DEFAULT_AK,
        "HUAWEICLOUD_SDK_SK": DEFAULT_SK,
        "HUAWEICLOUD_SDK_DOMAIN_ID": "emulator-domain-id",
        "KOOGALLERY_SELLER_KEY": DEFAULT_SELLER_KEY,
        "KOOGALLERY_LEDGER_URL": ledger_url,
        "KOOGALLERY_UNIT_PRICES": json.dumps(PRICES),
        "KOOGALLERY_LOG_LEVEL": "ERROR",
    }
    user_data.update(extra)
    return LocalContext(user_data=user_data, request_id="timer-run-1", function_name="bill_fetch")


def _timer(user_event: str = "") -> dict[str, Any]:
    return {
        "version": "v1.0",
        "time": "2026-12-06T10:00:00+08:00",
        "trigger_type": "TIMER",
        "trigger_name": "bill-fetch-daily",
        "user_event": user_event,
    }


def _backfill() -> dict[str, Any]:
    return _timer(json.dumps({"cycle": CYCLE}))


@pytest.fixture
def emulator(any_ledger_url: str) -> Iterator[Emulator]:
    """An emulator holding usage pushed through the usage handler, recorded in the ledger."""
    with _emulator() as emu:
        records = [
            {
                "instance_id": instance,
                "begin_time": (BEGIN + timedelta(minutes=n)).isoformat(),
                "end_time": (BEGIN + timedelta(minutes=n + 1)).isoformat(),
                "usage_value": value,
            }
            for n, (instance, value) in enumerate(
                [("inst-a", "3"), ("inst-a", "1.5"), ("inst-b", "2")]
            )
        ]
        result = usage_push({"usage_records": records}, _context(emu, any_ledger_url))
        assert result["accepted"] == 3
        yield emu


def test_before_noon_on_the_fifth_in_beijing_the_run_is_not_ready_and_calls_nothing(
    any_ledger_url: str,
) -> None:
    with _emulator() as emulator:
        context = _context(emulator, any_ledger_url, KOOGALLERY_BILL_READY_MARGIN_MINUTES="0")
        moment = datetime(2026, 12, 5, 3, 59, tzinfo=timezone.utc)

        result = handle_bill_fetch(_timer(), context, clock=lambda: moment)

        assert result == {
            "request_id": "timer-run-1",
            "status": "not_ready",
            "cycle": "2026-11",
            "ready_at": "2026-12-05T04:00:00+00:00",
        }
        assert emulator.state.requests == ()


def test_after_noon_on_the_fifth_the_previous_month_is_fetched(any_ledger_url: str) -> None:
    with _emulator() as emulator:
        context = _context(emulator, any_ledger_url, KOOGALLERY_BILL_READY_MARGIN_MINUTES="0")
        moment = datetime(2026, 12, 5, 4, 1, tzinfo=timezone.utc)

        result = handle_bill_fetch(_timer(), context, clock=lambda: moment)

    assert (result["status"], result["cycle"], result["version"]) == ("complete", "2026-11", 1)


def test_backfill_fetches_stores_and_reconciles_with_no_findings(
    emulator: Emulator, any_ledger_url: str
) -> None:
    result = bill_fetch(_backfill(), _context(emulator, any_ledger_url))

    assert (result["status"], result["cycle"], result["version"]) == ("complete", CYCLE, 1)
    assert result["totals"] == {"fee_records_amount": "6.25", "monthly_sums_amount": "6.25"}
    assert result["reconciliation"]["findings"] == []
    assert result["reconciliation"]["instances"] == [
        {
            "instance_id": "inst-a",
            "pushed_quantity": "4.5",
            "unit_price": "0.5",
            "expected_amount": "2.25",
            "billed_quantity": "4.5",
            "billed_amount": "2.25",
        },
        {
            "instance_id": "inst-b",
            "pushed_quantity": "2",
            "unit_price": "2",
            "expected_amount": "4",
            "billed_quantity": "2",
            "billed_amount": "4",
        },
    ]
    assert result["findings_above_tolerance"] is False


def test_usage_collected_only_in_the_next_month_is_late_and_the_rest_is_not(
    any_ledger_url: str,
) -> None:
    from koogallery.bill_fetch import usage_for_cycle
    from koogallery.client import RecordOutcome, Status
    from koogallery.models import UsageRecord

    last_hour = datetime(2026, 11, 30, 15, tzinfo=timezone.utc)  # 23:00 Beijing on the 30th
    records = [
        UsageRecord.parse(
            {
                "instance_id": name,
                "begin_time": last_hour,
                "end_time": last_hour + timedelta(hours=1),
                "usage_value": "7",
            },
            now=last_hour + timedelta(hours=2),
        )
        for name in ("inst-on-time", "inst-late")
    ]
    with open_ledger(any_ledger_url) as ledger:
        ledger.claim(records, owner="run", now=last_hour + timedelta(hours=1))
        on_time = last_hour + timedelta(hours=1, minutes=10)  # before 16:15Z, the collection
        ledger.settle([RecordOutcome(records[0], Status.ACCEPTED)], owner="run", now=on_time)
        next_month = last_hour + timedelta(hours=2)  # 01:00 Beijing on 1 December
        ledger.settle([RecordOutcome(records[1], Status.ACCEPTED)], owner="run", now=next_month)

        usage = usage_for_cycle(ledger, "2026-11")

    assert [(item.instance_id, item.late_records, item.late_quantity) for item in usage] == [
        ("inst-late", 1, Decimal("7")),
        ("inst-on-time", 0, Decimal("0")),
    ]


def test_a_second_run_with_the_same_bill_is_unchanged(
    emulator: Emulator, any_ledger_url: str
) -> None:
    first = bill_fetch(_backfill(), _context(emulator, any_ledger_url))
    second = bill_fetch(_backfill(), _context(emulator, any_ledger_url))

    assert (first["status"], second["status"]) == ("complete", "unchanged")
    assert second["version"] == 1
    assert second["content_hash"] == first["content_hash"]


def test_a_changed_bill_is_a_new_version_reported_as_amended(
    emulator: Emulator, any_ledger_url: str
) -> None:
    bill_fetch(_backfill(), _context(emulator, any_ledger_url))
    emulator.inject_bill_discrepancy(
        {"kind": "change_amount", "instance_id": "inst-b", "cycle": CYCLE, "delta": "1.25"}
    )

    result = bill_fetch(_backfill(), _context(emulator, any_ledger_url))

    assert (result["status"], result["version"]) == ("amended", 2)
    assert result["changes"] == {
        "fee_records_amount": {"before": "6.25", "after": "7.50"},
        "monthly_sums_amount": {"before": "6.25", "after": "7.50"},
    }
    (finding,) = result["reconciliation"]["findings"]
    assert (finding["kind"], finding["instance_id"], finding["difference"]) == (
        "amount_mismatch",
        "inst-b",
        "1.25",
    )
    with open_ledger(any_ledger_url) as ledger:
        runs = ledger.bill_runs(site="cn", cycle=CYCLE)
    assert [(run.status, run.version, run.content is not None) for run in runs] == [
        ("complete", 1, True),
        ("amended", 2, True),
    ]


@pytest.mark.parametrize(
    ("config", "status"),
    [({"partner_entitled": False}, "not_entitled"), ({"bills_unsupported": True}, "unsupported")],
)
def test_not_entitled_and_unsupported_are_recorded_and_do_not_raise(
    any_ledger_url: str, config: dict[str, bool], status: str
) -> None:
    with _emulator(**config) as emulator:
        result = bill_fetch(_backfill(), _context(emulator, any_ledger_url))

    assert result["status"] == status
    with open_ledger(any_ledger_url) as ledger:
        (run,) = ledger.bill_runs()
    assert (run.status, run.version, run.content) == (status, None, None)


def test_failed_fetch_is_recorded_then_raises_for_the_platform_to_retry(
    emulator: Emulator, any_ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("koogallery.bills.time.sleep", lambda _: None)
    emulator.set_bill_faults(FaultPlan(rates={"500": 1.0}))

    with pytest.raises(BillFetchFailed) as caught:
        bill_fetch(_backfill(), _context(emulator, any_ledger_url))

    assert caught.value.result["error_code"] == "CBC.0999"
    with open_ledger(any_ledger_url) as ledger:
        (run,) = ledger.bill_runs()
    assert (run.status, run.error_code, len(run.request_ids)) == ("failed", "CBC.0999", 4)


def test_backfill_cycle_that_is_not_yyyy_mm_is_a_configuration_error(
    emulator: Emulator, any_ledger_url: str
) -> None:
    from koogallery.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        bill_fetch(_timer('{"cycle": "October"}'), _context(emulator, any_ledger_url))


def test_without_a_ledger_the_bill_is_fetched_but_not_reconciled(emulator: Emulator) -> None:
    context = _context(emulator, "")

    result = bill_fetch(_backfill(), context)

    assert (result["status"], result["version"], result["reconciliation"]) == (
        "complete",
        None,
        None,
    )
