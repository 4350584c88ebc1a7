"""The HTTP side of the emulator: a loopback-only threaded server and the ``Emulator`` facade.

    with Emulator(EmulatorConfig(instances=[instance])) as emu:
        httpx.post(emu.url + V2_PATH, ...)
        emu.state.records
        emu.bills.view("2026-11")

The server refuses to bind anything but a loopback address: it holds fake credentials, answers
admin calls without authentication, and must never be reachable from another machine. It speaks
HTTP/1.1 with keep-alive (every reply carries ``Content-Length``), serves each connection on its
own daemon thread, and logs through ``logging`` at DEBUG instead of writing each request to
stderr.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast

from koogallery.emulator.admin import ADMIN_PREFIX, AdminApi
from koogallery.emulator.bills import BillApi, BillBook, BillDiscrepancy, match_bill_route
from koogallery.emulator.config import EmulatorConfig, Instance
from koogallery.emulator.errors import APIG_TOO_LARGE, BAD_PARAMETER, INTERNAL, ErrorCode
from koogallery.emulator.exchange import IncomingRequest, Reply
from koogallery.emulator.faults import FaultInjector, FaultPlan
from koogallery.emulator.state import EmulatorState
from koogallery.emulator.usage import UsageApi

__all__ = ["MAX_BODY_BYTES", "Emulator", "NonLoopbackHostError", "loopback_host"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 12 * 1024 * 1024
_IDLE_CONNECTION_SECONDS = 60.0
_STOP_JOIN_SECONDS = 5.0
_POLL_SECONDS = 0.01  # how soon stop() is noticed; tests start and stop one emulator each


class NonLoopbackHostError(ValueError):
    """Raised when asked to listen anywhere but on this machine's loopback interface."""


def loopback_host(host: str) -> tuple[str, socket.AddressFamily]:
    """The literal loopback address to bind for ``host``, or NonLoopbackHostError.

    Only IP literals (and the name ``localhost``, read as 127.0.0.1 without any look-up) are
    accepted, so no resolver can turn a name into a routable address.
    """
    text = host.strip().strip("[]")
    if text.lower() == "localhost":
        return "127.0.0.1", socket.AF_INET

    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise NonLoopbackHostError(
            f"the emulator listens on loopback only; {host!r} is not a loopback IP address"
        ) from None

    if not address.is_loopback:
        raise NonLoopbackHostError(
            f"the emulator listens on loopback only; {host!r} is not a loopback address"
        )

    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return str(address), family


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _RequestRefused(Exception):
    """A request the transport cannot hand to the routes (body too large or unreadable)."""

    def __init__(self, error: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


class _HttpServer(ThreadingHTTPServer):
    """A threaded HTTP server that knows its open connections, so stop can close them."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        route: Callable[[IncomingRequest], Reply],
        refuse: Callable[[IncomingRequest, ErrorCode, str], Reply],
    ) -> None:
        self.address_family = family
        self.route = route
        self.refuse = refuse
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log at DEBUG what the base class would print to stderr (mostly vanished clients)."""
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self) -> None:
        """Shut every open connection, waking handler threads blocked on idle keep-alives."""
        with self._connections_lock:
            connections = list(self._connections)

        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Reads one HTTP request into an ``IncomingRequest`` and writes the ``Reply`` back."""

    protocol_version = "HTTP/1.1"
    server_version = "KooGalleryEmulator/1"
    sys_version = ""
    timeout = _IDLE_CONNECTION_SECONDS
    disable_nagle_algorithm = True  # headers and body leave in two writes; no delayed-ACK stall

    @property
    def _server(self) -> _HttpServer:
        return cast(_HttpServer, self.server)

    def setup(self) -> None:
        super().setup()
        self._server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.untrack(self.connection)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http %s " + format, self.client_address[0], *args)

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        query = query.partition("#")[0]
        headers = self._header_map()

        try:
            body = self._read_body()
        except _RequestRefused as refused:
            self.close_connection = True
            request = IncomingRequest(self.command, path, query, headers, b"")
            self._send(self._server.refuse(request, refused.error, refused.detail))
            return

        request = IncomingRequest(self.command, path, query, headers, body)
        try:
            reply = self._server.route(request)
        except Exception:
            logger.exception("request %s %s failed inside the emulator", self.command, path)
            reply = self._server.refuse(request, INTERNAL, "unexpected emulator failure")

        if reply.drop:
            self._drop()
            return

        self._send(reply)

    def _header_map(self) -> dict[str, str]:
        """Lower-case names to their first value, as the UTF-8 text the client wrote."""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            text = value.encode("latin-1", "replace").decode("utf-8", "surrogateescape")
            headers.setdefault(name.lower(), text)

        return headers

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()

        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _RequestRefused(BAD_PARAMETER, "Content-Length is not a number") from None

        if length < 0:
            raise _RequestRefused(BAD_PARAMETER, "Content-Length is negative")

        if length > MAX_BODY_BYTES:
            raise _RequestRefused(APIG_TOO_LARGE, f"bodies are limited to {MAX_BODY_BYTES} bytes")

        return self.rfile.read(length)

    def _read_chunked_body(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _RequestRefused(BAD_PARAMETER, "malformed chunked body") from None

            if size < 0:
                raise _RequestRefused(BAD_PARAMETER, "malformed chunked body")

            if size == 0:
                break

            total += size
            if total > MAX_BODY_BYTES:
                raise _RequestRefused(APIG_TOO_LARGE, "chunked body exceeds the size limit")

            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

        while self.rfile.readline(1024).strip():
            continue

        return b"".join(chunks)

    def _send(self, reply: Reply) -> None:
        body = reply.body_bytes()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", reply.request_id)
        if self.close_connection:
            self.send_header("Connection", "close")

        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        """Close the connection without a byte of response, as a lost reply looks to a client."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class Emulator:
    """A local KooGallery usage and bill API on a loopback port, with its state and controls.

        with Emulator(EmulatorConfig(instances=[instance]), port=0) as emu:
            emu.url        # "http://127.0.0.1:54321"
            emu.set_faults(FaultPlan(rates={"500": 0.2}, seed=7))
            emu.bills.view("2026-11").summary

    ``clock`` is the platform's "now" (UTC-aware) for every time rule: the APIG date skew, the
    body-signature ``ts`` and nonce window, the 21-day and 5-minute record rules, and whether a
    bill cycle is closed.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        self._host, self._family = loopback_host(host)
        self._port = port
        self._clock = clock or _utc_now
        self.state = EmulatorState(
            self.config.instances, accept_any_instance=self.config.accept_any_instance
        )
        self.faults = FaultInjector(self.config.faults)
        self.bill_faults = FaultInjector(self.config.bill_faults)
        self.bills = BillBook(
            self.state,
            partner_id=self.config.partner_id,
            bill_currency=self.config.bill_currency,
            tax_rate=self.config.tax_rate,
        )
        credentials = {credential.ak: credential for credential in self.config.credentials}
        self._usage = UsageApi(
            self.state,
            self.faults,
            credentials=credentials,
            seller_key=self.config.seller_key,
            partner_id=self.config.partner_id,
            clock=self._clock,
        )
        self._bill_api = BillApi(
            self.bills,
            self.bill_faults,
            state=self.state,
            credentials=credentials,
            domain_id=self.config.domain_id,
            partner_entitled=self.config.partner_entitled,
            bills_unsupported=self.config.bills_unsupported,
            bills_preview=self.config.bills_preview,
            clock=self._clock,
        )
        self._admin = AdminApi(
            self.state,
            self.faults,
            clock=self._clock,
            bills=self.bills,
            bill_faults=self.bill_faults,
        )
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """The loopback address the server is bound to."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the real one once started, even when asked for port 0)."""
        if self._server is None:
            return self._port

        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL clients talk to, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")

        host = f"[{self._host}]" if self._family == socket.AF_INET6 else self._host
        return f"http://{host}:{self.port}"

    def start(self) -> Emulator:
        """Bind the loopback port and serve on a background thread; returns self."""
        if self._server is not None:
            return self

        server = _HttpServer((self._host, self._port), self._family, self._route, self._refuse)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_SECONDS},
            name=f"koogallery-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and release the port."""
        server, thread = self._server, self._thread
        if server is None:
            return

        url = self.url

        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(_STOP_JOIN_SECONDS)

        self._server = None
        self._thread = None
        logger.info("emulator on %s stopped", url)

    def add_instance(self, *instances: Instance) -> None:
        """Register instances (or replace the settings of ids already known)."""
        self.state.add_instances(instances)

    def set_faults(self, plan: FaultPlan) -> None:
        """Inject faults from now on, replacing any earlier plan."""
        self.faults.set_plan(plan)

    def clear_faults(self) -> None:
        """Stop injecting faults."""
        self.faults.clear()

    def set_bill_faults(self, plan: FaultPlan) -> None:
        """Inject faults into the bill APIs from now on, replacing any earlier bill plan."""
        self.bill_faults.set_plan(plan)

    def clear_bill_faults(self) -> None:
        """Stop injecting faults into the bill APIs."""
        self.bill_faults.clear()

    def inject_bill_discrepancy(
        self, discrepancy: BillDiscrepancy | Mapping[str, Any]
    ) -> BillDiscrepancy:
        """Make the bills differ from the stored usage (see ``bills``); returns what was added.

        emu.inject_bill_discrepancy({"kind": "drop_line", "instance_id": "i", "cycle": "2026-11"})
        """
        if not isinstance(discrepancy, BillDiscrepancy):
            discrepancy = BillDiscrepancy.from_dict(discrepancy)

        self.bills.inject(discrepancy)
        return discrepancy

    def clear_bill_discrepancies(self) -> None:
        """Serve bills that follow the stored usage exactly again."""
        self.bills.clear()

    def reset(self) -> None:
        """Forget records, duplicates, the log, nonces, faults and bill discrepancies.

        Instances and settings stay.
        """
        self.state.reset()
        self.faults.clear()
        self.bill_faults.clear()
        self.bills.clear()

    def _route(self, request: IncomingRequest) -> Reply:
        if request.path.startswith(ADMIN_PREFIX) or request.path == ADMIN_PREFIX.rstrip("/"):
            return self._admin.handle(request)

        if match_bill_route(request.path) is not None:
            return self._bill_api.handle(request)

        return self._usage.handle(request)

    def _refuse(self, request: IncomingRequest, error: ErrorCode, detail: str) -> Reply:
        return self._usage.refuse(request, error, detail)
