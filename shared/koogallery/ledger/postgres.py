"""The ledger in PostgreSQL: for sellers who run several function instances against one store.

Writes lock rows, not the table, so claims of disjoint batches run side by side:

- a claim inserts the unseen records with ``INSERT ... ON CONFLICT DO NOTHING`` (one statement
  over the whole batch, in usage window order), skipping a record whose ``metering_sn`` or
  usage window is stored already, then locks the stored ones with ``SELECT ... FOR UPDATE`` in
  ``metering_sn`` order. A claim that meets a row another claim is writing waits for it, then
  sees its lease; because every transaction takes rows in one order, transactions wait for
  each other but never deadlock;
- the outbox uses ``FOR UPDATE SKIP LOCKED``, so two drains take different records at once;
- migrations hold a transaction-scoped advisory lock, so two processes migrating take turns.

    ledger = PostgresLedger("postgresql://ledger@127.0.0.1:5432/usage")
    ledger.migrate()

The URL may hold a password: it is kept only to connect, and shown masked everywhere else.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import psycopg

from koogallery.errors import TransientError
from koogallery.ledger.cutoffs import BillingMode
from koogallery.ledger.migrations import MIGRATIONS, Migration
from koogallery.ledger.rules import NewRow, Window
from koogallery.ledger.sql import SqlLedger, Transaction
from koogallery.ledger.urls import LEDGER_URL_VARIABLE, masked_url
from koogallery.models import format_usage_value

__all__ = ["PostgresLedger"]

_MIGRATION_LOCK = 0x6B6F6F67616C6C79
"""The advisory lock key that serialises migrations (any fixed number, the same everywhere)."""

_INSERT_UNSEEN = """
    INSERT INTO usage_records (
        metering_sn, record_json, instance_id, begin_time, end_time, usage_value,
        relate_pkg_instance, status, attempts, first_seen, last_seen, settled_at, last_error,
        lease_owner, lease_expires
    )
    SELECT metering_sn, record_json, instance_id, begin_time, end_time, usage_value,
        relate_pkg_instance, status, 0, ?, ?, settled_at, last_error, lease_owner, lease_expires
    FROM json_to_recordset(?::json) AS new (
        metering_sn text, record_json jsonb, instance_id text, begin_time timestamptz,
        end_time timestamptz, usage_value numeric, relate_pkg_instance text, status text,
        settled_at timestamptz, last_error text, lease_owner text, lease_expires timestamptz
    )
    ORDER BY instance_id, begin_time, end_time, metering_sn
    ON CONFLICT DO NOTHING
    RETURNING metering_sn
"""
"""Inserts a whole batch from one JSON document: the server reads it far faster than the
driver can write a dozen arrays of a thousand strings each. ``ON CONFLICT`` names no index, so
that both keys count: ``metering_sn`` and the usage window (``usage_records_by_window``)."""


class _PostgresTransaction:
    """A transaction on the ledger's connection; turns ``?`` placeholders into ``%s``.

    The ledger's statements never hold a literal ``?`` or ``%``, so the swap is exact.
    """

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        self._cursor.execute(_placeholders(sql), tuple(params))
        return self._cursor.rowcount

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        if not rows:
            return 0
        self._cursor.executemany(_placeholders(sql), [tuple(row) for row in rows])
        return self._cursor.rowcount

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(_placeholders(sql), tuple(params))
        return self._cursor.fetchall()


class PostgresLedger(SqlLedger):
    """The ledger in the PostgreSQL database at ``url`` (``postgresql://`` or ``postgres://``).

    One connection, opened at once so that a wrong URL fails here, and opened again if the
    server drops it. Threads of a process share it, one transaction at a time.
    """

    dialect = "postgres"
    _LOCK_ROWS = " FOR UPDATE"
    _SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        url: str,
        *,
        billing_mode: BillingMode = "hourly",
        owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
        connect_timeout: float = 10.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        super().__init__(
            billing_mode=billing_mode, owner=owner, clock=clock, migrations=migrations
        )
        self._url = url
        self.url = masked_url(url)
        self._connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._connection = self._connect()

    def __repr__(self) -> str:
        return f"PostgresLedger({self.url!r})"

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name="koogallery-ledger",
            )
        except psycopg.Error as error:
            raise TransientError(
                f"cannot connect to the ledger database {self.url} "
                f"({LEDGER_URL_VARIABLE}): {_without_password(str(error), self._url)}"
            ) from None

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Transaction]:
        with self._lock:
            if self._connection.closed or self._connection.broken:
                self._connection = self._connect()
            with self._connection.transaction(), self._connection.cursor() as cursor:
                yield _PostgresTransaction(cursor)

    def _lock_schema(self, tx: Transaction) -> None:
        tx.rows("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    def _table_exists(self, tx: Transaction, table: str) -> bool:
        ((exists,),) = tx.rows("SELECT to_regclass(?) IS NOT NULL", (table,))
        return bool(exists)

    def _insert_unseen(
        self, tx: Transaction, rows: Sequence[NewRow], *, now: datetime
    ) -> set[str]:
        """One statement for the whole batch; ``RETURNING`` names the rows this transaction
        inserted, as opposed to rows a concurrent one inserted first."""
        if not rows:
            return set()

        batch = [
            {
                "metering_sn": row.record.sn,
                "record_json": row.record.to_json_dict(),
                "instance_id": row.record.instance_id,
                "begin_time": _iso(row.record.begin_time),
                "end_time": _iso(row.record.end_time),
                "usage_value": format_usage_value(row.record.usage_value),
                "relate_pkg_instance": row.record.relate_pkg_instance,
                "status": row.status.value,
                "settled_at": _iso(row.settled_at),
                "last_error": row.last_error,
                "lease_owner": row.lease_owner,
                "lease_expires": _iso(row.lease_expires),
            }
            for row in rows
        ]
        found = tx.rows(_INSERT_UNSEEN, (now, now, json.dumps(batch)))
        return {inserted for (inserted,) in found}

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, object]:
        return f"{column} = ANY(?)", list(values)

    def _in_windows(self, windows: Sequence[Window]) -> tuple[str, Sequence[object]]:
        """Three parallel arrays, one per column of the window."""
        condition = (
            "(instance_id, begin_time, end_time) IN "
            "(SELECT * FROM unnest(?::text[], ?::timestamptz[], ?::timestamptz[]))"
        )
        instance_ids, begins, ends = zip(*windows, strict=True)
        return condition, (list(instance_ids), list(begins), list(ends))

    def _db_time(self, moment: datetime) -> object:
        return moment.astimezone(timezone.utc)

    def _read_time(self, value: Any) -> datetime:
        if not isinstance(value, datetime):
            raise TypeError(f"expected a timestamp from the database, got {value!r}")
        return value.astimezone(timezone.utc)

    def _read_json(self, value: Any) -> Any:
        return value


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()


def _placeholders(sql: str) -> str:
    return sql.replace("?", "%s")


def _without_password(text: str, url: str) -> str:
    """The driver's message with the URL's password blanked, should the message echo it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text
