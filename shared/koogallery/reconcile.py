"""Reconciliation: what was pushed and accepted, against what the bill shows.

KooGallery never corrects a record once it is billed, so the useful question is not "how do I
fix it" but "where do the two sides differ, and by how much". Per instance, the usage the ledger
holds as delivered for the cycle (times its unit price, where known) is compared with the bill's
fee records; a site that only publishes totals is compared on totals.

    report = reconcile(usage, document, prices={"inst-1": Decimal("0.5")})
    report.findings          # each with the numbers behind it

Findings, by kind:

- ``billed_not_pushed``: the bill charges an instance the ledger never delivered usage for;
- ``pushed_not_billed``: delivered usage with no bill line at all;
- ``quantity_mismatch`` / ``amount_mismatch``: both sides exist and differ beyond the tolerance;
- ``total_mismatch``: a totals-only bill differs from the expected total beyond the tolerance;
- ``late_push``: usage delivered so late that KooGallery collected it in a later month, so it
  is missing from this cycle's bill: it explains a shortfall rather than being an error.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from koogallery.bills import BillDocument

__all__ = ["Finding", "InstanceRow", "InstanceUsage", "Reconciliation", "reconcile"]


@dataclass(frozen=True)
class InstanceUsage:
    """The ledger's side for one instance and one cycle."""

    instance_id: str
    quantity: Decimal
    records: int
    late_quantity: Decimal = Decimal(0)
    late_records: int = 0


@dataclass(frozen=True)
class Finding:
    """One difference, with the numbers behind it."""

    kind: str
    instance_id: str | None
    pushed: Decimal | None
    billed: Decimal | None
    difference: Decimal
    above_tolerance: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "instance_id": self.instance_id,
            "pushed": _text(self.pushed),
            "billed": _text(self.billed),
            "difference": _text(self.difference),
            "above_tolerance": self.above_tolerance,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class InstanceRow:
    """Both sides of one instance, side by side."""

    instance_id: str
    pushed_quantity: Decimal
    unit_price: Decimal | None
    expected_amount: Decimal | None
    billed_quantity: Decimal | None
    billed_amount: Decimal | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "pushed_quantity": _text(self.pushed_quantity),
            "unit_price": _text(self.unit_price),
            "expected_amount": _text(self.expected_amount),
            "billed_quantity": _text(self.billed_quantity),
            "billed_amount": _text(self.billed_amount),
        }


@dataclass
class Reconciliation:
    """The whole comparison for one cycle."""

    cycle: str
    tolerance: Decimal
    basis: str
    rows: list[InstanceRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    totals: dict[str, Decimal] = field(default_factory=dict)

    @property
    def has_findings_above_tolerance(self) -> bool:
        return any(finding.above_tolerance for finding in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cycle": self.cycle,
            "basis": self.basis,
            "tolerance": _text(self.tolerance),
            "totals": {name: _text(value) for name, value in self.totals.items()},
            "instances": [row.to_dict() for row in self.rows],
            "findings": [finding.to_dict() for finding in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """One row per finding (the machine-readable form of what needs a look)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            [
                "cycle",
                "kind",
                "instance_id",
                "pushed",
                "billed",
                "difference",
                "above_tolerance",
                "detail",
            ]
        )
        for finding in self.findings:
            row = finding.to_dict()
            writer.writerow(
                [
                    self.cycle,
                    row["kind"],
                    row["instance_id"] or "",
                    row["pushed"] or "",
                    row["billed"] or "",
                    row["difference"],
                    "true" if row["above_tolerance"] else "false",
                    row["detail"],
                ]
            )
        return out.getvalue()

    def to_table(self) -> str:
        """A table for people: instances side by side, then the findings."""
        lines = [
            f"Reconciliation of cycle {self.cycle} ({self.basis}, tolerance {self.tolerance})"
        ]
        header = (
            f"  {'instance':<22} {'pushed qty':>12} {'unit price':>10} {'expected':>12} "
            f"{'billed qty':>12} {'billed':>12}"
        )
        lines += ["", header]
        for row in self.rows:
            lines.append(
                f"  {row.instance_id:<22} {_cell(row.pushed_quantity):>12} "
                f"{_cell(row.unit_price):>10} {_cell(row.expected_amount):>12} "
                f"{_cell(row.billed_quantity):>12} {_cell(row.billed_amount):>12}"
            )
        if self.totals:
            lines.append("")
            lines += [f"  {name}: {value}" for name, value in self.totals.items()]
        lines.append("")
        if not self.findings:
            lines.append("No findings: what was pushed is what was billed.")
        for finding in self.findings:
            mark = "!" if finding.above_tolerance else "i"
            lines.append(f"  [{mark}] {finding.kind}: {finding.detail}")
        return "\n".join(lines)


def reconcile(
    usage: Iterable[InstanceUsage],
    document: BillDocument,
    *,
    prices: Mapping[str, Decimal],
    tolerance: Decimal = Decimal("0.01"),
) -> Reconciliation:
    """Compare the ledger's delivered usage with the bill ``document`` of the same cycle."""
    pushed = {item.instance_id: item for item in usage}
    lines = document.fee_lines()
    if lines or document.summary is None:
        report = _by_instance(pushed, document, prices, tolerance)
    else:
        report = _by_total(pushed, document, prices, tolerance)

    for item in sorted(pushed.values(), key=lambda entry: entry.instance_id):
        if item.late_records:
            report.findings.append(
                Finding(
                    kind="late_push",
                    instance_id=item.instance_id,
                    pushed=item.late_quantity,
                    billed=None,
                    difference=item.late_quantity,
                    above_tolerance=False,
                    detail=(
                        f"{item.instance_id}: {item.late_records} record(s), quantity "
                        f"{item.late_quantity}, delivered after the cycle's last collection; "
                        "KooGallery bills them in a later cycle"
                    ),
                )
            )
    return report


def _by_instance(
    pushed: Mapping[str, InstanceUsage],
    document: BillDocument,
    prices: Mapping[str, Decimal],
    tolerance: Decimal,
) -> Reconciliation:
    billed_quantity: dict[str, Decimal] = {}
    billed_amount: dict[str, Decimal] = {}
    quantity_known: set[str] = set()
    for line in document.fee_lines():
        billed_amount[line.instance_id] = billed_amount.get(line.instance_id, Decimal(0)) + (
            line.amount
        )
        if line.quantity is not None:
            quantity_known.add(line.instance_id)
            billed_quantity[line.instance_id] = (
                billed_quantity.get(line.instance_id, Decimal(0)) + line.quantity
            )

    report = Reconciliation(document.cycle, tolerance, "fee records", totals=document.totals())
    for instance_id in sorted(set(pushed) | set(billed_amount)):
        item = pushed.get(instance_id)
        quantity = item.quantity if item else Decimal(0)
        price = prices.get(instance_id)
        expected = quantity * price if price is not None else None
        row = InstanceRow(
            instance_id,
            quantity,
            price,
            expected,
            billed_quantity.get(instance_id) if instance_id in quantity_known else None,
            billed_amount.get(instance_id),
        )
        report.rows.append(row)
        report.findings.extend(_compare(row, item, tolerance))
    return report


def _compare(row: InstanceRow, item: InstanceUsage | None, tolerance: Decimal) -> list[Finding]:
    name = row.instance_id
    if item is None or item.records == 0:
        billed = row.billed_amount or Decimal(0)
        return [
            Finding(
                "billed_not_pushed",
                name,
                None,
                billed,
                billed,
                abs(billed) > tolerance,
                f"{name}: billed {billed} ({row.billed_quantity} units) but the ledger holds "
                "no delivered usage for it",
            )
        ]
    if row.billed_amount is None:
        return [
            Finding(
                "pushed_not_billed",
                name,
                row.pushed_quantity,
                None,
                row.pushed_quantity,
                True,
                f"{name}: {item.records} record(s), quantity {row.pushed_quantity}, delivered "
                f"but absent from the bill (expected amount {_cell(row.expected_amount)})",
            )
        ]

    findings = []
    if row.billed_quantity is not None:
        difference = row.billed_quantity - row.pushed_quantity
        if difference:
            findings.append(
                Finding(
                    "quantity_mismatch",
                    name,
                    row.pushed_quantity,
                    row.billed_quantity,
                    difference,
                    abs(difference) > tolerance,
                    f"{name}: pushed {row.pushed_quantity}, billed {row.billed_quantity} "
                    f"(difference {difference})",
                )
            )
    if row.expected_amount is not None:
        difference = row.billed_amount - row.expected_amount
        if difference:
            findings.append(
                Finding(
                    "amount_mismatch",
                    name,
                    row.expected_amount,
                    row.billed_amount,
                    difference,
                    abs(difference) > tolerance,
                    f"{name}: expected {row.expected_amount} ({row.pushed_quantity} x "
                    f"{row.unit_price}), billed {row.billed_amount} (difference {difference})",
                )
            )
    return findings


def _by_total(
    pushed: Mapping[str, InstanceUsage],
    document: BillDocument,
    prices: Mapping[str, Decimal],
    tolerance: Decimal,
) -> Reconciliation:
    report = Reconciliation(document.cycle, tolerance, "bill totals", totals=document.totals())
    expected_total = Decimal(0)
    unpriced = []
    for instance_id in sorted(pushed):
        item = pushed[instance_id]
        price = prices.get(instance_id)
        expected = item.quantity * price if price is not None else None
        if expected is None:
            unpriced.append(instance_id)
        else:
            expected_total += expected
        report.rows.append(InstanceRow(instance_id, item.quantity, price, expected, None, None))

    billed = report.totals.get("consume_amount", Decimal(0))
    difference = billed - expected_total
    if difference:
        note = f"; no unit price for {', '.join(unpriced)}" if unpriced else ""
        report.findings.append(
            Finding(
                "total_mismatch",
                None,
                expected_total,
                billed,
                difference,
                abs(difference) > tolerance and not unpriced,
                f"expected consume_amount {expected_total} from delivered usage, bill says "
                f"{billed} (difference {difference}){note}",
            )
        )
    return report


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _cell(value: Decimal | None) -> str:
    return "-" if value is None else format(value, "f")
