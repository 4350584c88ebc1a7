"""``koogallery demo``: a day of usage through the real handler into a local KooGallery.

The demo shows, in under a minute and without any account, what the product guarantees:

1. it starts the emulator on a free loopback port and registers pay-per-use instances with
   unit prices;
2. it generates a realistic day of hourly usage for them (or reads ``--input``), mixes in a
   few records that can never succeed, and wraps everything in DMS Kafka trigger batches;
3. it delivers each batch through ``functions/usage_push/index.py`` with a FunctionGraph-like
   context, then delivers one batch a second time, as a queue trigger may;
4. it prints what was pushed, accepted, recognised as a duplicate (nothing billed twice), the
   dead letters with their reasons, and what the emulator would charge per instance;
5. it makes the emulator's bill overcharge one instance, runs the real bill fetch handler for
   the day's cycle, and prints the reconciliation, which finds and explains that difference.

A temporary SQLite ledger records everything. The demo exits 0 only when the emulator holds
exactly the good records, each once, and the reconciliation found exactly the injected
difference.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from koogallery.functiongraph import LocalContext
from koogallery.models import format_time

__all__ = ["DEMO_INSTANCES", "DemoInstance", "run_demo"]

_MESSAGES_PER_BATCH = 12
_REDELIVERED_BATCH = 1


@dataclass(frozen=True)
class DemoInstance:
    """A pay-per-use instance of the demo seller, with what a typical hour of it uses."""

    instance_id: str
    product_id: str
    description: str
    unit_price: Decimal
    typical_hourly: float
    decimals: int


DEMO_INSTANCES = (
    DemoInstance(
        "demo-instance-001", "demo-product-api", "API calls (per call)", Decimal("0.002"), 1800, 0
    ),
    DemoInstance(
        "demo-instance-002",
        "demo-product-storage",
        "Storage (per GB-hour)",
        Decimal("0.0125"),
        250,
        2,
    ),
    DemoInstance(
        "demo-instance-003",
        "demo-product-compute",
        "Compute (per vCPU-hour)",
        Decimal("0.18"),
        6,
        1,
    ),
)


def generate_day(now: datetime, seed: int) -> list[dict[str, Any]]:
    """24 hourly records per instance, for the 24 full hours before ``now``'s hour.

    Usage follows a day curve (busier in the Beijing working day) with seeded noise, so every
    run with the same seed and hour produces the same records.
    """
    rng = random.Random(seed)
    end_of_day = now.replace(minute=0, second=0, microsecond=0)
    records = []
    for hours_back in range(24, 0, -1):
        begin = end_of_day - timedelta(hours=hours_back)
        beijing_hour = (begin.hour + 8) % 24
        busy = 1.6 if 9 <= beijing_hour < 19 else 0.5
        for instance in DEMO_INSTANCES:
            value = instance.typical_hourly * busy * rng.uniform(0.7, 1.3)
            quantity = round(Decimal(repr(value)), instance.decimals) or Decimal(1)
            records.append(
                {
                    "instance_id": instance.instance_id,
                    "begin_time": begin.isoformat().replace("+00:00", "Z"),
                    "end_time": (begin + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                    "usage_value": str(quantity),
                }
            )
    return records


def bad_records(now: datetime) -> list[Any]:
    """Records that can never succeed, one per kind of mistake a seller's code can make."""
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    begin, end = format_time(hour), format_time(hour + timedelta(hours=1))
    good = {"instance_id": "demo-instance-001", "begin_time": begin, "end_time": end}
    return [
        {**good, "usage_value": "1.23456"},
        {**good, "instance_id": "demo-instance-002", "usage_value": "-4"},
        {
            **good,
            "instance_id": "demo-instance-003",
            "begin_time": end,
            "end_time": begin,
            "usage_value": "2",
        },
        {**good, "begin_time": hour.strftime("%Y-%m-%dT%H:%M:%S"), "usage_value": "7"},
        {"begin_time": begin, "end_time": end, "usage_value": "3"},
        {**good, "instance_id": "demo-instance-404", "usage_value": "5"},
    ]


def kafka_events(messages: Sequence[str]) -> list[dict[str, Any]]:
    """Wrap message texts into DMS Kafka trigger events of a dozen messages each."""
    events = []
    for start in range(0, len(messages), _MESSAGES_PER_BATCH):
        events.append(
            {
                "event_version": "v1.0",
                "event_time": 1796112000,
                "trigger_type": "KAFKA",
                "region": "cn-north-4",
                "instance_id": "demo-kafka-instance",
                "records": [
                    {
                        "messages": list(messages[start : start + _MESSAGES_PER_BATCH]),
                        "topic_id": "usage-events",
                    }
                ],
            }
        )
    return events


def run_demo(*, input_path: Path | None = None, seed: int = 20261204) -> int:
    """Run the whole demo and print its report; returns the exit code."""
    from koogallery.cli import load_handler
    from koogallery.emulator import Emulator, EmulatorConfig, Instance

    now = datetime.now(timezone.utc)
    if input_path is None:
        good = [json.dumps(record) for record in generate_day(now, seed)]
        priced = [(item.instance_id, item.product_id, item.unit_price) for item in DEMO_INSTANCES]
    else:
        good = [line for line in input_path.read_text(encoding="utf-8").splitlines() if line]
        priced = [(name, "demo-input", _INPUT_PRICE) for name in _instance_ids(good)]
    bad = [json.dumps(record) for record in bad_records(now)]
    events = kafka_events(_interleave(good, bad))
    redelivered = min(_REDELIVERED_BATCH, len(events) - 1)

    instances = [
        Instance(instance_id=name, product_id=product, unit_price=price, billing_mode="hourly")
        for name, product, price in priced
    ]
    config = EmulatorConfig(instances=instances, bills_preview=True)
    with tempfile.TemporaryDirectory(prefix="koogallery-demo-") as folder, Emulator(config) as emu:
        ledger_url = f"sqlite:///{Path(folder) / 'ledger.db'}"
        prices = {name: str(price) for name, _, price in priced}
        user_data = _user_data(emu.url, emu.config, ledger_url, prices)
        print(f"KooGallery emulator listening on {emu.url}; ledger {ledger_url}")
        print(
            f"Delivering {len(good)} usage records for {len(priced)} instances and {len(bad)} "
            f"bad ones as {len(events)} Kafka trigger batches (batch {redelivered + 1} is "
            "delivered twice)"
        )

        push = _deliver(load_handler("usage-push"), events, user_data, redelivered)
        held = len(emu.state.records)
        _print_push_report(push, emu.state.charges, held)
        exact = held == push.totals["accepted"] and push.totals["pending"] == 0
        if input_path is None:
            exact = exact and held == len(good)
        if not exact:
            print(f"\nMISMATCH: {len(good)} good records, {push.totals['accepted']} accepted")

        cycle, target = _busiest(good)
        discrepancy = _inject_discrepancy(emu, cycle, target)
        bill = load_handler("bill-fetch")(
            {"trigger_type": "TIMER", "user_event": json.dumps({"cycle": cycle})},
            LocalContext(user_data=user_data, request_id="demo-bill", function_name="bill_fetch"),
        )

    found = _print_bill_report(bill, discrepancy)
    return 0 if exact and found else 1


_INPUT_PRICE = Decimal("0.01")
"""The unit price the demo registers for instances of an ``--input`` file."""


def _instance_ids(messages: list[str]) -> list[str]:
    """The instance ids named by an input file's records, in order of first appearance."""
    names: dict[str, None] = {}
    for message in messages:
        try:
            record = json.loads(message)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("instance_id"), str):
            names.setdefault(record["instance_id"])
    return list(names)


@dataclass
class _Deliveries:
    totals: dict[str, int]
    letters: list[dict[str, Any]]
    redelivery: dict[str, Any]


def _deliver(
    handler: Any, events: list[dict[str, Any]], user_data: dict[str, str], redelivered: int
) -> _Deliveries:
    """Every batch once, then one batch again, through the real handler."""
    totals = dict.fromkeys(("received", "accepted", "duplicates", "dead_lettered", "pending"), 0)
    letters: list[dict[str, Any]] = []
    redelivery: dict[str, Any] = {}
    deliveries = [*range(len(events)), redelivered]
    for number, index in enumerate(deliveries):
        context = LocalContext(user_data=user_data, request_id=f"demo-{number:03d}")
        result = handler(events[index], context)
        for key in totals:
            totals[key] += result[key]
        label = f"batch {index + 1}" + (" (redelivered)" if number == len(events) else "")
        letters.extend({**letter, "batch": label} for letter in result["dead_letters"])
        if number == len(events):
            redelivery = result
    return _Deliveries(totals, letters, redelivery)


def _busiest(messages: list[str]) -> tuple[str, str]:
    """The Beijing month holding most of the usage (a day can straddle two on the 1st), and
    the instance in it to make the bill wrong for: the demo's compute instance, else the first.
    """
    from koogallery.bills import BEIJING
    from koogallery.models import parse_time

    months: Counter[str] = Counter()
    names: dict[str, list[str]] = {}
    for message in messages:
        try:
            record = json.loads(message)
            month = parse_time(record["begin_time"]).astimezone(BEIJING).strftime("%Y-%m")
        except (ValueError, KeyError, TypeError):
            continue
        months[month] += 1
        names.setdefault(month, []).append(str(record.get("instance_id")))
    if not months:
        return datetime.now(BEIJING).strftime("%Y-%m"), "demo-instance-003"

    cycle = months.most_common(1)[0][0]
    target = "demo-instance-003" if "demo-instance-003" in names[cycle] else names[cycle][0]
    return cycle, target


def _inject_discrepancy(emulator: Any, cycle: str, instance_id: str) -> dict[str, str]:
    """Make the platform bill 0.36 more than was pushed for one instance, for the demo to find."""
    discrepancy = {
        "kind": "change_amount",
        "instance_id": instance_id,
        "cycle": cycle,
        "delta": "0.36",
    }
    emulator.inject_bill_discrepancy(discrepancy)
    return discrepancy


def _user_data(url: str, config: Any, ledger_url: str, prices: dict[str, str]) -> dict[str, str]:
    credential = config.credentials[0]
    return {
        "KOOGALLERY_ENDPOINT": url,
        "KOOGALLERY_BILL_ENDPOINT": url,
        "KOOGALLERY_SITE": "cn",
        "HUAWEICLOUD_SDK_AK": credential.ak,
        "HUAWEICLOUD_SDK_SK": credential.sk,
        "HUAWEICLOUD_SDK_DOMAIN_ID": config.domain_id,
        "KOOGALLERY_SELLER_KEY": config.seller_key,
        "KOOGALLERY_LEDGER_URL": ledger_url,
        "KOOGALLERY_UNIT_PRICES": json.dumps(prices),
        "KOOGALLERY_LOG_LEVEL": "ERROR",
    }


def _interleave(good: list[str], bad: list[str]) -> list[str]:
    """Spread the bad messages through the day, so they share batches with good ones."""
    messages = list(good)
    step = max(1, len(messages) // (len(bad) + 1))
    for number, message in enumerate(bad, start=1):
        messages.insert(min(len(messages), number * step + number - 1), message)
    return messages


def _print_push_report(push: _Deliveries, charges: Sequence[Any], held: int) -> None:
    totals, redelivery = push.totals, push.redelivery
    print()
    print(f"records pushed                  {totals['received']:>6}")
    print(f"accepted by KooGallery          {totals['accepted']:>6}")
    print(
        f"duplicates on redelivery        {redelivery.get('duplicates', 0):>6}  "
        f"(the ledger knew them: not sent again; the emulator holds {held} records)"
    )
    print(f"dead letters                    {totals['dead_lettered']:>6}")
    print(f"still pending                   {totals['pending']:>6}")
    print()
    print("Dead letters (not retried automatically: fix them, then `koogallery dlq retry`):")
    for letter in push.letters:
        origin = letter["origin"]
        where = f"{letter['batch']}, {origin['trigger']} {origin['source']} #{origin['index']}"
        print(f"  - {where}: {letter['reason']}")
    print()
    print("What KooGallery would charge, per instance:")
    print(f"  {'instance':<20} {'quantity':>12} {'unit price':>11} {'amount':>12}")
    for charge in charges:
        row = charge.as_dict()
        print(
            f"  {row['instance_id']:<20} {row['quantity']:>12} {row['unit_price'] or '-':>11} "
            f"{row['amount'] or '-':>12} {row.get('currency') or ''}"
        )


def _print_bill_report(bill: dict[str, Any], discrepancy: dict[str, str]) -> bool:
    """Print the reconciliation; True when it found exactly the injected discrepancy."""
    print()
    print(
        f"Bill of cycle {bill['cycle']}: {bill['status']} (version {bill['version']}), "
        f"fetched from the emulator's Partner Center API and stored in the ledger"
    )
    report = bill.get("reconciliation") or {}
    findings = report.get("findings", [])
    late = [finding for finding in findings if finding["kind"] == "late_push"]
    alarms = [finding for finding in findings if finding["above_tolerance"]]
    print()
    print(f"  {'instance':<20} {'pushed qty':>11} {'expected':>10} {'billed':>10}")
    for row in report.get("instances", []):
        print(
            f"  {row['instance_id']:<20} {row['pushed_quantity']:>11} "
            f"{row['expected_amount'] or '-':>10} {row['billed_amount'] or '-':>10}"
        )
    print()
    if late:
        print(
            f"  {len(late)} instance(s) had usage delivered after KooGallery's hourly collection "
            "cut-off (the demo pushes a whole past day at once); the platform bills such usage "
            "in a later period."
        )
    for finding in alarms:
        print(f"  FINDING {finding['kind']}: {finding['detail']}")
    injected = [
        finding
        for finding in alarms
        if finding["kind"] == "amount_mismatch"
        and finding["instance_id"] == discrepancy["instance_id"]
        and Decimal(finding["difference"]) == Decimal(discrepancy["delta"])
    ]
    if injected:
        print(
            f"  Explained: the emulator was told to bill {discrepancy['delta']} more for "
            f"{discrepancy['instance_id']} than its delivered usage times its unit price. In "
            "production this means the bill holds usage the ledger never delivered, or another "
            "price: raise it with KooGallery with the numbers above (the ledger export has every "
            "record behind them)."
        )
    return len(injected) == 1 and len(alarms) == 1
