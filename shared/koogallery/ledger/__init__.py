"""The usage ledger: the durable record of every usage record, push attempt and dead letter.

    ledger = open_ledger(os.environ["KOOGALLERY_LEDGER_URL"])
    claim = ledger.claim(records, owner=ledger.owner, now=now)
    with KooGalleryClient(settings, observer=ledger) as client:
        client.push_usage(claim.to_push)

The public names, by the module that holds them:

- ``Ledger``, ``Claim``, ``OutboxClaim``, ``RecordStatus``, ``LedgerRecord``, ``AttemptRow``,
  ``DeadLetterRow``, ``LedgerStatus``, ``LedgerObserver`` (base): the interface and its values.
- ``SqliteLedger`` (sqlite) and ``PostgresLedger`` (postgres, needs ``psycopg``): backends.
- ``MIGRATIONS``, ``LATEST_VERSION`` (migrations): the versioned schema.
- ``collection_moment``, ``next_collection`` (cutoffs): KooGallery's collection cut-offs.
- ``masked_url`` (urls): a ledger URL safe to print.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from koogallery.errors import ConfigurationError
from koogallery.ledger.base import (
    AttemptRow,
    BillRun,
    Claim,
    DeadLetterRow,
    DeadLetterState,
    Ledger,
    LedgerObserver,
    LedgerRecord,
    LedgerStatus,
    OutboxClaim,
    RecordStatus,
)
from koogallery.ledger.cutoffs import BillingMode, collection_moment, next_collection
from koogallery.ledger.migrations import LATEST_VERSION, MIGRATIONS
from koogallery.ledger.sqlite import SqliteLedger
from koogallery.ledger.urls import LEDGER_URL_VARIABLE, masked_url, sqlite_path

if TYPE_CHECKING:
    from koogallery.ledger.postgres import PostgresLedger

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "AttemptRow",
    "BillRun",
    "BillingMode",
    "Claim",
    "DeadLetterRow",
    "DeadLetterState",
    "Ledger",
    "LedgerObserver",
    "LedgerRecord",
    "LedgerStatus",
    "OutboxClaim",
    "PostgresLedger",
    "RecordStatus",
    "SqliteLedger",
    "collection_moment",
    "masked_url",
    "next_collection",
    "open_ledger",
]

_EXAMPLES = "sqlite:///path/to/ledger.db or postgresql://user:password@host:5432/database"


def open_ledger(
    url: str, *, billing_mode: BillingMode = "hourly", owner: str | None = None
) -> Ledger:
    """Open the ledger at ``url`` and bring its schema up to date.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` and ``sqlite:///:memory:``
    name a SQLite file; ``postgresql://`` and ``postgres://`` a PostgreSQL database.
    ``billing_mode`` says when KooGallery collects the product's usage (see
    :class:`~koogallery.ledger.base.Ledger`). Anything else raises ``ConfigurationError``.
    """
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        ledger: Ledger = SqliteLedger(_sqlite_path(url), billing_mode=billing_mode, owner=owner)
    elif scheme in ("postgresql", "postgres"):
        ledger = _postgres_ledger(url, billing_mode=billing_mode, owner=owner)
    else:
        raise ConfigurationError(
            f"{LEDGER_URL_VARIABLE} {masked_url(url)!r} has an unsupported scheme "
            f"{scheme or '(none)'!r}; use {_EXAMPLES}"
        )

    try:
        ledger.migrate()
    except BaseException:
        ledger.close()
        raise
    return ledger


def _sqlite_path(url: str) -> str:
    try:
        return sqlite_path(url)
    except ValueError:
        raise ConfigurationError(
            f"{LEDGER_URL_VARIABLE} {masked_url(url)!r} names no file; use {_EXAMPLES}"
        ) from None


def _postgres_ledger(url: str, *, billing_mode: BillingMode, owner: str | None) -> Ledger:
    """Import the PostgreSQL backend only when asked for: ``psycopg`` is an optional extra."""
    try:
        from koogallery.ledger.postgres import PostgresLedger
    except ImportError:
        raise ConfigurationError(
            f"{LEDGER_URL_VARIABLE} names a PostgreSQL database, but psycopg is not installed: "
            "install koogallery-functions[postgres]"
        ) from None
    return PostgresLedger(url, billing_mode=billing_mode, owner=owner)


def __getattr__(name: str) -> object:
    """``PostgresLedger`` on first use, so that importing the ledger never needs psycopg."""
    if name == "PostgresLedger":
        from koogallery.ledger.postgres import PostgresLedger

        return PostgresLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
