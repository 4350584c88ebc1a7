"""The bill client: fetch a cycle's bills from Huawei Cloud's Partner Center (BSS) APIs.

KooGallery has no seller bill API; the nearest machine-readable truth is the Partner Center's,
which differs per site (see the README's "Bills" section):

- ``intl`` and ``eu``: the partner monthly summary, one object of totals per cycle;
- ``cn``: the sub-customer monthly sums and the fee records, both paged with ``offset``/``limit``.

    with BillClient(settings) as client:
        result = client.fetch("2026-10")
        result.status, result.document.content_hash

Money stays ``Decimal`` from the JSON text on: numbers are parsed without passing through float.
Who may call these APIs is limited to partner accounts; any other account gets 403 ``CBC.0151``,
which is reported as ``not_entitled`` rather than retried forever.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx

from koogallery.config import Settings
from koogallery.errors import AuthenticationError, ConfigurationError
from koogallery.signing import JSON_CONTENT_TYPE, ApigSigner, Credentials

__all__ = [
    "BEIJING",
    "BillClient",
    "BillDocument",
    "BillFetch",
    "BillStatus",
    "CycleChoice",
    "FeeLine",
    "choose_cycle",
    "cycle_bounds",
    "parse_cycle",
]

logger = logging.getLogger(__name__)

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Bill cycles, and the moment a bill is ready, are in Beijing time."""

SUMMARY_PATH = "/v2/bills/partner-bills/postpaid-bill-summary"
MONTHLY_SUM_PATH = "/v2/bills/partner-bills/subcustomer-bills/monthly-sum"
FEE_RECORDS_PATH = "/v2/bills/subcustomer-bills/res-fee-records"

PAGE_SIZE = 100
MAX_PAGES = 1000
_MAX_RETRIES = 3
_CYCLE = re.compile(r"^(\d{4})-(\d{2})$")
_SUMMARY_FIELDS = (
    "bill_cycle",
    "initial_amount_due",
    "consume_amount",
    "refunds",
    "adjustments",
    "tax_amount",
    "currency",
)


class BillStatus(str, enum.Enum):
    """The outcome of fetching one cycle (the storing step adds ``unchanged``/``amended``)."""

    COMPLETE = "complete"
    NOT_ENTITLED = "not_entitled"
    UNSUPPORTED = "unsupported"
    FAILED = "failed"


@dataclass(frozen=True)
class CycleChoice:
    """Which cycle a timer run should fetch, and whether its bill can exist yet."""

    cycle: str
    ready: bool
    ready_at: datetime


def parse_cycle(text: str) -> tuple[int, int]:
    """``"2026-10"`` -> ``(2026, 10)``; anything else is a configuration error."""
    match = _CYCLE.match(text.strip())
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise ConfigurationError(f"bill cycle {text!r} is not of the form YYYY-MM")
    return int(match.group(1)), int(match.group(2))


def cycle_bounds(cycle: str) -> tuple[datetime, datetime]:
    """The cycle's first and last-plus-one moment, in UTC, as Beijing calendar months."""
    year, month = parse_cycle(cycle)
    start = datetime(year, month, 1, tzinfo=BEIJING)
    after = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=BEIJING)
    return start.astimezone(timezone.utc), after.astimezone(timezone.utc)


def choose_cycle(now: datetime, *, margin: timedelta) -> CycleChoice:
    """The previous calendar month (Beijing time), ready from 12:00 on the 5th plus ``margin``.

    Partner bills for month M are generated before 12:00 Beijing time on the 5th of M+1; the
    margin covers a platform that is a little late.
    """
    local = now.astimezone(BEIJING)
    first_of_month = date(local.year, local.month, 1)
    previous = first_of_month - timedelta(days=1)
    ready_at = datetime(local.year, local.month, 5, 12, tzinfo=BEIJING) + margin
    return CycleChoice(
        cycle=f"{previous.year:04d}-{previous.month:02d}",
        ready=local >= ready_at,
        ready_at=ready_at.astimezone(timezone.utc),
    )


@dataclass(frozen=True)
class FeeLine:
    """One fee record, reduced to what reconciliation compares."""

    id: str
    instance_id: str
    customer_id: str | None
    product_id: str | None
    consume_time: str | None
    quantity: Decimal | None
    amount: Decimal


@dataclass
class BillDocument:
    """Everything a site's bill APIs said about one cycle, in a canonical, hashable form."""

    site: str
    cycle: str
    currency: str | None
    summary: dict[str, Any] | None = None
    monthly_sums: list[dict[str, Any]] = field(default_factory=list)
    fee_records: list[dict[str, Any]] = field(default_factory=list)
    consistent: bool = True
    problems: list[str] = field(default_factory=list)

    def canonical(self) -> dict[str, Any]:
        """A JSON-ready form with every Decimal as its exact text and rows in a fixed order.

        ``problems`` (notes on how the paging went) stay out, so that the same bill read twice
        has the same hash.
        """
        canonical: dict[str, Any] = _plain(
            {
                "site": self.site,
                "cycle": self.cycle,
                "currency": self.currency,
                "summary": self.summary,
                "monthly_sums": sorted(self.monthly_sums, key=_row_key),
                "fee_records": sorted(self.fee_records, key=lambda row: str(row.get("id"))),
                "consistent": self.consistent,
            }
        )
        return canonical

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON: equal content, equal hash, whatever the paging."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_canonical(cls, data: Mapping[str, Any]) -> BillDocument:
        """Rebuild a stored document (money comes back as Decimal)."""
        revived = _revive(data)
        return cls(
            site=revived["site"],
            cycle=revived["cycle"],
            currency=revived.get("currency"),
            summary=revived.get("summary"),
            monthly_sums=list(revived.get("monthly_sums") or []),
            fee_records=list(revived.get("fee_records") or []),
            consistent=bool(revived.get("consistent", True)),
            problems=list(revived.get("problems") or []),
        )

    def fee_lines(self) -> list[FeeLine]:
        """The fee records as reconciliation reads them (amount paid, usage quantity)."""
        lines = []
        for row in self.fee_records:
            lines.append(
                FeeLine(
                    id=str(row.get("id")),
                    instance_id=str(row.get("resource_id") or ""),
                    customer_id=_text(row.get("customer_id")),
                    product_id=_text(row.get("product_id")),
                    consume_time=_text(row.get("consume_time")),
                    quantity=_decimal(row.get("usage_amount")),
                    amount=_first_amount(row),
                )
            )
        return lines

    def totals(self) -> dict[str, Decimal]:
        """The bill's totals: the summary's fields, or the sums of the cn lists."""
        if self.summary is not None:
            return {
                name: value
                for name in _SUMMARY_FIELDS
                if isinstance(value := self.summary.get(name), Decimal)
            }
        fee_total = sum((line.amount for line in self.fee_lines()), Decimal(0))
        sum_total = sum(
            (_decimal(row.get("amount")) or Decimal(0) for row in self.monthly_sums), Decimal(0)
        )
        return {"fee_records_amount": fee_total, "monthly_sums_amount": sum_total}


@dataclass
class BillFetch:
    """The result of one fetch: a status, and the document when there is one."""

    status: BillStatus
    cycle: str
    site: str
    document: BillDocument | None = None
    request_ids: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_msg: str | None = None


class _Refused(Exception):
    """A definite answer that ends the fetch with a non-complete status."""

    def __init__(self, status: BillStatus, code: str | None, message: str | None) -> None:
        super().__init__(message or code or status.value)
        self.status = status
        self.code = code
        self.message = message


class BillClient:
    """Fetches bills for a cycle from the site's Partner Center API, signed with AK/SK.

    ``sleep`` and ``rng`` are injectable so that retries run instantly in tests.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        settings.require_bill_credentials()
        assert settings.access_key is not None and settings.secret_key is not None
        self.settings = settings
        self._sleep = sleep
        self._rng = rng
        self._monotonic = monotonic
        self._deadline: float | None = None
        signer = ApigSigner(
            Credentials(settings.access_key, settings.secret_key, settings.security_token),
            extra_headers={"X-Domain-Id": settings.domain_id or ""},
        )
        self._http = httpx.Client(
            auth=signer,
            transport=transport,
            timeout=settings.timeout_seconds,
            verify=settings.verify_tls,
            headers={"Content-Type": JSON_CONTENT_TYPE, "User-Agent": "koogallery-functions"},
        )

    def __enter__(self) -> BillClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def fetch(self, cycle: str, *, deadline: float | None = None) -> BillFetch:
        """Fetch every bill document of ``cycle`` for the configured site.

        ``deadline`` is a ``time.monotonic()`` moment: no retry pause runs past it, so that a
        function stopped by its timeout still gets to record the run as ``failed``.
        """
        parse_cycle(cycle)
        site = self.settings.site
        self._deadline = deadline
        result = BillFetch(BillStatus.COMPLETE, cycle, site)
        try:
            if site == "cn":
                result.document = self._fetch_cn(cycle, result.request_ids)
            else:
                result.document = self._fetch_summary(cycle, result.request_ids)
        except _Refused as refused:
            result.status = refused.status
            result.error_code = refused.code
            result.error_msg = refused.message
        return result

    def _fetch_summary(self, cycle: str, request_ids: list[str]) -> BillDocument:
        body = self._get(SUMMARY_PATH, {"bill_cycle": cycle}, request_ids)
        summary = {name: body.get(name) for name in _SUMMARY_FIELDS if name in body}
        summary = {
            name: _decimal(value) if name not in ("bill_cycle", "currency") else value
            for name, value in summary.items()
        }
        document = BillDocument(
            site=self.settings.site, cycle=cycle, currency=_text(body.get("currency"))
        )
        document.summary = summary
        if summary.get("bill_cycle") not in (None, cycle):
            document.consistent = False
            document.problems.append(f"summary is for cycle {summary.get('bill_cycle')}")
        return document

    def _fetch_cn(self, cycle: str, request_ids: list[str]) -> BillDocument:
        problems: list[str] = []
        sums, sums_total, currency = self._paged(
            MONTHLY_SUM_PATH, {"cycle": cycle}, "bill_sums", "count", request_ids, problems
        )
        records, records_total, records_currency = self._paged(
            FEE_RECORDS_PATH,
            {"bill_cycle": cycle},
            "fee_records",
            "total_count",
            request_ids,
            problems,
        )
        document = BillDocument(
            site=self.settings.site, cycle=cycle, currency=currency or records_currency
        )
        document.monthly_sums = sums
        document.fee_records = records
        document.problems = problems
        for name, rows, total in (
            ("monthly sums", sums, sums_total),
            ("fee records", records, records_total),
        ):
            if len(rows) != total:
                document.consistent = False
                problems.append(
                    f"{name}: {len(rows)} distinct rows, but the API's total is {total}"
                )
        return document

    def _paged(
        self,
        path: str,
        query: dict[str, str],
        rows_key: str,
        total_key: str,
        request_ids: list[str],
        problems: list[str],
    ) -> tuple[list[dict[str, Any]], int, str | None]:
        """Read every page; ``offset`` counts records, and rows are kept once by identity.

        These lists have no sort order, so a row can move between pages while they are read and
        show up twice: paging goes on until as many distinct rows as the total were seen, or a
        page comes back empty.
        """
        rows: dict[str, dict[str, Any]] = {}
        total = 0
        currency: str | None = None
        offset = 0
        for _ in range(MAX_PAGES):
            page = self._get(
                path, {**query, "offset": str(offset), "limit": str(PAGE_SIZE)}, request_ids
            )
            batch = page.get(rows_key) or []
            if not isinstance(batch, list):
                raise _Refused(BillStatus.FAILED, None, f"{rows_key} is not a list")
            total = int(page.get(total_key) or 0)
            currency = currency or _text(page.get("currency"))
            for row in batch:
                if not isinstance(row, dict):
                    continue
                key = _identity(row)
                if key in rows:
                    problems.append(
                        f"{rows_key}: row {key} appeared twice while paging; kept once"
                    )
                    continue
                rows[key] = row
            offset += len(batch)
            if not batch or len(rows) >= total:
                break
        return list(rows.values()), total, currency

    def _get(self, path: str, query: dict[str, str], request_ids: list[str]) -> dict[str, Any]:
        """One GET with the error policy of the bill APIs (see the module doc)."""
        url = self.settings.bill_endpoints[0] + path
        for attempt in range(_MAX_RETRIES + 1):
            failure: tuple[str | None, str | None]
            try:
                response = self._http.get(url, params=query)
            except httpx.TransportError as error:
                failure = (None, f"{type(error).__name__}: {error}")
                delay = min(8.0, 0.5 * 2.0**attempt)
            else:
                request_id = response.headers.get("X-Request-Id")
                if request_id:
                    request_ids.append(request_id)
                body = _json(response)
                code = _text(body.get("error_code")) if isinstance(body, dict) else None
                message = _text(body.get("error_msg")) if isinstance(body, dict) else None
                if response.status_code == 200 and isinstance(body, dict) and code is None:
                    return body
                failure = (code, message)
                delay = self._judge(response.status_code, code, message, attempt)
            if attempt < _MAX_RETRIES:
                if self._deadline is not None and self._monotonic() + delay >= self._deadline:
                    message = f"{failure[1]}; no time left to retry before the deadline"
                    raise _Refused(BillStatus.FAILED, failure[0], message)
                logger.warning(
                    "bill API call failed, retrying",
                    extra={"event": "bill_retry", "path": path, "error_code": failure[0]},
                )
                self._sleep(delay)
        raise _Refused(BillStatus.FAILED, failure[0], failure[1])

    def _judge(self, status: int, code: str | None, message: str | None, attempt: int) -> float:
        """Raise for definite answers; return the delay before retrying a transient one."""
        if status == 403 or code == "CBC.0151":
            raise _Refused(BillStatus.NOT_ENTITLED, code, message)
        if status == 404:
            raise _Refused(BillStatus.UNSUPPORTED, code, message)
        if status == 401 or code in ("CBC.0154", "APIG.0301", "APIG.0303", "APIG.0304"):
            raise AuthenticationError(
                f"the bill API refused the credentials (HTTP {status} {code}: {message}); check "
                "HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK and HUAWEICLOUD_SDK_DOMAIN_ID",
                error_code=code,
                status=status,
            )
        if status == 429 or code == "APIG.0308":
            return 2.0 + 3.0 * self._rng()
        if status >= 500:
            return min(8.0, 0.5 * 2.0**attempt) * (0.5 + self._rng() / 2)
        raise _Refused(BillStatus.FAILED, code, message)


def _identity(row: Mapping[str, Any]) -> str:
    """A fee record's ``id``; rows without one (the sums) are identified by their content."""
    if row.get("id"):
        return str(row["id"])
    if "amount" in row and "customer_id" in row and "trade_id" not in row:
        return _row_key(row)
    return _fallback_id(row)


def _fallback_id(row: Mapping[str, Any]) -> str:
    parts = (
        row.get(name)
        for name in (
            "customer_id",
            "trade_id",
            "resource_id",
            "bill_detail_type",
            "trade_time",
            "payment_amount",
        )
    )
    text = "|".join("" if part is None else str(part) for part in parts)
    return hashlib.sha256(text.encode()).hexdigest()


def _first_amount(row: Mapping[str, Any]) -> Decimal:
    """What the customer was charged: ``payment_amount``, else the list price; a charge of 0
    is a real 0 (a fully discounted line), not a missing value."""
    for name in ("payment_amount", "official_amount"):
        amount = _decimal(row.get(name))
        if amount is not None:
            return amount
    return Decimal(0)


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.text, parse_float=Decimal)
    except json.JSONDecodeError:
        return None


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (int, str)):
        try:
            return Decimal(value)
        except ArithmeticError:
            return None
    return None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _revive(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$decimal"}:
            return Decimal(value["$decimal"])
        return {key: _revive(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_revive(item) for item in value]
    return value


def _row_key(row: Mapping[str, Any]) -> str:
    return json.dumps(_plain(dict(row)), sort_keys=True)
