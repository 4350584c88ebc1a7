"""The HTTP transport: loopback-only binding, keep-alive, body framing and clean shutdown."""

from __future__ import annotations

import http.client
import socket

import pytest

from koogallery.emulator import V1_PATH, Emulator, EmulatorConfig, NonLoopbackHostError
from tests.emulator_fixtures import HOURLY, dumps, v1_record

pytest_plugins = ["tests.emulator_fixtures"]


def test_keep_alive_connection_serves_several_requests(emulator) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=5)
    try:
        connection.request("GET", "/_emulator/health")
        first = connection.getresponse()
        first.read()
        socket_after_first = connection.sock

        connection.request("GET", "/_emulator/instances")
        second = connection.getresponse()
        second.read()

        assert (first.status, second.status) == (200, 200)
        assert first.getheader("Content-Length") is not None
        assert connection.sock is socket_after_first
    finally:
        connection.close()


NON_LOOPBACK_HOSTS = ["0.0.0.0", "192.0.2.1", "::", "example.com", "10.0.0.1"]  # noqa: S104


@pytest.mark.parametrize("host", NON_LOOPBACK_HOSTS)
def test_emulator_refuses_to_bind_a_non_loopback_host(host: str) -> None:
    with pytest.raises(NonLoopbackHostError):
        Emulator(host=host)


def test_emulator_reads_localhost_as_127_0_0_1_without_a_lookup() -> None:
    with Emulator(host="localhost") as emu:
        assert emu.url == f"http://127.0.0.1:{emu.port}"


def test_emulator_serves_on_ipv6_loopback(http) -> None:
    try:
        emu = Emulator(host="::1").start()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")

    try:
        response = http.get(f"{emu.url}/_emulator/health")
    finally:
        emu.stop()

    assert emu.host == "::1"
    assert response.json()["status"] == "ok"


def test_stop_closes_an_idle_keep_alive_connection_and_releases_the_port(clock) -> None:
    emu = Emulator(EmulatorConfig(instances=[HOURLY]), clock=clock).start()
    port = emu.port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/_emulator/health")
    connection.getresponse().read()
    assert connection.sock is not None
    idle = connection.sock

    emu.stop()

    try:
        assert idle.recv(1) == b""
    finally:
        connection.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_chunked_request_body_is_read_and_verified(client) -> None:
    body = dumps({"usage_records": [v1_record(client.clock)]})
    url, headers = client.sign("POST", V1_PATH, body)

    response = client.http.post(url, content=iter([body[:10], body[10:]]), headers=headers)

    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 200
    assert len(client.emulator.state.records) == 1


def test_body_over_12_mib_is_refused_with_413_apig_0201_without_reading_it(emulator) -> None:
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        sock.sendall(
            b"POST " + V1_PATH.encode() + b" HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 20000000\r\n\r\n"
        )
        reply = sock.makefile("rb").read()

    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert body == (
        b'{"error_code":"APIG.0201","error_msg":"Request entity too large: '
        b'bodies are limited to 12582912 bytes"}'
    )
    (entry,) = emulator.state.requests
    assert (entry.http_status, entry.error_code) == (413, "APIG.0201")


def test_unexpected_failure_inside_the_emulator_answers_mkt_0999(client, monkeypatch) -> None:
    def broken_commit(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated storage failure")

    monkeypatch.setattr(client.emulator.state, "commit", broken_commit)

    response = client.push_v1([v1_record(client.clock)])

    assert response.status_code == 500
    assert response.json() == {"error_code": "MKT.0999", "error_msg": "System internal error."}
