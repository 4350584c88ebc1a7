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

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from koogallery.client import KooGalleryClient, RecordOutcome, Status
from koogallery.errors import RecordValidationError
from koogallery.events import Message, Origin, RawRecord, decode_usage_message
from koogallery.models import UsageRecord, format_usage_value

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


@dataclass(frozen=True)
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

    def merge(self, other: Summary) -> None:
        """Add another batch's counts (the CLI pushes a file in many batches)."""
        self.received += other.received
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.pending += other.pending
        self.dead_letters.extend(other.dead_letters)
        self.pending_reason = other.pending_reason or self.pending_reason

    @property
    def complete(self) -> bool:
        """True when every record was delivered (accepted or already held)."""
        return self.dead_lettered == 0 and self.pending == 0

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
        return result


class UsagePipeline:
    """Runs messages or raw records through validation and the client.

    ``now`` pins the clock of the time rules (tests); by default each batch reads the clock.
    """

    def __init__(self, client: KooGalleryClient, *, now: datetime | None = None) -> None:
        self.client = client
        self._now = now

    def push_messages(
        self, messages: Iterable[Message], *, deadline: float | None = None
    ) -> Summary:
        """Decode every message and push every record in it."""
        raw_records = [raw for message in messages for raw in decode_usage_message(message)]
        return self.push_raw(raw_records, deadline=deadline)

    def push_raw(
        self, raw_records: Sequence[RawRecord], *, deadline: float | None = None
    ) -> Summary:
        """Validate, de-duplicate within the batch, push, and summarise ``raw_records``."""
        summary = Summary(received=len(raw_records))
        letters: list[tuple[int, DeadLetter]] = []

        valid = self._validate(raw_records, letters)
        unique, repeats = _unique(valid, letters)
        result = self.client.push_usage([item.record for _, item in unique], deadline=deadline)

        for item, outcome in zip(unique, result.outcomes, strict=True):
            self._count(summary, item, outcome, letters)
        summary.duplicates += repeats

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
        return summary

    def _validate(
        self, raw_records: Sequence[RawRecord], letters: list[tuple[int, DeadLetter]]
    ) -> list[tuple[int, ValidRecord]]:
        now = self._now or datetime.now(timezone.utc)
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

    def _count(
        self,
        summary: Summary,
        item: tuple[int, ValidRecord],
        outcome: RecordOutcome,
        letters: list[tuple[int, DeadLetter]],
    ) -> None:
        order, valid = item
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


def _unique(
    valid: list[tuple[int, ValidRecord]], letters: list[tuple[int, DeadLetter]]
) -> tuple[list[tuple[int, ValidRecord]], int]:
    """Keep the first of records repeated within a batch; a repeat that differs is a conflict.

    KooGallery would keep whichever copy arrived first and flag the other, so sending both can
    only produce noise, and a differing copy would be silently lost there: say so here instead.
    """
    seen: dict[str, UsageRecord] = {}
    unique = []
    repeats = 0
    for order, item in valid:
        first = seen.get(item.record.sn)
        if first is None:
            seen[item.record.sn] = item.record
            unique.append((order, item))
        elif first == item.record:
            repeats += 1
        else:
            reason = (
                f"metering_sn: conflict, {item.record.sn} appears earlier in this batch with "
                f"usage_value {format_usage_value(first.usage_value)} and this copy has "
                f"{format_usage_value(item.record.usage_value)}; KooGallery keeps only the first"
            )
            letters.append(
                (
                    order,
                    DeadLetter(
                        item.origin,
                        reason,
                        item.data,
                        item.raw,
                        item.position,
                        field="metering_sn",
                    ),
                )
            )
    return unique, repeats


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
