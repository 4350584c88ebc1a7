"""The bill fetch function's behaviour: pick the cycle, fetch, store a version, reconcile.

``functions/bill_fetch/index.py`` is a thin FunctionGraph entry point over
:func:`handle_bill_fetch`, triggered by a timer (daily is plenty: a cycle's bill appears once).

1. The cycle is the previous calendar month in Beijing time, once its bill is ready (12:00 on
   the 5th plus ``KOOGALLERY_BILL_READY_MARGIN_MINUTES``); before that the run is ``not_ready``
   and calls nothing. A timer's ``user_event`` of ``{"cycle": "2026-10"}`` fetches that cycle
   now (a backfill).
2. The bill is fetched (see :mod:`koogallery.bills`) and stored in the ledger with its status,
   time, request ids and content hash: the same content again is ``unchanged``; other content is
   a new version, reported as ``amended``; nothing is overwritten.
3. The bill is reconciled against the usage the ledger holds as delivered for the cycle.

A ``failed`` run raises after it was recorded, so that the platform's retry policy applies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from koogallery.bills import BillClient, BillDocument, BillStatus, choose_cycle, cycle_bounds
from koogallery.bills import parse_cycle as _parse_cycle
from koogallery.config import Settings
from koogallery.errors import TransientError
from koogallery.functiongraph import deadline_from_context, request_id_of, settings_from_context
from koogallery.logs import configure_json_logging, request_context
from koogallery.reconcile import InstanceUsage, Reconciliation, reconcile
from koogallery.usage_push import ledger_for

if TYPE_CHECKING:
    from koogallery.ledger import Ledger

__all__ = ["BillFetchFailed", "fetch_and_reconcile", "handle_bill_fetch", "usage_for_cycle"]

logger = logging.getLogger("koogallery.bill_fetch")


class BillFetchFailed(TransientError):
    """Raised after a failed fetch was recorded, so that the platform runs the timer again."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(
            f"fetching the bill of {result['cycle']} failed ({result.get('error_code')}: "
            f"{result.get('error_msg')}); it was recorded and will be tried again"
        )
        self.result = result


def handle_bill_fetch(
    event: Any, context: Any, *, clock: Callable[[], datetime] | None = None
) -> dict[str, Any]:
    """Run one timer invocation (see the module doc); returns the JSON summary."""
    request_id = request_id_of(context)
    with request_context(request_id):
        settings = settings_from_context(context)
        configure_json_logging(level=settings.log_level, secrets=settings.secret_values())
        now = (clock or _utc_now)()

        requested = requested_cycle(event)
        if requested is None:
            margin = timedelta(minutes=settings.bill_ready_margin_minutes)
            choice = choose_cycle(now, margin=margin)
            if not choice.ready:
                result = {
                    "request_id": request_id,
                    "status": "not_ready",
                    "cycle": choice.cycle,
                    "ready_at": choice.ready_at.isoformat(),
                }
                logger.info("bill not ready yet", extra={"event": "bill_not_ready", **result})
                return result
            requested = choice.cycle

        ledger = ledger_for(settings)
        deadline = deadline_from_context(context, settings.deadline_margin_seconds)
        result = fetch_and_reconcile(
            settings, requested, ledger=ledger, now=now, deadline=deadline
        )
        result = {"request_id": request_id, **result}
        logger.info(
            "bill fetch finished",
            extra={
                "event": "bill_fetch_summary",
                "status": result["status"],
                "cycle": result["cycle"],
                "findings": _finding_count(result),
            },
        )
        if result["status"] == BillStatus.FAILED.value:
            raise BillFetchFailed(result)
        return result


def requested_cycle(event: Any) -> str | None:
    """The cycle a timer's ``user_event`` asks for, if it asks for one.

    ``user_event`` is the timer's free text; only JSON with a ``cycle`` key means a backfill.
    A ``cycle`` that is not ``YYYY-MM`` is a configuration error, not something to guess.
    """
    if not isinstance(event, dict):
        return None
    text = event.get("user_event")
    if isinstance(event.get("cycle"), str):
        text = json.dumps({"cycle": event["cycle"]})
    if not isinstance(text, str):
        return None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or "cycle" not in payload:
        return None
    cycle = str(payload["cycle"])
    _parse_cycle(cycle)
    return cycle


def fetch_and_reconcile(
    settings: Settings,
    cycle: str,
    *,
    ledger: Ledger | None,
    now: datetime,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Fetch ``cycle``, store the run (with a ledger), and reconcile; the summary as a dict."""
    with BillClient(settings) as client:
        fetched = client.fetch(cycle, deadline=deadline)

    status = fetched.status.value
    version: int | None = None
    previous: BillDocument | None = None
    document = fetched.document
    if ledger is not None:
        if document is not None:
            latest = ledger.latest_bill(site=settings.site, cycle=cycle)
            if latest is not None and latest.content is not None:
                previous = BillDocument.from_canonical(latest.content)
        run = ledger.store_bill_run(
            site=settings.site,
            cycle=cycle,
            status=status,
            now=now,
            request_ids=fetched.request_ids,
            content=None if document is None else document.canonical(),
            content_hash=None if document is None else document.content_hash,
            error_code=fetched.error_code,
            error_msg=fetched.error_msg,
        )
        status, version = run.status, run.version

    result: dict[str, Any] = {
        "status": status,
        "cycle": cycle,
        "site": settings.site,
        "version": version,
        "request_ids": fetched.request_ids,
    }
    if fetched.error_code or fetched.error_msg:
        result["error_code"] = fetched.error_code
        result["error_msg"] = fetched.error_msg
    if document is None:
        return result

    result["currency"] = document.currency
    result["content_hash"] = document.content_hash
    result["consistent"] = document.consistent
    result["problems"] = document.problems
    result["totals"] = {name: str(value) for name, value in document.totals().items()}
    if status == "amended" and previous is not None:
        result["changes"] = _changes(previous, document)
    if ledger is not None:
        report = reconcile_cycle(settings, ledger, document)
        result["reconciliation"] = report.to_dict()
        result["findings_above_tolerance"] = report.has_findings_above_tolerance
    else:
        result["reconciliation"] = None
        result["note"] = "no KOOGALLERY_LEDGER_URL: nothing to reconcile against"
    return result


def reconcile_cycle(settings: Settings, ledger: Ledger, document: BillDocument) -> Reconciliation:
    """Reconcile ``document`` with what ``ledger`` holds as delivered for its cycle."""
    usage = usage_for_cycle(ledger, document.cycle)
    return reconcile(
        usage,
        document,
        prices=settings.unit_prices,
        tolerance=settings.reconcile_tolerance,
    )


@dataclass
class _Tally:
    """Delivered usage of one instance in one cycle, and the part of it billed later."""

    quantity: Decimal = Decimal(0)
    records: int = 0
    late_quantity: Decimal = Decimal(0)
    late_records: int = 0


def usage_for_cycle(ledger: Ledger, cycle: str) -> list[InstanceUsage]:
    """Delivered usage per instance whose ``begin_time`` falls in the Beijing month ``cycle``.

    Usage delivered after its collection cut-off is billed when it is collected; when that is
    already in a later month, it is missing from this cycle's bill, so it is counted as late:
    that explains a shortfall instead of alarming about it.
    """
    from koogallery.ledger import RecordStatus, collection_moment

    begin_from, begin_to = cycle_bounds(cycle)
    tallies: dict[str, _Tally] = {}
    for status in (RecordStatus.ACCEPTED, RecordStatus.DUPLICATE):
        for row in ledger.records(status=status, begin_from=begin_from, begin_to=begin_to):
            tally = tallies.setdefault(row.instance_id, _Tally())
            tally.quantity += row.usage_value
            tally.records += 1
            settled = row.settled_at
            cutoff = collection_moment(row.end_time, ledger.billing_mode)
            if settled is not None and settled > cutoff and settled >= begin_to:
                tally.late_quantity += row.usage_value
                tally.late_records += 1
    return [
        InstanceUsage(name, t.quantity, t.records, t.late_quantity, t.late_records)
        for name, t in sorted(tallies.items())
    ]


def _changes(previous: BillDocument, current: BillDocument) -> dict[str, dict[str, str | None]]:
    """Which totals an amendment moved, from what to what."""
    before, after = previous.totals(), current.totals()
    changes: dict[str, dict[str, str | None]] = {}
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name):
            old, new = before.get(name), after.get(name)
            changes[name] = {
                "before": None if old is None else str(old),
                "after": None if new is None else str(new),
            }
    return changes


def _finding_count(result: dict[str, Any]) -> int:
    report = result.get("reconciliation")
    return len(report["findings"]) if isinstance(report, dict) else 0


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)
