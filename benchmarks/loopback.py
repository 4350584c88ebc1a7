"""Keeps every benchmark on this machine: a loopback-only guard and the emulator as a process.

The benchmarks talk to nothing but the local KooGallery emulator. Three things make sure of it:

- :func:`install_guard` adds an audit hook that refuses, inside the benchmark process, every
  connection and every name look-up that is not loopback, before any packet leaves;
- :func:`clean_environment` drops proxy settings (an HTTP client would otherwise route through
  a proxy) and any ``KOOGALLERY_*``/``HUAWEICLOUD_*`` setting a shell may hold, so only the
  settings a benchmark gives are in force, in this process and in the ones it starts;
- :class:`EmulatorProcess` starts ``python -m koogallery.emulator`` on 127.0.0.1 and refuses a
  URL that is not loopback.

    install_guard()
    with EmulatorProcess() as emulator:
        emulator.url        # "http://127.0.0.1:41234"
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

__all__ = [
    "EmulatorProcess",
    "NonLoopbackError",
    "child_environment",
    "clean_environment",
    "install_guard",
    "is_loopback",
    "refused",
    "require_loopback_url",
]

_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy")
_SETTING_PREFIXES = ("KOOGALLERY_", "HUAWEICLOUD_")
_START_SECONDS = 30.0
_STOP_SECONDS = 10.0
_installed = False

refused: list[str] = []
"""Every connection or look-up the guard refused in this process, in order."""


class NonLoopbackError(RuntimeError):
    """Raised when a benchmark tries to reach anything but this machine's loopback."""


def is_loopback(host: object) -> bool:
    """True for 127.0.0.0/8, ::1 and the loopback names; no look-up is ever made."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False

    text = host.strip("[]").split("%", 1)[0]
    if text.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def require_loopback_url(url: str) -> str:
    """``url`` itself when its host is loopback; NonLoopbackError otherwise."""
    host = urlsplit(url).hostname
    if not is_loopback(host):
        raise NonLoopbackError(f"benchmarks talk to loopback only, not to {url!r}")
    return url


def _refuse_non_loopback(event: str, args: tuple[Any, ...]) -> None:
    """The audit hook: runs before the interpreter connects a socket or resolves a name.

    Each refusal is also written down, so that one swallowed by a library's own error handling
    still shows in the report.
    """
    if event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            refused.append(f"connect {address!r}")
            raise NonLoopbackError(f"benchmarks connect to loopback only, not to {address!r}")
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        host = args[0]
        if host is not None and not is_loopback(host):
            refused.append(f"resolve {host!r}")
            raise NonLoopbackError(f"benchmarks resolve loopback names only, not {host!r}")


def install_guard() -> None:
    """Refuse every non-loopback connection and look-up in this process, for good.

    Audit hooks cannot be removed, which is the point: nothing later in the run can undo it.
    """
    global _installed
    if not _installed:
        sys.addaudithook(_refuse_non_loopback)
        _installed = True


def _cleaned(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` without proxies and product settings, with loopback exempt from any
    proxy a library might still find."""
    kept = {
        name: value
        for name, value in environment.items()
        if name.lower() not in _PROXY_VARIABLES and not name.startswith(_SETTING_PREFIXES)
    }
    kept["NO_PROXY"] = kept["no_proxy"] = "127.0.0.1,::1,localhost"
    return kept


def clean_environment() -> None:
    """Drop proxies and product settings inherited from the shell, in this process."""
    cleaned = _cleaned(os.environ)
    for name in [name for name in os.environ if name not in cleaned]:
        del os.environ[name]
    os.environ.update(cleaned)


def child_environment(settings: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process a benchmark starts: this one's, cleaned, plus ``settings``.

    This process's own environment is left as it is: a test that measures a command must not
    take its caller's settings away.
    """
    return {**_cleaned(os.environ), **(settings or {})}


class EmulatorProcess:
    """``python -m koogallery.emulator`` on a free loopback port, stopped on exit.

    A process of its own keeps the emulator's work on another core than the client's, as a
    remote platform would be, and its memory out of the client's measurements.
    """

    def __init__(self, *, accept_any_instance: bool = True) -> None:
        self._arguments = [sys.executable, "-m", "koogallery.emulator", "--port", "0"]
        if accept_any_instance:
            self._arguments.append("--accept-any-instance")
        self._process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> EmulatorProcess:
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self._arguments,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=child_environment(),
            text=True,
        )
        assert self._process.stdout is not None
        first_line = self._process.stdout.readline().strip()
        if not first_line:
            self.__exit__(None, None, None)
            raise RuntimeError("the emulator exited before printing its URL")
        self.url = require_loopback_url(first_line)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def reset(self) -> None:
        """Forget every stored record, nonce and log entry, so a run starts from nothing."""
        self._admin("POST", "reset")

    def stored_records(self) -> int:
        """How many records the emulator holds."""
        count: int = self._admin("GET", "health")["records"]
        return count

    def _admin(self, method: str, route: str) -> dict[str, Any]:
        data = b"{}" if method == "POST" else None
        url = f"{self.url}/_emulator/{route}"
        request = Request(url, method=method, data=data)  # noqa: S310 - checked loopback URL
        with urlopen(request, timeout=_START_SECONDS) as response:  # noqa: S310
            answer: dict[str, Any] = json.load(response)
        return answer
