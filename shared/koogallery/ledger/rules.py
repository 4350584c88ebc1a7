"""What a claim and a settle decide, as pure functions of what is stored and what came in.

Both backends lock the rows, read them, call these functions and write the result, so the
product's guarantees live in one place and are the same on SQLite and PostgreSQL.

KooGallery keeps the first record per ``metering_sn`` and the first per usage window
(``instance_id``, ``begin_time``, ``end_time``), and drops the others without a word. The ledger
therefore lets one record hold a window: another ``metering_sn`` for it is a conflict.

The stored copy of a record is its canonical JSON (sorted keys, compact times, the usage value
as a decimal string): rebuilding a record from it gives back the very record first stored, so
every push of it sends the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from koogallery.client import RecordOutcome, Status
from koogallery.errors import RecordValidationError
from koogallery.ledger.base import Claim, RecordStatus
from koogallery.ledger.cutoffs import BillingMode, is_late
from koogallery.models import (
    MAX_BEGIN_AGE,
    UsageRecord,
    format_time,
    format_usage_value,
    json_text,
    parse_time,
)

__all__ = [
    "EXPIRED_REASON",
    "ClaimPlan",
    "NewRow",
    "SettlePlan",
    "StoredRow",
    "Window",
    "failure_text",
    "first_copies",
    "is_expired",
    "new_rows",
    "plan_claim",
    "plan_settle",
    "rebuild_record",
    "same_content",
    "stored_json",
    "window_firsts",
    "window_of",
]

EXPIRED_REASON = "expired: begin_time older than 21 days (MKT.9004)"
"""Why a record that waited too long is dead-lettered instead of pushed."""

Window = tuple[str, datetime, datetime]
"""A usage window: ``instance_id``, ``begin_time``, ``end_time``."""

_DELIVERED = (Status.ACCEPTED, Status.DUPLICATE)
_RANK = {Status.PENDING: 0, Status.DEAD_LETTERED: 1, Status.ACCEPTED: 2, Status.DUPLICATE: 2}
_STORED_AS = {status: RecordStatus(status.value) for status in _DELIVERED}

_CACHE_SIZE = 4096
"""Distinct ``begin_time`` texts remembered when rebuilding records; when full, the cache
starts again, which bounds its memory whatever the input."""

_judged_at_by_text: dict[str, datetime] = {}


@dataclass(frozen=True)
class NewRow:
    """A record the ledger has not seen yet, as it will be inserted."""

    record: UsageRecord
    status: RecordStatus
    last_error: str | None
    settled_at: datetime | None
    lease_owner: str | None
    lease_expires: datetime | None

    @cached_property
    def stored(self) -> str:
        """The stored copy, made only for rows that are really inserted."""
        return stored_json(self.record)


@dataclass(frozen=True)
class StoredRow:
    """The columns of a stored record that a claim decides on."""

    metering_sn: str
    stored: Mapping[str, Any]
    status: RecordStatus
    lease_owner: str | None
    lease_expires: datetime | None


@dataclass
class ClaimPlan:
    """A claim's answer and the writes that make it true.

    ``expire`` lists stored rows to dead-letter for age. ``conflict_copies`` pairs each
    conflicting copy with the ``metering_sn`` of the record it disagrees with: its own for
    another copy of a stored record, the holder's for a usage window held by another record.
    """

    claim: Claim
    leases: list[str] = field(default_factory=list)
    expire: list[str] = field(default_factory=list)
    mark_conflict: list[str] = field(default_factory=list)
    conflict_copies: list[tuple[str, str]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)


@dataclass
class SettlePlan:
    """One write per record: delivered, dead-lettered, or released for another try."""

    delivered: list[tuple[str, RecordStatus]] = field(default_factory=list)
    dead: list[tuple[str, str | None]] = field(default_factory=list)
    released: list[tuple[str, str | None]] = field(default_factory=list)


def stored_json(record: UsageRecord) -> str:
    """The stored copy of ``record``: the canonical JSON of ``record.to_json_dict()``.

    The text is written field by field, keys in sorted order, each string escaped by the JSON
    module's own encoder: the same characters the encoder gives for the whole dict, at a
    fraction of its cost, which a claim pays for every new record.
    """
    return (
        f'{{"begin_time":{json_text(format_time(record.begin_time))},'
        f'"end_time":{json_text(format_time(record.end_time))},'
        f'"instance_id":{json_text(record.instance_id)},'
        f'"metering_sn":{json_text(record.sn)},'
        f'"product_id":{_json_or_null(record.product_id)},'
        f'"record_time":{json_text(format_time(record.record_time or record.end_time))},'
        f'"relate_pkg_instance":{_json_or_null(record.relate_pkg_instance)},'
        f'"usage_value":{json_text(format_usage_value(record.usage_value))}}}'
    )


def _json_or_null(value: str | None) -> str:
    return "null" if value is None else json_text(value)


def rebuild_record(stored: Mapping[str, Any]) -> UsageRecord:
    """The record a stored copy was made from, whatever the date today.

    Validation judges the 21-day and future rules against a clock. Judged at ``begin_time``
    plus 21 days, every record that passed once passes again: its ``begin_time`` is then
    exactly 21 days old, and its ``end_time`` could not lie more than 21 days (and the clock
    skew) after its ``begin_time`` when it was first accepted.

    A stored copy is plain, so :meth:`UsageRecord.parse` takes its fast path, which builds the
    record ``model_validate`` would; should a copy ever fail, ``model_validate`` raises its own
    error, as it always has.
    """
    moment = _judged_at(stored["begin_time"])
    data = dict(stored)
    try:
        return UsageRecord.parse(data, now=moment)
    except RecordValidationError:
        return UsageRecord.model_validate(data, context={"now": moment})


def _judged_at(begin_time: object) -> datetime:
    """``begin_time`` plus 21 days, remembered by its text: the records of a batch share a few
    window starts, and one moment object for all of them also lets ``UsageRecord.parse`` reuse
    the limits it worked out for the previous record."""
    if type(begin_time) is not str:
        return parse_time(begin_time) + MAX_BEGIN_AGE
    moment = _judged_at_by_text.get(begin_time)
    if moment is None:
        moment = parse_time(begin_time) + MAX_BEGIN_AGE
        if len(_judged_at_by_text) >= _CACHE_SIZE:
            _judged_at_by_text.clear()
        _judged_at_by_text[begin_time] = moment
    return moment


def same_content(incoming: UsageRecord, stored: UsageRecord) -> bool:
    """True when two copies with one ``metering_sn`` bill the same thing.

    ``record_time`` and ``product_id`` do not bill anything: a copy differing only there is
    the same record, and the stored copy is what gets pushed.
    """
    return (
        incoming.instance_id == stored.instance_id
        and incoming.begin_time == stored.begin_time
        and incoming.end_time == stored.end_time
        and incoming.usage_value == stored.usage_value
        and incoming.relate_pkg_instance == stored.relate_pkg_instance
    )


def window_of(record: UsageRecord) -> Window:
    """The usage window ``record`` reports on, the other key KooGallery keeps one record for."""
    return (record.instance_id, record.begin_time, record.end_time)


def is_expired(begin_time: datetime, now: datetime) -> bool:
    """KooGallery refuses a ``begin_time`` older than 21 days (``MKT.9004``)."""
    return begin_time < now - MAX_BEGIN_AGE


def first_copies(records: Sequence[UsageRecord]) -> dict[str, UsageRecord]:
    """The first copy of each ``metering_sn``, in the order the records came."""
    firsts: dict[str, UsageRecord] = {}
    for record in records:
        firsts.setdefault(record.sn, record)
    return firsts


def window_firsts(firsts: Mapping[str, UsageRecord]) -> dict[str, UsageRecord]:
    """Of the first copies, those that come first for their usage window: only these may be
    inserted, as a later record of the batch for the same window is a conflict with them."""
    seen: set[Window] = set()
    chosen: dict[str, UsageRecord] = {}
    for sn, record in firsts.items():
        window = window_of(record)
        if window not in seen:
            seen.add(window)
            chosen[sn] = record
    return chosen


def new_rows(
    firsts: Mapping[str, UsageRecord], *, owner: str, now: datetime, lease_until: datetime
) -> list[NewRow]:
    """How each record would be inserted if unseen: leased to ``owner``, or dead if expired.

    Sorted by usage window, then ``metering_sn``: every transaction inserts in that one order,
    so two of them inserting records of the same windows wait for each other but never
    deadlock. A ``metering_sn`` derived from its record names one window, so the one order
    holds for both keys.
    """
    rows = []
    oldest_begin = now - MAX_BEGIN_AGE
    for record in sorted(firsts.values(), key=_insert_order):
        if record.begin_time < oldest_begin:
            row = NewRow(record, RecordStatus.DEAD_LETTERED, EXPIRED_REASON, now, None, None)
        else:
            row = NewRow(record, RecordStatus.PENDING, None, None, owner, lease_until)
        rows.append(row)
    return rows


def _insert_order(record: UsageRecord) -> tuple[str, datetime, datetime, str]:
    """The usage window, then ``metering_sn``: see :func:`new_rows`."""
    return (record.instance_id, record.begin_time, record.end_time, record.sn)


def plan_claim(
    records: Sequence[UsageRecord],
    *,
    inserted: Mapping[str, NewRow],
    stored: Mapping[str, StoredRow],
    holders: Mapping[Window, StoredRow],
    owner: str,
    now: datetime,
    billing_mode: BillingMode,
) -> ClaimPlan:
    """Decide the fate of each record of a claim, given the rows this claim just inserted, the
    rows that were there before (locked by the caller), and the rows holding the usage windows
    of the records that got neither.

    A copy whose content differs from the stored one is a conflict: it is recorded and never
    pushed, and a stored record still pending is set to ``conflict`` so that nobody pushes
    either version until a person decides which one KooGallery should get. A record already
    accepted stays accepted: KooGallery holds it and nothing can change that.

    A record for a usage window another ``metering_sn`` holds (stored before, or earlier in
    this batch) is a conflict too, as KooGallery would drop it. The holder is left as it is,
    pending included: it came first, and the newcomer is the one that cannot be billed.
    """
    firsts = first_copies(records)
    reference = {sn: row.record for sn, row in inserted.items()}
    reference.update({sn: _stored_copy(row, firsts[sn]) for sn, row in stored.items()})
    status = {sn: row.status for sn, row in inserted.items()}
    status.update({sn: row.status for sn, row in stored.items()})
    outsiders = _lost_windows(firsts, reference, holders)

    clashes = [
        record
        for record in records
        if record.sn not in outsiders and not same_content(record, reference[record.sn])
    ]
    plan = ClaimPlan(claim=Claim([], [], [], [], [], []), seen=list(stored))
    for record in clashes:
        plan.conflict_copies.append((record.sn, stored_json(record)))
        if status[record.sn] is RecordStatus.PENDING:
            status[record.sn] = RecordStatus.CONFLICT
            plan.mark_conflict.append(record.sn)

    clashing = {id(record) for record in clashes}
    listed: set[str] = set()
    for record in records:
        sn = record.sn
        if sn in outsiders:
            _place_outsider(plan, record, outsiders[sn], firsts[sn], listed)
        elif id(record) in clashing:
            plan.claim.conflicts.append((record, reference[sn]))
        elif sn not in listed:
            listed.add(sn)
            _place(plan, reference[sn], status[sn], stored.get(sn), owner=owner, now=now)

    plan.claim.late.extend(
        record for record in plan.claim.to_push if is_late(record.end_time, now, billing_mode)
    )
    return plan


def _lost_windows(
    firsts: Mapping[str, UsageRecord],
    reference: Mapping[str, UsageRecord],
    holders: Mapping[Window, StoredRow],
) -> dict[str, UsageRecord]:
    """For each record whose ``metering_sn`` has no row, the record holding its usage window.

    That is the stored row of the window when there is one, else the batch's first record for
    the window (itself refused, as another copy of its ``metering_sn`` was stored before).
    """
    earliest: dict[Window, UsageRecord] = {}
    for record in firsts.values():
        earliest.setdefault(window_of(record), record)

    outsiders: dict[str, UsageRecord] = {}
    for sn, record in firsts.items():
        if sn in reference:
            continue
        window = window_of(record)
        row = holders.get(window)
        if row is not None:
            known = reference.get(row.metering_sn)
            outsiders[sn] = known if known is not None else rebuild_record(row.stored)
        elif earliest[window] is not record:
            outsiders[sn] = earliest[window]
        else:
            raise RuntimeError(
                f"the ledger found neither a row for {sn} nor one holding its usage window; "
                "the claim was rolled back"
            )
    return outsiders


def _place_outsider(
    plan: ClaimPlan,
    record: UsageRecord,
    holder: UsageRecord,
    first: UsageRecord,
    listed: set[str],
) -> None:
    """A record that lost its usage window: its first copy conflicts with the holder, and a
    copy of it with other content conflicts with that first copy; a repeat is listed once."""
    if record.sn not in listed:
        listed.add(record.sn)
        plan.claim.conflicts.append((record, holder))
        plan.conflict_copies.append((holder.sn, stored_json(record)))
    elif not same_content(record, first):
        plan.claim.conflicts.append((record, first))
        plan.conflict_copies.append((record.sn, stored_json(record)))


def _stored_copy(row: StoredRow, incoming: UsageRecord) -> UsageRecord:
    """The stored record; the incoming copy itself when it is identical in every field, which
    spares rebuilding (and validating) each record of a batch delivered again."""
    if incoming.to_json_dict() == dict(row.stored):
        return incoming
    return rebuild_record(row.stored)


def _place(
    plan: ClaimPlan,
    record: UsageRecord,
    status: RecordStatus,
    row: StoredRow | None,
    *,
    owner: str,
    now: datetime,
) -> None:
    """Put one record (its stored copy) in the list its status and lease call for."""
    claim = plan.claim
    if status in (RecordStatus.ACCEPTED, RecordStatus.DUPLICATE):
        claim.already_delivered.append(record)
    elif status is RecordStatus.DEAD_LETTERED:
        if row is None:
            claim.expired.append(record)
        claim.dead.append(record)
    elif status is RecordStatus.CONFLICT:
        claim.held.append(record)
    elif row is None:
        claim.to_push.append(record)
    elif _leased_by_another(row, owner=owner, now=now):
        claim.in_flight.append(record)
    elif is_expired(record.begin_time, now):
        plan.expire.append(record.sn)
        claim.expired.append(record)
        claim.dead.append(record)
    else:
        plan.leases.append(record.sn)
        claim.to_push.append(record)


def _leased_by_another(row: StoredRow, *, owner: str, now: datetime) -> bool:
    return (
        row.lease_owner is not None
        and row.lease_owner != owner
        and row.lease_expires is not None
        and row.lease_expires > now
    )


def plan_settle(outcomes: Sequence[RecordOutcome]) -> SettlePlan:
    """One write per record, the strongest outcome winning: delivered over dead over pending.

    Whether a write applies is the database's decision, made under the row lock: delivered
    always does (unless already delivered), the others only for the current lease owner.
    """
    strongest: dict[str, RecordOutcome] = {}
    for outcome in outcomes:
        sn = outcome.record.sn
        known = strongest.get(sn)
        if known is None or _RANK[outcome.status] > _RANK[known.status]:
            strongest[sn] = outcome

    plan = SettlePlan()
    for sn in sorted(strongest):
        outcome = strongest[sn]
        if outcome.status in _DELIVERED:
            plan.delivered.append((sn, _STORED_AS[outcome.status]))
        elif outcome.status is Status.DEAD_LETTERED:
            plan.dead.append((sn, failure_text(outcome)))
        else:
            plan.released.append((sn, failure_text(outcome)))
    return plan


def failure_text(outcome: RecordOutcome) -> str | None:
    """The reason and the platform's code in one line, without repeating the code."""
    reason, code = outcome.reason, outcome.error_code
    if code is None:
        return reason
    if reason is None:
        return code
    return reason if code in reason else f"{reason} ({code})"
