"""The admin API under ``/_emulator/``: JSON over HTTP for tests, demos and the CLI.

It needs no authentication because the server only ever listens on loopback. Numbers that are
money or quantities travel as decimal strings, except in ``/_emulator/bills``, which shows the
bills exactly as the bill APIs write them (JSON numbers). Routes:

    GET    /_emulator/health     {"status": "ok", "now": ..., "instances": n, "records": n}
    GET    /_emulator/instances  {"instances": [Instance...], "accept_any_instance": bool}
    POST   /_emulator/instances  body: one Instance object or a list -> {"instances": [added...]}
    GET    /_emulator/faults     {"faults": FaultPlan, "remaining_sequence": [...]}
    POST   /_emulator/faults     body: FaultPlan -> same as GET
    DELETE /_emulator/faults     clears the plan -> same as GET
    GET    /_emulator/records    {"records": [...], "count": n,
                                  "duplicates": [...], "duplicate_count": n}
    GET    /_emulator/requests   {"requests": [...], "count": n}
    GET    /_emulator/charges    {"charges": [{"instance_id", "product_id", "quantity",
                                  "unit_price", "amount", "currency", "record_count"}]}
    POST   /_emulator/reset      clears records, duplicates, log, nonces, faults, bill faults
                                 and bill discrepancies -> {"status"}
    GET    /_emulator/bills?cycle=YYYY-MM
                                 the cycle's bill as served, discrepancies applied, closed or
                                 not: {"cycle", "currency", "ready_at", "fee_records" (every
                                 line), "total_count" (their real number), "bill_sums",
                                 "count", "summary", "paging": {"duplicate_row",
                                 "count_skew"}, "discrepancies" (the cycle's)}
    GET    /_emulator/bills/faults         the bill fault plan, as /_emulator/faults
    POST   /_emulator/bills/faults         body: FaultPlan -> same as GET
    DELETE /_emulator/bills/faults         clears the bill plan -> same as GET
    GET    /_emulator/bills/discrepancies  {"discrepancies": [...]}
    POST   /_emulator/bills/discrepancies  body: one discrepancy or a list -> same as GET
    DELETE /_emulator/bills/discrepancies  clears them -> same as GET

An Instance object is ``{"instance_id", "product_id", "unit_price", "billing_mode",
"currency", "entities", "customer_id"}``, a FaultPlan ``{"rates", "sequence", "latency_ms",
"seed"}`` and a discrepancy ``{"kind", "cycle", ...}`` as ``bills.BillDiscrepancy`` describes.
Admin errors answer ``{"error": "..."}`` with 400, 404 or 405. Admin calls are not written to the
request log, which is the log of what a client sent to the platform.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from koogallery.emulator.bills import BillBook, BillDiscrepancy
from koogallery.emulator.config import Instance
from koogallery.emulator.exchange import IncomingRequest, Reply
from koogallery.emulator.faults import FaultInjector, FaultPlan
from koogallery.emulator.state import EmulatorState

__all__ = ["ADMIN_PREFIX", "AdminApi"]

ADMIN_PREFIX = "/_emulator/"


def _error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


class _BadRequest(Exception):
    """An admin body the emulator cannot use; answered as 400 with the reason."""


def _json_body(request: IncomingRequest) -> Any:
    try:
        return json.loads(request.body or b"null", parse_float=Decimal)
    except (ValueError, RecursionError):
        raise _BadRequest("the body is not JSON") from None


class AdminApi:
    """Routes ``/_emulator/*`` requests to the state and the fault injector.

    admin = AdminApi(state, faults, clock=lambda: datetime.now(timezone.utc),
                     bills=book, bill_faults=FaultInjector())
    reply = admin.handle(request)
    """

    def __init__(
        self,
        state: EmulatorState,
        faults: FaultInjector,
        *,
        clock: Callable[[], datetime],
        bills: BillBook,
        bill_faults: FaultInjector,
    ) -> None:
        self._state = state
        self._faults = faults
        self._clock = clock
        self._bills = bills
        self._bill_faults = bill_faults
        self._routes: dict[str, dict[str, Callable[[IncomingRequest], Reply]]] = {
            "health": {"GET": self._health},
            "instances": {"GET": self._list_instances, "POST": self._add_instances},
            "faults": {
                "GET": self._show_faults,
                "POST": self._set_faults,
                "DELETE": self._clear_faults,
            },
            "records": {"GET": self._records},
            "requests": {"GET": self._requests},
            "charges": {"GET": self._charges},
            "reset": {"POST": self._reset},
            "bills": {"GET": self._bill_view},
            "bills/faults": {
                "GET": self._show_bill_faults,
                "POST": self._set_bill_faults,
                "DELETE": self._clear_bill_faults,
            },
            "bills/discrepancies": {
                "GET": self._show_discrepancies,
                "POST": self._add_discrepancies,
                "DELETE": self._clear_discrepancies,
            },
        }

    def handle(self, request: IncomingRequest) -> Reply:
        """Answer one admin request."""
        name = request.path[len(ADMIN_PREFIX) :].strip("/")
        methods = self._routes.get(name)
        if methods is None:
            return _error(404, f"no admin route {request.path}")

        handler = methods.get(request.method)
        if handler is None:
            return _error(405, f"{request.method} is not allowed on {request.path}")

        try:
            return handler(request)
        except _BadRequest as error:
            return _error(400, str(error))

    def _health(self, request: IncomingRequest) -> Reply:
        return Reply(
            200,
            {
                "status": "ok",
                "now": self._clock().isoformat().replace("+00:00", "Z"),
                "instances": len(self._state.instances),
                "records": len(self._state.records),
            },
        )

    def _list_instances(self, request: IncomingRequest) -> Reply:
        return Reply(
            200,
            {
                "instances": [instance.as_dict() for instance in self._state.instances],
                "accept_any_instance": self._state.accept_any_instance,
            },
        )

    def _add_instances(self, request: IncomingRequest) -> Reply:
        body = _json_body(request)
        items = body if isinstance(body, list) else [body]
        try:
            instances = [Instance.from_dict(item) for item in items]
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise _BadRequest(f"not a valid instance: {error}") from None

        self._state.add_instances(instances)
        return Reply(200, {"instances": [instance.as_dict() for instance in instances]})

    def _show_faults(self, request: IncomingRequest) -> Reply:
        return _fault_reply(self._faults)

    def _set_faults(self, request: IncomingRequest) -> Reply:
        self._faults.set_plan(_fault_plan(request))
        return self._show_faults(request)

    def _clear_faults(self, request: IncomingRequest) -> Reply:
        self._faults.clear()
        return self._show_faults(request)

    def _records(self, request: IncomingRequest) -> Reply:
        records = [record.as_dict() for record in self._state.records]
        duplicates = [record.as_dict() for record in self._state.duplicates]
        return Reply(
            200,
            {
                "records": records,
                "count": len(records),
                "duplicates": duplicates,
                "duplicate_count": len(duplicates),
            },
        )

    def _requests(self, request: IncomingRequest) -> Reply:
        entries = [entry.as_dict() for entry in self._state.requests]
        return Reply(200, {"requests": entries, "count": len(entries)})

    def _charges(self, request: IncomingRequest) -> Reply:
        return Reply(200, {"charges": [charge.as_dict() for charge in self._state.charges]})

    def _reset(self, request: IncomingRequest) -> Reply:
        self._state.reset()
        self._faults.clear()
        self._bill_faults.clear()
        self._bills.clear()
        return Reply(200, {"status": "reset"})

    def _bill_view(self, request: IncomingRequest) -> Reply:
        cycles = parse_qs(request.query).get("cycle", [])
        if len(cycles) != 1:
            raise _BadRequest("name one cycle: /_emulator/bills?cycle=YYYY-MM")

        try:
            view = self._bills.view(cycles[0])
        except ValueError as error:
            raise _BadRequest(str(error)) from None

        return Reply(200, view.as_dict())

    def _show_bill_faults(self, request: IncomingRequest) -> Reply:
        return _fault_reply(self._bill_faults)

    def _set_bill_faults(self, request: IncomingRequest) -> Reply:
        self._bill_faults.set_plan(_fault_plan(request))
        return self._show_bill_faults(request)

    def _clear_bill_faults(self, request: IncomingRequest) -> Reply:
        self._bill_faults.clear()
        return self._show_bill_faults(request)

    def _show_discrepancies(self, request: IncomingRequest) -> Reply:
        items = [item.as_dict() for item in self._bills.discrepancies]
        return Reply(200, {"discrepancies": items})

    def _add_discrepancies(self, request: IncomingRequest) -> Reply:
        body = _json_body(request)
        items = body if isinstance(body, list) else [body]
        try:
            discrepancies = [BillDiscrepancy.from_dict(item) for item in items]
        except (ValueError, TypeError) as error:
            raise _BadRequest(f"not a valid discrepancy: {error}") from None

        self._bills.inject(*discrepancies)
        return self._show_discrepancies(request)

    def _clear_discrepancies(self, request: IncomingRequest) -> Reply:
        self._bills.clear()
        return self._show_discrepancies(request)


def _fault_plan(request: IncomingRequest) -> FaultPlan:
    body = _json_body(request)
    if not isinstance(body, dict):
        raise _BadRequest("a fault plan must be a JSON object")

    try:
        return FaultPlan.from_dict(body)
    except (ValueError, TypeError) as error:
        raise _BadRequest(f"not a valid fault plan: {error}") from None


def _fault_reply(faults: FaultInjector) -> Reply:
    return Reply(
        200,
        {"faults": faults.plan.as_dict(), "remaining_sequence": list(faults.remaining_sequence)},
    )
