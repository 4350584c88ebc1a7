"""The suite must refuse every connection that leaves this machine, in subprocesses too."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.network_guard.loopback_only import NonLoopbackConnectionError
from tests.postgres_fixtures import loopback_problem

NOT_LOOPBACK = "is not loopback (127.0.0.1, ::1, localhost) or a Unix socket directory"


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter started the way tests start theirs."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- this process -----------------------------------------------------------------------------


def test_connect_to_public_address_is_refused_before_any_packet() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(NonLoopbackConnectionError):
            sock.connect(("192.0.2.1", 443))


def test_connect_to_private_address_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(NonLoopbackConnectionError):
            sock.connect(("10.0.0.1", 80))


def test_connect_ex_to_public_address_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(NonLoopbackConnectionError):
            sock.connect_ex(("192.0.2.1", 443))


def test_dns_lookup_of_a_real_host_is_refused() -> None:
    with pytest.raises(NonLoopbackConnectionError):
        socket.getaddrinfo("mkt.myhuaweicloud.com", 443)


@pytest.mark.parametrize(
    "look_up",
    [socket.gethostbyname, socket.gethostbyname_ex, socket.gethostbyaddr],
    ids=["gethostbyname", "gethostbyname_ex", "gethostbyaddr"],
)
def test_every_other_name_lookup_of_a_real_host_is_refused(
    look_up: Callable[[str], Any],
) -> None:
    with pytest.raises(NonLoopbackConnectionError) as caught:
        look_up("mkt.myhuaweicloud.com")

    assert str(caught.value) == (
        "tests may only resolve loopback names, not 'mkt.myhuaweicloud.com'"
    )


def test_reverse_lookup_of_a_public_address_is_refused() -> None:
    with pytest.raises(NonLoopbackConnectionError):
        socket.gethostbyaddr("192.0.2.1")


def test_lookup_of_a_loopback_address_is_allowed() -> None:
    assert socket.gethostbyname("127.0.0.1") == "127.0.0.1"


@pytest.mark.parametrize(
    "send",
    [
        lambda sock: sock.sendto(b"ping", ("192.0.2.1", 53)),
        lambda sock: sock.sendto(b"ping", 0, ("192.0.2.1", 53)),
    ],
    ids=["without-flags", "with-flags"],
)
def test_udp_datagram_to_a_public_address_is_refused(
    send: Callable[[socket.socket], int],
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(NonLoopbackConnectionError) as caught:
            send(sock)

    assert str(caught.value) == "tests may only connect to loopback, not ('192.0.2.1', 53)"


def test_udp_datagram_to_loopback_is_delivered() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)

        sent = sender.sendto(b"ping", receiver.getsockname())

        assert (sent, receiver.recv(16)) == (4, b"ping")


def test_loopback_connection_is_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass


# --- subprocesses -----------------------------------------------------------------------------


def test_a_python_subprocess_is_refused_a_public_address() -> None:
    completed = run_python(
        "import socket; socket.create_connection(('192.0.2.1', 443), timeout=1)"
    )

    assert completed.returncode == 1
    assert completed.stderr.splitlines()[-1] == (
        "loopback_only.NonLoopbackConnectionError: "
        "tests may only resolve loopback names, not '192.0.2.1'"
    )


def test_a_python_subprocess_reaches_a_loopback_server() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(5)

        completed = run_python(
            "import socket, sys\n"
            "with socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5) as s:\n"
            "    s.sendall(b'hello')\n",
            str(server.getsockname()[1]),
        )
        accepted, _ = server.accept()
        with accepted:
            accepted.settimeout(5)
            received = accepted.recv(16)

    assert (completed.returncode, completed.stderr) == (0, "")
    assert received == b"hello"


def test_the_guard_adds_no_output_to_a_python_subprocess() -> None:
    completed = run_python("print('only this')")

    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "only this\n", "")


# --- PostgreSQL URLs (libpq opens its own sockets, out of the guard's sight) -----------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://koogallery@127.0.0.1:55437/koogallery",
        "postgresql://koogallery@localhost/koogallery",
        "postgresql://koogallery@[::1]:55437/koogallery",
        "postgresql://koogallery@127.0.0.1:1,[::1]:2/koogallery",
        "postgresql:///koogallery",
        "postgresql:///koogallery?host=/run/postgresql",
        "postgresql://koogallery@%2Frun%2Fpostgresql/koogallery",
        "postgresql://localhost/koogallery?hostaddr=127.0.0.1",
    ],
)
def test_a_postgres_url_naming_only_this_machine_is_accepted(url: str) -> None:
    assert loopback_problem(url, environ={}) is None


@pytest.mark.parametrize(
    ("url", "place", "entry"),
    [
        ("postgresql://koogallery@db.example.com/koogallery", "its host", "db.example.com"),
        ("postgresql://127.0.0.1/koogallery?host=db.example.com", "its host", "db.example.com"),
        ("postgresql://127.0.0.1,192.0.2.1/koogallery", "its host", "192.0.2.1"),
        ("postgresql://127.0.0.1/koogallery?hostaddr=10.0.0.1", "its hostaddr", "10.0.0.1"),
        (
            "postgresql://localhost/koogallery?hostaddr=127.0.0.1,10.0.0.1",
            "its hostaddr",
            "10.0.0.1",
        ),
        ("host=127.0.0.1,db.example.com dbname=koogallery", "its host", "db.example.com"),
    ],
)
def test_a_postgres_url_naming_another_host_anywhere_is_refused(
    url: str, place: str, entry: str
) -> None:
    assert loopback_problem(url, environ={}) == f"{url}: {place} {entry!r} {NOT_LOOPBACK}"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PGHOST", "db.example.com"),
        ("PGHOST", "127.0.0.1,db.example.com"),
        ("PGHOSTADDR", "10.0.0.1"),
    ],
)
def test_a_pghost_variable_naming_another_host_is_refused(variable: str, value: str) -> None:
    url = "postgresql:///koogallery"

    problem = loopback_problem(url, environ={variable: value})

    assert problem == f"{url}: {variable} {value.split(',')[-1]!r} {NOT_LOOPBACK}"


def test_pghost_naming_a_socket_directory_or_loopback_is_accepted() -> None:
    environ = {"PGHOST": "/run/postgresql,localhost", "PGHOSTADDR": "::1"}

    assert loopback_problem("postgresql:///koogallery", environ=environ) is None


@pytest.mark.parametrize(
    ("url", "environ"),
    [
        ("postgresql://127.0.0.1/koogallery?service=ledger", {}),
        ("postgresql://127.0.0.1/koogallery", {"PGSERVICE": "ledger"}),
    ],
)
def test_a_postgres_service_is_refused_because_its_hosts_are_not_visible(
    url: str, environ: dict[str, str]
) -> None:
    assert loopback_problem(url, environ=environ) == (
        f"{url}: the service 'ledger' names its hosts in a file not checked here"
    )


def test_the_refusal_never_shows_the_password() -> None:
    url = "postgresql://koogallery:s3cret@db.example.com/koogallery"

    assert loopback_problem(url, environ={}) == (
        f"postgresql://koogallery:***@db.example.com/koogallery: its host 'db.example.com' "
        f"{NOT_LOOPBACK}"
    )


def test_a_url_libpq_cannot_read_is_refused() -> None:
    url = "postgresql://127.0.0.1/koogallery?no_such_parameter=1"

    assert loopback_problem(url, environ={}) == f"{url} is not a connection URL libpq accepts"
