"""The ledger over SQL: every operation written once, for both backends.

Each operation runs in one transaction that locks what it changes, reads, asks
:mod:`koogallery.ledger.rules` what to do, and writes. A backend supplies only what differs:
how a transaction is opened and locked, how many rows are inserted at once, how a list of
values or of usage windows is passed to ``IN``, and how times and JSON are stored. Statements
use ``?`` placeholders.

Every write that applies a rule also states the rule in its ``WHERE`` clause, so the database
itself refuses a write the rule forbids (a late ``pending`` over an ``accepted``, a lease taken
from its owner), whatever happened between reading and writing.

Statements are put together only from constants of this package (column lists, a backend's
row-lock clause, filter conditions); every value is a bound parameter. That is why the
``S608`` warnings about built SQL are silenced where they appear.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar, Literal, Protocol, TypeVar, cast

from koogallery.client import Attempt, RecordOutcome
from koogallery.errors import ConfigurationError
from koogallery.events import Origin
from koogallery.ledger.base import (
    AttemptRow,
    BillRun,
    Claim,
    DeadLetterRow,
    DeadLetterState,
    Ledger,
    LedgerRecord,
    LedgerStatus,
    OutboxClaim,
    RecordStatus,
)
from koogallery.ledger.cutoffs import BillingMode, collection_moment, next_collection
from koogallery.ledger.migrations import (
    MIGRATIONS,
    SCHEMA_VERSION_TABLE,
    Dialect,
    Migration,
    check_migrations,
)
from koogallery.ledger.rules import (
    EXPIRED_REASON,
    ClaimPlan,
    NewRow,
    StoredRow,
    Window,
    first_copies,
    new_rows,
    plan_claim,
    plan_settle,
    rebuild_record,
    stored_json,
    window_firsts,
    window_of,
)
from koogallery.models import MAX_BEGIN_AGE, UsageRecord, format_time, format_usage_value
from koogallery.pipeline import DeadLetter

__all__ = ["CONFLICTS_LOGGED", "PAGE_SIZE", "SqlLedger", "Transaction"]

logger = logging.getLogger(__name__)

PAGE_SIZE = 500
"""Rows read per query when iterating an export; the lock is released between pages."""

CONFLICTS_LOGGED = 10
"""Conflicts of one claim logged one by one; past that, a single line gives the count."""

_RECORD_COLUMNS = (
    "metering_sn, record_json, instance_id, begin_time, end_time, usage_value, "
    "relate_pkg_instance, status, attempts, first_seen, last_seen, settled_at, last_error, "
    "lease_owner, lease_expires"
)
_INSERT_RECORD = (
    f"INSERT INTO usage_records ({_RECORD_COLUMNS}) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ATTEMPT_COLUMNS = (
    "id, started_at, owner, endpoint, record_count, latency_ms, http_status, error_code, "
    "request_id, error"
)
_LETTER_COLUMNS = (
    "id, created_at, origin_json, position, reason, field, error_code, record_json, raw, state, "
    "resolved_at, note"
)
_CONFLICT_MESSAGES = {
    "metering_sn": "usage record conflicts with the stored copy of its metering_sn; "
    "the incoming copy was recorded and will not be pushed",
    "usage_window": "usage record is for a usage window another metering_sn holds; "
    "the incoming copy was recorded and will not be pushed",
}
_TAKE_OVER = (
    "attempts = attempts + CASE WHEN lease_owner IS NOT NULL AND lease_owner <> ? "
    "THEN 1 ELSE 0 END"
)
"""Taking over the lease of a run that stopped (a crash, a timeout) counts as an attempt: that
run may have pushed the record before it stopped."""

_DELIVERED_STATUS = "CASE WHEN ? = 'duplicate' AND attempts > 0 THEN 'accepted' ELSE ? END"
"""A record KooGallery reports as already held, after an earlier attempt of ours (one that
failed, or one a stopped run made), was accepted on that attempt: its answer was lost. Only a
record we never sent before, yet KooGallery holds, stays ``duplicate``."""

_LEASE_IS_FREE = "(lease_owner IS NULL OR lease_owner = ? OR lease_expires <= ?)"
_Value = TypeVar("_Value")


class Transaction(Protocol):
    """One open transaction, as the shared operations see it."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        """Run one statement per parameter row, batched; returns the rows changed in all."""

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run one query and return every row."""


class SqlLedger(Ledger):
    """The operations of :class:`~koogallery.ledger.base.Ledger` over a SQL backend."""

    dialect: ClassVar[Dialect]
    _LOCK_ROWS: ClassVar[str] = ""
    """Appended to a query whose rows the transaction will change (PostgreSQL: FOR UPDATE)."""
    _SKIP_LOCKED: ClassVar[str] = ""
    """Appended to an outbox query, so two drains take different rows instead of waiting."""

    def __init__(
        self,
        *,
        billing_mode: BillingMode = "hourly",
        owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        super().__init__(billing_mode=billing_mode, owner=owner, clock=clock)
        self._migrations = check_migrations(migrations)

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Transaction]:
        """A transaction; ``write`` ones are serialised with every other writer of the rows."""

    @abstractmethod
    def _lock_schema(self, tx: Transaction) -> None:
        """Make concurrent migrations take turns (held until the transaction ends)."""

    @abstractmethod
    def _table_exists(self, tx: Transaction, table: str) -> bool: ...

    @abstractmethod
    def _insert_unseen(
        self, tx: Transaction, rows: Sequence[NewRow], *, now: datetime
    ) -> set[str]:
        """Insert the rows whose ``metering_sn`` is new, in the given order; return those."""

    def _maybe_missing(self, tx: Transaction, sns: Sequence[str]) -> Sequence[str] | None:
        """Which of ``sns`` have no row yet, in the given order, where the backend can tell
        more cheaply than :meth:`_insert_unseen` finds out; None leaves it to the insert.

        A settle nearly always reports on records its claim stored, so asking first spares
        making the rows of a whole batch only to find that none of them is new.
        """
        return None

    @abstractmethod
    def _in(self, column: str, values: Sequence[str]) -> tuple[str, object]:
        """A ``column IN list`` condition with one placeholder, and the value to bind to it."""

    @abstractmethod
    def _in_windows(self, windows: Sequence[Window]) -> tuple[str, Sequence[object]]:
        """A condition true for the rows of the given usage windows, and the values to bind."""

    @abstractmethod
    def _db_time(self, moment: datetime) -> object: ...

    @abstractmethod
    def _read_time(self, value: Any) -> datetime: ...

    @abstractmethod
    def _read_json(self, value: Any) -> Any: ...

    def migrate(self) -> None:
        for migration in self._migrations:
            with self._transaction(write=True) as tx:
                self._lock_schema(tx)
                tx.execute(SCHEMA_VERSION_TABLE[self.dialect])
                applied = self._applied_versions(tx)
                self._refuse_newer(applied)
                if migration.version in applied:
                    continue

                for statement in migration.statements(self.dialect):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, self._db_time(self._clock())),
                )
            logger.info(
                "ledger schema migrated",
                extra={
                    "event": "ledger_migrated",
                    "version": migration.version,
                    "migration": migration.name,
                },
            )

    def schema_version(self) -> int:
        with self._transaction(write=False) as tx:
            if not self._table_exists(tx, "schema_version"):
                return 0
            return max(self._applied_versions(tx), default=0)

    def _applied_versions(self, tx: Transaction) -> set[int]:
        return {int(version) for (version,) in tx.rows("SELECT version FROM schema_version")}

    def _refuse_newer(self, applied: set[int]) -> None:
        """A database migrated by newer code may hold data this code would misread."""
        newest, known = max(applied, default=0), len(self._migrations)
        if newest > known:
            raise ConfigurationError(
                f"the ledger schema is at version {newest}, newer than this code knows "
                f"({known}): upgrade koogallery-functions before using this ledger"
            )

    def claim(
        self,
        records: Sequence[UsageRecord],
        *,
        owner: str,
        now: datetime,
        lease_seconds: float = 300,
    ) -> Claim:
        now = _utc(now)
        lease_until = now + _lease(lease_seconds)
        if not records:
            return Claim([], [], [], [], [], [])

        firsts = first_copies(records)
        with self._transaction(write=True) as tx:
            rows = new_rows(window_firsts(firsts), owner=owner, now=now, lease_until=lease_until)
            fresh = self._insert_unseen(tx, rows, now=now)
            inserted = {row.record.sn: row for row in rows if row.record.sn in fresh}
            stored = self._stored_rows(tx, [sn for sn in sorted(firsts) if sn not in fresh])

            without_row = [sn for sn in firsts if sn not in fresh and sn not in stored]
            holders = self._window_holders(tx, [window_of(firsts[sn]) for sn in without_row])
            plan = plan_claim(
                records,
                inserted=inserted,
                stored=stored,
                holders=holders,
                owner=owner,
                now=now,
                billing_mode=self.billing_mode,
            )
            self._write_claim(tx, plan, owner=owner, now=now, lease_until=lease_until)

        rows_by_sn = {**{row.metering_sn: row for row in holders.values()}, **stored}
        self._report_claim(plan, rows_by_sn, owner=owner)
        return plan.claim

    def _stored_rows(self, tx: Transaction, sns: Sequence[str]) -> dict[str, StoredRow]:
        """The rows of ``sns``, locked in ``metering_sn`` order where the backend locks rows."""
        if not sns:
            return {}
        condition, values = self._in("metering_sn", sns)
        found = tx.rows(
            "SELECT metering_sn, record_json, status, lease_owner, lease_expires "  # noqa: S608
            f"FROM usage_records WHERE {condition} ORDER BY metering_sn{self._LOCK_ROWS}",
            (values,),
        )
        return {
            sn: StoredRow(
                metering_sn=sn,
                stored=self._read_json(stored),
                status=RecordStatus(status),
                lease_owner=lease_owner,
                lease_expires=None if lease_expires is None else self._read_time(lease_expires),
            )
            for sn, stored, status, lease_owner, lease_expires in found
        }

    def _window_holders(
        self, tx: Transaction, windows: Sequence[Window]
    ) -> dict[Window, StoredRow]:
        """The rows holding ``windows``, read only: a claim never changes the holder of a
        window it is refused, so it takes no lock on it (and keeps its locks in one order)."""
        if not windows:
            return {}
        condition, values = self._in_windows(windows)
        found = tx.rows(
            "SELECT metering_sn, record_json, status, lease_owner, lease_expires, "  # noqa: S608
            "instance_id, begin_time, end_time FROM usage_records "
            f"WHERE window_rank = 0 AND {condition}",
            values,
        )
        return {
            (instance_id, self._read_time(begin), self._read_time(end)): StoredRow(
                metering_sn=sn,
                stored=self._read_json(stored),
                status=RecordStatus(status),
                lease_owner=lease_owner,
                lease_expires=self._maybe_time(lease_expires),
            )
            for sn, stored, status, lease_owner, lease_expires, instance_id, begin, end in found
        }

    def _write_claim(
        self,
        tx: Transaction,
        plan: ClaimPlan,
        *,
        owner: str,
        now: datetime,
        lease_until: datetime,
    ) -> None:
        at, until = self._db_time(now), self._db_time(lease_until)
        self._update(tx, plan.seen, "last_seen = ?", (at,))

        leased = self._update(
            tx,
            plan.leases,
            f"{_TAKE_OVER}, lease_owner = ?, lease_expires = ?",
            (owner, owner, until),
            f"status = 'pending' AND {_LEASE_IS_FREE}",
            (owner, at),
        )
        if leased != len(plan.leases):
            raise RuntimeError(
                f"the ledger leased {leased} of {len(plan.leases)} records it decided to "
                "lease; the claim was rolled back"
            )

        self._update(
            tx,
            plan.expire,
            "status = 'dead_lettered', last_error = ?, settled_at = ?, "
            "lease_owner = NULL, lease_expires = NULL",
            (EXPIRED_REASON, at),
            "status = 'pending'",
        )
        self._update(tx, plan.mark_conflict, "status = 'conflict'", (), "status = 'pending'")

        if plan.conflict_copies:
            tx.execute_many(
                "INSERT INTO record_conflicts (metering_sn, record_json, seen_at) "
                "VALUES (?, ?, ?)",
                [(sn, copy, at) for sn, copy in plan.conflict_copies],
            )

    def _report_claim(self, plan: ClaimPlan, stored: dict[str, StoredRow], *, owner: str) -> None:
        """Conflicts are loud (a person must decide); late and expired records are warnings.

        Each conflict gets its own line, up to :data:`CONFLICTS_LOGGED` per claim, then one line
        with the total: a whole batch in conflict must not flood the log. ``conflict_on`` says
        which of KooGallery's keys the records share: ``metering_sn`` or ``usage_window``.
        """
        claim = plan.claim
        for incoming, kept in claim.conflicts[:CONFLICTS_LOGGED]:
            row = stored.get(kept.sn)
            conflict_on = "metering_sn" if incoming.sn == kept.sn else "usage_window"
            logger.error(
                _CONFLICT_MESSAGES[conflict_on],
                extra={
                    "event": "ledger_conflict",
                    "conflict_on": conflict_on,
                    "metering_sn": kept.sn,
                    "incoming_metering_sn": incoming.sn,
                    "instance_id": kept.instance_id,
                    "stored_window": [format_time(kept.begin_time), format_time(kept.end_time)],
                    "stored_usage_value": format_usage_value(kept.usage_value),
                    "incoming_instance_id": incoming.instance_id,
                    "incoming_window": [
                        format_time(incoming.begin_time),
                        format_time(incoming.end_time),
                    ],
                    "incoming_usage_value": format_usage_value(incoming.usage_value),
                    "stored_status": "pending" if row is None else row.status.value,
                },
            )

        if len(claim.conflicts) > CONFLICTS_LOGGED:
            logger.error(
                "more usage records conflict with their stored copies",
                extra={"event": "ledger_conflict", "records": len(claim.conflicts)},
            )

        if claim.late:
            missed = min(
                collection_moment(record.end_time, self.billing_mode) for record in claim.late
            )
            logger.warning(
                "usage records pushed after their collection cut-off",
                extra={
                    "event": "ledger_late",
                    "records": len(claim.late),
                    "earliest_cutoff": format_time(missed),
                    "billing_mode": self.billing_mode,
                },
            )
        if claim.expired:
            logger.warning(
                "usage records expired before they could be pushed",
                extra={"event": "ledger_expired", "records": len(claim.expired)},
            )
        logger.debug(
            "ledger claim", extra={"event": "ledger_claim", "owner": owner, **claim.counts()}
        )

    def settle(self, outcomes: Sequence[RecordOutcome], *, owner: str, now: datetime) -> None:
        now = _utc(now)
        if not outcomes:
            return

        plan = plan_settle(outcomes)
        firsts = first_copies([outcome.record for outcome in outcomes])
        plan_sns = list(firsts)
        at = self._db_time(now)
        with self._transaction(write=True) as tx:
            missing = self._maybe_missing(tx, list(firsts))
            if missing is not None:
                firsts = {sn: firsts[sn] for sn in missing}
            if firsts:
                rows = new_rows(firsts, owner=owner, now=now, lease_until=now)
                self._insert_unseen(tx, rows, now=now)
            self._lock_records(tx, sorted(plan_sns))

            applied = 0
            for status, sns in _grouped(plan.delivered).items():
                applied += self._update(
                    tx,
                    sns,
                    f"status = {_DELIVERED_STATUS}, settled_at = ?, lease_owner = NULL, "
                    "lease_expires = NULL, attempts = attempts + 1",
                    (status.value, status.value, at),
                    "status NOT IN ('accepted', 'duplicate')",
                )
            for error, sns in _grouped(plan.dead).items():
                applied += self._update(
                    tx,
                    sns,
                    "status = 'dead_lettered', last_error = ?, settled_at = ?, "
                    "lease_owner = NULL, lease_expires = NULL, attempts = attempts + 1",
                    (error, at),
                    "status IN ('pending', 'conflict') AND lease_owner = ?",
                    (owner,),
                )
            for error, sns in _grouped(plan.released).items():
                applied += self._update(
                    tx,
                    sns,
                    "last_error = ?, lease_owner = NULL, lease_expires = NULL, "
                    "attempts = attempts + 1",
                    (error,),
                    "status IN ('pending', 'conflict') AND lease_owner = ?",
                    (owner,),
                )

        planned = len(plan.delivered) + len(plan.dead) + len(plan.released)
        if applied < planned:
            logger.info(
                "outcomes ignored: the records were delivered already or leased to another owner",
                extra={
                    "event": "ledger_settle_ignored",
                    "owner": owner,
                    "records": planned - applied,
                },
            )

    def _update(
        self,
        tx: Transaction,
        sns: Sequence[str],
        assignments: str,
        values: Sequence[object],
        guard: str | None = None,
        guard_values: Sequence[object] = (),
    ) -> int:
        """Set the same values on every row of ``sns`` that passes ``guard``, in one statement;
        returns how many rows changed."""
        if not sns:
            return 0
        condition, listed = self._in("metering_sn", sns)
        where = condition if guard is None else f"{condition} AND {guard}"
        return tx.execute(
            f"UPDATE usage_records SET {assignments} WHERE {where}",  # noqa: S608
            (*values, listed, *guard_values),
        )

    def _lock_records(self, tx: Transaction, sns: Sequence[str]) -> None:
        """Lock rows in ``metering_sn`` order before changing them, where the backend locks
        rows: the same order in every transaction, so transactions wait for each other but never
        deadlock."""
        if self._LOCK_ROWS and sns:
            condition, values = self._in("metering_sn", sns)
            tx.rows(
                f"SELECT metering_sn FROM usage_records WHERE {condition} "  # noqa: S608
                f"ORDER BY metering_sn{self._LOCK_ROWS}",
                (values,),
            )

    def _insert_rows(self, tx: Transaction, rows: Sequence[NewRow], *, now: datetime) -> None:
        """Insert rows known to be new, in one batched statement."""
        at = self._db_time(now)
        tx.execute_many(_INSERT_RECORD, [self._new_row_params(row, at) for row in rows])

    def _new_row_params(self, row: NewRow, at: object) -> tuple[object, ...]:
        """The values of one new row, in the order of the record table's columns; ``at`` is
        the claim's time as stored, the same for every row of it."""
        record = row.record
        db_time = self._db_time
        return (
            record.sn,
            row.stored,
            record.instance_id,
            db_time(record.begin_time),
            db_time(record.end_time),
            format_usage_value(record.usage_value),
            record.relate_pkg_instance,
            row.status.value,
            0,
            at,
            at,
            None if row.settled_at is None else db_time(row.settled_at),
            row.last_error,
            row.lease_owner,
            None if row.lease_expires is None else db_time(row.lease_expires),
        )

    def record_attempt(self, attempt: Attempt, *, owner: str) -> None:
        with self._transaction(write=True) as tx:
            tx.execute(
                "INSERT INTO push_attempts (started_at, owner, endpoint, record_count, "
                "latency_ms, http_status, error_code, request_id, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._db_time(_utc(attempt.started_at)),
                    owner,
                    attempt.endpoint,
                    attempt.record_count,
                    attempt.latency_ms,
                    attempt.http_status,
                    attempt.error_code,
                    attempt.request_id,
                    attempt.error,
                ),
            )

    def add_dead_letters(self, letters: Sequence[DeadLetter], *, now: datetime) -> list[int]:
        at = self._db_time(_utc(now))
        ids = []
        with self._transaction(write=True) as tx:
            for letter in letters:
                entry = letter.to_dict()
                record = None if letter.record is None else _json_text(entry["record"])
                same = tx.rows(
                    "SELECT id FROM dead_letters WHERE state = 'open' AND origin_trigger = ? "
                    "AND COALESCE(position, -1) = ? AND reason = ? AND raw = ? LIMIT 1",
                    (
                        letter.origin.trigger,
                        -1 if letter.position is None else letter.position,
                        letter.reason,
                        letter.raw,
                    ),
                )
                if same:
                    ids.append(int(same[0][0]))
                    continue
                found = tx.rows(
                    "INSERT INTO dead_letters (created_at, origin_trigger, origin_json, "
                    "position, reason, field, error_code, record_json, raw) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        at,
                        letter.origin.trigger,
                        _json_text(entry["origin"]),
                        letter.position,
                        letter.reason,
                        letter.field,
                        letter.error_code,
                        record,
                        letter.raw,
                    ),
                )
                ids.append(int(found[0][0]))
        return ids

    def claim_outbox(
        self, *, limit: int, now: datetime, owner: str, lease_seconds: float = 300
    ) -> OutboxClaim:
        now = _utc(now)
        lease_until = now + _lease(lease_seconds)
        if limit <= 0:
            return OutboxClaim([], [])

        at, oldest_begin = self._db_time(now), self._db_time(now - MAX_BEGIN_AGE)
        with self._transaction(write=True) as tx:
            expired = tx.rows(
                "UPDATE usage_records SET status = 'dead_lettered', last_error = ?, "  # noqa: S608
                "settled_at = ?, lease_owner = NULL, lease_expires = NULL "
                "WHERE metering_sn IN (SELECT metering_sn FROM usage_records "
                f"WHERE status = 'pending' AND begin_time < ? AND {_LEASE_IS_FREE} "
                f"ORDER BY first_seen, metering_sn LIMIT ?{self._SKIP_LOCKED}) "
                "RETURNING first_seen, metering_sn, record_json",
                (EXPIRED_REASON, at, oldest_begin, owner, at, limit),
            )
            found = tx.rows(
                "SELECT metering_sn, record_json FROM usage_records "  # noqa: S608
                f"WHERE status = 'pending' AND begin_time >= ? AND {_LEASE_IS_FREE} "
                f"ORDER BY first_seen, metering_sn LIMIT ?{self._SKIP_LOCKED}",
                (oldest_begin, owner, at, limit),
            )
            self._update(
                tx,
                [sn for sn, _ in found],
                f"{_TAKE_OVER}, lease_owner = ?, lease_expires = ?",
                (owner, owner, self._db_time(lease_until)),
            )

        if expired:
            logger.warning(
                "usage records expired before they could be pushed",
                extra={"event": "ledger_expired", "records": len(expired)},
            )

        expired.sort(key=lambda row: (self._read_time(row[0]), row[1]))
        return OutboxClaim(
            to_push=[rebuild_record(self._read_json(stored)) for _, stored in found],
            expired=[rebuild_record(self._read_json(stored)) for _, _, stored in expired],
        )

    def reopen(self, record: UsageRecord, *, now: datetime) -> bool:
        at = self._db_time(_utc(now))
        window = window_of(record)
        with self._transaction(write=True) as tx:
            row = self._stored_rows(tx, [record.sn]).get(record.sn)
            if row is None or row.status is not RecordStatus.DEAD_LETTERED:
                return False
            holder = self._window_holders(tx, [window]).get(window)
            if holder is not None and holder.metering_sn != record.sn:
                return False

            tx.execute(
                "UPDATE usage_records SET record_json = ?, instance_id = ?, begin_time = ?, "
                "end_time = ?, usage_value = ?, relate_pkg_instance = ?, status = 'pending', "
                "window_rank = 0, last_seen = ?, settled_at = NULL, last_error = NULL, "
                "lease_owner = NULL, lease_expires = NULL "
                "WHERE metering_sn = ? AND status = 'dead_lettered'",
                (
                    stored_json(record),
                    record.instance_id,
                    self._db_time(record.begin_time),
                    self._db_time(record.end_time),
                    format_usage_value(record.usage_value),
                    record.relate_pkg_instance,
                    at,
                    record.sn,
                ),
            )

        logger.info(
            "dead-lettered usage record reopened for another push",
            extra={"event": "ledger_reopened", "metering_sn": record.sn},
        )
        return True

    def status(self, *, now: datetime) -> LedgerStatus:
        now = _utc(now)
        with self._transaction(write=False) as tx:
            found = tx.rows("SELECT status, COUNT(*) FROM usage_records GROUP BY status")
            ((oldest,),) = tx.rows(
                "SELECT MIN(first_seen) FROM usage_records WHERE status = 'pending'"
            )
            ((open_letters,),) = tx.rows("SELECT COUNT(*) FROM dead_letters WHERE state = 'open'")
            ((attempts,),) = tx.rows("SELECT COUNT(*) FROM push_attempts")
            ((conflicts,),) = tx.rows("SELECT COUNT(*) FROM record_conflicts")

        counts = dict.fromkeys(RecordStatus, 0)
        counts.update({RecordStatus(status): int(count) for status, count in found})
        first_seen = None if oldest is None else self._read_time(oldest)
        return LedgerStatus(
            counts=counts,
            oldest_pending_first_seen=first_seen,
            oldest_pending_age=None if first_seen is None else now - first_seen,
            open_dead_letters=int(open_letters),
            attempts=int(attempts),
            conflicts=int(conflicts),
            next_collection_cutoff=next_collection(now, self.billing_mode),
            billing_mode=self.billing_mode,
        )

    def records(
        self,
        *,
        status: RecordStatus | None = None,
        instance_id: str | None = None,
        begin_from: datetime | None = None,
        begin_to: datetime | None = None,
    ) -> Iterator[LedgerRecord]:
        conditions: list[str] = []
        params: list[object] = []
        if status is not None:
            conditions.append("status = ?")
            params.append(RecordStatus(status).value)
        if instance_id is not None:
            conditions.append("instance_id = ?")
            params.append(instance_id)
        if begin_from is not None:
            conditions.append("begin_time >= ?")
            params.append(self._db_time(_utc(begin_from)))
        if begin_to is not None:
            conditions.append("begin_time < ?")
            params.append(self._db_time(_utc(begin_to)))

        after: tuple[object, object] | None = None
        while True:
            page_conditions, page_params = list(conditions), list(params)
            if after is not None:
                page_conditions.append("(begin_time, metering_sn) > (?, ?)")
                page_params.extend(after)
            where = f"WHERE {' AND '.join(page_conditions)} " if page_conditions else ""
            with self._transaction(write=False) as tx:
                page = tx.rows(
                    f"SELECT {_RECORD_COLUMNS} FROM usage_records {where}"  # noqa: S608
                    f"ORDER BY begin_time, metering_sn LIMIT {PAGE_SIZE}",
                    page_params,
                )

            yield from (self._ledger_record(row) for row in page)
            if len(page) < PAGE_SIZE:
                return
            after = (page[-1][3], page[-1][0])

    def _ledger_record(self, row: tuple[Any, ...]) -> LedgerRecord:
        (
            sn,
            stored,
            instance_id,
            begin,
            end,
            value,
            package,
            status,
            attempts,
            first_seen,
            last_seen,
            settled_at,
            last_error,
            lease_owner,
            lease_expires,
        ) = row
        return LedgerRecord(
            metering_sn=sn,
            record=rebuild_record(self._read_json(stored)),
            instance_id=instance_id,
            begin_time=self._read_time(begin),
            end_time=self._read_time(end),
            usage_value=Decimal(str(value)),
            relate_pkg_instance=package,
            status=RecordStatus(status),
            attempts=int(attempts),
            first_seen=self._read_time(first_seen),
            last_seen=self._read_time(last_seen),
            settled_at=self._maybe_time(settled_at),
            last_error=last_error,
            lease_owner=lease_owner,
            lease_expires=self._maybe_time(lease_expires),
        )

    def attempts(self) -> Iterator[AttemptRow]:
        after = 0
        while True:
            with self._transaction(write=False) as tx:
                page = tx.rows(
                    f"SELECT {_ATTEMPT_COLUMNS} FROM push_attempts WHERE id > ? "  # noqa: S608
                    f"ORDER BY id LIMIT {PAGE_SIZE}",
                    (after,),
                )

            for row in page:
                yield AttemptRow(
                    id=int(row[0]),
                    started_at=self._read_time(row[1]),
                    owner=row[2],
                    endpoint=row[3],
                    record_count=int(row[4]),
                    latency_ms=float(row[5]),
                    http_status=row[6],
                    error_code=row[7],
                    request_id=row[8],
                    error=row[9],
                )
            if len(page) < PAGE_SIZE:
                return
            after = int(page[-1][0])

    def dead_letters(
        self,
        *,
        state: DeadLetterState | None = "open",
        origin_trigger: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[DeadLetterRow]:
        conditions: list[str] = []
        params: list[object] = []
        if state is not None:
            conditions.append("state = ?")
            params.append(state)
        if origin_trigger is not None:
            conditions.append("origin_trigger = ?")
            params.append(origin_trigger)
        if since is not None:
            conditions.append("created_at >= ?")
            params.append(self._db_time(_utc(since)))
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        if limit is not None:
            where += " ORDER BY id LIMIT ?"
            params.append(int(limit))
        else:
            where += " ORDER BY id"

        with self._transaction(write=False) as tx:
            query = f"SELECT {_LETTER_COLUMNS} FROM dead_letters{where}"  # noqa: S608
            found = tx.rows(query, params)
        return [self._dead_letter_row(row) for row in found]

    def dead_letter(self, letter_id: int) -> DeadLetterRow | None:
        with self._transaction(write=False) as tx:
            query = f"SELECT {_LETTER_COLUMNS} FROM dead_letters WHERE id = ?"  # noqa: S608
            found = tx.rows(query, (int(letter_id),))
        return self._dead_letter_row(found[0]) if found else None

    def _dead_letter_row(self, row: tuple[Any, ...]) -> DeadLetterRow:
        (
            letter_id,
            created_at,
            origin,
            position,
            reason,
            field,
            error_code,
            record,
            raw,
            state,
            resolved_at,
            note,
        ) = row
        return DeadLetterRow(
            id=int(letter_id),
            created_at=self._read_time(created_at),
            origin=Origin(**self._read_json(origin)),
            position=position,
            reason=reason,
            field=field,
            error_code=error_code,
            record=None if record is None else self._read_json(record),
            raw=raw,
            state=cast(DeadLetterState, state),
            resolved_at=self._maybe_time(resolved_at),
            note=note,
        )

    def resolve_dead_letter(
        self,
        letter_id: int,
        *,
        state: Literal["retried", "discarded"],
        now: datetime,
        note: str | None = None,
    ) -> None:
        if state not in ("retried", "discarded"):
            raise ValueError(
                f"a dead letter is resolved as 'retried' or 'discarded', not {state!r}"
            )

        with self._transaction(write=True) as tx:
            changed = tx.execute(
                "UPDATE dead_letters SET state = ?, resolved_at = ?, note = ? "
                "WHERE id = ? AND state = 'open'",
                (state, self._db_time(_utc(now)), note, int(letter_id)),
            )
            if changed:
                return
            found = tx.rows("SELECT state FROM dead_letters WHERE id = ?", (int(letter_id),))

        if not found:
            raise KeyError(f"there is no dead letter {letter_id}")
        raise ValueError(f"dead letter {letter_id} is already {found[0][0]}")

    def _maybe_time(self, value: Any) -> datetime | None:
        return None if value is None else self._read_time(value)

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
        at = self._db_time(_utc(now))
        with self._transaction(write=True) as tx:
            version: int | None = None
            stored: str | None = None
            if content is not None:
                latest = tx.rows(
                    "SELECT version, content_hash FROM bill_runs WHERE site = ? AND cycle = ? "
                    "AND content_json IS NOT NULL ORDER BY version DESC LIMIT 1",
                    (site, cycle),
                )
                if not latest:
                    status, version, stored = "complete", 1, _json_text(content)
                elif latest[0][1] == content_hash:
                    status, version = "unchanged", int(latest[0][0])
                else:
                    status, version = "amended", int(latest[0][0]) + 1
                    stored = _json_text(content)
            found = tx.rows(
                "INSERT INTO bill_runs (site, cycle, run_at, status, version, content_hash, "
                "content_json, request_ids, error_code, error_msg) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    site,
                    cycle,
                    at,
                    status,
                    version,
                    content_hash,
                    stored,
                    _json_text(list(request_ids)),
                    error_code,
                    error_msg,
                ),
            )
        return BillRun(
            id=int(found[0][0]),
            site=site,
            cycle=cycle,
            run_at=_utc(now),
            status=status,
            version=version,
            content_hash=content_hash,
            content=content if stored is not None else None,
            request_ids=list(request_ids),
            error_code=error_code,
            error_msg=error_msg,
        )

    def bill_runs(self, *, site: str | None = None, cycle: str | None = None) -> list[BillRun]:
        conditions, params = [], []
        if site is not None:
            conditions.append("site = ?")
            params.append(site)
        if cycle is not None:
            conditions.append("cycle = ?")
            params.append(cycle)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._transaction(write=False) as tx:
            found = tx.rows(
                "SELECT id, site, cycle, run_at, status, version, content_hash, "  # noqa: S608
                f"content_json, request_ids, error_code, error_msg FROM bill_runs{where} "
                "ORDER BY id",
                params,
            )
        return [
            BillRun(
                id=int(row[0]),
                site=row[1],
                cycle=row[2],
                run_at=self._read_time(row[3]),
                status=row[4],
                version=None if row[5] is None else int(row[5]),
                content_hash=row[6],
                content=None if row[7] is None else self._read_json(row[7]),
                request_ids=list(self._read_json(row[8])),
                error_code=row[9],
                error_msg=row[10],
            )
            for row in found
        ]


def _utc(moment: datetime) -> datetime:
    """Every time the ledger is given must say its zone: a naive one would shift leases."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no time zone; pass an aware UTC datetime")
    return moment.astimezone(timezone.utc)


def _lease(seconds: float) -> timedelta:
    if seconds <= 0:
        raise ValueError(f"lease_seconds must be positive, got {seconds}")
    return timedelta(seconds=seconds)


def _grouped(pairs: Sequence[tuple[str, _Value]]) -> dict[_Value, list[str]]:
    """``metering_sn`` values grouped by the value to write, so each group is one statement."""
    groups: dict[_Value, list[str]] = {}
    for sn, value in pairs:
        groups.setdefault(value, []).append(sn)
    return groups


def _json_text(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
