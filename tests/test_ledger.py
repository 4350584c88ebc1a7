"""The usage ledger's guarantees, each pinned on both backends (SQLite and PostgreSQL).

Every test that touches a database runs twice, as ``[sqlite]`` and ``[postgres]``: through the
``ledger`` fixture (a migrated ledger owned by ``run-a``) or the ``ledger_url`` fixture (the URL
of an empty database, for tests that open ledgers themselves, in other threads or processes).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import koogallery.ledger.sql
from koogallery.client import Attempt, RecordOutcome, Status
from koogallery.errors import ConfigurationError, TransientError
from koogallery.events import Origin
from koogallery.ledger import (
    LATEST_VERSION,
    MIGRATIONS,
    BillingMode,
    Claim,
    Ledger,
    LedgerRecord,
    RecordStatus,
    SqliteLedger,
    collection_moment,
    open_ledger,
)
from koogallery.ledger.migrations import Migration
from koogallery.ledger.rules import EXPIRED_REASON, rebuild_record, stored_json
from koogallery.ledger.sql import SqlLedger, Transaction
from koogallery.ledger.urls import sqlite_path
from koogallery.models import UsageRecord, canonical_json, usage_body
from koogallery.pipeline import DeadLetter
from tests.postgres_fixtures import postgres_schema_url, postgres_url  # noqa: F401

UTC = timezone.utc
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
MORNING = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
BACKENDS = ["sqlite", "postgres"]


def usage(
    instance: str = "inst-1",
    *,
    begin: datetime = MORNING,
    end: datetime | None = None,
    value: str = "12.5",
    now: datetime = NOW,
    **extra: Any,
) -> UsageRecord:
    """A valid record of one instance's usage over one hour (or ``begin`` to ``end``)."""
    data = {
        "instance_id": instance,
        "begin_time": begin.isoformat(),
        "end_time": (end or begin + timedelta(hours=1)).isoformat(),
        "usage_value": value,
        **extra,
    }
    return UsageRecord.parse(data, now=now)


def at(text: str) -> datetime:
    """A UTC moment written as ``2026-12-04T10:15:00Z``."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def batch(count: int, prefix: str = "inst") -> list[UsageRecord]:
    return [usage(f"{prefix}-{index:04d}") for index in range(count)]


def outcomes(
    records: list[UsageRecord],
    status: Status,
    reason: str | None = None,
    error_code: str | None = None,
) -> list[RecordOutcome]:
    return [RecordOutcome(record, status, reason, error_code) for record in records]


def row(ledger: Ledger, record: UsageRecord) -> LedgerRecord:
    (found,) = [item for item in ledger.records() if item.metering_sn == record.sn]
    return found


def statuses(ledger: Ledger) -> dict[str, RecordStatus]:
    return {item.metering_sn: item.status for item in ledger.records()}


def insert_row(ledger: Ledger, record: UsageRecord, status: str, first_seen: datetime) -> None:
    """Write a record row with plain SQL, past every rule of the ledger: what an older release
    may have left in a database, or what the database itself must refuse."""
    assert isinstance(ledger, SqlLedger)
    with ledger._transaction(write=True) as tx:
        tx.execute(
            "INSERT INTO usage_records (metering_sn, record_json, instance_id, begin_time, "
            "end_time, usage_value, relate_pkg_instance, status, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.sn,
                stored_json(record),
                record.instance_id,
                ledger._db_time(record.begin_time),
                ledger._db_time(record.end_time),
                str(record.usage_value),
                record.relate_pkg_instance,
                status,
                ledger._db_time(first_seen),
                ledger._db_time(first_seen),
            ),
        )


def letter(
    trigger: str,
    index: int,
    raw: str,
    *,
    reason: str = "not a usage record",
    record: dict[str, Any] | None = None,
    **fields: Any,
) -> DeadLetter:
    origin = Origin(trigger, f"{trigger.lower()}-source", index, message_id=f"m-{index}")
    return DeadLetter(origin=origin, reason=reason, record=record, raw=raw, **fields)


def _url_for(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_schema_url")
    return url


def _backend_ledger(url: str, **options: Any) -> Ledger:
    """A backend object without ``open_ledger``, for options only the constructors take."""
    if url.startswith("sqlite"):
        return SqliteLedger(sqlite_path(url), **options)
    from koogallery.ledger.postgres import PostgresLedger

    return PostgresLedger(url, **options)


@pytest.fixture(params=BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of each backend."""
    return _url_for(request.param, request, tmp_path)


@pytest.fixture(params=BACKENDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A migrated ledger of each backend, whose own pushes are owned by ``run-a``."""
    with open_ledger(_url_for(request.param, request, tmp_path), owner="run-a") as opened:
        yield opened


# Migrations


def test_a_fresh_database_ends_at_the_latest_schema_version(ledger_url: str) -> None:
    with open_ledger(ledger_url) as ledger:
        assert ledger.schema_version() == LATEST_VERSION == len(MIGRATIONS)


def test_migrating_again_is_a_no_op_that_keeps_every_record(ledger: Ledger) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW)

    ledger.migrate()
    ledger.migrate()

    assert ledger.schema_version() == LATEST_VERSION
    assert [item.record for item in ledger.records()] == [record]


def test_a_new_migration_is_applied_once_and_older_code_refuses_the_newer_schema(
    ledger_url: str,
) -> None:
    added = Migration(
        LATEST_VERSION + 1,
        "a column for a test",
        sqlite=("ALTER TABLE push_attempts ADD COLUMN region TEXT",),
        postgres=("ALTER TABLE push_attempts ADD COLUMN region TEXT",),
    )
    open_ledger(ledger_url).close()

    with _backend_ledger(ledger_url, migrations=(*MIGRATIONS, added)) as newer:
        newer.migrate()
        newer.migrate()
        assert newer.schema_version() == LATEST_VERSION + 1

    with pytest.raises(ConfigurationError) as refused:
        open_ledger(ledger_url)
    assert str(refused.value) == (
        f"the ledger schema is at version {LATEST_VERSION + 1}, newer than this code knows "
        f"({LATEST_VERSION}): upgrade koogallery-functions before using this ledger"
    )


def _gather(workers: list[Any], results: Any, timeout: float = 120) -> list[Any]:
    """Every worker's result; fails at once, instead of after the timeout, if one died."""
    gathered: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(gathered) < len(workers):
        assert time.monotonic() < deadline, "the workers did not finish in time"
        try:
            gathered.append(results.get(timeout=0.5))
        except queue.Empty:
            dead = [worker.exitcode for worker in workers if worker.exitcode not in (None, 0)]
            assert not dead, f"a worker process failed with exit code {dead[0]}"
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0] * len(workers)
    return gathered


def _migrate_in_process(url: str, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)
    with open_ledger(url) as ledger:
        results.put(ledger.schema_version())


def test_two_processes_migrating_a_fresh_database_at_once_both_succeed(ledger_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_migrate_in_process, args=(ledger_url, barrier, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()

    versions = _gather(workers, results)

    assert versions == [LATEST_VERSION, LATEST_VERSION]


def test_rows_sharing_a_usage_window_before_migration_3_keep_one_holder_the_rest_in_conflict(
    ledger_url: str,
) -> None:
    pending_first = usage("inst-1", value="1")
    accepted = usage("inst-1", value="2", relate_pkg_instance="pkg-2")
    own_sn = usage("inst-1", value="3", metering_sn="seller-sn-3")
    alone = usage("inst-2")
    dead, dead_later = usage("inst-3", value="4"), usage("inst-3", metering_sn="seller-sn-5")
    with _backend_ledger(ledger_url, migrations=MIGRATIONS[:2]) as older:
        older.migrate()
        insert_row(older, pending_first, "pending", NOW - timedelta(hours=3))
        insert_row(older, accepted, "accepted", NOW - timedelta(hours=2))
        insert_row(older, own_sn, "pending", NOW - timedelta(hours=1))
        insert_row(older, alone, "pending", NOW - timedelta(hours=1))
        insert_row(older, dead_later, "dead_lettered", NOW - timedelta(hours=1))
        insert_row(older, dead, "dead_lettered", NOW - timedelta(hours=2))

    with open_ledger(ledger_url) as ledger:
        assert ledger.schema_version() == LATEST_VERSION
        assert statuses(ledger) == {
            pending_first.sn: RecordStatus.CONFLICT,
            accepted.sn: RecordStatus.ACCEPTED,
            own_sn.sn: RecordStatus.CONFLICT,
            alone.sn: RecordStatus.PENDING,
            dead.sn: RecordStatus.DEAD_LETTERED,
            dead_later.sn: RecordStatus.CONFLICT,
        }
        assert ledger.status(now=NOW).counts == {
            RecordStatus.PENDING: 1,
            RecordStatus.ACCEPTED: 1,
            RecordStatus.DUPLICATE: 0,
            RecordStatus.DEAD_LETTERED: 1,
            RecordStatus.CONFLICT: 3,
        }
        assert row(ledger, own_sn).record == own_sn

        again = ledger.claim([pending_first, alone], owner="run-a", now=NOW)
        newcomer = usage("inst-1", relate_pkg_instance="pkg-9")
        refused = ledger.claim([newcomer], owner="run-a", now=NOW)

    assert (again.held, again.to_push) == ([pending_first], [alone])
    assert refused.conflicts == [(newcomer, accepted)]


# Claim


def _record_indexes(ledger: Ledger) -> set[str]:
    """The names of the indexes declared on ``usage_records`` (not the primary key's)."""
    assert isinstance(ledger, SqlLedger)
    if isinstance(ledger, SqliteLedger):
        query = (
            "SELECT name FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'usage_records' AND sql IS NOT NULL"
        )
    else:
        query = (
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = 'usage_records' AND indexname <> 'usage_records_pkey'"
        )
    with ledger._transaction(write=False) as tx:
        return {name for (name,) in tx.rows(query)}


def test_migration_4_drops_the_instance_index_and_searches_by_instance_still_find_records(
    ledger_url: str,
) -> None:
    kept, other = usage("inst-1"), usage("inst-2")
    with _backend_ledger(ledger_url, migrations=MIGRATIONS[:3]) as older:
        older.migrate()
        assert "usage_records_by_instance" in _record_indexes(older)
        insert_row(older, kept, "pending", NOW - timedelta(hours=1))
        insert_row(older, other, "accepted", NOW - timedelta(hours=1))

    with open_ledger(ledger_url) as ledger:
        assert _record_indexes(ledger) == {
            "usage_records_by_status",
            "usage_records_by_begin",
            "usage_records_by_window",
        }
        assert [item.record for item in ledger.records(instance_id="inst-1")] == [kept]


@pytest.mark.parametrize(
    "record",
    [
        usage(),
        usage(value="100", relate_pkg_instance="pkg-1", product_id="prod-1"),
        usage(value="0.0001", record_time=(MORNING + timedelta(minutes=30)).isoformat()),
        usage(metering_sn='seller "sn" \\ 1\t'),
        usage("inst-\u00e9\u4e2d", value="99999999.9999"),
    ],
    ids=["plain", "optional-fields", "record-time", "escaped-sn", "non-ascii-instance"],
)
def test_the_stored_copy_is_the_canonical_json_of_the_record(record: UsageRecord) -> None:
    expected = canonical_json(record.to_json_dict()).decode("ascii")

    assert stored_json(record) == expected
    assert rebuild_record(json.loads(stored_json(record))) == record


def test_a_sqlite_ledger_syncs_every_commit_and_searches_by_instance_through_an_index(
    tmp_path: Path,
) -> None:
    with SqliteLedger(tmp_path / "ledger.db") as ledger:
        ledger.migrate()
        connection = ledger._connection
        settings = [
            connection.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "synchronous", "wal_autocheckpoint", "cache_size")
        ]
        plan = connection.execute(
            "EXPLAIN QUERY PLAN SELECT metering_sn FROM usage_records WHERE instance_id = ?",
            ("inst-1",),
        ).fetchall()

    assert settings == ["wal", 2, 8192, -32768]
    assert [row[-1] for row in plan] == [
        "SEARCH usage_records USING INDEX usage_records_by_window (instance_id=?)"
    ]


def test_claim_inserts_unseen_records_as_pending_leased_to_the_owner(ledger: Ledger) -> None:
    first, second = usage("inst-1"), usage("inst-2", value="0.0001")

    claim = ledger.claim([first, second], owner="run-a", now=NOW, lease_seconds=60)

    assert claim.to_push == [first, second]
    assert claim.counts() == {
        "to_push": 2,
        "already_delivered": 0,
        "conflicts": 0,
        "in_flight": 0,
        "dead": 0,
        "late": 2,
        "held": 0,
        "expired": 0,
    }
    stored = row(ledger, second)
    assert stored.record == second
    assert (stored.instance_id, stored.usage_value) == ("inst-2", Decimal("0.0001"))
    assert (stored.begin_time, stored.end_time) == (MORNING, MORNING + timedelta(hours=1))
    assert stored.relate_pkg_instance is None
    assert stored.status is RecordStatus.PENDING
    assert (stored.attempts, stored.last_error, stored.settled_at) == (0, None, None)
    assert (stored.first_seen, stored.last_seen) == (NOW, NOW)
    assert (stored.lease_owner, stored.lease_expires) == ("run-a", NOW + timedelta(seconds=60))


def test_a_record_seen_again_only_moves_last_seen(ledger: Ledger) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW)

    ledger.claim([record], owner="run-a", now=NOW + timedelta(minutes=1))

    stored = row(ledger, record)
    assert (stored.first_seen, stored.last_seen) == (NOW, NOW + timedelta(minutes=1))
    assert stored.status is RecordStatus.PENDING


def test_a_repush_after_a_crash_sends_the_bytes_of_the_first_copy(ledger_url: str) -> None:
    first = [usage(f"inst-{index}", record_time="2026-12-04T09:00:00Z") for index in range(4)]
    again = [usage(f"inst-{index}", record_time="2026-12-04T11:59:00Z") for index in range(4)]
    crashed = open_ledger(ledger_url, owner="run-a")
    claim = crashed.claim(first, owner="run-a", now=NOW)
    crashed.observer("run-a").on_outcomes(outcomes(claim.to_push[:2], Status.ACCEPTED))
    crashed.close()

    with open_ledger(ledger_url) as ledger:
        later = NOW + timedelta(seconds=301)
        retry = ledger.claim(again, owner="run-b", now=later)

    assert retry.already_delivered == first[:2]
    assert retry.to_push == first[2:]
    assert usage_body(retry.to_push) == usage_body(first[2:])
    assert usage_body(retry.to_push) != usage_body(again[2:])


def test_a_record_repeated_within_a_batch_is_pushed_once(ledger: Ledger) -> None:
    record = usage()

    claim = ledger.claim([record, record], owner="run-a", now=NOW)

    assert claim.to_push == [record]


@pytest.mark.parametrize("status", [Status.ACCEPTED, Status.DUPLICATE])
def test_a_delivered_record_delivered_again_is_never_pushed_again(
    ledger: Ledger, status: Status
) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW)
    ledger.settle(outcomes([record], status), owner="run-a", now=NOW)

    claim = ledger.claim([record], owner="run-b", now=NOW + timedelta(hours=1))

    assert claim.already_delivered == [record]
    assert claim.to_push == []
    stored = row(ledger, record)
    assert stored.status is RecordStatus(status.value)
    assert (stored.attempts, stored.settled_at, stored.lease_owner) == (1, NOW, None)


def test_a_record_under_another_owners_live_lease_is_in_flight(ledger: Ledger) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW, lease_seconds=60)

    claim = ledger.claim([record], owner="run-b", now=NOW + timedelta(seconds=59))

    assert claim.in_flight == [record]
    assert claim.to_push == []
    assert row(ledger, record).lease_owner == "run-a"


def test_an_expired_lease_can_be_claimed_again(ledger: Ledger) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW, lease_seconds=60)

    claim = ledger.claim([record], owner="run-b", now=NOW + timedelta(seconds=60))

    assert claim.to_push == [record]
    stored = row(ledger, record)
    assert (stored.lease_owner, stored.lease_expires) == ("run-b", NOW + timedelta(seconds=360))


def test_a_record_older_than_21_days_is_dead_lettered_and_never_pushed(ledger: Ledger) -> None:
    begin = datetime(2026, 11, 13, 11, 0, tzinfo=UTC)
    fresh = usage("inst-fresh", begin=begin, now=begin + timedelta(hours=2))
    stale = usage("inst-stale", begin=begin, now=begin + timedelta(hours=2))
    ledger.claim([stale], owner="run-a", now=begin + timedelta(hours=2))

    on_the_day = ledger.claim([fresh], owner="run-a", now=begin + timedelta(days=21))
    a_second_later = ledger.claim(
        [stale], owner="run-a", now=begin + timedelta(days=21, seconds=1)
    )

    assert on_the_day.to_push == [fresh]
    assert a_second_later.dead == [stale]
    assert a_second_later.to_push == []
    stored = row(ledger, stale)
    assert (stored.status, stored.last_error) == (RecordStatus.DEAD_LETTERED, EXPIRED_REASON)
    assert EXPIRED_REASON == "expired: begin_time older than 21 days (MKT.9004)"


def test_an_unseen_expired_record_is_stored_dead_lettered(ledger: Ledger) -> None:
    record = usage(
        begin=datetime(2026, 11, 1, 8, 0, tzinfo=UTC), now=datetime(2026, 11, 2, tzinfo=UTC)
    )

    claim = ledger.claim([record], owner="run-a", now=NOW)

    assert (claim.dead, claim.to_push) == ([record], [])
    stored = row(ledger, record)
    assert (stored.status, stored.last_error, stored.settled_at) == (
        RecordStatus.DEAD_LETTERED,
        EXPIRED_REASON,
        NOW,
    )
    assert ledger.claim([record], owner="run-b", now=NOW).dead == [record]


def test_a_naive_time_is_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        ledger.claim([usage()], owner="run-a", now=datetime(2026, 12, 4, 12, 0))


# Conflicts


def test_another_usage_value_under_a_pending_metering_sn_is_a_conflict_held_for_a_person(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    stored, incoming = usage(value="12.5"), usage(value="13")
    assert stored.sn == incoming.sn
    ledger.claim([stored], owner="run-a", now=NOW)

    with caplog.at_level(logging.ERROR, logger="koogallery.ledger"):
        claim = ledger.claim([incoming], owner="run-b", now=NOW + timedelta(minutes=10))

    assert claim.conflicts == [(incoming, stored)]
    assert claim.to_push == []
    assert row(ledger, stored).status is RecordStatus.CONFLICT
    assert row(ledger, stored).record == stored
    assert ledger.status(now=NOW).conflicts == 1
    (logged,) = [item for item in caplog.records if item.levelno >= logging.ERROR]
    assert logged.__dict__["event"] == "ledger_conflict"
    assert logged.__dict__["stored_usage_value"] == "12.5"
    assert logged.__dict__["incoming_usage_value"] == "13"

    later = ledger.claim([stored], owner="run-b", now=NOW + timedelta(hours=1))
    assert (later.held, later.to_push) == ([stored], [])


def test_a_conflicting_copy_of_an_accepted_record_leaves_it_accepted(ledger: Ledger) -> None:
    stored, incoming = usage(value="12.5"), usage(value="99")
    ledger.claim([stored], owner="run-a", now=NOW)
    ledger.settle(outcomes([stored], Status.ACCEPTED), owner="run-a", now=NOW)

    claim = ledger.claim([incoming], owner="run-b", now=NOW)

    assert claim.conflicts == [(incoming, stored)]
    assert row(ledger, stored).status is RecordStatus.ACCEPTED
    assert ledger.status(now=NOW).conflicts == 1


def test_two_contents_for_one_metering_sn_in_one_batch_push_neither(ledger: Ledger) -> None:
    first, second = usage(value="1"), usage(value="2")

    claim = ledger.claim([first, second], owner="run-a", now=NOW)

    assert claim.conflicts == [(second, first)]
    assert (claim.held, claim.to_push) == ([first], [])
    assert row(ledger, first).status is RecordStatus.CONFLICT


def test_the_lease_owners_acceptance_wins_over_a_conflict_found_mid_push(ledger: Ledger) -> None:
    stored, incoming = usage(value="12.5"), usage(value="13")
    ledger.claim([stored], owner="run-a", now=NOW)
    ledger.claim([incoming], owner="run-b", now=NOW)

    ledger.settle(outcomes([stored], Status.ACCEPTED), owner="run-a", now=NOW)

    assert row(ledger, stored).status is RecordStatus.ACCEPTED


def test_a_record_for_a_window_a_pending_record_holds_is_a_conflict_and_the_holder_stays_pending(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    holder = usage(value="12.5")
    intruder = usage(value="12.5", relate_pkg_instance="pkg-2")
    assert holder.sn != intruder.sn
    ledger.claim([holder], owner="run-a", now=NOW, lease_seconds=60)

    with caplog.at_level(logging.ERROR, logger="koogallery.ledger"):
        claim = ledger.claim([intruder], owner="run-b", now=NOW + timedelta(seconds=10))

    assert claim.conflicts == [(intruder, holder)]
    assert claim.to_push == []
    assert [item.record for item in ledger.records()] == [holder]
    stored = row(ledger, holder)
    assert (stored.status, stored.lease_owner, stored.last_seen) == (
        RecordStatus.PENDING,
        "run-a",
        NOW,
    )
    assert ledger.status(now=NOW).conflicts == 1
    (logged,) = [item for item in caplog.records if item.levelno >= logging.ERROR]
    assert logged.getMessage() == (
        "usage record is for a usage window another metering_sn holds; "
        "the incoming copy was recorded and will not be pushed"
    )
    assert (logged.__dict__["conflict_on"], logged.__dict__["metering_sn"]) == (
        "usage_window",
        holder.sn,
    )
    assert logged.__dict__["incoming_metering_sn"] == intruder.sn

    later = ledger.claim([holder, intruder], owner="run-a", now=NOW + timedelta(minutes=5))
    assert (later.to_push, later.conflicts) == ([holder], [(intruder, holder)])


def test_a_callers_own_metering_sn_for_an_accepted_window_is_a_conflict_never_pushed(
    ledger: Ledger,
) -> None:
    holder = usage()
    ledger.claim([holder], owner="run-a", now=NOW)
    ledger.settle(outcomes([holder], Status.ACCEPTED), owner="run-a", now=NOW)
    own = usage(value="99", metering_sn="seller-sn-1")

    claim = ledger.claim([own], owner="run-b", now=NOW)

    assert claim.conflicts == [(own, holder)]
    assert (claim.to_push, claim.already_delivered) == ([], [])
    assert statuses(ledger) == {holder.sn: RecordStatus.ACCEPTED}
    assert ledger.status(now=NOW).conflicts == 1


def test_two_metering_sns_for_one_window_in_one_batch_push_the_first(ledger: Ledger) -> None:
    first = usage("inst-1", value="1", relate_pkg_instance="pkg-1")
    other = usage("inst-2")
    second = usage("inst-1", value="2", relate_pkg_instance="pkg-2")
    third = usage("inst-1", value="3", metering_sn="seller-sn-3")

    claim = ledger.claim([first, other, second, third, second], owner="run-a", now=NOW)

    assert claim.to_push == [first, other]
    assert claim.conflicts == [(second, first), (third, first)]
    assert statuses(ledger) == {first.sn: RecordStatus.PENDING, other.sn: RecordStatus.PENDING}
    assert ledger.status(now=NOW).conflicts == 2


def test_a_stored_holder_keeps_its_window_when_the_intruder_comes_first_in_the_batch(
    ledger: Ledger,
) -> None:
    holder = usage()
    intruder = usage(relate_pkg_instance="pkg-2")
    ledger.claim([holder], owner="run-a", now=NOW)

    claim = ledger.claim([intruder, holder], owner="run-a", now=NOW)

    assert (claim.to_push, claim.conflicts) == ([holder], [(intruder, holder)])


def test_the_database_itself_refuses_a_second_row_for_a_usage_window(ledger: Ledger) -> None:
    holder = usage()
    ledger.claim([holder], owner="run-a", now=NOW)

    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
        insert_row(ledger, usage(relate_pkg_instance="pkg-2"), "pending", NOW)

    assert statuses(ledger) == {holder.sn: RecordStatus.PENDING}


def test_concurrent_claims_of_other_metering_sns_for_the_same_windows_push_one_each(
    ledger_url: str,
) -> None:
    hours = [MORNING - timedelta(hours=k) for k in range(60)]
    packages = ("pkg-a", "pkg-b", "pkg-c")
    batches = {
        package: [usage(begin=hour, relate_pkg_instance=package) for hour in hours]
        for package in packages
    }
    open_ledger(ledger_url).close()
    results: dict[str, list[Claim]] = {}
    barrier = threading.Barrier(len(packages))

    def claim_all(package: str, order: list[UsageRecord]) -> None:
        with open_ledger(ledger_url) as ledger:
            barrier.wait(timeout=30)
            claims = [
                ledger.claim(order[start : start + 10], owner=package, now=NOW)
                for start in range(0, len(order), 10)
            ]
        results[package] = claims

    threads = [
        threading.Thread(target=claim_all, args=(package, batches[package][::step]))
        for package, step in zip(packages, (1, -1, 1), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    claims = [claim for per_package in results.values() for claim in per_package]
    pushed = [record for claim in claims for record in claim.to_push]
    refused = [pair for claim in claims for pair in claim.conflicts]
    assert sorted(record.begin_time for record in pushed) == sorted(hours)
    assert len(refused) == len(hours) * (len(packages) - 1)
    holders = {record.begin_time: record for record in pushed}
    assert all(holders[incoming.begin_time] == kept for incoming, kept in refused)
    with open_ledger(ledger_url) as ledger:
        assert sorted(item.record.sn for item in ledger.records()) == sorted(
            record.sn for record in pushed
        )


# Settle


def test_a_pending_outcome_releases_the_lease_for_the_next_run(ledger: Ledger) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW)

    ledger.settle(
        outcomes([record], Status.PENDING, "HTTP 503 MKT.0999 after 3 attempts", "MKT.0999"),
        owner="run-a",
        now=NOW,
    )

    stored = row(ledger, record)
    assert stored.status is RecordStatus.PENDING
    assert (stored.lease_owner, stored.lease_expires) == (None, None)
    assert (stored.attempts, stored.last_error) == (1, "HTTP 503 MKT.0999 after 3 attempts")
    assert ledger.outbox(limit=10, now=NOW, owner="run-b") == [record]


def test_a_dead_lettered_outcome_is_final_with_the_platform_code(ledger: Ledger) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW)

    ledger.settle(
        outcomes([record], Status.DEAD_LETTERED, "instance ID not found", "MKT.9001"),
        owner="run-a",
        now=NOW,
    )

    stored = row(ledger, record)
    assert (stored.status, stored.last_error) == (
        RecordStatus.DEAD_LETTERED,
        "instance ID not found (MKT.9001)",
    )
    assert ledger.claim([record], owner="run-b", now=NOW).dead == [record]


def test_a_late_pending_settle_never_overwrites_accepted(ledger: Ledger) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW, lease_seconds=60)
    later = NOW + timedelta(minutes=2)
    ledger.claim([record], owner="run-b", now=later)
    ledger.settle(outcomes([record], Status.ACCEPTED), owner="run-b", now=later)

    ledger.settle(outcomes([record], Status.PENDING, "timeout"), owner="run-a", now=later)
    ledger.settle(outcomes([record], Status.DEAD_LETTERED, "rejected"), owner="run-a", now=later)

    stored = row(ledger, record)
    # Two attempts: run-a's, counted when run-b took its lease over, and run-b's own.
    assert (stored.status, stored.last_error, stored.attempts) == (
        RecordStatus.ACCEPTED,
        None,
        2,
    )


def test_a_settle_from_an_owner_whose_lease_was_taken_over_changes_nothing(
    ledger: Ledger,
) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW, lease_seconds=60)
    later = NOW + timedelta(minutes=2)
    ledger.claim([record], owner="run-b", now=later)

    ledger.settle(outcomes([record], Status.PENDING, "timeout"), owner="run-a", now=later)

    stored = row(ledger, record)
    # The one attempt is run-a's, counted when run-b took its lease over.
    assert (stored.lease_owner, stored.attempts, stored.last_error) == ("run-b", 1, None)


def test_accepted_in_the_same_settle_wins_over_pending(ledger: Ledger) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW)

    ledger.settle(
        [RecordOutcome(record, Status.ACCEPTED), RecordOutcome(record, Status.PENDING, "late")],
        owner="run-a",
        now=NOW,
    )

    assert row(ledger, record).status is RecordStatus.ACCEPTED


def test_settling_a_record_never_claimed_still_records_it(ledger: Ledger) -> None:
    record = usage()

    ledger.settle(outcomes([record], Status.DUPLICATE), owner="run-a", now=NOW)

    stored = row(ledger, record)
    assert (stored.status, stored.attempts, stored.first_seen) == (
        RecordStatus.DUPLICATE,
        1,
        NOW,
    )


def test_the_ledger_observes_a_push_for_its_own_owner(ledger: Ledger) -> None:
    record = usage()
    claim = ledger.claim([record], owner=ledger.owner, now=NOW)
    attempt = Attempt(NOW, "https://127.0.0.1:8443", 1, 12.5, 200, "MKT.0000", "req-1")

    ledger.on_attempt(attempt)
    ledger.on_outcomes(outcomes(claim.to_push, Status.ACCEPTED))
    ledger.observer("run-b").on_attempt(attempt)

    assert row(ledger, record).status is RecordStatus.ACCEPTED
    assert [(item.id, item.owner) for item in ledger.attempts()] == [(1, "run-a"), (2, "run-b")]
    first = next(ledger.attempts())
    assert first.to_dict() == {
        "id": 1,
        "started_at": "2026-12-04T12:00:00Z",
        "owner": "run-a",
        "endpoint": "https://127.0.0.1:8443",
        "record_count": 1,
        "latency_ms": 12.5,
        "http_status": 200,
        "error_code": "MKT.0000",
        "request_id": "req-1",
        "error": None,
    }


# Reopening a dead-lettered record


def _rejected(ledger: Ledger, record: UsageRecord) -> None:
    """``record`` claimed, pushed and refused by KooGallery for an instance it does not know."""
    ledger.claim([record], owner="run-a", now=NOW - timedelta(minutes=30))
    ledger.settle(
        outcomes([record], Status.DEAD_LETTERED, "instance ID not found", "MKT.9001"),
        owner="run-a",
        now=NOW - timedelta(minutes=29),
    )


def test_a_rejected_record_reopened_with_a_corrected_copy_is_pushed_again(
    ledger: Ledger,
) -> None:
    rejected = usage(value="12.5")
    corrected = usage(value="20", record_time="2026-12-04T11:59:00Z")
    assert corrected.sn == rejected.sn
    _rejected(ledger, rejected)

    assert ledger.reopen(corrected, now=NOW) is True

    stored = row(ledger, rejected)
    assert (stored.record, stored.usage_value, stored.status) == (
        corrected,
        Decimal("20"),
        RecordStatus.PENDING,
    )
    assert (stored.last_error, stored.settled_at, stored.lease_owner, stored.lease_expires) == (
        None,
        None,
        None,
        None,
    )
    assert (stored.attempts, stored.first_seen, stored.last_seen) == (
        1,
        NOW - timedelta(minutes=30),
        NOW,
    )
    claim = ledger.claim([corrected], owner="run-b", now=NOW)
    assert claim.to_push == [corrected]
    assert usage_body(claim.to_push) == usage_body([corrected])


def test_reopening_moves_a_record_to_its_corrected_window_and_frees_the_old_one(
    ledger: Ledger,
) -> None:
    rejected = usage(begin=MORNING, metering_sn="seller-sn-1")
    corrected = usage(begin=MORNING + timedelta(hours=1), metering_sn="seller-sn-1")
    _rejected(ledger, rejected)

    assert ledger.reopen(corrected, now=NOW) is True

    stored = row(ledger, rejected)
    assert (stored.record, stored.begin_time, stored.end_time) == (
        corrected,
        MORNING + timedelta(hours=1),
        MORNING + timedelta(hours=2),
    )
    newcomer = usage(begin=MORNING)
    assert ledger.claim([newcomer], owner="run-a", now=NOW).to_push == [newcomer]


@pytest.mark.parametrize("status", [Status.PENDING, Status.ACCEPTED, Status.DUPLICATE])
def test_only_a_dead_lettered_record_can_be_reopened(ledger: Ledger, status: Status) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW)
    ledger.settle(outcomes([record], status, "timeout"), owner="run-a", now=NOW)
    before = row(ledger, record)

    assert ledger.reopen(usage(value="20"), now=NOW + timedelta(minutes=1)) is False
    assert ledger.reopen(usage("inst-unknown"), now=NOW + timedelta(minutes=1)) is False

    assert list(ledger.records()) == [before]


def test_a_record_is_not_reopened_into_a_window_another_record_holds(ledger: Ledger) -> None:
    rejected = usage(begin=MORNING, metering_sn="seller-sn-1")
    holder = usage(begin=MORNING + timedelta(hours=1))
    _rejected(ledger, rejected)
    ledger.claim([holder], owner="run-a", now=NOW)
    before = list(ledger.records())

    moved = usage(begin=MORNING + timedelta(hours=1), metering_sn="seller-sn-1")
    assert ledger.reopen(moved, now=NOW) is False

    assert list(ledger.records()) == before


# Concurrency


def _seed_released(url: str, records: list[UsageRecord]) -> None:
    """Store ``records`` as pending with no lease, as after a push that failed: the case where
    racing claims meet on existing rows rather than on inserts."""
    with open_ledger(url) as ledger:
        claim = ledger.claim(records, owner="seed", now=NOW - timedelta(minutes=5))
        ledger.settle(outcomes(claim.to_push, Status.PENDING), owner="seed", now=NOW)


def _overlapping_claims(ledger: Ledger, records: list[UsageRecord], owner: str) -> list[str]:
    won: list[str] = []
    for start in range(0, len(records), 20):
        claim = ledger.claim(records[start : start + 20], owner=owner, now=NOW)
        won.extend(record.sn for record in claim.to_push)
    return won


@pytest.mark.parametrize("seeded", [False, True], ids=["unseen", "released"])
@pytest.mark.parametrize("connections", ["shared", "one_per_thread"])
def test_concurrent_claims_from_threads_never_hand_out_the_same_record_twice(
    ledger_url: str, connections: str, seeded: bool
) -> None:
    records = batch(240)
    if seeded:
        _seed_released(ledger_url, records)
    shared = open_ledger(ledger_url)
    won: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def claim_all(owner: str, order: list[UsageRecord]) -> None:
        ledger = shared if connections == "shared" else open_ledger(ledger_url)
        barrier.wait(timeout=30)
        won[owner] = _overlapping_claims(ledger, order, owner)
        if ledger is not shared:
            ledger.close()

    threads = [
        threading.Thread(
            target=claim_all, args=(f"thread-{k}", records[k * 60 :] + records[: k * 60])
        )
        for k in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    handed_out = [sn for sns in won.values() for sn in sns]
    assert sorted(handed_out) == sorted(record.sn for record in records)
    owners = {item.metering_sn: item.lease_owner for item in shared.records()}
    assert all(owners[sn] == owner for owner, sns in won.items() for sn in sns)
    shared.close()


def _claim_in_process(
    url: str, data: list[dict[str, Any]], owner: str, barrier: Any, results: Any
) -> None:
    records = [UsageRecord.parse(item, now=NOW) for item in data]
    with open_ledger(url) as ledger:
        barrier.wait(timeout=60)
        results.put((owner, _overlapping_claims(ledger, records, owner)))


@pytest.mark.parametrize("seeded", [False, True], ids=["unseen", "released"])
def test_concurrent_claims_from_processes_never_hand_out_the_same_record_twice(
    ledger_url: str, seeded: bool
) -> None:
    records = batch(400)
    data = [record.to_json_dict() for record in records]
    if seeded:
        _seed_released(ledger_url, records)
    open_ledger(ledger_url).close()
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_claim_in_process, args=(ledger_url, order, owner, barrier, results)
        )
        for owner, order in (("process-a", data), ("process-b", data[200:] + data[:200]))
    ]
    for worker in workers:
        worker.start()

    won = dict(_gather(workers, results))

    assert set(won["process-a"]).isdisjoint(won["process-b"])
    assert sorted(won["process-a"] + won["process-b"]) == sorted(record.sn for record in records)


# Outbox


def test_the_outbox_hands_out_the_oldest_pending_first_and_respects_leases(
    ledger: Ledger,
) -> None:
    oldest, middle, newest, leased, delivered = (usage(f"inst-{k}") for k in range(5))
    ledger.claim([newest], owner="run-a", now=NOW - timedelta(minutes=1), lease_seconds=60)
    ledger.claim([oldest], owner="run-a", now=NOW - timedelta(minutes=30), lease_seconds=60)
    ledger.claim([middle], owner="run-a", now=NOW - timedelta(minutes=20), lease_seconds=60)
    ledger.claim([leased], owner="run-x", now=NOW - timedelta(minutes=40), lease_seconds=3600)
    ledger.claim([delivered], owner="run-a", now=NOW - timedelta(minutes=50))
    ledger.settle(outcomes([delivered], Status.ACCEPTED), owner="run-a", now=NOW)

    first = ledger.outbox(limit=2, now=NOW, owner="drain-1")
    second = ledger.outbox(limit=2, now=NOW, owner="drain-2")

    assert (first, second) == ([oldest, middle], [newest])
    assert ledger.outbox(limit=2, now=NOW, owner="drain-3") == []
    assert row(ledger, middle).lease_owner == "drain-1"
    assert row(ledger, newest).lease_expires == NOW + timedelta(seconds=300)


def test_the_outbox_dead_letters_expired_records_instead_of_handing_them_out(
    ledger: Ledger,
) -> None:
    begin = datetime(2026, 11, 12, 8, 0, tzinfo=UTC)
    expired = usage("inst-old", begin=begin, now=begin + timedelta(hours=2))
    fresh = usage("inst-new")
    ledger.claim([expired], owner="run-a", now=begin + timedelta(hours=2), lease_seconds=60)
    ledger.claim([fresh], owner="run-a", now=NOW - timedelta(minutes=10), lease_seconds=60)

    taken = ledger.outbox(limit=5, now=NOW, owner="drain")

    assert taken == [fresh]
    stored = row(ledger, expired)
    assert (stored.status, stored.last_error, stored.settled_at) == (
        RecordStatus.DEAD_LETTERED,
        EXPIRED_REASON,
        NOW,
    )


def _stale(instance: str, *, seen: datetime, ledger: Ledger) -> UsageRecord:
    """A record stored pending at ``seen`` whose ``begin_time`` is more than 21 days old now."""
    begin = datetime(2026, 11, 12, 8, 0, tzinfo=UTC)
    record = usage(instance, begin=begin, now=begin + timedelta(hours=2))
    ledger.claim([record], owner="run-a", now=seen, lease_seconds=60)
    return record


def test_claiming_the_outbox_reports_each_record_it_expired_exactly_once(ledger: Ledger) -> None:
    day = datetime(2026, 11, 12, 10, 0, tzinfo=UTC)
    second = _stale("inst-old-2", seen=day + timedelta(minutes=5), ledger=ledger)
    first = _stale("inst-old-1", seen=day, ledger=ledger)
    fresh = usage("inst-new")
    ledger.claim([fresh], owner="run-a", now=NOW - timedelta(minutes=10), lease_seconds=60)

    taken = ledger.claim_outbox(limit=5, now=NOW, owner="drain-1")
    again = ledger.claim_outbox(limit=5, now=NOW, owner="drain-2")

    assert (taken.to_push, taken.expired) == ([fresh], [first, second])
    assert (again.to_push, again.expired) == ([], [])
    assert {item.status for item in ledger.records()} == {
        RecordStatus.DEAD_LETTERED,
        RecordStatus.PENDING,
    }


def test_the_outbox_expires_at_most_limit_records_per_call(ledger: Ledger) -> None:
    day = datetime(2026, 11, 12, 10, 0, tzinfo=UTC)
    stale = [_stale(f"inst-{k}", seen=day + timedelta(minutes=k), ledger=ledger) for k in range(5)]

    taken = [ledger.claim_outbox(limit=2, now=NOW, owner="drain") for _ in range(4)]

    assert [batch.expired for batch in taken] == [stale[:2], stale[2:4], stale[4:], []]
    assert [batch.to_push for batch in taken] == [[], [], [], []]


def test_the_outbox_list_expires_everything_expired_before_saying_nothing_is_left(
    ledger: Ledger,
) -> None:
    day = datetime(2026, 11, 12, 10, 0, tzinfo=UTC)
    for k in range(5):
        _stale(f"inst-{k}", seen=day + timedelta(minutes=k), ledger=ledger)

    assert ledger.outbox(limit=2, now=NOW, owner="drain") == []

    assert ledger.status(now=NOW).counts[RecordStatus.DEAD_LETTERED] == 5


def test_a_claim_lists_the_records_it_expired_and_not_those_dead_before(ledger: Ledger) -> None:
    begin = datetime(2026, 11, 12, 8, 0, tzinfo=UTC)
    stored = usage("inst-stored", begin=begin, now=begin + timedelta(hours=2))
    unseen = usage("inst-unseen", begin=begin, now=begin + timedelta(hours=2))
    ledger.claim([stored], owner="run-a", now=begin + timedelta(hours=2), lease_seconds=60)

    first = ledger.claim([stored, unseen], owner="run-a", now=NOW)
    second = ledger.claim([stored, unseen], owner="run-a", now=NOW)

    assert (first.dead, first.expired) == ([stored, unseen], [stored, unseen])
    assert (second.dead, second.expired) == ([stored, unseen], [])


# Collection cut-offs


@pytest.mark.parametrize(
    ("billing_mode", "end", "collected"),
    [
        ("hourly", "2026-12-04T10:00:00Z", "2026-12-04T10:15:00Z"),
        ("hourly", "2026-12-04T10:10:00Z", "2026-12-04T11:15:00Z"),
        ("hourly", "2026-12-04T10:15:00Z", "2026-12-04T11:15:00Z"),
        ("hourly", "2026-12-04T23:30:00Z", "2026-12-05T00:15:00Z"),
        ("daily", "2026-12-03T16:00:00Z", "2026-12-03T17:00:00Z"),
        ("daily", "2026-12-04T02:00:00Z", "2026-12-04T17:00:00Z"),
        ("daily", "2026-12-04T16:00:00Z", "2026-12-04T17:00:00Z"),
        ("daily", "2026-12-04T16:30:00Z", "2026-12-05T17:00:00Z"),
    ],
)
def test_a_record_is_late_from_the_moment_its_window_is_collected(
    ledger_url: str, billing_mode: BillingMode, end: str, collected: str
) -> None:
    end_time, moment = at(end), at(collected)
    before, after = (
        usage(instance, begin=end_time - timedelta(hours=1), end=end_time, now=moment)
        for instance in ("inst-before", "inst-after")
    )

    with open_ledger(ledger_url, billing_mode=billing_mode) as ledger:
        a_second_early = ledger.claim([before], owner="run-a", now=moment - timedelta(seconds=1))
        on_the_dot = ledger.claim([after], owner="run-a", now=moment)

    assert collection_moment(end_time, billing_mode) == moment
    assert (a_second_early.to_push, a_second_early.late) == ([before], [])
    assert (on_the_dot.to_push, on_the_dot.late) == ([after], [after])


@pytest.mark.parametrize(
    ("billing_mode", "now", "cutoff"),
    [
        ("hourly", "2026-12-04T10:05:00Z", "2026-12-04T10:15:00Z"),
        ("hourly", "2026-12-04T10:15:00Z", "2026-12-04T11:15:00Z"),
        ("hourly", "2026-12-04T23:59:00Z", "2026-12-05T00:15:00Z"),
        ("daily", "2026-12-04T16:30:00Z", "2026-12-04T17:00:00Z"),
        ("daily", "2026-12-04T17:00:00Z", "2026-12-05T17:00:00Z"),
    ],
)
def test_status_names_the_next_collection_cutoff(
    ledger_url: str, billing_mode: BillingMode, now: str, cutoff: str
) -> None:
    with open_ledger(ledger_url, billing_mode=billing_mode) as ledger:
        status = ledger.status(now=at(now))

    assert status.next_collection_cutoff == at(cutoff)
    assert status.billing_mode == billing_mode


# Status and export


def test_status_counts_every_status_and_the_age_of_the_oldest_pending(ledger: Ledger) -> None:
    old, recent, accepted, duplicate, dead, disputed = (usage(f"inst-{k}") for k in range(6))
    ledger.claim([old], owner="run-a", now=NOW - timedelta(hours=2, minutes=30))
    ledger.claim([recent, accepted, duplicate, dead, disputed], owner="run-a", now=NOW)
    ledger.settle(outcomes([accepted], Status.ACCEPTED), owner="run-a", now=NOW)
    ledger.settle(outcomes([duplicate], Status.DUPLICATE), owner="run-a", now=NOW)
    ledger.settle(outcomes([dead], Status.DEAD_LETTERED, "rejected"), owner="run-a", now=NOW)
    ledger.claim([usage("inst-5", value="7")], owner="run-a", now=NOW)
    ids = ledger.add_dead_letters([letter("KAFKA", 0, "x"), letter("KAFKA", 1, "y")], now=NOW)
    ledger.resolve_dead_letter(ids[0], state="discarded", now=NOW)
    ledger.record_attempt(Attempt(NOW, "https://127.0.0.1", 5, 3.0, 200, None, None), owner="a")

    status = ledger.status(now=NOW)

    assert status.to_dict() == {
        "counts": {
            "pending": 2,
            "accepted": 1,
            "duplicate": 1,
            "dead_lettered": 1,
            "conflict": 1,
        },
        "oldest_pending_first_seen": "2026-12-04T09:30:00Z",
        "oldest_pending_age_seconds": 9000.0,
        "open_dead_letters": 1,
        "attempts": 1,
        "conflicts": 1,
        "next_collection_cutoff": "2026-12-04T12:15:00Z",
        "billing_mode": "hourly",
    }
    assert status.oldest_pending_age == timedelta(hours=2, minutes=30)


def test_status_of_an_empty_ledger_has_no_oldest_pending(ledger: Ledger) -> None:
    status = ledger.status(now=NOW)

    assert set(status.counts.values()) == {0}
    assert (status.oldest_pending_first_seen, status.oldest_pending_age) == (None, None)


def test_export_iterates_every_record_page_by_page_with_filters(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(koogallery.ledger.sql, "PAGE_SIZE", 2)
    hours = [MORNING + timedelta(hours=k) for k in range(-3, 0)]
    records = [usage(instance, begin=hour) for hour in hours for instance in ("inst-a", "inst-b")]
    ledger.claim(records, owner="run-a", now=NOW)
    ledger.settle(outcomes(records[:2], Status.ACCEPTED), owner="run-a", now=NOW)

    everything = list(ledger.records())
    of_b = list(ledger.records(instance_id="inst-b"))
    window = list(ledger.records(begin_from=hours[1], begin_to=hours[2]))
    accepted = list(ledger.records(status=RecordStatus.ACCEPTED))

    by_time = sorted(records, key=lambda record: (record.begin_time, record.sn))
    assert [item.record for item in everything] == by_time
    assert [item.record for item in of_b] == [records[1], records[3], records[5]]
    assert {item.record for item in window} == {records[2], records[3]}
    assert {item.record for item in accepted} == {records[0], records[1]}
    assert everything[0].to_dict()["record"] == everything[0].record.to_json_dict()


# Dead letters


def test_dead_letters_keep_the_whole_raw_message_and_list_by_filter(ledger: Ledger) -> None:
    long_raw = "{" + "x" * 5000
    letters = [
        letter("KAFKA", 0, long_raw, reason="message is not JSON"),
        letter(
            "KAFKA",
            1,
            '{"instance_id": "i-1", "usage_value": "abc"}',
            reason="usage_value: 'abc' is not a decimal number",
            record={"instance_id": "i-1", "usage_value": Decimal("1.5")},
            position=0,
            field="usage_value",
            error_code=None,
        ),
    ]
    ids = ledger.add_dead_letters(letters, now=NOW)
    ids += ledger.add_dead_letters([letter("SMN", 2, "z")], now=NOW + timedelta(hours=1))

    assert ids == [1, 2, 3]
    stored = ledger.dead_letter(ids[0])
    assert stored is not None
    assert (stored.raw, stored.record, stored.state) == (long_raw, None, "open")
    assert stored.origin == Origin("KAFKA", "kafka-source", 0, message_id="m-0")
    second = ledger.dead_letter(ids[1])
    assert second is not None
    assert (second.record, second.position, second.field) == (
        {"instance_id": "i-1", "usage_value": "1.5"},
        0,
        "usage_value",
    )
    assert [item.id for item in ledger.dead_letters()] == [1, 2, 3]
    assert [item.id for item in ledger.dead_letters(origin_trigger="KAFKA")] == [1, 2]
    assert [item.id for item in ledger.dead_letters(since=NOW + timedelta(minutes=30))] == [3]
    assert [item.id for item in ledger.dead_letters(limit=2)] == [1, 2]
    assert ledger.dead_letter(99) is None


def test_a_dead_letter_is_resolved_once_as_retried_or_discarded(ledger: Ledger) -> None:
    letters = [letter("KAFKA", 0, "a"), letter("KAFKA", 1, "b")]
    first, second = ledger.add_dead_letters(letters, now=NOW)

    ledger.resolve_dead_letter(first, state="retried", now=NOW, note="fixed the instance id")
    ledger.resolve_dead_letter(second, state="discarded", now=NOW + timedelta(minutes=1))

    assert ledger.dead_letters() == []
    resolved = ledger.dead_letters(state=None)
    assert [(item.id, item.state, item.resolved_at, item.note) for item in resolved] == [
        (first, "retried", NOW, "fixed the instance id"),
        (second, "discarded", NOW + timedelta(minutes=1), None),
    ]
    assert [item.id for item in ledger.dead_letters(state="retried")] == [first]
    with pytest.raises(ValueError, match=f"dead letter {first} is already retried"):
        ledger.resolve_dead_letter(first, state="discarded", now=NOW)
    with pytest.raises(KeyError, match="there is no dead letter 42"):
        ledger.resolve_dead_letter(42, state="retried", now=NOW)


# Batching


class _CountingTransaction:
    """A transaction that counts the statements sent through it."""

    def __init__(self, inner: Transaction, sent: list[str]) -> None:
        self._inner = inner
        self._sent = sent

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        self._sent.append(sql)
        return self._inner.execute(sql, params)

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        self._sent.append(sql)
        return self._inner.execute_many(sql, rows)

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        self._sent.append(sql)
        return self._inner.rows(sql, params)


def _statements_to_claim_and_settle(
    ledger: Ledger, records: list[UsageRecord], monkeypatch: pytest.MonkeyPatch
) -> int:
    """How many statements a claim of ``records`` and the settle of their acceptance send."""
    assert isinstance(ledger, SqlLedger)
    sent: list[str] = []
    opened = ledger._transaction

    @contextmanager
    def counted(*, write: bool) -> Iterator[Transaction]:
        with opened(write=write) as tx:
            yield _CountingTransaction(tx, sent)

    with monkeypatch.context() as patch:
        patch.setattr(ledger, "_transaction", counted)
        claim = ledger.claim(records, owner="run-a", now=NOW)
        ledger.settle(outcomes(claim.to_push, Status.ACCEPTED), owner="run-a", now=NOW)
    assert claim.to_push == records
    return len(sent)


def test_claim_and_settle_of_1000_records_send_as_many_statements_as_of_10(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    few = _statements_to_claim_and_settle(ledger, batch(10, "few"), monkeypatch)
    many = _statements_to_claim_and_settle(ledger, batch(1000, "many"), monkeypatch)

    assert many == few
    assert ledger.status(now=NOW).counts[RecordStatus.ACCEPTED] == 1010


# Opening a ledger


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "mysql://seller:s3cret-pw@127.0.0.1:3306/usage",
            "KOOGALLERY_LEDGER_URL 'mysql://seller:***@127.0.0.1:3306/usage' has an unsupported "
            "scheme 'mysql'; use sqlite:///path/to/ledger.db or "
            "postgresql://user:password@host:5432/database",
        ),
        (
            "redis://127.0.0.1/0?password=s3cret-pw",
            "KOOGALLERY_LEDGER_URL 'redis://127.0.0.1/0?password=***' has an unsupported "
            "scheme 'redis'; use sqlite:///path/to/ledger.db or "
            "postgresql://user:password@host:5432/database",
        ),
        (
            "sqlite://",
            "KOOGALLERY_LEDGER_URL 'sqlite://' names no file; use sqlite:///path/to/ledger.db "
            "or postgresql://user:password@host:5432/database",
        ),
    ],
)
def test_open_ledger_refuses_an_unknown_url_with_the_password_masked(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        open_ledger(url)

    assert str(refused.value) == message
    assert "s3cret" not in str(refused.value)


def test_a_postgres_ledger_that_cannot_connect_never_shows_its_password() -> None:
    with pytest.raises(TransientError) as failed:
        open_ledger("postgresql://seller:s3cret-pw@127.0.0.1:9/usage")

    assert str(failed.value).startswith(
        "cannot connect to the ledger database postgresql://seller:***@127.0.0.1:9/usage "
        "(KOOGALLERY_LEDGER_URL): "
    )
    assert "s3cret" not in str(failed.value)


def test_open_ledger_opens_a_relative_sqlite_path_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    with open_ledger("sqlite:///state/ledger.db") as on_disk:
        on_disk.claim([usage()], owner="run-a", now=NOW)
    with open_ledger("sqlite:///:memory:") as in_memory:
        assert in_memory.schema_version() == LATEST_VERSION

    assert (tmp_path / "state" / "ledger.db").is_file()


def test_open_ledger_accepts_the_postgres_scheme_alias_and_masks_its_repr(
    request: pytest.FixtureRequest,
) -> None:
    parts = urlsplit(request.getfixturevalue("postgres_schema_url"))
    password = parts.password or "pw-123"
    netloc = f"{parts.username}:{password}@{parts.netloc.rpartition('@')[2]}"
    alias = urlunsplit(parts._replace(scheme="postgres", netloc=netloc))

    with open_ledger(alias) as ledger:
        assert ledger.schema_version() == LATEST_VERSION
        assert password not in repr(ledger)
        assert repr(ledger).startswith(f"PostgresLedger('postgres://{parts.username}:***@")


def test_a_dead_letter_identical_to_an_open_one_is_not_stored_twice(ledger: Ledger) -> None:
    first = ledger.add_dead_letters([letter("KAFKA", 3, "{bad")], now=NOW)
    again = ledger.add_dead_letters(
        [letter("KAFKA", 3, "{bad"), letter("KAFKA", 3, "{other")], now=NOW
    )

    assert again[0] == first[0]
    assert again[1] != first[0]
    assert len(ledger.dead_letters()) == 2


def test_a_duplicate_after_an_earlier_attempt_of_ours_is_accepted(ledger: Ledger) -> None:
    tried, taken_over, untouched = usage("inst-1"), usage("inst-2"), usage("inst-3")
    ledger.claim([tried, taken_over, untouched], owner="run-a", now=NOW, lease_seconds=60)
    ledger.settle(outcomes([tried], Status.PENDING, "timeout"), owner="run-a", now=NOW)
    later = NOW + timedelta(minutes=2)
    ledger.claim([tried, taken_over], owner="run-b", now=later)
    ledger.claim([untouched], owner="run-b", now=later)

    ledger.settle(outcomes([tried, taken_over], Status.DUPLICATE), owner="run-b", now=later)

    assert row(ledger, tried).status is RecordStatus.ACCEPTED
    assert row(ledger, taken_over).status is RecordStatus.ACCEPTED


def test_a_duplicate_of_a_record_never_sent_before_stays_duplicate(ledger: Ledger) -> None:
    record = usage()
    ledger.claim([record], owner="run-a", now=NOW)

    ledger.settle(outcomes([record], Status.DUPLICATE), owner="run-a", now=NOW)

    assert row(ledger, record).status is RecordStatus.DUPLICATE
