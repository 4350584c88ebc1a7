"""The loopback-only network guard: any connection, datagram or name look-up that would leave
this machine raises ``NonLoopbackConnectionError`` before a packet is sent.

    import loopback_only
    loopback_only.install()

The test process installs it from ``conftest.py``; every Python interpreter the tests start
installs it at start-up through this folder's ``sitecustomize.py``. The module imports only
``socket`` when loaded, so it adds next to nothing to an interpreter's start-up.

Guarded: ``socket.socket.connect``, ``connect_ex`` and ``sendto``, and ``socket.getaddrinfo``,
``gethostbyname``, ``gethostbyname_ex`` and ``gethostbyaddr``. Unix sockets are always allowed.
"""

from __future__ import annotations

import socket

TYPE_CHECKING = False  # rather than typing's: importing typing would slow every start-up
if TYPE_CHECKING:
    from typing import Any

__all__ = ["NonLoopbackConnectionError", "install", "is_loopback_host"]

_LOOPBACK_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
)


class NonLoopbackConnectionError(RuntimeError):
    """Raised when a test tries to reach anything but this machine's loopback interface.

    Not an ``OSError``, so that no retry or fallback for network failures can swallow it.
    """


def is_loopback_host(host: object) -> bool:
    """Whether ``host`` (a name, an address, or ``None`` for the local default) is loopback."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    text = str(host).strip("[]").split("%", 1)[0]
    if text.lower() in _LOOPBACK_NAMES:
        return True

    import ipaddress  # here rather than at the top: most interpreters never check an address

    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _check_address(family: int, address: Any) -> None:
    if family == getattr(socket, "AF_UNIX", object()):
        return
    host = address[0] if isinstance(address, tuple) else address
    if not is_loopback_host(host):
        raise NonLoopbackConnectionError(f"tests may only connect to loopback, not {address!r}")


def _check_name(host: Any) -> None:
    if not is_loopback_host(host):
        raise NonLoopbackConnectionError(f"tests may only resolve loopback names, not {host!r}")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto
_real_getaddrinfo = socket.getaddrinfo
_real_gethostbyname = socket.gethostbyname
_real_gethostbyname_ex = socket.gethostbyname_ex
_real_gethostbyaddr = socket.gethostbyaddr


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self.family, address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self.family, address)
    return _real_connect_ex(self, address)


def _guarded_sendto(self: socket.socket, data: Any, *flags_and_address: Any) -> int:
    """``sendto(data, address)`` or ``sendto(data, flags, address)``: the address comes last."""
    if flags_and_address:
        _check_address(self.family, flags_and_address[-1])
    return _real_sendto(self, data, *flags_and_address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    _check_name(host)
    return _real_getaddrinfo(host, *args, **kwargs)


def _guarded_gethostbyname(host: str) -> str:
    _check_name(host)
    return _real_gethostbyname(host)


def _guarded_gethostbyname_ex(host: str) -> tuple[str, list[str], list[str]]:
    _check_name(host)
    return _real_gethostbyname_ex(host)


def _guarded_gethostbyaddr(host: str) -> tuple[str, list[str], list[str]]:
    _check_name(host)
    return _real_gethostbyaddr(host)


def install() -> None:
    """Put the guard in front of every socket entry point listed in the module docstring."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign, assignment]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign, assignment]
    socket.socket.sendto = _guarded_sendto  # type: ignore[method-assign, assignment]
    socket.getaddrinfo = _guarded_getaddrinfo
    socket.gethostbyname = _guarded_gethostbyname
    socket.gethostbyname_ex = _guarded_gethostbyname_ex
    socket.gethostbyaddr = _guarded_gethostbyaddr
