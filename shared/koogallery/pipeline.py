"""The push pipeline: messages -> records -> KooGallery -> one ``Summary``.

This is the one place where the steps meet; each step lives in its own module:

    decode (events) -> validate (models) -> de-duplicate -> push (client) -> summarise

    pipeline = UsagePipeline(client)
    summary = pipeline.push_messages(batch.messages, deadline=deadline)
    summary.to_dict()     # what the handler returns and the CLI prints

Nothing is lost on the way: a message that cannot become a record is a dead letter carrying
its origin, its content and the reason; a record the platform refuses is a dead letter with
the platform's code; a record that could not be delivered yet is counted as pending.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from koogallery.client import (
    Attempt,
    KooGalleryClient,
    PushObserver,
    PushResult,
    RecordOutcome,
    Status,
)
from koogallery.errors import RecordValidationError
from koogallery.events import Message, Origin, RawRecord, decode_usage_message
from koogallery.models import MAX_BEGIN_AGE, UsageRecord, format_time, format_usage_value

if TYPE_CHECKING:
    from koogallery.ledger import Claim, Ledger

__all__ = ["DeadLetter", "Summary", "UsagePipeline", "ValidRecord"]

logger = logging.getLogger(__name__)

_RAW_LIMIT = 2000
"""Longest raw message text echoed into a summary; the ledger keeps the whole message."""


@dataclass(frozen=True)
class DeadLetter:
    """A record that can never succeed as it is, with everything needed to fix and replay it."""

    origin: Origin
    reason: str
    record: dict[str, Any] | None
    raw: str
    position: int | None = None
    error_code: str | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the record (never a credential: records hold none) and the reason."""
        entry: dict[str, Any] = {
            "origin": _origin_dict(self.origin),
            "position": self.position,
            "reason": self.reason,
            "field": self.field,
            "error_code": self.error_code,
            "record": _jsonable(self.record),
        }
        if self.record is None:
            entry["raw"] = self.raw[:_RAW_LIMIT]
        return entry


@dataclass(frozen=True, slots=True)
class ValidRecord:
    """A validated record and where it came from."""

    record: UsageRecord
    origin: Origin
    position: int | None
    data: dict[str, Any]
    raw: str


@dataclass
class Summary:
    """Counts of records by fate, and every dead letter in the order the messages came.

    ``received == accepted + duplicates + dead_lettered + pending`` always holds.
    """

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    pending: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    pending_reason: str | None = None
    late: int = 0
    outbox: OutboxSummary | None = None

    def merge(self, other: Summary) -> None:
        """Add another batch's counts (the CLI pushes a file in many batches)."""
        self.received += other.received
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.pending += other.pending
        self.late += other.late
        self.dead_letters.extend(other.dead_letters)
        self.pending_reason = other.pending_reason or self.pending_reason
        if other.outbox is not None:
            if self.outbox is None:
                self.outbox = OutboxSummary()
            self.outbox.merge(other.outbox)

    @property
    def complete(self) -> bool:
        """True when every record was delivered (accepted or already held), the outbox's too."""
        outbox_clean = self.outbox is None or (
            self.outbox.dead_lettered == 0 and self.outbox.pending == 0
        )
        return self.dead_lettered == 0 and self.pending == 0 and outbox_clean

    def to_dict(self, *, dead_letter_limit: int | None = None) -> dict[str, Any]:
        letters = (
            self.dead_letters
            if dead_letter_limit is None
            else self.dead_letters[:dead_letter_limit]
        )
        result: dict[str, Any] = {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "pending": self.pending,
            "dead_letters": [letter.to_dict() for letter in letters],
        }
        if self.pending_reason:
            result["pending_reason"] = self.pending_reason
        if self.late:
            result["late"] = self.late
        if self.outbox is not None:
            result["outbox"] = self.outbox.to_dict()
        return result


@dataclass
class OutboxSummary:
    """What draining the ledger's older pending records achieved in one run."""

    drained: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    pending: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def merge(self, other: OutboxSummary) -> None:
        self.drained += other.drained
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.pending += other.pending
        self.dead_letters.extend(other.dead_letters)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "drained": self.drained,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "pending": self.pending,
        }
        if self.dead_letters:
            result["dead_letters"] = [letter.to_dict() for letter in self.dead_letters]
        return result


class UsagePipeline:
    """Runs messages or raw records through validation, the ledger and the client.

    With a ``ledger``, every record is written ``pending`` before it is pushed and settled as
    the answers come, a record delivered before is never pushed again, and older pending
    records (the outbox) are drained first. Without one, the pipeline is stateless and relies
    on KooGallery's own first-write-wins rule. ``now`` pins the clock of the time rules (tests).
    """

    def __init__(
        self,
        client: KooGalleryClient,
        *,
        ledger: Ledger | None = None,
        owner: str | None = None,
        now: datetime | None = None,
        lease_seconds: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.owner = owner or (ledger.owner if ledger is not None else "stateless")
        self._now = now
        self._lease_seconds = lease_seconds
        self._monotonic = monotonic

    def push_messages(
        self, messages: Iterable[Message], *, deadline: float | None = None
    ) -> Summary:
        """Decode every message and push every record in it."""
        raw_records = [raw for message in messages for raw in decode_usage_message(message)]
        return self.push_raw(raw_records, deadline=deadline, drain_outbox=True)

    def push_raw(
        self,
        raw_records: Sequence[RawRecord],
        *,
        deadline: float | None = None,
        drain_outbox: bool = False,
        record_dead_letters: bool = True,
    ) -> Summary:
        """Validate, de-duplicate, record, push and summarise ``raw_records``.

        With ``drain_outbox``, older pending records from the ledger are pushed first, within
        half of the time left, after this batch is safely recorded as pending. A replay of a
        stored dead letter passes ``record_dead_letters=False``: the letter is already on record.
        """
        now = self._clock()
        summary = Summary(received=len(raw_records))
        letters: list[tuple[int, DeadLetter]] = []

        valid = self._validate(raw_records, letters, now)
        unique, repeats = _unique(valid, letters)
        summary.duplicates += repeats
        to_push = self._claim(unique, summary, letters, now)

        records = [record for _, _, record in to_push]
        try:
            if drain_outbox and self.ledger is not None:
                summary.outbox = self.drain_outbox(deadline=_halfway(deadline, self._monotonic))
            result = self._push_releasing_on_error(records, self.owner, deadline)
        except BaseException as error:
            self._release(records, self.owner, error)
            self._finish(summary, letters, now, record=record_dead_letters)
            raise
        for (order, item, _), outcome in zip(to_push, result.outcomes, strict=True):
            self._count(summary, order, item, outcome, letters)

        self._finish(summary, letters, now, record=record_dead_letters)
        return summary

    def drain_outbox(self, *, deadline: float | None = None, limit: int = 1000) -> OutboxSummary:
        """Push the ledger's oldest pending records until none are left or time runs out.

        The drain leases under its own owner name, so the records this run has just claimed
        for its own batch (leased to ``self.owner``) are left to the batch push.
        """
        drained = OutboxSummary()
        if self.ledger is None:
            return drained
        owner = f"{self.owner}/outbox"
        while deadline is None or self._monotonic() < deadline:
            now = self._clock()
            taken = self.ledger.claim_outbox(
                limit=limit, now=now, owner=owner, lease_seconds=self._lease_seconds
            )
            if taken.expired:
                expired = [_expired_letter(record) for record in taken.expired]
                drained.drained += len(expired)
                drained.dead_lettered += len(expired)
                drained.dead_letters.extend(expired)
                self.ledger.add_dead_letters(expired, now=now)
            records = taken.to_push
            if not records:
                if taken.expired:
                    continue
                break
            result = self._push_releasing_on_error(records, owner, deadline)
            drained.drained += len(records)
            drained.accepted += len(result.accepted)
            drained.duplicates += len(result.duplicates)
            drained.dead_lettered += len(result.dead_lettered)
            drained.pending += len(result.pending)
            drained.dead_letters.extend(
                _outbox_letter(outcome) for outcome in result.dead_lettered
            )
            if result.dead_lettered:
                self.ledger.add_dead_letters(
                    drained.dead_letters[-len(result.dead_lettered) :], now=now
                )
            if result.pending:
                break
        if drained.drained:
            counts = {
                key: value for key, value in drained.to_dict().items() if key != "dead_letters"
            }
            logger.info("outbox drained", extra={"event": "outbox_drained", **counts})
        return drained

    def _clock(self) -> datetime:
        return self._now or datetime.now(timezone.utc)

    def _push_releasing_on_error(
        self, records: list[UsageRecord], owner: str, deadline: float | None
    ) -> PushResult:
        """Push under ``owner``; if the push stops on an error, give back the records it held.

        A configuration error (a wrong key, say) ends the run at once; without this, the
        records it had claimed would stay leased to a run that no longer exists until the lease
        expires, and a corrected run started right after could not push them.
        """
        if self.ledger is None:
            return self.client.push_usage(records, deadline=deadline)

        observer = _SettledSet(self.ledger.observer(owner))
        try:
            return self.client.push_usage(records, deadline=deadline, observer=observer)
        except BaseException as error:
            unsettled = [record for record in records if record.sn not in observer.settled]
            self._release(unsettled, owner, error)
            raise

    def _release(self, records: list[UsageRecord], owner: str, error: BaseException) -> None:
        """Give ``records`` back as ``pending`` (only those ``owner`` still holds are changed)."""
        if self.ledger is None or not records:
            return
        reason = f"run stopped: {type(error).__name__}: {error}"
        outcomes = [RecordOutcome(record, Status.PENDING, reason=reason) for record in records]
        self.ledger.settle(outcomes, owner=owner, now=self._clock())

    def _validate(
        self,
        raw_records: Sequence[RawRecord],
        letters: list[tuple[int, DeadLetter]],
        now: datetime,
    ) -> list[tuple[int, ValidRecord]]:
        valid = []
        for order, raw in enumerate(raw_records):
            if raw.data is None:
                reason = raw.error or "not a usage record"
                letters.append((order, _letter(raw, reason)))
                continue
            try:
                record = UsageRecord.parse(raw.data, now=now)
            except RecordValidationError as error:
                letters.append((order, _letter(raw, str(error), field=error.field)))
                continue
            valid.append((order, ValidRecord(record, raw.origin, raw.position, raw.data, raw.raw)))
        return valid

    def _claim(
        self,
        unique: list[tuple[int, ValidRecord]],
        summary: Summary,
        letters: list[tuple[int, DeadLetter]],
        now: datetime,
    ) -> list[tuple[int, ValidRecord, UsageRecord]]:
        """Record the batch in the ledger and keep only what must be pushed now."""
        if self.ledger is None:
            return [(order, item, item.record) for order, item in unique]

        claim = self.ledger.claim(
            [item.record for _, item in unique],
            owner=self.owner,
            now=now,
            lease_seconds=self._lease_seconds,
        )
        fates = _fates(claim)
        summary.late = len(claim.late)
        to_push = []
        for order, item in unique:
            fate, stored = fates[item.record.sn]
            if fate == "push":
                to_push.append((order, item, stored))
            elif fate == "delivered":
                summary.duplicates += 1
            elif fate == "in_flight":
                summary.pending += 1
                summary.pending_reason = "another run holds the record's lease and is pushing it"
            else:
                letters.append((order, _ledger_letter(fate, item, stored, now)))
        return to_push

    def _count(
        self,
        summary: Summary,
        order: int,
        valid: ValidRecord,
        outcome: RecordOutcome,
        letters: list[tuple[int, DeadLetter]],
    ) -> None:
        if outcome.status is Status.ACCEPTED:
            summary.accepted += 1
        elif outcome.status is Status.DUPLICATE:
            summary.duplicates += 1
        elif outcome.status is Status.PENDING:
            summary.pending += 1
            summary.pending_reason = outcome.reason
        else:
            letter = DeadLetter(
                origin=valid.origin,
                reason=outcome.reason or "rejected by KooGallery",
                record=valid.data,
                raw=valid.raw,
                position=valid.position,
                error_code=outcome.error_code,
                field=_field_of(outcome),
            )
            letters.append((order, letter))

    def _finish(
        self,
        summary: Summary,
        letters: list[tuple[int, DeadLetter]],
        now: datetime,
        *,
        record: bool,
    ) -> None:
        """Order the dead letters as the messages came, log them, and keep them on record."""
        letters.sort(key=lambda pair: pair[0])
        summary.dead_letters = [letter for _, letter in letters]
        summary.dead_lettered = len(summary.dead_letters)
        for letter in summary.dead_letters:
            logger.warning(
                "usage record dead-lettered",
                extra={
                    "event": "dead_letter",
                    "origin": letter.origin.label(),
                    "position": letter.position,
                    "reason": letter.reason,
                    "error_code": letter.error_code,
                },
            )
        if self.ledger is not None and summary.dead_letters and record:
            self.ledger.add_dead_letters(summary.dead_letters, now=now)


@dataclass
class _SettledSet:
    """A push observer that passes everything on and remembers which records were settled."""

    inner: PushObserver
    settled: set[str] = field(default_factory=set)

    def on_attempt(self, attempt: Attempt) -> None:
        self.inner.on_attempt(attempt)

    def on_outcomes(self, outcomes: Sequence[RecordOutcome]) -> None:
        self.inner.on_outcomes(outcomes)
        self.settled.update(outcome.record.sn for outcome in outcomes)


def _expired_letter(record: UsageRecord) -> DeadLetter:
    """A dead letter for a pending record that grew older than KooGallery accepts."""
    return _outbox_letter(
        RecordOutcome(
            record,
            Status.DEAD_LETTERED,
            reason="begin_time: expired, more than 21 days old (MKT.9004); never pushed",
        )
    )


def _outbox_letter(outcome: RecordOutcome) -> DeadLetter:
    """A dead letter for a record the outbox drained: its message is long gone, so the record
    itself (exactly as the ledger kept it) is what a person replays."""
    record = outcome.record.to_json_dict()
    origin = Origin(trigger="OUTBOX", source=None, index=0, message_id=outcome.record.sn)
    return DeadLetter(
        origin=origin,
        reason=outcome.reason or "rejected by KooGallery",
        record=record,
        raw=json.dumps(record, sort_keys=True),
        error_code=outcome.error_code,
        field=_field_of(outcome),
    )


def _halfway(deadline: float | None, monotonic: Callable[[], float]) -> float | None:
    if deadline is None:
        return None
    now = monotonic()
    return now + max(0.0, deadline - now) / 2


def _fates(claim: Claim) -> dict[str, tuple[str, UsageRecord]]:
    """Each claimed ``metering_sn``'s fate, with the ledger's stored copy of the record."""
    fates: dict[str, tuple[str, UsageRecord]] = {}
    for record in claim.to_push:
        fates[record.sn] = ("push", record)
    for record in claim.already_delivered:
        fates[record.sn] = ("delivered", record)
    for record in claim.in_flight:
        fates[record.sn] = ("in_flight", record)
    for record in claim.dead:
        fates[record.sn] = ("dead", record)
    for record in claim.held:
        fates[record.sn] = ("held", record)
    for incoming, stored in claim.conflicts:
        fates[incoming.sn] = ("conflict", stored)
    return fates


def _ledger_letter(fate: str, item: ValidRecord, stored: UsageRecord, now: datetime) -> DeadLetter:
    """Why the ledger keeps a record from being pushed, for a person to read."""
    sn = item.record.sn
    if fate == "conflict" and stored.sn != sn:
        reason = (
            f"metering_sn: conflict, the window {stored.instance_id} "
            f"{format_time(stored.begin_time)}-{format_time(stored.end_time)} is already held "
            f"by {stored.sn} (usage_value {format_usage_value(stored.usage_value)}); this record "
            f"{sn} is never pushed (KooGallery keeps only the first record of a window)"
        )
        field_name = "metering_sn"
    elif fate == "conflict":
        reason = (
            f"metering_sn: conflict, {sn} was first recorded for {stored.instance_id} "
            f"{format_time(stored.begin_time)}-{format_time(stored.end_time)} with usage_value "
            f"{format_usage_value(stored.usage_value)}; this copy has "
            f"{format_usage_value(item.record.usage_value)} and is never pushed (KooGallery "
            "would keep the first)"
        )
        field_name = "metering_sn"
    elif fate == "held":
        reason = f"metering_sn: {sn} is held in conflict since an earlier batch; not pushed"
        field_name = "metering_sn"
    elif stored.begin_time < now - MAX_BEGIN_AGE:
        reason = "begin_time: expired, more than 21 days old (MKT.9004); never pushed"
        field_name = "begin_time"
    else:
        reason = f"metering_sn: {sn} was dead-lettered before; not pushed again"
        field_name = "metering_sn"
    return DeadLetter(item.origin, reason, item.data, item.raw, item.position, field=field_name)


def _unique(
    valid: list[tuple[int, ValidRecord]], letters: list[tuple[int, DeadLetter]]
) -> tuple[list[tuple[int, ValidRecord]], int]:
    """Keep the first of records repeated within a batch; a repeat that differs is a conflict.

    KooGallery keeps only the first record per ``metering_sn`` and per usage window (instance,
    begin, end) and drops the others, so a second copy can only be noise when it is the same
    usage, and is silently lost usage when it is not: say so here instead.
    """
    by_sn: dict[str, UsageRecord] = {}
    by_window: dict[tuple[str, datetime, datetime], UsageRecord] = {}
    unique = []
    repeats = 0
    for order, item in valid:
        record = item.record
        window = (record.instance_id, record.begin_time, record.end_time)
        first = by_sn.get(record.sn) or by_window.get(window)
        if first is None:
            by_sn[record.sn] = record
            by_window[window] = record
            unique.append((order, item))
        elif first.sn == record.sn and _same_usage(first, record):
            repeats += 1
        else:
            letters.append((order, _conflict_letter(item, first)))
    return unique, repeats


def _same_usage(first: UsageRecord, other: UsageRecord) -> bool:
    """The same usage, whatever ``record_time`` or ``product_id`` the copies carry."""
    return (
        first.instance_id == other.instance_id
        and first.begin_time == other.begin_time
        and first.end_time == other.end_time
        and first.usage_value == other.usage_value
        and first.relate_pkg_instance == other.relate_pkg_instance
    )


def _conflict_letter(item: ValidRecord, first: UsageRecord) -> DeadLetter:
    record = item.record
    if first.sn == record.sn:
        reason = (
            f"metering_sn: conflict, {record.sn} appears earlier in this batch with "
            f"usage_value {format_usage_value(first.usage_value)} and this copy has "
            f"{format_usage_value(record.usage_value)}; KooGallery keeps only the first"
        )
    else:
        reason = (
            f"metering_sn: conflict, the window {record.instance_id} "
            f"{format_time(record.begin_time)}-{format_time(record.end_time)} appears earlier "
            f"in this batch as {first.sn}; KooGallery keeps only the first record of a window"
        )
    return DeadLetter(item.origin, reason, item.data, item.raw, item.position, field="metering_sn")


def _letter(raw: RawRecord, reason: str, *, field: str | None = None) -> DeadLetter:
    return DeadLetter(raw.origin, reason, raw.data, raw.raw, raw.position, field=field)


def _field_of(outcome: RecordOutcome) -> str | None:
    """The field a platform code is about, where the code says so."""
    return {"MKT.9001": "instance_id", "MKT.9004": "begin_time", "MKT.9002": "usage_value"}.get(
        outcome.error_code or ""
    )


def _origin_dict(origin: Origin) -> dict[str, Any]:
    return {
        "trigger": origin.trigger,
        "source": origin.source,
        "index": origin.index,
        "record_index": origin.record_index,
        "message_index": origin.message_index,
        "message_id": origin.message_id,
    }


def _jsonable(value: object) -> Any:
    """Decimals and other scalars from the message, as JSON can carry them."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
