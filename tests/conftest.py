"""Test-wide fixtures and the loopback-only network guard.

Every test in this suite talks to servers it starts itself on 127.0.0.1 or ::1. The guard below
turns any other connection attempt (or a DNS look-up of any other name) into an immediate error,
so a default endpoint that slips into a test fails fast instead of reaching a real host.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.postgres_fixtures import postgres_schema_url, postgres_url

__all__ = ["NonLoopbackConnectionError", "postgres_schema_url", "postgres_url"]

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NonLoopbackConnectionError(RuntimeError):
    """Raised when a test tries to reach anything but this machine's loopback interface."""


def _is_loopback_host(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    text = str(host).strip("[]").split("%", 1)[0]
    if text.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _check_address(family: int, address: Any) -> None:
    if family == getattr(socket, "AF_UNIX", object()):
        return
    host = address[0] if isinstance(address, tuple) else address
    if not _is_loopback_host(host):
        raise NonLoopbackConnectionError(f"tests may only connect to loopback, not {address!r}")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self.family, address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self.family, address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_loopback_host(host):
        raise NonLoopbackConnectionError(f"tests may only resolve loopback names, not {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    """Install the guard before any test module is imported."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo


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
