"""Test-wide fixtures and the loopback-only network guard.

Every test in this suite talks to servers it starts itself on 127.0.0.1 or ::1. The guard of
``tests/network_guard`` turns any other connection attempt (or a look-up of any other name) into
an immediate error, so a default endpoint that slips into a test fails fast instead of reaching
a real host. It is installed in this process, and in every Python subprocess a test starts:
``PYTHONPATH`` begins with the guard's folder for the length of the run, so those interpreters
install it at start-up through its ``sitecustomize``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.network_guard import loopback_only
from tests.network_guard.loopback_only import NonLoopbackConnectionError
from tests.postgres_fixtures import postgres_schema_url, postgres_url

__all__ = ["NonLoopbackConnectionError", "postgres_schema_url", "postgres_url"]

GUARD_FOLDER = str(Path(__file__).resolve().parent / "network_guard")
"""Prepended to ``PYTHONPATH`` during the run: its ``sitecustomize`` installs the guard."""

_PYTHONPATH_BEFORE = pytest.StashKey[str | None]()


def pytest_configure(config: pytest.Config) -> None:
    """Install the guard here and for subprocesses, before any test module is imported."""
    loopback_only.install()

    before = os.environ.get("PYTHONPATH")
    config.stash[_PYTHONPATH_BEFORE] = before
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [GUARD_FOLDER, before]))


@contextmanager
def package_registry_allowed() -> Iterator[None]:
    """Let the subprocesses started inside reach the package registry: pip downloading the
    wheels a function zip is built from is the one kind of traffic beyond loopback that the
    rules allow. The test process itself stays guarded."""
    before = os.environ.get("PYTHONPATH")
    kept = [part for part in (before or "").split(os.pathsep) if part and part != GUARD_FOLDER]
    os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave ``PYTHONPATH`` as it was, for whatever runs in this process after the tests."""
    if _PYTHONPATH_BEFORE not in config.stash:
        return

    before = config.stash[_PYTHONPATH_BEFORE]
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture
def loopback_guard() -> Iterator[type[NonLoopbackConnectionError]]:
    """The error class the guard raises, for tests that pin the guard itself."""
    yield NonLoopbackConnectionError


@pytest.fixture(params=["sqlite", "postgres"])
def any_ledger_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """An empty ledger database of each backend, so every ledger behaviour runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_schema_url")
    return url
