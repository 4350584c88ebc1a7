"""The suite must refuse every connection that leaves this machine."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import NonLoopbackConnectionError


def test_connect_to_public_address_is_refused_before_any_packet() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(NonLoopbackConnectionError):
            sock.connect(("192.0.2.1", 443))


def test_connect_to_private_address_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(NonLoopbackConnectionError):
            sock.connect(("10.0.0.1", 80))


def test_dns_lookup_of_a_real_host_is_refused() -> None:
    with pytest.raises(NonLoopbackConnectionError):
        socket.getaddrinfo("mkt.myhuaweicloud.com", 443)


def test_loopback_connection_is_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
