"""The ledger in one SQLite file: the embedded default, nothing to run beside the function.

Every write runs in a ``BEGIN IMMEDIATE`` transaction, which takes the database's write lock
at once: two processes claiming at the same moment take turns, each seeing what the other
committed, so they can never both lease a record. The file runs in WAL mode, so readers never
wait for the writer, with ``synchronous=FULL``: a commit returns once the WAL is synced, so a
committed claim or outcome survives a crash of the process and a power loss of the machine.

    ledger = SqliteLedger(".ledger/usage.db")
    ledger.migrate()

Times are stored as fixed-width ISO-8601 text in UTC (``2026-12-04T08:00:00.000000Z``), which
sorts and compares like the times themselves; usage values as decimal text, never floats.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from koogallery.ledger.cutoffs import BillingMode
from koogallery.ledger.migrations import MIGRATIONS, Migration
from koogallery.ledger.rules import NewRow, Window, window_of
from koogallery.ledger.sql import SqlLedger, Transaction

__all__ = ["SqliteLedger"]

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_WAL_RETRY_SECONDS = 0.02

_CACHE_KIB = 32 * 1024
"""SQLite's page cache for the ledger's connection (its default is 2 MiB). A ``metering_sn`` is
a hash, so the thousand rows of one claim land all over its index: with a small cache, pages
are read, spilled and read again inside one transaction."""

_CHECKPOINT_PAGES = 8192
"""WAL pages (4 KiB each) written before a commit copies them into the database file (the
default is 1000). A ``metering_sn`` index page changed by many batches is then copied once per
checkpoint instead of many times. Durability does not depend on it (every commit syncs the
WAL); the WAL file grows to about 32 MiB, and the commit that checkpoints takes longer."""

_TIME_CACHE_SIZE = 4096
"""Distinct moments and time texts remembered. A batch shares a few hundred window boundaries
and one ``now`` across thousands of rows, so a small cache answers nearly every lookup; when it
is full it starts again, which bounds its memory whatever the input."""

_Key = TypeVar("_Key")
_Value = TypeVar("_Value")

_texts_by_moment: dict[datetime, str] = {}
_moments_by_text: dict[str, datetime] = {}


class _SqliteTransaction:
    """A transaction on the ledger's one connection."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._connection.execute(sql, tuple(params)).rowcount

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        if not rows:
            return 0
        return self._connection.executemany(sql, [tuple(row) for row in rows]).rowcount

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._connection.execute(sql, tuple(params)).fetchall()


class SqliteLedger(SqlLedger):
    """The ledger in the SQLite file at ``path`` (``":memory:"`` for a private, temporary one).

    The parent directory is created when missing. ``busy_timeout`` is how long, in seconds, a
    transaction waits for another process's write lock before it gives up. One connection is
    shared by the threads of a process, one transaction at a time.
    """

    dialect = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        billing_mode: BillingMode = "hourly",
        owner: str | None = None,
        clock: Callable[[], datetime] | None = None,
        busy_timeout: float = 30.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        super().__init__(
            billing_mode=billing_mode, owner=owner, clock=clock, migrations=migrations
        )
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)

        self._lock = threading.RLock()
        self._connection = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._use_wal(busy_timeout)
        self._connection.execute("PRAGMA synchronous = FULL")
        self._connection.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        self._connection.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")

    def _use_wal(self, timeout: float) -> None:
        """Switch the file to WAL mode, waiting out another process doing the same.

        The switch needs the file to itself, and SQLite answers "locked" at once instead of
        waiting when two connections ask together, so the wait is done here. Once a file is in
        WAL mode (which it keeps), asking again costs nothing.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
            time.sleep(_WAL_RETRY_SECONDS)

    def __repr__(self) -> str:
        return f"SqliteLedger({self.path!r})"

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Transaction]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SqliteTransaction(self._connection)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def _lock_schema(self, tx: Transaction) -> None:
        """Nothing to add: ``BEGIN IMMEDIATE`` already holds the database's write lock."""

    def _table_exists(self, tx: Transaction, table: str) -> bool:
        found = tx.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        return bool(found)

    def _insert_unseen(
        self, tx: Transaction, rows: Sequence[NewRow], *, now: datetime
    ) -> set[str]:
        """No other writer can run inside ``BEGIN IMMEDIATE``: what is absent now stays absent
        until the insert. A row is new when neither its ``metering_sn`` nor its usage window is
        stored yet; of two new rows for one window, the first in ``rows`` is inserted."""
        if not rows:
            return set()

        condition, values = self._in("metering_sn", [row.record.sn for row in rows])
        query = f"SELECT metering_sn FROM usage_records WHERE {condition}"  # noqa: S608
        existing = {sn for (sn,) in tx.rows(query, (values,))}
        unseen = [row for row in rows if row.record.sn not in existing]
        keys = [self._window_key(window_of(row.record)) for row in unseen]
        held = self._held_windows(tx, keys)

        fresh = []
        for row, window in zip(unseen, keys, strict=True):
            if window not in held:
                held.add(window)
                fresh.append(row)
        self._insert_rows(tx, fresh, now=now)
        return {row.record.sn for row in fresh}

    def _maybe_missing(self, tx: Transaction, sns: Sequence[str]) -> Sequence[str] | None:
        """One query that returns only the absent ``metering_sn`` values: in the usual settle,
        none, so nothing is fetched. Inside ``BEGIN IMMEDIATE`` no other writer can add one
        before the insert."""
        if not sns:
            return []
        found = tx.rows(
            "SELECT value FROM json_each(?) WHERE NOT EXISTS "
            "(SELECT 1 FROM usage_records WHERE metering_sn = value) ORDER BY key",
            (json.dumps(list(sns)),),
        )
        return [sn for (sn,) in found]

    def _held_windows(
        self, tx: Transaction, keys: Sequence[tuple[str, ...]]
    ) -> set[tuple[str, ...]]:
        """Which of the windows (as :meth:`_window_key` gives them) a stored row holds."""
        if not keys:
            return set()
        condition, values = self._in_window_keys(keys)
        query = (
            "SELECT instance_id, begin_time, end_time FROM usage_records "  # noqa: S608
            f"WHERE window_rank = 0 AND {condition}"
        )
        return {tuple(found) for found in tx.rows(query, values)}

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, object]:
        """One JSON array parameter instead of one per value: SQLite caps the parameters of a
        statement, and a claim may hold thousands of records."""
        condition = f"{column} IN (SELECT value FROM json_each(?))"  # noqa: S608
        return condition, json.dumps(list(values))

    def _in_windows(self, windows: Sequence[Window]) -> tuple[str, Sequence[object]]:
        """One JSON array of ``[instance_id, begin_time, end_time]`` triples, times as stored."""
        return self._in_window_keys([self._window_key(window) for window in windows])

    def _in_window_keys(self, keys: Sequence[tuple[str, ...]]) -> tuple[str, Sequence[object]]:
        """:meth:`_in_windows` for windows already in their stored form."""
        condition = (
            "(instance_id, begin_time, end_time) IN (SELECT json_extract(value, '$[0]'), "
            "json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?))"
        )
        return condition, (json.dumps(keys),)

    def _window_key(self, window: Window) -> tuple[str, ...]:
        """A usage window as its columns hold it."""
        instance_id, begin_time, end_time = window
        return (instance_id, _time_text(begin_time), _time_text(end_time))

    def _db_time(self, moment: datetime) -> object:
        return _time_text(moment)

    def _read_time(self, value: Any) -> datetime:
        if type(value) is not str:
            return _parse_time_text(str(value))
        moment = _moments_by_text.get(value)
        if moment is None:
            moment = _parse_time_text(value)
            _remember(_moments_by_text, value, moment)
        return moment

    def _read_json(self, value: Any) -> Any:
        return json.loads(value)


def _time_text(moment: datetime) -> str:
    """A moment as stored. A UTC moment is formatted once and remembered: every row of a batch
    repeats ``now`` and shares its window boundaries with many others. Other moments are
    converted every time, since a naive one means whatever the machine's zone says."""
    if moment.tzinfo is not timezone.utc or type(moment) is not datetime:
        return moment.astimezone(timezone.utc).strftime(_TIME_FORMAT)
    text = _texts_by_moment.get(moment)
    if text is None:
        text = moment.strftime(_TIME_FORMAT)
        _remember(_texts_by_moment, moment, text)
    return text


def _parse_time_text(text: str) -> datetime:
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=timezone.utc)


def _remember(cache: dict[_Key, _Value], key: _Key, value: _Value) -> None:
    if len(cache) >= _TIME_CACHE_SIZE:
        cache.clear()
    cache[key] = value
