"""The bill (BSS / Partner Center) APIs of every site, served from the usage the emulator stored.

A reconciliation is only tested if the bills it reads come from the same usage the client pushed,
so the emulator derives them from its own state instead of replaying canned answers.

Which usage a cycle holds: KooGallery bills pay-per-use usage by consumption time, and bill
cycles are calendar months in Beijing time (UTC+8). A stored record is therefore billed on the
Beijing calendar day its ``begin_time`` falls on, and belongs to that day's month as its cycle:
a record that begins at 2026-10-31T17:00Z is consumed on 2026-11-01 in Beijing, cycle 2026-11.

What a cycle's bill holds:

- fee lines: one per instance per Beijing day with usage. The quantity is the day's summed
  ``usage_value`` and the amount is quantity times the instance's unit price, both exact.
  An instance accepted without registration (``accept_any_instance``) has no price: its lines
  are billed at 0 and their ``resource_name`` reads ``"{instance_id} (unpriced)"``.
- sums: one per customer and product (the real rows carry a ``resource_type_code``, so a
  customer with two products has two rows), the amount being the sum of its fee lines.
- the summary: ``consume_amount`` is the sum of every fee line, ``refunds`` is 0,
  ``adjustments`` the sum of injected adjustments, ``tax_amount`` the consumption times the
  configured ``tax_rate`` rounded half-up to 2 places, and ``initial_amount_due`` is
  consume + refunds + adjustments.

Three APIs serve them, all GET, signed with APIG AK/SK like the usage APIs, with the account id
in ``X-Domain-Id``; money travels as JSON numbers written from the exact decimals:

    intl, eu  /v2/bills/partner-bills/postpaid-bill-summary?bill_cycle=YYYY-MM
    cn        /v2/bills/partner-bills/subcustomer-bills/monthly-sum?cycle=YYYY-MM&offset=&limit=
    cn        /v2/bills/subcustomer-bills/res-fee-records?bill_cycle=YYYY-MM&offset=&limit=

A bill request passes these steps; the first that refuses decides the answer:

1. route: a bill path with GET, else 404 APIG.0101; with ``bills_unsupported`` every bill path
   answers 404 APIG.0101, as on a site that does not publish the API;
2. fault: latency, then an injected 500 CBC.0999 / 429 APIG.0308 / drop from the bill plan;
3. gateway: the AK/SK signature (``apig.verify``), 401 APIG.03xx, or CBC.0154 for a temporary
   credential's token; a credential's ``apis`` limit only the usage APIs;
4. account: ``X-Domain-Id`` must equal ``domain_id`` and ``partner_entitled`` must hold, else
   403 CBC.0151;
5. parameters: the cycle as ``YYYY-MM``, ``offset`` >= 0 (0-based record offset), ``limit``
   1..100 (default 10), else 400 CBC.0100. Other parameters (the real APIs' filters) are refused
   with 400 CBC.0100 too: the emulator filters nothing, and saying so beats a silent full list;
6. cycle: a cycle is closed at 12:00 Beijing time on the 5th of the next month; before that
   (the current month, a future one, or last month before the 5th at noon) the answer is 400
   CBC.0100 "not ready". Fee records also refuse cycles more than 18 months before the current
   Beijing month (at 2026-12, cycle 2025-06 is served and 2025-05 refused).

Fee record fields: ``id`` is the first 32 hex digits of sha256 of ``"{instance_id}|YYYY-MM-DD"``
(the Beijing day), ``trade_id`` is ``"EMU" + YYYYMMDD`` and 12 hex digits of a hash of the same
key. A line made by an ``add_line`` discrepancy hashes ``"{instance_id}|YYYY-MM-DD|added-{n}"``,
n being the discrepancy's position among its cycle's discrepancies, so it never takes the id of
a line of pushed usage. ``consume_time`` is the start of the Beijing day in UTC (day 2026-11-01
gives ``2026-10-31T16:00:00Z``) and ``trade_time`` its last second (``2026-11-01T15:59:59Z``):
read in Beijing time both fall on the billed day, so a client that bins by either lands in the
right day and cycle. Rows are sorted by (``consume_time``, ``resource_id``): paging is stable.

Injectable discrepancies (``BillDiscrepancy``) make the bill differ from the usage on purpose, so
a reconciliation can be shown finding each kind. They apply in the order injected; ``day`` is a
Beijing day ``YYYY-MM-DD`` of the cycle, and fields marked ``?`` are optional:

    kind             fields                                 effect
    ---------------  -------------------------------------  --------------------------------
    drop_line        instance_id, cycle, day?               the day's line (without a day:
                                                            every line of the cycle) leaves
                                                            the lines, the sums and summary
    change_amount    instance_id, cycle, delta, day?        delta is added to the amounts of
                                                            the day's line (without a day:
                                                            the first day's) and the totals
    change_quantity  instance_id, cycle, delta, day?        the same for ``usage_amount``;
                                                            the amounts stay
    add_line         instance_id, cycle, day, quantity,     a line for usage never pushed
                     amount
    adjustment       cycle, amount                          added to ``adjustments``
    duplicate_row    cycle                                  a paging anomaly, see below
    count_skew       cycle, delta? (a whole number, 1)      ``total_count`` says delta more

A discrepancy that matches no line changes nothing.

Paging anomalies change only how the fee records are served, never the lines or the totals.
With ``duplicate_row`` and a request whose ``limit`` L is smaller than the number of rows N, the
rows are served from N+1 positions: positions 0..L-1 are rows 0..L-1, position L repeats row L-1,
and position p > L holds row p-1. So the first row of page 2 (offset L) repeats the last row of
page 1, every later row is pushed one position further, and ``total_count`` still says N. A
client that de-duplicates by ``id`` and advances ``offset`` by the rows it kept (L >= 2) gets
every real row. One that advances by the rows it received and stops at ``total_count`` gets
every row when N is not a multiple of L; when it is, the last row sits at position N, which only
a request at offset N returns, so that client ends one row short and can tell from its count.
``count_skew`` makes ``total_count`` report N + delta (at least 0) while the rows stay N.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, localcontext
from enum import Enum
from typing import Any, Literal, cast
from urllib.parse import unquote

from koogallery.emulator import apig
from koogallery.emulator.config import (
    Credential,
    Instance,
    decimal_from_text,
    default_customer_id,
)
from koogallery.emulator.errors import (
    APIG_NOT_PUBLISHED,
    APIG_THROTTLED,
    CBC_BAD_PARAMETER,
    CBC_INTERNAL,
    CBC_NO_ACCESS,
    CBC_TOKEN,
    ILLEGAL_TOKEN,
    ApiError,
    ErrorCode,
)
from koogallery.emulator.exchange import IncomingRequest, Reply, new_request_id
from koogallery.emulator.faults import Fault, FaultInjector
from koogallery.emulator.state import EmulatorState, RequestLogEntry

__all__ = [
    "BEIJING",
    "BILL_SUMMARY_PATH",
    "DEFAULT_LIMIT",
    "DEFAULT_OFFSET",
    "FEE_RECORDS_PATH",
    "FEE_RECORD_HISTORY_MONTHS",
    "MAX_LIMIT",
    "SUBCUSTOMER_SUMS_PATH",
    "BillApi",
    "BillBook",
    "BillDiscrepancy",
    "BillRoute",
    "BillSum",
    "BillSummary",
    "BillView",
    "Cycle",
    "DiscrepancyKind",
    "FeeLine",
    "beijing_day",
    "match_bill_route",
]

logger = logging.getLogger(__name__)

BILL_SUMMARY_PATH = "/v2/bills/partner-bills/postpaid-bill-summary"
SUBCUSTOMER_SUMS_PATH = "/v2/bills/partner-bills/subcustomer-bills/monthly-sum"
FEE_RECORDS_PATH = "/v2/bills/subcustomer-bills/res-fee-records"

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
DEFAULT_OFFSET = 0
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
FEE_RECORD_HISTORY_MONTHS = 18

MARKETPLACE_SERVICE_TYPE = "hws.service.type.marketplace"
MARKETPLACE_SERVICE_NAME = "KooGallery"
REGION_CODE = "cn-north-4"
_CLOSING_DAY = 5
_CLOSING_HOUR = 12
_MAX_OFFSET = 2147483646
_PRECISION = 60
_CYCLE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_COUNT = re.compile(r"[0-9]{1,10}")
_ZERO = Decimal(0)
_CENT = Decimal("0.01")

DiscrepancyKind = Literal[
    "drop_line",
    "change_amount",
    "change_quantity",
    "add_line",
    "adjustment",
    "duplicate_row",
    "count_skew",
]

# kind -> (fields it needs, fields it may have), besides "kind" and "cycle"
_DISCREPANCY_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "drop_line": (("instance_id",), ("day",)),
    "change_amount": (("instance_id", "delta"), ("day",)),
    "change_quantity": (("instance_id", "delta"), ("day",)),
    "add_line": (("instance_id", "day", "quantity", "amount"), ()),
    "adjustment": (("amount",), ()),
    "duplicate_row": ((), ()),
    "count_skew": ((), ("delta",)),
}
_OPTIONAL_FIELDS = ("instance_id", "day", "delta", "quantity", "amount")


@dataclass(frozen=True, order=True)
class Cycle:
    """A bill cycle: one calendar month in Beijing time.

    Cycle.parse("2026-11").ready_at   # 2026-12-05 12:00 Beijing time
    """

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Cycle:
        """Read ``YYYY-MM``, refusing any other spelling with ValueError."""
        match = _CYCLE.fullmatch(text)
        if match is None:
            raise ValueError(f"a cycle is written YYYY-MM, not {text!r}")

        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def of_day(cls, day: date) -> Cycle:
        """The cycle a Beijing calendar day belongs to."""
        return cls(day.year, day.month)

    @classmethod
    def of_moment(cls, moment: datetime) -> Cycle:
        """The cycle running at a moment, read in Beijing time."""
        return cls.of_day(moment.astimezone(BEIJING).date())

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def months(self) -> int:
        """A running month count, so the distance between cycles is a subtraction."""
        return self.year * 12 + self.month - 1

    @property
    def ready_at(self) -> datetime:
        """When the bill closes: 12:00 Beijing time on the 5th of the next month."""
        year, month = divmod(self.months + 1, 12)
        return datetime(year, month + 1, _CLOSING_DAY, _CLOSING_HOUR, tzinfo=BEIJING)


def beijing_day(begin_time: str) -> date:
    """The Beijing calendar day a ``yyyyMMdd'T'HHmmss'Z'`` time falls on."""
    moment = datetime.strptime(begin_time, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return moment.astimezone(BEIJING).date()


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


@dataclass(frozen=True)
class BillDiscrepancy:
    """A deliberate difference between the usage stored and the bill served for one cycle.

    BillDiscrepancy("change_amount", cycle="2026-11", instance_id="inst-1", delta=Decimal("1.5"))
    BillDiscrepancy.from_dict({"kind": "duplicate_row", "cycle": "2026-11"})

    The kinds and their fields are listed in the module docstring; a field a kind does not use
    is refused, so a misspelt discrepancy fails when it is injected, not silently later.
    """

    kind: DiscrepancyKind
    cycle: str
    instance_id: str | None = None
    day: str | None = None
    delta: Decimal | None = None
    quantity: Decimal | None = None
    amount: Decimal | None = None

    def __post_init__(self) -> None:
        if self.kind not in _DISCREPANCY_FIELDS:
            kinds = ", ".join(_DISCREPANCY_FIELDS)
            raise ValueError(f"unknown discrepancy kind {self.kind!r}; use one of {kinds}")

        cycle = Cycle.parse(str(self.cycle))
        if self.kind == "count_skew" and self.delta is None:
            object.__setattr__(self, "delta", Decimal(1))

        self._check_fields()
        if self.instance_id is not None and not self.instance_id:
            raise ValueError("instance_id must not be empty")

        for name in ("delta", "quantity", "amount"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, decimal_from_text(value, name, signed=True))

        delta = self.delta
        if self.kind == "count_skew" and delta is not None and delta != int(delta):
            raise ValueError(f"count_skew needs a whole delta, not {delta}")

        day = self.line_day
        if day is not None and Cycle.of_day(day) != cycle:
            raise ValueError(f"day {self.day!r} is not a day of cycle {cycle}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BillDiscrepancy:
        """Read a discrepancy from its JSON form (the admin API body)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a discrepancy must be a JSON object, not {data!r}")

        unknown = set(data) - {"kind", "cycle", *_OPTIONAL_FIELDS}
        if unknown:
            raise ValueError(f"unknown discrepancy fields: {sorted(unknown)}")

        if not isinstance(data.get("kind"), str) or not isinstance(data.get("cycle"), str):
            raise ValueError("a discrepancy needs a kind and a cycle")

        values = {name: data.get(name) for name in _OPTIONAL_FIELDS}
        for name in ("instance_id", "day"):
            if values[name] is not None and not isinstance(values[name], str):
                raise ValueError(f"{name} must be a string")

        return cls(kind=cast(DiscrepancyKind, data["kind"]), cycle=data["cycle"], **values)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: the fields this kind uses, decimals as strings."""
        data: dict[str, Any] = {"kind": self.kind, "cycle": self.cycle}
        for name in _OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                data[name] = _text(value) if isinstance(value, Decimal) else value

        return data

    @property
    def line_day(self) -> date | None:
        """The Beijing day the discrepancy names, if any."""
        if self.day is None:
            return None

        if _DAY.fullmatch(self.day) is None:
            raise ValueError(f"day must be YYYY-MM-DD, not {self.day!r}")

        try:
            return date.fromisoformat(self.day)
        except ValueError:
            raise ValueError(f"day {self.day!r} is not a calendar day") from None

    def _check_fields(self) -> None:
        required, optional = _DISCREPANCY_FIELDS[self.kind]
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.kind} discrepancy needs {missing}")

        unused = [
            name
            for name in _OPTIONAL_FIELDS
            if name not in required and name not in optional and getattr(self, name) is not None
        ]
        if unused:
            raise ValueError(f"a {self.kind} discrepancy has no use for {unused}")


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FeeLine:
    """One fee record: an instance's usage of one Beijing day, priced.

    ``key`` is what ``line_id`` and ``trade_id`` are derived from: ``"{instance_id}|YYYY-MM-DD"``
    for usage that was pushed, with a suffix for a line added by a discrepancy.
    """

    key: str
    cycle: str
    day: date
    instance_id: str
    customer_id: str
    product_id: str | None
    quantity: Decimal
    amount: Decimal
    priced: bool
    partner_id: str

    @property
    def line_id(self) -> str:
        """The record's ``id``: 32 hex digits of sha256 of ``key``."""
        return _key_hash(self.key)[:32]

    @property
    def trade_id(self) -> str:
        """``EMU`` + the day as YYYYMMDD + 12 hex digits of a hash of ``key``."""
        return f"EMU{self.day:%Y%m%d}{_key_hash('trade|' + self.key)[:12].upper()}"

    @property
    def consume_time(self) -> str:
        """The start of the Beijing day, in UTC (``2026-10-31T16:00:00Z`` for 2026-11-01)."""
        start = datetime(self.day.year, self.day.month, self.day.day, tzinfo=BEIJING)
        return f"{start.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"

    @property
    def trade_time(self) -> str:
        """The last second of the Beijing day, in UTC (``2026-11-01T15:59:59Z``)."""
        start = datetime(self.day.year, self.day.month, self.day.day, tzinfo=BEIJING)
        end = start + timedelta(days=1, seconds=-1)
        return f"{end.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"

    @property
    def resource_name(self) -> str:
        """The instance id, flagged when the instance has no registered price."""
        return self.instance_id if self.priced else f"{self.instance_id} (unpriced)"

    def sort_key(self) -> tuple[str, str, str]:
        """The order rows are served in: consumption time, then resource id."""
        return self.consume_time, self.instance_id, self.line_id

    def as_fee_record(self) -> dict[str, Any]:
        """The ``fee_records`` item of ListSubCustomerBillDetail, money as exact decimals."""
        return {
            "id": self.line_id,
            "bill_cycle": self.cycle,
            "customer_id": self.customer_id,
            "association_type": "2",
            "service_type_code": MARKETPLACE_SERVICE_TYPE,
            "service_type_name": MARKETPLACE_SERVICE_NAME,
            "resource_type_code": self.product_id,
            "resource_type_name": self.product_id,
            "charging_mode": 3,
            "bill_detail_type": 5,
            "trade_id": self.trade_id,
            "trade_time": self.trade_time,
            "consume_time": self.consume_time,
            "region_code": REGION_CODE,
            "resource_id": self.instance_id,
            "resource_name": self.resource_name,
            "product_id": self.product_id,
            "usage_type": "usage",
            "usage_amount": self.quantity,
            "usage_measure_id": 1,
            "official_amount": self.amount,
            "official_discount_amount": _ZERO,
            "payment_amount": self.amount,
            "cash_amount": self.amount,
            "credit_amount": _ZERO,
            "coupon_amount": _ZERO,
            "debt_amount": _ZERO,
            "writeoff_amount": _ZERO,
            "period_type": 25,
            "partner_id": self.partner_id,
        }


@dataclass(frozen=True)
class BillSum:
    """A customer's spending on one product in a cycle: the sum of its fee lines."""

    customer_id: str
    product_id: str | None
    amount: Decimal

    def as_bill_sum(self) -> dict[str, Any]:
        """The ``bill_sums`` item of ListSubcustomerMonthlyBills, money as exact decimals."""
        return {
            "customer_id": self.customer_id,
            "cloud_service_type": MARKETPLACE_SERVICE_TYPE,
            "cloud_service_type_name": MARKETPLACE_SERVICE_NAME,
            "bill_type": 0,
            "charge_mode": 3,
            "amount": self.amount,
            "debt_amount": self.amount,
            "adjustment_amount": _ZERO,
            "discount_amount": _ZERO,
            "measure_id": 1,
            "resource_type_code": self.product_id,
            "resource_type_name": self.product_id,
        }


@dataclass(frozen=True)
class BillSummary:
    """The partner's monthly summary of one cycle."""

    cycle: str
    consume_amount: Decimal
    refunds: Decimal
    adjustments: Decimal
    tax_amount: Decimal
    currency: str

    @property
    def initial_amount_due(self) -> Decimal:
        """Consumption plus refunds plus adjustments, the documented formula."""
        with localcontext() as context:
            context.prec = _PRECISION
            return self.consume_amount + self.refunds + self.adjustments

    def as_summary(self) -> dict[str, Any]:
        """The body of ListPostpaidBillSum, money as exact decimals."""
        return {
            "bill_cycle": self.cycle,
            "initial_amount_due": self.initial_amount_due,
            "consume_amount": self.consume_amount,
            "refunds": self.refunds,
            "adjustments": self.adjustments,
            "tax_amount": self.tax_amount,
            "currency": self.currency,
        }


@dataclass(frozen=True)
class BillView:
    """One cycle's bill as every bill API serves it, discrepancies applied.

    view = emu.bills.view("2026-11")
    view.lines, view.sums, view.summary, view.fee_page(offset=0, limit=10)
    """

    cycle: str
    currency: str
    lines: tuple[FeeLine, ...]
    sums: tuple[BillSum, ...]
    summary: BillSummary
    duplicate_row: bool
    count_skew: int
    discrepancies: tuple[BillDiscrepancy, ...]

    @property
    def ready_at(self) -> datetime:
        """When the cycle's bill closes and the APIs start serving it."""
        return Cycle.parse(self.cycle).ready_at

    def fee_page(self, offset: int, limit: int) -> tuple[tuple[FeeLine, ...], int]:
        """The rows served at ``offset``/``limit`` and the ``total_count`` reported.

        The paging anomalies apply here only (see the module docstring).
        """
        rows = list(self.lines)
        if self.duplicate_row and len(rows) > limit:
            rows.insert(limit, rows[limit - 1])

        total = max(0, len(self.lines) + self.count_skew)
        return tuple(rows[offset : offset + limit]), total

    def fee_records_body(self, offset: int, limit: int) -> dict[str, Any]:
        """The body of ListSubCustomerBillDetail for one page."""
        rows, total = self.fee_page(offset, limit)
        return {
            "total_count": total,
            "currency": self.currency,
            "fee_records": [row.as_fee_record() for row in rows],
        }

    def sums_body(self, offset: int, limit: int) -> dict[str, Any]:
        """The body of ListSubcustomerMonthlyBills for one page."""
        return {
            "bill_sums": [item.as_bill_sum() for item in self.sums[offset : offset + limit]],
            "count": len(self.sums),
            "currency": self.currency,
        }

    def as_dict(self) -> dict[str, Any]:
        """The admin form: every line, sum and the summary as the APIs write them."""
        return {
            "cycle": self.cycle,
            "currency": self.currency,
            "ready_at": self.ready_at.isoformat(),
            "fee_records": [line.as_fee_record() for line in self.lines],
            "total_count": len(self.lines),
            "bill_sums": [item.as_bill_sum() for item in self.sums],
            "count": len(self.sums),
            "summary": self.summary.as_summary(),
            "paging": {"duplicate_row": self.duplicate_row, "count_skew": self.count_skew},
            "discrepancies": [item.as_dict() for item in self.discrepancies],
        }


class BillBook:
    """Computes each cycle's bill from the stored usage and keeps the injected discrepancies.

    book = BillBook(state, partner_id="p", bill_currency=None, tax_rate=Decimal(0))
    book.inject(BillDiscrepancy("adjustment", cycle="2026-11", amount=Decimal("-2.00")))
    book.view("2026-11").summary.initial_amount_due
    """

    def __init__(
        self,
        state: EmulatorState,
        *,
        partner_id: str,
        bill_currency: str | None,
        tax_rate: Decimal,
    ) -> None:
        self._state = state
        self._partner_id = partner_id
        self._bill_currency = bill_currency
        self._tax_rate = tax_rate
        self._lock = threading.Lock()
        self._discrepancies: list[BillDiscrepancy] = []

    @property
    def discrepancies(self) -> tuple[BillDiscrepancy, ...]:
        """Every injected discrepancy, in the order it was injected."""
        with self._lock:
            return tuple(self._discrepancies)

    @property
    def currency(self) -> str:
        """The configured bill currency, else the first registered instance's, else CNY."""
        if self._bill_currency is not None:
            return self._bill_currency

        instances = self._state.instances
        return instances[0].currency if instances else "CNY"

    def inject(self, *discrepancies: BillDiscrepancy) -> None:
        """Add discrepancies; they apply to every bill computed from now on."""
        with self._lock:
            self._discrepancies.extend(discrepancies)

    def clear(self) -> None:
        """Forget every discrepancy: bills follow the stored usage exactly again."""
        with self._lock:
            self._discrepancies.clear()

    def view(self, cycle: str) -> BillView:
        """The bill of one cycle (``YYYY-MM``, else ValueError), closed or not."""
        target = Cycle.parse(cycle)
        instances = {instance.instance_id: instance for instance in self._state.instances}
        discrepancies = tuple(item for item in self.discrepancies if item.cycle == str(target))

        with localcontext() as context:
            context.prec = _PRECISION
            lines = self._usage_lines(target, instances)
            for position, discrepancy in enumerate(discrepancies):
                lines = self._apply(discrepancy, position, lines, instances)

            lines.sort(key=FeeLine.sort_key)
            return BillView(
                cycle=str(target),
                currency=self.currency,
                lines=tuple(lines),
                sums=_sums(lines),
                summary=self._summary(target, lines, discrepancies),
                duplicate_row=any(item.kind == "duplicate_row" for item in discrepancies),
                count_skew=sum(
                    int(item.delta or 0) for item in discrepancies if item.kind == "count_skew"
                ),
                discrepancies=discrepancies,
            )

    def _usage_lines(self, cycle: Cycle, instances: Mapping[str, Instance]) -> list[FeeLine]:
        """One priced line per instance per Beijing day of the cycle that has usage."""
        quantities: dict[tuple[str, date], Decimal] = {}
        products: dict[str, str | None] = {}
        for record in self._state.records:
            day = beijing_day(record.begin_time)
            if Cycle.of_day(day) != cycle:
                continue

            key = (record.instance_id, day)
            quantities[key] = quantities.get(key, _ZERO) + record.usage_value
            products.setdefault(record.instance_id, record.product_id)

        return [
            self._line(
                f"{instance_id}|{day.isoformat()}",
                cycle,
                day,
                instance_id,
                instances.get(instance_id),
                products.get(instance_id),
                quantity=quantity,
                amount=None,
            )
            for (instance_id, day), quantity in quantities.items()
        ]

    def _line(
        self,
        key: str,
        cycle: Cycle,
        day: date,
        instance_id: str,
        instance: Instance | None,
        fallback_product: str | None,
        *,
        quantity: Decimal,
        amount: Decimal | None,
    ) -> FeeLine:
        """A fee line; without an ``amount`` the quantity is priced at the instance's price."""
        if amount is None:
            amount = _ZERO if instance is None else quantity * instance.unit_price

        return FeeLine(
            key=key,
            cycle=str(cycle),
            day=day,
            instance_id=instance_id,
            customer_id=(
                default_customer_id(instance_id) if instance is None else instance.customer_id
            ),
            product_id=fallback_product if instance is None else instance.product_id,
            quantity=quantity,
            amount=amount,
            priced=instance is not None,
            partner_id=self._partner_id,
        )

    def _apply(
        self,
        discrepancy: BillDiscrepancy,
        position: int,
        lines: list[FeeLine],
        instances: Mapping[str, Instance],
    ) -> list[FeeLine]:
        """The lines after one line-changing discrepancy; other kinds leave them as they are."""
        day = discrepancy.line_day
        if discrepancy.kind == "drop_line":
            return [line for line in lines if not _matches(line, discrepancy.instance_id, day)]

        if discrepancy.kind in ("change_amount", "change_quantity"):
            return _change(lines, discrepancy)

        if discrepancy.kind == "add_line" and discrepancy.instance_id is not None:
            cycle = Cycle.parse(discrepancy.cycle)
            instance_id = discrepancy.instance_id
            added = self._line(
                f"{instance_id}|{discrepancy.day}|added-{position}",
                cycle,
                day or date(cycle.year, cycle.month, 1),
                instance_id,
                instances.get(instance_id),
                None,
                quantity=discrepancy.quantity or _ZERO,
                amount=discrepancy.amount or _ZERO,
            )
            return [*lines, added]

        return lines

    def _summary(
        self, cycle: Cycle, lines: Iterable[FeeLine], discrepancies: Iterable[BillDiscrepancy]
    ) -> BillSummary:
        consume = sum((line.amount for line in lines), _ZERO)
        adjustments = sum(
            (item.amount or _ZERO for item in discrepancies if item.kind == "adjustment"), _ZERO
        )
        tax = (consume * self._tax_rate).quantize(_CENT, rounding=ROUND_HALF_UP)
        return BillSummary(
            cycle=str(cycle),
            consume_amount=consume,
            refunds=_ZERO,
            adjustments=adjustments,
            tax_amount=tax,
            currency=self.currency,
        )


def _matches(line: FeeLine, instance_id: str | None, day: date | None) -> bool:
    return line.instance_id == instance_id and (day is None or line.day == day)


def _change(lines: list[FeeLine], discrepancy: BillDiscrepancy) -> list[FeeLine]:
    """Add the delta to the named day's line, or to the instance's earliest line."""
    day = discrepancy.line_day
    candidates = sorted(
        (line for line in lines if _matches(line, discrepancy.instance_id, day)),
        key=FeeLine.sort_key,
    )
    if not candidates:
        return lines

    target = candidates[0]
    delta = discrepancy.delta or _ZERO
    if discrepancy.kind == "change_amount":
        changed = replace(target, amount=target.amount + delta)
    else:
        changed = replace(target, quantity=target.quantity + delta)

    return [changed if line is target else line for line in lines]


def _sums(lines: Iterable[FeeLine]) -> tuple[BillSum, ...]:
    """One sum per customer and product, ordered by customer then product."""
    totals: dict[tuple[str, str | None], Decimal] = {}
    for line in lines:
        key = (line.customer_id, line.product_id)
        totals[key] = totals.get(key, _ZERO) + line.amount

    ordered = sorted(totals.items(), key=lambda item: (item[0][0], item[0][1] or ""))
    return tuple(
        BillSum(customer_id=customer_id, product_id=product_id, amount=amount)
        for (customer_id, product_id), amount in ordered
    )


class BillRoute(str, Enum):
    """A bill API; the value names it in logs."""

    SUMMARY = "postpaid-bill-summary"
    SUBCUSTOMER_SUMS = "subcustomer-monthly-sum"
    FEE_RECORDS = "subcustomer-fee-records"


_ROUTES = {
    BILL_SUMMARY_PATH: BillRoute.SUMMARY,
    SUBCUSTOMER_SUMS_PATH: BillRoute.SUBCUSTOMER_SUMS,
    FEE_RECORDS_PATH: BillRoute.FEE_RECORDS,
}
# route -> (the cycle parameter's name, whether it pages)
_PARAMETERS = {
    BillRoute.SUMMARY: ("bill_cycle", False),
    BillRoute.SUBCUSTOMER_SUMS: ("cycle", True),
    BillRoute.FEE_RECORDS: ("bill_cycle", True),
}


def match_bill_route(path: str) -> BillRoute | None:
    """The bill API a request path names (a trailing slash tolerated), or None."""
    text = unquote(path)
    if len(text) > 1 and text.endswith("/"):
        text = text[:-1]

    return _ROUTES.get(text)


@dataclass(frozen=True)
class _Query:
    cycle: Cycle
    offset: int
    limit: int


def _error_payload(error: ErrorCode, message: str | None = None) -> dict[str, object]:
    return {"error_code": error.code, "error_msg": message or error.message}


class BillApi:
    """Serves the three bill APIs from a ``BillBook``, with their own fault plan.

    api = BillApi(book, faults, state=state, credentials={"AK": credential},
                  domain_id="d", partner_entitled=True, bills_unsupported=False,
                  clock=lambda: datetime.now(timezone.utc))
    reply = api.handle(request)
    """

    def __init__(
        self,
        book: BillBook,
        faults: FaultInjector,
        *,
        state: EmulatorState,
        credentials: Mapping[str, Credential],
        domain_id: str,
        partner_entitled: bool,
        bills_unsupported: bool,
        clock: Callable[[], datetime],
        bills_preview: bool = False,
    ) -> None:
        self._book = book
        self._faults = faults
        self._state = state
        self._credentials = dict(credentials)
        self._domain_id = domain_id
        self._partner_entitled = partner_entitled
        self._bills_unsupported = bills_unsupported
        self._bills_preview = bills_preview
        self._clock = clock

    def handle(self, request: IncomingRequest) -> Reply:
        """Answer one request whose path is a bill path."""
        request_id = new_request_id()
        received_at = self._clock()

        route = match_bill_route(request.path)
        if self._bills_unsupported or route is None or request.method != "GET":
            reply = Reply(
                APIG_NOT_PUBLISHED.http_status, _error_payload(APIG_NOT_PUBLISHED), request_id
            )
            return self._logged(request, reply, received_at, fault=None)

        delay = self._faults.next_delay_seconds()
        if delay > 0:
            time.sleep(delay)

        fault = self._faults.next_fault()
        if fault in (Fault.ERROR_500, Fault.RATE_LIMIT_429, Fault.DROP):
            return self._logged(request, _injected(fault, request_id), received_at, fault=fault)

        reply = self._answer(request, route, request_id)
        if fault is Fault.DROP_AFTER_COMMIT:
            dropped = Reply(reply.status, None, request_id, drop=True)
            return self._logged(request, dropped, received_at, fault=fault)

        return self._logged(request, reply, received_at, fault=None)

    def _answer(self, request: IncomingRequest, route: BillRoute, request_id: str) -> Reply:
        try:
            self._check_caller(request)
            query = self._read_query(route, request.query)
            self._check_cycle(route, query.cycle)
            body = self._body(route, query)
        except ApiError as error:
            payload = {"error_code": error.error_code, "error_msg": error.error_msg}
            return Reply(error.http_status, payload, request_id)

        return Reply(200, body, request_id)

    def _check_caller(self, request: IncomingRequest) -> None:
        """The gateway's signature check, then the account's right to partner bills."""
        signed = apig.SignedRequest(
            request.method, request.path, request.query, request.headers, request.body
        )
        try:
            apig.verify(signed, self._credentials, self._clock())
        except ApiError as error:
            if error.error is ILLEGAL_TOKEN:
                raise ApiError(CBC_TOKEN, error.detail) from None
            raise

        if request.headers.get("x-domain-id", "").strip() != self._domain_id:
            raise ApiError(CBC_NO_ACCESS)

        if not self._partner_entitled:
            raise ApiError(CBC_NO_ACCESS)

    def _read_query(self, route: BillRoute, query: str) -> _Query:
        cycle_name, pages = _PARAMETERS[route]
        allowed = {cycle_name, "offset", "limit"} if pages else {cycle_name}
        params = _query_params(query)

        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ApiError(CBC_BAD_PARAMETER, f"the emulator does not support {unknown}")

        text = params.get(cycle_name)
        if text is None:
            raise ApiError(CBC_BAD_PARAMETER, f"{cycle_name} is required")

        try:
            cycle = Cycle.parse(text)
        except ValueError:
            raise ApiError(CBC_BAD_PARAMETER, f"{cycle_name} must be YYYY-MM") from None

        offset = _count(params, "offset", DEFAULT_OFFSET, 0, _MAX_OFFSET)
        limit = _count(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        return _Query(cycle, offset, limit)

    def _check_cycle(self, route: BillRoute, cycle: Cycle) -> None:
        """Refuse a cycle whose bill is not closed yet, and fee records past their history."""
        now = self._clock()
        if now < cycle.ready_at and not self._bills_preview:
            ready = cycle.ready_at.strftime("%Y-%m-%d %H:%M")
            raise ApiError(
                CBC_BAD_PARAMETER,
                f"the bill of cycle {cycle} is not ready; it closes at {ready} Beijing time",
            )

        age = Cycle.of_moment(now).months - cycle.months
        if route is BillRoute.FEE_RECORDS and age > FEE_RECORD_HISTORY_MONTHS:
            raise ApiError(
                CBC_BAD_PARAMETER,
                f"bill_cycle {cycle} is older than the {FEE_RECORD_HISTORY_MONTHS} months kept",
            )

    def _body(self, route: BillRoute, query: _Query) -> dict[str, Any]:
        view = self._book.view(str(query.cycle))
        if route is BillRoute.SUMMARY:
            return view.summary.as_summary()

        if route is BillRoute.SUBCUSTOMER_SUMS:
            return view.sums_body(query.offset, query.limit)

        return view.fee_records_body(query.offset, query.limit)

    def _logged(
        self,
        request: IncomingRequest,
        reply: Reply,
        received_at: datetime,
        *,
        fault: Fault | None,
    ) -> Reply:
        """Write the request to the shared request log (``api`` None: it is no usage API)."""
        payload = reply.payload or {}
        error_code = payload.get("error_code")
        entry = RequestLogEntry(
            time=received_at,
            method=request.method,
            path=request.path,
            api=None,
            http_status=None if reply.drop else reply.status,
            error_code=error_code if isinstance(error_code, str) else None,
            record_count=None,
            nonce=None,
            request_id=reply.request_id,
            fault=None if fault is None else fault.value,
        )
        self._state.log_request(entry)
        logger.debug(
            "bill request %s %s %s status=%s code=%s fault=%s",
            entry.request_id,
            request.method,
            request.path,
            entry.http_status,
            entry.error_code,
            entry.fault,
        )
        return reply


def _injected(fault: Fault, request_id: str) -> Reply:
    if fault is Fault.DROP:
        return Reply(0, None, request_id, drop=True)

    error = CBC_INTERNAL if fault is Fault.ERROR_500 else APIG_THROTTLED
    return Reply(error.http_status, _error_payload(error), request_id)


def _query_params(query: str) -> dict[str, str]:
    """Query parameters by name; a name given twice is refused rather than guessed at."""
    params: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue

        name, _, value = part.partition("=")
        name = unquote(name)
        if name in params:
            raise ApiError(CBC_BAD_PARAMETER, f"{name} is given more than once")

        params[name] = unquote(value)

    return params


def _count(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default

    if _COUNT.fullmatch(text) is None or not low <= int(text) <= high:
        raise ApiError(CBC_BAD_PARAMETER, f"{name} must be a whole number in {low}..{high}")

    return int(text)
