"""The ledger's schema, as an ordered list of migrations, one SQL script per backend.

A migration is applied once, in its own transaction, and recorded in ``schema_version``;
``Ledger.migrate()`` applies the ones a database lacks, oldest first, under a lock that makes
two processes migrating at once take turns (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an
advisory lock). A migration, once released, is never edited: a change is a new migration.

Tables (column types per backend: SQLite keeps times as fixed-width ISO-8601 text in UTC and
decimals as text, so both sort and compare correctly as text; PostgreSQL uses ``TIMESTAMPTZ``,
``NUMERIC`` and ``JSONB``):

- ``usage_records``: one row per ``metering_sn``: the stored copy, the columns to search by,
  status, attempts, first and last sight, last error, and the lease (owner, expiry). Since
  migration 3, also one row per usage window (``instance_id``, ``begin_time``, ``end_time``),
  as KooGallery keeps only the first record of a window: ``window_rank`` is 0 for the row
  holding its window, and 1, 2... only for rows that already shared one before (see below).
  Searches by instance use the window index (migration 4 dropped the one by instance alone).
- ``record_conflicts``: each incoming copy that disagreed with a stored record, either another
  copy of its ``metering_sn`` or a record for a usage window the stored record holds;
  ``metering_sn`` names the stored record, ``record_json`` is the incoming copy.
- ``push_attempts``: the audit trail of HTTP exchanges.
- ``dead_letters``: messages and records that can never succeed as they are.
- ``bill_runs`` (migration 2): every bill fetch of a cycle, its status and request ids; a run
  that found new content also holds that content as a new version (never overwritten).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "SCHEMA_VERSION_TABLE",
    "Dialect",
    "Migration",
    "check_migrations",
]

Dialect = Literal["sqlite", "postgres"]


@dataclass(frozen=True)
class Migration:
    """One step of the schema: a version, a name a person understands, and its statements."""

    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgres


SCHEMA_VERSION_TABLE: dict[Dialect, str] = {
    "sqlite": """
        CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TEXT NOT NULL
        )""",
    "postgres": """
        CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL
        )""",
}
"""Created before any migration runs; the one table no migration owns."""

_STATUSES = "'pending', 'accepted', 'duplicate', 'dead_lettered', 'conflict'"
_STATES = "'open', 'retried', 'discarded'"

_INITIAL_SQLITE = (
    f"""
    CREATE TABLE usage_records (
        metering_sn TEXT PRIMARY KEY,
        record_json TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        begin_time TEXT NOT NULL,
        end_time TEXT NOT NULL,
        usage_value TEXT NOT NULL,
        relate_pkg_instance TEXT,
        status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
        attempts INTEGER NOT NULL DEFAULT 0,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        settled_at TEXT,
        last_error TEXT,
        lease_owner TEXT,
        lease_expires TEXT
    )""",
    "CREATE INDEX usage_records_by_status ON usage_records (status, first_seen, metering_sn)",
    "CREATE INDEX usage_records_by_begin ON usage_records (begin_time, metering_sn)",
    "CREATE INDEX usage_records_by_instance ON usage_records (instance_id, begin_time)",
    """
    CREATE TABLE record_conflicts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        metering_sn TEXT NOT NULL,
        record_json TEXT NOT NULL,
        seen_at TEXT NOT NULL
    )""",
    "CREATE INDEX record_conflicts_by_sn ON record_conflicts (metering_sn)",
    """
    CREATE TABLE push_attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at TEXT NOT NULL,
        owner TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        record_count INTEGER NOT NULL,
        latency_ms REAL NOT NULL,
        http_status INTEGER,
        error_code TEXT,
        request_id TEXT,
        error TEXT
    )""",
    f"""
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        origin_trigger TEXT NOT NULL,
        origin_json TEXT NOT NULL,
        position INTEGER,
        reason TEXT NOT NULL,
        field TEXT,
        error_code TEXT,
        record_json TEXT,
        raw TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ({_STATES})),
        resolved_at TEXT,
        note TEXT
    )""",
    "CREATE INDEX dead_letters_by_state ON dead_letters (state, id)",
)

_INITIAL_POSTGRES = (
    f"""
    CREATE TABLE usage_records (
        metering_sn TEXT PRIMARY KEY,
        record_json JSONB NOT NULL,
        instance_id TEXT NOT NULL,
        begin_time TIMESTAMPTZ NOT NULL,
        end_time TIMESTAMPTZ NOT NULL,
        usage_value NUMERIC NOT NULL,
        relate_pkg_instance TEXT,
        status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
        attempts INTEGER NOT NULL DEFAULT 0,
        first_seen TIMESTAMPTZ NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL,
        settled_at TIMESTAMPTZ,
        last_error TEXT,
        lease_owner TEXT,
        lease_expires TIMESTAMPTZ
    )""",
    "CREATE INDEX usage_records_by_status ON usage_records (status, first_seen, metering_sn)",
    "CREATE INDEX usage_records_by_begin ON usage_records (begin_time, metering_sn)",
    "CREATE INDEX usage_records_by_instance ON usage_records (instance_id, begin_time)",
    """
    CREATE TABLE record_conflicts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        metering_sn TEXT NOT NULL,
        record_json JSONB NOT NULL,
        seen_at TIMESTAMPTZ NOT NULL
    )""",
    "CREATE INDEX record_conflicts_by_sn ON record_conflicts (metering_sn)",
    """
    CREATE TABLE push_attempts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        started_at TIMESTAMPTZ NOT NULL,
        owner TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        record_count INTEGER NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL,
        http_status INTEGER,
        error_code TEXT,
        request_id TEXT,
        error TEXT
    )""",
    f"""
    CREATE TABLE dead_letters (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created_at TIMESTAMPTZ NOT NULL,
        origin_trigger TEXT NOT NULL,
        origin_json JSONB NOT NULL,
        position INTEGER,
        reason TEXT NOT NULL,
        field TEXT,
        error_code TEXT,
        record_json JSONB,
        raw TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ({_STATES})),
        resolved_at TIMESTAMPTZ,
        note TEXT
    )""",
    "CREATE INDEX dead_letters_by_state ON dead_letters (state, id)",
)

_BILL_STATUSES = (
    "'complete', 'unchanged', 'amended', 'not_ready', 'not_entitled', 'unsupported', 'failed'"
)

_BILL_RUNS_SQLITE = (
    f"""
    CREATE TABLE bill_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        site TEXT NOT NULL,
        cycle TEXT NOT NULL,
        run_at TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ({_BILL_STATUSES})),
        version INTEGER,
        content_hash TEXT,
        content_json TEXT,
        request_ids TEXT NOT NULL,
        error_code TEXT,
        error_msg TEXT
    )""",
    "CREATE INDEX bill_runs_by_cycle ON bill_runs (site, cycle, id)",
    "CREATE UNIQUE INDEX bill_versions ON bill_runs (site, cycle, version) "
    "WHERE content_json IS NOT NULL",
)

_BILL_RUNS_POSTGRES = (
    f"""
    CREATE TABLE bill_runs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        site TEXT NOT NULL,
        cycle TEXT NOT NULL,
        run_at TIMESTAMPTZ NOT NULL,
        status TEXT NOT NULL CHECK (status IN ({_BILL_STATUSES})),
        version INTEGER,
        content_hash TEXT,
        content_json JSONB,
        request_ids JSONB NOT NULL,
        error_code TEXT,
        error_msg TEXT
    )""",
    "CREATE INDEX bill_runs_by_cycle ON bill_runs (site, cycle, id)",
    "CREATE UNIQUE INDEX bill_versions ON bill_runs (site, cycle, version) "
    "WHERE content_json IS NOT NULL",
)

_ONE_RECORD_PER_WINDOW = (
    "ALTER TABLE usage_records ADD COLUMN window_rank INTEGER NOT NULL DEFAULT 0",
    """
    UPDATE usage_records SET window_rank = (
        SELECT COUNT(*) FROM usage_records AS other
        WHERE other.instance_id = usage_records.instance_id
            AND other.begin_time = usage_records.begin_time
            AND other.end_time = usage_records.end_time
            AND (
                CASE other.status WHEN 'accepted' THEN 0 WHEN 'duplicate' THEN 0
                    WHEN 'pending' THEN 1 WHEN 'dead_lettered' THEN 2 ELSE 3 END,
                other.first_seen,
                other.metering_sn
            ) < (
                CASE usage_records.status WHEN 'accepted' THEN 0 WHEN 'duplicate' THEN 0
                    WHEN 'pending' THEN 1 WHEN 'dead_lettered' THEN 2 ELSE 3 END,
                usage_records.first_seen,
                usage_records.metering_sn
            )
    )
    WHERE EXISTS (
        SELECT 1 FROM usage_records AS other
        WHERE other.instance_id = usage_records.instance_id
            AND other.begin_time = usage_records.begin_time
            AND other.end_time = usage_records.end_time
            AND other.metering_sn <> usage_records.metering_sn
    )""",
    "UPDATE usage_records SET status = 'conflict' WHERE window_rank > 0",
    "CREATE UNIQUE INDEX usage_records_by_window "
    "ON usage_records (instance_id, begin_time, end_time, window_rank)",
)
"""Migration 3, the same SQL on both backends.

A database may already hold several rows for one window, each with its own ``metering_sn``
(another ``relate_pkg_instance``, or a caller's own ``metering_sn``). KooGallery kept one of
them; the others are usage reported but lost. Each such window keeps one holder, of rank 0:
the row KooGallery holds (accepted or duplicate), else the one it may still get (pending),
else a dead-lettered one, the first seen among equals. The others are ranked after it and set
to ``conflict``, so that they are never pushed and a person sees them.

The unique index then holds every window to one row of rank 0, and every new row has rank 0.
It does not depend on ``status``, so no later change of status (a lease owner's late
acceptance, say) can ever break it.
"""

_DROP_INSTANCE_INDEX = ("DROP INDEX IF EXISTS usage_records_by_instance",)
"""Migration 4, the same SQL on both backends.

``usage_records_by_window`` (migration 3) starts with ``instance_id, begin_time``, so it
answers every search by instance that ``usage_records_by_instance`` did. The older index only
cost work: every record written kept one more index up to date.
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "usage records, conflicts, push attempts and dead letters",
        sqlite=_INITIAL_SQLITE,
        postgres=_INITIAL_POSTGRES,
    ),
    Migration(
        2,
        "bill runs and versions",
        sqlite=_BILL_RUNS_SQLITE,
        postgres=_BILL_RUNS_POSTGRES,
    ),
    Migration(
        3,
        "one record per usage window; rows already sharing one, but its holder, in conflict",
        sqlite=_ONE_RECORD_PER_WINDOW,
        postgres=_ONE_RECORD_PER_WINDOW,
    ),
    Migration(
        4,
        "no index by instance alone: the window index already starts with the instance",
        sqlite=_DROP_INSTANCE_INDEX,
        postgres=_DROP_INSTANCE_INDEX,
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def check_migrations(migrations: Sequence[Migration]) -> tuple[Migration, ...]:
    """Refuse a list whose versions are not 1, 2, 3...: a gap or a repeat is a release error."""
    versions = [migration.version for migration in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must run 1, 2, 3... without gaps, got {versions}")
    return tuple(migrations)
