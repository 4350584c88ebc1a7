"""The usage ledger's interface and the values it hands back.

The ledger is the durable memory of the usage push: every usage record it was given, every
attempt to push one and every dead letter. KooGallery keeps the first write of a record and
never corrects it, while FunctionGraph may deliver a batch twice, run two instances at once or
stop a function mid-push. The ledger turns that into four promises:

- a record is pushed until KooGallery holds it, and never again after that;
- every push of a record sends the bytes of its first copy;
- two instances never push the same record at the same time (a *lease* says who may);
- whatever stops a function, its records stay ``pending`` and the next run takes them.

    ledger = open_ledger("sqlite:///.ledger/usage.db")
    claim = ledger.claim(records, owner=ledger.owner, now=now)
    with KooGalleryClient(settings, observer=ledger) as client:
        client.push_usage(claim.to_push)

A record's life::

    pending ──accepted / duplicate──────────> accepted | duplicate   (final)
       │ └────permanent rejection, expired──> dead_lettered ──reopen──> pending
       └──another copy with other content───> conflict              (until a person decides)

KooGallery also keeps only the first record of a usage window (``instance_id``, ``begin_time``,
``end_time``): a record for a window another ``metering_sn`` holds is a conflict, never stored
as a record of its own and never pushed.
"""

from __future__ import annotations

import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any, Literal

from koogallery.client import Attempt, RecordOutcome
from koogallery.events import Origin
from koogallery.ledger.cutoffs import BillingMode
from koogallery.models import UsageRecord, format_time, format_usage_value
from koogallery.pipeline import DeadLetter

__all__ = [
    "AttemptRow",
    "Claim",
    "DeadLetterRow",
    "DeadLetterState",
    "Ledger",
    "LedgerObserver",
    "LedgerRecord",
    "LedgerStatus",
    "OutboxClaim",
    "RecordStatus",
    "default_owner",
]

DeadLetterState = Literal["open", "retried", "discarded"]
"""``open`` until a person replays the letter (``retried``) or gives it up (``discarded``)."""


class RecordStatus(str, Enum):
    """Where a usage record stands in the ledger."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Claim:
    """What one :meth:`Ledger.claim` decided for each record it was given.

    Every record given lands in exactly one list (``late`` is a subset of ``to_push``,
    ``expired`` of ``dead``); a record repeated within the batch with identical content is
    listed once.

    - ``to_push``: leased to the caller, in input order, rebuilt from the ledger's stored copy,
      so a re-push sends exactly the bytes of the first push.
    - ``already_delivered``: KooGallery accepted it (or reported it a duplicate) before.
    - ``conflicts``: ``(incoming, stored)`` pairs, never pushed, recorded for a person: a copy
      of a stored ``metering_sn`` with other content, or a record for a usage window that
      another ``metering_sn`` holds (``stored`` is then the record holding it, stored before
      or first in this batch, and keeps its status).
    - ``in_flight``: another owner's lease has not expired; still pending, skipped this time.
    - ``dead``: dead-lettered before, or expired now (``begin_time`` older than 21 days).
    - ``late``: in ``to_push`` although its collection cut-off has passed.
    - ``held``: in ``conflict`` since an earlier batch; waits for a person, never pushed.
    - ``expired``: in ``dead`` because this very claim found it expired; the ones dead before
      are not repeated here, so a dead letter made for each of these is made once.
    """

    to_push: list[UsageRecord]
    already_delivered: list[UsageRecord]
    conflicts: list[tuple[UsageRecord, UsageRecord]]
    in_flight: list[UsageRecord]
    dead: list[UsageRecord]
    late: list[UsageRecord]
    held: list[UsageRecord] = field(default_factory=list)
    expired: list[UsageRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many records landed in each list, for logs and summaries."""
        return {
            "to_push": len(self.to_push),
            "already_delivered": len(self.already_delivered),
            "conflicts": len(self.conflicts),
            "in_flight": len(self.in_flight),
            "dead": len(self.dead),
            "late": len(self.late),
            "held": len(self.held),
            "expired": len(self.expired),
        }


@dataclass(frozen=True)
class OutboxClaim:
    """What one :meth:`Ledger.claim_outbox` took from the backlog of pending records.

    - ``to_push``: the oldest pending records (by first sight), leased to the caller and
      rebuilt from their stored copies.
    - ``expired``: records this call dead-lettered instead of handing out, their
      ``begin_time`` older than 21 days (``MKT.9004``), oldest first. The change and the report
      are one transaction: each expired record is reported by exactly one call, whatever runs
      beside it, so the caller can make each one a dead letter.

        taken = ledger.claim_outbox(limit=1000, now=now, owner=owner)
        client.push_usage(taken.to_push)
    """

    to_push: list[UsageRecord]
    expired: list[UsageRecord]


@dataclass(frozen=True)
class LedgerRecord:
    """One row of the record table, every column, for export and inspection."""

    metering_sn: str
    record: UsageRecord
    instance_id: str
    begin_time: datetime
    end_time: datetime
    usage_value: Decimal
    relate_pkg_instance: str | None
    status: RecordStatus
    attempts: int
    first_seen: datetime
    last_seen: datetime
    settled_at: datetime | None
    last_error: str | None
    lease_owner: str | None
    lease_expires: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the record in its own compact form, ledger times in ISO-8601."""
        return {
            "metering_sn": self.metering_sn,
            "record": self.record.to_json_dict(),
            "instance_id": self.instance_id,
            "begin_time": format_time(self.begin_time),
            "end_time": format_time(self.end_time),
            "usage_value": format_usage_value(self.usage_value),
            "relate_pkg_instance": self.relate_pkg_instance,
            "status": self.status.value,
            "attempts": self.attempts,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "settled_at": _iso(self.settled_at),
            "last_error": self.last_error,
            "lease_owner": self.lease_owner,
            "lease_expires": _iso(self.lease_expires),
        }


@dataclass(frozen=True)
class AttemptRow:
    """One HTTP exchange with KooGallery, as the audit trail keeps it."""

    id: int
    started_at: datetime
    owner: str
    endpoint: str
    record_count: int
    latency_ms: float
    http_status: int | None
    error_code: str | None
    request_id: str | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started_at": _iso(self.started_at),
            "owner": self.owner,
            "endpoint": self.endpoint,
            "record_count": self.record_count,
            "latency_ms": self.latency_ms,
            "http_status": self.http_status,
            "error_code": self.error_code,
            "request_id": self.request_id,
            "error": self.error,
        }


@dataclass(frozen=True)
class DeadLetterRow:
    """A stored dead letter: the whole raw message, why it failed, and what a person did."""

    id: int
    created_at: datetime
    origin: Origin
    position: int | None
    reason: str
    field: str | None
    error_code: str | None
    record: dict[str, Any] | None
    raw: str
    state: DeadLetterState
    resolved_at: datetime | None
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": _iso(self.created_at),
            "origin": self.origin.label(),
            "position": self.position,
            "reason": self.reason,
            "field": self.field,
            "error_code": self.error_code,
            "record": self.record,
            "raw": self.raw,
            "state": self.state,
            "resolved_at": _iso(self.resolved_at),
            "note": self.note,
        }


@dataclass(frozen=True)
class LedgerStatus:
    """The health of the push at a glance: backlog, its age, open dead letters, next deadline.

    ``counts`` holds every status, zero included. ``oldest_pending_age`` is what to alert on:
    usage waiting longer than a collection period is usage billed late.
    """

    counts: dict[RecordStatus, int]
    oldest_pending_first_seen: datetime | None
    oldest_pending_age: timedelta | None
    open_dead_letters: int
    attempts: int
    conflicts: int
    next_collection_cutoff: datetime
    billing_mode: BillingMode

    def to_dict(self) -> dict[str, Any]:
        age = self.oldest_pending_age
        return {
            "counts": {status.value: count for status, count in self.counts.items()},
            "oldest_pending_first_seen": _iso(self.oldest_pending_first_seen),
            "oldest_pending_age_seconds": None if age is None else age.total_seconds(),
            "open_dead_letters": self.open_dead_letters,
            "attempts": self.attempts,
            "conflicts": self.conflicts,
            "next_collection_cutoff": _iso(self.next_collection_cutoff),
            "billing_mode": self.billing_mode,
        }


@dataclass(frozen=True)
class BillRun:
    """One bill fetch of a cycle as the ledger keeps it.

    ``status`` is the fetch's, with ``complete`` refined: the first content of a cycle is
    ``complete``, the same content again ``unchanged``, other content ``amended`` (a new
    ``version``; earlier versions stay). ``content`` is the canonical bill document of the
    version (None for runs that fetched nothing new or nothing at all).
    """

    id: int
    site: str
    cycle: str
    run_at: datetime
    status: str
    version: int | None
    content_hash: str | None
    content: dict[str, Any] | None
    request_ids: list[str]
    error_code: str | None
    error_msg: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "site": self.site,
            "cycle": self.cycle,
            "run_at": _iso(self.run_at),
            "status": self.status,
            "version": self.version,
            "content_hash": self.content_hash,
            "request_ids": self.request_ids,
            "error_code": self.error_code,
            "error_msg": self.error_msg,
        }


class Ledger(ABC):
    """The durable record of every usage record, push attempt and dead letter.

    ``billing_mode`` (``"hourly"`` by default, or ``"daily"``) says which collection cut-off
    makes a record late; KooGallery fixes it per product and the ledger cannot see it, so a
    seller whose product bills daily must say so. ``owner`` names this ledger's pushes when it
    serves as a :class:`~koogallery.client.PushObserver`; by default it is unique to this
    object, so two function instances never share a lease.

    A ledger is itself a push observer for ``owner``; :meth:`observer` gives one for another
    owner. It is safe to share between threads.
    """

    def __init__(
        self,
        *,
        billing_mode: BillingMode = "hourly",
        owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if billing_mode not in ("hourly", "daily"):
            raise ValueError(f"billing_mode must be 'hourly' or 'daily', not {billing_mode!r}")
        self.billing_mode: BillingMode = billing_mode
        self.owner = owner or default_owner()
        self._clock = clock or _utc_now

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def migrate(self) -> None:
        """Bring the schema to the latest version; safe to call again, and from many processes."""

    @abstractmethod
    def schema_version(self) -> int:
        """The newest migration applied to this database (0 for an empty one)."""

    @abstractmethod
    def claim(
        self,
        records: Sequence[UsageRecord],
        *,
        owner: str,
        now: datetime,
        lease_seconds: float = 300,
    ) -> Claim:
        """Record ``records`` and lease to ``owner`` those that must be pushed now.

        Atomic across processes: two concurrent claims never both get a record in ``to_push``.
        A lease lasts ``lease_seconds``; after that (a crashed owner) anyone may take it again.
        """

    @abstractmethod
    def settle(self, outcomes: Sequence[RecordOutcome], *, owner: str, now: datetime) -> None:
        """Store what a push did to each record.

        ``accepted`` and ``duplicate`` always apply (they are facts about KooGallery) and are
        final. ``dead_lettered`` and ``pending`` apply only while ``owner`` still holds the
        record's lease, so a late answer from an owner whose lease was taken over changes
        nothing; ``pending`` releases the lease for the next run.
        """

    @abstractmethod
    def record_attempt(self, attempt: Attempt, *, owner: str) -> None:
        """Append one HTTP exchange to the audit trail."""

    @abstractmethod
    def add_dead_letters(self, letters: Sequence[DeadLetter], *, now: datetime) -> list[int]:
        """Store ``letters`` as ``open`` and return their ids, in the order given.

        A letter identical to one still open (same trigger, position, reason and raw text: a
        queue delivering the same bad message again) is not stored twice; its id is returned.
        """

    @abstractmethod
    def claim_outbox(
        self, *, limit: int, now: datetime, owner: str, lease_seconds: float = 300
    ) -> OutboxClaim:
        """Lease up to ``limit`` of the oldest pending records (by first sight) to ``owner``,
        after dead-lettering up to ``limit`` expired ones (``begin_time`` older than 21 days).

        Records under another owner's live lease are left alone. Both lists are empty only
        when nothing is left to push or to expire.
        """

    def outbox(
        self, *, limit: int, now: datetime, owner: str, lease_seconds: float = 300
    ) -> list[UsageRecord]:
        """:meth:`claim_outbox` for a caller that leaves expired records to the ledger: only
        the records to push. Returns an empty list only when nothing is left to push."""
        while True:
            taken = self.claim_outbox(
                limit=limit, now=now, owner=owner, lease_seconds=lease_seconds
            )
            if taken.to_push or not taken.expired:
                return taken.to_push

    @abstractmethod
    def reopen(self, record: UsageRecord, *, now: datetime) -> bool:
        """Make a dead-lettered record ``pending`` again, with ``record`` as its stored copy.

        For a person who corrected what KooGallery refused (``MKT.9001`` before the instance
        existed, say) and pushes it again: the row of ``record.sn`` takes the corrected copy,
        its window and value, and loses its last error, lease and settlement. Returns False,
        changing nothing, when there is no such row, when it is not ``dead_lettered``, or when
        another record holds the corrected usage window.
        """

    @abstractmethod
    def status(self, *, now: datetime) -> LedgerStatus:
        """Counts by status, the age of the oldest pending record and the next cut-off."""

    @abstractmethod
    def records(
        self,
        *,
        status: RecordStatus | None = None,
        instance_id: str | None = None,
        begin_from: datetime | None = None,
        begin_to: datetime | None = None,
    ) -> Iterator[LedgerRecord]:
        """Every stored record matching the filters, by ``begin_time`` then ``metering_sn``.

        ``begin_from`` is inclusive and ``begin_to`` exclusive. Rows are read page by page, so
        an export of millions of records keeps memory flat.
        """

    @abstractmethod
    def attempts(self) -> Iterator[AttemptRow]:
        """The audit trail, oldest first."""

    @abstractmethod
    def dead_letters(
        self,
        *,
        state: DeadLetterState | None = "open",
        origin_trigger: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[DeadLetterRow]:
        """Stored dead letters, oldest first; ``state=None`` lists every state."""

    @abstractmethod
    def dead_letter(self, letter_id: int) -> DeadLetterRow | None:
        """One dead letter, or ``None`` when there is no such id."""

    @abstractmethod
    def resolve_dead_letter(
        self,
        letter_id: int,
        *,
        state: Literal["retried", "discarded"],
        now: datetime,
        note: str | None = None,
    ) -> None:
        """Close an open dead letter. Raises ``KeyError`` for an unknown id and ``ValueError``
        for a letter that is no longer open, so two people cannot both replay one letter."""

    @abstractmethod
    def store_bill_run(
        self,
        *,
        site: str,
        cycle: str,
        status: str,
        now: datetime,
        request_ids: Sequence[str] = (),
        content: dict[str, Any] | None = None,
        content_hash: str | None = None,
        error_code: str | None = None,
        error_msg: str | None = None,
    ) -> BillRun:
        """Record one fetch. With ``content`` (status ``complete``), compare it with the latest
        version of the cycle: the same hash is ``unchanged``, another is stored as a new
        version and ``amended``; nothing is ever overwritten."""

    @abstractmethod
    def bill_runs(self, *, site: str | None = None, cycle: str | None = None) -> list[BillRun]:
        """Every recorded fetch, oldest first, with the content of the versions they stored."""

    def latest_bill(self, *, site: str, cycle: str) -> BillRun | None:
        """The newest stored version of a cycle's bill, if any was ever fetched."""
        versions = [run for run in self.bill_runs(site=site, cycle=cycle) if run.content]
        return versions[-1] if versions else None

    @abstractmethod
    def close(self) -> None:
        """Release the database connection."""

    def on_attempt(self, attempt: Attempt) -> None:
        """:class:`~koogallery.client.PushObserver`: audit the attempt for ``self.owner``."""
        self.record_attempt(attempt, owner=self.owner)

    def on_outcomes(self, outcomes: Sequence[RecordOutcome]) -> None:
        """:class:`~koogallery.client.PushObserver`: settle the outcomes for ``self.owner``."""
        self.settle(outcomes, owner=self.owner, now=self._clock())

    def observer(self, owner: str) -> LedgerObserver:
        """A push observer that settles for ``owner`` (the owner the records were claimed by)."""
        return LedgerObserver(self, owner, self._clock)


@dataclass(frozen=True)
class LedgerObserver:
    """Feeds a client's attempts and outcomes into a ledger as they happen, for one owner.

    Settling as the push goes, rather than at its end, is what keeps a function that is
    stopped halfway from pushing the delivered half again.

        claim = ledger.claim(records, owner=run_id, now=now)
        client = KooGalleryClient(settings, observer=ledger.observer(run_id))
    """

    ledger: Ledger
    owner: str
    clock: Callable[[], datetime]

    def on_attempt(self, attempt: Attempt) -> None:
        self.ledger.record_attempt(attempt, owner=self.owner)

    def on_outcomes(self, outcomes: Sequence[RecordOutcome]) -> None:
        self.ledger.settle(outcomes, owner=self.owner, now=self.clock())


def default_owner() -> str:
    """A lease owner unique to this process and object: host, process id and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
