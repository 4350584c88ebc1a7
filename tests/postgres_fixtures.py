"""PostgreSQL for the test suite: a server on loopback, and a schema of its own for each test.

``postgres_url`` (once per test run) is the URL of a server: ``KOOGALLERY_TEST_POSTGRES_URL``
when set, otherwise the private cluster that ``scripts/postgres`` starts in ``.pgdata/``. When
no server can be had, the tests that need one are skipped with the reason; with
``KOOGALLERY_REQUIRE_POSTGRES=1`` (as CI sets it) they fail instead, so a broken setup is
never mistaken for a green run.

``postgres_schema_url`` is the same server seen through a schema created for one test and
dropped after it, so tests never meet each other's tables.

The network guard of ``conftest.py`` cannot see the driver's connections (libpq opens its own
sockets), so ``loopback_problem`` checks where libpq would go instead: every host the URL names,
and the ``PGHOST``/``PGHOSTADDR`` variables libpq falls back to, must be this machine.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from koogallery.ledger.urls import masked_url
from tests.network_guard.loopback_only import is_loopback_host

__all__ = ["loopback_problem", "postgres_schema_url", "postgres_url"]

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "postgres"
_SCRIPT_TIMEOUT = 600
"""Seconds ``scripts/postgres`` may take: it may have to install the server first."""


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a PostgreSQL server on loopback, or a skip (a failure when required)."""
    url, problem = _server_url()
    if problem is None:
        problem = loopback_problem(url) or _connection_problem(url)
    if problem is None:
        return url

    if os.environ.get("KOOGALLERY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"KOOGALLERY_REQUIRE_POSTGRES=1 but {problem}", pytrace=False)
    pytest.skip(f"no PostgreSQL for the tests: {problem}")


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """``postgres_url`` with its connections confined to a fresh schema, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))

    yield _with_search_path(postgres_url, schema)

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("SET lock_timeout = '10s'")
        connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _server_url() -> tuple[str, str | None]:
    """The configured URL, or the last line ``scripts/postgres`` prints; else the problem."""
    configured = os.environ.get("KOOGALLERY_TEST_POSTGRES_URL")
    if configured:
        return configured, None

    try:
        run = subprocess.run(
            [str(_SCRIPT)], capture_output=True, text=True, timeout=_SCRIPT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return "", f"scripts/postgres could not run: {error}"
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        detail = run.stderr.strip().splitlines()[-3:]
        return "", f"scripts/postgres failed (exit {run.returncode}): {' | '.join(detail)}"
    return lines[-1].strip(), None


def loopback_problem(url: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """Why libpq might reach another machine with ``url`` and ``environ``; ``None`` if it cannot.

    Every ``host`` and ``hostaddr`` of the URL (a comma-separated list names several servers)
    must be a loopback address, ``localhost`` or a Unix socket directory, and so must the
    ``PGHOST`` and ``PGHOSTADDR`` variables, which libpq reads when the URL names no host. A
    service (``service=`` or ``PGSERVICE``) is refused: its hosts are in a file not read here.
    """
    shown = masked_url(url)
    try:
        parameters = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return f"{shown} is not a connection URL libpq accepts"

    places = [(f"its {key}", str(parameters.get(key, ""))) for key in ("host", "hostaddr")]
    places += [(name, environ.get(name, "")) for name in ("PGHOST", "PGHOSTADDR")]
    for place, value in places:
        for entry in value.split(","):
            if not _is_this_machine(entry.strip()):
                return (
                    f"{shown}: {place} {entry!r} is not loopback (127.0.0.1, ::1, localhost) "
                    "or a Unix socket directory"
                )

    service = parameters.get("service") or environ.get("PGSERVICE")
    if service:
        return f"{shown}: the service {service!r} names its hosts in a file not checked here"
    return None


def _is_this_machine(host: str) -> bool:
    """An empty entry is libpq's default, the Unix socket; a path is a socket directory."""
    return host == "" or host.startswith("/") or is_loopback_host(host)


def _connection_problem(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as error:
        return f"cannot connect to {masked_url(url)}: {str(error).strip()}"
    return None


def _with_search_path(url: str, schema: str) -> str:
    """Add ``options=-csearch_path=<schema>`` to the URL's query, keeping other options."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query["options"] = f"{query.get('options', '')} -csearch_path={schema}".strip()
    return urlunsplit(parts._replace(query=urlencode(query)))
